"""Benchmark of the sensitivity path on pretrained EfficientNet-Lite0 and the sample photos.

1. LayerStats time with 16 calibration photos: the first call in the process (oneDNN builds its kernels for
   each new shape then) and the best of ``--repeats`` later calls, with the phases of the best one.
2. Each proxy's time on those LayerStats (defaults; ``hawq`` and ``qerror`` run extra passes on the batch).
3. Sanity of the PTQ path: top-1 of float and of uniform weight-only PTQ (w8/w6/w5/w4, per-channel symmetric,
   MSE-searched clipping, BN folded, float activations) on the other 480 photos, beside design.md's reference
   numbers (measured on all 496 photos without BN folding).

    .venv/bin/python tools/bench_proxies.py [--data ../shared/data/imagenet-sample] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tap_edge.graph.models import load_graph, load_model
from tap_edge.plan.calib import labels_for, load_images, load_labels
from tap_edge.plan.proxies import ProxyContext, activation_costs, get_proxy, list_proxies
from tap_edge.plan.stats import compute_layer_stats
from tap_edge.quantize.evaluate import evaluate, logits
from tap_edge.quantize.ptq import quantize_model

ROOT = Path(__file__).resolve().parents[1]
DESIGN = {"fp32": 86.3, "w8a32": 86.3, "w6a32": 78.4, "w5a32": 75.0, "w4a32": 4.2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "imagenet-sample")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--proxies", default=",".join(list_proxies()), help="comma-separated proxy names")
    ap.add_argument("--bits", default="w8a32,w6a32,w5a32,w4a32", help="uniform PTQ rows ('' to skip)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    con = Console(highlight=False, width=160)
    out: dict = {"model": args.model, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                 "loadavg_start": os.getloadavg()}

    lm = load_model(args.model)
    graph = load_graph(lm)
    calib, _ = load_images(args.data, lm.preprocess, limit=args.calib_samples)

    # 1. LayerStats
    runs = []
    for _ in range(1 + args.repeats):
        tm: dict[str, float] = {}
        t = time.perf_counter()
        stats = compute_layer_stats(lm.module, graph, calib, timings=tm)
        tm["wall"] = time.perf_counter() - t
        runs.append(tm)
    best = min(runs[1:] or runs, key=lambda r: r["wall"])
    out["layerstats"] = {"cold_s": runs[0]["wall"], "warm_best_s": best["wall"],
                         "warm_all_s": [r["wall"] for r in runs[1:]], "phases_best": best,
                         "layers": len(stats), "samples": len(calib)}
    t1 = Table(title=f"LayerStats: {args.model}, {len(stats)} layers, {len(calib)} calibration photos, "
                     f"{torch.get_num_threads()} threads")
    for c in ("run", "wall s", "passes s", "act. task s", "grad. tasks s", "qerror task s", "weighted s"):
        t1.add_column(c, justify="right")
    for i, r in enumerate(runs):
        t1.add_row("cold (1st call)" if i == 0 else f"warm {i}", f"{r['wall']:.2f}", f"{r.get('passes', 0):.2f}",
                   f"{r.get('activations_task_seconds', 0):.2f}", f"{r.get('gradients_task_seconds', 0):.2f}",
                   f"{r.get('qerror_task_seconds', 0):.2f}", f"{r.get('weighted_errors', 0):.2f}")
    con.print(t1)

    # 2. proxies
    ctx = ProxyContext(model=lm.module, graph=graph, calib=calib)
    ctx.folded_model()  # shared by hawq and qerror: built once, outside their timings
    t2 = Table(title="Proxy time on these LayerStats (s); cost at w4 of the first / middle / last layer")
    for c in ("proxy", "seconds", "first", "middle", "last"):
        t2.add_column(c, justify="right")
    out["proxies"] = {}
    mid = stats[len(stats) // 2]
    for name in [p for p in args.proxies.split(",") if p]:
        t = time.perf_counter()
        costs = get_proxy(name)(stats, ctx)
        activation_costs(stats, costs)
        dt = time.perf_counter() - t
        out["proxies"][name] = {"seconds": dt}
        t2.add_row(name, f"{dt:.2f}", *(f"{costs[s.name][4]:.3g}" for s in (stats[0], mid, stats[-1])))
    con.print(t2)

    # 3. PTQ sanity on the other photos
    specs = [b for b in args.bits.split(",") if b]
    if specs:
        images, names = load_images(args.data, lm.preprocess, skip=args.calib_samples)
        labels = labels_for(names, load_labels(args.data / "labels.csv"))
        fl = logits(lm.module, images)
        float_top1 = float((fl.argmax(1) == labels).double().mean())
        t3 = Table(title=f"Uniform weight-only PTQ on {len(images)} photos (calibration: the first "
                         f"{len(calib)}); design.md: all 496 photos, no BN folding")
        for c in ("bits", "top-1 %", "design.md top-1 %", "agreement %", "mean KL", "PTQ s"):
            t3.add_column(c, justify="right")
        t3.add_row("fp32", f"{100 * float_top1:.1f}", f"{DESIGN['fp32']:.1f}", "100.0", "0", "-")
        out["ptq"] = {"fp32": {"top1": float_top1}}
        for spec in specs:
            t = time.perf_counter()
            q = quantize_model(lm.module, spec, calib, graph=graph)
            dt = time.perf_counter() - t
            r = evaluate(q, None, images, labels, float_logits=fl)
            out["ptq"][spec] = {**r, "ptq_s": dt}
            ref = DESIGN.get(spec)
            t3.add_row(spec, f"{100 * r['top1']:.1f}", f"{ref:.1f}" if ref is not None else "-",
                       f"{100 * r['agreement']:.1f}", f"{r['kl']:.4f}", f"{dt:.2f}")
        con.print(t3)
    out["loadavg_end"] = os.getloadavg()
    con.print(f"load average at start {out['loadavg_start'][0]:.1f}, at end {out['loadavg_end'][0]:.1f} "
              f"({out['cpus']} CPUs): timings are only meaningful on an otherwise idle machine")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
