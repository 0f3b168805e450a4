"""Section "Memory over time" from :class:`~tap_edge.documents.CheckReport`: the activation bytes live at each
op (the check's memory timeline) against one device's free SRAM, and the tensors live at the peak."""

from __future__ import annotations

import math

from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes
from tap_edge.documents import CheckReport, DeviceVerdict
from tap_edge.report.html import (
    BLUE,
    RED,
    badge,
    byte_scale,
    esc,
    figure,
    finish,
    fmt_b,
    fmt_pct,
    guard,
    how,
    table,
)

ID, TITLE = "memory", "Memory over time"
HOW = ("each bar is the activation memory live while that op runs (its inputs, outputs and everything kept for "
       "later ops), in execution order. The dashed red line is one device's free SRAM; bars above it are red. "
       "The peak op sets the arena size: shrink the tensors listed under it to fit a smaller device.")


def pick_memory_device(rep: CheckReport, device: str | None = None) -> DeviceVerdict | None:
    """The device whose SRAM limit the timeline is drawn against: ``device`` if given and present, else the
    tightest (smallest SRAM) device that fits, else the first device."""
    if device:
        for d in rep.devices:
            if d.device == device:
                return d
    fits = [d for d in rep.devices if d.verdict == "FITS"]
    if fits:
        return min(fits, key=lambda d: d.sram_limit_bytes)
    return rep.devices[0] if rep.devices else None


def check_device_choice(checks: list[CheckReport], device: str | None) -> None:
    """One-line error when ``--device`` names a device none of the check reports has."""
    if not device or not checks or any(d.device == device for c in checks for d in c.devices):
        return
    known = sorted({d.device for c in checks for d in c.devices})
    raise UserError(f"device {device!r} is not in the check results",
                    f"pick one of: {', '.join(known[:12])}{' …' if len(known) > 12 else ''}")


def _timeline(rep: CheckReport) -> tuple[list[str], list[float]]:
    """Op names and live bytes per step (op indices when the names do not line up with the bytes)."""
    live = [float(v) for v in rep.memory_timeline.live_bytes]
    ops = rep.memory_timeline.ops
    return (ops if len(ops) == len(live) else [str(i) for i in range(len(live))]), live


def _plot(rep: CheckReport, dev: DeviceVerdict | None) -> str:
    import numpy as np

    ops, live = _timeline(rep)
    n = len(live)
    peak_i = int(np.argmax(live))
    if dev is not None and dev.peak_op in ops:
        peak_i = ops.index(dev.peak_op)
    peak_op = ops[peak_i]
    peak = max(live)
    limit = dev.sram_limit_bytes if dev is not None else None
    limit_on_chart = limit is not None and 0 < limit <= 3.0 * max(peak, 1.0)
    top = max(peak, float(limit) if limit is not None and limit_on_chart else 0.0)
    div, unit = byte_scale(top)
    fig = figure(11, 6.2 if n <= 80 else 5.0)
    ax = fig.add_subplot()
    x = np.arange(n)
    vals = np.array(live) / div
    over = [limit is not None and v > limit for v in live]
    colours = [RED if o else BLUE for o in over]
    colours[peak_i] = "#8e0000" if over[peak_i] else "#1b3a5c"
    ax.bar(x, vals, width=0.85, color=colours, label="live activation bytes at this op")
    right = peak_i < 0.7 * n
    ax.annotate(f"peak {fmt_bytes(live[peak_i])}\nat {peak_op}", xy=(peak_i, vals[peak_i]),
                xytext=(peak_i + max(1.5, 0.06 * n) * (1 if right else -1), vals[peak_i] * 1.12),
                textcoords="data", ha="left" if right else "right", va="bottom", fontsize=11, fontweight="bold",
                arrowprops={"arrowstyle": "->", "color": "#222222", "lw": 1.3},
                bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "#999999"})
    if dev is not None and limit is not None:
        lim_label = f"SRAM limit of {dev.device} ({dev.sram_region}): {fmt_bytes(limit)}"
        if limit_on_chart:
            ax.axhline(limit / div, color=RED, lw=2, ls="--", label=lim_label)
        else:
            ax.text(0.99, 0.98, f"{lim_label}\n(off the chart: {limit / max(peak, 1):.0f}× the peak)",
                    transform=ax.transAxes, ha="right", va="top", fontsize=10, color=RED)
    ax.set_ylim(0, (top / div) * 1.25 if top else 1)
    ax.set_xlim(-0.7, n - 0.3)
    if n <= 80:
        ax.set_xticks(x)
        ax.set_xticklabels(ops, rotation=90, fontsize=10 if n <= 40 else 8.5)
    else:
        step = math.ceil(n / 40)
        ax.set_xticks(x[::step])
        ax.set_xticklabels([str(i) for i in x[::step]], fontsize=9)
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("op, in execution order" + ("" if n <= 80 else " (index)"))
    ax.set_ylabel(f"live activation memory ({unit})")
    return finish(fig, f"{rep.model.name} at {rep.bits}: activation memory live at each op", "memory-timeline",
                  "live activation bytes per op with the SRAM limit", ncols=2)


def _block(rep: CheckReport, device: str | None) -> str:
    dev = pick_memory_device(rep, device)
    live = rep.memory_timeline.live_bytes
    out = [f"<h3>{esc(rep.model.name)} · bits {esc(rep.bits)}</h3>"]
    if dev is not None:
        why = ("chosen with --device" if device and dev.device == device
               else "the tightest device that fits" if dev.verdict == "FITS"
               else "no device fits, so the first one")
        out.append(f'<p class="facts">Limit drawn: <b>{esc(dev.device)}</b> {badge(dev.verdict)} ({esc(why)}), '
                   f"{fmt_b(dev.sram_limit_bytes)} free in {esc(dev.sram_region)}; its arena peak is "
                   f"{fmt_b(dev.peak_sram_bytes)} at <code>{esc(dev.peak_op)}</code>.</p>")
        if live and abs(max(live) - dev.peak_sram_bytes) > 0.005 * dev.peak_sram_bytes:
            first = rep.devices[0]
            out.append(f'<p class="small muted">The bars are the timeline stored in the result, planned for the '
                       f"first device's runtime ({esc(first.runtime)}, peak {fmt_b(max(live))}); "
                       f"{esc(dev.device)}'s runtime aligns or adds scratch differently, hence its "
                       f"{fmt_b(dev.peak_sram_bytes)}.</p>")
    if live:
        out.append(_plot(rep, dev))
    else:
        out.append('<p class="muted">This result has no memory timeline.</p>')
    if dev is not None and dev.live_at_peak:
        total = sum(t.bytes for t in dev.live_at_peak) or 1
        rows = [[f"<code>{esc(t.tensor)}</code>", fmt_b(t.bytes),
                 fmt_pct(100.0 * t.bytes / total, signed=False, digits=0)] for t in dev.live_at_peak]
        out.append(f"<h4>Tensors live at the peak (<code>{esc(dev.peak_op)}</code>)</h4>")
        out.append(table(["tensor", "bytes", "share of the live bytes"], rows, "narrow"))
    return "".join(out)


def wanted(checks: list[CheckReport]) -> bool:
    """The section is shown when a check report has a memory timeline."""
    return any(c.memory_timeline.live_bytes for c in checks)


def render(checks: list[CheckReport], device: str | None) -> str:
    return how(HOW) + "".join(guard(_block, r, device) for r in checks if r.memory_timeline.live_bytes or r.devices)
