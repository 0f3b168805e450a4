"""Post-training quantization (PTQ) to a fake-quantized PyTorch model, from a bit assignment or plan.

One config object (:class:`PTQConfig`, torchao style) describes the whole transformation:

- **BatchNorm folding** (``fold_bn``): the model is copied; every BatchNorm whose only input is a conv / linear
  output (found with the same torch.fx tracer as the graph front-end) is folded into that layer's weight and
  bias, as deployment runtimes do. timm's ``BatchNormAct2d`` keeps its activation (and drop) as
  :class:`ActOnly`. Folding is exact in eval mode.
- **Weights**: per-output-channel symmetric, narrow range (``q`` in ``[-(2^(b-1)-1), 2^(b-1)-1]``, the TFLite
  int8/int4 scheme), 2..8 bits; the clipping threshold of each channel is searched to minimise the squared
  error ``||Q(W) - W||^2`` (:func:`weight_scales`; ``clip="max"`` uses the channel's max instead). Widths 16
  and 32 keep float16 / float32 weights. :func:`weight_scales` is also what ``tap_edge.plan.stats`` uses for the
  quantization error at each candidate width: the proxies see exactly this quantizer.
- **Activations**: per tensor, fake-quantized where integer kernels read them: at the input of every
  quantizable layer (its width is the tensor's planned width, :func:`tap_edge.fit.bits.tensor_bits`: the
  producer's ``a``) and at the model output when a quantizable layer produces it. 8 bits: asymmetric affine
  (uint8 range with zero point, range widened to include 0: the TFLite int8 scheme); 16 bits: symmetric
  (TFLite 16x8); 32: float, untouched. Ranges are calibrated on the calibration batch with the weights
  already quantized: ``act_calib="minmax"`` (default; the TFLite converter's choice) or ``"percentile"``
  (``act_percentile`` of the values, on a strided subsample of at most 2**20 values per tensor).
  ``quantize_joins`` (default) also fake-quantizes, once per tensor, what the ops between layers read (residual
  adds, pools, concats: :func:`quantize_joins`), because integer runtimes quantize those tensors too; the model
  is then a ``torch.fx.GraphModule`` running the same modules.
- Biases are rounded to the int32 grid a runtime stores them on (step ``s_w * s_a`` per channel,
  ``quantize_bias``): with 3-4-bit weights that step is not negligible against an output step.
- **Rounding** (``rounding``): ``"nearest"`` rounds every weight on its own (the default, in parallel);
  ``"gptq"`` and ``"adaround"`` choose the integers that best reproduce each layer's float output on the
  calibration batch (:mod:`tap_edge.quantize.rounding`), layer after layer on inputs from the already-quantized
  layers before it (:mod:`tap_edge.quantize.sequential`), then correct each channel's mean output
  (``bias_correction``). The scales and the grid stay those of :func:`quantize_weight`, so an exporter stores
  ``round(w / s)`` of the returned weights exactly. ``act_calib="mse"`` searches each activation range for the
  least squared error. :data:`DEFAULT_PTQ_SAMPLES` gives the calibration count per method.

Many small tensor ops (the clipping search of 50 layers, batch-1 passes) run on :func:`run_tasks`: one worker
thread per core, each with a single OpenMP thread. That beats intra-op threading on such work and, unlike it,
does not collapse (spinning OpenMP barriers) when other jobs share the cores.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from tap_edge.core.errors import UserError
from tap_edge.core.threads import run_tasks, worker_threads
from tap_edge.fit.bits import BitAssignment, tensor_bits
from tap_edge.graph.graph import ModelGraph

#: Candidate integer weight widths (the proxies' cost columns).
CANDIDATE_BITS = (2, 3, 4, 5, 6, 7, 8)

# Clipping search: a coarse grid of ratios (clip / channel max) then a fine grid around each channel's best.
_COARSE = torch.linspace(0.08, 1.0, 16)
_FINE_STEPS = 9
# Channels longer than this are searched on a stratified sample (the largest values exactly plus evenly spaced
# quantiles of the rest, weighted); the error reported is always exact on the whole channel.
_SAMPLE = 128
_TOP = 16
# Activation range search ("mse"): values kept per tensor.
_MSE_SAMPLE = 1 << 18


def qmax_of(bits: int) -> int:
    """Largest integer level of a narrow-range symmetric ``bits``-bit quantizer (127 at 8 bits, 1 at 2)."""
    return (1 << (bits - 1)) - 1


def _search_set(w2: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor | None, torch.Tensor]:
    """(|W| / channel max, n_top, weight of the sampled values [C, 1] or None, channel max) for the clip search.

    Long channels are represented by their ``_TOP`` largest values (weight 1) plus an evenly strided sample of
    the others (values in the top set are zeroed there: they cost nothing), each standing for
    ``(K - _TOP) / n_kept`` values: the clipping error, which the largest values dominate, is exact and the
    rounding error is estimated without bias."""
    a = w2.abs()
    amax = a.amax(1).clamp_min(1e-30)
    c, k = a.shape
    if k <= _SAMPLE:
        return a / amax[:, None], k, None, amax
    top = a.topk(_TOP, dim=1).values
    n = _SAMPLE - _TOP
    idx = ((torch.arange(n, dtype=torch.float64) + 0.5) * (k / n)).long().clamp_max(k - 1)
    smp = a[:, idx]
    keep = smp < top[:, -1:]  # values below the top set (ties at the threshold are dropped)
    smp = smp * keep
    wrest = (k - _TOP) / keep.sum(1, keepdim=True).clamp_min(1).float()
    return torch.cat([top, smp], 1) / amax[:, None], _TOP, wrest, amax


def _errors(x: torch.Tensor, ntop: int, wrest: torch.Tensor | None, ratios: torch.Tensor,
            qmax: int) -> torch.Tensor:
    """Normalised squared error of quantizing rows of ``x`` (|W|/max) with clip ratios [R] or [C, R] -> [C, R].

    Channels are processed in chunks of about 2**18 values, in place: big temporaries cost more in page
    faults than in arithmetic on CPU."""
    c, kk = x.shape
    per_ch = ratios.shape[-1] * kk
    step = max(1, (1 << 18) // per_ch)
    k = qmax / ratios  # levels per unit of channel max
    out = torch.empty(c, ratios.shape[-1])
    for i in range(0, c, step):
        kc = k[None, :, None] if k.dim() == 1 else k[i:i + step, :, None]
        t = x[i:i + step, None, :] * kc
        r = torch.round(t)
        r.clamp_(max=qmax)
        t.sub_(r)
        t.square_()
        if wrest is None:
            e = t.sum(-1)
        else:
            e = t[..., :ntop].sum(-1) + t[..., ntop:].sum(-1) * wrest[i:i + step]
        out[i:i + step] = e / (kc[..., 0] ** 2)
    return out


def _exact_errors(w2: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    d = quantize_weight(w2, scale, bits) - w2
    return (d * d).sum(1)


def _search(w: torch.Tensor, bits: Sequence[int], clip: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales [nb, C], exact squared error per channel [nb, C]); see :func:`weight_scales`."""
    w2 = w.detach().reshape(w.shape[0], -1).float()
    x, ntop, wrest, amax = _search_set(w2)
    scales = torch.empty(len(bits), w2.shape[0])
    errs = torch.empty_like(scales)
    for i, b in enumerate(bits):
        qmax = qmax_of(b)
        at_max = amax / qmax
        if clip == "max":
            scales[i], errs[i] = at_max, _exact_errors(w2, at_max, b)
            continue
        e = _errors(x, ntop, wrest, _COARSE, qmax)
        best = _COARSE[e.argmin(1)]
        step = float(_COARSE[1] - _COARSE[0])
        fine = (best[:, None] + torch.linspace(-step, step, _FINE_STEPS)[None, :]).clamp(0.02, 1.0)
        ef = _errors(x, ntop, wrest, fine, qmax)
        s = amax * fine.gather(1, ef.argmin(1, keepdim=True))[:, 0] / qmax
        err = _exact_errors(w2, s, b)
        if wrest is not None:  # sampled search: keep the channel max where it is exactly better
            err_max = _exact_errors(w2, at_max, b)
            better = err_max < err
            s, err = torch.where(better, at_max, s), torch.where(better, err_max, err)
        scales[i], errs[i] = s, err
    return scales, errs


