"""``tap-edge check MODEL``: will it fit? One verdict per device; exit 1 when a target does not fit.

The table fits 100 columns (figures in short binary units, the peak op under the table; device and runtime
names fold on a narrower terminal, nothing is cut), and a device whose weights and arena share one memory
shows their sum against that memory's size (the device is marked ``*``): no limit is ever negative, and each overflow is
stated once (the problem lines, from :func:`tap_edge.fit.checker.memory_problems`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from tap_edge.cli.app import EXIT_FAIL, InputShapeOpt, JsonOpt, QuietOpt, app, input_shapes, resolve_bits
from tap_edge.cli.options import expand_devices
from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes
from tap_edge.devices import DeviceProfile
from tap_edge.documents import CheckReport, DeviceVerdict, write_json
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.shapes import InputShapes, input_lines

_COLOURS = {"FITS": "green", "OOM": "red", "UNSUPPORTED": "yellow"}
SHARED_NOTE = "* one memory holds weights and arena: SRAM used = arena + weights and code, against its whole size"


@app.command("check")
def check_cmd(
    model: Annotated[str, typer.Argument(help="Bundled name, timm:NAME, package.module:factory, path/model.py:factory, "
                                              ".onnx or .tflite.")],
    device: Annotated[list[str] | None, typer.Option("--device", "-d", help="Profile id or YAML path; repeat.")] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="Check every bundled profile.")] = False,
    bits: Annotated[str | None, typer.Option(help="Uniform widths: w8a8, w4a8, w8a16, fp32, native "
                                                  "(default: native for .tflite, else w8a8).")] = None,
    plan: Annotated[Path | None, typer.Option(help="A plan.json with per-layer widths.")] = None,
    runtime: Annotated[str | None, typer.Option(help="Runtime name (default: each device's default).")] = None,
    input_shape: InputShapeOpt = None,
    suggest: Annotated[bool, typer.Option("--suggest", help="For each device it does not fit: the cheapest widths "
                                          "plan that fits, or the floor quantization cannot beat and the largest "
                                          "input that fits, and the nearest profile that fits.")] = False,
    suggest_plans: Annotated[Path | None, typer.Option(help="With --suggest: write each suggested widths plan to "
                                                            "DIR/DEVICE.plan.json (check --plan reads it).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    out: Annotated[Path | None, typer.Option(help="Also write the check report JSON here.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report here.")] = None,
) -> None:
    """Will MODEL fit? A device x verdict table; exit 0 only if every target fits."""
    from tap_edge.devices import get_device, list_devices
    from tap_edge.fit.checker import check_report
    from tap_edge.graph.models import load_graph

    console.set_quiet(quiet or as_json)
    if not device and not all_devices:
        raise UserError("no target device", "pass --device ID (repeatable) or --all; see tap-edge devices")
    shapes = input_shapes(input_shape, plan)
    ids = expand_devices(device or [])
    if all_devices:
        ids += [d for d in list_devices() if d not in ids]
    profiles = [get_device(d) for d in ids]
    t0 = time.perf_counter()
    graph = load_graph(model, shapes)
    b = resolve_bits(bits, plan, graph.frontend)
    report = check_report(graph, b, profiles, runtime)
    if suggest_plans is not None and not suggest:
        raise UserError("--suggest-plans without --suggest", "add --suggest")
    if suggest:
        _suggest(report, model, graph, b, profiles, runtime, shapes, suggest_plans)
    report.seconds = round(time.perf_counter() - t0, 3)
    if out:
        report.write(out)
    if as_json:
        console.print_json(report.to_dict())
    else:
        print_check(report)
    from tap_edge.report import write_html_if_requested

    write_html_if_requested(report, html)
    if not report.all_fit:
        raise typer.Exit(EXIT_FAIL)


def print_check(report: CheckReport) -> None:
    """The header (model, inputs as planned, open sizes), the device table and one line per problem."""
    m = report.model
    console.out.print(f"[bold]{escape(m.name)}[/] ({m.frontend}): {m.ops} ops, {_count(m.params)} params, "
                      f"{_count(m.macs)} MACs, bits {escape(report.bits)}")
    for line in input_lines(m.inputs):
        console.out.print(line, markup=False)
    if m.unresolved_shapes:
        names = ", ".join(m.unresolved_shapes[:3]) + (f" +{len(m.unresolved_shapes) - 3} more"
                                                      if len(m.unresolved_shapes) > 3 else "")
        console.out.print(f"note: shape inference left the size of {len(m.unresolved_shapes)} tensor(s) open "
                          f"({names}); each open dim is planned at 1", markup=False)
    if m.unknown_ops:
        names = ", ".join(f"{u.op} ({u.op_type})" for u in m.unknown_ops[:5])
        console.out.print(f"[yellow]unknown ops[/]: {escape(names)}")
    console.out.print(device_table(report.devices))
    if report.devices:
        console.out.print(peak_line(report.devices), markup=False)
    if any(_shared(r) for r in report.devices):
        console.out.print(SHARED_NOTE, markup=False)
    for r in report.devices:
        for line in vela_lines(r):
            console.out.print(line, markup=False)
    for r in report.devices:
        for p in r.problems:
            console.out.print(f"  {r.device}: {p}", markup=False)
    print_suggestions(report)
    n_fit = sum(r.verdict == "FITS" for r in report.devices)
    console.out.print(f"{n_fit}/{len(report.devices)} targets fit ({report.seconds or 0:.2f} s)")


def vela_lines(r: DeviceVerdict) -> list[str]:
    """How an Ethos-U device's memory was predicted (Vela, or tap-edge's rules of it) and what Vela's plan says
    beyond the table: the constants and the optimised model, the ops left to the CPU, the NPU time."""
    v = r.vela
    if v is None:
        return []
    cpu = (f"{len(v.cpu_ops)} op(s) left to the CPU ({', '.join(sorted({c.op for c in v.cpu_ops}))})" if v.cpu_ops
           else "every op on the NPU")
    ms = f"; NPU {v.npu_ms:.3f} ms (Vela's estimate at {v.clock_hz / 1e6:g} MHz)" if v.npu_ms is not None else ""
    tflm = f" + TFLite Micro {fmt_bytes(v.tflm_tail_bytes + v.cpu_scratch_bytes)}" if v.arena_in_sram else ""
    return [f"  {r.device}: {r.prediction_by}",
            f"    SRAM {fmt_bytes(v.sram_bytes)}{tflm}, constants {fmt_bytes(v.flash_bytes)}, optimised model "
            f"{fmt_bytes(v.file_bytes)}; {cpu}{ms}"]


def _suggest(report: CheckReport, model: str, graph: ModelGraph, bits: BitAssignment, profiles: list[DeviceProfile],
             runtime: str | None, shapes: InputShapes | None, plans_dir: Path | None) -> None:
    """Fill each failing device's suggestions (the building backend's rules, every bundled profile as a
    candidate, the model reloaded at other input shapes when it can be) and write the widths plans."""
    from tap_edge.backends import plan_target
    from tap_edge.devices import get_device, list_devices
    from tap_edge.plan.suggest import reloader, suggest_report

    with console.progress("what would make it fit", None):
        suggest_report(report, graph, bits, profiles, runtime=runtime, rules_for=plan_target,
                       candidates=[get_device(d) for d in list_devices()], reload=reloader(model, graph, shapes))
    if plans_dir is None:
        return
    for r in report.devices:
        w = r.suggestions.widths if r.suggestions else None
        if w is not None:
            path = plans_dir / f"{r.device}.plan.json"
            write_json({"default": w.default.model_dump(), "layers": {k: v.model_dump() for k, v in w.layers.items()},
                        "note": f"tap-edge check --suggest: {graph.name} on {r.device} ({r.runtime}); {w.objective}"},
                       path)
            w.plan_file = str(path)


def print_suggestions(report: CheckReport) -> None:
    """What would make each failing device fit (check --suggest), a few lines per device."""
    rows = [r for r in report.devices if r.suggestions is not None]
    if not rows:
        return
    secs = sum(r.suggestions.seconds for r in rows if r.suggestions)
    console.out.print(f"what would make it fit ({secs:.2f} s):", markup=False)
    for r in rows:
        for line in suggestion_lines(r):
            console.out.print(f"  {line}", markup=False)


def suggestion_lines(r: DeviceVerdict) -> list[str]:
    """The suggestions of one device as plain lines (``device: ...``)."""
    s = r.suggestions
    if s is None:
        return []
    out = []
    if s.widths is not None:
        w = s.widths
        changes = ", ".join(f"{c.layer} w{c.before.w}a{c.before.a}->w{c.after.w}a{c.after.a}" for c in w.changed[:3])
        more = f" +{len(w.changed) - 3} more" if len(w.changed) > 3 else ""
        built = f", within the {w.backend} backend's rules" if w.backend else ""
        out.append(f"{r.device}: widths plan, {len(w.changed)} layer(s) change ({changes}{more}): flash "
                   f"{short_bytes(w.flash_bytes)}, arena {short_bytes(w.arena_bytes)}{built}"
                   + (f" -> {w.plan_file}" if w.plan_file else ""))
    if s.floor is not None:
        f = s.floor
        what = []
        if "flash" in f.binding:
            what.append(f"weights need {short_bytes(f.flash_floor_bytes)} at the narrowest widths "
                        f"(> {short_bytes(f.flash_limit_bytes)})")
        if "SRAM" in f.binding:
            live = ", ".join(f"{t.tensor} {short_bytes(t.bytes)}" for t in f.live_at_peak[:3])
            what.append(f"arena needs {short_bytes(f.arena_floor_bytes)} at {f.activation_bits}-bit activations "
                        f"(> {short_bytes(f.sram_limit_bytes)}), peak at {f.peak_op}: {live}")
        out.append(f"{r.device}: no widths fit: " + "; ".join(what))
        res = f.resolution
        if res is not None and res.fits_shape:
            how = "model reloaded at that shape" if res.method == "reloaded" else "estimate: activations scaled by area"
            changed = f", {len(res.widths.changed)} layer(s) change" if res.widths and res.widths.changed else ""
            out.append(f"{r.device}: an input of {'x'.join(map(str, res.fits_shape))} fits (arena "
                       f"{short_bytes(res.arena_bytes or 0)}{changed}; {how})")
        elif res is not None:
            out.append(f"{r.device}: no smaller input of {res.input} fits either")
    if s.profile is not None:
        p = s.profile
        out.append(f"{r.device}: fits {p.device} as asked ({p.why}; flash {short_bytes(p.flash_bytes)}, arena "
                   f"{short_bytes(p.peak_sram_bytes)})")
    out += [f"{r.device}: {n}" for n in s.notes]
    return out


def device_table(rows: list[DeviceVerdict]) -> Table:
    """device | runtime | verdict | flash / limit, free | SRAM / limit, free: the figures never
    wrap; the device and runtime names fold when the terminal is narrower than the table."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    t.add_column("device", overflow="fold")
    t.add_column("runtime", overflow="fold")
    t.add_column("verdict", no_wrap=True)
    t.add_column("flash / limit, free", justify="right", no_wrap=True)
    t.add_column("SRAM / limit, free", justify="right", no_wrap=True)
    for r in rows:
        sram_used, sram_limit = _sram_view(r)
        shared = _shared(r)
        weights_over = shared and r.flash_bytes > r.flash_limit_bytes
        flash_free = _free(r.flash_limit_bytes - r.flash_bytes, r.flash_limit_bytes)
        sram_free = "[dim]   -[/]" if weights_over else _free(sram_limit - sram_used, sram_limit)
        t.add_row(escape(r.device) + ("*" if shared else ""), escape(r.runtime),
                  f"[{_COLOURS[r.verdict]}]{r.verdict}[/]",
                  f"{short_bytes(r.flash_bytes)} / {short_bytes(r.flash_limit_bytes)} {flash_free}",
                  f"{short_bytes(sram_used)} / {short_bytes(sram_limit)} {sram_free}")
    return t


