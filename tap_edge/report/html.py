"""The report's building blocks: escaping and number formats, tables, badges and bars, figures and the CSS.

Plots are PNGs drawn on matplotlib's Agg canvas (no pyplot, no global backend change) and inlined as base64,
so the page fetches nothing. Every section module builds its HTML from these helpers only.
"""

from __future__ import annotations

import base64
import html
import io
import math
import struct
from collections.abc import Callable, Iterable
from typing import Any

from tap_edge.core.units import fmt_bytes

DPI = 144  # PNG pixels per inch; shown at 96 CSS px per inch, so plots stay sharp on high-density screens
CSS_PX_PER_IN = 96
BLUE, ORANGE, RED, GREEN, GREY, PURPLE = "#3b6ea8", "#e08a1e", "#c62828", "#2e7d32", "#8a8a8a", "#7b4fa0"
DASH = "–"
VERDICT_CLASS = {"FITS": "fits", "OOM": "oom", "UNSUPPORTED": "unsup"}
#: matplotlib settings of every plot (applied with ``rc_context`` around the whole page).
RC = {
    "font.size": 12, "axes.titlesize": 14, "axes.titleweight": "bold", "axes.labelsize": 12,
    "xtick.labelsize": 11, "ytick.labelsize": 11, "legend.fontsize": 11, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none",
}


# ---- text and numbers -------------------------------------------------------------------------------------
def esc(x: Any) -> str:
    """HTML-escaped text of any value (None is empty)."""
    return html.escape("" if x is None else str(x), quote=True)


def known(x: float | None) -> bool:
    """True for a figure that is there and finite."""
    return x is not None and math.isfinite(x)


def fmt_b(n: float | None) -> str:
    """Bytes for people (binary units, as the CLI prints them), or a dash when unknown."""
    return fmt_bytes(n) if n is not None and known(n) else DASH


def fmt_exact_b(n: float | None) -> str:
    """Bytes to the byte with thousands separators (``49,728 B``), for figures compared to the byte."""
    return f"{int(n):,} B" if n is not None and known(n) else DASH


def fmt_pct(x: float | None, signed: bool = True, digits: int = 1) -> str:
    if x is None or not known(x):
        return DASH
    return f"{x:+.{digits}f}%" if signed else f"{x:.{digits}f}%"


def fmt_num(x: float | None, digits: int = 4) -> str:
    """A number to ``digits`` significant digits, or a dash."""
    return f"{x:.{digits}g}" if x is not None and known(x) else DASH


def fmt_scalar(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def byte_scale(maxval: float) -> tuple[float, str]:
    """Divisor and unit for an axis whose largest value is ``maxval`` bytes."""
    for div, unit in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if maxval >= div:
            return float(div), unit
    return 1.0, "bytes"


# ---- HTML pieces ------------------------------------------------------------------------------------------
def table(head: list[str], rows: Iterable[list[str]], cls: str = "") -> str:
    """An HTML table; cells are HTML already (escape text with :func:`esc`)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def kv_table(pairs: list[tuple[str, str]]) -> str:
    """A two-column table of (label, HTML value) pairs."""
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def how(text: str) -> str:
    """The "how to read this" note that opens every section."""
    return f'<p class="how"><b>How to read this:</b> {text}</p>'


def badge(verdict: str) -> str:
    return f'<span class="badge {VERDICT_CLASS.get(verdict, "unknown")}">{esc(verdict)}</span>'


def bar(used: float, limit: float, margin: float, margin_pct: float | None = None) -> str:
    """A CSS bar of ``used`` against ``limit`` (the track is the limit; red and marked ×N when over it), with
    the numbers and the margin under it, as ``tap-edge check`` prints them."""
    if limit <= 0:
        return ('<div class="bar over"><div class="fill" style="width:100%"></div></div>'
                f'<div class="barlabel">needs {fmt_b(used)}, <b class="bad">none free</b></div>')
    ratio = used / limit
    over = ratio > 1
    tail = f' <b class="bad">×{ratio:.1f}</b>' if over else f" ({ratio * 100:.0f}%)"
    share = f" ({margin_pct:+.0f}%)" if margin_pct is not None else ""
    left = (f'<span class="good">{fmt_b(margin)} left{share}</span>' if margin >= 0
            else f'<span class="bad">{fmt_b(-margin)} short{share}</span>')
    return (f'<div class="bar{" over" if over else ""}"><div class="fill" style="width:{min(ratio, 1.0) * 100:.1f}%">'
            f'</div></div><div class="barlabel">{fmt_b(used)} of {fmt_b(limit)}{tail} · {left}</div>')


def bits_cell(bits: int | None) -> str:
    """A bit-width as a coloured chip (fewer bits = warmer colour)."""
    if bits is None:
        return DASH
    cls = "b2" if bits <= 2 else "b4" if bits <= 4 else "b6" if bits < 8 else "b8" if bits == 8 else "b16"
    return f'<span class="bits {cls}">{bits}</span>'


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}" class="report-section"><h2>{esc(title)}</h2>{body}</section>'


def guard(fn: Callable[..., str], *args: Any) -> str:
    """Run one renderer; a document that breaks it becomes a visible note instead of losing the whole page."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - one bad plot must not take the other sections down
        return (f'<p class="render-error">Could not render this part ({esc(e.__class__.__name__)}: '
                f"{esc(str(e)[:200])}).</p>")


# ---- figures ----------------------------------------------------------------------------------------------
def figure(width_in: float, height_in: float) -> Any:
    """A matplotlib Figure on the Agg canvas with constrained layout (no pyplot state touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    w, h = struct.unpack(">II", png[16:24])
    return int(w), int(h)


def img(fig: Any, name: str, alt: str) -> str:
    """The figure as an inline ``<img>``: base64 PNG, with its pixel size in data attributes for checks."""
    buf = io.BytesIO()
    engine = fig.get_layout_engine()
    if engine is not None:  # lay out once, then draw once (savefig would otherwise draw twice)
        engine.execute(fig)
        fig.set_layout_engine("none")
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    png = buf.getvalue()
    w, h = png_size(png)
    cw, ch = round(w * CSS_PX_PER_IN / DPI), round(h * CSS_PX_PER_IN / DPI)
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure class="plot"><img class="plot" data-plot="{esc(name)}" data-natural-width="{w}" '
            f'data-natural-height="{h}" width="{cw}" height="{ch}" alt="{esc(alt)}" '
            f'src="data:image/png;base64,{data}"></figure>')


def finish(fig: Any, title: str, name: str, alt: str, *, legend: bool | tuple[list[Any], list[str]] = True,
           ncols: int = 3, fontsize: int = 14) -> str:
    """The common tail of every plot: the bold title, one legend under the axes, the inline image.

    ``legend`` is True (the figure collects its artists' labels), False (no legend) or explicit
    ``(handles, labels)``."""
    fig.suptitle(title, fontsize=fontsize, fontweight="bold")
    if legend is True:
        fig.legend(loc="outside lower center", ncols=ncols, frameon=False)
    elif legend:
        fig.legend(*legend, loc="outside lower center", ncols=ncols, frameon=False)
    return img(fig, name, alt)


STYLE = """
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
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
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
ul.why li, ul.flags li { margin: 4px 0; }
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
