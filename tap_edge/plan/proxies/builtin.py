"""Built-in sensitivity proxies. Each docstring gives the formula; costs are per layer and weight width ``b``.

Notation: ``W`` a layer's (BN-folded) weight, ``n`` its number of weights, ``Q_b(W)`` the PTQ quantizer at ``b``
bits (``tap_edge.quantize.ptq``), ``dW_b = Q_b(W) - W``; the label-free loss ``L`` is the cross-entropy to the
float model's own top-1 predictions on the calibration batch (``tap_edge.plan.stats``).
"""

from __future__ import annotations

import copy as copy_module
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tap_edge.core.console import progress
from tap_edge.core.errors import UserError
from tap_edge.plan.proxies import ProxyContext, WeightCosts, register_proxy
from tap_edge.plan.stats import LayerStats, label_free_loss, model_logits, pseudo_targets, run_tasks, worker_threads
from tap_edge.quantize.ptq import quantize_weight

PROGRAMS = Path(__file__).resolve().parent / "programs"
#: The hand-written starting program of the search (the ``tap-seed`` proxy).
SEED_PROGRAM = PROGRAMS / "tap_seed.py"
#: The best program of a real ``tap-edge evolve`` run (provenance in its header and ``programs/search_*.md``):
#: the ``tap`` proxy's program.
DISCOVERED_PROGRAM = PROGRAMS / "tap_discovered.py"


def _rel_qerr(s: LayerStats) -> np.ndarray:
    """``||dW_b||^2 / ||W||^2`` per candidate width."""
    wsq = float(np.square(s.weight, dtype=np.float64).sum())
    return np.asarray(s.qerr, np.float64) / wsq if wsq > 0 else np.zeros(len(s.bits))


def _table(stats: list[LayerStats], values: list[np.ndarray]) -> WeightCosts:
    return {s.name: {int(b): float(max(0.0, v)) for b, v in zip(s.bits, row, strict=True)}
            for s, row in zip(stats, values, strict=True)}


# ---- HAWQ -------------------------------------------------------------------------------------------------
def _hessian_loss(out: torch.Tensor, loss: str, seed: int) -> torch.Tensor:
    """Mean over the batch of the loss whose Hessian is estimated (see :func:`hutchinson_traces`)."""
    import torch.nn.functional as F

    if loss == "kl":
        logq = F.log_softmax(out.float(), 1)
        logp = logq.detach()
        return (logp.exp() * (logp - logq)).sum() / len(out)
    return label_free_loss(out, loss, pseudo_targets(out.detach(), loss, seed)) / len(out)


def hutchinson_traces(model: torch.nn.Module, x: torch.Tensor, params: list[torch.Tensor], loss: str = "kl",
                      *, max_iter: int = 16, min_iter: int = 4, tol: float = 1e-2, seed: int = 0,
                      requires_grad: bool = True) -> tuple[list[float], int]:
    """Hutchinson estimates of ``Tr(H_i)`` for each parameter block ``i`` of a label-free loss (mean over the
    batch): ``Tr(H_i) ~ mean_k v_k,i^T (H v_k)_i`` with Rademacher vectors ``v_k`` over all blocks at once
    (PyHessian's estimator). Stops when the total trace moves by less than ``tol`` (relative) after at least
    ``min_iter`` vectors, or after ``max_iter``. Returns the traces and the number of vectors used.

    ``loss="kl"`` (default): ``KL(p_float || p_model)`` with ``p_float`` the model's own (detached) output. Its
    gradient is zero at the float weights but its Hessian there is the Gauss-Newton / Fisher matrix
    ``J^T (diag(p) - p p^T) J``: positive semi-definite, and exactly the curvature of the KL damage that
    quantization causes. The stats losses (``"argmax_ce"``, ...) are accepted too; their Hessians are not PSD.
    ``requires_grad=False``: the caller has already switched the parameters' gradients on (and off after)."""
    if requires_grad:
        for p in params:
            p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.enable_grad():
            lv = _hessian_loss(model_logits(model(x)), loss, seed)
            grads = torch.autograd.grad(lv, params, create_graph=True)
            acc = torch.zeros(len(params), dtype=torch.float64)
            prev = None
            it = 0
            for it in range(1, max_iter + 1):
                vs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype).mul_(2).sub_(1) for p in params]
                hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=it < max_iter)
                acc += torch.stack([(h * v).sum().double() for h, v in zip(hv, vs, strict=True)])
                total = float(acc.sum()) / it
                if it >= min_iter and prev is not None and abs(total - prev) <= tol * (abs(prev) + 1e-30):
                    break
                prev = total
    finally:
        if requires_grad:
            for p in params:
                p.requires_grad_(False)
    return (acc / max(it, 1)).tolist(), it


