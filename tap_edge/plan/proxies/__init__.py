"""Sensitivity proxies: LayerStats -> cost per candidate weight width (registry: :func:`list_proxies`).

A proxy is called as ``get_proxy(name)(stats, ctx, **options)`` with the list of
:class:`~tap_edge.plan.stats.LayerStats` of a model and a :class:`ProxyContext` (the float model, its graph and the
calibration batch, for proxies that need extra passes such as HAWQ's Hutchinson estimate). It returns
``costs[op_name][weight_bits]``: non-negative and finite, larger = more damage; the call checks this contract
for every layer and width. Built-ins (``tap_edge.plan.proxies.builtin``): ``hawq``, ``ompq``, ``fisher``,
``qerror``, ``uniform``, ``random`` and ``tap`` (a TAP proxy program run in the sandbox).

Activation widths: :func:`activation_costs` gives a cost for 8 / 16-bit (and float) activations of each layer's
output, and :func:`cost_table` adds weight and activation costs into the ``{op: {(w, a): cost}}`` table the
allocator (``tap_edge.plan.allocate``) consumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tap_edge.core.errors import UserError
from tap_edge.core.registry import Registry
from tap_edge.plan.allocate import CostTable

#: A proxy's answer: cost per quantizable op per weight width (larger = more damage).
WeightCosts = dict[str, dict[int, float]]

ACT_CHOICES = (8, 16, 32)


@dataclass
class ProxyContext:
    """What proxies may need besides LayerStats: the float PyTorch model, its graph, the calibration batch.

    ``cache`` holds things several proxies share (the BN-folded model: :meth:`folded_model`)."""

    model: Any = None
    graph: Any = None
    calib: Any = None
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)

    def folded_model(self) -> Any:
        """The BN-folded float model (a copy, channels-last for 4-D input), built once."""
        if self.model is None or self.calib is None:
            raise UserError("this proxy needs the PyTorch model and the calibration batch",
                            "call it with ProxyContext(model=..., graph=..., calib=...)")
        if "folded" not in self.cache:
            import torch

            from tap_edge.quantize.ptq import folded_copy

            m = folded_copy(self.model)
            if self.calib.dim() == 4:
                m = m.to(memory_format=torch.channels_last)
            self.cache["folded"] = m
        return self.cache["folded"]

    def batch(self) -> Any:
        import torch

        x = self.calib.detach().float()
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


ProxyFn = Callable[..., WeightCosts]


@dataclass
class Proxy:
    """A registered proxy: ``fn(stats, ctx, **options) -> costs``; calling it checks the output contract."""

    name: str
    fn: ProxyFn
    needs_model: bool = False
    summary: str = ""

    def __call__(self, stats: list[Any], ctx: ProxyContext | None = None, **options: Any) -> WeightCosts:
        ctx = ctx if ctx is not None else ProxyContext()
        if self.needs_model and (ctx.model is None or ctx.calib is None):
            raise UserError(f"proxy '{self.name}' needs the PyTorch model and the calibration batch",
                            "give ProxyContext(model=..., graph=..., calib=...)")
        costs = self.fn(stats, ctx, **options)
        check_costs(costs, stats, self.name)
        return costs


_PROXIES: Registry[Proxy] = Registry("proxy")


def register_proxy(name: str, *, needs_model: bool = False, replace: bool = False) -> Callable[[ProxyFn], ProxyFn]:
    """Decorator: register ``fn(stats, ctx, **options) -> costs`` as proxy ``name`` (summary: its docstring's
    first line)."""

    def deco(fn: ProxyFn) -> ProxyFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _PROXIES.add(name, Proxy(name, fn, needs_model, summary), replace=replace)
        return fn

    return deco


def _builtins() -> Registry[Proxy]:
    """The registry with the built-in proxies in it: they register when ``builtin`` is first imported, which
    loads torch, so it happens on first use rather than with this package (the sandbox and the search import
    the package without needing a proxy)."""
    from tap_edge.plan.proxies import builtin  # noqa: F401 - registers hawq, ompq, fisher, ..., tap

    return _PROXIES


def list_proxies(pattern: str = "*") -> list[str]:
    return _builtins().list(pattern)


def get_proxy(name: str) -> Proxy:
    return _builtins().get(name)


class ProxyError(UserError):
    """A proxy answered outside its contract (a layer or width without a finite, non-negative cost)."""


def check_costs(costs: Any, stats: list[Any], name: str = "proxy") -> None:
    """Raise :class:`ProxyError` unless ``costs`` has a finite non-negative cost for every layer and candidate width."""
    if not isinstance(costs, dict):
        raise ProxyError(f"proxy {name}: costs must be a dict, got {type(costs).__name__}")
    for s in stats:
        row = costs.get(s.name)
        if not isinstance(row, dict):
            raise ProxyError(f"proxy {name}: no costs for layer '{s.name}'")
        for b in s.bits:
            v = row.get(b)
            if not isinstance(v, float | int) or not math.isfinite(v) or v < 0:
                raise ProxyError(f"proxy {name}: layer '{s.name}' width {b}: invalid cost {v!r}")


# ---- activations ------------------------------------------------------------------------------------------
def activation_noise(stats: Any, bits: int) -> float:
    """Relative noise power (noise / mean square) of fake-quantizing the layer's output tensor at ``bits``.

    Uniform quantization noise ``step**2 / 12`` with the PTQ scheme and min/max range: 8 bits asymmetric
    ``step = (max(hi, 0) - min(lo, 0)) / 255``; 16 bits symmetric ``step = absmax / 32767``; 32 = float: 0."""
    if bits >= 32:
        return 0.0
    o = stats.out_stats
    power = o["std"] ** 2 + o["mean"] ** 2
    if bits == 8:
        step = (max(o["max"], 0.0) - min(o["min"], 0.0)) / 255.0
    else:
        step = o["absmax"] / ((1 << (bits - 1)) - 1)
    return float(step * step / 12.0 / power) if power > 0 else 0.0


def activation_costs(stats: list[Any], weight_costs: WeightCosts | None = None,
                     act_bits: tuple[int, ...] = ACT_CHOICES) -> dict[str, dict[int, float]]:
    """Cost of each activation width for every layer's output tensor.

    Without ``weight_costs``: the relative noise power of :func:`activation_noise` (8 bits ~1e-5, 16 bits
    ~1e-10, float 0). With ``weight_costs`` (a proxy's output) the noise is put in that proxy's units: a layer's
    activation noise of relative power ``r`` costs what the proxy charges for a weight perturbation of the
    same relative power, i.e. ``r x cost_w(8) / (qerr(8) / ||W||^2)`` (first order, ``y = W x``: relative
    noise on ``x`` or on ``W`` perturbs ``y`` alike)."""
    out: dict[str, dict[int, float]] = {}
    for s in stats:
        rate = 1.0
        if weight_costs is not None:
            wsq = float((s.weight.astype("float64") ** 2).sum())
            b = 8 if 8 in s.bits else max(s.bits)
            rel = float(s.qerr[s.bits.index(b)]) / wsq if wsq > 0 else 0.0
            rate = float(weight_costs[s.name][b]) / rel if rel > 0 else 0.0
        out[s.name] = {a: activation_noise(s, a) * rate for a in act_bits}
    return out


def cost_table(weight_costs: WeightCosts, act_costs: dict[str, dict[int, float]]) -> CostTable:
    """``{op: {(w, a): weight_cost[w] + act_cost[a]}}`` for every width pair: the allocator's input."""
    if set(weight_costs) != set(act_costs):
        extra = sorted(set(weight_costs) ^ set(act_costs))
        raise ProxyError(f"weight and activation costs name different layers, e.g. '{extra[0]}'")
    return {op: {(w, a): float(cw) + float(ca) for w, cw in row.items() for a, ca in act_costs[op].items()}
            for op, row in weight_costs.items()}


def compute_costs(name: str, stats: list[Any], ctx: ProxyContext | None = None, *,
                  with_activations: bool = True, **options: Any) -> CostTable:
    """Proxy ``name`` + activation costs in its units -> the allocator's ``{op: {(w, a): cost}}`` table."""
    w = get_proxy(name)(stats, ctx, **options)
    a = activation_costs(stats, w) if with_activations else {s.name: {8: 0.0} for s in stats}
    return cost_table(w, a)


__all__ = ["ACT_CHOICES", "CostTable", "Proxy", "ProxyContext", "ProxyError", "WeightCosts", "activation_costs",
           "activation_noise", "check_costs", "compute_costs", "cost_table", "get_proxy", "list_proxies",
           "register_proxy"]
