"""Step 4, make it fit: calibration samples -> LayerStats -> a proxy's cost per (layer, width) -> budgets ->
an exact integer program -> a plan (per-layer weight and activation widths)."""

from tap_edge.core.lazy import lazy_exports

__all__ = ["PlanRequest", "EvalRequest", "make_plan", "evaluate_plan"]
__getattr__, __dir__ = lazy_exports(__name__, {n: "tap_edge.plan.pipeline" for n in __all__})
