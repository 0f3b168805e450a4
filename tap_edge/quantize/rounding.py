"""Error-minimising weight rounding for one layer: the layer's inputs as columns, GPTQ and AdaRound.

Every method works on the same view of a layer: per group ``g`` (1 for a dense conv or linear layer, ``groups``
for a grouped conv, one per channel for a depthwise conv) the weights ``W_g`` [C_g, K] and the columns ``X_g``
[K, M] of what the layer reads (im2col for a conv: :func:`layer_columns`), so that the layer's output is
``W_g X_g`` (+ bias). Rounding keeps the per-output-channel scales ``s`` fixed (the MSE clipping search of
:func:`tap_edge.quantize.ptq.weight_scales`, refined on the layer's output error by :func:`output_scales` under
``clip="output"``) and picks integers ``q`` in ``[-qmax, qmax]`` (narrow range) so
that ``s * q`` is on the grid of :func:`tap_edge.quantize.ptq.quantize_weight`: an exporter stores ``q`` and
``s`` exactly. The objective of both methods is the layer's output error on the calibration batch,
``||W X_f - s q X_q||^2``: ``X_q`` is the layer's input in the quantized model (the preceding layers already
quantized: the sequential driver of :mod:`tap_edge.quantize.sequential`), ``W X_f`` the float layer on the
float input. Up to a constant it is ``||(W_t - s q) X_q||^2`` with the float target ``W_t``
(:func:`float_target`), a quadratic form with the Gram matrix ``H = X_q X_q^T`` (:class:`LayerStats`,
accumulated in chunks; high-resolution layers on an even grid of output positions), so neither method keeps
the columns unless there are fewer of them than inputs. :func:`mean_shift` is the empirical bias correction
applied after rounding.

- :func:`gptq_round`: GPTQ / OBQ (Frantar et al. 2022): columns are rounded one at a time (``act_order``:
  largest ``H_ii`` first) and the rounding error is spread over the columns not yet rounded through the
  Cholesky factor of ``(H + damp I)^-1`` (``damp = percdamp x mean diag H``), blocked 128 columns at a time.
  Batched over groups, so a depthwise conv's channels (each its own 9-input problem) go together.
- :func:`adaround`: AdaRound (Nagel et al. 2020): ``q = floor(W/s) + h(V)`` with the rectified sigmoid ``h``
  learned by Adam on the layer's output error plus ``lambda x sum(1 - |2h - 1|^beta)``, ``beta`` annealed
  from 20 to 2 after a 20 % warm-up, then ``h`` is rounded to 0 / 1. The output error is evaluated from the
  Gram matrix (exact over the whole calibration batch, cost independent of the image count) or, when the
  layer has fewer columns than inputs (the classifier), from the columns.

Both methods keep, per output channel, round-to-nearest where it is better on the objective (the objective
is a sum over output channels), so neither is ever worse than nearest on the calibration batch.

Libraries checked (2026): torchao 0.18 (installed) ships GPTQ only for ``nn.Linear`` with its own int4 /
int8 / NVFP4 tensor subclasses (group-wise, LLM-oriented): no conv, no depthwise, no 2..8-bit narrow-range
per-channel grid. brevitas 0.13.4 has GPTQ / GPFQ, but only on its own ``QuantConv2d`` / ``QuantLinear``
layers with its quantizer injectors: the model would have to be rebuilt from brevitas layers, our
BatchNorm-folded modules, MSE-searched fixed scales and ``FakeQuantAct`` replaced, and it pins
``setuptools<81`` and ``dependencies==2.0.1``. aimet-torch 2.42 (AdaRound, sequential MSE) works on its
``QuantizationSimModel`` wrappers, quantizes with its own (asymmetric by default) encodings exported as its
own files, and pulls bokeh, holoviews, cvxpy, osqp and tensorboard. Sony's model-compression-toolkit 2.6.1
converts the model into its own graph and exporter (its "GPTQ" is gradient-based fine-tuning), pins
``pydantic<2.12`` (we have 2.11, but it also pins networkx and matplotlib) and advertises torch <= 2.6 (we have
2.14). None rounds our modules in place onto our grid, so both methods are written here (about 200 lines).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tap_edge.core.errors import UserError

# AdaRound's rectified sigmoid stretch (Nagel et al. 2020).
_ZETA, _GAMMA = 1.1, -0.1


def _qmax(bits: int, method: str) -> int:
    """Largest level at ``bits`` (narrow range), or one line for a width the integer grid cannot take."""
    if not 2 <= bits <= 8:
        raise UserError(f"{method} rounds onto 2..8-bit integer grids, not {bits} bits",
                        "give weight widths 2..8 (16 and 32 stay float)")
    return (1 << (bits - 1)) - 1


def _padded(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input as the conv reads it: padded like the layer pads it (zeros, its padding mode, 'same', or timm's
    Conv2dSame, which pads from the input size as TensorFlow's 'SAME')."""
    k, stride, dil = mod.kernel_size, mod.stride, mod.dilation
    if type(mod).__name__ == "Conv2dSame":
        from timm.layers.padding import pad_same

        return pad_same(x, list(k), list(stride), list(dil))
    pad = mod.padding
    if isinstance(pad, str):
        if pad == "valid":
            return x
        total = [d * (kk - 1) for d, kk in zip(dil, k, strict=True)]  # 'same' (stride 1), as torch pads it
        return F.pad(x, [p for t in reversed(total) for p in (t // 2, t - t // 2)])
    if not any(pad):
        return x
    if mod.padding_mode != "zeros":
        return F.pad(x, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
    return F.pad(x, [p for pp in reversed(pad) for p in (pp, pp)])


def supports(mod: nn.Module) -> bool:
    """Whether :func:`layer_columns` can view ``mod``'s input as columns (Linear, Conv1d, Conv2d, Conv2dSame)."""
    return isinstance(mod, nn.Linear | nn.Conv1d | nn.Conv2d)


def layer_columns(mod: nn.Module, x: torch.Tensor, step: int = 1, offset: int = 0) -> torch.Tensor:
    """The columns [G, K, M] the layer multiplies its weights [G, C/G, K] with (im2col for convs, built from
    strided views: faster than ``F.unfold`` on CPU).

    ``step`` > 1 keeps the output positions on every ``step``-th row and column (starting at ``offset``):
    a cheap, even subsample of the columns of a high-resolution layer."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t()[None]
    g = mod.groups
    conv1d = isinstance(mod, nn.Conv1d)
    x = _padded(mod, x)
    if conv1d:
        x = x[..., None]
    k = (mod.kernel_size[0], 1) if conv1d else mod.kernel_size
    dil = (mod.dilation[0], 1) if conv1d else mod.dilation
    stride = (mod.stride[0], 1) if conv1d else mod.stride
    if step > 1 or offset:
        x = x[:, :, offset * stride[0]:, offset * stride[1] if not conv1d else 0:]
        stride = (stride[0] * step, stride[1] * step if not conv1d else 1)
    if k == (1, 1):  # the columns are the (strided) pixels
        x = x[:, :, ::stride[0], ::stride[1]]
        return x.transpose(0, 1).reshape(g, x.shape[1] // g, -1)
    ho = (x.shape[2] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1
    wo = (x.shape[3] - dil[1] * (k[1] - 1) - 1) // stride[1] + 1
    views = [x[:, :, i * dil[0]:i * dil[0] + (ho - 1) * stride[0] + 1:stride[0],
               j * dil[1]:j * dil[1] + (wo - 1) * stride[1] + 1:stride[1]].transpose(0, 1)
             for i in range(k[0]) for j in range(k[1])]
    cols = torch.stack(views, 1)  # [Cin, kh*kw, N, Ho, Wo]: im2col, channel-major like F.unfold
    return cols.reshape(g, cols.shape[0] // g * cols.shape[1], -1)


def grouped_weight(mod: nn.Module) -> torch.Tensor:
    """The layer's weight as [G, C/G, K] (the row layout of :func:`layer_columns`)."""
    w = mod.weight.detach()
    g = getattr(mod, "groups", 1)
    return w.reshape(g, w.shape[0] // g, -1)


@dataclass
class LayerStats:
    """What rounding needs of a layer's calibration inputs, summed over columns: ``hqq = X_q X_q^T`` and
    ``hqf = X_q X_f^T`` [G, K, K], the column count, and the columns of ``X_q`` themselves when there are fewer
    than ``K`` (else None)."""

    hqq: torch.Tensor
    hqf: torch.Tensor
    count: int
    cols_q: torch.Tensor | None = None


def layer_stats(mod: nn.Module, x_q: torch.Tensor, x_f: torch.Tensor, chunk: int = 8,
                max_columns: int = 1 << 17) -> LayerStats:
    """:class:`LayerStats` of ``mod`` from its quantized-path input ``x_q`` and float-path input ``x_f``
    (the same samples), ``chunk`` samples at a time (im2col of a whole batch can take gigabytes). A conv with
    more than ``max_columns`` columns (early, high-resolution layers) keeps the output positions on an even
    grid of every ``step``-th row and column (the grid shifted from chunk to chunk)."""
    per_sample = layer_columns(mod, x_q[:1]).shape[2]
    step = 1
    if not isinstance(mod, nn.Linear):
        spatial = 2 if isinstance(mod, nn.Conv2d) else 1
        while per_sample * len(x_q) / step ** spatial > max_columns and step < 16:
            step += 1
    hqq = hqf = None
    count = 0
    keep: list[torch.Tensor] | None = []
    for j, i in enumerate(range(0, len(x_q), chunk)):
        cq = layer_columns(mod, x_q[i:i + chunk], step, j % step)
        cf = layer_columns(mod, x_f[i:i + chunk], step, j % step)
        a = (cq @ cq.transpose(1, 2)).double()
        b = (cq @ cf.transpose(1, 2)).double()
        hqq, hqf = (a, b) if hqq is None else (hqq + a, hqf + b)
        count += cq.shape[2]
        if keep is not None:
            keep = keep + [cq] if count < cq.shape[1] else None  # else the Gram form is cheaper
    assert hqq is not None and hqf is not None
    return LayerStats(hqq, hqf, count, torch.cat(keep, 2) if keep else None)


def float_target(w: torch.Tensor, stats: LayerStats, percdamp: float) -> torch.Tensor:
    """The weights ``W_t`` [G, C, K] whose output on the quantized input best matches the float layer on the
    float input: ``W + W (X_f - X_q) X_q^T (H_qq + damp I)^-1`` (damped least squares on the difference, so
    directions the calibration inputs do not span keep ``W``: fitting ``W_t`` outright would zero them, and
    a layer with more inputs than calibration columns would then fail on new images). ``W`` when the two
    inputs are equal."""
    h = _damped(stats.hqq, percdamp)
    rhs = (stats.hqf - stats.hqq) @ w.double().transpose(1, 2)  # X_q (X_f - X_q)^T W^T  [G, K, C]
    lower, info = torch.linalg.cholesky_ex(h)
    sol = torch.cholesky_solve(rhs, lower) if not bool(info.any()) else torch.linalg.lstsq(h, rhs).solution
    return (w.double() + sol.transpose(1, 2)).to(w.dtype)


def _damped(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    h = h.clone()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag <= 0
    diag[dead] = 1.0  # an input that is always 0: its weight does not matter, keep it independent
    damp = percdamp * diag.mean(1, keepdim=True).clamp_min(1e-12)
    diag.add_(damp)
    return h


def nearest_levels(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """Round-to-nearest integers [G, C, K] of ``w`` with per-row scales [G, C]."""
    return torch.clamp(torch.round(w / scale[..., None]), -qmax, qmax)


def objective(w_target: torch.Tensor, w_hat: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    """``||W_t X_q - W_hat X_q||^2`` per row [G, C] (the part of the output error that depends on ``W_hat``)."""
    d = (w_hat - w_target).double()
    return ((d @ stats.hqq) * d).sum(2)


def output_scales(w_target: torch.Tensor, stats: LayerStats, scale: torch.Tensor, bits: int,
                  coarse: int = 7, fine: int = 6) -> torch.Tensor:
    """Per-row scales [G, C] minimising the output error of round-to-nearest, ``objective``, instead of the
    weight error. Tried: ``scale`` (the weight-MSE search's), ``coarse`` clips evenly between 0.3 and 1 of each
    row's largest target value, then ``fine`` clips spread over the coarse step around each row's best; each row
    keeps its best, so the result is never worse than ``scale`` on the objective. The search runs in float32
    (the objective costs C x K^2 per candidate: 0.7 s for 25 candidates on a 320 x 1152 layer, twice that in
    float64); a clip replaces the weight-MSE scale only when it is better by more than float32's rounding."""
    qmax = _qmax(bits, "output clipping")
    target = w_target.float()
    h = stats.hqq.float()
    top = target.abs().amax(2).clamp_min(1e-12)  # [G, C]
    best = torch.full(scale.shape, float("inf"))
    out = scale.float().clone()

    def trial(cand: torch.Tensor) -> None:
        nonlocal best, out
        d = nearest_levels(target, cand, qmax) * cand[..., None] - target
        err = ((d @ h) * d).sum(2)
        better = err < best * (1 - 1e-5)
        best = torch.where(better, err, best)
        out = torch.where(better, cand, out)

    trial(out)
    step = 0.7 / (coarse - 1)
    ratio = (out * qmax / top).clamp(0.05, 1.0)  # the weight-MSE clip, until a coarse clip beats it
    for r in torch.linspace(0.3, 1.0, coarse).tolist():
        before = best.clone()
        trial(top * r / qmax)
        ratio = torch.where(best < before, torch.full_like(ratio, r), ratio)
    for f in torch.linspace(-step, step, fine + 2)[1:-1].tolist():
        trial(top * (ratio + f).clamp(0.05, 1.0) / qmax)
    return out.to(scale.dtype)


def _keep_better(w_target: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, qmax: int,
                 stats: LayerStats) -> torch.Tensor:
    """Per output channel, ``q`` or round-to-nearest of the original target, whichever has the lower objective."""
    near = nearest_levels(w_target, scale, qmax)
    s = scale[..., None]
    better = objective(w_target, q * s, stats) <= objective(w_target, near * s, stats)
    return torch.where(better[..., None], q, near)


def gptq_round(w: torch.Tensor, stats: LayerStats, scale: torch.Tensor, bits: int, *, percdamp: float = 0.01,
               act_order: bool = True, block: int = 128, w_target: torch.Tensor | None = None) -> torch.Tensor:
    """GPTQ integers [G, C, K] for weights ``w`` [G, C, K] with fixed per-row scales [G, C] (module docstring).

    ``w_target`` (default ``w``) is what the rounding approximates; ``w`` itself is only the starting point
    (they differ with the float target of :func:`float_target`)."""
    qmax = _qmax(bits, "GPTQ")
    target = w if w_target is None else w_target
    g, c, k = target.shape
    h = _damped(stats.hqq, percdamp)
    work = target.double().clone()
    s = scale.double()[..., None]
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(h, dim1=1, dim2=2), dim=1, descending=True)  # [G, K]
        work = work.gather(2, perm[:, None, :].expand(g, c, k))
        h = h.gather(1, perm[:, :, None].expand(g, k, k)).gather(2, perm[:, None, :].expand(g, k, k))
    u = _inverse_cholesky(h)  # upper factor of H^-1 [G, K, K]
    levels = torch.zeros_like(work)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = work[:, :, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, :, i]
            lv = torch.clamp(torch.round(col / s[..., 0]), -qmax, qmax)
            levels[:, :, i1 + i] = lv
            err = (col - lv * s[..., 0]) / u1[:, i, i][:, None]
            w1[:, :, i:] -= err[:, :, None] * u1[:, None, i, i:]
            err1[:, :, i] = err
        if i2 < k:
            work[:, :, i2:] -= err1 @ u[:, i1:i2, i2:]
    if perm is not None:
        levels = torch.empty_like(levels).scatter_(2, perm[:, None, :].expand(g, c, k), levels)
    return _keep_better(target.double(), levels, scale.double(), qmax, stats).to(w.dtype)


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of ``h^-1`` (batched), adding damping until ``h`` is numerically positive definite."""
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    extra = 0.0
    for _ in range(8):
        hh = h + extra * eye * torch.diagonal(h, dim1=1, dim2=2).mean(1)[:, None, None]
        lower, info = torch.linalg.cholesky_ex(hh)
        if not bool(info.any()):
            inv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if not bool(info.any()):
                return upper
        extra = max(extra * 10, 1e-4)
    raise ArithmeticError("the layer's input Gram matrix is not positive definite even with damping")


def adaround(w: torch.Tensor, stats: LayerStats, scale: torch.Tensor, bits: int, *, iters: int = 1000,
             lam: float = 0.01, lr: float = 1e-2, warmup: float = 0.2, beta: tuple[float, float] = (20.0, 2.0),
             w_target: torch.Tensor | None = None) -> torch.Tensor:
    """AdaRound integers [G, C, K] for weights ``w`` [G, C, K] with fixed per-row scales [G, C] (module
    docstring). Deterministic: full-batch, no sampling."""
    qmax = _qmax(bits, "AdaRound")
    target = (w if w_target is None else w_target).float()
    s = scale.float()[..., None]
    base = torch.floor(w.float() / s)
    rest = (w.float() / s - base).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((_ZETA - _GAMMA) / (rest - _GAMMA) - 1)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    cols = stats.cols_q
    hqq = stats.hqq.float() if cols is None else None
    norm = 1.0 / max(stats.count, 1)
    warm = int(warmup * iters)
    with torch.enable_grad():
        for it in range(iters):
            h = torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)
            d = s * torch.clamp(base + h, -qmax, qmax) - target
            rec = ((d @ cols) ** 2).sum() if cols is not None else ((d @ hqq) * d).sum()
            loss = rec * norm
            if it >= warm:
                t = (it - warm) / max(iters - warm, 1)
                b = beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - t)
                loss = loss + lam * (1 - (2 * h - 1).abs().pow(b)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    levels = torch.clamp(base + (v.detach() >= 0).float(), -qmax, qmax)
    return _keep_better(target.double(), levels.double(), scale.double(), qmax, stats).to(w.dtype)


def mean_shift(out_f: torch.Tensor, out_q: torch.Tensor, linear: bool) -> torch.Tensor:
    """Empirical bias correction [C]: the float layer's mean output (on the float input) minus the quantized
    layer's (on the quantized input), per output channel (dim 1 of a conv's output, the last of a linear's)."""
    d = out_f - out_q
    return d.reshape(-1, d.shape[-1]).mean(0) if linear else d.transpose(0, 1).reshape(d.shape[1], -1).mean(1)
