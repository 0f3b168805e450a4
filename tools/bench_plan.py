"""Proxies on real photos: EfficientNet-Lite0 (pretrained) on ../shared/data/imagenet-sample.

16 calibration images (the first 16 files), evaluation on the other 480. Budgets: the flash of uniform 4-bit
and uniform 6-bit weights with 8-bit activations; weights may take 2..8 bits on every layer (a fake-quant
study: no device restriction), activations stay 8-bit. Table 1: one row per proxy plus float and uniform
baselines: top-1, agreement with float, mean KL to float, LayerStats / proxy / ILP seconds.
Table 2: 30 random feasible plans at the 4-bit budget (the ILP fed with random costs); for each proxy the
Spearman correlation between the plan's summed proxy cost and the measured KL (higher is better) and
top-1 (lower is better, so the sign is flipped). The correlation table scores plans on --corr-images images.

    .venv/bin/python tools/bench_plan.py [--proxies hawq,ompq,...] [--corr-images 160] [--random-plans 30]

With ``--rounding`` only the rounding table is made: for each budget (uniform w4a8, and the tap proxy's plan
at the flash of uniform 3 / 4 / 6-bit weights: "mixed-N") and each rounding method, the PTQ seconds, top-1,
agreement with float and KL on the evaluation photos, and paired bootstrap 95 % intervals (2,000 resamples of
the same images) of the difference to round-to-nearest in agreement, top-1 and per-image KL. The PTQ step
calibrates on the first --ptq-samples photos (a list tries several: the proxy keeps the first 16); every row is
scored on the photos after the largest count, so rows are paired. ``--clip mse,output`` gives gptq / adaround one
row per weight-clipping search (nearest always uses mse); ``--plan-proxy`` chooses the proxy of the mixed plans.

    .venv/bin/python tools/bench_plan.py --rounding nearest,gptq,adaround [--ptq-samples 64]
        [--budgets uniform4,mixed3,mixed4,mixed6] [--clip mse,output] [--plan-proxy fisher]
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
from tap_edge.quantize.evaluate import compare_logits, logits, per_sample_kl
from tap_edge.quantize.ptq import PTQConfig, default_ptq_samples, quantize_model

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
WIDTHS = [2, 3, 4, 5, 6, 7, 8]


def fake_quant_runtime():  # noqa: ANN201 - a devices.Runtime
    """A host fake-quant runtime: every layer class may take 2..8-bit weights, activations are 8-bit (the
    Raspberry Pi 4's ONNX Runtime: weights counted packed at their width, no .tflite containers)."""
    rt = get_device("raspberry-pi-4").runtime("onnxruntime")
    return rt.model_copy(update={"weights": {k: WIDTHS for k in rt.weights},
                                 "activations": {k: [8] for k in rt.activations}, "code_bytes": 0})


def lite0_photo_split(data: Path, n_calib: int):  # noqa: ANN201 - (LoadedModel, graph, 4 tensors)
    """EfficientNet-Lite0, its graph, the first ``n_calib`` photos of ``data`` (calibration), the rest (scoring)
    with their labels, and the float model's logits on the rest: the split the PTQ benches share."""
    lm = load_model("efficientnet_lite0")
    graph = load_graph(lm)
    pool, _ = load_images(data, lm.preprocess, limit=n_calib)
    images, names = load_images(data, lm.preprocess, skip=n_calib)
    labels = labels_for(names, load_labels(data / "labels.csv"))
    return lm, graph, pool, images, labels, logits(lm.module, images)


def proxy_cost_table(proxy: str, lm, graph, stats, calib: torch.Tensor) -> dict:  # noqa: ANN001
    """The allocator's table (8-bit activations) from ``proxy``'s weight costs on ``stats`` / ``calib``."""
    wcost = get_proxy(proxy)(stats, ProxyContext(model=lm.module, graph=graph, calib=calib))
    return {op: {(w, 8): float(c) for w, c in row.items()} for op, row in wcost.items()}


def score_ptq(lm, graph, bits: BitAssignment, pool: torch.Tensor, rounding: str, images: torch.Tensor,  # noqa: ANN001
              float_logits: torch.Tensor, labels: torch.Tensor) -> tuple[dict, np.ndarray]:
    """PTQ of ``lm`` with ``bits`` and ``rounding`` on ``pool``, scored on ``images``: (metrics of
    ``compare_logits``, per-photo top-1 agreement with float as 0/1 for the paired bootstrap)."""
    q = quantize_model(lm.module, bits, pool, config=PTQConfig(rounding=rounding), graph=graph)
    got = logits(q, images)
    return compare_logits(float_logits, got, labels), (got.argmax(1) == float_logits.argmax(1)).numpy()


def ci_text(a: np.ndarray, b: np.ndarray) -> str:
    """``d [lo, hi]`` in points: the paired bootstrap 95 % interval of :func:`_bootstrap`."""
    d, lo, hi = _bootstrap(a, b)
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE)
    ap.add_argument("--proxies", default=",".join(list_proxies()))
    ap.add_argument("--corr-images", type=int, default=160)
    ap.add_argument("--random-plans", type=int, default=30)
    ap.add_argument("--rounding", default=None, help="make the rounding table for these methods, e.g. "
                                                      "nearest,gptq,adaround")
    ap.add_argument("--ptq-samples", default=None, help="PTQ calibration samples, e.g. 64 or 16,32,64,128 "
                                                         "(default: each method's default)")
    ap.add_argument("--budgets", default="uniform4,mixed3,mixed4,mixed6")
    ap.add_argument("--iters", type=int, default=None, help="AdaRound iterations per layer (default: PTQConfig's)")
    ap.add_argument("--clip", default=None, help="weight clipping of gptq / adaround rows, e.g. mse,output "
                                                  "(default: PTQConfig's)")
    ap.add_argument("--plan-proxy", default="tap", help="the proxy whose plans are the mixed-N budgets")
    args = ap.parse_args()
    con = Console(width=150)
    torch.manual_seed(0)
    if args.rounding:
        rounding_table(args, con)
        return

    lm = load_model("efficientnet_lite0")
    graph = load_graph(lm)
    calib, _ = load_images(args.data, lm.preprocess, limit=16)
    images, names = load_images(args.data, lm.preprocess, skip=16)
    labels = labels_for(names, load_labels(args.data / "labels.csv"))
    float_logits = logits(lm.module, images)
    # a host fake-quant runtime: every layer may take 2..8-bit weights, activations 8-bit
    runtime = fake_quant_runtime()
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


