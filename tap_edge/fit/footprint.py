"""A model's flash and arena on a device runtime: the entry points check, plan and compile predict with.

An Ethos-U runtime (one with a ``vela`` section) is predicted the way Vela plans it (:mod:`tap_edge.fit.ethos_u`);
every other runtime by tap-edge's memory model (:mod:`tap_edge.fit.memory`). The dispatch lives here, above both,
because the Ethos-U model stands on the memory model's planner and scratch figures (an import cycle otherwise).
"""

from __future__ import annotations

from typing import Any

from tap_edge.fit import ethos_u, memory
from tap_edge.fit.bits import BitAssignment
from tap_edge.fit.memory import ArenaPlan, FlashBreakdown
from tap_edge.graph.graph import ModelGraph


def flash_breakdown(graph: ModelGraph, bits: BitAssignment, runtime_bytes: int = 0, *,
                    runtime: Any = None) -> FlashBreakdown:
    """Flash of ``graph`` at ``bits`` (:func:`tap_edge.fit.memory.flash_breakdown`); on an Ethos-U runtime the
    Vela-optimised model's (:func:`tap_edge.fit.ethos_u.flash_figures`)."""
    if getattr(runtime, "vela", None) is not None:
        return ethos_u.flash_figures(graph, bits, runtime, runtime_bytes)
    return memory.flash_breakdown(graph, bits, runtime_bytes, runtime=runtime)


def plan_arena_for(graph: ModelGraph, bits: BitAssignment, runtime: Any) -> ArenaPlan:
    """The arena ``graph`` needs at ``bits`` on ``runtime`` (:func:`tap_edge.fit.memory.plan_arena_for`); on an
    Ethos-U runtime Vela's plan (:func:`tap_edge.fit.ethos_u.arena_plan`)."""
    if getattr(runtime, "vela", None) is not None:
        return ethos_u.arena_plan(graph, bits, runtime)
    return memory.plan_arena_for(graph, bits, runtime)