def output_space_traces(model: torch.nn.Module, x: torch.Tensor, params: list[torch.Tensor], *, probes: int = 4,
                        seed: int = 0) -> list[float]:
    """``Tr(G_i)`` of the Gauss-Newton / Fisher block ``G_i = mean_x J_i^T (diag(p) - p p^T) J_i`` (the Hessian of
    ``KL(p_float || p)`` at the float weights) by Hutchinson's estimator in output space: for each sample, probes
    ``u = onehot(y) - p`` with ``y ~ p`` have covariance ``diag(p) - p p^T``, so ``E ||J_i^T u||^2 = Tr(J_i^T
    (diag(p) - p p^T) J_i)``, and ``J_i^T u`` is the gradient of the cross-entropy to ``y``: one backward pass
    per probe gives every layer's term with no cross-layer noise. Per sample, ``probes`` labels; mean over x."""
    gen = torch.Generator().manual_seed(seed)
    acc = torch.zeros(len(params), dtype=torch.float64)
    import torch.nn.functional as F

    for i in range(len(x)):
        with torch.enable_grad():
            out = model_logits(model(x[i:i + 1])).float()
            p = F.softmax(out.detach(), 1).reshape(-1)
            ys = torch.multinomial(p, probes, replacement=True, generator=gen)
            logp = F.log_softmax(out, 1).reshape(-1)
            for k, y in enumerate(ys.tolist()):
                gs = torch.autograd.grad(-logp[y], params, retain_graph=k < probes - 1)
                acc += torch.stack([g.double().square().sum() for g in gs])
    return (acc / max(1, len(x) * probes)).tolist()


