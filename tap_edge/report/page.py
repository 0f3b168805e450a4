"""The HTML report: one self-contained file a person opens in a browser, built from the JSON results of
``tap-edge`` commands (``check``, ``plan``, ``eval``, ``measure``, ``evolve``).

Every result carries a ``"schema"`` key; each section of the report renders from the results of its kind and
is left out when there are none. Plots are PNGs drawn with matplotlib's Agg canvas (no pyplot, no global
backend change) and inlined as base64; CSS is inline; the page fetches nothing (a Content-Security-Policy
forbids it) so the file can be mailed, archived or attached to a CI run as it is.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import struct
from collections.abc import Callable, Iterable
from html.parser import HTMLParser
from typing import Any

from tap_edge import __version__ as _pkg_version
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes

SCHEMAS: dict[str, str] = {
    "check": "tap-edge/check-report",
    "plan": "tap-edge/plan",
    "eval": "tap-edge/eval",
    "measure": "tap-edge/measure",
    "evolve": "tap-edge/evolve-run",
}
KIND_OF_SCHEMA = {v: k for k, v in SCHEMAS.items()} | {"tap-edge/measure-report": "measure"}

#: (id, title) of every section, in page order.
SECTIONS: list[tuple[str, str]] = [
    ("fit-matrix", "Fit matrix"),
    ("memory", "Memory over time"),
    ("bits", "Bits per layer"),
    ("accuracy", "Accuracy vs size"),
    ("measured", "Predicted vs measured"),
    ("search", "TAP search"),
]

DPI = 144  # PNG pixels per inch; shown at 96 CSS px per inch, so plots stay sharp on high-density screens
_CSS_PX_PER_IN = 96
_BLUE, _ORANGE, _RED, _GREEN, _GREY, _PURPLE = (
    "#3b6ea8",
    "#e08a1e",
    "#c62828",
    "#2e7d32",
    "#8a8a8a",
    "#7b4fa0",
)
_VERDICT_CLASS = {"FITS": "fits", "OOM": "oom", "UNSUPPORTED": "unsup"}
_RC = {
    "font.size": 12,
    "axes.titlesize": 14,
    "axes.titleweight": "bold",
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
}


# ---- small helpers -------------------------------------------------------------------------------
def _e(x: Any) -> str:
    """HTML-escaped text of any value."""
    return html.escape("" if x is None else str(x), quote=True)


def _num(x: Any) -> float | None:
    """A finite float, or None for anything else (missing keys, strings, NaN)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def _b(n: Any) -> str:
    """Bytes for people, or a dash when unknown."""
    v = _num(n)
    return "–" if v is None else fmt_bytes(v)


def _pct(x: float | None, signed: bool = True, digits: int = 1) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}%" if signed else f"{x:.{digits}f}%"


def _byte_scale(maxval: float) -> tuple[float, str]:
    """Divisor and unit for an axis whose largest value is ``maxval`` bytes."""
    for div, unit in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if maxval >= div:
            return float(div), unit
    return 1.0, "bytes"


def _kind(result: dict[str, Any]) -> str | None:
    return KIND_OF_SCHEMA.get(str(result.get("schema", "")))


def _model_name(r: dict[str, Any]) -> str:
    m = r.get("model")
    if isinstance(m, dict):
        return str(m.get("name", "?"))
    return str(m) if m else "?"


def _get(d: Any, *path: str, default: Any = None) -> Any:
    """``d[path[0]][path[1]]...`` or ``default`` when any step is missing or not a dict."""
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    w, h = struct.unpack(">II", png[16:24])
    return int(w), int(h)


