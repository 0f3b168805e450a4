"""What would make it fit: for a device a model fails on, the cheapest change that fits, computed, not guessed.

Three kinds of change, each from the same memory model and integer program as ``tap-edge plan``:

- **widths** (:class:`~tap_edge.documents.WidthsSuggestion`): one solve of the allocation program
  (:func:`tap_edge.plan.allocate.allocate`) under the device's flash and arena limits, keeping the rules of the
  backend that builds for its runtime, with a data-free objective (:data:`OBJECTIVE`): the fewest bytes of
  precision changed from the widths asked for, i.e. per layer ``params x |w - w_asked| / 8 + output values x
  |a - a_asked| / 8``, plus one byte per changed layer so that, among equally cheap plans, fewer layers
  change. Lowering a layer's weights by one bit costs what it saves in flash, so the solver removes just the
  bits the limit needs; no calibration data is read.
- **floor** (:class:`~tap_edge.documents.QuantizationFloor`): when no widths plan fits, the smallest flash and
  arena any plan the backend builds reaches (the program's own smallest-SRAM solve), where that arena peaks
  and what is live there, and the largest input resolution at which a plan fits: the model is loaded again at
  that shape when it can be (``reload``, a PyTorch model or an ONNX file: ``method = "reloaded"``), else the
  activation bytes are scaled by the input area (a .tflite keeps its stored shape: ``method = "scaled"``).
- **profile** (:class:`~tap_edge.documents.ProfileSuggestion`): the nearest bundled profile on which the
  model fits at the widths asked for (same SoC first, then kind, vendor and core; the smallest that fits).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes
from tap_edge.devices import DeviceProfile, Runtime
from tap_edge.documents import (
    CheckReport,
    DeviceVerdict,
    FitSuggestions,
    LayerChange,
    LiveTensor,
    ProfileSuggestion,
    QuantizationFloor,
    ResolutionSuggestion,
    Widths,
    WidthsSuggestion,
)
from tap_edge.fit.bits import ACT_BITS, WEIGHT_BITS, BitAssignment, tensor_bits
from tap_edge.fit.checker import Checker
from tap_edge.fit.footprint import plan_arena_for
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.shapes import InputShapes, model_inputs
from tap_edge.plan.allocate import Allocation, CostTable, InfeasibleBudget, allocate
from tap_edge.plan.budgets import Budgets, budgets_from_device
from tap_edge.plan.rules import PlanRules

OBJECTIVE = ("fewest bytes of precision changed from the widths asked for: per layer params x |dw| / 8 + output "
             "values x |da| / 8, + 1 per changed layer")
#: Most times the model is loaded again at another input shape, per device.
MAX_RELOADS = 6
#: Spatial sizes of images are rounded to this many pixels (smaller inputs: to 1).
SIZE_STEP = 8

#: (device, runtime name) -> the runtime a plan is made for there and the rules of the backend that builds it.
RulesFor = Callable[[DeviceProfile, str | None], tuple[Runtime, PlanRules]]
#: input shape -> the model's graph at that shape.
Reload = Callable[[list[int]], ModelGraph]


def reloader(model: str, graph: ModelGraph, input_shapes: InputShapes | None = None) -> Reload | None:
    """How to load ``model`` again with its first input at another shape, when it can be: a PyTorch model
    (traced at that shape) or an ONNX file whose spatial dims are open; None for a .tflite (TFLite Micro runs
    the stored shape) or fixed ONNX dims. The other inputs keep the shapes they were given."""
    if graph.frontend == "tflite" or not graph.inputs:
        return None
    first = model_inputs(graph)[0]
    if graph.frontend == "onnx":
        declared = first.declared or first.shape
        axes = spatial_axes(graph, first.shape)
        if not any(isinstance(declared[ax], str) or declared[ax] <= 0 for ax in axes if ax < len(declared)):
            return None
    key = "" if len(graph.inputs) == 1 else first.name
    others = {k: v for k, v in (input_shapes or {}).items() if k not in ("", first.name)}

    def load(shape: list[int]) -> ModelGraph:
        from tap_edge.graph.models import load_graph

        return load_graph(model, {**others, key: shape})

    return load


def runtime_rules(device: DeviceProfile, runtime: str | None) -> tuple[Runtime, PlanRules]:
    """The runtime's own tables as rules (no backend): the default of :data:`RulesFor`."""
    rt = device.runtime(runtime)
    return rt, PlanRules.from_runtime(rt)