def weight_scales(w: torch.Tensor, bits: Sequence[int] | int, clip: str = "mse") -> torch.Tensor:
    """Per-output-channel scales [len(bits), C] of the symmetric quantizer, with MSE-searched clipping.

    ``scale = clip / qmax`` where ``clip = ratio x max|W_c|``; the ratio is chosen per channel on a coarse grid
    (16 ratios in 0.08..1) and refined on a fine grid around the best (9 ratios), minimising ``||Q(W_c) -
    W_c||^2``. Vectorised over channels and ratios; channels longer than 128 values are searched on a
    stratified sample (their 16 largest values exactly plus an even stride of the others, weighted), and
    the result is then checked exactly against no clipping (ratio 1). ``clip="max"``: ratio 1 everywhere.
    """
    return _search(w, [bits] if isinstance(bits, int) else list(bits), clip)[0]


def quantize_weight(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize ``w`` per output channel with ``scale`` [C]: ``clamp(round(w/s), -qmax, qmax) * s``."""
    qmax = qmax_of(bits)
    s = scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype)
    return torch.clamp(torch.round(w / s), -qmax, qmax) * s


def weight_quant_table(w: torch.Tensor, bits: Sequence[int] = CANDIDATE_BITS,
                       clip: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """(scales [nb, C], exact squared error per channel [nb, C]) of the PTQ weight quantizer at each width."""
    return _search(w, list(bits), clip)


# ---- BatchNorm folding ------------------------------------------------------------------------------------
class ActOnly(nn.Module):
    """What is left of timm's ``BatchNormAct2d`` once its BatchNorm is folded: drop then activation."""

    def __init__(self, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_var is not None


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, batchnorm) pairs where the BatchNorm's only input is the layer's only use, from a torch.fx trace."""
    from tap_edge.graph.frontends.torch_frontend import _Tracer

    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - untraceable user code: keep BatchNorm as is (exact, just slower)
        return []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        users = list(node.users)
        if node.op == "call_module" and len(users) == 1 and users[0].op == "call_module" \
                and users[0].args[:1] == (node,):
            pairs.append((str(node.target), str(users[0].target)))
    return [(a, b) for a, b in pairs if calls[a] == 1 and calls[b] == 1]


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[tuple[str, str]]]:
    """Fold every BatchNorm that directly and only follows a conv / linear into it, in place (eval mode).

    Pairs come from a torch.fx trace (the graph front-end's tracer); a model that cannot be traced is
    returned unchanged. Returns the model and the folded (layer, batchnorm) module names."""
    model.eval()
    modules = dict(model.named_modules())
    done: list[tuple[str, str]] = []
    for name, bn_name in _pairs_fx(model):
        layer, bn = modules.get(name), modules.get(bn_name)
        if not isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear) or bn is None or not _is_bn(bn):
            continue
        if type(bn).__name__ not in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct2d") \
                or bn.num_features != layer.weight.shape[0]:
            continue  # other subclasses may do more than normalise
        with torch.no_grad():
            s = 1.0 / torch.sqrt(bn.running_var + bn.eps)
            if bn.affine:
                s = s * bn.weight
            shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * s
            w = layer.weight
            w.mul_(s.reshape(-1, *([1] * (w.dim() - 1))))
            new_b = (layer.bias * s if layer.bias is not None else 0.0) + shift
            if layer.bias is None:
                layer.bias = nn.Parameter(new_b.detach().clone(), requires_grad=w.requires_grad)
            else:
                layer.bias.copy_(new_b)
        if type(bn).__name__ == "BatchNormAct2d":
            _set_module(model, bn_name, ActOnly(getattr(bn, "drop", nn.Identity()), getattr(bn, "act", nn.Identity())))
        else:
            _set_module(model, bn_name, nn.Identity())
        done.append((name, bn_name))
    return model, done


def folded_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, no gradients, BatchNorm folded (the model a runtime executes)."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return fold_batchnorm(m)[0]


# ---- activations ------------------------------------------------------------------------------------------
class FakeQuantAct(nn.Module):
    """Per-tensor activation fake-quantizer: 8 bits asymmetric (zero point), 16 bits symmetric, else float.

    Before calibration (``observing``) it records the range of what passes through and returns it unchanged.
    """

    def __init__(self, bits: int, method: str = "minmax", percentile: float = 99.99) -> None:
        super().__init__()
        self.bits, self.method, self.percentile = int(bits), method, float(percentile)
        self.observing = True
        self.bypass = False  # a pass with float activations (see _calibrate_pending)
        self.lo, self.hi = math.inf, -math.inf
        self._sample: list[torch.Tensor] = []  # "mse": a strided subsample of what was observed
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale={float(self.scale):.4g}, zero_point={int(self.zero_point)}"

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
        flat = x.as_strided((x.numel(),), (1,)) if dense else x.reshape(-1)  # fast 1-D reductions
        if self.method == "percentile":
            if flat.numel() > (1 << 20):
                flat = flat[:: math.ceil(flat.numel() / (1 << 20))]
            p = self.percentile / 100.0
            lo, hi = torch.quantile(flat.float(), torch.tensor([1.0 - p, p])).tolist()
        else:
            lo_t, hi_t = torch.aminmax(flat)
            lo, hi = float(lo_t), float(hi_t)
            if self.method == "mse":
                self._sample.append(flat[:: max(1, math.ceil(flat.numel() / _MSE_SAMPLE))].float().clone())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def _mse_range(self, lo: float, hi: float) -> tuple[float, float]:
        """The range ``r x [lo, hi]`` (r in 0.05..1) whose quantizer has the least squared error on the sample."""
        x = torch.cat(self._sample)
        x = x[:: max(1, math.ceil(x.numel() / _MSE_SAMPLE))]
        self._sample = []
        best, best_err = 1.0, math.inf
        for r in torch.logspace(-1.3, 0.0, 40).tolist():
            err = float(((self._quantize(x, *self._params(lo * r, hi * r)) - x) ** 2).sum())
            if err < best_err:
                best, best_err = r, err
        return lo * best, hi * best

    def _params(self, lo: float, hi: float) -> tuple[float, float]:
        if self.bits == 8:
            scale = max(hi - lo, 1e-8) / 255.0
            return scale, float(round(-lo / scale))
        return max(max(-lo, hi), 1e-8) / ((1 << (self.bits - 1)) - 1), 0.0

    def _quantize(self, x: torch.Tensor, s: float | torch.Tensor, z: float | torch.Tensor) -> torch.Tensor:
        if self.bits == 8:
            return (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s
        qmax = (1 << (self.bits - 1)) - 1
        return torch.clamp(torch.round(x / s), -qmax, qmax) * s

    def qparams(self) -> tuple[int, float, int]:
        """``(bits, scale, zero_point)`` as a runtime stores them (float32 scale, integer zero point)."""
        return self.bits, float(torch.tensor(float(self.scale), dtype=torch.float32)), int(self.zero_point)

    def finish(self) -> None:
        """Turn the observed range into scale / zero point (``mse``: the searched range) and start quantizing."""
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if not math.isfinite(lo) or not math.isfinite(hi):
            lo, hi = -1.0, 1.0
        if self.method == "mse" and self._sample:
            lo, hi = self._mse_range(lo, hi)
        scale, zero = self._params(lo, hi)
        self.scale.fill_(scale)
        self.zero_point.fill_(zero)
        self.observing = False

    def restart(self) -> None:
        """Forget what was observed and observe again."""
        self.observing, self.lo, self.hi, self._sample = True, math.inf, -math.inf, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits >= 32 or self.bypass:
            return x
        if self.observing:
            self.observe(x)
            return x
        return self._quantize(x, self.scale, self.zero_point)


# ---- the transformation -----------------------------------------------------------------------------------
ROUNDINGS = ("nearest", "gptq", "adaround")
ACT_CALIBS = ("minmax", "percentile", "mse")
CLIPS = ("mse", "output", "max")
#: Calibration samples of the PTQ step by rounding method (measured on EfficientNet-Lite0: tools/bench_plan.py).
DEFAULT_PTQ_SAMPLES = {"nearest": 16, "gptq": 64, "adaround": 64}


def _choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = (f"did you mean {close[0]}? " if close else "") + "choose " + ", ".join(choices)
        raise UserError(f"unknown {what} '{value}'", hint)


@dataclass
class PTQConfig:
    """Everything the PTQ transformation needs besides the model and the calibration batch (torchao style).

    ``bits``: a :class:`BitAssignment` (uniform ``"w4a8"`` or a plan); ``rounding``: ``"nearest"``,
    ``"gptq"`` (second-order, fast) or ``"adaround"`` (learned, ``iters`` Adam steps per layer), see
    :mod:`tap_edge.quantize.rounding`; ``bias_correction``: correct each output channel's mean shift on the
    calibration batch (None: on for gptq / adaround, off for nearest); ``float_target``: round to reproduce
    the float layer on the float input (else the layer's own output on its quantized input); ``percdamp``,
    ``act_order``: GPTQ's damping (fraction of the mean Hessian diagonal) and column order; ``clip``:
    the weight clipping: ``"mse"`` (searched on the weight error), ``"output"`` (searched on the layer's output
    error on the calibration inputs, :func:`tap_edge.quantize.rounding.output_scales`; gptq / adaround only)
    or ``"max"``; ``act_calib``: ``"minmax"``, ``"percentile"``
    (``act_percentile``) or ``"mse"`` (range with the least squared error); ``fold_bn``: fold BatchNorm first;
    ``quantize_output``: fake-quantize the model output when a quantizable layer makes it; ``quantize_joins``:
    fake-quantize the tensors the ops between layers read (residual adds, pools, ...), as integer runtimes do
    (:func:`quantize_joins`); ``quantize_bias``: round biases to the runtimes' int32 grid (``s_in * s_w``).
    Any rounding other than nearest, or bias correction, calibrates sequentially
    (:mod:`tap_edge.quantize.sequential`). ``to_dict`` / ``from_dict`` round-trip it."""

    bits: BitAssignment = field(default_factory=lambda: BitAssignment(8, 8))
    rounding: str = "nearest"
    bias_correction: bool | None = None
    float_target: bool = True
    percdamp: float = 0.01
    act_order: bool = True
    iters: int = 400
    clip: str = "mse"
    act_calib: str = "minmax"
    act_percentile: float = 99.99
    fold_bn: bool = True
    quantize_output: bool = True
    quantize_joins: bool = True
    quantize_bias: bool = True
    calib_batch_size: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.bits, str):
            self.bits = BitAssignment.parse(self.bits)
        elif isinstance(self.bits, dict):
            self.bits = BitAssignment.from_plan(self.bits)
        _choice(self.rounding, ROUNDINGS, "rounding")
        if self.bias_correction is None:
            self.bias_correction = self.rounding != "nearest"
        _choice(self.clip, CLIPS, "weight clipping")
        if self.clip == "output" and self.rounding == "nearest":
            raise UserError("weight clipping 'output' needs the layer inputs that gptq / adaround collect",
                            "use rounding gptq or adaround, or clip 'mse'")
        _choice(self.act_calib, ACT_CALIBS, "activation calibration")
        if not 50.0 < self.act_percentile <= 100.0:
            raise UserError(f"activation percentile {self.act_percentile} out of range", "use e.g. 99.99")
        if not 0.0 <= self.percdamp <= 1.0:
            raise UserError(f"GPTQ damping {self.percdamp} out of range", "use a fraction such as 0.01")
        if self.iters < 1:
            raise UserError(f"AdaRound iterations must be positive, got {self.iters}", "use e.g. 1000")
        if self.calib_batch_size < 1:
            raise UserError(f"calibration batch size must be positive, got {self.calib_batch_size}")

    @property
    def sequential(self) -> bool:
        """Whether layers are calibrated one after the other (every method but plain round-to-nearest)."""
        return self.rounding != "nearest" or bool(self.bias_correction)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``bits`` as a plan dict); :meth:`from_dict` reads it back."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["bits"] = self.bits.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PTQConfig:
        names = [f.name for f in fields(cls)]
        for key in data:
            _choice(key, names, "PTQ setting")
        return cls(**data)


def default_ptq_samples(rounding: str) -> int:
    """Calibration samples the PTQ step uses by default for ``rounding`` (:data:`DEFAULT_PTQ_SAMPLES`)."""
    _choice(rounding, ROUNDINGS, "rounding")
    return DEFAULT_PTQ_SAMPLES[rounding]


@dataclass
class PTQInfo:
    """What :func:`ptq` did (attached to the returned model as ``tap_edge_ptq``)."""

    folded: list[tuple[str, str]]
    weight_bits: dict[str, int]
    act_bits: dict[str, int]  # module -> width of its (fake-quantized) input
    output_bits: int | None
    rounding: str = "nearest"
    rounded: list[str] = field(default_factory=list)  # modules the rounding method handled (others: nearest)
    #: per integer-quantized module, the per-output-channel scale [C] of its grid: the weights are exactly
    #: ``s * q`` with integers ``|q| <= qmax`` (GPTQ / AdaRound need not reach ``qmax`` in a channel, so an
    #: exporter takes ``s`` from here, not from ``max|w| / qmax``)
    weight_scales: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per module with an integer input, that input's quantizer ``(bits, scale, zero_point)`` (8 bits: uint8
    #: affine, ``zero_point`` in 0..255; 16: symmetric, 0); ``output_qparams``: the model output's, if quantized
    input_qparams: dict[str, tuple[int, float, int]] = field(default_factory=dict)
    output_qparams: tuple[int, float, int] | None = None
    #: per tensor an op between layers reads (torch.fx node name), its quantizer: ``"shared"`` with the layer
    #: that also reads it (that layer's input quantizer), else ``"own"`` (calibrated on float activations)
    join_quant: dict[str, str] = field(default_factory=dict)


def _graph_of(model: nn.Module, calib: torch.Tensor) -> ModelGraph:
    from tap_edge.graph.frontends.torch_frontend import trace_module

    return trace_module(model, calib[:1])


def _check_width(name: str, wb: int, rounding: str) -> None:
    if not (2 <= wb <= 8 or wb in (16, 32)):
        raise UserError(f"layer '{name}': {rounding} rounding takes 2..8-bit integer weights (or 16 / 32 float), "
                        f"not {wb}", "give weight widths 2..8, 16 or 32")


def ptq(model: nn.Module, config: PTQConfig, calib: torch.Tensor, graph: ModelGraph | None = None) -> nn.Module:
    """Return a fake-quantized copy of ``model`` (the original is untouched); see the module docstring."""
    from tap_edge.quantize.sequential import check_weights

    if calib is None or calib.dim() < 2 or len(calib) == 0:
        raise UserError("PTQ needs a non-empty calibration batch", "give a few calibration images or tensors")
    if not bool(torch.isfinite(calib).all()):
        raise UserError("the calibration batch has NaN or infinite values", "check the calibration samples")
    bits = config.bits
    if graph is None:
        graph = _graph_of(model, calib)
    if bits.layers:
        bits.check_names(graph)
    q = copy.deepcopy(model).eval()
    for p in q.parameters():
        p.requires_grad_(False)
    folded = fold_batchnorm(q)[1] if config.fold_bn else []
    float_model = copy.deepcopy(q) if config.sequential else None
    modules = dict(q.named_modules())
    widths = tensor_bits(graph, bits)
    info = PTQInfo(folded, {}, {}, None, rounding=config.rounding)
    quants: list[FakeQuantAct] = []
    seen: set[str] = set()
    for op in graph.quantizable_ops():
        if not op.module or op.module not in modules or op.module in seen:
            continue
        seen.add(op.module)
        mod = modules[op.module]
        wb = bits.weight_bits(op)
        _check_width(op.module, wb, config.rounding)
        check_weights(op.module, mod)
        info.weight_bits[op.module] = wb
        ab = widths.get(op.inputs[0], 32) if op.inputs else 32
        if ab < 32:
            fq = FakeQuantAct(ab, config.act_calib, config.act_percentile)
            mod.add_module("input_quant", fq)
            mod.register_forward_pre_hook(lambda m, args: (m.input_quant(args[0]), *args[1:]))
            quants.append(fq)
            info.act_bits[op.module] = ab
        if config.quantize_output and graph.outputs and op.outputs and op.outputs[0] in graph.outputs:
            ob = bits.act_bits(op) or 32
            if ob < 32:
                fo = FakeQuantAct(ob, config.act_calib, config.act_percentile)
                mod.add_module("output_quant", fo)
                mod.register_forward_hook(lambda m, args, out: m.output_quant(out))
                quants.append(fo)
                info.output_bits = ob
    if config.quantize_joins:
        q = quantize_joins(q, graph, bits, widths, info, config, calib[:1])
        quants += [m for m in q.modules() if isinstance(m, FakeQuantAct) and m not in quants]
    todo = dict(info.weight_bits)
    if float_model is not None:
        done = _sequential(q, float_model, config, calib, info)
        todo = {k: v for k, v in todo.items() if k not in done}
    _round_to_nearest(modules, todo, config.clip, info.weight_scales)
    own = [q.get_submodule(_join_quant_name(n)) for n, how in info.join_quant.items() if how == "own"]
    for fq in own:  # the runtimes calibrate these on float activations: so do we (again below, biases final)
        fq.restart()
    _calibrate_pending(q, quants, calib, config.calib_batch_size)
    for name, mod in modules.items():
        if isinstance(getattr(mod, "input_quant", None), FakeQuantAct):
            info.input_qparams[name] = mod.input_quant.qparams()
        if isinstance(getattr(mod, "output_quant", None), FakeQuantAct):
            info.output_qparams = mod.output_quant.qparams()
    if config.quantize_bias and _bias_on_int32_grid(modules, info) and own:
        for fq in own:
            fq.restart()
        _calibrate_pending(q, quants, calib, config.calib_batch_size)
    q.tap_edge_ptq = info  # type: ignore[assignment]
    return q


def _bias_on_int32_grid(modules: dict[str, nn.Module], info: PTQInfo) -> bool:
    """Round the bias of every layer with integer weights and an integer input to the int32 grid the runtimes
    store it on (step ``s_in * s_w`` per channel, both float32, as ONNX Runtime's ``quantize_static`` and the
    TFLite converters compute it): with 3-4-bit weights that step is a sizeable part of an output step, so a
    float bias rounds a tenth of the outputs differently from the artifact. Returns whether any bias moved."""
    moved = False
    with torch.no_grad():
        for name, s_w in info.weight_scales.items():
            mod, qp = modules[name], info.input_qparams.get(name)
            if qp is None or getattr(mod, "bias", None) is None:
                continue
            step = torch.tensor(qp[1], dtype=torch.float32) * s_w.to(torch.float32)
            on_grid = torch.clamp(torch.round(mod.bias / step), -(2 ** 31), 2 ** 31 - 1) * step
            moved = moved or not torch.equal(on_grid, mod.bias)
            mod.bias.copy_(on_grid)
    return moved


@contextmanager
def _bypassed(quantizers: list[FakeQuantAct]) -> Iterator[None]:
    """Within the block ``quantizers`` pass values through unchanged (and observe nothing)."""
    for fq in quantizers:
        fq.bypass = True
    try:
        yield
    finally:
        for fq in quantizers:
            fq.bypass = False


def _calibrate_pending(q: nn.Module, quants: list[FakeQuantAct], calib: torch.Tensor, batch: int) -> None:
    """Calibrate the quantizers still observing in one pass over ``calib`` with float activations (the
    finished ones bypassed): as ONNX Runtime's and the TFLite converters' calibration run the float model."""
    pending = [fq for fq in quants if fq.observing]
    if not pending:
        return
    with _bypassed([fq for fq in quants if not fq.observing]), torch.no_grad():
        for i in range(0, len(calib), batch):
            q(calib[i:i + batch])
    for fq in pending:
        fq.finish()


def weights_only(model: nn.Module) -> nn.Module:
    """A copy of a :func:`ptq` model with every activation quantizer replaced by an identity: the module an
    exporter converts (its weights, biases and ``tap_edge_ptq`` are the fake-quant model's; the runtime
    quantizes the activations itself, with the ranges of ``tap_edge_ptq.input_qparams``). It has the model's
    own module tree (a :func:`quantize_joins` graph module gives back the tree it was traced from), so the
    exporters name its nodes after the model's modules."""
    tree = getattr(model, _TREE, None)
    m = copy.deepcopy(tree if tree is not None else model)
    if tree is not None:
        m.tap_edge_ptq = model.tap_edge_ptq  # type: ignore[assignment]
    for mod in list(m.modules()):
        for attr in ("input_quant", "output_quant"):
            if isinstance(getattr(mod, attr, None), FakeQuantAct):
                setattr(mod, attr, nn.Identity())
    return m


# ---- the tensors between layers ---------------------------------------------------------------------------
#: Modules, functions and methods a runtime runs without a quantizer between them and their producer: they move
#: values, or clamp them inside the producer's requantization (QDQ Conv+Relu, TFLite fused activations).
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Flatten, nn.Unflatten)
_PASS_FUNCTIONS = {torch.flatten, torch.reshape, torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6,
                   torch.nn.functional.hardtanh, torch.nn.functional.dropout, torch.clamp, torch.squeeze,
                   torch.unsqueeze, torch.permute, torch.transpose, getattr}
_PASS_METHODS = {"flatten", "view", "reshape", "relu", "relu_", "clamp", "clamp_", "contiguous", "permute",
                 "transpose", "squeeze", "unsqueeze", "size", "dim", "float", "to"}
#: Where a graph module made by :func:`quantize_joins` keeps the module tree it was traced from.
_TREE = "_tap_edge_module_tree"


def _join_quant_name(node: str) -> str:
    return f"join_quant_{node}"


def _is_join(node: torch.fx.Node, modules: dict[str, nn.Module], layers: set[str]) -> bool:
    """Whether ``node`` computes between layers on values an integer runtime has quantized (an add, a pool, a
    concat, an activation it does not fuse...)."""
    if node.op == "call_module":
        target = str(node.target)
        mod = modules.get(target)
        return target not in layers and mod is not None and not isinstance(mod, _PASS_MODULES)
    if node.op == "call_function":
        return node.target not in _PASS_FUNCTIONS
    if node.op == "call_method":
        return str(node.target) not in _PASS_METHODS
    return False


def quantize_joins(q: nn.Module, graph: ModelGraph, bits: BitAssignment, widths: dict[str, int], info: PTQInfo,
                   config: PTQConfig, example: torch.Tensor) -> nn.Module:
    """``q`` as a torch.fx graph module in which every tensor an op between layers reads is fake-quantized once,
    for all its readers, at its planned width: integer runtimes quantize every tensor (QDQ puts Q/DQ on a
    residual add's inputs and output, TFLite gives every tensor a scale), while the layer input quantizers of
    :func:`ptq` see only what the layers read, so a residual add would otherwise sum float values.

    A tensor a layer also reads uses that layer's input quantizer (one scale per tensor, as in the artifact);
    another one (a project conv's output before the add, the head's output before the pool) gets its own,
    calibrated like the runtimes' own calibration on float activations, so the exporters need not carry its
    range. The graph module runs the same leaf modules (and hooks) as ``q``; ``q``'s tree is kept for export
    (:func:`weights_only`). Recorded in ``info.join_quant``; with no such tensor ``q`` itself is returned."""
    from tap_edge.quantize.sequential import trace

    fx_graph = trace(q, "quantizing the tensors between layers",
                     "set quantize_joins off (PTQConfig(quantize_joins=False)) for this model")
    modules = dict(q.named_modules())
    gm = torch.fx.GraphModule(q, fx_graph)
    # which nodes are tensors: one batch-1 pass that no quantizer observes
    with _bypassed([m for m in modules.values() if isinstance(m, FakeQuantAct)]), torch.no_grad():
        ShapeProp(gm).propagate(example)
    tensors = {n for n in fx_graph.nodes if isinstance(n.meta.get("tensor_meta"), TensorMetadata)}
    layers = set(info.weight_bits)
    ops = {op.module: op for op in graph.quantizable_ops() if op.module}
    placeholder_bits = widths.get(graph.inputs[0], bits.default_a) if len(graph.inputs) == 1 else bits.default_a
    # tensor_bits' rule on the torch.fx nodes of the folded model (the graph's tensor names are the unfolded
    # model's): a layer's output has its planned width, anything else the widest of its inputs
    width: dict[torch.fx.Node, int] = {}
    for node in fx_graph.nodes:
        if node not in tensors or node.op == "get_attr":  # constants: weights, not activations
            continue
        inputs = [width[a] for a in node.all_input_nodes if a in width]
        a = bits.act_bits(ops[str(node.target)]) if node.op == "call_module" and str(node.target) in ops else None
        if node.op == "placeholder":
            a = placeholder_bits
        width[node] = a if a is not None else max(inputs, default=bits.default_a)
    readers = {n: [u for u in n.users if u.op == "call_module" and str(u.target) in layers] for n in fx_graph.nodes}
    made: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in list(fx_graph.nodes):
        if not _is_join(node, modules, layers):
            continue
        for tensor in node.all_input_nodes:
            if tensor not in width or width[tensor] >= 32:
                continue
            if tensor not in made:
                shared = next((f"{u.target}.input_quant" for u in readers[tensor]
                               if getattr(modules[str(u.target)], "input_quant", None) is not None
                               and modules[str(u.target)].input_quant.bits == width[tensor]), None)
                if shared is None:
                    target = _join_quant_name(tensor.name)
                    gm.add_submodule(target, FakeQuantAct(width[tensor], config.act_calib, config.act_percentile))
                info.join_quant[tensor.name] = "shared" if shared else "own"
                with fx_graph.inserting_after(tensor):
                    made[tensor] = fx_graph.call_module(shared or target, (tensor,))
            node.replace_input_with(tensor, made[tensor])
    if not made:
        return q
    gm.recompile()
    object.__setattr__(gm, _TREE, q)  # not a submodule: the same modules, once
    return gm


def _round_to_nearest(modules: dict[str, nn.Module], layer_bits: dict[str, int], clip: str,
                      scales: dict[str, torch.Tensor]) -> None:
    """Round-to-nearest weights of ``layer_bits``' modules in place (16 bits: float16), on worker threads."""

    def job(name: str, w: torch.Tensor, wb: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                if wb <= 8:
                    scales[name] = weight_scales(w, wb, clip)[0]
                    w.copy_(quantize_weight(w, scales[name], wb))
                elif wb == 16:
                    w.copy_(w.half().float())
        return run

    jobs = [("weights", job(name, modules[name].weight, wb)) for name, wb in layer_bits.items()]
    with worker_threads() as workers:
        run_tasks(jobs, workers=workers)


def _sequential(q: nn.Module, float_model: nn.Module, config: PTQConfig, calib: torch.Tensor,
                info: PTQInfo) -> set[str]:
    """Round layer by layer on inputs from the already-quantized prefix; returns the modules handled."""
    from tap_edge.quantize import rounding as R
    from tap_edge.quantize.sequential import LayerJob, run_sequential, trace

    def round_layer(name: str, mod: nn.Module, x_q: torch.Tensor, x_f: torch.Tensor, wb: int) -> None:
        w = mod.weight
        if wb == 16:
            w.copy_(w.half().float())
        if wb > 8:
            return
        scale = info.weight_scales[name] = weight_scales(w, wb, "mse" if config.clip == "output" else config.clip)[0]
        # "output" starts from the weight-MSE scales and refines them once the layer's inputs are known
        if config.rounding == "nearest" or not R.supports(mod):
            w.copy_(quantize_weight(w, scale, wb))
            return
        stats = R.layer_stats(mod, x_q, x_f)
        wg = R.grouped_weight(mod)
        sg = scale.reshape(wg.shape[0], wg.shape[1])
        target = R.float_target(wg, stats, config.percdamp) if config.float_target else wg
        if config.clip == "output":
            sg = R.output_scales(target, stats, sg, wb)
            info.weight_scales[name] = sg.reshape(-1)
        if config.rounding == "gptq":
            levels = R.gptq_round(wg, stats, sg, wb, percdamp=config.percdamp, act_order=config.act_order,
                                  w_target=target)
        else:
            levels = R.adaround(wg, stats, sg, wb, iters=config.iters, w_target=target)
        w.copy_((levels * sg[..., None]).reshape(w.shape))
        info.rounded.append(name)

    graph = q.graph if getattr(q, _TREE, None) is not None else trace(float_model)  # quantize_joins' graph
    jobs = [LayerJob(name, wb) for name, wb in info.weight_bits.items()]
    with worker_threads():  # one OpenMP thread: on shared cores, intra-op threads spin (2-4x slower under load)
        return run_sequential(q, float_model, graph, jobs, calib, round_layer, f"PTQ ({config.rounding})",
                              bias_correction=bool(config.bias_correction))


def quantize_model(model: nn.Module, bits: BitAssignment | str | dict[str, Any], calib: torch.Tensor,
                   config: PTQConfig | None = None, graph: ModelGraph | None = None) -> nn.Module:
    """Convenience form of :func:`ptq`: ``bits`` (a BitAssignment, ``"w4a8"`` or a plan dict) overrides
    ``config.bits``."""
    cfg = copy.copy(config) if config is not None else PTQConfig()
    cfg.bits = bits if isinstance(bits, BitAssignment) else PTQConfig(bits=bits).bits  # type: ignore[arg-type]
    return ptq(model, cfg, calib, graph)