def _figure(width_in: float, height_in: float) -> Any:
    """A matplotlib Figure on the Agg canvas with constrained layout (no pyplot state touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _img(fig: Any, name: str, alt: str) -> str:
    """The figure as an inline ``<img>``: base64 PNG, with its pixel size in data attributes for checks."""
    buf = io.BytesIO()
    engine = fig.get_layout_engine()
    if engine is not None:  # lay out once, then draw once (savefig would otherwise draw twice)
        engine.execute(fig)
        fig.set_layout_engine("none")
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    png = buf.getvalue()
    w, h = _png_size(png)
    cw, ch = round(w * _CSS_PX_PER_IN / DPI), round(h * _CSS_PX_PER_IN / DPI)
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="plot"><img class="plot" data-plot="{_e(name)}" data-natural-width="{w}" '
        f'data-natural-height="{h}" width="{cw}" height="{ch}" alt="{_e(alt)}" '
        f'src="data:image/png;base64,{data}"></figure>'
    )


def _table(head: list[str], rows: Iterable[list[str]], cls: str = "") -> str:
    """An HTML table; cells are HTML already (escape text with ``_e``)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _kv_table(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _how(text: str) -> str:
    return f'<p class="how"><b>How to read this:</b> {text}</p>'


def _badge(verdict: str) -> str:
    return f'<span class="badge {_VERDICT_CLASS.get(verdict, "unknown")}">{_e(verdict)}</span>'


def _bar(used: float | None, limit: float | None, margin: float | None = None) -> str:
    """A CSS bar of ``used`` against ``limit`` (the track is the limit; red and marked ×N when over it),
    with the numbers and the margin under it."""
    if used is None or limit is None:
        return '<span class="muted">–</span>'
    if limit <= 0:
        return (
            '<div class="bar over"><div class="fill" style="width:100%"></div></div>'
            f'<div class="barlabel">needs {_b(used)}, <b class="bad">none free</b></div>'
        )
    ratio = used / limit
    over = ratio > 1
    width = min(ratio, 1.0) * 100
    tail = f' <b class="bad">×{ratio:.1f}</b>' if over else f" ({ratio * 100:.0f}%)"
    if margin is None:
        margin = limit - used
    left = (
        f'<span class="good">{_b(margin)} left</span>'
        if margin >= 0
        else f'<span class="bad">{_b(-margin)} short</span>'
    )
    return (
        f'<div class="bar{" over" if over else ""}"><div class="fill" style="width:{width:.1f}%"></div></div>'
        f'<div class="barlabel">{_b(used)} of {_b(limit)}{tail} · {left}</div>'
    )


# ---- check reports: fit matrix -------------------------------------------------------------------
def _device_numbers(d: dict[str, Any]) -> dict[str, float | None]:
    """Used, limit and margin for flash and SRAM of one device row (margins derived when absent)."""
    fu, fl = _num(d.get("flash_bytes")), _num(d.get("flash_limit_bytes"))
    su, sl = _num(d.get("peak_sram_bytes")), _num(d.get("sram_limit_bytes"))
    fm = _num(d.get("flash_margin_bytes"))
    sm = _num(d.get("sram_margin_bytes"))
    if fm is None and fu is not None and fl is not None:
        fm = fl - fu
    if sm is None and su is not None and sl is not None:
        sm = sl - su
    return {
        "flash": fu,
        "flash_limit": fl,
        "flash_margin": fm,
        "sram": su,
        "sram_limit": sl,
        "sram_margin": sm,
    }


def overflow_sentences(d: dict[str, Any]) -> list[str]:
    """Plain sentences (HTML) saying which memory overflowed, at which op and by how much, and which ops the
    runtime cannot run (grouped by problem)."""
    n = _device_numbers(d)
    out: list[str] = []
    if n["sram_margin"] is not None and n["sram_margin"] < 0:
        op = d.get("peak_op")
        at = f" at op <code>{_e(op)}</code>" if op else ""
        free = (
            f"{_b(n['sram_limit'])} free"
            if (n["sram_limit"] or 0) > 0
            else "none free once the weights share that memory"
        )
        out.append(
            f"SRAM ({_e(d.get('sram_region', '?'))}) overflows by <b>{_b(-n['sram_margin'])}</b>{at} "
            f"(needs {_b(n['sram'])}, {free})."
        )
    if n["flash_margin"] is not None and n["flash_margin"] < 0:
        fl = d.get("flash") if isinstance(d.get("flash"), dict) else {}
        rt = _num(fl.get("runtime_bytes"))
        parts = f" incl. {_b(rt)} runtime code" if rt else ""
        out.append(
            f"Flash ({_e(d.get('flash_region', '?'))}) overflows by <b>{_b(-n['flash_margin'])}</b> "
            f"(needs {_b(n['flash'])}{parts}, {_b(n['flash_limit'])} free)."
        )
    groups: dict[str, list[str]] = {}
    for u in d.get("unsupported") or []:
        if isinstance(u, dict):
            groups.setdefault(str(u.get("problem", "?")), []).append(str(u.get("op", "?")))
    for problem, ops in groups.items():
        more = f" +{len(ops) - 4} more" if len(ops) > 4 else ""
        shown = ", ".join(f"<code>{_e(o)}</code>" for o in ops[:4]) + more
        out.append(f"{_e(problem)}: {len(ops)} op(s) ({shown}).")
    if not out:
        out = [_e(p) for p in d.get("problems") or []]
    return out


def _fit_plot(rep: dict[str, Any], devs: list[dict[str, Any]]) -> str:
    """Horizontal bars: flash and peak SRAM of each device as a % of its limit, log scale, limit at 100%."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    n = len(devs)
    fig = _figure(11, max(3.0, 0.34 * n + 1.6))
    ax = fig.add_subplot()

    def pct(used: float | None, limit: float | None) -> float | None:
        if used is None or limit is None:
            return None
        return 100.0 * used / limit if limit > 0 else math.inf

    nums = [_device_numbers(d) for d in devs]
    fp = [pct(x["flash"], x["flash_limit"]) for x in nums]
    sp = [pct(x["sram"], x["sram_limit"]) for x in nums]
    finite = [v for v in fp + sp if v is not None and math.isfinite(v) and v > 0]
    lo = 10 ** math.floor(math.log10(min(finite) / 2)) if finite else 1.0
    hi = max(max(finite, default=100.0) * 3, 300.0)
    y = np.arange(n)
    for vals, off, colour, label in (
        (fp, -0.2, _BLUE, "flash (weights + runtime code)"),
        (sp, 0.2, _ORANGE, "peak SRAM (activation arena)"),
    ):
        shown = [(hi / 1.5 if (v is not None and math.isinf(v)) else v) for v in vals]
        w = [(v - lo) if v is not None else 0 for v in shown]
        ax.barh(y + off, w, left=lo, height=0.38, color=colour, label=label)
        for yi, v in zip(y, vals, strict=True):
            if v is not None and v > 100:
                txt = "no room" if math.isinf(v) else f"×{v / 100:.1f}"
                ax.text(min(v, hi / 1.5) * 1.08, yi + off, txt, va="center", fontsize=10, color=_RED)
    ax.axvspan(100, hi, color="#fbe3e1", zorder=0, label="over the limit")
    ax.axvline(100, color=_RED, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_yticks(y)
    labels = [f"{d.get('device', '?')}  [{d.get('verdict', '?')}]" for d in devs]
    ax.set_yticklabels(labels)
    for t, d in zip(ax.get_yticklabels(), devs, strict=True):
        t.set_color({"OOM": _RED, "UNSUPPORTED": "#a15c00"}.get(d.get("verdict", ""), "#222222"))
    ax.set_ylim(n - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("memory used, as % of what the device has free (log scale; the red line is the limit)")
    fig.suptitle(
        f"{_model_name(rep)} at {rep.get('bits', '?')}: flash and peak SRAM against each device's limit",
        fontsize=14,
        fontweight="bold",
    )
    fig.legend(loc="outside lower center", ncols=3, frameon=False)
    return _img(fig, "fit-overview", f"flash and SRAM use against the limit of {n} devices")


def _fit_block(rep: dict[str, Any]) -> str:
    devs = [d for d in rep.get("devices") or [] if isinstance(d, dict)]
    m = rep.get("model") if isinstance(rep.get("model"), dict) else {}
    counts: dict[str, int] = {}
    for d in devs:
        counts[d.get("verdict", "?")] = counts.get(d.get("verdict", "?"), 0) + 1
    summary = ", ".join(f"{c} {_badge(v)}" for v, c in sorted(counts.items()))
    facts = [f"{len(devs)} devices: {summary}"]
    if _num(m.get("params")) is not None:
        facts.append(f"{m['params'] / 1e6:.2f} M params")
    if _num(m.get("macs")) is not None:
        facts.append(f"{m['macs'] / 1e6:.1f} M MACs")
    if _num(m.get("ops")) is not None:
        facts.append(f"{int(m['ops'])} ops")
    out = [
        f"<h3>{_e(_model_name(rep))} · bits {_e(rep.get('bits', '?'))}</h3>",
        f'<p class="facts">{" · ".join(facts)}</p>',
    ]
    if not devs:
        return "".join(out) + '<p class="muted">No devices in this result.</p>'
    out.append(_fit_plot(rep, devs))
    rows = []
    for d in devs:
        n = _device_numbers(d)
        name = (
            f"<b>{_e(d.get('device', '?'))}</b><br>"
            f"<span class='small muted'>{_e(d.get('device_name', ''))}</span>"
        )
        rows.append(
            [
                name,
                _e(d.get("runtime", "–")),
                _badge(d.get("verdict", "?")),
                _bar(n["flash"], n["flash_limit"], n["flash_margin"]),
                _bar(n["sram"], n["sram_limit"], n["sram_margin"]),
                f"<code>{_e(d.get('peak_op', '–'))}</code>",
            ]
        )
    out.append(
        _table(
            [
                "device",
                "runtime",
                "verdict",
                "flash: model + runtime vs free",
                "SRAM: peak arena vs free",
                "peak op",
            ],
            rows,
            "fit",
        )
    )
    bad = [d for d in devs if d.get("verdict") != "FITS"]
    if bad:
        items = []
        for d in bad:
            sentences = " ".join(overflow_sentences(d))
            items.append(
                f"<li>{_badge(d.get('verdict', '?'))} <b>{_e(d.get('device'))}</b> "
                f"({_e(d.get('runtime', '?'))}): {sentences}</li>"
            )
        out.append(f'<h4>Why {len(bad)} device(s) do not fit</h4><ul class="why">{"".join(items)}</ul>')
    return "".join(out)


def _fit_section(checks: list[dict[str, Any]]) -> str:
    how = (
        "the plot shows, per device, flash and peak SRAM as a % of what the device has free (log scale): "
        "everything right of the red line overflows. In the table, each bar's track is the free memory and "
        "the fill what the model needs (red, marked ×N, when it needs N times more); under it, what is left "
        "or short. The list below says, for each device that fails, which memory overflows, at which op and "
        "by how much."
    )
    return _how(how) + "".join(_guard(_fit_block, r) for r in checks)


# ---- check reports: memory timeline --------------------------------------------------------------
def pick_memory_device(rep: dict[str, Any], device: str | None = None) -> dict[str, Any] | None:
    """The device whose SRAM limit the timeline is drawn against: ``device`` if given and present, else the
    tightest (smallest SRAM) device that fits, else the first device."""
    devs = [d for d in rep.get("devices") or [] if isinstance(d, dict)]
    if device:
        for d in devs:
            if d.get("device") == device:
                return d
    fits = [d for d in devs if d.get("verdict") == "FITS" and _num(d.get("sram_limit_bytes")) is not None]
    if fits:
        return min(fits, key=lambda d: d["sram_limit_bytes"])
    return devs[0] if devs else None


def _memory_plot(rep: dict[str, Any], dev: dict[str, Any] | None, ops: list[str], live: list[float]) -> str:
    import numpy as np

    n = len(live)
    peak_i = int(np.argmax(live)) if n else 0
    peak_op = ops[peak_i] if ops else str(peak_i)
    if dev and dev.get("peak_op") in ops:
        peak_i = ops.index(dev["peak_op"])
        peak_op = dev["peak_op"]
    peak = max(live) if live else 0.0
    limit = _num(dev.get("sram_limit_bytes")) if dev else None
    limit_on_chart = limit is not None and 0 < limit <= 3.0 * max(peak, 1.0)
    top = max(peak, limit if limit_on_chart and limit else 0.0)
    div, unit = _byte_scale(top)
    fig = _figure(11, 6.2 if n <= 80 else 5.0)
    ax = fig.add_subplot()
    x = np.arange(n)
    vals = np.array(live, dtype=float) / div
    colours = [(_RED if (limit is not None and v > limit) else _BLUE) for v in live]
    colours[peak_i] = "#1b3a5c" if not (limit is not None and live[peak_i] > limit) else "#8e0000"
    ax.bar(x, vals, width=0.85, color=colours, label="live activation bytes at this op")
    ax.annotate(
        f"peak {fmt_bytes(live[peak_i])}\nat {peak_op}",
        xy=(peak_i, vals[peak_i]),
        xytext=(peak_i + max(1.5, 0.06 * n) * (1 if peak_i < 0.7 * n else -1), vals[peak_i] * 1.12),
        textcoords="data",
        ha="left" if peak_i < 0.7 * n else "right",
        va="bottom",
        fontsize=11,
        fontweight="bold",
        arrowprops={"arrowstyle": "->", "color": "#222222", "lw": 1.3},
        bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "#999999"},
    )
    if dev is not None and limit is not None:
        lim_label = f"SRAM limit of {dev.get('device')} ({dev.get('sram_region', '?')}): {fmt_bytes(limit)}"
        if limit_on_chart:
            ax.axhline(limit / div, color=_RED, lw=2, ls="--", label=lim_label)
        else:
            ax.text(
                0.99,
                0.98,
                f"{lim_label}\n(off the chart: {limit / max(peak, 1):.0f}× the peak)",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=10,
                color=_RED,
            )
    ax.set_ylim(0, (top / div) * 1.25 if top else 1)
    ax.set_xlim(-0.7, n - 0.3)
    if n <= 80:
        ax.set_xticks(x)
        ax.set_xticklabels(ops[:n], rotation=90, fontsize=10 if n <= 40 else 8.5)
    else:
        step = math.ceil(n / 40)
        ax.set_xticks(x[::step])
        ax.set_xticklabels([str(i) for i in x[::step]], fontsize=9)
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("op, in execution order" + ("" if n <= 80 else " (index)"))
    ax.set_ylabel(f"live activation memory ({unit})")
    fig.suptitle(
        f"{_model_name(rep)} at {rep.get('bits', '?')}: activation memory live at each op",
        fontsize=14,
        fontweight="bold",
    )
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    return _img(fig, "memory-timeline", "live activation bytes per op with the SRAM limit")


def _memory_block(rep: dict[str, Any], device: str | None) -> str:
    tl = rep.get("memory_timeline") if isinstance(rep.get("memory_timeline"), dict) else {}
    ops = [str(o) for o in tl.get("ops") or []]
    live = [float(v) for v in tl.get("live_bytes") or [] if _num(v) is not None]
    n = min(len(ops), len(live)) if ops else len(live)
    ops, live = (ops[:n] if ops else [str(i) for i in range(n)]), live[:n]
    dev = pick_memory_device(rep, device)
    out = [f"<h3>{_e(_model_name(rep))} · bits {_e(rep.get('bits', '?'))}</h3>"]
    if dev is not None:
        why = (
            "chosen with --device"
            if device and dev.get("device") == device
            else "the tightest device that fits"
            if dev.get("verdict") == "FITS"
            else "no device fits, so the first one"
        )
        out.append(
            f'<p class="facts">Limit drawn: <b>{_e(dev.get("device"))}</b> {_badge(dev.get("verdict", "?"))}'
            f" ({_e(why)}), {_b(dev.get('sram_limit_bytes'))} free in {_e(dev.get('sram_region', '?'))}; "
            f"its arena peak is {_b(dev.get('peak_sram_bytes'))} at "
            f"<code>{_e(dev.get('peak_op'))}</code>.</p>"
        )
    dev_peak = _num((dev or {}).get("peak_sram_bytes"))
    if live and dev_peak and abs(max(live) - dev_peak) > 0.005 * dev_peak:
        first = next((d for d in rep.get("devices") or [] if isinstance(d, dict)), {})
        out.append(
            f'<p class="small muted">The bars are the timeline stored in the result, planned for the first '
            f"device's runtime ({_e(first.get('runtime', '?'))}, peak {_b(max(live))}); "
            f"{_e(dev.get('device'))}'s runtime aligns or adds scratch differently, hence its "
            f"{_b(dev_peak)}.</p>"
        )
    if live:
        out.append(_memory_plot(rep, dev, ops, live))
    else:
        out.append('<p class="muted">This result has no memory timeline.</p>')
    lap = [t for t in (dev or {}).get("live_at_peak") or [] if isinstance(t, dict)]
    if lap:
        total = sum(_num(t.get("bytes")) or 0 for t in lap) or 1.0
        rows = [
            [
                f"<code>{_e(t.get('tensor'))}</code>",
                _b(t.get("bytes")),
                _pct(100.0 * (_num(t.get("bytes")) or 0) / total, signed=False, digits=0),
            ]
            for t in lap
        ]
        out.append(f"<h4>Tensors live at the peak (<code>{_e(dev.get('peak_op'))}</code>)</h4>")
        out.append(_table(["tensor", "bytes", "share of the live bytes"], rows, "narrow"))
    return "".join(out)


def _memory_section(checks: list[dict[str, Any]], device: str | None) -> str:
    how = (
        "each bar is the activation memory live while that op runs (its inputs, outputs and everything kept "
        "for later ops), in execution order. The dashed red line is one device's free SRAM; bars above it "
        "are red. The peak op sets the arena size: shrink the tensors listed under it to fit a smaller "
        "device."
    )
    blocks = [
        _guard(_memory_block, r, device) for r in checks if r.get("memory_timeline") or r.get("devices")
    ]
    return _how(how) + "".join(blocks)


# ---- plans: bits per layer -----------------------------------------------------------------------
def _score_of(plan: dict[str, Any], module: str, layer: dict[str, Any]) -> float | None:
    scores = plan.get("proxy_scores") if isinstance(plan.get("proxy_scores"), dict) else {}
    s = scores.get(layer.get("op")) if layer.get("op") in scores else scores.get(module)
    if isinstance(s, dict):  # a cost per candidate width: take the chosen one
        for key in (f"w{layer.get('w')}a{layer.get('a')}", str(layer.get("w")), f"w{layer.get('w')}"):
            if key in s:
                return _num(s[key])
        return None
    return _num(s)


def _bits_plot(
    plan: dict[str, Any],
    names: list[str],
    w: list[float | None],
    a: list[float | None],
    scores: list[float | None],
) -> str:
    import numpy as np

    n = len(names)
    has_scores = any(s is not None for s in scores)
    fig = _figure(11, max(3.4, 0.3 * n + 2.0))
    axes = fig.subplots(1, 2, sharey=True, width_ratios=[1.25, 1]) if has_scores else [fig.add_subplot()]
    ax = axes[0]
    y = np.arange(n)
    ax.barh(y - 0.2, [v or 0 for v in w], height=0.38, color=_BLUE, label="weight bits")
    ax.barh(y + 0.2, [v or 0 for v in a], height=0.38, color=_ORANGE, label="activation bits")
    widths = sorted({int(v) for v in w + a if v})
    ax.set_xticks(widths or [8])
    ax.set_xticklabels([str(v) for v in widths or [8]])
    ax.set_xlim(0, max(widths or [8]) * 1.05)
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
        log = bool(pos) and len(pos) == n and max(pos) / min(pos) > 100
        big = max((abs(v) for v in vals), default=0.0)
        exp = 3 * math.floor(math.log10(big) / 3) if big > 0 and not log else 0
        if exp:
            vals = [v / 10**exp for v in vals]
        ax2.barh(y, vals, height=0.6, color=_PURPLE)
        if log:
            ax2.set_xscale("log")
        else:
            from matplotlib.ticker import MaxNLocator

            ax2.xaxis.set_major_locator(MaxNLocator(5))
        ax2.grid(axis="y", visible=False)
        ax2.set_xlabel(
            f"{plan.get('proxy', 'proxy')} score{f' (×1e{exp})' if exp else ''}; higher = more sensitive"
            f"{'; log scale' if log else ''}"
        )
        ax2.set_title("proxy score per layer")
        ax2.tick_params(axis="y", left=False)
    fig.suptitle(
        f"{_model_name(plan)} plan for {plan.get('device', '?')} ({plan.get('runtime', '?')})",
        fontsize=14,
        fontweight="bold",
    )
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
    return _img(fig, "bits-per-layer", "weight and activation bits per layer with proxy scores")


def _bits_cell(v: Any) -> str:
    b = _num(v)
    if b is None:
        return "–"
    cls = "b2" if b <= 2 else "b4" if b <= 4 else "b6" if b < 8 else "b8" if b == 8 else "b16"
    return f'<span class="bits {cls}">{int(b)}</span>'


def _plan_block(plan: dict[str, Any]) -> str:
    layers = plan.get("layers") if isinstance(plan.get("layers"), dict) else {}
    names = list(layers)
    rows_l = [layers[k] if isinstance(layers[k], dict) else {} for k in names]
    w = [_num(x.get("w")) for x in rows_l]
    a = [_num(x.get("a")) for x in rows_l]
    scores = [_score_of(plan, k, x) for k, x in zip(names, rows_l, strict=True)]
    default = plan.get("default") if isinstance(plan.get("default"), dict) else {}
    bud = plan.get("budgets") if isinstance(plan.get("budgets"), dict) else {}
    pred = plan.get("predicted") if isinstance(plan.get("predicted"), dict) else {}
    out = [
        f"<h3>{_e(_model_name(plan))} · plan for {_e(plan.get('device', '?'))} · proxy "
        f"{_e(plan.get('proxy', '?'))}</h3>"
    ]
    pairs = [
        ("runtime", _e(plan.get("runtime", "–"))),
        ("default widths", f"w{_e(default.get('w', '?'))} a{_e(default.get('a', '?'))}"),
        ("flash: predicted / budget", _budget_cell(pred.get("flash_bytes"), bud.get("flash_bytes"), True)),
        (
            "peak SRAM: predicted / budget",
            _budget_cell(pred.get("peak_live_bytes", pred.get("arena_bytes")), bud.get("sram_bytes"), True),
        ),
        ("weights", _b(pred.get("weights_bytes"))),
        ("peak op", f"<code>{_e(pred.get('peak_op', '–'))}</code>"),
    ]
    if _num(bud.get("bops")) is not None:
        pairs.append(("BOPs budget", f"{bud['bops']:.3g}"))
    if _num(bud.get("latency_ms")) is not None:
        pairs.append(("latency budget", f"{bud['latency_ms']:g} ms"))
    solver = plan.get("solver") if isinstance(plan.get("solver"), dict) else {}
    if solver:
        pairs.append(
            (
                "solver",
                _e(
                    ", ".join(
                        f"{k}: {_fmt_scalar(v)}" for k, v in solver.items() if not isinstance(v, dict | list)
                    )
                ),
            )
        )
    timing = plan.get("timing") if isinstance(plan.get("timing"), dict) else {}
    if timing:
        pairs.append(("timing", _e(", ".join(f"{k}: {_fmt_scalar(v)}" for k, v in timing.items()))))
    out.append(_kv_table(pairs))
    if not names:
        return "".join(out) + '<p class="muted">This plan lists no layers (every layer at the default).</p>'
    out.append(_bits_plot(plan, names, w, a, scores))
    rows = []
    for k, x, s in zip(names, rows_l, scores, strict=True):
        params = _num(x.get("params"))
        rows.append(
            [
                f"<code>{_e(k)}</code>",
                _e(x.get("op_class", "–")),
                f"{int(params):,}" if params is not None else "–",
                _bits_cell(x.get("w")),
                _bits_cell(x.get("a")),
                f"{s:.4g}" if s is not None else "–",
                f"{x['cost']:.4g}" if _num(x.get("cost")) is not None else "–",
            ]
        )
    out.append(
        f"<details><summary>Per-layer table ({len(rows)} layers)</summary>"
        f"{_table(['layer', 'op class', 'params', 'W bits', 'A bits', 'proxy score', 'cost'], rows)}"
        "</details>"
    )
    return "".join(out)


def _fmt_scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _budget_cell(pred: Any, budget: Any, is_bytes: bool) -> str:
    p, b = _num(pred), _num(budget)
    if p is None:
        return "–"
    if b is None or b <= 0:
        return _b(p)
    cls = "good" if p <= b else "bad"
    return f'<span class="{cls}">{_b(p)} / {_b(b)} ({100 * p / b:.0f}%)</span>'


def _bits_section(plans: list[dict[str, Any]]) -> str:
    how = (
        "one row per quantized layer, in the plan's order. Left: the weight and activation widths the "
        "allocator chose (shorter bar = fewer bits = smaller, less accurate). Right: the proxy's sensitivity "
        "score for that layer; sensitive layers should keep more bits. The table above the plot gives the "
        "predicted footprint against the budgets."
    )
    return _how(how) + "".join(_guard(_plan_block, p) for p in plans)


# ---- accuracy vs size ----------------------------------------------------------------------------
_UNIFORM = re.compile(r"^(w\d+a\d+|fp32|fp16|float)$", re.I)
_METRICS = [
    ("top1", "top-1 accuracy (%)", True),
    ("agreement", "top-1 agreement with float (%)", True),
    ("kl", "mean KL to the float model (lower is better)", False),
    ("objective", "proxy objective (summed cost, lower is better)", False),
]


def _metrics_of(r: dict[str, Any]) -> dict[str, Any]:
    m = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
    return {**r, **m}


def _eval_label(e: dict[str, Any]) -> str:
    for k in ("label", "plan", "bits"):
        if e.get(k):
            return str(e[k])
    return "?"


def _size_from_checks(
    model: str, bits: str, checks: list[dict[str, Any]], device: str | None
) -> float | None:
    for c in checks:
        if _model_name(c) == model and str(c.get("bits")) == bits:
            devs = [d for d in c.get("devices") or [] if isinstance(d, dict)]
            d = next((x for x in devs if x.get("device") == device), devs[0] if devs else None)
            if d is not None:
                return _num(d.get("flash_bytes"))
    return None


def _accuracy_points(
    plan: dict[str, Any], evals: list[dict[str, Any]], checks: list[dict[str, Any]]
) -> dict[str, Any]:
    """Sweep points, uniform baselines and the chosen plan as dicts with ``flash_bytes`` and metrics."""
    model = _model_name(plan)
    sweep = [
        p for p in plan.get("sweep") or [] if isinstance(p, dict) and _num(p.get("flash_bytes")) is not None
    ]
    base: list[dict[str, Any]] = []
    for p in sweep:
        if p.get("uniform") or _UNIFORM.match(str(p.get("label", ""))):
            base.append({**p, "label": p.get("label", "uniform")})
    sweep = [p for p in sweep if p not in base]
    for p in plan.get("baselines") or []:
        if isinstance(p, dict) and _num(p.get("flash_bytes")) is not None:
            base.append({**_metrics_of(p), "label": _eval_label(p)})
    mine = [_metrics_of(e) for e in evals if _model_name(e) in (model, "?")]
    chosen: dict[str, Any] = {
        "flash_bytes": _num(_get(plan, "predicted", "flash_bytes")),
        "label": "chosen plan",
    }
    plan_evals = [e for e in mine if e.get("plan")]
    match = [
        e for e in plan_evals if e.get("plan") in (plan.get("path"), plan.get("name"), plan.get("label"))
    ]
    if match or plan_evals:
        chosen.update({k: v for k, v in (match or plan_evals)[0].items() if k in ("top1", "agreement", "kl")})
    for e in mine:
        label = _eval_label(e)
        if e.get("plan") or not _UNIFORM.match(label) or any(b["label"] == label for b in base):
            continue
        size = _num(e.get("flash_bytes")) or _size_from_checks(model, label, checks, plan.get("device"))
        if size is not None:
            base.append({**e, "flash_bytes": size, "label": label})
    return {"sweep": sweep, "base": base, "chosen": chosen}


def _accuracy_plot(plan: dict[str, Any], pts: dict[str, Any]) -> str | None:
    allp = pts["sweep"] + pts["base"] + [pts["chosen"]]
    metric = next(
        ((k, lab, hi) for k, lab, hi in _METRICS if any(_num(p.get(k)) is not None for p in allp)), None
    )
    if metric is None:
        return None
    key, ylabel, higher = metric
    scale = (
        100.0 if key in ("top1", "agreement") and all((_num(p.get(key)) or 0) <= 1.0 for p in allp) else 1.0
    )

    def xy(ps: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
        ok = [p for p in ps if _num(p.get(key)) is not None and _num(p.get("flash_bytes")) is not None]
        ok.sort(key=lambda p: p["flash_bytes"])
        return [p["flash_bytes"] for p in ok], [p[key] * scale for p in ok]

    xs_all = [p["flash_bytes"] for p in allp if _num(p.get("flash_bytes")) is not None]
    budget = _num(_get(plan, "budgets", "flash_bytes"))
    div, unit = _byte_scale(max(xs_all + ([budget] if budget else []), default=1.0))
    fig = _figure(10, 6.2)
    ax = fig.add_subplot()
    sx, sy = xy(pts["sweep"])
    if sx:
        front_x, front_y, best = [], [], -math.inf
        for x, y in zip(sx, sy, strict=True):
            v = y if higher else -y
            if v > best:
                best = v
                front_x.append(x)
                front_y.append(y)
        ax.scatter([x / div for x in sx], sy, s=30, color=_BLUE, alpha=0.35, label="sweep plans")
        ax.plot(
            [x / div for x in front_x],
            front_y,
            "-o",
            color=_BLUE,
            lw=2,
            ms=6,
            label=f"Pareto front ({plan.get('proxy', 'proxy')} plans, --sweep)",
        )
    bx, by = xy(pts["base"])
    if bx:
        ax.scatter([x / div for x in bx], by, marker="D", s=70, color=_GREY, zorder=3, label="uniform bits")
        for p in sorted(
            (p for p in pts["base"] if _num(p.get(key)) is not None), key=lambda p: p["flash_bytes"]
        ):
            ax.annotate(
                str(p["label"]),
                (p["flash_bytes"] / div, p[key] * scale),
                xytext=(7, -4),
                textcoords="offset points",
                fontsize=11,
                color="#444444",
            )
    c = pts["chosen"]
    pct_sign = "%" if key in ("top1", "agreement") else ""
    if _num(c.get(key)) is not None and _num(c.get("flash_bytes")) is not None:
        ax.scatter(
            [c["flash_bytes"] / div],
            [c[key] * scale],
            marker="*",
            s=380,
            color=_RED,
            zorder=4,
            edgecolor="black",
            label=f"chosen plan ({fmt_bytes(c['flash_bytes'])}, {c[key] * scale:.4g}{pct_sign})",
        )
    elif _num(c.get("flash_bytes")) is not None:
        ax.axvline(c["flash_bytes"] / div, color=_RED, lw=1.5, label="chosen plan (not evaluated)")
    if budget:
        ax.axvline(budget / div, color="#333333", ls=":", lw=1.5, label=f"flash budget {fmt_bytes(budget)}")
    xs_pos = [x for x in xs_all + ([budget] if budget else []) if x > 0]
    log = bool(xs_pos) and max(xs_pos) / min(xs_pos) > 3
    if log:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 1.5, 2, 3, 4, 5, 6, 8)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
    if xs_pos:
        lo_x, hi_x = min(xs_pos) / div, max(xs_pos) / div
        if log:
            ax.set_xlim(lo_x / 1.1, hi_x * 1.2)
        else:
            ax.set_xlim(0, hi_x * 1.12)
    ax.set_xlabel(f"predicted flash ({unit}{', log scale' if log else ''})")
    ax.set_ylabel(ylabel)
    fig.suptitle(
        f"{_model_name(plan)} on {plan.get('device', '?')}: accuracy against flash size",
        fontsize=14,
        fontweight="bold",
    )
    fig.legend(loc="outside lower center", ncols=3, frameon=False)
    return _img(fig, "accuracy-vs-size", "accuracy against flash size")


def _accuracy_section(
    plans: list[dict[str, Any]], evals: list[dict[str, Any]], checks: list[dict[str, Any]]
) -> str:
    how = (
        "each point is one bit assignment: further right is bigger, higher is more accurate. The line is the "
        "best accuracy reachable at each size (the Pareto front of the sweep); grey diamonds are uniform "
        "widths; the red star is the chosen plan. A plan above the uniform points at the same size is the "
        "win."
    )
    out = [_how(how)]
    for p in plans:
        pts = _accuracy_points(p, evals, checks)
        if pts["sweep"] or pts["base"] or any(k in pts["chosen"] for k in ("top1", "agreement", "kl")):
            out.append(
                f"<h3>{_e(_model_name(p))} · {_e(p.get('device', '?'))} · "
                f"proxy {_e(p.get('proxy', '?'))}</h3>"
            )
            out.append(_guard(_accuracy_plot, p, pts) or '<p class="muted">No metric to plot.</p>')
    if evals:
        rows = []
        for e in evals:
            m = _metrics_of(e)
            t, g, k = _num(m.get("top1")), _num(m.get("agreement")), _num(m.get("kl"))
            sc = 100.0 if all(v is None or v <= 1.0 for v in (t, g)) else 1.0
            rows.append(
                [
                    _e(_model_name(e)),
                    _e(_eval_label(e)),
                    f"{t * sc:.2f}%" if t is not None else "–",
                    f"{g * sc:.2f}%" if g is not None else "–",
                    f"{k:.4f}" if k is not None else "–",
                    _e(m.get("n_images", "–")),
                ]
            )
        out.append("<h4>Evaluations</h4>")
        out.append(
            _table(
                ["model", "bits / plan", "top-1", "agreement with float", "mean KL", "images"], rows, "narrow"
            )
        )
    return "".join(out)


# ---- predicted vs measured -----------------------------------------------------------------------
def _pm(m: dict[str, Any], what: str) -> tuple[float | None, float | None, float | None]:
    """Predicted, measured and error % for ``what`` in ("sram", "flash"), tolerant of a few layouts."""
    pred = _num(_get(m, "predicted", f"{what}_bytes")) or _num(_get(m, "predicted", what))
    meas = _num(_get(m, "measured", f"{what}_bytes")) or _num(_get(m, "measured", what))
    err = _num(_get(m, "error_pct", what))
    if err is None and pred and meas is not None:
        err = 100.0 * (meas - pred) / pred
    return pred, meas, err


def _latency(m: dict[str, Any]) -> tuple[float | None, float | None]:
    lat = m.get("latency_ms")
    if isinstance(lat, dict):
        return _num(lat.get("median")), _num(lat.get("p90"))
    return _num(lat), None


def _backend_label(m: dict[str, Any]) -> str:
    b = str(m.get("backend", "?"))
    rt = m.get("runtime")
    return f"{b} ({rt})" if rt and rt != b else b


def _measure_plot(measures: list[dict[str, Any]]) -> str | None:
    import numpy as np

    labels = [_backend_label(m) for m in measures]
    panels = []
    for what, title in (("sram", "peak SRAM / arena"), ("flash", "flash / artifact weights")):
        vals = [_pm(m, what) for m in measures]
        if any(v[0] is not None or v[1] is not None for v in vals):
            panels.append((what, title, vals))
    lats = [_latency(m) for m in measures]
    has_lat = any(v[0] is not None for v in lats)
    if not panels and not has_lat:
        return None
    k = len(panels) + int(has_lat)
    fig = _figure(11.5, max(3.6, 0.9 * len(measures) + 2.4))
    axes = fig.subplots(1, k, squeeze=False)[0]
    y = np.arange(len(measures))
    for ax, (_what, title, vals) in zip(axes, panels, strict=False):
        top = max([v for t in vals for v in t[:2] if v is not None], default=1.0)
        div, unit = _byte_scale(top)
        ax.barh(y - 0.2, [(v[0] or 0) / div for v in vals], height=0.38, color=_GREY, label="predicted")
        ax.barh(y + 0.2, [(v[1] or 0) / div for v in vals], height=0.38, color=_BLUE, label="measured")
        for yi, (_p, mm, err) in zip(y, vals, strict=True):
            if mm is None:
                ax.text(0, yi + 0.2, " not measured", va="center", fontsize=10, color="#555555")
            elif err is not None:
                ax.text(
                    mm / div,
                    yi + 0.2,
                    f" {err:+.1f}%",
                    va="center",
                    fontsize=11,
                    color=_RED if abs(err) > 5 else _GREEN,
                    fontweight="bold",
                )
        ax.set_xlim(0, top / div * 1.35)
        ax.set_xlabel(unit)
        ax.set_title(title)
    if has_lat:
        ax = axes[-1]
        med = [v[0] or 0 for v in lats]
        err = [max((v[1] or v[0] or 0) - (v[0] or 0), 0) for v in lats]
        ax.barh(
            y, med, height=0.55, color=_ORANGE, xerr=err, capsize=4, label="latency median (whisker: p90)"
        )
        for yi, (m50, m90) in zip(y, lats, strict=True):
            if m50 is not None:
                ax.text((m90 or m50), yi, f"  {m50:.3g} ms", va="center", fontsize=11)
        ax.set_xlim(0, max((v[1] or v[0] or 0) for v in lats) * 1.45 or 1)
        ax.set_xlabel("latency (ms)")
        ax.set_title("latency per inference")
    for i, ax in enumerate(axes):
        ax.set_yticks(y)
        ax.set_yticklabels(labels if i == 0 else [""] * len(labels))
        ax.set_ylim(len(measures) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
    fig.suptitle(
        "predicted vs measured, per backend (error % = measured vs predicted; red beyond ±5%)",
        fontsize=13,
        fontweight="bold",
    )
    handles, names = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in names:
                handles.append(h)
                names.append(lab)
    fig.legend(handles, names, loc="outside lower center", ncols=3, frameon=False)
    return _img(fig, "predicted-vs-measured", "predicted and measured memory and latency per backend")


def _measure_section(measures: list[dict[str, Any]]) -> str:
    how = (
        "one row per backend run. Predicted figures come from tap-edge's memory model; measured ones from "
        "running the compiled artifact (each memory figure says how it was measured). An error beyond ±5% "
        "is flagged red: trust the measured number."
    )
    rows = []
    for m in measures:
        cells = [
            f"<b>{_e(_backend_label(m))}</b><br><span class='small muted'>{_e(_model_name(m))}"
            f"{' on ' + _e(m['device']) if m.get('device') else ''}</span>"
        ]
        med, p90 = _latency(m)
        cells.append(
            f"{med:.2f} / {p90:.2f}"
            if med is not None and p90 is not None
            else f"{med:.2f}"
            if med is not None
            else "–"
        )
        for what in ("sram", "flash"):
            p, mm, err = _pm(m, what)
            ecls = "bad" if err is not None and abs(err) > 5 else "good"
            cells += [_b(p), _b(mm), f'<span class="{ecls}">{_pct(err)}</span>' if err is not None else "–"]
        cells.append(_badge(m["verdict"]) if m.get("verdict") else "–")
        rows.append(cells)
    table = _table(
        [
            "backend",
            "latency median / p90 (ms)",
            "SRAM predicted",
            "SRAM measured",
            "SRAM error",
            "flash predicted",
            "flash measured",
            "flash error",
            "verdict",
        ],
        rows,
    )
    figs = []
    for m in measures:
        mem = m.get("memory")
        items = (
            list(mem.items())
            if isinstance(mem, dict)
            else [(x.get("what", x.get("name", "?")), x) for x in mem if isinstance(x, dict)]
            if isinstance(mem, list)
            else []
        )
        for name, x in items:
            x = x if isinstance(x, dict) else {"bytes": x}
            figs.append([_e(_backend_label(m)), _e(name), _b(x.get("bytes")), _e(x.get("how", "–"))])
        art = m.get("artifact")
        if isinstance(art, dict) and _num(art.get("bytes")) is not None:
            figs.append(
                [
                    _e(_backend_label(m)),
                    f"artifact <code>{_e(art.get('path', ''))}</code>",
                    _b(art["bytes"]),
                    "file size",
                ]
            )
        for flag in m.get("flags") or []:
            figs.append([_e(_backend_label(m)), '<span class="bad">flag</span>', "", _e(flag)])
    out = [_how(how), _guard(_measure_plot, measures) or "", table]
    if figs:
        out.append("<h4>Memory figures and how each was measured</h4>")
        out.append(_table(["backend", "figure", "bytes", "how measured"], figs, "narrow"))
    return "".join(out)


# ---- TAP search ----------------------------------------------------------------------------------
def _search_plot(run: dict[str, Any]) -> str | None:
    import numpy as np

    gens = [g for g in run.get("generations") or [] if isinstance(g, dict)]
    if not gens:
        return None
    x = [int(g.get("gen", i)) for i, g in enumerate(gens)]
    fig = _figure(12, 4.8)
    a1, a2, a3 = fig.subplots(1, 3, width_ratios=[1.3, 1.2, 0.8])
    for key, label, style, colour in (
        ("best_fitness", "best", "-o", _GREEN),
        ("median_fitness", "median", "--s", _GREY),
    ):
        pts = [(xi, _num(g.get(key))) for xi, g in zip(x, gens, strict=True) if _num(g.get(key)) is not None]
        if pts:
            a1.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour, lw=2, ms=7, label=label)
    a1.set_xlabel("generation")
    a1.set_ylabel("fitness (higher is better)")
    a1.set_title("fitness")
    a1.set_xticks(x)
    if a1.get_legend_handles_labels()[0]:
        a1.legend(loc="lower right")
    temps = ["init", "mutation", "crossover"]
    for g in gens:
        for t in g.get("template_probs") or {}:
            if t not in temps:
                temps.append(t)
    bottom = np.zeros(len(gens))
    colours = [_BLUE, _ORANGE, _PURPLE, _GREY, _GREEN]
    for i, t in enumerate(temps):
        v = np.array([_num(_get(g, "template_probs", t)) or 0.0 for g in gens])
        if v.any():
            a2.bar(x, v, bottom=bottom, color=colours[i % len(colours)], label=t, width=0.7)
            bottom += v
    a2.set_ylim(0, 1.0)
    a2.set_xticks(x)
    a2.set_xlabel("generation")
    a2.set_ylabel("probability of being picked")
    a2.set_title("template probabilities")
    if a2.get_legend_handles_labels()[0]:
        a2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=10)
    inv = [(_num(g.get("invalid_rate")) or 0.0) * 100 for g in gens]
    a3.bar(x, inv, color=_RED, width=0.6)
    a3.set_xticks(x)
    a3.set_ylim(0, 100)
    a3.set_xlabel("generation")
    a3.set_ylabel("invalid candidates (%)")
    a3.set_title("invalid rate")
    fig.suptitle(f"TAP search on {_model_name(run)}: {len(gens)} generations", fontsize=14, fontweight="bold")
    return _img(fig, "search-progress", "fitness, template probabilities and invalid rate per generation")


def _search_block(run: dict[str, Any]) -> str:
    out = []
    settings = {
        k: run[k]
        for k in (
            "llm",
            "llm_model",
            "population",
            "generations_planned",
            "alpha",
            "seed",
            "tasks",
            "run_dir",
        )
        if k in run and not isinstance(run[k], dict | list)
    }
    if isinstance(run.get("settings"), dict):
        settings.update({k: v for k, v in run["settings"].items() if not isinstance(v, dict | list)})
    if settings:
        out.append(_kv_table([(_e(k), _e(_fmt_scalar(v))) for k, v in settings.items()]))
    out.append(_search_plot(run) or '<p class="muted">No generations recorded.</p>')
    gens = [g for g in run.get("generations") or [] if isinstance(g, dict)]
    if gens:
        rows = []
        for i, g in enumerate(gens):
            tp = g.get("template_probs") if isinstance(g.get("template_probs"), dict) else {}
            rows.append(
                [
                    _e(g.get("gen", i)),
                    _fmt_num(g.get("best_fitness")),
                    _fmt_num(g.get("median_fitness")),
                    _pct((_num(g.get("invalid_rate")) or 0) * 100, signed=False, digits=0)
                    if _num(g.get("invalid_rate")) is not None
                    else "–",
                    _e(", ".join(f"{k} {v:.2f}" for k, v in tp.items() if _num(v) is not None)),
                ]
            )
        out.append(
            _table(
                ["generation", "best fitness", "median fitness", "invalid", "template probabilities"],
                rows,
                "narrow",
            )
        )
    best = run.get("best") if isinstance(run.get("best"), dict) else {}
    if best:
        out.append(f"<h4>Best program (fitness {_fmt_num(best.get('fitness'))})</h4>")
        if best.get("reasoning"):
            out.append(
                '<p class="small"><b>Its reasoning:</b></p>'
                f'<pre class="reasoning">{_e(best["reasoning"])}</pre>'
            )
        if best.get("code"):
            out.append(f'<pre class="code">{_e(best["code"])}</pre>')
    return "".join(out)


def _fmt_num(v: Any) -> str:
    x = _num(v)
    return "–" if x is None else f"{x:.4g}"


def _search_section(runs: list[dict[str, Any]]) -> str:
    how = (
        "each generation the LLM writes new proxy programs from one of three templates. Left: the best and "
        "median fitness of the population (should rise). Middle: how likely each template is to be used "
        "next; "
        "the controller moves probability towards templates whose children won. Right: the share of programs "
        "rejected by vetting or failing to run. Below: the best program and the reasoning the LLM gave."
    )
    return _how(how) + "".join(_guard(_search_block, r) for r in runs)


# ---- page ----------------------------------------------------------------------------------------
def _guard(fn: Callable[..., str | None], *args: Any) -> str | None:
    """Run one renderer; a result that breaks it becomes a visible note instead of losing the whole report."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - one malformed result must not take the other sections down
        return (
            f'<p class="render-error">Could not render this part ({_e(e.__class__.__name__)}: '
            f"{_e(str(e)[:200])}).</p>"
        )


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}" class="report-section"><h2>{_e(title)}</h2>{body}</section>'


