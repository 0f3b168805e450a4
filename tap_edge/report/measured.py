"""Section "Predicted vs measured" from :class:`~tap_edge.documents.MeasureReport`: per run the headline SRAM and
flash figures beside their predictions and the latency (a plot and a table), every comparison ``measure`` made
and how it was measured, the flags beyond the tolerance as sentences, the use against the device's limits with
the verdict, and the artifact's agreement with its reference."""

from __future__ import annotations

from typing import Any, Literal

from tap_edge.documents import Agreement, Comparison, CrossCheck, MeasureReport
from tap_edge.report.html import (
    BLUE,
    GREEN,
    GREY,
    ORANGE,
    RED,
    badge,
    bar,
    byte_scale,
    esc,
    figure,
    finish,
    fmt_b,
    fmt_exact_b,
    fmt_pct,
    guard,
    how,
    table,
)

ID, TITLE = "measured", "Predicted vs measured"
HOW = ("one row per artifact run by <code>tap-edge measure</code>: latency on the host, and the headline SRAM and "
       "flash figures, predicted by tap-edge's memory model and measured from the artifact (the error is measured "
       "vs predicted). An error beyond the tolerance (normally ±5%) of a figure measured like for like is red and "
       "flagged; figures measured another way (a host's RSS against a planned arena) are grey, shown but not "
       "judged. Below: every comparison and how it was measured, the use against the device's free memory with "
       "the verdict (FITS only when the prediction and the measurement both fit), and agreement of the outputs.")
MEMORIES: tuple[tuple[Literal["sram", "flash"], str], ...] = (("sram", "SRAM"), ("flash", "flash"))


def label(m: MeasureReport) -> str:
    """``backend · device runtime`` (or the runtime that ran it, with its version, when no device was given)."""
    return f"{m.backend} · {m.runtime_name or m.runtime or '?'}"


def flag_sentence(c: Comparison, tolerance_pct: float) -> str:
    """A flag as a sentence: ``arena total: predicted 49,728 B, measured 50,656 B (+1.9%), over the 5%
    tolerance``."""
    return (f"{c.figure}: predicted {fmt_exact_b(c.predicted_bytes)}, measured {fmt_exact_b(c.measured_bytes)} "
            f"({fmt_pct(c.error_pct)}), over the {tolerance_pct:g}% tolerance")


def _judged(c: Comparison, tolerance_pct: float) -> str:
    """The CSS class of a comparison's error: bad (gated, beyond the tolerance), good, or muted (not gated)."""
    if not c.gated or c.error_pct is None:
        return "muted"
    return "bad" if abs(c.error_pct) > tolerance_pct else "good"


def _error(c: Comparison, tolerance_pct: float) -> str:
    tail = "" if c.gated else " (not judged)"
    return f'<span class="{_judged(c, tolerance_pct)}">{fmt_pct(c.error_pct)}{tail}</span>'


def _latency(m: MeasureReport) -> str:
    lat = m.latency
    if lat.median_ms is None:
        return "–"
    return f"{lat.median_ms:.3g} / {lat.p90_ms:.3g}" if lat.p90_ms is not None else f"{lat.median_ms:.3g}"


def _memory_panel(ax: Any, measures: list[MeasureReport], memory: Literal["sram", "flash"], title: str) -> None:
    import numpy as np

    y = np.arange(len(measures))
    heads = [m.headline(memory) for m in measures]
    values = [v for c in heads if c is not None for v in (c.predicted_bytes, c.measured_bytes) if v > 0]
    div, unit = byte_scale(max(values, default=1))
    ax.barh(y - 0.2, [(c.predicted_bytes if c else 0) / div for c in heads], height=0.38, color=GREY,
            label="predicted")
    ax.barh(y + 0.2, [(c.measured_bytes if c else 0) / div for c in heads], height=0.38, color=BLUE,
            label="measured")
    colours = {"bad": RED, "good": GREEN, "muted": "#555555"}
    for yi, m, c in zip(y, measures, heads, strict=True):
        if c is None:
            ax.text(0.02, yi, "not measured", va="center", fontsize=10, color="#555555",
                    transform=ax.get_yaxis_transform())
            continue
        ax.text(c.measured_bytes / div * 1.08, yi + 0.2, f"{fmt_pct(c.error_pct)}{'' if c.gated else ' (not judged)'}",
                va="center", fontsize=10.5, fontweight="bold", color=colours[_judged(c, m.tolerance_pct)])
    log = bool(values) and max(values) / min(values) > 10
    if log:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        ax.set_xlim(min(values) / div / 2, max(values) / div * 8)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(0, max(values, default=1) / div * 1.45)
    ax.set_xlabel(f"{unit}{' (log scale)' if log else ''}")
    ax.set_title(f"{title}: predicted vs measured")


