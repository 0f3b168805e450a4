"""LayerStats: everything a sensitivity proxy may look at for one quantizable layer, computed once per model and
calibration batch (16 unlabeled samples by default).

The statistics describe the model as it is deployed: BatchNorm folded into the preceding conv / linear
(:func:`tap_edge.quantize.ptq.folded_copy`), so the weights, gradients and quantization errors are those of the
weights a runtime stores, and the output of a layer is its graph op's output (conv + folded BN + fused
ReLU/ReLU6).

**Label-free loss.** KL(p_float || p_model) has zero gradient at the float point, so gradients come from
the cross-entropy against the float model's own top-1 predictions (``loss="argmax_ce"``, default: pseudo
labels); ``"sampled_ce"`` samples the pseudo label from the float softmax instead (its squared gradients
estimate the true Fisher, the Hessian of the KL) and ``"entropy"`` uses the entropy of the output
distribution. ``grad`` is the gradient of the mean loss; ``fisher`` the mean over samples of the squared
per-sample gradient (the empirical Fisher diagonal). Per-sample gradients cost one backward pass per sample
(``grad_batch=1``); with ``grad_batch=m`` the squared gradients of m-sample sums are used instead (divided by
the number of samples; equal to the per-sample form when m = 1).

**Quantization error** at each candidate width uses :func:`tap_edge.quantize.ptq.weight_quant_table`: the exact
quantizer of the PTQ step (per-output-channel symmetric, MSE-searched clipping). ``qerr_hessian`` weights it by
the layer's input covariance ``H = mean_n sum_positions x x^T`` (the patches a conv sees, TF-"same" padding
included; per group for grouped / depthwise convs): ``tr(dW H dW^T)`` is the mean squared change of the layer's
output per sample, the objective GPTQ minimises. ``hessian_trace`` is a Hutchinson estimate of the trace of the
KL Hessian (Gauss-Newton / Fisher) block of the layer: one output-space probe per sample (a pseudo label drawn
from the float softmax, one extra backward pass; :func:`output_space_traces`).

Lists of LayerStats save to one ``.npz`` (arrays plus a JSON header; no pickle): :func:`save_layer_stats`,
:func:`load_layer_stats`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tap_edge.core.errors import UserError
from tap_edge.core.threads import run_tasks, worker_threads
from tap_edge.graph.graph import ModelGraph, Op
from tap_edge.quantize.ptq import CANDIDATE_BITS, folded_copy, quantize_weight, weight_quant_table

LOSSES = ("argmax_ce", "sampled_ce", "entropy")
_SUBSAMPLE = 1 << 16  # values used for mean / std / percentiles of one activation tensor

#: The input of a TAP proxy program, documented for the LLM prompt (keep it precise and short).
LAYERSTATS_API = """\
`layer` is a dict describing one quantizable layer of the deployed model (BatchNorm folded in); arrays are numpy
float32 unless noted. Statistics come from N unlabeled calibration samples.
- name (str), op_class (str: "conv" | "dwconv" | "fc"), index (int, 0-based in execution order),
  num_layers (int), position (float: index / (num_layers - 1), 0 = first layer, 1 = last).
- weight: weights, shape [out, in/groups, kh, kw] (conv) or [out, in] (fc).
- grad: gradient of the mean label-free loss (cross-entropy to the float model's own top-1) w.r.t. weight.
- fisher: mean over samples of the squared per-sample gradient (empirical Fisher diagonal), shape of weight.
- bits (list[int]): candidate weight widths, e.g. [2, 3, 4, 5, 6, 7, 8]; arrays below follow this order.
- qscale: [len(bits), out] per-output-channel step of the symmetric quantizer (MSE-searched clipping); the
  quantized weight at b = bits[i] is Q = clip(round(W / s), -(2**(b-1) - 1), 2**(b-1) - 1) * s, with
  s = qscale[i] broadcast along each output channel (row).
- qerr, qerr_fisher, qerr_grad: float64 [len(bits)]: sum((Q - W)**2), sum(fisher * (Q - W)**2) and
  sum(grad * (Q - W)) (the first-order loss change) at each width.
- params (int, weights + bias), macs (int, per sample), in_channels, out_channels, groups (int),
  kernel, stride (list[int]; [1, 1] for fc), in_numel, out_numel (int, activation values per sample).
- in_min, in_max, in_mean, in_std, in_absmax, in_p999 (99.9th percentile of |x|), in_zero_frac: the layer's
  input activation over the calibration batch; out_* the same for its output (after fused ReLU/ReLU6).
- in_kurtosis, out_kurtosis (float): kurtosis of the input / output values (3 = Gaussian; large = outliers).
- out_gram: [N, N] float64, Gram matrix of the per-sample flattened outputs (out_gram[i, j] = <y_i, y_j>).
- n_samples (int): N.
- qerr_hessian: float64 [len(bits)]: tr((Q - W) H (Q - W)^T) with H the layer's input covariance (mean over
  samples of sum over positions of x x^T): the mean squared change of the layer's output per sample.
