"""The OOM gate: does a model, at a bit assignment, fit each device? One verdict per device.

Verdicts: ``FITS``; ``OOM`` (flash or SRAM over the limit, with which memory and by how much);
``UNSUPPORTED`` (an op class or a bit-width the device's runtime cannot run, named). A device fails with every
problem listed; the verdict is the first of UNSUPPORTED, OOM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tap_edge.core.units import fmt_bytes
from tap_edge.devices import DeviceProfile, Runtime
from tap_edge.documents import (
    CheckReport,
    DeviceVerdict,
    LiveTensor,
    MemoryTimeline,
    ModelSummary,
    UnknownOp,
    UnsupportedOp,
)
from tap_edge.fit.bits import BitAssignment, tensor_bits
from tap_edge.fit.footprint import flash_breakdown, plan_arena_for
from tap_edge.fit.memory import ArenaPlan, FlashBreakdown, is_tflite_format
from tap_edge.fit.support import support_problem
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.shapes import InputShapes, as_input_shapes, model_inputs


@dataclass(frozen=True)
class RegionLimits:
    """What a device allows a model: flash = free bytes of the weights region; SRAM = free bytes of the arena
    region, less the model's flash total when both are one memory (phones, Linux boards). ``sram_bytes`` may
    then be negative (the weights alone overflow it); :attr:`shared` says so."""

    flash_bytes: int
    flash_region: str
    sram_bytes: int
    sram_region: str
    shared: bool


def region_limits(device: DeviceProfile, flash_total: int) -> RegionLimits:
    """The limits of :class:`RegionLimits` for a model whose flash total is ``flash_total`` bytes (the one
    place this arithmetic lives: check, plan budgets and the measured verdict all call it)."""
    wreg, areg = device.weights_region(), device.arena_region()
    shared = wreg.name == areg.name
    sram = device.free_bytes(areg) - (flash_total if shared else 0)
    return RegionLimits(device.free_bytes(wreg), wreg.name, sram, areg.name, shared)


def memory_problems(flash_bytes: int, arena_bytes: int, peak_op: str, lim: RegionLimits) -> list[str]:
    """One sentence per memory that overflows, each overflow stated once: on a shared region the weights
    and the arena are one sum against one size (never a flash overflow and again an SRAM one)."""
    if lim.shared:
        size = lim.flash_bytes  # the free bytes of the one region
        if flash_bytes > size:
            return [f"weights and code {fmt_bytes(flash_bytes)} > {fmt_bytes(size)} shared {lim.flash_region}"]
        if flash_bytes + arena_bytes > size:
            return [f"weights and code {fmt_bytes(flash_bytes)} + arena {fmt_bytes(arena_bytes)} > "
                    f"{fmt_bytes(size)} shared {lim.sram_region}: over by "
                    f"{fmt_bytes(flash_bytes + arena_bytes - size)} at {peak_op}"]
        return []
    out = []
    if flash_bytes > lim.flash_bytes:
        out.append(f"flash ({lim.flash_region}) over by {fmt_bytes(flash_bytes - lim.flash_bytes)}")
    if arena_bytes > lim.sram_bytes:
        out.append(f"SRAM ({lim.sram_region}) over by {fmt_bytes(arena_bytes - lim.sram_bytes)} at {peak_op}")
    return out


def unsupported_ops(graph: ModelGraph, bits: BitAssignment, runtime: Runtime) -> list[dict[str, str]]:
    """Ops the runtime cannot run, each with the reason and its source (:func:`tap_edge.fit.support.support_problem`):
    builtins or custom ops it does not register, types its kernels refuse, op classes or widths outside its
    tables."""
    tb = tensor_bits(graph, bits)
    out: list[dict[str, str]] = []
    for op in graph.ops:
        problem = support_problem(op, graph, bits, runtime, tb)
        if problem:
            out.append({"op": op.name, "problem": problem})
    return out


class Checker:
    """Checks one graph at one bit assignment against many devices, sharing arena plans between runtimes
    that plan alike (same alignment, aliasing and scratch model)."""

    def __init__(self, graph: ModelGraph, bits: BitAssignment) -> None:
        bits.check_names(graph)
        self.graph = graph
        self.bits = bits
        self._arenas: dict[tuple[int, bool, str], ArenaPlan] = {}
        self._flash_models: dict[bool, FlashBreakdown] = {}

    def flash_model(self, runtime: Runtime) -> FlashBreakdown:
        """The model's flash without runtime code: the same for every runtime of one file format (a .tflite's
        flatbuffer structure counts on runtimes that run .tflite files), an Ethos-U's per Vela setting (the
        optimised model Vela writes)."""
        key = (is_tflite_format(runtime), _vela_key(runtime))
        if key not in self._flash_models:
            self._flash_models[key] = flash_breakdown(self.graph, self.bits, runtime=runtime)
        return self._flash_models[key]

    def arena(self, runtime: Runtime) -> ArenaPlan:
        key = (runtime.name, runtime.arena_alignment, runtime.alias_inplace, runtime.scratch, _vela_key(runtime))
        if key not in self._arenas:
            self._arenas[key] = plan_arena_for(self.graph, self.bits, runtime)
        return self._arenas[key]

    def check(self, device: DeviceProfile, runtime_name: str | None = None) -> DeviceVerdict:
        rt = device.runtime(runtime_name)
        fm = self.flash_model(rt)
        flash = FlashBreakdown(fm.weights_bytes, fm.scales_bytes, fm.bias_bytes, fm.float_bytes, rt.code_bytes,
                               fm.format_bytes)
        arena = self.arena(rt)
        lim = region_limits(device, flash.total_bytes)
        problems: list[str] = []
        unsup = unsupported_ops(self.graph, self.bits, rt)
        if unsup:
            first = unsup[0]
            more = f" (+{len(unsup) - 1} more)" if len(unsup) > 1 else ""
            problems.append(f"{first['op']}: {first['problem']}{more}")
        problems += memory_problems(flash.total_bytes, arena.arena_bytes, arena.peak_op, lim)
        vela = arena.vela
        if vela is not None and vela.dram_arena_bytes and not lim.shared:  # Dedicated_Sram: the arena is off-chip
            over = flash.total_bytes + vela.dram_arena_bytes - lim.flash_bytes
            if over > 0 and flash.total_bytes <= lim.flash_bytes:
                problems.append(f"model and tensor arena ({lim.flash_region}, Vela's {vela.memory_mode}) over by "
                                f"{fmt_bytes(over)}")
        verdict = "UNSUPPORTED" if unsup else ("OOM" if problems else "FITS")
        return DeviceVerdict(
            device=device.id, device_name=device.name, runtime=rt.name, verdict=verdict, problems=problems,
            flash_bytes=flash.total_bytes, flash_limit_bytes=lim.flash_bytes, flash_region=lim.flash_region,
            peak_sram_bytes=arena.arena_bytes, sram_limit_bytes=lim.sram_bytes, sram_region=lim.sram_region,
            peak_op=arena.peak_op, peak_step=arena.peak_step, flash=flash.to_dict(),
            live_at_peak=[LiveTensor(tensor=t, bytes=b) for t, b in arena.live_at_peak],
            unsupported=[UnsupportedOp(**u) for u in unsup],
            prediction_by=arena.model or None, vela=vela.to_doc() if vela is not None else None,
        )


def _vela_key(runtime: Runtime) -> str | None:
    """What sets an Ethos-U runtime's memory apart from another of the same name (its Vela settings)."""
    return runtime.vela.model_dump_json() if runtime.vela is not None else None