# ---- the objective ------------------------------------------------------------------------------------------
def asked_widths(graph: ModelGraph, bits: BitAssignment) -> dict[str, tuple[int, int]]:
    """Per quantizable op, the (w, a) the check was asked for (a stored model's own dtypes for ``native``)."""
    tb = tensor_bits(graph, bits)
    out = {}
    for op in graph.quantizable_ops():
        a = tb[op.outputs[0]] if op.outputs else bits.default_a
        out[op.name] = (bits.weight_bits(op), a)
    return out


def change_costs(graph: ModelGraph, bits: BitAssignment) -> CostTable:
    """The :data:`OBJECTIVE` as the allocator's cost table: every (w, a) of every quantizable op."""
    asked = asked_widths(graph, bits)
    table: CostTable = {}
    for op in graph.quantizable_ops():
        w0, a0 = asked[op.name]
        values = sum(graph.tensors[t].numel for t in op.outputs if t in graph.tensors)
        table[op.name] = {(w, a): op.weight_params * abs(w - w0) / 8 + values * abs(a - a0) / 8
                          + (1.0 if (w, a) != (w0, a0) else 0.0) for w in WEIGHT_BITS for a in ACT_BITS}
    return table


# ---- one device -----------------------------------------------------------------------------------------------
@dataclass
class _Shapes:
    """Graphs of one model at other input shapes, loaded once per run (several devices ask for the same)."""

    reload: Reload | None
    graphs: dict[tuple[int, ...], ModelGraph] = field(default_factory=dict)

    def at(self, shape: list[int]) -> ModelGraph:
        key = tuple(shape)
        if key not in self.graphs:
            assert self.reload is not None
            self.graphs[key] = self.reload(list(shape))
        return self.graphs[key]


def suggest_for(graph: ModelGraph, bits: BitAssignment, device: DeviceProfile, runtime: Runtime, rules: PlanRules,
                candidates: Iterable[DeviceProfile] = (), *, checker: Checker | None = None,
                reload: Reload | None = None, shapes: _Shapes | None = None) -> FitSuggestions:
    """What would make ``graph`` at ``bits`` fit ``device`` on ``runtime`` (see the module docstring);
    ``candidates`` are the profiles the nearest one is chosen from."""
    t0 = time.perf_counter()
    out = FitSuggestions()
    shapes = shapes or _Shapes(reload)
    missing = sorted({op.op_class for op in graph.ops if not runtime.supports_op(op.op_class)})
    if missing:
        out.notes.append(f"{runtime.name} cannot run op class(es) {', '.join(missing)}: no change of widths helps")
    else:
        budgets = budgets_from_device(device)
        try:
            alloc = allocate(graph, change_costs(graph, bits), runtime, budgets, rules=rules)
            out.widths = widths_suggestion(graph, bits, alloc, rules, budgets)
        except InfeasibleBudget as e:
            out.floor = quantization_floor(graph, device, runtime, rules, budgets, e, bits, shapes)
        except UserError as e:  # the rules leave a layer no width (e.g. a pinned or unbuildable class)
            out.notes.append(f"no widths plan: {e.message}")
    out.profile = nearest_profile(graph, bits, device, candidates, checker or Checker(graph, bits))
    if out.profile is None:
        out.notes.append("no bundled profile fits it at these widths")
    out.seconds = round(time.perf_counter() - t0, 4)
    return out


def widths_suggestion(graph: ModelGraph, bits: BitAssignment, alloc: Allocation, rules: PlanRules,
                      budgets: Budgets) -> WidthsSuggestion:
    """The solved plan as a suggestion: its footprint and the layers whose widths change."""
    asked = asked_widths(graph, bits)
    ops = {op.name: op for op in graph.ops}
    changed = []
    for key, wa in alloc.layers.items():
        members = [ops[n] for n in alloc.layer_ops.get(key, [key]) if n in ops]
        before = asked[members[0].name] if members else (wa["w"], wa["a"])
        if before != (wa["w"], wa["a"]):
            changed.append(LayerChange(layer=key, op_class=members[0].op_class if members else "",
                                       params=sum(o.params for o in members), before=Widths(w=before[0], a=before[1]),
                                       after=Widths(w=wa["w"], a=wa["a"])))
    return WidthsSuggestion(
        objective=OBJECTIVE, cost=round(alloc.objective, 3), backend=rules.backend, flash_bytes=alloc.flash_bytes,
        arena_bytes=alloc.arena_bytes,
        sram_used_bytes=alloc.arena_bytes + (alloc.flash_bytes if budgets.shared_region else 0),
        default=Widths(w=8, a=alloc.default_a), layers={k: Widths(**v) for k, v in alloc.layers.items()},
        changed=changed)