def _plot(measures: list[MeasureReport]) -> str:
    import numpy as np

    fig = figure(12.5, max(3.6, 0.8 * len(measures) + 2.6))
    axes = fig.subplots(1, 3, sharey=True)
    for ax, (memory, title) in zip(axes, MEMORIES, strict=False):
        _memory_panel(ax, measures, memory, title)
    ax = axes[2]
    y = np.arange(len(measures))
    med = [m.latency.median_ms or 0.0 for m in measures]
    p90 = [m.latency.p90_ms or m.latency.median_ms or 0.0 for m in measures]
    ax.barh(y, med, height=0.55, color=ORANGE, xerr=[[0.0] * len(med), [b - a for a, b in zip(med, p90, strict=True)]],
            capsize=4, ecolor="#555555", label="latency median (whisker: p90)")
    for yi, a, b in zip(y, med, p90, strict=True):
        ax.text(b, yi, f"  {a:.3g} ms", va="center", fontsize=11)
    ax.set_xlim(0, max(p90 + [1e-3]) * 1.6)
    ax.set_xlabel("ms per inference (host)")
    ax.set_title("latency")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([label(m) for m in measures], fontsize=10)
    axes[0].set_ylim(len(measures) - 0.5, -0.5)
    for ax in axes:
        ax.grid(axis="y", visible=False)
    handles, names = [], []
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            if n not in names:
                handles.append(h)
                names.append(n)
    return finish(fig, "predicted vs measured, per artifact (error % = measured vs predicted)", "predicted-vs-measured",
                  "predicted and measured SRAM and flash, and latency, per artifact", legend=(handles, names),
                  fontsize=13)


def _headline_table(measures: list[MeasureReport]) -> str:
    rows = []
    for m in measures:
        cells = [f"<b>{esc(label(m))}</b><br><span class='small muted'>{esc(m.model or '?')} · "
                 f"{esc(m.bits or '?')}{' on ' + esc(m.device) if m.device else ''}</span>", _latency(m)]
        for memory, _ in MEMORIES:
            c = m.headline(memory)
            cells += ([fmt_exact_b(c.predicted_bytes), fmt_exact_b(c.measured_bytes), _error(c, m.tolerance_pct)]
                      if c is not None else ["–", "not measured", "–"])
        rows.append([*cells, badge(m.verdict)])
    return table(["artifact", "latency median / p90 (ms)", "SRAM predicted", "SRAM measured", "SRAM error",
                  "flash predicted", "flash measured", "flash error", "verdict"], rows, "measured")


def _comparisons_table(measures: list[MeasureReport]) -> str:
    rows = [[esc(label(m)), {"sram": "SRAM", "flash": "flash"}[c.memory], esc(c.figure) + (" ★" if c.headline else ""),
             fmt_exact_b(c.predicted_bytes), fmt_exact_b(c.measured_bytes), _error(c, m.tolerance_pct),
             esc(c.measured_by)] for m in measures for c in m.comparisons]
    return ("<h4>Every comparison and how it was measured</h4>"
            '<p class="small muted">★ the headline figure of that memory, shown in the table above.</p>'
            + table(["artifact", "memory", "figure", "predicted", "measured", "error", "measured by"], rows))


def _notes(measures: list[MeasureReport]) -> str:
    """Flags, problems, runtimes that could not build the model (in their own words) and where each
    prediction came from, as sentences."""
    items = [f'<li><span class="bad"><b>flag</b></span> {esc(label(m))}: {esc(flag_sentence(c, m.tolerance_pct))}'
             "</li>" for m in measures for c in m.flags]
    items += [f"<li>{badge(m.verdict)} {esc(label(m))} on {esc(m.device)}: {esc(p)}</li>"
              for m in measures for p in m.problems]
    items += [f"<li>{esc(label(m))}: {esc(f.runtime)} could not {esc(f.stage)} it: <code>{esc(f.reason)}</code>"
              " (its figures are missing; the other runtimes' are kept)</li>"
              for m in measures for f in m.runtime_failures]
    items += [f"<li>{esc(label(m))}: the prediction was made from the file itself (no tap-edge manifest)</li>"
              for m in measures if m.prediction_from == "file"]
    items += [f"<li>{esc(label(m))}: no prediction ({esc(m.prediction_error)})</li>"
              for m in measures if m.prediction_error]
    return f'<h4>Flags and problems</h4><ul class="flags">{"".join(items)}</ul>' if items else ""


