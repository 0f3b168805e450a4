"""Step 3, will it fit? Bit assignments, the memory model (flash; the arena planned as TFLite Micro plans it)
and the per-device verdict: FITS, OOM or UNSUPPORTED."""

from tap_edge.core.lazy import lazy_exports

__all__ = ["ArenaPlan", "BitAssignment", "Checker", "FlashBreakdown", "LayerBits", "check_report",
           "flash_breakdown", "plan_arena_for", "region_limits"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "BitAssignment": "tap_edge.fit.bits", "LayerBits": "tap_edge.fit.bits",
    "ArenaPlan": "tap_edge.fit.memory", "FlashBreakdown": "tap_edge.fit.memory",
    "flash_breakdown": "tap_edge.fit.memory", "plan_arena_for": "tap_edge.fit.memory",
    "Checker": "tap_edge.fit.checker", "check_report": "tap_edge.fit.checker", "region_limits": "tap_edge.fit.checker",
})
