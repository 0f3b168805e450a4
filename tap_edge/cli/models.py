"""``tap-edge models``: the bundled models."""

from __future__ import annotations

from tap_edge.cli.app import app
from tap_edge.core import console


@app.command("models")
def models_cmd() -> None:
    """List the bundled models (MODEL may also be timm:NAME, package.module:factory, .onnx, .tflite)."""
    from tap_edge.graph.models import describe_model, list_models

    for name in list_models():
        console.out.print(f"{name:20s} {describe_model(name)}")