def _what(r: dict[str, Any], kind: str) -> str:
    """A few words saying what one result is about."""
    if kind == "check":
        return f"bits {r.get('bits', '?')}, {len(r.get('devices') or [])} devices"
    if kind == "plan":
        return f"{r.get('device', '?')}, proxy {r.get('proxy', '?')}"
    if kind == "eval":
        return _eval_label(r)
    if kind == "measure":
        return _backend_label(r)
    if kind == "evolve":
        return f"{len(r.get('generations') or [])} generations"
    return ""


def _inputs_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        kind = _kind(r) or "?"
        what = _what(r, kind)
        rows.append([_e(kind), _e(_model_name(r)), _e(what)])
    return _table(["result", "model", "what"], rows, "narrow")


_STYLE = """
:root { --fg:#1d1d1f; --muted:#666; --line:#d9d9de; --bg:#fff; --alt:#f6f7f9; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans", Arial, sans-serif;
       font-size: 16px; line-height: 1.45; color: var(--fg); background: var(--bg); margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 30px; margin: 8px 0 4px; }
h2 { font-size: 24px; margin: 40px 0 8px; padding-bottom: 6px; border-bottom: 2px solid var(--fg); }
h3 { font-size: 19px; margin: 26px 0 6px; }
h4 { font-size: 16px; margin: 18px 0 6px; }
nav { margin: 10px 0 4px; font-size: 15px; }
nav a { margin-right: 16px; color: #1a4f8a; text-decoration: none; border-bottom: 1px dotted #1a4f8a; }
.how { background: #eef4fb; border-left: 4px solid #3b6ea8; padding: 8px 12px; margin: 8px 0 14px;
       font-size: 15px; }
.facts { margin: 4px 0 10px; }
.muted { color: var(--muted); } .small { font-size: 13px; }
.good { color: #1e6b24; } .bad { color: #b71c1c; }
table { border-collapse: collapse; margin: 10px 0 16px; font-size: 14px; width: 100%; }
table.narrow, table.kv { width: auto; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 9px; text-align: left; vertical-align: top; }
thead th { background: #eceef2; font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--alt); }
table.kv th { background: none; font-weight: 600; white-space: nowrap; color: #333; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
table.fit td { white-space: nowrap; }
table.fit td:first-child { white-space: normal; max-width: 250px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 700;
         letter-spacing: .03em; color: #fff; }
.badge.fits { background: #2e7d32; } .badge.oom { background: #c62828; } .badge.unsup { background: #b26a00; }
.badge.unknown { background: #777; }
.bar { width: 150px; height: 10px; background: #e3e6ea; border-radius: 5px; overflow: hidden;
       margin-top: 3px; }
.bar .fill { height: 100%; background: #3b6ea8; }
.bar.over .fill { background: #c62828; }
.barlabel { font-size: 13px; margin-top: 2px; }
ul.why li { margin: 4px 0; }
figure.plot { margin: 10px 0 14px; }
img.plot { max-width: 100%; height: auto; display: block; border: 1px solid var(--line); }
pre { background: #f4f4f6; border: 1px solid var(--line); padding: 10px 12px; overflow-x: auto;
      font-size: 13px; line-height: 1.4; white-space: pre-wrap; }
pre.code { white-space: pre; }
pre.reasoning { font-family: inherit; font-size: 15px; background: #fafafa; }
details summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
.bits { display: inline-block; min-width: 26px; text-align: center; border-radius: 4px; padding: 0 4px;
        font-weight: 600; }
.bits.b2 { background: #f8c9c4; } .bits.b4 { background: #fbd9a9; } .bits.b6 { background: #fcefb4; }
.bits.b8 { background: #cfe8cf; } .bits.b16 { background: #c9dcf2; }
.render-error { color: #b71c1c; font-weight: 600; }
footer { margin-top: 48px; font-size: 13px; color: var(--muted); }
"""


