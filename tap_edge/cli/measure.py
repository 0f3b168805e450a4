"""``tap-edge measure FILE``: run it in a child process; prediction vs measurement and the verdict.

FILE is an artifact ``tap-edge compile`` wrote (its manifest holds the prediction) or any .tflite / .onnx (the
prediction is made from the file). Every input is fed data of its dtype and shape: ``--input-shape`` fixes
dynamic dims, ``--input NAME=value`` / ``NAME=file.npy`` gives real values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tap_edge.cli.app import EXIT_FAIL, InputShapeOpt, JsonOpt, QuietOpt, app, input_shapes
from tap_edge.cli.options import VerboseOpt, third_party_quiet
from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes
from tap_edge.documents import MeasureReport

VERDICT_COLOURS = {"FITS": "green", "OOM": "red", "UNSUPPORTED": "yellow", "UNKNOWN": "yellow"}
PREDICTION_FROM = {"manifest": "the manifest beside it (tap-edge compiled it)",
                   "file": "the file itself (no tap-edge manifest): its graph at its stored widths"}


@app.command("measure")
def measure_cmd(
    artifact: Annotated[Path, typer.Argument(help="An artifact written by tap-edge compile (.onnx, .tflite, .so), "
                                                  "or any .tflite / .onnx file.")],
    device: Annotated[
        str | None,
        typer.Option("--device", "-d", help="Profile id or YAML (default: the device it was compiled for)."),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs after warm-up.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs.")] = 3,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds before the measurement child is killed.")] = 300.0,
    threads: Annotated[int, typer.Option(min=1, help="Runtime threads.")] = 1,
    input_shape: InputShapeOpt = None,
    input_value: Annotated[
        list[str] | None,
        typer.Option("--input", metavar="[NAME=]VALUE|FILE.npy",
                     help="Data for an input: a number (every element; e.g. sr=16000) or a .npy file (its shape "
                          "also fixes the input's dynamic dims); repeat. Default: seeded data of its dtype."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the measurement JSON here.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report here.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run FILE in a child process: latency (median, p90), peak memory, the runtime's own figures; the
    verdict compares them with the prediction and the device."""
    from tap_edge.backends.inputs import parse_input_values
    from tap_edge.backends.verdict import measure_report
    from tap_edge.report import write_html_if_requested

    console.set_quiet(quiet or as_json)
    if not math.isfinite(timeout):
        raise UserError(f"--timeout {timeout}: not a number of seconds", "give e.g. --timeout 300")
    values = parse_input_values(input_value or [])
    shapes = input_shapes(input_shape)
    console.info(f"measuring {artifact} in a child process ...")
    with third_party_quiet(verbose):
        report = measure_report(artifact, device=device, runs=runs, warmup=warmup, timeout=timeout,
                                threads=threads, input_shapes=shapes, input_values=values)
    if out:
        report.write(out)
    if as_json:
        console.print_json(report.to_dict())
    else:
        print_report(report)
    write_html_if_requested(report, html)
    failed_without_device = not report.device and report.runtime_failures
    if report.verdict not in ("FITS", "MEASURED") or report.flags or failed_without_device:
        raise typer.Exit(EXIT_FAIL)


