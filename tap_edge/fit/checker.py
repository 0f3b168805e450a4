"""The OOM gate: does a model, at a bit assignment, fit each device? One verdict per device.

Verdicts: ``FITS``; ``OOM`` (flash or SRAM over the limit, with which memory and by how much);
``UNSUPPORTED`` (an op class or a bit-width the device's runtime cannot run, named). A device fails with every
problem listed; the verdict is the first of UNSUPPORTED, OOM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tap_edge.core.units import fmt_bytes
from tap_edge.devices import DeviceProfile, Runtime
from tap_edge.fit.bits import BitAssignment, tensor_bits
from tap_edge.fit.memory import ArenaPlan, FlashBreakdown, flash_breakdown, plan_arena_for
from tap_edge.graph.graph import ModelGraph

REPORT_SCHEMA_VERSION = 1


@dataclass
class DeviceVerdict:
    device: str
    device_name: str
    runtime: str
    verdict: str
    problems: list[str]
    flash_bytes: int
    flash_limit_bytes: int
    flash_region: str
    peak_sram_bytes: int
    sram_limit_bytes: int
    sram_region: str
    peak_op: str
    peak_step: int
    flash: dict[str, int] = field(default_factory=dict)
    live_at_peak: list[dict[str, Any]] = field(default_factory=list)
    unsupported: list[dict[str, str]] = field(default_factory=list)

    @property
    def flash_margin_bytes(self) -> int:
        return self.flash_limit_bytes - self.flash_bytes

    @property
    def sram_margin_bytes(self) -> int:
        return self.sram_limit_bytes - self.peak_sram_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flash_margin_bytes"] = self.flash_margin_bytes
        d["sram_margin_bytes"] = self.sram_margin_bytes
        d["flash_margin_pct"] = _pct(self.flash_margin_bytes, self.flash_limit_bytes)
        d["sram_margin_pct"] = _pct(self.sram_margin_bytes, self.sram_limit_bytes)
        return d


def _pct(margin: int, limit: int) -> float | None:
    """Margin as a percentage of the limit; None when nothing is left for it (limit <= 0)."""
    return round(100.0 * margin / limit, 2) if limit > 0 else None


def unsupported_ops(graph: ModelGraph, bits: BitAssignment, runtime: Runtime) -> list[dict[str, str]]:
    """Ops the runtime cannot run: unknown op classes, or widths outside its supported sets."""
    out: list[dict[str, str]] = []
    tb = tensor_bits(graph, bits)
    for op in graph.ops:
        if not runtime.supports_op(op.op_class):
            what = f"op {op.op_type}" if op.op_class == "unknown" else f"op class {op.op_class} ({op.op_type})"
            out.append({"op": op.name, "problem": f"{what} not supported by {runtime.name}"})
            continue
        if op.quantizable or (bits.native and op.weight_shape):
            w = bits.weight_bits(op)
            if w not in runtime.weight_bits(op.op_class):
                out.append({"op": op.name, "problem": f"{w}-bit weights on {op.op_class} not supported by "
                                                      f"{runtime.name} (supports {runtime.weight_bits(op.op_class)})"})
        if op.op_class in ("quantize", "variable"):
            continue  # width converters and state handles: their outputs are not a kernel's activations
        for t in op.outputs:
            a = tb[t]
            if a not in runtime.activation_bits(op.op_class):
                ok = runtime.activation_bits(op.op_class)
                out.append({"op": op.name, "problem": f"{a}-bit activations on {op.op_class} not supported by "
                                                      f"{runtime.name} (supports {ok})"})
                break
    return out


class Checker:
    """Checks one graph at one bit assignment against many devices, sharing arena plans between runtimes
    that plan alike (same alignment, aliasing and scratch model)."""

    def __init__(self, graph: ModelGraph, bits: BitAssignment) -> None:
        bits.check_names(graph)
        self.graph = graph
        self.bits = bits
        self._arenas: dict[tuple[int, bool, str], ArenaPlan] = {}
        self._flash_model = flash_breakdown(graph, bits)

    def arena(self, runtime: Runtime) -> ArenaPlan:
        key = (runtime.name, runtime.arena_alignment, runtime.alias_inplace, runtime.scratch)
        if key not in self._arenas:
            self._arenas[key] = plan_arena_for(self.graph, self.bits, runtime)
        return self._arenas[key]

    def check(self, device: DeviceProfile, runtime_name: str | None = None) -> DeviceVerdict:
        rt = device.runtime(runtime_name)
        fm = self._flash_model
        flash = FlashBreakdown(fm.weights_bytes, fm.scales_bytes, fm.bias_bytes, fm.float_bytes, rt.code_bytes)
        arena = self.arena(rt)
        wreg, areg = device.weights_region(), device.arena_region()
        flash_limit = device.free_bytes(wreg)
        sram_limit = device.free_bytes(areg)
        if wreg.name == areg.name:  # weights and arena share one memory (phones, Linux boards)
            sram_limit -= flash.total_bytes
        problems: list[str] = []
        unsup = unsupported_ops(self.graph, self.bits, rt)
        if unsup:
            first = unsup[0]
            more = f" (+{len(unsup) - 1} more)" if len(unsup) > 1 else ""
            problems.append(f"{first['op']}: {first['problem']}{more}")
        if flash.total_bytes > flash_limit:
            problems.append(f"flash ({wreg.name}) over by {fmt_bytes(flash.total_bytes - flash_limit)}")
        if arena.arena_bytes > sram_limit:
            problems.append(f"SRAM ({areg.name}) over by {fmt_bytes(arena.arena_bytes - sram_limit)} "
                            f"at {arena.peak_op}")
        verdict = "UNSUPPORTED" if unsup else ("OOM" if problems else "FITS")
        return DeviceVerdict(
            device=device.id, device_name=device.name, runtime=rt.name, verdict=verdict, problems=problems,
            flash_bytes=flash.total_bytes, flash_limit_bytes=flash_limit, flash_region=wreg.name,
            peak_sram_bytes=arena.arena_bytes, sram_limit_bytes=sram_limit, sram_region=areg.name,
            peak_op=arena.peak_op, peak_step=arena.peak_step, flash=flash.to_dict(),
            live_at_peak=[{"tensor": t, "bytes": b} for t, b in arena.live_at_peak],
            unsupported=unsup,
        )


def check_report(graph: ModelGraph, bits: BitAssignment, devices: list[DeviceProfile],
                 runtime: str | None = None) -> dict[str, Any]:
    """The JSON report of ``tap-edge check`` (schema: tap_edge/schemas/check-report.schema.json)."""
    checker = Checker(graph, bits)
    rows = [checker.check(d, runtime) for d in devices]
    arena = checker.arena(devices[0].runtime(runtime)) if devices else None
    return {
        "schema": "tap-edge/check-report",
        "version": REPORT_SCHEMA_VERSION,
        "model": {"name": graph.name, "frontend": graph.frontend, "ops": len(graph.ops), "params": graph.params,
                  "macs": graph.macs,
                  "unknown_ops": [{"op": o.name, "op_type": o.op_type} for o in graph.unknown_ops()]},
        "bits": bits.label(),
        "all_fit": all(r.verdict == "FITS" for r in rows),
        "devices": [r.to_dict() for r in rows],
        "memory_timeline": {
            "ops": [o.name for o in graph.ops],
            "live_bytes": arena.live_bytes_per_step if arena else [],
        },
    }