def check_report(graph: ModelGraph, bits: BitAssignment, devices: list[DeviceProfile],
                 runtime: str | None = None) -> CheckReport:
    """The :class:`~tap_edge.documents.CheckReport` of ``tap-edge check``: one verdict per device."""
    checker = Checker(graph, bits)
    rows = [checker.check(d, runtime) for d in devices]
    arena = checker.arena(devices[0].runtime(runtime)) if devices else None
    return CheckReport(
        model=ModelSummary(name=graph.name, frontend=graph.frontend, ops=len(graph.ops), params=graph.params,
                           macs=graph.macs,
                           unknown_ops=[UnknownOp(op=o.name, op_type=o.op_type) for o in graph.unknown_ops()],
                           inputs=model_inputs(graph),
                           unresolved_shapes=list(graph.meta.get("unresolved_shapes", []))),
        bits=bits.label(), all_fit=all(r.verdict == "FITS" for r in rows), devices=rows,
        memory_timeline=MemoryTimeline(ops=[o.name for o in graph.ops],
                                       live_bytes=arena.live_bytes_per_step if arena else []),
    )


def check(model: Any, devices: str | DeviceProfile | list[str | DeviceProfile] = "*", *,
          bits: str | BitAssignment | None = None, runtime: str | None = None,
          input_shapes: InputShapes | str | list[str] | None = None) -> CheckReport:
    """Will ``model`` fit ``devices``? The Python face of ``tap-edge check``.

    ``model``: a MODEL string (bundled name, ``timm:NAME``, ``module:factory``, ``.onnx``, ``.tflite``), a
    LoadedModel, a ``torch.nn.Module`` (:func:`tap_edge.graph.models.from_module`) or a graph; ``devices``:
    profile ids, YAML paths or profiles, or a wildcard pattern (``"stm32*"``, ``"*"``);
    ``bits``: ``"w8a8"`` (default; ``"native"`` for .tflite files), ``"w4a8"``, ``"fp32"`` or a BitAssignment;
    ``input_shapes``: ``{"x": [1, 3, 320, 320]}`` or the flag's text (``"1x3x320x320"``, ``["x=1x3x320x320"]``)."""
    from tap_edge.devices import get_device, list_devices
    from tap_edge.graph.models import load_graph

    if hasattr(model, "forward"):  # an in-memory torch.nn.Module
        from tap_edge.graph.models import from_module

        model = from_module(model)
    graph = model if isinstance(model, ModelGraph) else load_graph(model, as_input_shapes(input_shapes))
    wanted = devices if isinstance(devices, list) else [devices]
    profiles: list[DeviceProfile] = []
    for d in wanted:
        if isinstance(d, DeviceProfile):
            profiles.append(d)
        elif any(c in d for c in "*?["):
            profiles += [get_device(n) for n in list_devices(d)]
        else:
            profiles.append(get_device(d))
    if isinstance(bits, BitAssignment):
        assignment = bits
    else:
        assignment = BitAssignment.parse(bits or ("native" if graph.frontend == "tflite" else "w8a8"))
    return check_report(graph, assignment, profiles, runtime)
