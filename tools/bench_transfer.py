"""Transfer benchmark: every proxy on EfficientNet-Lite0 (never a search task) at mixed-3 / 4 / 5 budgets and each
PTQ rounding, on dev photos no search task uses, with paired bootstrap intervals and an oracle row.

Photos: the dev photos (``--data``) minus the ones the photo search tasks use
(:func:`tap_edge.search.photo_tasks.unseen_photos`); of those, the first ``--pool`` are the calibration pool (the
proxies' LayerStats use its first 16, the PTQ step its first ``default_ptq_samples(rounding)``, the oracle search
its first ``--oracle-photos``), the rest the evaluation photos every row is scored on (paired rows).

Budgets: ``mixed-N`` = the flash of uniform N-bit weights (8-bit activations, 2..8-bit weights on every layer:
:func:`bench_plan.fake_quant_runtime`). Each proxy's costs go through the exact ILP; the plan is quantized with
the full PTQ step (``quantize_model``: folded BN, the rounding method, 8-bit activations) and scored against the
float model: top-1, agreement, mean KL. Identical plans are scored once.

Reference and intervals: per budget and rounding, the best hand-designed proxy (:data:`HAND_DESIGNED`, the one
with the highest agreement on the evaluation photos themselves: a choice that favours the reference) and, for
every row, the paired bootstrap 95 % interval (2,000 resamples of the same photos, :func:`bench_plan._bootstrap`)
of its agreement difference to it.

Oracle: an evolutionary allocation scored on the real KL of the first ``--oracle-photos`` pool photos (never the
evaluation photos): the population starts as every proxy's plan at the budget; each round the best
``--oracle-parents`` plans' cost tables are perturbed per layer by log-normal noise and re-solved by the ILP, and
the children are scored by their measured KL (weight-only, round to nearest: ``RoundToNearest``); the plan with
the least KL is the oracle, then scored like every other row. "gap closed" = (agreement - uniform) / (oracle -
uniform) at the same budget and rounding.

    .venv/bin/python tools/bench_transfer.py [--rounding nearest,gptq] [--budgets 3,4,5] [--json out.json]
        [--program NAME=PATH ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan import SAMPLE, _bootstrap, fake_quant_runtime  # noqa: E402 - the shared bench helpers

from tap_edge.fit.bits import BitAssignment  # noqa: E402
from tap_edge.graph.models import load_graph, load_model  # noqa: E402
from tap_edge.plan.allocate import allocate  # noqa: E402
from tap_edge.plan.budgets import Budgets, flash_of_uniform  # noqa: E402
from tap_edge.plan.calib import labels_for, load_labels  # noqa: E402
from tap_edge.plan.proxies import ProxyContext, get_proxy, list_proxies  # noqa: E402
from tap_edge.plan.stats import compute_layer_stats  # noqa: E402
from tap_edge.quantize.evaluate import logits  # noqa: E402
from tap_edge.quantize.ptq import PTQConfig, default_ptq_samples, folded_copy, quantize_model  # noqa: E402
from tap_edge.search.photo_tasks import RoundToNearest, load_photo_files, unseen_photos  # noqa: E402

#: Hand-designed proxies (the hand-written TAP seed included): the reference is the best of these.
HAND_DESIGNED = ("tap-seed", "fisher", "hawq", "ompq", "qerror", "kl")
#: Baselines that are not proxies (no row of their own in the comparison).
NOT_PROXIES = ("uniform", "random")
paired_bootstrap = _bootstrap  # mean of a - b and its paired bootstrap 95 % interval


def per_image(ref: torch.Tensor, got: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-photo agreement with float, correctness and KL(p_float || p)."""
    lr, lg = torch.log_softmax(ref.double(), 1), torch.log_softmax(got.double(), 1)
    return {"agree": (got.argmax(1) == ref.argmax(1)).numpy(), "correct": (got.argmax(1) == labels).numpy(),
            "kl": (lr.exp() * (lr - lg)).sum(1).numpy()}


def avg_weight_bits(bits: BitAssignment, graph: Any, stats: list[Any]) -> float:
    """Weight-count-weighted mean width of a plan over the quantizable layers."""
    sizes = [s.weight.size for s in stats]
    widths = [bits.weight_bits(op) for op in graph.quantizable_ops()]
    return float(sum(n * w for n, w in zip(sizes, widths, strict=True)) / sum(sizes))


def gap_closed(value: float, uniform: float, oracle: float) -> float | None:
    """Share of the uniform-to-oracle gap a value closes (None when the gap is below 1e-9)."""
    gap = oracle - uniform
    return (value - uniform) / gap if abs(gap) > 1e-9 else None


