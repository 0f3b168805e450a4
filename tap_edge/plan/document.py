"""The plan document: an :class:`~tap_edge.plan.allocate.Allocation` with its provenance as a
:class:`~tap_edge.documents.Plan` (``plan.json``; ``BitAssignment.from_plan`` reads it back)."""

from __future__ import annotations

from tap_edge.documents import (
    Calibration,
    Pin,
    Plan,
    PlanBudgets,
    PlanLayer,
    PlanPrediction,
    SolverReport,
    SweepPoint,
    Widths,
)
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.shapes import model_inputs
from tap_edge.plan.allocate import Allocation
from tap_edge.plan.budgets import Budgets
from tap_edge.plan.rules import PlanRules


def plan_id(model: str, layers: dict[str, PlanLayer]) -> str:
    """A short stable id of a plan: the model spec and every layer's widths (not costs or timings)."""
    import hashlib
    import json

    key = json.dumps([model, {k: [v.w, v.a] for k, v in layers.items()}], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def plan_layers(allocation: Allocation, graph: ModelGraph) -> dict[str, PlanLayer]:
    """Per plan key: widths, the first op (and every op when several share the module), class, params, cost."""
    ops = {op.name: op for op in graph.ops}
    layers: dict[str, PlanLayer] = {}
    for key, wa in allocation.layers.items():
        names = allocation.layer_ops.get(key) or [key]
        members = [ops[n] for n in names if n in ops]
        layers[key] = PlanLayer(w=int(wa["w"]), a=int(wa["a"]), op=names[0],
                                op_class=members[0].op_class if members else "",
                                params=int(sum(o.params for o in members)),
                                cost=float(allocation.layer_costs.get(key, 0.0)),
                                ops=names if len(names) > 1 else None)
    return layers


def plan_document(allocation: Allocation, graph: ModelGraph, *, model: str, device: str, runtime: str, proxy: str,
                  budgets: Budgets, timing: dict[str, float] | None = None,
                  proxy_scores: dict[str, float] | None = None, calibration: Calibration | None = None,
                  sweep: list[Allocation] | None = None, rules: PlanRules | None = None,
                  pins: dict[str, tuple[int, int | None]] | None = None) -> Plan:
    """The ``plan.json`` document of ``allocation`` (figures recomputed by the allocator on the result), with
    the backend and the rules it keeps and the layers the user pinned."""
    a = allocation
    layers = plan_layers(a, graph)
    return Plan(
        plan_id=plan_id(model, layers), model=model, inputs=model_inputs(graph), device=device, runtime=runtime,
        proxy=proxy,
        default=Widths(w=8, a=a.default_a),
        layers=layers,
        budgets=PlanBudgets(**budgets.to_dict()),
        predicted=PlanPrediction(flash_bytes=a.flash_bytes, model_bytes=a.model_bytes, weights_bytes=a.weights_bytes,
                                 arena_bytes=a.arena_bytes,
                                 peak_live_bytes=a.peak_live_bytes, peak_op=a.peak_op, bops=a.bops,
                                 latency_ms=a.latency_ms),
        solver=SolverReport(status=a.status, seconds=round(a.solver_seconds, 6), objective=a.objective,
                            iterations=a.iterations, variables=a.n_variables, constraints=a.n_constraints,
                            tightenings=a.tightenings),
        timing=dict(timing or {}), proxy_scores=dict(proxy_scores or {}), calibration=calibration,
        sweep=[SweepPoint(flash_bytes=s.flash_bytes, model_bytes=s.model_bytes, objective=s.objective,
                          arena_bytes=s.arena_bytes,
                          layers={k: Widths(**v) for k, v in s.layers.items()}) for s in sweep or []],
        backend=rules.backend if rules else None, rules=rules.to_info() if rules else None,
        pins={k: Pin(w=w, a=a) for k, (w, a) in (pins or {}).items()},
    )