def peak_line(rows: list[DeviceVerdict]) -> str:
    """Where the arena peaks, once per op (``peak SRAM at op a (19 devices), b (6)``)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.peak_op] = counts.get(r.peak_op, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    if len(ranked) == 1:
        return f"peak SRAM at op {ranked[0][0]}"
    return "peak SRAM at op " + ", ".join(f"{op} ({n} device{'s' if n > 1 else ''})" for op, n in ranked)


def short_bytes(n: int) -> str:
    """Binary units with three significant digits at most (``832 KiB``, ``57.1 KiB``, ``4.7 MiB``): the
    table's figures stay narrow."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            if unit == "B":
                return f"{value:.0f} B"
            return f"{value:.0f} {unit}" if abs(value) >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _shared(r: DeviceVerdict) -> bool:
    return r.flash_region == r.sram_region


def _sram_view(r: DeviceVerdict) -> tuple[int, int]:
    """SRAM used and limit as shown: on a shared memory the arena plus the weights against its whole size
    (the document's limit is what is left once the weights are in, which may be negative)."""
    if _shared(r):
        return r.peak_sram_bytes + r.flash_bytes, r.sram_limit_bytes + r.flash_bytes
    return r.peak_sram_bytes, r.sram_limit_bytes


def _count(n: int) -> str:
    """``4.63 M``, ``385.2 M``, ``24.0 k``: params and MACs at a readable scale."""
    for scale, unit, digits in ((1e9, "G", 2), (1e6, "M", 2 if n < 1e7 else 1), (1e3, "k", 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return str(n)


def _free(margin: int, limit: int) -> str:
    """What is left, as a share of the limit (4 characters); an overflow says ``over`` (its size is in the
    problem line)."""
    if margin < 0:
        return "[red]over[/]"
    share = 100 * margin / limit if limit > 0 else 0.0
    return f"[green]{share:>3.0f}%[/]"