class Oracle:
    """The measured evolutionary allocation of the module docstring."""

    def __init__(self, lm: Any, graph: Any, stats: list[Any], x: torch.Tensor, runtime: Any, seed: int = 0) -> None:
        model = folded_copy(lm.module).to(memory_format=torch.channels_last).eval()
        self.nearest = RoundToNearest(model, [s.module for s in stats], [s.qscale for s in stats], list(stats[0].bits))
        self.x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            self.ref = torch.log_softmax(model(self.x).double(), 1)
        self.graph, self.stats, self.runtime = graph, stats, runtime
        self.rng = np.random.default_rng(seed)
        self.evaluations = 0

    def kl(self, bits: BitAssignment) -> float:
        widths = [int(bits.weight_bits(op)) for op in self.graph.quantizable_ops()]
        lg = torch.log_softmax(self.nearest.logits(widths, self.x).double(), 1)
        self.evaluations += 1
        return float((self.ref.exp() * (self.ref - lg)).sum(1).mean())

    def search(self, tables: dict[str, dict], budget: Budgets, rounds: int, parents: int, children: int,
               sigma: float) -> tuple[BitAssignment, float, str]:
        """(best plan, its calibration KL, where it came from)."""
        pop: list[tuple[float, str, dict, BitAssignment]] = []
        seen: set[str] = set()
        for name, table in tables.items():
            bits = allocate(self.graph, table, self.runtime, budget, check_arena=False).bits()
            key = json.dumps(bits.to_dict(), sort_keys=True)
            if key not in seen:
                seen.add(key)
                pop.append((self.kl(bits), name, table, bits))
        for r in range(rounds):
            pop.sort(key=lambda t: t[0])
            for _, origin, table, _ in pop[:parents]:
                for c in range(children):
                    noise = {op: float(np.exp(sigma * self.rng.standard_normal())) for op in table}
                    child = {op: {k: v * noise[op] for k, v in row.items()} for op, row in table.items()}
                    bits = allocate(self.graph, child, self.runtime, budget, check_arena=False).bits()
                    key = json.dumps(bits.to_dict(), sort_keys=True)
                    if key in seen:
                        continue
                    seen.add(key)
                    pop.append((self.kl(bits), f"{origin.split('+')[0]}+r{r}c{c}", child, bits))
            sigma *= 0.7
        pop.sort(key=lambda t: t[0])
        return pop[0][3], pop[0][0], pop[0][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE)
    ap.add_argument("--proxies", default=None, help="comma-separated (default: every registered proxy)")
    ap.add_argument("--program", action="append", default=[], help="NAME=PATH: a TAP program as an extra proxy")
    ap.add_argument("--rounding", default="nearest,gptq")
    ap.add_argument("--budgets", default="3,4,5")
    ap.add_argument("--pool", type=int, default=64, help="calibration pool photos (the rest are evaluated)")
    ap.add_argument("--eval-limit", type=int, default=None, help="score on at most this many photos (tests)")
    ap.add_argument("--oracle-photos", type=int, default=32)
    ap.add_argument("--oracle-rounds", type=int, default=4)
    ap.add_argument("--oracle-parents", type=int, default=3)
    ap.add_argument("--oracle-children", type=int, default=3)
    ap.add_argument("--oracle-sigma", type=float, default=0.5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    con = Console(width=170)
    torch.manual_seed(0)
    methods = args.rounding.split(",")
    for m in methods:
        PTQConfig(rounding=m)  # a bad name fails before any work
    t_start = time.perf_counter()
    lm = load_model("efficientnet_lite0")
    graph = load_graph(lm)
    photos = unseen_photos(args.data)
    pool_files, eval_files = photos[:args.pool], photos[args.pool:]
    if args.eval_limit:
        eval_files = eval_files[:args.eval_limit]
    pool = load_photo_files(pool_files, lm.preprocess)
    images = load_photo_files(eval_files, lm.preprocess)
    labels = labels_for([f.name for f in eval_files], load_labels(args.data / "labels.csv"))
    float_logits = logits(lm.module, images)
    runtime = fake_quant_runtime()
    calib = pool[:16]

    t = time.perf_counter()
    stats = compute_layer_stats(lm.module, graph, calib)
    stats_s = time.perf_counter() - t
    ctx = ProxyContext(model=lm.module, graph=graph, calib=calib)
    names = args.proxies.split(",") if args.proxies else [p for p in list_proxies()]
    tables: dict[str, dict] = {}
    proxy_s: dict[str, float] = {}
    for name in names:
        t = time.perf_counter()
        wcost = get_proxy(name)(stats, ctx)
        proxy_s[name] = time.perf_counter() - t
        tables[name] = {op: {(w, 8): float(c) for w, c in row.items()} for op, row in wcost.items()}
        con.print(f"proxy {name}: {proxy_s[name]:.2f} s")
    for spec in args.program:
        name, _, path = spec.partition("=")
        t = time.perf_counter()
        wcost = get_proxy("tap")(stats, ctx, path=path)
        proxy_s[name] = time.perf_counter() - t
        tables[name] = {op: {(w, 8): float(c) for w, c in row.items()} for op, row in wcost.items()}

    oracle = Oracle(lm, graph, stats, pool[:args.oracle_photos], runtime)
    scored: dict[tuple[str, str], dict[str, np.ndarray]] = {}  # (plan key, rounding) -> per-photo outcomes
    ptq_s: dict[tuple[str, str], float] = {}

    def score(bits: BitAssignment, method: str) -> tuple[dict[str, np.ndarray], float]:
        key = (json.dumps(bits.to_dict(), sort_keys=True), method)
        if key not in scored:
            t0 = time.perf_counter()
            q = quantize_model(lm.module, bits, pool[:default_ptq_samples(method)], config=PTQConfig(rounding=method),
                               graph=graph)
            ptq_s[key] = time.perf_counter() - t0
            scored[key] = per_image(float_logits, logits(q, images, description=f"{method} plan"), labels)
        return scored[key], ptq_s[key]

    results: list[dict[str, Any]] = []
    plans_at: dict[int, dict[str, BitAssignment]] = {}
    ilp_s: dict[tuple[int, str], float] = {}
    oracle_info: dict[int, tuple[float, str, float]] = {}
    for b in [int(x) for x in args.budgets.split(",")]:
        budget = Budgets(flash_of_uniform(graph, b, runtime), None)
        plans: dict[str, BitAssignment] = {"uniform": BitAssignment.parse(f"w{b}a8")}
        for name, table in tables.items():
            t = time.perf_counter()
            plans[name] = allocate(graph, table, runtime, budget, check_arena=False).bits()
            ilp_s[b, name] = time.perf_counter() - t
        t = time.perf_counter()
        ev0 = oracle.evaluations
        plans["oracle"], oracle_kl, origin = oracle.search(
            {n: tb for n, tb in tables.items() if n not in NOT_PROXIES}, budget, args.oracle_rounds,
            args.oracle_parents, args.oracle_children, args.oracle_sigma)
        oracle_info[b] = (oracle_kl, origin, time.perf_counter() - t)
        plans_at[b] = plans
        con.print(f"mixed-{b}: oracle from {origin}, calibration KL {oracle_kl:.4f}, "
                  f"{oracle.evaluations - ev0} measured plans, {oracle_info[b][2]:.0f} s")

    def write_json() -> None:
        if args.json:
            args.json.write_text(json.dumps({"command": cmd, "eval_photos": len(eval_files), "stats_s": stats_s,
                                             "seconds": time.perf_counter() - t_start, "rows": results}, indent=1))

    cmd = "command: .venv/bin/python tools/bench_transfer.py " + " ".join(sys.argv[1:])
    for method in methods:  # every budget at the first rounding first: a cut-short run still has whole tables
        for b, plans in plans_at.items():
            outs = {name: score(bits, method) for name, bits in plans.items()}
            hand = [n for n in HAND_DESIGNED if n in outs]
            best_hand = max(hand, key=lambda n: (outs[n][0]["agree"].mean(), -outs[n][0]["kl"].mean()))
            ref = outs[best_hand][0]
            u, o = outs["uniform"][0]["agree"].mean(), outs["oracle"][0]["agree"].mean()
            for name, (m, p_s) in outs.items():
                d, lo, hi = paired_bootstrap(m["agree"], ref["agree"])
                results.append({
                    "budget": f"mixed-{b}", "rounding": method, "proxy": name, "top1": float(m["correct"].mean()),
                    "agreement": float(m["agree"].mean()), "kl": float(m["kl"].mean()),
                    "d_agreement_vs_best_hand": d, "ci_low": lo, "ci_high": hi, "best_hand": best_hand,
                    "gap_closed": gap_closed(float(m["agree"].mean()), u, o),
                    "proxy_s": proxy_s.get(name), "ilp_s": ilp_s.get((b, name)),
                    "avg_bits": avg_weight_bits(plans[name], graph, stats), "ptq_s": p_s,
                    "oracle_calib_kl": oracle_info[b][0] if name == "oracle" else None,
                    "oracle_s": oracle_info[b][2] if name == "oracle" else None,
                    "oracle_origin": oracle_info[b][1] if name == "oracle" else None})
            write_json()
            con.print(f"mixed-{b} {method}: done ({time.perf_counter() - t_start:.0f} s so far)")

    load = open("/proc/loadavg").read().split()[0] if Path("/proc/loadavg").exists() else "?"
    table = Table(title=f"EfficientNet-Lite0 transfer: {len(eval_files)} evaluation photos no search task uses, "
                        f"a8; LayerStats {stats_s:.1f} s; load average {load} at the end")
    for col in ("budget", "rounding", "proxy", "top-1 %", "agreement %", "KL", "d agr. vs best hand [95% CI]",
                "gap closed", "proxy s"):
        table.add_column(col, justify="left" if col in ("budget", "rounding", "proxy") else "right")
    for r in results:
        mark = " (ref)" if r["proxy"] == r["best_hand"] else ""
        table.add_row(r["budget"], r["rounding"], r["proxy"] + mark, f"{100 * r['top1']:.1f}",
                      f"{100 * r['agreement']:.1f}", f"{r['kl']:.4f}",
                      f"{100 * r['d_agreement_vs_best_hand']:+.1f} [{100 * r['ci_low']:+.1f}, "
                      f"{100 * r['ci_high']:+.1f}]",
                      "-" if r["gap_closed"] is None else f"{100 * r['gap_closed']:.0f}%",
                      "-" if r["proxy_s"] is None else f"{r['proxy_s']:.2f}")
    con.print(table)
    con.print(cmd)
    write_json()

if __name__ == "__main__":
    main()