- out_sq (float): tr(W H W^T), the mean squared layer output (before bias) per sample; qerr_hessian / out_sq
  is the output noise-to-signal ratio at each width.
- hessian_trace (float): Hutchinson estimate of the trace of the loss Hessian (KL to the float model) w.r.t. the
  layer's weights; hessian_trace / weight.size is HAWQ's average curvature.
- param_share, mac_share (float): the layer's share of all weights / of all MACs of the model.
"""


@dataclass
class LayerStats:
    """Statistics of one quantizable op (see the module docstring and :data:`LAYERSTATS_API`)."""

    name: str
    module: str
    op_type: str
    op_class: str
    index: int
    num_layers: int
    weight: np.ndarray
    grad: np.ndarray
    fisher: np.ndarray
    bits: list[int]
    qscale: np.ndarray  # [nb, out]
    qerr: np.ndarray  # [nb]
    qerr_fisher: np.ndarray  # [nb]
    qerr_grad: np.ndarray  # [nb]
    params: int
    macs: int
    in_shape: list[int]  # per sample
    out_shape: list[int]
    kernel: list[int]
    stride: list[int]
    groups: int
    fused: list[str]
    in_stats: dict[str, float]
    out_stats: dict[str, float]
    out_gram: np.ndarray  # [N, N]
    n_samples: int
    qerr_hessian: np.ndarray  # [nb] tr(dW H dW^T)
    out_sq: float  # tr(W H W^T)
    hessian_trace: float
    param_share: float
    mac_share: float
    loss: str = "argmax_ce"

    @property
    def position(self) -> float:
        return self.index / max(1, self.num_layers - 1)

    def quantized_weight(self, bits: int) -> np.ndarray:
        """The weight after PTQ at ``bits`` (one of :attr:`bits`)."""
        i = self.bits.index(bits)
        w = torch.from_numpy(self.weight)
        return quantize_weight(w, torch.from_numpy(self.qscale[i]), bits).numpy()

    def to_program_input(self) -> dict[str, Any]:
        """Plain numpy / float / int / str dict for a proxy program (keys: :data:`LAYERSTATS_API`)."""
        d: dict[str, Any] = {
            "name": self.name, "op_class": self.op_class, "index": int(self.index),
            "num_layers": int(self.num_layers), "position": float(self.position),
            "weight": self.weight, "grad": self.grad, "fisher": self.fisher, "bits": [int(b) for b in self.bits],
            "qscale": self.qscale, "qerr": self.qerr, "qerr_fisher": self.qerr_fisher, "qerr_grad": self.qerr_grad,
            "params": int(self.params), "macs": int(self.macs), "in_channels": int(self.in_shape[0]) if self.in_shape
            else 0, "out_channels": int(self.weight.shape[0]), "groups": int(self.groups),
            "kernel": [int(k) for k in self.kernel], "stride": [int(s) for s in self.stride],
            "in_numel": int(math.prod(self.in_shape)), "out_numel": int(math.prod(self.out_shape)),
            "out_gram": self.out_gram, "n_samples": int(self.n_samples), "qerr_hessian": self.qerr_hessian,
            "out_sq": float(self.out_sq), "hessian_trace": float(self.hessian_trace),
            "param_share": float(self.param_share), "mac_share": float(self.mac_share),
        }
        for prefix, st in (("in", self.in_stats), ("out", self.out_stats)):
            for k in _STAT_KEYS:
                d[f"{prefix}_{k}"] = float(st[k])
        return d


_STAT_KEYS = ("min", "max", "mean", "std", "absmax", "p999", "zero_frac", "kurtosis")
_ARRAYS = ("weight", "grad", "fisher", "qscale", "qerr", "qerr_fisher", "qerr_grad", "out_gram", "qerr_hessian")
_FILE_VERSION = 2  # 2: qerr_hessian, out_sq, hessian_trace, shares, kurtosis


# ---- save / load ------------------------------------------------------------------------------------------
def save_layer_stats(stats: list[LayerStats], path: str | Path) -> Path:
    """Write ``stats`` to one ``.npz`` file (arrays + a JSON header, no pickle); returns the path."""
    p = Path(path)
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, s in enumerate(stats):
        d = {f.name: getattr(s, f.name) for f in fields(s) if f.name not in _ARRAYS}
        meta.append(d)
        for a in _ARRAYS:
            arrays[f"{i}/{a}"] = np.asarray(getattr(s, a))
    arrays["__meta__"] = np.array(json.dumps({"format": "tap-edge/layerstats", "version": _FILE_VERSION,
                                              "layers": meta}))
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p


def load_layer_stats(path: str | Path) -> list[LayerStats]:
    """Read a file written by :func:`save_layer_stats`."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            if meta.get("format") != "tap-edge/layerstats":
                raise ValueError("not a LayerStats file")
            if meta.get("version") != _FILE_VERSION:
                raise ValueError(f"version {meta.get('version')} of the format, this tap-edge reads {_FILE_VERSION}")
            out = []
            for i, d in enumerate(meta["layers"]):
                out.append(LayerStats(**d, **{a: z[f"{i}/{a}"] for a in _ARRAYS}))
            return out
    except FileNotFoundError:
        raise UserError(f"{p}: LayerStats file not found", "check the path") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{p}: unreadable LayerStats file ({e.__class__.__name__}: {e})",
                        "delete it and compute the statistics again") from None


