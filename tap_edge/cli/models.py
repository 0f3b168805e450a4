"""``tap-edge models [PATTERN]``: the bundled models."""

from __future__ import annotations

from typing import Annotated

import typer

from tap_edge.cli.app import JsonOpt, app
from tap_edge.core import console
from tap_edge.core.errors import UserError


@app.command("models")
def models_cmd(
    pattern: Annotated[str, typer.Argument(help="Shell wildcard over the names, e.g. 'efficientnet*'.")] = "*",
    as_json: JsonOpt = False,
) -> None:
    """List the bundled models (MODEL may also be timm:NAME, package.module:factory, path/to/model.py:factory,
    .onnx or .tflite)."""
    from tap_edge.graph.models import describe_model, list_models

    names = list_models(pattern)
    if not names:
        raise UserError(f"no bundled model matches '{pattern}'",
                        "tap-edge models lists them all; timm names work as timm:NAME")
    if as_json:
        console.print_json({"models": [{"name": n, "description": describe_model(n)} for n in names]})
        return
    for name in names:
        console.out.print(f"{name:20s} {describe_model(name)}")