def quantization_floor(graph: ModelGraph, device: DeviceProfile, runtime: Runtime, rules: PlanRules,
                       budgets: Budgets, err: InfeasibleBudget, bits: BitAssignment,
                       shapes: _Shapes) -> QuantizationFloor:
    """Quantization cannot fit it: the floor figures of ``err`` (the program's smallest-flash and
    smallest-SRAM plans), the peak of the smallest-arena plan, and the largest input that would fit."""
    binding = [b for b in ("flash", "SRAM") if b in err.binding]
    if not binding:  # the budgets together bind (each alone can be met), or the greedy layout does
        binding = ["SRAM"]
    floor_bits = err.floor_bits or BitAssignment(8, min(rules.activation_widths() or [8]))
    arena = plan_arena_for(graph, floor_bits, runtime)
    narrow_w = min((w for op in graph.quantizable_ops() for w, _ in rules.allowed_for(op)), default=8)
    floor = QuantizationFloor(
        binding=binding, activation_bits=min(rules.activation_widths() or [8]), weight_bits=narrow_w,
        flash_floor_bytes=err.min_flash_bytes, flash_limit_bytes=budgets.flash_bytes or 0,
        arena_floor_bytes=err.min_sram_bytes, sram_limit_bytes=budgets.sram_bytes or 0, peak_op=arena.peak_op,
        live_at_peak=[LiveTensor(tensor=t, bytes=b) for t, b in arena.live_at_peak])
    if binding == ["SRAM"]:
        floor.resolution = largest_resolution(graph, device, runtime, rules, budgets, bits, arena.head_bytes,
                                              err.min_sram_bytes, shapes)
    return floor


# ---- input resolution -------------------------------------------------------------------------------------------
def spatial_axes(graph: ModelGraph, shape: list[int]) -> list[int]:
    """The axes of an input that a resolution scales: H, W of an image (NHWC in a .tflite, NCHW otherwise),
    the length of a sequence ([N, C, L] or [N, L])."""
    rank = len(shape)
    if rank >= 4:
        return [1, 2] if graph.frontend == "tflite" else [2, 3]
    if rank == 3:
        return [1] if graph.frontend == "tflite" else [2]
    return [1] if rank == 2 else []