# ---- computation ------------------------------------------------------------------------------------------
def _flat(x: torch.Tensor) -> torch.Tensor:
    """All values of ``x`` as a 1-D view when its memory is dense (contiguous or channels-last)."""
    if x.is_contiguous():
        return x.view(-1)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)
    return x.reshape(-1)


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    """[N, D] view of the per-sample values (in memory order: inner products do not depend on it)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return x.reshape(x.shape[0], -1)


def _act(fused: list[str]) -> Any:
    if "relu6" in fused:
        return lambda t: t.clamp(0.0, 6.0)
    if "relu" in fused:
        return lambda t: t.clamp_min(0.0)
    return None


class _TensorAcc:
    """Running min / max over calls plus mean, std, |x| percentile and zero fraction on a strided subsample."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf
        self.samples: list[torch.Tensor] = []

    def add(self, x: torch.Tensor, act: Any = None) -> None:
        flat = _flat(x.detach())  # reductions over a dense 1-D view are several times faster than over NHWC
        lo, hi = torch.aminmax(flat)
        if act is not None:  # monotone activations map the range end points
            lo, hi = act(lo), act(hi)
        self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))
        step = max(1, flat.numel() // _SUBSAMPLE)
        sub = flat[::step].float()
        self.samples.append(act(sub) if act is not None else sub.clone())

    def result(self) -> dict[str, float]:
        s = torch.cat(self.samples) if self.samples else torch.zeros(1)
        a = s.abs()
        top = max(1, a.numel() - int(math.ceil(0.999 * a.numel())) + 1)  # the 99.9th percentile is the top-th largest
        mean, std = float(s.mean()), float(s.std(unbiased=False))
        kurt = float(((s.double() - mean) ** 4).mean()) / std ** 4 if std > 0 else 0.0
        return {"min": self.lo, "max": self.hi, "mean": mean, "std": std,
                "absmax": max(abs(self.lo), abs(self.hi)), "p999": float(a.topk(top).values[-1]),
                "zero_frac": float((s == 0).float().mean()), "kurtosis": kurt}


@dataclass
class _LayerAcc:
    op: Op
    act: Any
    inp: _TensorAcc = field(default_factory=_TensorAcc)
    out: _TensorAcc = field(default_factory=_TensorAcc)
    gram: torch.Tensor | None = None
    cov: torch.Tensor | None = None  # [groups, K, K] input covariance summed over samples


def tf_same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
                ) -> torch.Tensor:
    """``x`` zero-padded as TensorFlow's "SAME" padding does it (timm's ``Conv2dSame`` pads in its forward)."""
    pads: list[int] = []
    for i, k, st, d in zip(reversed(x.shape[-2:]), reversed(kernel), reversed(stride), reversed(dilation),
                           strict=True):
        total = max((math.ceil(i / st) - 1) * st + (k - 1) * d + 1 - i, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


def input_covariance(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``sum_n sum_positions x x^T`` of what the weights of ``module`` multiply: the input features of a
    linear layer, the (padded) patches of a conv, per group ``[groups, K, K]`` with ``K = in / groups x kh x
    kw`` in the weight's (channel, kh, kw) order; float64. None for other modules."""
    x = x.detach().float()
    if isinstance(module, nn.Linear):
        f = x.reshape(-1, x.shape[-1])
        return (f.T @ f).double()[None]
    if not isinstance(module, nn.Conv2d) or x.dim() != 4:
        return None
    g = module.groups
    k, st, d = module.kernel_size, module.stride, module.dilation
    pad = module.padding if isinstance(module.padding, tuple) else (0, 0)
    if type(module).__name__.startswith("Conv2dSame"):
        x, pad = tf_same_pad(x, k, st, d), (0, 0)
    cin = x.shape[1]
    kk = cin // g * k[0] * k[1]
    acc = torch.zeros(g, kk, kk, dtype=torch.float64)
    for n in range(len(x)):  # one sample at a time: the patches of a large feature map are big
        xn = x[n:n + 1]
        if k == (1, 1) and st == (1, 1) and pad == (0, 0):
            cols = xn.reshape(cin, -1)
        else:
            cols = F.unfold(xn, k, dilation=d, padding=pad, stride=st)[0]  # [cin * kh * kw, L]
        cols = cols.reshape(g, kk, -1)
        acc += torch.bmm(cols, cols.transpose(1, 2)).double()
    return acc


def weighted_error(dw: torch.Tensor, cov: torch.Tensor) -> float:
    """``tr(dW H dW^T)`` for a weight (difference) ``dw`` [out, in/groups, ...] and ``H`` [groups, K, K]."""
    g = cov.shape[0]
    d = dw.detach().double().reshape(g, dw.shape[0] // g, -1)
    return float((torch.bmm(d, cov) * d).sum())


def model_logits(out: Any) -> torch.Tensor:
    """The class scores [N, C, ...] of a model output (first tensor of a tuple / dict)."""
    if isinstance(out, list | tuple):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[1] < 2:
        raise UserError("the label-free loss needs class scores [N, C, ...] as the model output",
                        "LayerStats support classifiers and dense predictors")
    return out


def pseudo_targets(ref: torch.Tensor, loss: str, seed: int = 0) -> torch.Tensor | None:
    """Pseudo labels of the label-free loss from the float outputs ``ref`` (None for ``"entropy"``)."""
    if loss == "argmax_ce":
        return ref.argmax(1)
    if loss == "sampled_ce":
        gen = torch.Generator().manual_seed(seed)
        p = F.softmax(ref.float(), 1).movedim(1, -1).reshape(-1, ref.shape[1])
        return torch.multinomial(p, 1, generator=gen)[:, 0].reshape(ref.argmax(1).shape)
    return None


def label_free_loss(out: torch.Tensor, kind: str, target: torch.Tensor | None) -> torch.Tensor:
    """Sum over samples of the per-sample label-free loss."""
    if kind == "entropy":
        logp = F.log_softmax(out.float(), 1)
        return -(logp.exp() * logp).sum()
    return F.cross_entropy(out.float(), target, reduction="sum")


def compute_layer_stats(model_module: nn.Module, graph: ModelGraph, calib_batch: torch.Tensor, *,
                        bits: tuple[int, ...] = CANDIDATE_BITS, loss: str = "argmax_ce", grad_batch: int = 1,
                        seed: int = 0, timings: dict[str, float] | None = None) -> list[LayerStats]:
    """LayerStats for every quantizable op of ``graph`` (in graph order) from one calibration batch.

    One forward pass of the whole batch records activation statistics and the output Gram matrices, forward +
    backward passes of ``grad_batch`` samples give gradients and Fisher diagonals, and the weight quantization
    tables are computed, all as tasks on one single-threaded worker per core. ``timings`` (if given) receives
    the wall seconds of each phase and the summed seconds of each task kind.
    """
    with worker_threads() as workers:
        return _compute_layer_stats(model_module, graph, calib_batch, bits=bits, loss=loss, grad_batch=grad_batch,
                                    seed=seed, timings=timings, workers=workers)


def _compute_layer_stats(model_module: nn.Module, graph: ModelGraph, calib_batch: torch.Tensor, *,
                         bits: tuple[int, ...], loss: str, grad_batch: int, seed: int,
                         timings: dict[str, float] | None, workers: int) -> list[LayerStats]:
    if loss not in LOSSES:
        raise UserError(f"unknown label-free loss '{loss}'", f"use one of {', '.join(LOSSES)}")
    if not isinstance(calib_batch, torch.Tensor) or calib_batch.dim() < 2 or len(calib_batch) == 0:
        raise UserError("LayerStats need a non-empty calibration batch [N, C, H, W]",
                        "give a folder with at least one image or tensor")
    tm: dict[str, float] = timings if timings is not None else {}
    t0 = time.perf_counter()
    model = folded_copy(model_module)
    x = calib_batch.detach().float()
    if x.dim() == 4:  # oneDNN convolutions are about twice as fast in channels-last on CPU
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    modules = dict(model.named_modules())
    ops = graph.quantizable_ops()
    missing = [op.name for op in ops if not op.module or op.module not in modules]
    if missing:
        raise UserError(f"layer '{missing[0]}' of the graph is not a module of the PyTorch model",
                        "LayerStats need the PyTorch model the graph was traced from")
    if not ops:
        raise UserError("the model has no quantizable layers (conv, depthwise conv, linear)")
    tm["fold"] = time.perf_counter() - t0

    # The work is three kinds of tasks run by one worker thread per core, each worker with a single OpenMP
    # thread (a per-thread setting): (a) one no-grad pass of the whole batch for activation statistics and Gram
    # matrices, (b) the weight quantization tables, (c) one forward + backward per ``grad_batch`` samples for
    # gradients and Fisher diagonals (each pass takes its pseudo label from its own float output). Batch-1 and
    # small ops lose more to intra-op thread hand-offs than they gain, and spin when the cores are shared;
    # independent tasks on single-threaded workers keep both cores busy (autograd runs CPU work on the
    # calling thread, so concurrent backward passes are independent).
    names = list(dict.fromkeys(op.module for op in ops))
    n = len(x)
    step = max(1, int(grad_batch))
    params = [modules[k].weight for k in names]
    for p_ in params:
        p_.requires_grad_(True)
    tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    accs: dict[str, _LayerAcc] = {op.module: _LayerAcc(op, _act(op.fused)) for op in ops}
    parts: list[tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = []
    spent: dict[str, float] = {}
    in_activation_pass = threading.local()  # set only while the activation task runs (its worker may run others)

    def hook(m: nn.Module, args: Any, out: torch.Tensor, acc: _LayerAcc) -> None:
        if not getattr(in_activation_pass, "on", False):
            return  # a gradient pass, on another worker or later on the same one
        acc.inp.add(args[0])
        acc.out.add(out, acc.act)
        cov = input_covariance(m, args[0])
        if cov is not None:
            acc.cov = cov if acc.cov is None else acc.cov + cov
        if acc.gram is None:
            y = _per_sample(out.detach())
            if acc.act is not None:
                y = acc.act(y)
            acc.gram = (y @ y.T).double()

    def activations() -> None:
        in_activation_pass.on = True
        try:
            with torch.no_grad():
                model_logits(model(x))
        finally:
            in_activation_pass.on = False

    def table() -> None:
        for k in names:
            tables[k] = weight_quant_table(modules[k].weight.detach(), bits)

    def gradients(i: int, g_acc: list[torch.Tensor], f_acc: list[torch.Tensor], h_acc: torch.Tensor) -> None:
        with torch.enable_grad():
            out = model_logits(model(x[i:i + step]))
            target = pseudo_targets(out.detach(), loss, seed * 100003 + i)
            lv = label_free_loss(out, loss, target)
            gs = torch.autograd.grad(lv, params, retain_graph=True)
            # Hutchinson in output space: u = onehot(y) - p with y ~ p has covariance diag(p) - p p^T, so the
            # squared gradient of the CE to a sampled label estimates the trace of the KL Hessian block
            probe = pseudo_targets(out.detach(), "sampled_ce", seed * 100003 + i + 7919)
            hs = torch.autograd.grad(label_free_loss(out, "sampled_ce", probe), params)
        for g, f, gi in zip(g_acc, f_acc, gs, strict=True):
            gi = gi.contiguous()
            g.add_(gi)
            f.addcmul_(gi, gi)
        h_acc += torch.stack([h.double().square().sum() for h in hs])

    local = threading.local()

    def grad_task(i: int) -> Callable[[], None]:
        def run() -> None:
            if not hasattr(local, "acc"):
                local.acc = ([torch.zeros(p_.shape) for p_ in params], [torch.zeros(p_.shape) for p_ in params],
                             torch.zeros(len(params), dtype=torch.float64))
                parts.append(local.acc)
            gradients(i, *local.acc)
        return run

    handles = [modules[k].register_forward_hook(lambda m, a, o, acc=accs[k]: hook(m, a, o, acc)) for k in names]
    t1 = time.perf_counter()
    try:
        run_tasks([("activations", activations), ("qerror", table)]
                   + [("gradients", grad_task(i)) for i in range(0, n, step)], spent, workers)
    finally:
        for h in handles:
            h.remove()
        for p_ in params:
            p_.requires_grad_(False)
    grad = [sum(ps) / n for ps in zip(*(p[0] for p in parts), strict=True)]
    fisher = [sum(ps) / n for ps in zip(*(p[1] for p in parts), strict=True)]
    traces = (sum(p[2] for p in parts) / n).tolist()
    tm["passes"] = time.perf_counter() - t1
    tm.update({f"{k}_task_seconds": v for k, v in spent.items()})

    # 3. quantization errors weighted by gradient and Fisher at every candidate width (same worker pool)
    t3 = time.perf_counter()
    per_module: dict[str, dict[str, Any]] = {}

    def weighted(k: str, w_param: torch.Tensor, g: torch.Tensor, f: torch.Tensor, tr: float) -> Callable[[], None]:
        def run() -> None:
            w = w_param.detach().contiguous()
            scales, err = tables[k]
            cov = accs[k].cov
            cov = cov / n if cov is not None else None
            qf, qg, qh = [], [], []
            for j, b in enumerate(bits):
                d = quantize_weight(w, scales[j], b) - w
                qg.append(float((g * d).sum()))
                qh.append(weighted_error(d, cov) if cov is not None else 0.0)
                d.square_()
                qf.append(float((f * d).sum()))
            per_module[k] = {"weight": w.numpy().astype(np.float32), "grad": g.numpy(), "fisher": f.numpy(),
                             "qscale": scales.numpy(), "qerr": err.sum(1).double().numpy(),
                             "qerr_fisher": np.array(qf), "qerr_grad": np.array(qg), "qerr_hessian": np.array(qh),
                             "out_sq": weighted_error(w, cov) if cov is not None else 0.0, "hessian_trace": tr}
        return run

    run_tasks([("weighted", weighted(*a)) for a in zip(names, params, grad, fisher, traces, strict=True)], spent,
              workers)
    tm["weighted_errors"] = time.perf_counter() - t3

    out_stats: list[LayerStats] = []
    total_params = sum(op.params for op in ops) or 1
    total_macs = sum(op.macs for op in ops) or 1
    for idx, op in enumerate(ops):
        acc = accs[op.module]
        pm = per_module[op.module]
        in_t = graph.tensors.get(op.inputs[0]) if op.inputs else None
        out_t = graph.tensors.get(op.outputs[0]) if op.outputs else None
        out_stats.append(LayerStats(
            name=op.name, module=op.module or op.name, op_type=op.op_type, op_class=op.op_class, index=idx,
            num_layers=len(ops), bits=list(bits), params=op.params, macs=op.macs,
            in_shape=list(in_t.shape[1:]) if in_t else [], out_shape=list(out_t.shape[1:]) if out_t else [],
            kernel=list(op.attrs.get("kernel", [1, 1])), stride=list(op.attrs.get("stride", [1, 1])),
            groups=int(op.attrs.get("groups", 1)), fused=list(op.fused),
            in_stats=acc.inp.result(), out_stats=acc.out.result(),
            out_gram=(acc.gram if acc.gram is not None else torch.zeros(n, n)).numpy(), n_samples=n, loss=loss,
            param_share=op.params / total_params, mac_share=op.macs / total_macs, **pm))
    tm["total"] = time.perf_counter() - t0
    return out_stats


def stats_summary(stats: list[LayerStats]) -> list[dict[str, Any]]:
    """One small JSON-able row per layer (for reports and debugging)."""
    return [{"name": s.name, "op_class": s.op_class, "params": s.params, "macs": s.macs,
             "qerr": [float(v) for v in s.qerr], "out": s.out_stats} for s in stats]


__all__ = ["LAYERSTATS_API", "LOSSES", "LayerStats", "compute_layer_stats", "input_covariance", "label_free_loss",
           "load_layer_stats", "model_logits", "pseudo_targets", "run_tasks", "save_layer_stats", "stats_summary",
           "tf_same_pad", "weighted_error", "worker_threads"]
