"""The plan path, top to bottom: model -> graph -> 16 calibration samples -> LayerStats -> proxy costs ->
exact allocation under the device's budgets -> ``plan.json``. Each step returns plain data and is timed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.devices import Runtime
from tap_edge.documents import Calibration, EvalResult, Plan, PTQSettings, read_json
from tap_edge.graph.shapes import InputShapes, model_inputs
from tap_edge.plan.budgets import BudgetSpec
from tap_edge.plan.rules import PlanRules


@dataclass(kw_only=True)
class PlanRequest:
    """Everything ``tap-edge plan`` needs (one config object for the transformation, built with keywords).

    ``budgets`` holds numbers (the CLI parses ``--flash 1.5MB`` and friends); ``rules``: what the backend that
    builds the plan on this device stores (``tap_edge.backends.plan_target(device, runtime, backend)``; None:
    the runtime's tables alone); ``pins`` fix layers (plan key -> (w, a or None)); ``weight_bits`` overrides the
    runtime's weight widths (fake-quant studies: the plan may not deploy, the backend's rules are dropped);
    ``act_bits`` restricts activation widths (e.g. ``[8]`` for an all-integer model); ``sweep`` > 0 adds a
    Pareto front over that many flash budgets from uniform 2-bit to uniform 8-bit weights; ``input_shapes`` is
    the shape the model is traced at (``--input-shape``; default: its preprocessing)."""

    model: Any  # a spec string or path, a LoadedModel or a torch.nn.Module
    device: str
    calib: Path
    input_shapes: InputShapes | None = None
    budgets: BudgetSpec = field(default_factory=BudgetSpec)
    calib_samples: int = 16
    proxy: str = "tap"
    runtime: str | None = None
    sweep: int = 0
    weight_bits: list[int] | None = None
    act_bits: list[int] | None = None
    rules: PlanRules | None = None
    pins: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    default_a: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    rounding: str = "nearest"
    ptq_samples: int | None = None


def _torch_model(model: Any, input_shapes: InputShapes | None = None, purpose: str = "planning") -> Any:
    """The model as PyTorch: a spec, a file (an ONNX file is converted: :mod:`tap_edge.graph.convert`), a
    LoadedModel or an ``nn.Module``."""
    from tap_edge.graph.convert import as_pytorch

    return as_pytorch(model, input_shapes, purpose)


def _spec(model: Any, lm: Any) -> str:
    """The model as the documents name it: the string the caller gave, else the loaded model's spec."""
    return str(model) if isinstance(model, str | Path) else lm.spec


def ptq_settings(config: Any, samples: int) -> PTQSettings:
    """How the documents record a :class:`~tap_edge.quantize.ptq.PTQConfig` run on ``samples`` photos."""
    return PTQSettings(**{k: v for k, v in config.to_dict().items() if k != "bits"}, samples=samples)


def _ptq_settings(rounding: str, samples: int | None) -> PTQSettings:
    """The PTQ a plan is meant for (checked now: a bad name fails before any work), as the plan records it."""
    from tap_edge.quantize.ptq import PTQConfig, default_ptq_samples

    n = _positive_samples(default_ptq_samples(rounding) if samples is None else samples)
    return ptq_settings(PTQConfig(rounding=rounding), n)


def resolve_ptq(plan: Path | None, rounding: str | None = None, samples: int | None = None) -> PTQSettings:
    """The PTQ ``eval`` and ``compile`` run: the plan's (``plan.json``'s ``ptq``), with ``rounding`` / ``samples``
    given on the command line winning; another rounding than the plan's takes that method's defaults. No plan
    and nothing given: round-to-nearest with its default sample count."""
    planned: PTQSettings | None = None
    if plan is not None:
        data = read_json(plan, "pass a plan.json written by tap-edge plan")
        if data.get("schema") == Plan.SCHEMA:
            planned = Plan.from_dict(data, str(plan)).ptq
    return _resolved_ptq(planned, rounding, samples)


def _resolved_ptq(planned: PTQSettings | None, rounding: str | None, samples: int | None) -> PTQSettings:
    """:func:`resolve_ptq` once the plan's PTQ (``planned``) is read."""
    if planned is not None and rounding in (None, planned.rounding):
        return planned if samples is None else planned.model_copy(update={"samples": _positive_samples(samples)})
    return _ptq_settings(rounding or "nearest", samples)


def _positive_samples(n: int) -> int:
    if n < 1:
        raise UserError(f"PTQ sample count must be positive, got {n}", "give e.g. --ptq-samples 64")
    return n