def _scaled_shape(shape: list[int], axes: list[int], s: float) -> list[int]:
    out = list(shape)
    for ax in axes:
        size = shape[ax] * s
        step = SIZE_STEP if shape[ax] >= 4 * SIZE_STEP else 1
        out[ax] = max(step, int(size // step) * step)
    return out


def _step_shape(shape: list[int], axes: list[int], base: list[int], direction: int) -> list[int]:
    """One rounding step larger (+1) or smaller (-1) along every scaled axis, keeping the aspect of ``base``."""
    longest = max(axes, key=lambda ax: base[ax])
    step = SIZE_STEP if base[longest] >= 4 * SIZE_STEP else 1
    s = (shape[longest] + direction * step) / base[longest]
    return _scaled_shape(base, axes, s) if s > 0 else shape


def largest_resolution(graph: ModelGraph, device: DeviceProfile, runtime: Runtime, rules: PlanRules,
                       budgets: Budgets, bits: BitAssignment, head_bytes: int, floor_bytes: int,
                       shapes: _Shapes) -> ResolutionSuggestion | None:
    """The largest input (its spatial dims scaled together) at which a widths plan fits. The first estimate
    scales the floor's activation bytes (``head_bytes`` of ``floor_bytes``) by the input area; with
    ``shapes.reload`` the model is then loaded at that shape, the estimate corrected by what it really needs,
    and stepped up once to confirm the largest (at most :data:`MAX_RELOADS` loads)."""
    if not graph.inputs:
        return None
    name = graph.inputs[0]
    shape = list(graph.tensors[name].shape)
    axes = [ax for ax in spatial_axes(graph, shape) if shape[ax] > 1]
    limit = budgets.sram_bytes or 0
    fixed = floor_bytes - head_bytes  # persistent bytes (+ flash on a shared region) do not scale with the input
    if not axes or head_bytes <= 0 or limit <= fixed:
        return ResolutionSuggestion(input=name, shape=shape, fits_shape=None, method="scaled")
    k = len(axes)
    s = min(((limit - fixed) / head_bytes) ** (1 / k), 1.0)
    if shapes.reload is None:
        guess = _scaled_shape(shape, axes, s)
        arena = fixed + int(head_bytes * math.prod(guess[ax] / shape[ax] for ax in axes))
        return ResolutionSuggestion(input=name, shape=shape, fits_shape=guess, arena_bytes=arena, method="scaled")
    best: tuple[list[int], Allocation, ModelGraph] | None = None
    failed: set[tuple[int, ...]] = {tuple(shape)}
    cand = _scaled_shape(shape, axes, s)
    for _ in range(MAX_RELOADS):
        at = shapes.at(cand)
        alloc = _plan_at(at, runtime, rules, budgets, bits)
        if alloc is not None:
            best = (cand, alloc, at)
            up = _step_shape(cand, axes, shape, +1)
            if up == cand or tuple(up) in failed or any(up[ax] > shape[ax] for ax in axes):
                break
            cand = up
            continue
        failed.add(tuple(cand))
        if best is not None:  # the next smaller one fits: it is the largest
            break
        longest = max(axes, key=lambda ax: shape[ax])
        ratio = 0.8  # no plan at all at this shape: shrink by a fifth
        smaller = _scaled_shape(shape, axes, cand[longest] / shape[longest] * ratio)
        if smaller == cand:
            smaller = _step_shape(cand, axes, shape, -1)
        if smaller == cand or min(smaller[ax] for ax in axes) < 1:
            break
        cand = smaller
    if best is None:
        return ResolutionSuggestion(input=name, shape=shape, fits_shape=None, method="reloaded")
    fit_shape, alloc, at = best
    return ResolutionSuggestion(input=name, shape=shape, fits_shape=fit_shape,
                                arena_bytes=alloc.arena_bytes + (alloc.flash_bytes if budgets.shared_region else 0),
                                method="reloaded", widths=widths_suggestion(at, bits, alloc, rules, budgets))


def _plan_at(graph: ModelGraph, runtime: Runtime, rules: PlanRules, budgets: Budgets,
             bits: BitAssignment) -> Allocation | None:
    """The cheapest plan (:data:`OBJECTIVE`) that fits ``graph``, or None when none does."""
    try:
        return allocate(graph, change_costs(graph, bits), runtime, budgets, rules=rules)
    except InfeasibleBudget:
        return None


# ---- another profile ----------------------------------------------------------------------------------------------
def nearest_profile(graph: ModelGraph, bits: BitAssignment, device: DeviceProfile,
                    candidates: Iterable[DeviceProfile], checker: Checker) -> ProfileSuggestion | None:
    """The nearest profile on which the model fits at ``bits`` (each candidate's default runtime): the same
    SoC first, then the same kind of device, vendor and core ISA; among equals the one with the least memory."""
    isa = device.cores[0].isa
    best: tuple[tuple[int, ...], DeviceProfile, DeviceVerdict] | None = None
    for cand in candidates:
        if cand.id == device.id:
            continue
        v = checker.check(cand)
        if v.verdict != "FITS":
            continue
        key = (cand.soc.lower() != device.soc.lower(), cand.kind != device.kind, cand.vendor != device.vendor,
               cand.cores[0].isa != isa, v.sram_limit_bytes + v.flash_limit_bytes)
        if best is None or key < best[0]:
            best = (key, cand, v)
    if best is None:
        return None
    _, cand, v = best
    return ProfileSuggestion(device=cand.id, device_name=cand.name, runtime=v.runtime, flash_bytes=v.flash_bytes,
                             flash_limit_bytes=v.flash_limit_bytes, peak_sram_bytes=v.peak_sram_bytes,
                             sram_limit_bytes=v.sram_limit_bytes, why=_why_near(device, cand, v))


def _why_near(device: DeviceProfile, cand: DeviceProfile, v: DeviceVerdict) -> str:
    if cand.soc.lower() == device.soc.lower():
        how = f"the same SoC ({cand.soc})"
    elif cand.kind == device.kind and cand.vendor == device.vendor:
        how = f"the same vendor ({cand.vendor}, {cand.soc})"
    elif cand.kind == device.kind and cand.cores[0].isa == device.cores[0].isa:
        how = f"the same core ({cand.cores[0].isa}, {cand.soc})"
    else:
        how = f"the nearest {cand.kind} that fits ({cand.soc})"
    return f"{how}, arena in {v.sram_region} ({fmt_bytes(v.sram_limit_bytes)} free)"


# ---- a whole report ------------------------------------------------------------------------------------------------
def suggest_report(report: CheckReport, graph: ModelGraph, bits: BitAssignment, devices: list[DeviceProfile], *,
                   runtime: str | None = None, rules_for: RulesFor = runtime_rules,
                   candidates: Iterable[DeviceProfile] = (), reload: Reload | None = None) -> CheckReport:
    """Fill ``suggestions`` of every device of ``report`` that does not fit (``devices`` in the report's order)."""
    checker = Checker(graph, bits)
    pool = list(candidates)
    shapes = _Shapes(reload)
    for verdict, device in zip(report.devices, devices, strict=True):
        if verdict.verdict == "FITS":
            continue
        rt, rules = rules_for(device, runtime)
        verdict.suggestions = suggest_for(graph, bits, device, rt, rules, pool, checker=checker, shapes=shapes)
    return report


def infeasible_hint(graph: ModelGraph, device: DeviceProfile, runtime: Runtime, rules: PlanRules, budgets: Budgets,
                    err: InfeasibleBudget) -> str:
    """A fix that works for a plan no widths can fit: a budget below the device's limit to raise, else the
    input resolution (scaled estimate) or the nearest profile that has the memory."""
    limits = budgets_from_device(device)
    raise_ = []
    if "flash" in err.binding and budgets.flash_bytes is not None and limits.flash_bytes is not None \
            and budgets.flash_bytes < limits.flash_bytes and err.min_flash_bytes <= limits.flash_bytes:
        raise_.append(f"the flash budget ({fmt_bytes(err.min_flash_bytes)} is reachable; {device.id} has "
                      f"{fmt_bytes(limits.flash_bytes)})")
    if "SRAM" in err.binding and budgets.sram_bytes is not None and limits.sram_bytes is not None \
            and budgets.sram_bytes < limits.sram_bytes and err.min_sram_bytes <= limits.sram_bytes:
        raise_.append(f"the SRAM budget ({fmt_bytes(err.min_sram_bytes)} is reachable; {device.id} has "
                      f"{fmt_bytes(limits.sram_bytes)})")
    if raise_:
        return "raise " + " and ".join(raise_)
    parts = []
    if "flash" in err.binding:
        parts.append(f"the weights need {fmt_bytes(err.min_flash_bytes)} even at the narrowest widths "
                     f"{rules.builder()} builds: a smaller model")
    elif "SRAM" in err.binding or "arena" in err.binding:
        floor = quantization_floor(graph, device, runtime, rules, limits, err, BitAssignment(8, 8), _Shapes(None))
        res = floor.resolution
        if res is not None and res.fits_shape:
            parts.append(f"an input of about {'x'.join(map(str, res.fits_shape))} (estimate: activations scaled by "
                         f"area; tap-edge check --suggest computes it)")
        else:
            parts.append(f"the arena needs {fmt_bytes(err.min_sram_bytes)} at the narrowest activation width "
                         f"(peak at {floor.peak_op}): a smaller input")
    if not parts:
        return "raise the binding budget"
    from tap_edge.devices import get_device, list_devices

    near = nearest_profile(graph, BitAssignment(8, 8), device, (get_device(d) for d in list_devices()),
                           Checker(graph, BitAssignment(8, 8)))
    if near is not None:
        parts.append(f"or a device with the memory, e.g. {near.device} (w8a8 fits there)")
    return ", ".join(parts)
