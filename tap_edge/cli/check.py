"""``tap-edge check MODEL``: will it fit? One verdict per device; exit 1 when a target does not fit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tap_edge.cli.app import EXIT_FAIL, JsonOpt, QuietOpt, app, resolve_bits
from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes
from tap_edge.documents import CheckReport


@app.command("check")
def check_cmd(
    model: Annotated[str, typer.Argument(help="Bundled name, timm:NAME, package.module:factory, .onnx or .tflite.")],
    device: Annotated[list[str] | None, typer.Option("--device", "-d", help="Profile id or YAML path; repeat.")] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="Check every bundled profile.")] = False,
    bits: Annotated[str | None, typer.Option(help="Uniform widths: w8a8, w4a8, w8a16, fp32, native "
                                                  "(default: native for .tflite, else w8a8).")] = None,
    plan: Annotated[Path | None, typer.Option(help="A plan.json with per-layer widths.")] = None,
    runtime: Annotated[str | None, typer.Option(help="Runtime name (default: each device's default).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report here.")] = None,
) -> None:
    """Will MODEL fit? A device x verdict table; exit 0 only if every target fits."""
    from tap_edge.devices import get_device, list_devices
    from tap_edge.fit.checker import check_report
    from tap_edge.graph.models import load_graph

    console.set_quiet(quiet or as_json)
    if not device and not all_devices:
        raise UserError("no target device", "pass --device ID (repeatable) or --all; see tap-edge devices")
    ids = list(device or [])
    if all_devices:
        ids += [d for d in list_devices() if d not in ids]
    profiles = [get_device(d) for d in ids]
    t0 = time.perf_counter()
    graph = load_graph(model)
    b = resolve_bits(bits, plan, graph.frontend)
    report = check_report(graph, b, profiles, runtime)
    report.seconds = round(time.perf_counter() - t0, 3)
    if as_json:
        console.print_json(report.to_dict())
    else:
        _print_check(report)
    from tap_edge.report import write_html_if_requested

    write_html_if_requested(report, html)
    if not report.all_fit:
        raise typer.Exit(EXIT_FAIL)


def _print_check(report: CheckReport) -> None:
    m = report.model
    console.out.print(f"[bold]{m.name}[/] ({m.frontend}): {m.ops} ops, {m.params / 1e6:.2f} M params, "
                      f"{m.macs / 1e6:.1f} M MACs, bits {report.bits}")
    if m.unknown_ops:
        names = ", ".join(f"{u.op} ({u.op_type})" for u in m.unknown_ops[:5])
        console.out.print(f"[yellow]unknown ops[/]: {names}")
    t = Table()
    for col in ("device", "runtime", "verdict", "flash used / limit", "margin", "peak SRAM / limit", "margin",
                "peak op"):
        t.add_column(col, no_wrap=True, justify="right" if "margin" in col or "/" in col else "left")
    colours = {"FITS": "green", "OOM": "red", "UNSUPPORTED": "yellow"}
    for r in report.devices:
        t.add_row(r.device, r.runtime, f"[{colours[r.verdict]}]{r.verdict}[/]",
                  f"{fmt_bytes(r.flash_bytes)} / {fmt_bytes(r.flash_limit_bytes)}",
                  _margin(r.flash_margin_bytes, r.flash_margin_pct),
                  f"{fmt_bytes(r.peak_sram_bytes)} / {fmt_bytes(r.sram_limit_bytes)}",
                  _margin(r.sram_margin_bytes, r.sram_margin_pct), r.peak_op)
    console.out.print(t)
    for r in report.devices:
        for p in r.problems:
            console.out.print(f"  {r.device}: {p}")
    n_fit = sum(r.verdict == "FITS" for r in report.devices)
    console.out.print(f"{n_fit}/{len(report.devices)} targets fit ({report.seconds or 0:.2f} s)")


def _margin(margin: int, pct: float | None) -> str:
    colour = "green" if margin >= 0 else "red"
    return f"[{colour}]{fmt_bytes(margin)}" + (f" ({pct:+.0f}%)" if pct is not None else "") + "[/]"