def print_report(r: MeasureReport) -> None:
    console.out.print(f"[bold]{escape(r.artifact)}[/] ({r.backend}, {r.runtime}): {fmt_bytes(r.artifact_bytes)}")
    if r.prediction_from:
        console.out.print(f"  prediction from {PREDICTION_FROM[r.prediction_from]}")
    elif r.prediction_error:
        console.out.print(f"  [yellow]no prediction[/]: {escape(r.prediction_error)}")
    for i in r.inputs:
        shape = "x".join(map(str, i.shape)) or "scalar"
        declared = f", declared {i.declared}" if i.declared != str(i.shape) else ""
        console.out.print(escape(f"  input {i.name}: {shape} {i.dtype}{declared}; data {i.data}"))
    lat = r.latency
    if lat.runs:
        console.out.print(f"  latency: median {lat.median_ms:.3f} ms, p90 {lat.p90_ms:.3f} ms ({lat.runs} runs, host, "
                          f"{r.threads} thread{'s' if r.threads != 1 else ''})")
    if r.vela is not None:
        for line in vela_report_lines(r):
            console.out.print(escape(line))
    mem = r.memory
    if mem.peak_rss_bytes and r.vela is None:
        console.out.print(f"  peak RSS of the child {fmt_bytes(mem.peak_rss_bytes)} (VmHWM; wait4 "
                          f"{fmt_bytes(mem.wait4_maxrss_bytes or 0)}), minus the runtime's import baseline "
                          f"{fmt_bytes(mem.model_rss_bytes or 0)}")
    if r.arena is not None:
        a = r.arena
        smallest = (f"smallest arena that builds and runs {a.min_bytes} B (compared with the prediction; "
                    f"{a.probes} probes in child processes" + (f", {a.crashed_probes} crashed" if a.crashed_probes
                                                               else "") + ")"
                    if a.min_bytes is not None else "smallest arena not found ("
                    + str((r.runtime_figures.get("tflm") or {}).get("arena_search", {}).get("stopped", "no size ran"))
                    + ")")
        console.out.print(f"  TFLite Micro arena: {smallest}; print_allocations total {a.total_bytes} B = head "
                          f"{a.head_bytes} + tail {a.tail_bytes}")
    if r.cross_check is not None:
        c = r.cross_check
        console.out.print(f"  {c.between}: top-1 {100 * c.top1_agreement:.0f}%, max |diff| {c.max_abs_diff} "
                          f"({c.output_dtype}), {c.n} inputs")
        if c.latency is not None and c.latency.runs:
            console.out.print(f"  TFLite Micro latency: median {c.latency.median_ms:.3f} ms ({c.latency.runs} runs, "
                              "host reference kernels)")
    failures = {p for p in r.problems if p.startswith("measured: ") and " cannot " in p}
    for p in sorted(failures):
        console.out.print(f"  [yellow]{escape(p.removeprefix('measured: '))}[/]")
    if r.comparisons:
        t = Table(title="prediction vs measurement")
        for col in ("figure", "predicted", "measured", "error", "measured by"):
            t.add_column(col, overflow="fold")
        for c in r.comparisons:
            off = c.error_pct is not None and abs(c.error_pct) > r.tolerance_pct
            colour = ("red" if c.gated else "yellow") if off else "green"
            error = f"{c.error_pct:+.2f}%" if c.error_pct is not None else "-"
            t.add_row(escape(c.figure), f"{c.predicted_bytes} B", f"{c.measured_bytes} B", f"[{colour}]{error}[/]",
                      escape(c.measured_by + ("" if c.gated else " (not gated)")))
        console.out.print(t)
    for f in r.flags:
        console.out.print(f"  [yellow]flag[/]: {f.figure} predicted {f.predicted_bytes} B, measured "
                          f"{f.measured_bytes} B ({f.error_pct:+.2f}%, over the {r.tolerance_pct:.0f}% tolerance)")
    if r.device:
        console.out.print(f"  verdict on {r.device} ({r.runtime_name}): "
                          f"[{VERDICT_COLOURS.get(r.verdict, 'white')}]{r.verdict}[/]")
        for p in r.problems:
            if p not in failures:
                console.out.print(f"    {escape(p)}")


def vela_report_lines(r: MeasureReport) -> list[str]:
    """A Vela artifact's figures: SRAM, constants and file, the ops left to the CPU and what they cost TFLite Micro
    on the M-class core, the NPU time (Vela's estimate, not a measurement)."""
    v = r.vela
    assert v is not None
    out = [f"  Vela {v.vela_version or '?'} ({v.accelerator}, {v.system_config}, {v.memory_mode}, {v.optimise}): "
           f"SRAM used {v.sram_bytes} B" + (f", DRAM used {v.dram_bytes} B" if v.dram_bytes else "")
           + f", constants {v.flash_bytes} B, optimised model {v.file_bytes} B",
           f"  TFLite Micro beside Vela's arena: tail {v.tflm_tail_bytes} B, CPU kernel scratch {v.cpu_scratch_bytes} B"
           f" (tap-edge's TFLM model on the optimised model's graph)"]
    if v.cpu_ops:
        out.append(f"  {len(v.cpu_ops)} op(s) left to the CPU (run by TFLite Micro on the Cortex-M):")
        out += [f"    {c.op} -> {c.tensor}" + (f": {c.reason}" if c.reason else "") for c in v.cpu_ops[:10]]
        if len(v.cpu_ops) > 10:
            out.append(f"    ... {len(v.cpu_ops) - 10} more")
    else:
        out.append(f"  every op on the NPU ({v.npu_ops} ethos-u block{'s' if v.npu_ops != 1 else ''})")
    if v.npu_ms is not None:
        out.append(f"  NPU time {v.npu_ms:.3f} ms: Vela's estimate ({v.total_cycles} cycles at "
                   f"{v.clock_hz / 1e6:g} MHz), not a measurement")
    return out
