"""``tap-edge compile MODEL --backend B``: an artifact at a plan's widths, with a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tap_edge.cli.app import InputShapeOpt, JsonOpt, QuietOpt, app, input_shapes, resolve_bits
from tap_edge.cli.options import ModelArg, VerboseOpt, refuse_moved, third_party_quiet
from tap_edge.core import console
from tap_edge.core.units import fmt_bytes, pct
from tap_edge.graph.shapes import input_lines


@app.command("compile")
def compile_cmd(
    model: ModelArg,
    backend: Annotated[str, typer.Option("--backend", "-b",
                                         help="onnxruntime | tflite | tvm | vela (tap-edge backends)")],
    plan: Annotated[Path | None, typer.Option(help="A plan.json with per-layer widths.")] = None,
    bits: Annotated[str | None, typer.Option(help="Uniform widths instead of a plan: w8a8, w4a8, fp32.")] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", "-d", help="Profile id or YAML: its runtime's settings shape the prediction."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the artifact and its manifest.")] = Path(
        "build"),
    calib: Annotated[
        str | None,
        typer.Option(metavar="DIR|noise", help="Folder of calibration images or tensors, read as plan and eval read "
                                               "them; 'noise' for seeded Gaussian noise. Needed for int8/int16 "
                                               "activations (float and weight-only builds need none)."),
    ] = None,
    rounding: Annotated[str | None, typer.Option(help="Weight rounding of the PTQ the artifact stores: nearest, "
                                                      "gptq or adaround (default: the plan's, else nearest).")] = None,
    calib_samples: Annotated[
        int | None,
        typer.Option("--ptq-samples", "--calib-samples", min=1, max=512,
                     help="Calibration samples of the PTQ (default: the plan's, else 16 for nearest, 64 for gptq / "
                          "adaround)."),
    ] = None,
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
    vela_config: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="vela: a Vela .ini of your own; its [System_Config.*] and [Memory_Mode.*] "
                                          "sections replace the device profile's (checked before anything runs)."),
    ] = None,
    input_shape: InputShapeOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    old_out: Annotated[str | None, typer.Option("--out", hidden=True)] = None,
    old_samples: Annotated[str | None, typer.Option("--samples", hidden=True)] = None,
) -> None:
    """Compile MODEL at a plan's widths into a backend artifact (+ a manifest with the prediction)."""
    from tap_edge.backends import compile_model, get_backend
    from tap_edge.plan.pipeline import resolve_ptq

    refuse_moved(old_out, "--out", "--out-dir", "compile writes a folder; --out names a document file in every "
                 "command")
    refuse_moved(old_samples, "--samples", "--calib-samples", "the flag's name in plan, eval and compile")
    console.set_quiet(quiet or as_json)
    b = get_backend(backend)
    options = b.options_from_flags(tune_trials=tune_trials, tune_db=tune_db, linear_int4=linear_int4,
                                   vela_config=vela_config)
    widths = resolve_bits(bits, plan, "torch")
    ptq = resolve_ptq(plan, rounding, calib_samples)
    console.info(f"compiling {model} ({widths.label()}, {ptq.rounding} rounding) with {b.name} ...")
    with third_party_quiet(verbose):
        artifact = compile_model(model, b, widths, out_dir, device=device, calib_dir=calib_source(calib),
                                 samples=ptq.samples, check_samples=check_samples, options=options,
                                 input_shapes=input_shapes(input_shape, plan), ptq=ptq)
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
    how = man.prediction.prediction_by or (f"{s.runtime}: alignment {s.alignment}, in-place aliasing "
                                           f"{'on' if s.alias_inplace else 'off'}, scratch {s.scratch}")
    console.out.print(f"  predicted arena: {fmt_bytes(man.prediction.arena_bytes)} ({how})")
    source = man.calibration
    where = f"samples of {source.folder}" if source.folder else f"samples of seeded {source.kind} (seed {source.seed})"
    if man.ptq is not None:
        console.out.print(f"  weights: {man.ptq.rounding} rounding on {man.ptq.samples} calibration samples "
                          f"(PTQ {man.ptq_s or 0:.1f} s); the artifact stores the fake-quant integers and scales")
    console.out.print(f"  calibrated on {source.samples} {where}" if calibrated(man) else
                      f"  no activation calibration (float activations); checked on {man.check_inputs.samples} "
                      f"{where.removeprefix('samples of ')}")
    if man.agreement is not None:
        ag = man.agreement
        console.out.print(f"  agreement with the {ag.reference} model on {ag.n} samples: top-1 "
                          f"{100 * ag.top1_agreement:.1f}%, cosine {ag.cosine}")
    for line in b.summary_lines(man):
        console.out.print(f"  {line}")
    console.out.print(f"  next: tap-edge measure {artifact.path}" + (f" --device {man.device}" if man.device else ""))


def calib_source(calib: str | None) -> Path | str | None:
    """``--calib``: a folder or file of samples, or the word ``noise`` (seeded Gaussian noise)."""
    from tap_edge.backends.reference import NOISE

    if calib is None or calib == NOISE:
        return calib
    return Path(calib)


def calibrated(manifest: object) -> bool:
    """Whether some activation of the artifact is integer (its ranges came from the calibration inputs)."""
    bits = manifest.bits  # type: ignore[attr-defined]
    return bits.default.a < 32 or any(w.a < 32 for w in bits.layers.values())