def _use_table(measures: list[MeasureReport]) -> str:
    rows = []
    for m in measures:
        use, lim = m.measured_use, m.limits
        if use is None or lim is None:
            rows.append([esc(label(m)), "no device given", "–", "–", badge(m.verdict)])
            continue
        sram = "not measured"
        if use.sram_bytes is not None:
            sram = (bar(use.sram_bytes, lim.sram_bytes, lim.sram_bytes - use.sram_bytes)
                    + f'<div class="small muted">{esc(use.sram_measured_by)}</div>')
        shared = " (shared with the weights)" if lim.shared else ""
        rows.append([esc(label(m)), f"{esc(m.device)}<br><span class='small muted'>flash {esc(lim.flash_region)}, "
                                    f"SRAM {esc(lim.sram_region)}{shared}</span>",
                     bar(use.flash_bytes, lim.flash_bytes, lim.flash_bytes - use.flash_bytes), sram, badge(m.verdict)])
    return ("<h4>Use against the device and verdict</h4>"
            + table(["artifact", "device", "flash: artifact + runtime code vs free", "SRAM: measured vs free",
                     "verdict"], rows, "fit"))


def _agreement_table(measures: list[MeasureReport]) -> str:
    rows = []
    for m in measures:
        compared: list[tuple[str, Agreement | CrossCheck]] = []
        if m.agreement is not None:
            a = m.agreement
            compared.append((f"the {a.reference} model" + (f" (run by {a.runtime})" if a.runtime else ""), a))
        if m.cross_check is not None:
            compared.append((m.cross_check.between, m.cross_check))
        rows += [[esc(label(m)), esc(against), f"{100 * a.top1_agreement:.1f}%", f"{a.cosine:.5f}",
                  f"{a.max_abs_diff:.3g}" if a.max_abs_diff is not None else "–", str(a.n)] for against, a in compared]
    if not rows:
        return ""
    return ("<h4>Do the outputs agree?</h4>"
            + table(["artifact", "outputs compared with", "top-1 agreement", "cosine", "max |diff|", "inputs"], rows,
                    "narrow"))


def _host_memory_table(measures: list[MeasureReport]) -> str:
    """The host memory figures of each run and the runtime's own arena, each with how it was measured."""
    rows = []
    for m in measures:
        mem = m.memory
        for what, value, measured_by in (
                ("peak RSS of the child", mem.peak_rss_bytes, "VmHWM of the measurement child"),
                ("runtime import baseline", mem.import_baseline_bytes, "peak RSS after importing the runtime only"),
                ("model RSS", mem.model_rss_bytes, "peak RSS minus the import baseline")):
            if value is not None:
                rows.append([esc(label(m)), what, fmt_b(value), measured_by])
        if m.arena is not None:
            a = m.arena
            rows.append([esc(label(m)), "runtime arena: total", fmt_exact_b(a.total_bytes), esc(a.measured_by)])
            for what, value in (("head", a.head_bytes), ("tail", a.tail_bytes),
                                ("smallest arena that constructs", a.min_constructing_bytes),
                                ("smallest arena that constructs and runs (compared)", a.min_bytes)):
                if value is not None:
                    rows.append([esc(label(m)), f"runtime arena: {what}", fmt_exact_b(value), esc(a.measured_by)])
    return ("<details><summary>Host memory figures and the runtime's own arena</summary>"
            f"{table(['artifact', 'figure', 'bytes', 'how measured'], rows, 'narrow')}</details>") if rows else ""


def _inputs_table(measures: list[MeasureReport]) -> str:
    """What every input of every run was fed (shape, dtype, declared shape, how the data was made)."""
    rows = [[esc(label(m)), esc(i.name), "x".join(map(str, i.shape)) or "scalar", esc(i.dtype), esc(i.declared),
             esc(i.data)] for m in measures for i in m.inputs]
    if not rows:
        return ""
    return ("<details><summary>Inputs fed to the runtimes</summary>"
            f"{table(['artifact', 'input', 'shape', 'dtype', 'declared', 'data'], rows, 'narrow')}</details>")


def render(measures: list[MeasureReport]) -> str:
    return "".join([how(HOW), guard(_plot, measures), _headline_table(measures), _notes(measures),
                    _comparisons_table(measures) if any(m.comparisons for m in measures) else "",
                    _use_table(measures), _agreement_table(measures), _host_memory_table(measures),
                    _inputs_table(measures)])
