"""Section "Fit matrix" from :class:`~tap_edge.documents.CheckReport`: per device, flash and peak SRAM against
the limit (a plot and a table with the figures ``tap-edge check`` prints), and why each failing device fails."""

from __future__ import annotations

import math

from tap_edge.documents import CheckReport, DeviceVerdict
from tap_edge.report.html import (
    BLUE,
    ORANGE,
    RED,
    badge,
    bar,
    esc,
    figure,
    finish,
    fmt_b,
    guard,
    how,
    table,
)

ID, TITLE = "fit-matrix", "Fit matrix"
HOW = ("the plot shows, per device, flash and peak SRAM as a % of what the device has free (log scale): "
       "everything right of the red line overflows. In the table, each bar's track is the free memory and the "
       "fill what the model needs (red, marked ×N, when it needs N times more); under it, what is left or short, "
       "as <code>tap-edge check</code> prints it. The list below says, for each device that fails, which memory "
       "overflows, at which op and by how much.")


def shared(d: DeviceVerdict) -> bool:
    """One memory holds the weights and the arena (phones, Linux boards, some MCUs)."""
    return d.flash_region == d.sram_region


def sram_view(d: DeviceVerdict) -> tuple[int, int, int, float | None]:
    """SRAM (used, limit, margin, margin %) as shown: on a shared memory the arena plus the weights against
    its whole size, so the limit is never negative (the document's limit is what the weights leave)."""
    if not shared(d):
        return d.peak_sram_bytes, d.sram_limit_bytes, d.sram_margin_bytes, d.sram_margin_pct
    used, limit = d.peak_sram_bytes + d.flash_bytes, d.sram_limit_bytes + d.flash_bytes
    return used, limit, limit - used, (100.0 * (limit - used) / limit if limit > 0 else None)


def overflow_sentences(d: DeviceVerdict) -> list[str]:
    """Plain sentences (HTML) saying which memory overflowed, at which op and by how much (each overflow
    once: a shared memory gets one sentence for weights and arena together), and which ops the runtime
    cannot run (grouped by problem)."""
    out: list[str] = []
    at = f" at op <code>{esc(d.peak_op)}</code>" if d.peak_op else ""
    if shared(d):
        used, limit, margin, _ = sram_view(d)
        if d.flash_bytes > limit:
            out.append(f"Weights and code ({fmt_b(d.flash_bytes)}) overflow the shared {esc(d.flash_region)} "
                       f"({fmt_b(limit)}) by <b>{fmt_b(d.flash_bytes - limit)}</b>, with nothing left for the "
                       f"arena ({fmt_b(d.peak_sram_bytes)}).")
        elif margin < 0:
            out.append(f"Weights and code ({fmt_b(d.flash_bytes)}) plus the arena ({fmt_b(d.peak_sram_bytes)}) "
                       f"overflow the shared {esc(d.sram_region)} ({fmt_b(limit)}) by <b>{fmt_b(-margin)}</b>{at}.")
    else:
        if d.sram_margin_bytes < 0:
            free = f"{fmt_b(d.sram_limit_bytes)} free" if d.sram_limit_bytes > 0 else "none free"
            out.append(f"SRAM ({esc(d.sram_region)}) overflows by <b>{fmt_b(-d.sram_margin_bytes)}</b>{at} "
                       f"(needs {fmt_b(d.peak_sram_bytes)}, {free}).")
        if d.flash_margin_bytes < 0:
            code = d.flash.get("runtime_bytes")
            parts = f" incl. {fmt_b(code)} runtime code" if code else ""
            out.append(f"Flash ({esc(d.flash_region)}) overflows by <b>{fmt_b(-d.flash_margin_bytes)}</b> "
                       f"(needs {fmt_b(d.flash_bytes)}{parts}, {fmt_b(d.flash_limit_bytes)} free).")
    groups: dict[str, list[str]] = {}
    for u in d.unsupported:
        groups.setdefault(u.problem, []).append(u.op)
    for problem, ops in groups.items():
        more = f" +{len(ops) - 4} more" if len(ops) > 4 else ""
        shown = ", ".join(f"<code>{esc(o)}</code>" for o in ops[:4]) + more
        out.append(f"{esc(problem)}: {len(ops)} op(s) ({shown}).")
    return out or [esc(p) for p in d.problems]