def build_report(results: list[dict[str, Any]], device: str | None = None, title: str | None = None) -> str:
    """One self-contained HTML page from tap-edge JSON results (any mix of kinds, in any order).

    ``device`` picks whose SRAM limit the memory plot draws (default: the tightest device that fits, else the
    first). Results of an unknown schema raise UserError; sections without data are left out."""
    from matplotlib import rc_context

    by: dict[str, list[dict[str, Any]]] = {k: [] for k in SCHEMAS}
    for i, r in enumerate(results):
        k = _kind(r) if isinstance(r, dict) else None
        if k is None:
            got = r.get("schema") if isinstance(r, dict) else type(r).__name__
            raise UserError(
                f"result {i + 1}: unknown schema {got!r}",
                "pass JSON written by tap-edge check/plan/eval/measure/evolve --json "
                f"(schemas: {', '.join(SCHEMAS.values())})",
            )
        by[k].append(r)
    if (
        device
        and by["check"]
        and not any(
            pick_memory_device(c, device) is not None
            and pick_memory_device(c, device).get("device") == device
            for c in by["check"]
        )
    ):
        known = sorted(
            {d.get("device") for c in by["check"] for d in c.get("devices") or [] if isinstance(d, dict)}
        )
        raise UserError(
            f"device {device!r} is not in the check results",
            f"pick one of: {', '.join(known[:12])}{' …' if len(known) > 12 else ''}",
        )
    body: dict[str, str | None] = {}
    with rc_context(_RC):
        if by["check"]:
            body["fit-matrix"] = _guard(_fit_section, by["check"])
            if any(c.get("memory_timeline") for c in by["check"]):
                body["memory"] = _guard(_memory_section, by["check"], device)
        if any(p.get("layers") for p in by["plan"]):
            body["bits"] = _guard(_bits_section, [p for p in by["plan"] if p.get("layers")])
        if by["eval"] or any(p.get("sweep") or p.get("baselines") for p in by["plan"]):
            body["accuracy"] = _guard(_accuracy_section, by["plan"], by["eval"], by["check"])
        if by["measure"]:
            body["measured"] = _guard(_measure_section, by["measure"])
        if by["evolve"]:
            body["search"] = _guard(_search_section, by["evolve"])
    shown = [(sid, t) for sid, t in SECTIONS if body.get(sid)]
    models = sorted({_model_name(r) for r in results} - {"?"})
    title = title or ("tap-edge report" + (f": {', '.join(models)}" if models else ""))
    nav = "".join(f'<a href="#{sid}">{_e(t)}</a>' for sid, t in shown)
    sections = "".join(_section(sid, t, body[sid] or "") for sid, t in shown)
    empty = "" if shown else '<p class="muted">None of the results has data for any section.</p>'
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body><main>"
        f"<h1>{_e(title)}</h1>"
        f'<p class="muted">{len(results)} result(s): '
        f"{_e(', '.join(f'{len(v)} {k}' for k, v in by.items() if v))}</p>"
        f"<nav>{nav}</nav>{_inputs_table(results) if results else ''}{empty}{sections}"
        f"<footer>Made by tap-edge {_e(_pkg_version)} from JSON results; self-contained (nothing is fetched)."
        "</footer></main></body></html>\n"
    )


class _RefCollector(HTMLParser):
    """Collects every URL-bearing attribute and the CSS (``<style>`` blocks and ``style=``) of a page."""

    URL_ATTRS = ("src", "href", "action", "poster", "data", "srcset", "formaction", "background", "ping")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self.css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            if v is None:
                continue
            if k in self.URL_ATTRS:
                self.refs.extend(v.split(",") if k == "srcset" else [v])
            elif k == "style":
                self.css.append(v)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.css.append(data)


_CSS_URL = re.compile(r"""url\(\s*["']?([^"')\s]*)|@import\s+["']([^"']*)""", re.I)


def external_refs(page: str) -> list[str]:
    """Every reference in ``page`` that a browser would fetch: any src/href/... attribute or CSS url()/@import
    that is not a ``data:`` URI or an in-page ``#anchor``. A self-contained report has none."""
    p = _RefCollector()
    p.feed(page)
    p.close()
    refs = [r.strip() for r in p.refs]
    for css in p.css:
        refs += [(m.group(1) or m.group(2) or "").strip() for m in _CSS_URL.finditer(css)]
    return [r for r in refs if r and not r.lower().startswith(("data:", "#"))]
