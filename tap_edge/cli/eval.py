"""``tap-edge eval``: PTQ a plan (or uniform widths) and score it against the float model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tap_edge.cli.app import InputShapeOpt, JsonOpt, QuietOpt, app, input_shapes
from tap_edge.cli.options import ModelArg
from tap_edge.core import console
from tap_edge.graph.shapes import input_lines


@app.command("eval")
def eval_cmd(
    model: ModelArg,
    data: Annotated[Path, typer.Option(help="Folder of evaluation images (labels.csv inside is used if present).")],
    plan: Annotated[Path | None, typer.Option(help="plan.json from tap-edge plan.")] = None,
    bits: Annotated[str | None, typer.Option(help="Uniform widths instead of a plan, e.g. w4a8.")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV with file,class_index columns.")] = None,
    calib: Annotated[Path | None, typer.Option(help="Calibration folder (default: the first samples of --data, "
                                                     "which are then not scored).")] = None,
    rounding: Annotated[str | None, typer.Option(help="Weight rounding: nearest, gptq or adaround (default: the "
                                                      "plan's, else nearest).")] = None,
    ptq_samples: Annotated[int | None, typer.Option("--ptq-samples", "--calib-samples", help="Calibration samples "
                                                    "of the PTQ step (default: the plan's, else 16 for nearest, 64 "
                                                    "for gptq / adaround).")] = None,
    limit: Annotated[int | None, typer.Option(help="Score at most N samples.")] = None,
    input_shape: InputShapeOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write the metrics JSON here.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report here.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """PTQ MODEL with a plan (or uniform bits) and report top-1, agreement with float and KL to float."""
    from tap_edge.plan.pipeline import EvalRequest, evaluate_plan

    console.set_quiet(quiet or as_json)
    result = evaluate_plan(EvalRequest(model=model, data=data, plan=plan, bits=bits, labels=labels, calib=calib,
                                       calib_samples=ptq_samples, rounding=rounding, limit=limit,
                                       input_shapes=input_shapes(input_shape, plan)))
    if out:
        result.write(out)
    if as_json:
        console.print_json(result.to_dict())
    else:
        top1 = f"top-1 {100 * result.top1:.1f}%, " if result.top1 is not None else ""
        rounded = f" ({result.ptq.rounding}, {result.ptq.samples} calibration samples, PTQ {result.ptq_s:.1f} s)" \
            if result.ptq else ""
        console.out.print(f"[bold]{result.model}[/] {result.bits}{rounded} on {result.n_images} samples: {top1}"
                          f"agreement with float {100 * result.agreement:.1f}%, mean KL {result.kl:.4f}")
        for line in input_lines(result.inputs):
            console.out.print(line, markup=False)
    from tap_edge.report import write_html_if_requested

    write_html_if_requested(result, html)