def _bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000) -> tuple[float, float, float]:
    """Mean of ``a - b`` (per-image outcomes of two methods on the same images: 0/1, or KL) and its paired bootstrap
    95 % interval (images resampled with replacement, seeded)."""
    rng = np.random.default_rng(0)
    d = a.astype(float) - b.astype(float)
    idx = rng.integers(0, len(d), size=(n, len(d)))
    means = d[idx].mean(1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _clip(method: str, clip: str | None) -> dict[str, str]:
    """The PTQConfig keyword of a row's clipping (nearest and no --clip: PTQConfig's default)."""
    return {"clip": clip} if clip and method != "nearest" else {}


def rounding_table(args: argparse.Namespace, con: Console) -> None:
    """The rounding table of the module docstring."""
    methods = args.rounding.split(",")
    clips: list[str | None] = list(args.clip.split(",")) if args.clip else [None]
    for m in methods:
        for c in clips:
            PTQConfig(rounding=m, **_clip(m, c))  # a bad name fails before any work
    get_proxy(args.plan_proxy)
    counts = [int(x) for x in args.ptq_samples.split(",")] if args.ptq_samples else None
    lm = load_model("efficientnet_lite0")
    graph = load_graph(lm)
    n_max = max(counts or [default_ptq_samples(m) for m in methods] + [16])
    pool, _ = load_images(args.data, lm.preprocess, limit=n_max)
    images, names = load_images(args.data, lm.preprocess, skip=n_max)
    labels = labels_for(names, load_labels(args.data / "labels.csv"))
    float_logits = logits(lm.module, images)
    float_pred = float_logits.argmax(1)
    runtime = fake_quant_runtime()
    budgets: dict[str, BitAssignment] = {}
    calib16 = pool[:16]
    stats = compute_layer_stats(lm.module, graph, calib16)
    wcost = get_proxy(args.plan_proxy)(stats, ProxyContext(model=lm.module, graph=graph, calib=calib16))
    table = {op: {(w, 8): float(c) for w, c in row.items()} for op, row in wcost.items()}
    for name in args.budgets.split(","):
        width = int(name[-1])
        if name.startswith("uniform"):
            budgets[name] = BitAssignment.parse(f"w{width}a8")
        else:
            budgets[name] = allocate(graph, table, runtime, Budgets(flash_of_uniform(graph, width, runtime), None),
                                     check_arena=False).bits()
    load = open("/proc/loadavg").read().split()[0] if Path("/proc/loadavg").exists() else "?"
    rows = []
    ref: dict[tuple[str, int], tuple[np.ndarray, ...]] = {}
    runs = [(m, c) for m in methods for c in (clips if m != "nearest" else [None])]
    for bname, bits in budgets.items():
        for n in counts or [None]:
            for method, clip in runs:
                samples = n or default_ptq_samples(method)
                cfg = PTQConfig(rounding=method, **_clip(method, clip), **({"iters": args.iters} if args.iters else {}))
                t = time.perf_counter()
                q = quantize_model(lm.module, bits, pool[:samples], config=cfg, graph=graph)
                ptq_s = time.perf_counter() - t
                got = logits(q, images)
                m = compare_logits(float_logits, got, labels)
                agree = (got.argmax(1) == float_pred).numpy()
                correct = (got.argmax(1) == labels).numpy()
                kl = per_sample_kl(float_logits, got).numpy()
                key = (bname, n or 0)
                if method == "nearest" and key not in ref:
                    ref[key] = (agree, correct, kl)
                rows.append((bname, f"{method} ({cfg.clip})", samples, ptq_s, m, (agree, correct, kl), key))
                con.print(f"{bname} {method} clip {cfg.clip} ({samples} samples): top-1 {100 * m['top1']:.1f}%, "
                          f"agreement {100 * m['agreement']:.1f}%, KL {m['kl']:.4f}, PTQ {ptq_s:.1f} s")
    t = Table(title=f"EfficientNet-Lite0, rounding: {len(images)} evaluation photos (after the first {n_max}), a8, "
                    f"load average {load} at the start")
    for col in ("budget", "rounding (clip)", "samples", "PTQ s", "top-1 %", "agreement %", "KL",
                "d agreement vs nearest [95% CI]", "d top-1 vs nearest [95% CI]", "d KL vs nearest [95% CI]"):
        t.add_column(col, justify="left" if col in ("budget", "rounding (clip)") else "right")
    float_top1 = compare_logits(float_logits, float_logits, labels)["top1"]
    t.add_row("float", "-", "-", "-", f"{100 * float_top1:.1f}", "100.0", "0", "-", "-", "-")
    for bname, method, samples, ptq_s, m, outcomes, key in rows:
        cis = ["-", "-", "-"]
        if not method.startswith("nearest") and key in ref:
            agree, correct, kl = (_bootstrap(a, b) for a, b in zip(outcomes, ref[key], strict=True))
            cis = [f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for d, lo, hi in (agree, correct)]
            cis.append("{:+.4f} [{:+.4f}, {:+.4f}]".format(*kl))
        t.add_row(bname, method, str(samples), f"{ptq_s:.1f}", f"{100 * m['top1']:.1f}", f"{100 * m['agreement']:.1f}",
                  f"{m['kl']:.4f}", *cis)
    con.print(t)
    con.print("command: .venv/bin/python tools/bench_plan.py --rounding " + args.rounding
              + (f" --ptq-samples {args.ptq_samples}" if args.ptq_samples else "")
              + (f" --budgets {args.budgets}" if args.budgets != "uniform4,mixed3,mixed4,mixed6" else "")
              + (f" --iters {args.iters}" if args.iters else "")
              + (f" --clip {args.clip}" if args.clip else "")
              + (f" --plan-proxy {args.plan_proxy}" if args.plan_proxy != "tap" else ""))


if __name__ == "__main__":
    main()
