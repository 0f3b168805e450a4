"""Allocator speed: size of the integer program and solve time for EfficientNet-Lite0 and MobileNetV2.

Runtime: a generic one with 7 weight widths (2..8) x 2 activation widths (8, 16), CMSIS-NN scratch, 100 KiB
of code. Budgets: flash = the flash of uniform w4 / w6 weights (8-bit activations); SRAM = 2 x or 1.2 x the
arena of uniform 8-bit activations (2 x: one solve; 1.2 x: mixed widths fragment the greedy arena beyond the
live bytes, so the allocator re-solves with tightened step budgets, see tap_edge.plan.allocate). Costs are a fixed
stand-in for a proxy: params x 2^-2w + output elements x 2^-a. Times are the median of 5 runs: "total" is
allocate() end to end (building the program, solving, checking the plan with memory.plan_arena), "milp" the
HiGHS calls alone.

    .venv/bin/python tools/bench_allocate.py
"""

from __future__ import annotations

import statistics
import time

from tap_edge.core.units import fmt_bytes
from tap_edge.devices import Runtime
from tap_edge.fit.bits import BitAssignment
from tap_edge.fit.memory import plan_arena
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.models import load_graph
from tap_edge.plan.allocate import allocate
from tap_edge.plan.budgets import Budgets, flash_of_uniform

MODELS = ("efficientnet_lite0", "timm:mobilenetv2_100")
RUNTIME = Runtime(name="generic-w2-8", weights={"default": [2, 3, 4, 5, 6, 7, 8]},
                  activations={"default": [8, 16]}, scratch="cmsis-nn", code_bytes=100 * 1024)
BUDGETS = (("w4", 2.0), ("w6", 2.0), ("w4", 1.2), ("w6", 1.2))  # (flash like, SRAM x the 8-bit arena)
RUNS = 5


def costs_for(graph: ModelGraph) -> dict[str, dict[tuple[int, int], float]]:
    """Deterministic stand-in costs: fewer bits cost more, 8-bit activations a little more than 16-bit."""
    out = {}
    for op in graph.quantizable_ops():
        n = sum(graph.tensors[t].numel for t in op.outputs)
        out[op.name] = {(w, a): op.weight_params * 2.0 ** (-2 * w) + n * 2.0 ** (-a)
                        for w in RUNTIME.weights["default"] for a in RUNTIME.activations["default"]}
    return out


def main() -> None:
    cols = [("model", "<22"), ("flash", "<5"), ("sram", "<7"), ("layers", ">6"), ("vars", ">5"),
            ("cons", ">5"), ("total ms", ">9"), ("milp ms", ">8"), ("iter", ">4"), ("status", "<8"),
            ("flash", ">10"), ("arena", ">10"), ("16-bit act", ">10")]
    head = " ".join(f"{name:{fmt}}" for name, fmt in cols)
    print(head)
    print("-" * len(head))
    for spec in MODELS:
        g = load_graph(spec)
        costs = costs_for(g)
        a8 = plan_arena(g, BitAssignment(8, 8), alignment=RUNTIME.arena_alignment,
                        scratch_model=RUNTIME.scratch).arena_bytes
        for like, factor in BUDGETS:
            b = Budgets(flash_of_uniform(g, int(like.strip("w")), RUNTIME), int(factor * a8))
            totals, milps = [], []
            for _ in range(RUNS):
                t0 = time.perf_counter()
                al = allocate(g, costs, RUNTIME, b)
                totals.append(time.perf_counter() - t0)
                milps.append(al.solver_seconds)
            values = [spec, like, f"{factor:g}x a8", len(al.layers), al.n_variables, al.n_constraints,
                      f"{1e3 * statistics.median(totals):.1f}", f"{1e3 * statistics.median(milps):.1f}",
                      al.iterations, al.status, fmt_bytes(al.flash_bytes), fmt_bytes(al.arena_bytes),
                      sum(v["a"] == 16 for v in al.layers.values())]
            print(" ".join(f"{v:{fmt}}" for v, (_, fmt) in zip(values, cols, strict=True)))


if __name__ == "__main__":
    main()
