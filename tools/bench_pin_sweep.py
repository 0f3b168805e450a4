"""What one layer's width costs a mixed plan after GPTQ: the plan of a proxy at the flash of uniform N-bit weights,
then the same budget re-allocated with that layer pinned at each of ``--widths``, and (a diagnostic above the
budget) the plan with only that layer raised to 8 bits.

Why: on EfficientNet-Lite0 the proxies, whose costs come from round-to-nearest errors, put the classifier (28 %
of the weights) at 3 bits in the mixed-4 plan; GPTQ repairs the 4-bit convs far more than it repairs the
classifier, so where the plan spends its bits matters once the rounding is GPTQ. Every row: PTQ with
``--rounding`` on the first ``--ptq-samples`` photos of ``--data``, scored on the rest (top-1, agreement with
float, mean KL) and the paired bootstrap 95 % interval (2,000 resamples of the same photos) of the agreement
difference to the proxy's own plan.

    .venv/bin/python tools/bench_pin_sweep.py [--proxy fisher] [--budget 4] [--layer classifier] [--widths 4,5,6]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan import SAMPLE, ci_text, fake_quant_runtime, lite0_photo_split, proxy_cost_table, score_ptq  # noqa: E402 - the shared bench helpers

from tap_edge.fit.bits import BitAssignment  # noqa: E402
from tap_edge.graph.graph import ModelGraph  # noqa: E402
from tap_edge.plan.allocate import CostTable, allocate  # noqa: E402
from tap_edge.plan.budgets import Budgets, flash_of_uniform  # noqa: E402
from tap_edge.plan.stats import compute_layer_stats  # noqa: E402
from tap_edge.quantize.evaluate import compare_logits  # noqa: E402
from tap_edge.quantize.ptq import PTQConfig  # noqa: E402


def pin_sweep_plans(graph: ModelGraph, table: CostTable, budget_bits: int, layer: str,
                    widths: list[int]) -> list[tuple[str, BitAssignment, int]]:
    """(label, plan, flash bytes) rows: the proxy's plan, the budget re-allocated with ``layer`` pinned at each
    width, and the proxy's plan with ``layer`` alone at 8 bits (over the budget)."""
    runtime = fake_quant_runtime()
    budget = Budgets(flash_of_uniform(graph, budget_bits, runtime), None)
    base = allocate(graph, table, runtime, budget, check_arena=False)
    base_bits = base.bits()
    over = base_bits.to_dict()
    rows = [(f"proxy's plan ({layer} at w{over['layers'][layer]['w']})", base_bits, base.flash_bytes)]
    for w in widths:
        a = allocate(graph, table, runtime, budget, check_arena=False, pins={layer: (w, None)})
        rows.append((f"{layer} pinned at w{w}, same budget", a.bits(), a.flash_bytes))
    over["layers"][layer]["w"] = 8
    rows.append((f"proxy's plan, {layer} at w8 (over budget)", BitAssignment.from_plan(over), -1))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE)
    ap.add_argument("--proxy", default="fisher")
    ap.add_argument("--budget", type=int, default=4, help="flash of uniform N-bit weights")
    ap.add_argument("--layer", default="classifier")
    ap.add_argument("--widths", default="4,5,6")
    ap.add_argument("--rounding", default="gptq")
    ap.add_argument("--ptq-samples", type=int, default=64)
    args = ap.parse_args()
    con = Console()
    PTQConfig(rounding=args.rounding)  # a bad name fails before any work
    lm, graph, pool, images, labels, float_logits = lite0_photo_split(args.data, args.ptq_samples)
    calib16 = pool[:16]
    stats = compute_layer_stats(lm.module, graph, calib16)
    table = proxy_cost_table(args.proxy, lm, graph, stats, calib16)
    rows = pin_sweep_plans(graph, table, args.budget, args.layer, [int(w) for w in args.widths.split(",")])
    results, ref = [], None
    for label, bits, flash in rows:
        t = time.perf_counter()
        m, agree = score_ptq(lm, graph, bits, pool, args.rounding, images, float_logits, labels)
        ref = agree if ref is None else ref
        results.append((label, flash, m, agree))
        con.print(f"{label}: agreement {100 * m['agreement']:.1f}%, KL {m['kl']:.4f}, top-1 {100 * m['top1']:.1f}% "
                  f"({time.perf_counter() - t:.0f} s)")
    float_top1 = compare_logits(float_logits, float_logits, labels)["top1"]
    t = Table(title=f"EfficientNet-Lite0, `{args.proxy}` at the flash of uniform {args.budget}-bit weights, "
                    f"{args.rounding}: {len(images)} photos after the first {args.ptq_samples}; float top-1 "
                    f"{100 * float_top1:.1f}%")
    for col in ("plan", "weight bytes", "top-1 %", "agreement %", "KL", "d agreement vs the proxy's plan [95% CI]"):
        t.add_column(col, justify="left" if col == "plan" else "right")
    for i, (label, flash, m, agree) in enumerate(results):
        ci = ci_text(agree, ref) if i else "-"
        t.add_row(label, f"{flash:,}" if flash >= 0 else "over", f"{100 * m['top1']:.1f}",
                  f"{100 * m['agreement']:.1f}", f"{m['kl']:.4f}", ci)
    con.print(t)
    con.print(f"command: .venv/bin/python tools/bench_pin_sweep.py --proxy {args.proxy} --budget {args.budget} "
              f"--layer {args.layer} --widths {args.widths} --rounding {args.rounding} "
              f"--ptq-samples {args.ptq_samples}")


if __name__ == "__main__":
    main()