def _share(used: int, limit: int) -> float:
    """``used`` as a % of ``limit``; infinite when nothing is free."""
    return 100.0 * used / limit if limit > 0 else math.inf


def _plot(rep: CheckReport) -> str:
    """Horizontal bars: flash and peak SRAM of each device as a % of its limit, log scale, limit at 100%."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    devs = rep.devices
    n = len(devs)
    fig = figure(11, max(3.0, 0.34 * n + 1.6))
    ax = fig.add_subplot()
    fp = [_share(d.flash_bytes, d.flash_limit_bytes) for d in devs]
    sp = [_share(*sram_view(d)[:2]) for d in devs]
    finite = [v for v in fp + sp if math.isfinite(v) and v > 0]
    lo = 10 ** math.floor(math.log10(min(finite) / 2)) if finite else 1.0
    hi = max(max(finite, default=100.0) * 3, 300.0)
    y = np.arange(n)
    for vals, off, colour, label in ((fp, -0.2, BLUE, "flash (weights + runtime code)"),
                                     (sp, 0.2, ORANGE, "peak SRAM (activation arena)")):
        shown = [hi / 1.5 if math.isinf(v) else v for v in vals]
        ax.barh(y + off, [max(v - lo, 0.0) for v in shown], left=lo, height=0.38, color=colour, label=label)
        for yi, v in zip(y, vals, strict=True):
            if v > 100:
                txt = "no room" if math.isinf(v) else f"×{v / 100:.1f}"
                ax.text(min(v, hi / 1.5) * 1.08, yi + off, txt, va="center", fontsize=10, color=RED)
    ax.axvspan(100, hi, color="#fbe3e1", zorder=0, label="over the limit")
    ax.axvline(100, color=RED, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_yticks(y)
    ax.set_yticklabels([f"{d.device}  [{d.verdict}]" for d in devs])
    for t, d in zip(ax.get_yticklabels(), devs, strict=True):
        t.set_color({"OOM": RED, "UNSUPPORTED": "#a15c00"}.get(d.verdict, "#222222"))
    ax.set_ylim(n - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("memory used, as % of what the device has free (log scale; the red line is the limit)")
    return finish(fig, f"{rep.model.name} at {rep.bits}: flash and peak SRAM against each device's limit",
                  "fit-overview", f"flash and SRAM use against the limit of {n} devices")


def _block(rep: CheckReport) -> str:
    devs = rep.devices
    m = rep.model
    counts: dict[str, int] = {}
    for d in devs:
        counts[d.verdict] = counts.get(d.verdict, 0) + 1
    summary = ", ".join(f"{c} {badge(v)}" for v, c in sorted(counts.items()))
    facts = [f"{len(devs)} devices: {summary}", f"{m.params / 1e6:.2f} M params", f"{m.macs / 1e6:.1f} M MACs",
             f"{m.ops} ops"]
    facts += [f"input <code>{esc(i.name)}</code> {'x'.join(map(str, i.shape)) or 'scalar'} {esc(i.dtype)} "
              f"({esc(i.source)})" for i in m.inputs]
    if m.unresolved_shapes:
        facts.append(f"{len(m.unresolved_shapes)} tensor(s) of open size (planned at 1 per open dim)")
    out = [f"<h3>{esc(m.name)} · bits {esc(rep.bits)}</h3>", f'<p class="facts">{" · ".join(facts)}</p>']
    if not devs:
        return "".join(out) + '<p class="muted">No devices in this result.</p>'
    out.append(_plot(rep))
    rows = [[f"<b>{esc(d.device)}</b>{'*' if shared(d) else ''}<br>"
             f"<span class='small muted'>{esc(d.device_name)}</span>",
             esc(d.runtime), badge(d.verdict),
             bar(d.flash_bytes, d.flash_limit_bytes, d.flash_margin_bytes, d.flash_margin_pct),
             bar(*sram_view(d)),
             f"<code>{esc(d.peak_op)}</code>"] for d in devs]
    out.append(table(["device", "runtime", "verdict", "flash: model + runtime vs free", "SRAM: peak arena vs free",
                      "peak op"], rows, "fit"))
    if any(shared(d) for d in devs):
        out.append('<p class="small muted">* one memory holds weights and arena: its SRAM bar is the arena plus '
                   "the weights and code, against that memory's whole size.</p>")
    bad = [d for d in devs if d.verdict != "FITS"]
    if bad:
        items = [f"<li>{badge(d.verdict)} <b>{esc(d.device)}</b> ({esc(d.runtime)}): "
                 f"{' '.join(overflow_sentences(d))}</li>" for d in bad]
        out.append(f'<h4>Why {len(bad)} device(s) do not fit</h4><ul class="why">{"".join(items)}</ul>')
    fixes = [d for d in bad if d.suggestions is not None]
    if fixes:
        items = [f"<li><b>{esc(d.device)}</b> ({esc(d.runtime)}): {' '.join(suggestion_sentences(d))}</li>"
                 for d in fixes]
        out.append(f'<h4>What would make it fit</h4><ul class="why">{"".join(items)}</ul>')
    return "".join(out)


def suggestion_sentences(d: DeviceVerdict) -> list[str]:
    """``tap-edge check --suggest``'s changes for one device as sentences (HTML): the widths plan and the
    layers it changes, or the floor quantization cannot beat and the largest input that fits; the nearest
    profile that fits; why a kind of change cannot help."""
    s = d.suggestions
    if s is None:
        return []
    out: list[str] = []
    if s.widths is not None:
        w = s.widths
        shown = ", ".join(f"<code>{esc(c.layer)}</code> w{c.before.w}a{c.before.a} → w{c.after.w}a{c.after.a}"
                          for c in w.changed[:6])
        more = f" and {len(w.changed) - 6} more" if len(w.changed) > 6 else ""
        by = f" (within what the {esc(w.backend)} backend builds)" if w.backend else ""
        out.append(f"A widths plan fits{by}: flash {fmt_b(w.flash_bytes)}, arena {fmt_b(w.arena_bytes)}; "
                   f"{len(w.changed)} layer(s) change: {shown}{more}.")
    if s.floor is not None:
        f = s.floor
        parts = []
        if "flash" in f.binding:
            parts.append(f"the weights need {fmt_b(f.flash_floor_bytes)} even at the narrowest widths built "
                         f"({f.weight_bits}-bit), {fmt_b(f.flash_limit_bytes)} free")
        if "SRAM" in f.binding:
            live = ", ".join(f"<code>{esc(t.tensor)}</code> {fmt_b(t.bytes)}" for t in f.live_at_peak[:4])
            parts.append(f"the arena needs {fmt_b(f.arena_floor_bytes)} at {f.activation_bits}-bit activations, "
                         f"{fmt_b(f.sram_limit_bytes)} free; it peaks at <code>{esc(f.peak_op)}</code> ({live})")
        out.append(f"No widths plan fits: {'; '.join(parts)}.")
        res = f.resolution
        if res is not None and res.fits_shape:
            how_ = ("the model loaded at that shape" if res.method == "reloaded"
                    else "an estimate: activation bytes scaled by the input area")
            out.append(f"An input <code>{esc(res.input)}</code> of {'x'.join(map(str, res.fits_shape))} fits "
                       f"(arena {fmt_b(res.arena_bytes)}; {how_}).")
        elif res is not None:
            out.append(f"No smaller input <code>{esc(res.input)}</code> fits either.")
    if s.profile is not None:
        p = s.profile
        out.append(f"It fits <b>{esc(p.device)}</b> as asked: {esc(p.why)} (flash {fmt_b(p.flash_bytes)}, arena "
                   f"{fmt_b(p.peak_sram_bytes)}).")
    out += [f"{esc(n)}." for n in s.notes]
    return out


def render(checks: list[CheckReport]) -> str:
    return how(HOW) + "".join(guard(_block, r) for r in checks)
