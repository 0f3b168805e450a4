"""``tap-edge compile MODEL --backend B``: an artifact at a plan's widths, with a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tap_edge.cli.app import InputShapeOpt, JsonOpt, QuietOpt, app, input_shapes, resolve_bits
from tap_edge.core import console
from tap_edge.core.units import fmt_bytes, pct
from tap_edge.graph.shapes import input_lines


@app.command("compile")
def compile_cmd(
    model: Annotated[str, typer.Argument(help="Bundled name, timm:NAME or package.module:factory.")],
    backend: Annotated[str, typer.Option("--backend", "-b", help="onnxruntime | tflite | tvm (tap-edge backends)")],
    plan: Annotated[Path | None, typer.Option(help="A plan.json with per-layer widths.")] = None,
    bits: Annotated[str | None, typer.Option(help="Uniform widths instead of a plan: w8a8, w4a8, fp32.")] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", "-d", help="Profile id or YAML: its runtime's settings shape the prediction."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("build"),
    calib: Annotated[
        Path | None,
        typer.Option(help="Folder of calibration images or tensors, read as plan and eval read them (default: "
                          "the shared sample photos for image models, seeded noise otherwise)."),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, max=512, help="Calibration samples.")] = 16,
    check_samples: Annotated[
        int,
        typer.Option(min=1, max=4096, help="Samples on which the artifact's outputs are compared with the reference."),
    ] = 16,
    tune_trials: Annotated[
        int | None,
        typer.Option(help="tvm: tune the kernels with MetaSchedule, at most N trials in all (a database that has them "
                          "is reused; 0: apply the database only)."),
    ] = None,
    tune_db: Annotated[
        Path | None,
        typer.Option(help="tvm: tuning database folder (default ~/.cache/tap-edge/tvm-tuning/<workload key>/)."),
    ] = None,
    linear_int4: Annotated[
        str | None,
        typer.Option(help="onnxruntime: linear layers planned at <= 4 bits as INT4 QDQ (qdq, default) or as ORT's "
                          "MatMulNBits kernel (matmulnbits: the same weights, no dequantization per run)."),
    ] = None,
    input_shape: InputShapeOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compile MODEL at a plan's widths into a backend artifact (+ a manifest with the prediction)."""
    from tap_edge.backends import compile_model, get_backend

    console.set_quiet(quiet or as_json)
    b = get_backend(backend)
    options = b.options_from_flags(tune_trials=tune_trials, tune_db=tune_db, linear_int4=linear_int4)
    widths = resolve_bits(bits, plan, "torch")
    console.info(f"compiling {model} ({widths.label()}) with {b.name} ...")
    artifact = compile_model(model, b, widths, out, device=device, calib_dir=calib, samples=samples,
                             check_samples=check_samples, options=options,
                             input_shapes=input_shapes(input_shape, plan))
    if as_json:
        console.print_json(artifact.manifest.to_dict())
        return
    man = artifact.manifest
    console.out.print(f"[bold]{artifact.path}[/] ({fmt_bytes(man.artifact_bytes)}, {man.compile_s:.1f} s)")
    for line in input_lines(man.inputs, indent="  "):
        console.out.print(line, markup=False)
    predicted, actual = man.prediction.flash.model_bytes, man.weights.planned_form_bytes
    roles = ", ".join(f"{k} {v}" for k, v in man.weights.by_role.items() if v)
    error = pct(actual - predicted, predicted)
    console.out.print(f"  weights: predicted {fmt_bytes(predicted)} ({predicted} B), in the artifact "
                      f"{fmt_bytes(actual)} ({actual} B), {'-' if error is None else f'{error:+.2f}%'}  ({roles})")
    s = man.prediction.arena_settings
    console.out.print(f"  predicted arena: {fmt_bytes(man.prediction.arena_bytes)} ({s.runtime}: alignment "
                      f"{s.alignment}, in-place aliasing {'on' if s.alias_inplace else 'off'}, scratch {s.scratch})")
    source = man.calibration
    console.out.print(f"  calibrated on {source.samples} " + (f"samples of {source.folder}" if source.folder
                                                                else source.kind))
    if man.agreement is not None:
        ag = man.agreement
        console.out.print(f"  agreement with the {ag.reference} model on {ag.n} samples: top-1 "
                          f"{100 * ag.top1_agreement:.1f}%, cosine {ag.cosine}")
    for line in b.summary_lines(man):
        console.out.print(f"  {line}")
    console.out.print(f"  next: tap-edge measure {artifact.path}" + (f" --device {man.device}" if man.device else ""))
