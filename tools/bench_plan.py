"""Proxies on real photos: EfficientNet-Lite0 (pretrained) on ../shared/data/imagenet-sample.

16 calibration images (the first 16 files), evaluation on the other 480. Budgets: the flash of uniform 4-bit
and uniform 6-bit weights with 8-bit activations; weights may take 2..8 bits on every layer (a fake-quant
study: no device restriction), activations stay 8-bit. Table 1: one row per proxy plus float and uniform
baselines: top-1, agreement with float, mean KL to float, LayerStats / proxy / ILP seconds.
Table 2: 30 random feasible plans at the 4-bit budget (the ILP fed with random costs); for each proxy the
Spearman correlation between the plan's summed proxy cost and the measured KL (higher is better) and
top-1 (lower is better, so the sign is flipped). The correlation table scores plans on --corr-images images.

    .venv/bin/python tools/bench_plan.py [--proxies hawq,ompq,...] [--corr-images 160] [--random-plans 30]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

from tap_edge.devices import get_device
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.models import load_graph, load_model
from tap_edge.plan.allocate import allocate
from tap_edge.plan.budgets import Budgets, flash_of_uniform
from tap_edge.plan.calib import labels_for, load_images, load_labels
from tap_edge.plan.proxies import ProxyContext, get_proxy, list_proxies
from tap_edge.plan.stats import compute_layer_stats
from tap_edge.quantize.evaluate import compare_logits, logits
from tap_edge.quantize.ptq import quantize_model

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
WIDTHS = [2, 3, 4, 5, 6, 7, 8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE)
    ap.add_argument("--proxies", default=",".join(list_proxies()))
    ap.add_argument("--corr-images", type=int, default=160)
    ap.add_argument("--random-plans", type=int, default=30)
    args = ap.parse_args()
    con = Console(width=150)
    torch.manual_seed(0)

    lm = load_model("efficientnet_lite0")
    graph = load_graph(lm)
    calib, _ = load_images(args.data, lm.preprocess, limit=16)
    images, names = load_images(args.data, lm.preprocess, skip=16)
    labels = labels_for(names, load_labels(args.data / "labels.csv"))
    float_logits = logits(lm.module, images)
    # a host fake-quant runtime: every layer may take 2..8-bit weights, activations 8-bit
    runtime = get_device("raspberry-pi-4").runtime().model_copy(
        update={"weights": {"default": WIDTHS}, "activations": {"default": [8]}, "code_bytes": 0})
    budgets = {f"w{b}": Budgets(flash_of_uniform(graph, b, runtime), None) for b in (4, 6)}

    def score(bits: BitAssignment, n: int | None = None) -> dict:
        q = quantize_model(lm.module, bits, calib, graph=graph)
        imgs = images if n is None else images[:n]
        return compare_logits(float_logits[: len(imgs)], logits(q, imgs), labels[: len(imgs)])

    t = time.perf_counter()
    stats = compute_layer_stats(lm.module, graph, calib)
    stats_s = time.perf_counter() - t
    rows = [("float", "-", {"top1": compare_logits(float_logits, float_logits, labels)["top1"], "agreement": 1.0,
                            "kl": 0.0}, None, None, None)]
    for b in (8, 6, 5, 4):
        rows.append((f"uniform w{b}a8", f"w{b}", score(BitAssignment.parse(f"w{b}a8")), None, None, None))
    costs_by_proxy: dict[str, dict] = {}
    ctx = ProxyContext(model=lm.module, graph=graph, calib=calib)
    for name in args.proxies.split(","):
        t = time.perf_counter()
        wcost = get_proxy(name)(stats, ctx)
        proxy_s = time.perf_counter() - t
        costs_by_proxy[name] = wcost
        table = {op: {(w, 8): float(c) for w, c in row.items()} for op, row in wcost.items()}
        for label, bud in budgets.items():
            t = time.perf_counter()
            alloc = allocate(graph, table, runtime, bud, check_arena=False)
            ilp_s = time.perf_counter() - t
            rows.append((name, label, score(alloc.bits()), stats_s, proxy_s, ilp_s))
            con.print(f"{name} @ {label}: top-1 {100 * rows[-1][2]['top1']:.1f}%")

    t1 = Table(title=f"EfficientNet-Lite0, 16 calibration photos, {len(images)} evaluation photos, a8")
    for col in ("proxy", "budget", "top-1 %", "agreement %", "KL", "LayerStats s", "proxy s", "ILP s"):
        t1.add_column(col, justify="left" if col in ("proxy", "budget") else "right")
    for name, label, m, s1, s2, s3 in rows:
        t1.add_row(name, label, f"{100 * m['top1']:.1f}", f"{100 * m['agreement']:.1f}", f"{m['kl']:.4f}",
                   "-" if s1 is None else f"{s1:.2f}", "-" if s2 is None else f"{s2:.2f}",
                   "-" if s3 is None else f"{s3:.3f}")
    con.print(t1)

    if args.random_plans <= 0:
        return
    # ---- random feasible plans at the 4-bit budget --------------------------------------------------------
    rng = np.random.default_rng(0)
    plans, measured = [], []
    ops = [s.name for s in stats]
    for i in range(args.random_plans):
        rand = {op: {(w, 8): float(rng.random() * 4.0 ** (8 - w)) for w in WIDTHS} for op in ops}
        alloc = allocate(graph, rand, runtime, budgets["w4"], check_arena=False)
        plans.append(alloc)
        measured.append(score(alloc.bits(), args.corr_images))
        con.print(f"random plan {i + 1}/{args.random_plans}: KL {measured[-1]['kl']:.3f}")
    kl = np.array([m["kl"] for m in measured])
    top1 = np.array([m["top1"] for m in measured])
    t2 = Table(title=f"{len(plans)} random feasible plans at the w4 budget, scored on {args.corr_images} photos: "
                     "Spearman of the plan's summed proxy cost with the measured damage")
    for col in ("proxy", "rho(cost, KL)", "rho(cost, -top-1)"):
        t2.add_column(col, justify="left" if col == "proxy" else "right")
    op_of_layer = {o.module or o.name: o.name for o in graph.ops}
    for name, wcost in costs_by_proxy.items():
        summed = np.array([sum(wcost[op_of_layer[layer]][v["w"]] for layer, v in a.layers.items()) for a in plans])
        r_kl = spearmanr(summed, kl).statistic
        r_top = spearmanr(summed, -top1).statistic
        t2.add_row(name, f"{r_kl:+.3f}", f"{r_top:+.3f}")
    con.print(t2)


if __name__ == "__main__":
    main()