def make_plan(req: PlanRequest) -> Plan:
    """Run the plan path and return the :class:`~tap_edge.documents.Plan` (with proxy scores, calibration
    provenance and an optional Pareto sweep)."""
    from tap_edge.devices import get_device
    from tap_edge.graph.models import load_graph
    from tap_edge.plan.allocate import InfeasibleBudget, allocate, pareto_sweep
    from tap_edge.plan.budgets import flash_of_uniform, resolve_budgets
    from tap_edge.plan.calib import load_images
    from tap_edge.plan.document import plan_document
    from tap_edge.plan.proxies import ProxyContext, compute_costs, get_proxy
    from tap_edge.plan.stats import compute_layer_stats
    from tap_edge.plan.suggest import infeasible_hint

    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    ptq = _ptq_settings(req.rounding, req.ptq_samples)
    device = get_device(req.device)
    runtime, rules = plan_rules(device.runtime(req.runtime), req.rules, req.weight_bits, req.act_bits)
    get_proxy(req.proxy)  # fail fast on an unknown proxy name
    lm = _torch_model(req.model, req.input_shapes)
    graph = load_graph(lm)
    budgets = resolve_budgets(req.budgets, device, runtime, graph)
    feasible_or_raise(graph, device, runtime, rules, budgets, req.default_a, req.pins)  # before any statistics
    timing["load_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    with console.progress("calibration images", None):
        calib, _ = load_images(req.calib, lm.preprocess, limit=req.calib_samples)
    timing["calib_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with console.progress(f"LayerStats on {len(calib)} samples", None):
        stats = compute_layer_stats(lm.module, graph, calib)
    timing["stats_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ctx = ProxyContext(model=lm.module, graph=graph, calib=calib)
    with console.progress(f"proxy {req.proxy}", None):
        costs = compute_costs(req.proxy, stats, ctx, **req.options)
    timing["proxy_s"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        alloc = allocate(graph, costs, runtime, budgets, default_a=req.default_a, rules=rules, pins=req.pins)
    except InfeasibleBudget as e:
        e.hint = infeasible_hint(graph, device, runtime, rules, budgets, e)
        raise
    timing["ilp_s"] = time.perf_counter() - t
    sweep = []
    if req.sweep:
        lo, hi = flash_of_uniform(graph, 2, runtime), flash_of_uniform(graph, 8, runtime)
        n = max(2, req.sweep)
        with console.progress("Pareto sweep", None):
            sweep = pareto_sweep(graph, costs, runtime, [int(lo + (hi - lo) * i / (n - 1)) for i in range(n)],
                                 budgets.sram_bytes, default_a=req.default_a, base=budgets, rules=rules,
                                 pins=req.pins)
    timing["total_s"] = time.perf_counter() - t0
    return plan_document(alloc, graph, model=_spec(req.model, lm), device=device.id, runtime=runtime.name,
                         proxy=req.proxy, budgets=budgets, timing={k: round(v, 4) for k, v in timing.items()},
                         proxy_scores=_report_scores(costs), sweep=sweep,
                         calibration=Calibration(folder=str(req.calib), samples=len(calib)), rules=rules,
                         pins=req.pins).model_copy(update={"ptq": ptq})


def feasible_or_raise(graph: Any, device: Any, runtime: Runtime, rules: PlanRules, budgets: Any, default_a: int,
                      pins: dict[str, tuple[int, int | None]]) -> None:
    """Whether any widths meet ``budgets`` depends on the graph alone: solve the allocation once with a
    data-free objective (:func:`tap_edge.plan.suggest.change_costs`) and raise its one-line
    :class:`~tap_edge.plan.allocate.InfeasibleBudget` now, not after the statistics."""
    from tap_edge.fit.bits import BitAssignment
    from tap_edge.plan.allocate import InfeasibleBudget, allocate
    from tap_edge.plan.suggest import change_costs, infeasible_hint

    try:
        allocate(graph, change_costs(graph, BitAssignment(8, default_a)), runtime, budgets, default_a=default_a,
                 rules=rules, pins=pins)
    except InfeasibleBudget as e:
        e.hint = infeasible_hint(graph, device, runtime, rules, budgets, e)
        raise


def plan_rules(runtime: Runtime, rules: PlanRules | None, weight_bits: list[int] | None,
               act_bits: list[int] | None) -> tuple[Runtime, PlanRules]:
    """The runtime and the rules a plan keeps: the building backend's ``rules`` (default: the runtime's
    tables); with ``weight_bits`` (a study; the plan may not deploy) the runtime's weight widths are replaced
    and its own tables are the rules; narrowed to ``act_bits``."""
    if rules is not None and rules.runtime != runtime.name:
        raise UserError(f"the plan rules are for runtime '{rules.runtime}', the plan for '{runtime.name}'",
                        "take the runtime and its rules from one plan_target() call")
    rules = rules or PlanRules.from_runtime(runtime)
    if weight_bits:
        runtime = runtime.model_copy(update={"weights": {"default": sorted(weight_bits)}})
        table = PlanRules.from_runtime(runtime)
        rules = PlanRules(runtime=table.runtime, choices=table.choices, reasons=(
            f"weight widths {sorted(weight_bits)} given for a study: no backend's rules; the plan may not deploy",))
    if act_bits:
        allowed = {k: [b for b in v if b in act_bits] for k, v in runtime.activations.items()}
        if not allowed["default"]:
            raise UserError(f"{runtime.name} runs none of the activation widths {act_bits}",
                            f"it supports {runtime.activations['default']}")
        runtime = runtime.model_copy(update={"activations": {k: v or allowed["default"] for k, v in allowed.items()}})
        narrowed = rules.narrowed(act_bits=act_bits)
        if not narrowed.activation_widths():
            raise UserError(f"{rules.builder()} builds none of the activation widths {act_bits}",
                            f"it builds {', '.join(map(str, rules.activation_widths()))}")
        rules = narrowed
    return runtime, rules


def _report_scores(costs: dict[str, dict[tuple[int, int], float]]) -> dict[str, float]:
    """Per layer, the proxy's cost at 4-bit weights and 8-bit activations (or the nearest choice): the
    sensitivity the report draws beside the plan's widths."""
    scores = {}
    for op_name, row in costs.items():
        key = min(row, key=lambda wa: (abs(wa[0] - 4), abs(wa[1] - 8)))
        scores[op_name] = float(row[key])
    return scores


@dataclass(kw_only=True)
class EvalRequest:
    """Everything ``tap-edge eval`` needs: exactly one of ``plan`` (a plan.json) and ``bits`` (uniform);
    ``input_shapes`` as in :class:`PlanRequest`."""

    model: Any  # as in PlanRequest
    data: Path
    input_shapes: InputShapes | None = None
    plan: Path | None = None
    bits: str | None = None
    labels: Path | None = None
    calib: Path | None = None
    calib_samples: int | None = None
    limit: int | None = None
    rounding: str | None = None


def evaluate_plan(req: EvalRequest) -> EvalResult:
    """PTQ the model with a plan (or uniform bits) and measure top-1, agreement and KL against float.

    Calibration uses the first ``calib_samples`` of ``calib`` (default: of ``data``, which are then excluded
    from the evaluation, so no image is both calibrated and scored). ``rounding`` and ``calib_samples`` default
    to the plan's PTQ settings, else to round-to-nearest and its default sample count
    (:func:`tap_edge.quantize.ptq.default_ptq_samples`)."""
    from tap_edge.fit.bits import BitAssignment
    from tap_edge.fit.memory import flash_breakdown
    from tap_edge.graph.models import load_graph
    from tap_edge.plan.calib import find_labels, labels_for, labels_within, load_images, load_labels
    from tap_edge.quantize.evaluate import evaluate
    from tap_edge.quantize.ptq import PTQConfig, quantize_model

    if (req.plan is None) == (req.bits is None):
        raise UserError("pass exactly one of a plan and uniform bits", "e.g. --plan plan.json or --bits w4a8")
    t0 = time.perf_counter()
    plan_id = None
    planned: PTQSettings | None = None
    if req.plan:
        data = read_json(req.plan, "pass a plan.json written by tap-edge plan")
        bits = BitAssignment.from_plan(data, str(req.plan))
        if data.get("schema") == Plan.SCHEMA:
            plan_doc = Plan.from_dict(data, str(req.plan))
            plan_id, planned = plan_doc.plan_id, plan_doc.ptq
    else:
        bits = BitAssignment.parse(req.bits or "w8a8")
    lm = _torch_model(req.model, req.input_shapes, "eval")
    graph = load_graph(lm)
    bits.check_names(graph)
    settings = _resolved_ptq(planned, req.rounding, req.calib_samples)
    config = PTQConfig.from_dict(settings.model_dump(exclude={"samples"}))
    n_calib = settings.samples
    calib_dir = req.calib or req.data
    calib, _ = load_images(calib_dir, lm.preprocess, limit=n_calib)
    skip = n_calib if calib_dir == req.data else 0
    with console.progress("loading evaluation images", None):
        images, names = load_images(req.data, lm.preprocess, limit=req.limit, skip=skip)
    labels_path = req.labels or find_labels(req.data)
    labels = labels_for(names, load_labels(labels_path), str(labels_path)) if labels_path else None
    top1_note = None
    if labels is not None:  # an ImageNet labels.csv beside the photos does not score a 10-class model
        labels, top1_note = labels_within(labels, graph.tensors[graph.outputs[0]].shape[-1], str(labels_path),
                                          req.labels)
    t = time.perf_counter()
    qmodel = quantize_model(lm.module, bits, calib, config=config, graph=graph)
    ptq_s = time.perf_counter() - t
    metrics = evaluate(qmodel, lm.module, images, labels)
    return EvalResult(model=_spec(req.model, lm), inputs=model_inputs(graph), bits=bits.label(),
                      plan=str(req.plan) if req.plan else None,
                      plan_id=plan_id, n_images=len(images), calib_samples=len(calib),
                      model_bytes=flash_breakdown(graph, bits).model_bytes, ptq_s=round(ptq_s, 3),
                      agreement=metrics["agreement"], kl=metrics["kl"], top1=metrics["top1"],
                      float_top1=metrics["float_top1"], top1_note=top1_note,
                      ptq=ptq_settings(config, len(calib)),
                      seconds=round(time.perf_counter() - t0, 3))
