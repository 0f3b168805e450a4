"""``tap-edge measure ARTIFACT``: run it in a child process; prediction vs measurement and the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tap_edge.cli.app import EXIT_FAIL, JsonOpt, QuietOpt, app
from tap_edge.core import console
from tap_edge.core.units import fmt_bytes
from tap_edge.documents import MeasureReport

VERDICT_COLOURS = {"FITS": "green", "OOM": "red", "UNSUPPORTED": "yellow", "UNKNOWN": "yellow"}


@app.command("measure")
def measure_cmd(
    artifact: Annotated[Path, typer.Argument(help="An artifact written by tap-edge compile (.onnx, .tflite, .so).")],
    device: Annotated[
        str | None,
        typer.Option("--device", "-d", help="Profile id or YAML (default: the device it was compiled for)."),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs after warm-up.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs.")] = 3,
    timeout: Annotated[float, typer.Option(help="Seconds before the measurement child is killed.")] = 300.0,
    threads: Annotated[int, typer.Option(min=1, help="Runtime threads.")] = 1,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report here.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run ARTIFACT in a child process: latency (median, p90), peak memory, the runtime's own figures; the
    verdict compares them with the prediction and the device."""
    from tap_edge.backends.verdict import measure_report
    from tap_edge.report import write_html_if_requested

    console.set_quiet(quiet or as_json)
    console.info(f"measuring {artifact} in a child process ...")
    report = measure_report(artifact, device=device, runs=runs, warmup=warmup, timeout=timeout, threads=threads)
    if as_json:
        console.print_json(report.to_dict())
    else:
        print_report(report)
    write_html_if_requested(report, html)
    if report.verdict not in ("FITS", "MEASURED") or report.flags:
        raise typer.Exit(EXIT_FAIL)


def print_report(r: MeasureReport) -> None:
    console.out.print(f"[bold]{r.artifact}[/] ({r.backend}, {r.runtime}): {fmt_bytes(r.artifact_bytes)}")
    lat = r.latency
    if lat.runs:
        console.out.print(f"  latency: median {lat.median_ms:.3f} ms, p90 {lat.p90_ms:.3f} ms ({lat.runs} runs, host, "
                          f"{r.threads} thread{'s' if r.threads != 1 else ''})")
    mem = r.memory
    if mem.peak_rss_bytes:
        console.out.print(f"  peak RSS of the child {fmt_bytes(mem.peak_rss_bytes)} (VmHWM; wait4 "
                          f"{fmt_bytes(mem.wait4_maxrss_bytes or 0)}), minus the runtime's import baseline "
                          f"{fmt_bytes(mem.model_rss_bytes or 0)}")
    if r.arena is not None:
        a = r.arena
        console.out.print(f"  TFLite Micro arena: total {a.total_bytes} B = head {a.head_bytes} + tail {a.tail_bytes}; "
                          f"smallest arena that constructs {a.min_constructing_bytes} B")
    if r.cross_check is not None:
        c = r.cross_check
        console.out.print(f"  {c.between}: top-1 {100 * c.top1_agreement:.0f}%, max |diff| {c.max_abs_diff} "
                          f"({c.output_dtype}), {c.n} inputs")
    if r.comparisons:
        t = Table(title="prediction vs measurement")
        for col in ("figure", "predicted", "measured", "error", "measured by"):
            t.add_column(col)
        for c in r.comparisons:
            off = c.error_pct is not None and abs(c.error_pct) > r.tolerance_pct
            colour = ("red" if c.gated else "yellow") if off else "green"
            error = f"{c.error_pct:+.2f}%" if c.error_pct is not None else "-"
            t.add_row(c.figure, f"{c.predicted_bytes} B", f"{c.measured_bytes} B", f"[{colour}]{error}[/]",
                      c.measured_by + ("" if c.gated else " (not gated)"))
        console.out.print(t)
    for f in r.flags:
        console.out.print(f"  [yellow]flag[/]: {f.figure} predicted {f.predicted_bytes} B, measured "
                          f"{f.measured_bytes} B ({f.error_pct:+.2f}%, over the {r.tolerance_pct:.0f}% tolerance)")
    if r.device:
        console.out.print(f"  verdict on {r.device} ({r.runtime_name}): "
                          f"[{VERDICT_COLOURS.get(r.verdict, 'white')}]{r.verdict}[/]")
        for p in r.problems:
            console.out.print(f"    {p}")
