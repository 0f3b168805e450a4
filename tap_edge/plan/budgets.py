"""Budgets of a plan: what the user asked for (:class:`BudgetSpec`, numbers the CLI already parsed) resolved
once against the device, its runtime and the graph into the :class:`Budgets` the integer program meets.

Defaults are the device's own limits, exactly those ``tap-edge check`` applies
(:func:`tap_edge.fit.checker.region_limits`): flash = free bytes of the weights region, SRAM = free bytes of the
arena region; when both are one memory (phones, Linux boards) the plan's flash total comes off the SRAM limit,
which depends on the plan and is therefore modelled as ``shared_region`` (arena + flash <= free).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tap_edge.core.errors import UserError
from tap_edge.devices import DeviceProfile, Runtime
from tap_edge.fit.bits import WEIGHT_BITS, BitAssignment
from tap_edge.fit.footprint import flash_breakdown
from tap_edge.graph.graph import ModelGraph


@dataclass(frozen=True, kw_only=True)
class BudgetSpec:
    """The budgets a user gave, as numbers (``None``: the device's). ``flash_like_bits`` = 4 means "the flash
    of uniform 4-bit weights" (``--flash-like w4``); it excludes ``flash_bytes``."""

    flash_bytes: int | None = None
    flash_like_bits: int | None = None
    sram_bytes: int | None = None
    bops: int | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        if self.flash_bytes is not None and self.flash_like_bits is not None:
            raise UserError("a flash budget in bytes and one of a uniform width were both given", "give one of them")
        if self.flash_like_bits is not None and self.flash_like_bits not in WEIGHT_BITS:
            raise UserError(f"flash of uniform {self.flash_like_bits}-bit weights: no such width",
                            f"widths are {', '.join(map(str, WEIGHT_BITS))}")
        for name in ("flash_bytes", "sram_bytes", "bops"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UserError(f"{name.replace('_', ' ')} budget must not be negative, got {v}")
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise UserError(f"latency budget must be positive, got {self.latency_ms} ms")


@dataclass
class Budgets:
    """Limits a plan must meet. ``None`` means unconstrained.

    ``flash_bytes`` bounds the same total as ``tap-edge check``: ``flash_breakdown(...).total_bytes`` (packed
    weights, scales, biases, float constants) plus the runtime's code bytes. ``sram_bytes`` bounds the
    activation arena (``memory.plan_arena``); with ``shared_region`` (weights and arena in one memory, as on
    phones) it bounds arena + flash total, exactly what ``check`` tests. ``clock_hz`` drives the latency
    model (:func:`tap_edge.fit.latency.cycles_per_mac`).
    """

    flash_bytes: int | None
    sram_bytes: int | None
    bops: int | None = None
    latency_ms: float | None = None
    shared_region: bool = False
    clock_hz: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"flash_bytes": self.flash_bytes, "sram_bytes": self.sram_bytes, "bops": self.bops,
                "latency_ms": self.latency_ms, "shared_region": self.shared_region}


def budgets_from_device(device: DeviceProfile) -> Budgets:
    """The limits ``tap-edge check`` applies to any plan on ``device`` (see the module docstring)."""
    wreg, areg = device.weights_region(), device.arena_region()
    return Budgets(flash_bytes=device.free_bytes(wreg), sram_bytes=device.free_bytes(areg),
                   shared_region=wreg.name == areg.name, clock_hz=max(c.clock_hz for c in device.cores))


def flash_of_uniform(graph: ModelGraph, w_bits: int, runtime: Runtime | None = None) -> int:
    """The flash total of uniform ``w_bits``-bit weights, runtime code included, as ``tap-edge check`` would
    report it (activation widths do not change flash)."""
    if w_bits not in WEIGHT_BITS:
        raise UserError(f"no uniform {w_bits}-bit weights", f"widths are {', '.join(map(str, WEIGHT_BITS))}")
    return flash_breakdown(graph, BitAssignment(w_bits, 8), runtime.code_bytes if runtime else 0,
                           runtime=runtime).total_bytes


def resolve_budgets(spec: BudgetSpec, device: DeviceProfile, runtime: Runtime, graph: ModelGraph) -> Budgets:
    """The device's budgets overridden by ``spec``. An explicit SRAM budget bounds the arena alone (no shared
    region)."""
    b = budgets_from_device(device)
    if spec.flash_bytes is not None:
        b.flash_bytes = spec.flash_bytes
    if spec.flash_like_bits is not None:
        b.flash_bytes = flash_of_uniform(graph, spec.flash_like_bits, runtime)
    if spec.sram_bytes is not None:
        b.sram_bytes = spec.sram_bytes
        b.shared_region = False
    b.bops = spec.bops
    b.latency_ms = spec.latency_ms
    return b