def _halves(n: int, workers: int) -> list[slice]:
    """Contiguous near-equal slices of ``range(n)``, one per worker (fewer when n is small)."""
    k = max(1, min(workers, n))
    edges = [round(i * n / k) for i in range(k + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(k)]


@register_proxy("hawq", needs_model=True)
def hawq(stats: list[LayerStats], ctx: ProxyContext, max_iter: int = 20, min_iter: int = 8, tol: float = 1e-2,
         samples: int | None = None, loss: str = "kl", estimator: str = "output", probes: int = 4) -> WeightCosts:
    """HAWQ-V2/V3: ``cost_i(b) = Tr(H_i) / n_i x ||Q_b(W_i) - W_i||^2``, Hessian trace by Hutchinson.

    ``H_i`` is the Hessian block w.r.t. layer ``i``'s weights of the label-free loss ``KL(p_float || p)`` (HAWQ
    uses the training loss, which needs labels; at the float weights this Hessian is the PSD Gauss-Newton
    matrix ``J^T (diag(p) - p p^T) J``), ``Tr(H_i) / n_i`` the average Hessian trace (HAWQ-V2, Dong et al.
    2020), and the product with the squared quantization perturbation is HAWQ-V3's ILP sensitivity
    ``Omega_i`` (Yao et al. 2021). Traces are Hutchinson estimates on the calibration batch (``samples``
    limits it), split over the cores (the Hessian of the mean loss is the mean of the parts' Hessians):

    - ``estimator="output"`` (default): probes in output space (:func:`output_space_traces`, ``probes`` per
      sample): exact block traces in expectation, one backward pass per probe, no cross-layer noise. On
      EfficientNet-Lite0 with 16 photos: ~5 s, per-layer traces of two seeds rank-correlate at 0.997.
    - ``estimator="params"``: Rademacher probes over all weights (:func:`hutchinson_traces`, PyHessian's
      estimator as HAWQ-V2 uses it), 8 to 20 probes per part (``min_iter``, ``max_iter``, stopping rule
      ``tol`` on the total trace), ``loss`` selects the loss. The probes span all layers, so cross-layer
      Hessian blocks add variance: ~55 s there and a rank correlation of only 0.53 between two seeds.

    The blocks are positive semi-definite, so a non-positive estimate is noise around a small trace: such a
    layer gets the smallest positive average trace of the others (not 0, which would make its bits free).
    """
    model = ctx.folded_model()
    x = ctx.batch()[:samples] if samples else ctx.batch()
    modules = dict(model.named_modules())
    names = list(dict.fromkeys(s.module for s in stats))
    params = [modules[m].weight for m in names]
    results: list[tuple[float, list[float]]] = []
    with worker_threads() as workers:
        parts = _halves(len(x), workers)

        if estimator not in ("output", "params"):
            raise UserError(f"unknown Hutchinson estimator '{estimator}'", "use output or params")

        def part(k: int, sl: slice) -> Any:
            def run() -> None:
                if estimator == "output":
                    tr = output_space_traces(model, x[sl], params, probes=probes, seed=ctx.seed * 7919 + k)
                else:
                    tr, _ = hutchinson_traces(model, x[sl], params, loss, max_iter=max_iter, min_iter=min_iter,
                                              tol=tol, seed=ctx.seed * 7919 + k, requires_grad=False)
                results.append((float(sl.stop - sl.start), tr))
            return run

        for p in params:
            p.requires_grad_(True)
        try:
            run_tasks([("hutchinson", part(k, sl)) for k, sl in enumerate(parts)], workers=workers)
        finally:
            for p in params:
                p.requires_grad_(False)
    total = sum(w for w, _ in results)
    traces = [sum(w * tr[i] for w, tr in results) / total for i in range(len(names))]
    size = {s.module: max(1, s.weight.size) for s in stats}
    avg = {m: t / size[m] for m, t in zip(names, traces, strict=True)}
    positive = [v for v in avg.values() if v > 0]
    floor = min(positive) if positive else 1.0
    return _table(stats, [(avg[s.module] if avg[s.module] > 0 else floor) * np.asarray(s.qerr, np.float64)
                          for s in stats])


# ---- OMPQ -------------------------------------------------------------------------------------------------
def _centered(g: np.ndarray) -> np.ndarray:
    g = np.asarray(g, np.float64)
    n = len(g)
    h = np.eye(n) - np.full((n, n), 1.0 / n)
    return h @ g @ h


def orthogonality_matrix(stats: list[LayerStats]) -> np.ndarray:
    """OMPQ's ORM between every pair of layers: ``<K_i, K_j>_F / (||K_i||_F ||K_j||_F)`` with ``K_i`` the
    centred Gram matrix of layer ``i``'s per-sample flattened outputs (linear CKA; 0 = orthogonal features)."""
    ks = [_centered(s.out_gram) for s in stats]
    flat = np.stack([k.ravel() for k in ks])
    norms = np.linalg.norm(flat, axis=1)
    norms[norms == 0] = np.inf
    unit = flat / norms[:, None]
    return np.clip(unit @ unit.T, 0.0, 1.0)


@register_proxy("ompq")
def ompq(stats: list[LayerStats], ctx: ProxyContext, beta: float = 1.0, per_bit: str = "perturbation") -> WeightCosts:
    """OMPQ (Ma et al., AAAI 2023): orthogonality of layer features -> layer importance -> cost per width.

    From one batch: ``ORM_ij`` (:func:`orthogonality_matrix`), ``gamma_i = sum_{j != i} ORM_ij``, importance
    ``theta_i = exp(-beta x gamma_i)`` (a layer whose features are orthogonal to the others' matters more), and
    the coefficient OMPQ's program puts on layer ``i``'s bit-width, ``c_i = mean_{j >= i} theta_j`` (a layer's
    precision also affects every later layer). ``per_bit="perturbation"`` (default) turns it into a cost per
    width with the quantization perturbation: ``cost_i(b) = c_i x ||dW_b||^2 / ||W_i||^2``; ``"linear"`` is the
    paper's linear objective itself: ``cost_i(b) = c_i x (8 - b) / 8``. ``theta`` is divided by its maximum
    (``exp(-beta (gamma_i - min gamma))``, a global factor) so it cannot underflow; the paper tunes ``beta`` per
    network (its scripts use 1e-9 .. 100; the code's default is 1).
    """
    if per_bit not in ("perturbation", "linear"):
        raise UserError(f"unknown OMPQ per-bit mode '{per_bit}'", "use perturbation or linear")
    orm = orthogonality_matrix(stats)
    gamma = orm.sum(1) - np.diag(orm)
    theta = np.exp(-beta * (gamma - gamma.min()))
    coef = np.array([theta[i:].mean() for i in range(len(stats))])
    rows = []
    for c, s in zip(coef, stats, strict=True):
        if per_bit == "linear":
            rows.append(c * (8.0 - np.asarray(s.bits, np.float64)) / 8.0)
        else:
            rows.append(c * _rel_qerr(s))
    return _table(stats, rows)


# ---- Fisher -----------------------------------------------------------------------------------------------
@register_proxy("fisher")
def fisher(stats: list[LayerStats], ctx: ProxyContext) -> WeightCosts:
    """Empirical Fisher: ``cost_i(b) = sum_samples sum_j g_j^2 x dW_b,j^2`` (``g`` per-sample gradients of the
    label-free loss), i.e. twice the second-order loss increase with the Fisher diagonal as the Hessian
    (as in Fisher-based pruning and BRECQ's sensitivity)."""
    return _table(stats, [s.n_samples * np.asarray(s.qerr_fisher, np.float64) for s in stats])


# ---- output error -----------------------------------------------------------------------------------------
def _layer_output_nsr(stats: list[LayerStats], ctx: ProxyContext) -> list[np.ndarray]:
    """Per layer and width: sum ||y(Q_b(W)) - y(W)||^2 / sum ||y(W)||^2 on the calibration batch.

    Each worker thread runs its own copy of the folded model: ``functional_call`` swaps a module's weight while
    it runs, so two threads in one module would read (and could leave behind) each other's quantized weight."""
    model = ctx.folded_model()
    x = ctx.batch()
    by_module = {s.module: s for s in stats}
    acc: dict[tuple[int, str], np.ndarray] = {}  # (thread, module) -> [sum ||dy_b||^2 ..., sum ||y||^2]
    local = threading.local()
    lock = threading.Lock()

    def make(name: str) -> Any:
        def hook(mod: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
            if getattr(local, "busy", False):
                return  # the hook's own calls below
            local.busy = True
            try:
                s = by_module[name]
                row = np.zeros(len(s.bits) + 1)
                row[-1] = float(out.double().square().sum())
                for j, b in enumerate(s.bits):
                    wq = quantize_weight(mod.weight, torch.from_numpy(s.qscale[j]), b)
                    yq = torch.func.functional_call(mod, {"weight": wq}, (args[0],))
                    row[j] = float((yq - out).double().square().sum())
                with lock:
                    key = (threading.get_ident(), name)
                    acc[key] = acc.get(key, 0.0) + row
            finally:
                local.busy = False
        return hook

    def part(copy: torch.nn.Module, sl: slice) -> Any:
        def run() -> None:
            with torch.no_grad():
                for i in range(sl.start, sl.stop, 8):
                    copy(x[i:min(i + 8, sl.stop)])
        return run

    with worker_threads() as workers:
        halves = _halves(len(x), workers)
        copies = [copy_module.deepcopy(model) for _ in halves]
        for c in copies:
            modules = dict(c.named_modules())
            for m in by_module:
                modules[m].register_forward_hook(make(m))
        run_tasks([("qerror", part(c, sl)) for c, sl in zip(copies, halves, strict=True)], workers=workers)
    rows = []
    for s in stats:
        tot = sum((v for (t, m), v in acc.items() if m == s.module), np.zeros(len(s.bits) + 1))
        rows.append(tot[:-1] / tot[-1] if tot[-1] > 0 else np.zeros(len(s.bits)))
    return rows


def _model_output_kl(stats: list[LayerStats], ctx: ProxyContext) -> list[np.ndarray]:
    import torch.nn.functional as F

    model = ctx.folded_model()
    x = ctx.batch()
    modules = dict(model.named_modules())
    with worker_threads() as workers:
        parts = _halves(len(x), workers)
        outs: dict[int, torch.Tensor] = {}

        def forward() -> torch.Tensor:
            def part(k: int, sl: slice) -> Any:
                def run() -> None:
                    with torch.no_grad():
                        outs[k] = model_logits(model(x[sl])).double()
                return run
            run_tasks([("forward", part(k, sl)) for k, sl in enumerate(parts)], workers=workers)
            return F.log_softmax(torch.cat([outs[k] for k in range(len(parts))]), 1)

        ref = forward()
        rows = []
        with torch.no_grad(), progress("qerror: model output KL", total=sum(len(s.bits) for s in stats)) as bar:
            for s in stats:
                w = modules[s.module].weight
                orig = w.detach().clone()
                row = np.zeros(len(s.bits))
                try:
                    for j, b in enumerate(s.bits):
                        w.copy_(quantize_weight(orig, torch.from_numpy(s.qscale[j]), b))
                        row[j] = float((ref.exp() * (ref - forward())).sum(1).mean())
                        bar.advance()
                finally:
                    w.copy_(orig)
                rows.append(row)
    return rows


@register_proxy("qerror", needs_model=True)
def qerror(stats: list[LayerStats], ctx: ProxyContext, level: str = "layer") -> WeightCosts:
    """Output error of quantizing the layer alone, measured on the calibration batch.

    ``level="layer"`` (default): the layer's output noise-to-signal ratio
    ``cost_i(b) = sum ||y_i(Q_b(W_i)) - y_i(W_i)||^2 / sum ||y_i(W_i)||^2`` over the batch, with the layer's float
    input (the per-layer SQNR that quantization debuggers report). ``level="model"``: the mean
    ``KL(p_float || p_b,i)`` of the model output when only layer ``i`` is quantized at ``b`` bits (one forward
    pass per layer and width: the expensive baseline of design.md)."""
    if level == "layer":
        return _table(stats, _layer_output_nsr(stats, ctx))
    if level == "model":
        return _table(stats, _model_output_kl(stats, ctx))
    raise UserError(f"unknown qerror level '{level}'", "use layer or model")


@register_proxy("kl", needs_model=True)
def kl(stats: list[LayerStats], ctx: ProxyContext) -> WeightCosts:
    """design.md's expensive baseline: ``cost_i(b) = mean KL(p_float || p_b,i)`` of the model output on the
    calibration batch when only layer ``i`` is quantized at ``b`` bits (``qerror`` with ``level="model"``;
    one forward pass per layer and width, minutes on EfficientNet-Lite0)."""
    return _table(stats, _model_output_kl(stats, ctx))


# ---- baselines --------------------------------------------------------------------------------------------
def _noise_shape(bits: list[int]) -> np.ndarray:
    """``4^(8 - b) / 4^6``: quantization noise power relative to 2 bits (1 at 2 bits, 1/4096 at 8)."""
    return np.power(4.0, 8.0 - np.asarray(bits, np.float64)) / 4.0 ** 6


@register_proxy("uniform")
def uniform(stats: list[LayerStats], ctx: ProxyContext) -> WeightCosts:
    """Every layer equally sensitive per weight: ``cost_i(b) = n_i / sum_k n_k x 4^(8 - b) / 4^6``.

    The per-weight form makes the optimum under a flash budget equal widths (a convex cost per weight); without
    the ``n_i`` factor an optimiser would put all low widths on the largest layers."""
    total = float(sum(s.weight.size for s in stats)) or 1.0
    return _table(stats, [s.weight.size / total * _noise_shape(s.bits) for s in stats])


@register_proxy("random")
def random(stats: list[LayerStats], ctx: ProxyContext, seed: int | None = None) -> WeightCosts:
    """A random sensitivity per layer (seeded): ``cost_i(b) = r_i x uniform_i(b)``, ``r_i = 10^U(-2, 0)``.

    Monotone in ``b`` like every real proxy, so it is the "no information" baseline for allocation."""
    rng = np.random.default_rng(ctx.seed if seed is None else seed)
    r = np.power(10.0, rng.uniform(-2.0, 0.0, len(stats)))
    base = uniform(stats, ctx)
    return {s.name: {b: float(v * ri) for b, v in base[s.name].items()} for s, ri in zip(stats, r, strict=True)}


# ---- TAP --------------------------------------------------------------------------------------------------
def tap_program_source(path: str | Path | None = None) -> str:
    """The text of a TAP proxy program (default: the shipped program, :data:`DISCOVERED_PROGRAM`)."""
    p = Path(path) if path else DISCOVERED_PROGRAM
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: proxy program not found", "check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: unreadable proxy program ({e.__class__.__name__})") from None


@register_proxy("tap")
def tap(stats: list[LayerStats], ctx: ProxyContext, source: str | None = None, path: str | Path | None = None,
        layers: list[dict[str, Any]] | None = None, cpu_seconds: float = 30, memory_mb: int = 2048,
        wall_seconds: float = 60) -> WeightCosts:
    """A TAP proxy program: Python source defining ``proxy(layer: dict, bits: list[int]) -> list[float]``, called
    once per layer with ``LayerStats.to_program_input()`` (``tap_edge.plan.stats.LAYERSTATS_API``), run vetted
    in the sandbox (``tap_edge.plan.proxies.sandbox.run_proxy_program``). Default program:
    ``programs/tap_discovered.py``, the best program of a real search run; ``source`` / ``path`` give another;
    ``layers`` reuses already built program inputs."""
    from tap_edge.plan.proxies.sandbox import run_proxy_program  # lazy: the sandbox is only needed for TAP programs

    src = source if source is not None else tap_program_source(path)
    bits = [int(b) for b in stats[0].bits] if stats else []
    inputs = layers if layers is not None else [s.to_program_input() for s in stats]
    res = run_proxy_program(src, inputs, bits, cpu_seconds=cpu_seconds, memory_mb=memory_mb,
                            wall_seconds=wall_seconds)
    if not res.ok or res.costs is None:
        raise UserError(f"TAP proxy program failed: {res.reason}", "check the program (tap-edge evolve logs why)")
    return _table(stats, [np.asarray(row, np.float64) for row in res.costs])


@register_proxy("tap-seed")
def tap_seed(stats: list[LayerStats], ctx: ProxyContext, layers: list[dict[str, Any]] | None = None) -> WeightCosts:
    """The hand-written seed of the TAP search (``programs/tap_seed.py``), run like ``tap``: the baseline the
    discovered program is compared with."""
    return tap(stats, ctx, path=SEED_PROGRAM, layers=layers)
