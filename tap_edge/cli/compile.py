"""``tap-edge compile MODEL --backend B``: an artifact at a plan's widths, with a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tap_edge.cli.app import JsonOpt, QuietOpt, app, resolve_bits
from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes


@app.command("compile")
def compile_cmd(
    model: Annotated[str, typer.Argument(help="Bundled name, timm:NAME or package.module:factory.")],
    backend: Annotated[str, typer.Option("--backend", "-b", help="onnxruntime | tflite | tvm")],
    plan: Annotated[Path | None, typer.Option(help="A plan.json with per-layer widths.")] = None,
    bits: Annotated[
        str | None, typer.Option(help="Uniform widths instead of a plan: w8a8, w4a8, fp32.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device", "-d", help="Profile id or YAML: its runtime's settings shape the prediction."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("build"),
    calib: Annotated[
        Path | None,
        typer.Option(
            help="Folder of calibration images (default: the shared "
            "sample photos for image models, noise otherwise)."
        ),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, max=512, help="Calibration samples.")] = 16,
    check_samples: Annotated[
        int,
        typer.Option(
            min=1, max=4096, help="Samples on which the artifact's outputs are compared with the reference."
        ),
    ] = 16,
    tune_trials: Annotated[
        int | None,
        typer.Option(
            help="tvm: tune the kernels with MetaSchedule, at most N trials in all (a database that has them "
            "is reused; 0: apply the database only)."
        ),
    ] = None,
    tune_db: Annotated[
        Path | None,
        typer.Option(help="tvm: tuning database folder (default ~/.cache/tap-edge/tvm-tuning/<workload key>/)."),
    ] = None,
    linear_int4: Annotated[
        str | None,
        typer.Option(
            help="onnxruntime: linear layers planned at <= 4 bits as INT4 QDQ (qdq, default) or as ORT's "
            "MatMulNBits kernel (matmulnbits: the same weights, no dequantization per run)."
        ),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compile MODEL at a plan's widths into a backend artifact (+ a manifest with the prediction)."""
    from tap_edge.backends import get_backend, read_manifest, sample_inputs
    from tap_edge.devices import get_device
    from tap_edge.graph.models import load_graph, load_model

    console.set_quiet(quiet or as_json)
    b = get_backend(backend)
    from tap_edge.backends.tvm_backend import check_tuning_options

    check_tuning_options(b.name, tune_trials, tune_db)
    tuning = {"tune_trials": tune_trials, "tune_db": tune_db} if tune_trials is not None or tune_db else {}
    if linear_int4 is not None:
        if b.name != "onnxruntime":
            raise UserError(f"--linear-int4 chooses an ONNX Runtime kernel; backend '{b.name}' has none",
                            "pass --backend onnxruntime, or drop --linear-int4")
        from tap_edge.backends.onnxruntime_backend import LINEAR_INT4

        if linear_int4 not in LINEAR_INT4:
            raise UserError(f"--linear-int4 '{linear_int4}' is not known", f"use {' or '.join(LINEAR_INT4)}")
        tuning["linear_int4"] = linear_int4
    b.require()
    prof = get_device(device) if device else None
    if prof is not None:
        b.pick_runtime(prof)
    lm = load_model(model)
    if lm.frontend != "torch":
        raise UserError(
            f"{model}: compile takes a PyTorch model", "pass a bundled model, timm:NAME or module:factory"
        )
    graph = load_graph(lm)
    ba = resolve_bits(bits, plan, lm.frontend)
    ba.check_names(graph)
    xs = sample_inputs(lm, max(samples, check_samples), calib)
    console.info(f"compiling {model} ({ba.label()}) with {b.name} ...")
    artifact = b.compile(
        lm, graph, ba, out, device=prof, calib=xs[:samples], check=xs[:check_samples], **tuning
    )
    man = read_manifest(artifact)
    if as_json:
        console.print_json({**man, "artifact": str(artifact)})
        return
    _print_compile(artifact, man)

def _print_compile(artifact: Path, man: dict[str, Any]) -> None:
    console.out.print(
        f"[bold]{artifact}[/] ({fmt_bytes(man.get('artifact_bytes') or 0)}, {man.get('compile_s', 0):.1f} s)"
    )
    pred = man.get("prediction", {})
    wb = man.get("actual", {}).get("weight_bytes", {})
    actual = _actual_weight_bytes(man)
    predicted = pred.get("flash", {}).get("model_bytes")
    if predicted is not None and actual is not None:
        console.out.print(
            f"  weights: predicted {fmt_bytes(predicted)} ({predicted} B), in the artifact "
            f"{fmt_bytes(actual)} ({actual} B), {_pct(actual, predicted):+.2f}%  {_brief(wb)}"
        )
    console.out.print(
        f"  predicted arena: {fmt_bytes(pred.get('arena_bytes', 0))} (settings {pred.get('arena_settings')})"
    )
    ag = man.get("agreement")
    if ag:
        console.out.print(
            f"  agreement with the {ag.get('reference')} model on {ag.get('n')} samples: top-1 "
            f"{100 * ag.get('top1_agreement', 0):.1f}%, cosine {ag.get('cosine')}"
        )
    tu = man.get("tuning")
    if tu:
        how = "reused, no new trials" if tu["reused"] else f"{tu['trials_run']} trials in {tu['tuning_s']:.0f} s"
        console.out.print(
            f"  tuned with MetaSchedule ({how}): budget {tu['trials_budget_total']} trials, "
            f"{tu['trials_measured_total']} measured in {tu['tuning_s_total']:.0f} s in all; "
            f"{tu['tasks_with_records']}/{tu['tasks']} kernels have records; database {tu['database']}"
        )
    console.out.print(
        f"  next: tap-edge measure {artifact}" + (f" --device {man['device']}" if man.get("device") else "")
    )

def _brief(wb: dict[str, int]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in wb.items() if v and not k.startswith("total")) + ")"

def _actual_weight_bytes(man: dict[str, Any]) -> int | None:
    wb = man.get("actual", {}).get("weight_bytes", {})
    for key in ("total_planned_form", "total"):
        if key in wb:
            return int(wb[key])
    return None

def _pct(measured: float, predicted: float) -> float:
    return 100.0 * (measured - predicted) / predicted if predicted else 0.0
