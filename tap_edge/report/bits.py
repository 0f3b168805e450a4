"""Section "Bits per layer" from :class:`~tap_edge.documents.Plan`: the widths the allocator chose beside each
layer's proxy score, and the predicted footprint against the budgets with the figures ``tap-edge plan`` prints
(flash = ``predicted.flash_bytes``, peak SRAM = ``predicted.arena_bytes``, both against ``budgets``)."""

from __future__ import annotations

import math

from tap_edge.documents import Plan
from tap_edge.report.html import (
    BLUE,
    DASH,
    ORANGE,
    PURPLE,
    bits_cell,
    esc,
    figure,
    finish,
    fmt_b,
    fmt_num,
    fmt_scalar,
    guard,
    how,
    kv_table,
    table,
)

ID, TITLE = "bits", "Bits per layer"
HOW = ("one row per quantized layer, in the plan's order. Left: the weight and activation widths the allocator "
       "chose (shorter bar = fewer bits = smaller, less accurate). Right: the proxy's sensitivity score for that "
       "layer; sensitive layers should keep more bits. The table above the plot gives the predicted footprint "
       "against the budgets, as <code>tap-edge plan</code> prints it.")


def budget_cell(predicted: int, budget: int | None) -> str:
    """``predicted / budget (share)``, green within the budget and red over it; the prediction alone when there
    is no budget."""
    if budget is None or budget <= 0:
        return fmt_b(predicted)
    cls = "good" if predicted <= budget else "bad"
    return f'<span class="{cls}">{fmt_b(predicted)} / {fmt_b(budget)} ({100 * predicted / budget:.0f}%)</span>'


def footprint(plan: Plan) -> list[tuple[str, str]]:
    """The plan's facts: widths, predicted flash and arena against the budgets, solver and timing."""
    p, b = plan.predicted, plan.budgets
    pairs = [("runtime", esc(plan.runtime)), ("default widths", f"w{plan.default.w} a{plan.default.a}"),
             ("flash: predicted / budget", budget_cell(p.flash_bytes, b.flash_bytes)),
             ("peak SRAM (arena): predicted / budget", budget_cell(p.arena_bytes, b.sram_bytes)),
             ("weights", fmt_b(p.weights_bytes)),
             ("peak op", f"<code>{esc(p.peak_op)}</code> ({fmt_b(p.peak_live_bytes)} live)")]
    if b.bops is not None:
        pairs.append(("BOPs: predicted / budget", f"{p.bops:.3g} / {b.bops:.3g}"))
    if b.latency_ms is not None:
        modelled = f"{p.latency_ms:.3g} ms / " if p.latency_ms is not None else ""
        pairs.append(("latency (modelled): predicted / budget", f"{modelled}{b.latency_ms:g} ms"))
    s = plan.solver
    pairs.append(("solver", esc(f"{s.status}, {s.seconds:.3g} s, objective {s.objective:.4g}, {s.variables} "
                                f"variables, {s.constraints} constraints")))
    if plan.timing:
        pairs.append(("timing", esc(", ".join(f"{k}: {fmt_scalar(v)}" for k, v in plan.timing.items()))))
    if plan.calibration is not None:
        pairs.append(("calibration", esc(f"{plan.calibration.samples} samples of {plan.calibration.folder}")))
    return pairs


def _plot(plan: Plan, names: list[str], scores: list[float | None]) -> str:
    import numpy as np

    n = len(names)
    w = [plan.layers[k].w for k in names]
    a = [plan.layers[k].a for k in names]
    has_scores = any(s is not None for s in scores)
    fig = figure(11, max(3.4, 0.3 * n + 2.0))
    axes = fig.subplots(1, 2, sharey=True, width_ratios=[1.25, 1]) if has_scores else [fig.add_subplot()]
    ax = axes[0]
    y = np.arange(n)
    ax.barh(y - 0.2, w, height=0.38, color=BLUE, label="weight bits")
    ax.barh(y + 0.2, a, height=0.38, color=ORANGE, label="activation bits")
    widths = sorted(set(w + a))
    ax.set_xticks(widths)
    ax.set_xticklabels([str(v) for v in widths])
    ax.set_xlim(0, max(widths) * 1.05)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=11 if n <= 40 else 9.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("bit-width (bits)")
    ax.set_title("bits: weights (blue), activations (orange)")
    if has_scores:
        ax2 = axes[1]
        vals = [s if s is not None else 0.0 for s in scores]
        pos = [v for v in vals if v > 0]
        log = len(pos) == n and max(pos) / min(pos) > 100
        big = max((abs(v) for v in vals), default=0.0)
        exp = 3 * math.floor(math.log10(big) / 3) if big > 0 and not log else 0
        if exp:
            vals = [v / 10**exp for v in vals]
        ax2.barh(y, vals, height=0.6, color=PURPLE)
        if log:
            ax2.set_xscale("log")
        else:
            from matplotlib.ticker import MaxNLocator

            ax2.xaxis.set_major_locator(MaxNLocator(5))
        ax2.grid(axis="y", visible=False)
        ax2.set_xlabel(f"{plan.proxy} score{f' (×1e{exp})' if exp else ''}; higher = more sensitive"
                       f"{'; log scale' if log else ''}")
        ax2.set_title("proxy score per layer")
        ax2.tick_params(axis="y", left=False)
    return finish(fig, f"{plan.model} plan for {plan.device} ({plan.runtime})", "bits-per-layer",
                  "weight and activation bits per layer with proxy scores",
                  legend=ax.get_legend_handles_labels(), ncols=2)


def _block(plan: Plan) -> str:
    names = list(plan.layers)
    scores = [plan.proxy_scores.get(k) for k in names]
    out = [f"<h3>{esc(plan.model)} · plan for {esc(plan.device)} · proxy {esc(plan.proxy)}</h3>",
           kv_table(footprint(plan))]
    if not names:
        return "".join(out) + '<p class="muted">This plan lists no layers (every layer at the default).</p>'
    out.append(_plot(plan, names, scores))
    rows = [[f"<code>{esc(k)}</code>", esc(x.op_class or DASH), f"{x.params:,}", bits_cell(x.w), bits_cell(x.a),
             fmt_num(s), fmt_num(x.cost)] for (k, x), s in zip(plan.layers.items(), scores, strict=True)]
    out.append(f"<details><summary>Per-layer table ({len(rows)} layers)</summary>"
               f"{table(['layer', 'op class', 'params', 'W bits', 'A bits', 'proxy score', 'cost'], rows)}"
               "</details>")
    return "".join(out)


def render(plans: list[Plan]) -> str:
    return how(HOW) + "".join(guard(_block, p) for p in plans)
