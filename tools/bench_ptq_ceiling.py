"""Where PTQ's loss sits on EfficientNet-Lite0: ceilings of the activation width, uniform 4-bit weights with some
layer classes given 8 bits back, and the mixed plans of two proxies, all with the same PTQ and on the same photos.

Every row is a PTQ model (``quantize_model``: folded BN, the rounding, activations at the row's width) scored on
the photos of ``--data`` after the first ``--ptq-samples`` (which calibrate it; the proxies' LayerStats use the
first 16): top-1, agreement with float, mean KL, and the paired bootstrap 95 % interval (2,000 resamples of the
same photos) of the agreement difference to uniform w4a8 with the same rounding. The class rows are diagnostics
(their flash is above the 4-bit budget): they say which layers the 4-bit loss comes from.

    .venv/bin/python tools/bench_ptq_ceiling.py [--rounding gptq] [--ptq-samples 64] [--proxies fisher,tap]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan import SAMPLE, ci_text, fake_quant_runtime, lite0_photo_split, proxy_cost_table, score_ptq  # noqa: E402 - the shared bench helpers

from tap_edge.fit.bits import BitAssignment  # noqa: E402
from tap_edge.graph.graph import Op  # noqa: E402
from tap_edge.plan.allocate import allocate  # noqa: E402
from tap_edge.plan.budgets import Budgets, flash_of_uniform  # noqa: E402
from tap_edge.plan.stats import compute_layer_stats  # noqa: E402
from tap_edge.quantize.evaluate import compare_logits  # noqa: E402
from tap_edge.quantize.ptq import PTQConfig  # noqa: E402

#: Layer classes of an EfficientNet-Lite given 8-bit weights in the diagnostic rows (module-name tests).
CLASSES: dict[str, Callable[[str], bool]] = {
    "classifier": lambda m: m == "classifier",
    "head conv": lambda m: m == "conv_head",
    "depthwise convs": lambda m: m.endswith("conv_dw"),
    "expansion 1x1 convs": lambda m: m.endswith("conv_pw"),
    "projection 1x1 convs": lambda m: m.endswith("conv_pwl"),
}


def with_eight_bits(ops: list[Op], keep: Callable[[str], bool], act: int = 8) -> BitAssignment:
    """Uniform 4-bit weights except the layers ``keep`` accepts, which get 8."""
    layers = {op.module or op.name: {"w": 8 if keep(op.module or op.name) else 4, "a": act} for op in ops}
    return BitAssignment.from_plan({"default": {"w": 4, "a": act}, "layers": layers})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE)
    ap.add_argument("--rounding", default="gptq")
    ap.add_argument("--ptq-samples", type=int, default=64)
    ap.add_argument("--proxies", default="fisher,tap")
    args = ap.parse_args()
    con = Console()
    PTQConfig(rounding=args.rounding)  # a bad name fails before any work
    lm, graph, pool, images, labels, float_logits = lite0_photo_split(args.data, args.ptq_samples)
    ops = graph.quantizable_ops()
    rows: list[tuple[str, str, BitAssignment]] = [
        ("w8a8", "nearest", BitAssignment.parse("w8a8")), ("w8a8", args.rounding, BitAssignment.parse("w8a8")),
        ("w8a16", "nearest", BitAssignment.parse("w8a16")), ("w4a16", args.rounding, BitAssignment.parse("w4a16")),
        ("w4a8", args.rounding, BitAssignment.parse("w4a8"))]
    rows += [(f"w4a8, {name} at w8", args.rounding, with_eight_bits(ops, keep)) for name, keep in CLASSES.items()]
    runtime = fake_quant_runtime()
    calib16 = pool[:16]
    stats = compute_layer_stats(lm.module, graph, calib16)
    for proxy in args.proxies.split(","):
        table = proxy_cost_table(proxy, lm, graph, stats, calib16)
        for width in (4, 3):
            bits = allocate(graph, table, runtime, Budgets(flash_of_uniform(graph, width, runtime), None),
                            check_arena=False).bits()
            rows.append((f"{proxy} plan, mixed-{width}", args.rounding, bits))
    results = []
    ref = None
    for label, rounding, bits in rows:
        t = time.perf_counter()
        m, agree = score_ptq(lm, graph, bits, pool, rounding, images, float_logits, labels)
        if label == "w4a8":
            ref = agree
        results.append((label, rounding, m, agree))
        con.print(f"{label} {rounding}: agreement {100 * m['agreement']:.1f}%, KL {m['kl']:.4f}, top-1 "
                  f"{100 * m['top1']:.1f}% ({time.perf_counter() - t:.0f} s)")
    float_top1 = compare_logits(float_logits, float_logits, labels)["top1"]
    t = Table(title=f"EfficientNet-Lite0: {len(images)} photos after the first {args.ptq_samples}; float top-1 "
                    f"{100 * float_top1:.1f}%")
    for col in ("weights / activations", "rounding", "top-1 %", "agreement %", "KL", "d agreement vs w4a8 [95% CI]"):
        t.add_column(col, justify="left" if col in ("weights / activations", "rounding") else "right")
    for label, rounding, m, agree in results:
        ci = "-"
        if ref is not None and label != "w4a8":
            ci = ci_text(agree, ref)
        t.add_row(label, rounding, f"{100 * m['top1']:.1f}", f"{100 * m['agreement']:.1f}", f"{m['kl']:.4f}", ci)
    con.print(t)
    con.print(f"command: .venv/bin/python tools/bench_ptq_ceiling.py --rounding {args.rounding} "
              f"--ptq-samples {args.ptq_samples} --proxies {args.proxies}")


if __name__ == "__main__":
    main()
