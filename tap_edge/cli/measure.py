"""``tap-edge measure ARTIFACT``: run it in a child process; prediction vs measurement and the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tap_edge.cli.app import EXIT_FAIL, JsonOpt, QuietOpt, app
from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes

TOLERANCE = 0.05

@app.command("measure")
def measure_cmd(
    artifact: Annotated[
        Path, typer.Argument(help="An artifact written by tap-edge compile (.onnx, .tflite).")
    ],
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
    from tap_edge.backends import read_manifest
    from tap_edge.backends.measure import measure_artifact

    console.set_quiet(quiet or as_json)
    man = read_manifest(artifact)
    dev = device or man.get("device")
    console.info(f"measuring {artifact} in a child process ...")
    meas = measure_artifact(
        artifact,
        backend=man.get("backend"),
        runs=runs,
        warmup=warmup,
        timeout=timeout,
        options={"threads": threads},
    )
    meas.pop("child_stdout", None)
    report = build_report(artifact, man, meas, dev)
    if as_json:
        console.print_json(report)
    else:
        print_report(report)
    from tap_edge.report import write_html_if_requested

    write_html_if_requested(report, html)
    if report["verdict"] not in ("FITS", "MEASURED") or report["flags"]:
        raise typer.Exit(EXIT_FAIL)

def measured_sram(meas: dict[str, Any]) -> tuple[int | None, str]:
    tf = meas.get("tflm") or {}
    if tf.get("arena_total_bytes"):
        return int(tf["arena_total_bytes"]), "TFLite Micro arena (print_allocations total)"
    if meas.get("model_rss_bytes") is not None:
        return int(meas["model_rss_bytes"]), "child peak RSS minus the runtime's import baseline (host)"
    return None, ""

def _actual_weight_bytes(man: dict[str, Any]) -> int | None:
    wb = man.get("actual", {}).get("weight_bytes", {})
    for key in ("total_planned_form", "total"):
        if key in wb:
            return int(wb[key])
    return None

def build_report(
    artifact: Path, man: dict[str, Any], meas: dict[str, Any], device: str | None
) -> dict[str, Any]:
    """Prediction vs measurement (+ the verdict when a device is known)."""
    pred = man.get("prediction", {})
    flags: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []

    def compare(
        figure: str, predicted: int | None, measured: int | None, how: str, flag: bool = True
    ) -> None:
        if predicted is None or measured is None:
            return
        err = 100.0 * (measured - predicted) / predicted if predicted else 0.0
        row = {
            "figure": figure,
            "predicted_bytes": predicted,
            "measured_bytes": measured,
            "error_pct": round(err, 2),
            "measured_by": how,
        }
        comparisons.append(row)
        if flag and abs(err) > 100 * TOLERANCE:
            flags.append(row)

    compare(
        "weights",
        pred.get("flash", {}).get("model_bytes"),
        _actual_weight_bytes(man),
        "constant bytes in the artifact",
    )
    tf = meas.get("tflm") or {}
    if tf.get("arena_head_bytes"):
        host = man.get("prediction_tflm_host") or pred
        compare(
            "arena head (planned tensors)",
            host.get("arena_head_bytes", host.get("arena_bytes")),
            tf["arena_head_bytes"],
            "TFLite Micro arena head (non-persistent, print_allocations)",
        )
        compare(
            "arena total",
            host.get("arena_bytes"),
            tf.get("arena_total_bytes"),
            "TFLite Micro arena total = head + tail (persistent)",
        )
        art = man.get("prediction_from_artifact_graph") or {}
        compare(
            "arena head, planned on the .tflite graph",
            art.get("arena_head_bytes", art.get("arena_bytes")),
            tf["arena_head_bytes"],
            "TFLite Micro arena head",
            flag=False,
        )
    report: dict[str, Any] = {
        "schema": "tap-edge/measure-report",
        "version": 1,
        "artifact": str(artifact),
        "backend": meas.get("backend"),
        "model": man.get("model"),
        "bits": (man.get("bits") or {}).get("label"),
        "latency": meas.get("latency"),
        "artifact_bytes": meas.get("artifact_bytes"),
        "memory": {
            "peak_rss_bytes": meas.get("peak_rss_bytes"),
            "wait4_maxrss_bytes": meas.get("wait4_maxrss_bytes"),
            "import_baseline_bytes": meas.get("import_baseline_bytes"),
            "model_rss_bytes": meas.get("model_rss_bytes"),
        },
        "runtime_figures": {k: v for k, v in meas.items() if k.startswith(("tflm", "ort_", "tvm_"))},
        "runtime": meas.get("runtime"),
        "comparisons": comparisons,
        "flags": flags,
        "agreement": man.get("agreement"),
        "device": device,
        "verdict": "MEASURED",
        "problems": [],
    }
    if device:
        report.update(_verdict(man, meas, device))
    return report

def _verdict(man: dict[str, Any], meas: dict[str, Any], device: str) -> dict[str, Any]:
    from tap_edge.backends import get_backend
    from tap_edge.devices import get_device
    from tap_edge.fit.checker import Checker
    from tap_edge.graph.models import load_graph

    prof = get_device(device)
    b = get_backend(man.get("backend") or meas.get("backend"))
    rt = b.pick_runtime(prof)
    problems: list[str] = []
    predicted_fits = None
    if man.get("model") and man.get("bits"):
        from tap_edge.fit.bits import BitAssignment

        try:
            ba = BitAssignment.from_plan(man["bits"], "manifest")
            v = Checker(load_graph(man["model"]), ba).check(prof, rt.name)
            predicted_fits = v.verdict == "FITS"
            problems += [f"predicted: {p}" for p in v.problems]
        except UserError as e:
            problems.append(f"prediction unavailable: {e}")
    wreg, areg = prof.weights_region(), prof.arena_region()
    flash_limit = prof.free_bytes(wreg)
    sram_limit = prof.free_bytes(areg)
    weights = _actual_weight_bytes(man) or meas.get("artifact_bytes") or 0
    flash_used = weights + rt.code_bytes
    if wreg.name == areg.name:
        sram_limit -= flash_used
    sram, how = measured_sram(meas)
    if flash_used > flash_limit:
        problems.append(f"measured: flash ({wreg.name}) over by {fmt_bytes(flash_used - flash_limit)}")
    if sram is not None and sram > sram_limit:
        problems.append(f"measured: SRAM ({areg.name}) over by {fmt_bytes(sram - sram_limit)} ({how})")
    measured_fits = not any(p.startswith("measured") for p in problems)
    if predicted_fits is None:
        verdict = "UNKNOWN"
    elif predicted_fits and measured_fits:
        verdict = "FITS"
    else:
        verdict = "OOM" if any("over by" in p for p in problems) else "UNSUPPORTED"
    return {
        "verdict": verdict,
        "problems": problems,
        "runtime_name": rt.name,
        "limits": {
            "flash_bytes": flash_limit,
            "flash_region": wreg.name,
            "sram_bytes": sram_limit,
            "sram_region": areg.name,
        },
        "measured_use": {"flash_bytes": flash_used, "sram_bytes": sram, "sram_measured_by": how},
        "predicted_fits": predicted_fits,
        "measured_fits": measured_fits,
    }

def print_report(r: dict[str, Any]) -> None:
    lat = r.get("latency") or {}
    console.out.print(
        f"[bold]{r['artifact']}[/] ({r['backend']}, {r.get('runtime')}): "
        f"{fmt_bytes(r.get('artifact_bytes') or 0)}"
    )
    if lat.get("runs"):
        console.out.print(
            f"  latency: median {lat['median_ms']:.3f} ms, p90 {lat['p90_ms']:.3f} ms "
            f"({lat['runs']} runs, host)"
        )
    mem = r["memory"]
    if mem.get("peak_rss_bytes"):
        console.out.print(
            f"  peak RSS of the child {fmt_bytes(mem['peak_rss_bytes'])} (VmHWM; wait4 "
            f"{fmt_bytes(mem.get('wait4_maxrss_bytes') or 0)}), minus the runtime's import baseline "
            f"{fmt_bytes(mem.get('model_rss_bytes') or 0)}"
        )
    tf = r["runtime_figures"].get("tflm") or {}
    if tf:
        console.out.print(
            f"  TFLite Micro arena: total {tf.get('arena_total_bytes')} B = head "
            f"{tf.get('arena_head_bytes')} + tail {tf.get('arena_tail_bytes')}; smallest arena that "
            f"constructs {r['runtime_figures'].get('tflm_min_arena_bytes')} B"
        )
        tv = r["runtime_figures"].get("tflm_vs_litert") or {}
        if tv:
            console.out.print(
                f"  TFLM vs LiteRT outputs: top-1 {100 * tv['top1_agreement']:.0f}%, max |diff| "
                f"{tv['max_abs_diff']} ({tv['output_dtype']}), {tv['n']} inputs"
            )
    t = Table(title="prediction vs measurement")
    for col in ("figure", "predicted", "measured", "error", "measured by"):
        t.add_column(col)
    for c in r["comparisons"]:
        colour = "red" if abs(c["error_pct"]) > 100 * TOLERANCE else "green"
        t.add_row(
            c["figure"],
            f"{c['predicted_bytes']} B",
            f"{c['measured_bytes']} B",
            f"[{colour}]{c['error_pct']:+.2f}%[/]",
            c["measured_by"],
        )
    if r["comparisons"]:
        console.out.print(t)
    for f in r["flags"]:
        console.out.print(
            f"  [yellow]flag[/]: {f['figure']} predicted {f['predicted_bytes']} B, measured "
            f"{f['measured_bytes']} B ({f['error_pct']:+.2f}%, over the {100 * TOLERANCE:.0f}% "
            "tolerance)"
        )
    if r.get("device"):
        colours = {"FITS": "green", "OOM": "red", "UNSUPPORTED": "yellow", "UNKNOWN": "yellow"}
        console.out.print(
            f"  verdict on {r['device']} ({r.get('runtime_name')}): "
            f"[{colours.get(r['verdict'], 'white')}]{r['verdict']}[/]"
        )
        for p in r.get("problems", []):
            console.out.print(f"    {p}")
