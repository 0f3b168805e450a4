"""TFLite input shapes: inputs whose ``shape_signature`` has -1 dims, resized to the user's ``--input-shape``.

LiteRT resizes such an input (``resize_tensor_input``) and propagates the sizes through the graph when it
allocates its tensors, so every tensor of the graph is read at the new size. TFLite Micro cannot resize: it
always runs the shape stored in the file, and the input's note says so when the two differ. A -1 batch dim
alone is assumed 1 (and said); any other -1 dim without ``--input-shape`` is refused (see
:func:`tap_edge.graph.shapes.resolve_inputs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.core.errors import ModelLoadError
from tap_edge.documents import InputInfo
from tap_edge.graph.shapes import DeclaredInput, InputShapes, format_shape, resolve_inputs


def _declared(detail: dict[str, Any]) -> DeclaredInput:
    stored = [int(x) for x in detail["shape"]]
    signature = [int(x) for x in detail.get("shape_signature", [])]
    dims = signature if len(signature) == len(stored) else stored
    return DeclaredInput(str(detail["name"]), [d if d > 0 else -1 for d in dims], np.dtype(detail["dtype"]).name)


def short_name(name: str) -> str:
    """A converter's input tensor name without its signature decoration: ``serving_default_input:0`` ->
    ``input`` (the name the exported function gave the argument)."""
    return name.removeprefix("serving_default_").rsplit(":", 1)[0]


def _by_full_name(names: list[str], input_shapes: InputShapes | None) -> InputShapes | None:
    """``--input-shape input=...`` for the tensor ``serving_default_input:0``: a name that is no input's but
    is exactly one input's short name means that input."""
    if not input_shapes:
        return input_shapes
    out: InputShapes = {}
    for key, shape in input_shapes.items():
        matches = [n for n in names if short_name(n) == key]
        out[matches[0] if key and key not in names and len(matches) == 1 else key] = shape
    return out


def resize_inputs(interp: Any, path: Path, input_shapes: InputShapes | None) -> list[InputInfo]:
    """Resolve the interpreter's inputs at ``input_shapes`` (full tensor names or their short names),
    resize those whose stored shape differs and allocate (so the interpreter's tensor details carry the new
    sizes); returns the inputs as planned."""
    details = interp.get_input_details()
    input_shapes = _by_full_name([str(d["name"]) for d in details], input_shapes)
    infos = resolve_inputs([_declared(d) for d in details], input_shapes, where=f"{path.name}: ", resizable=False)
    resized = False
    for d, info in zip(details, infos, strict=True):
        stored = [int(x) for x in d["shape"]]
        if info.shape != stored:
            interp.resize_tensor_input(int(d["index"]), info.shape, strict=True)
            info.note = f"TFLite Micro cannot resize inputs: it runs the stored shape {format_shape(stored)}"
            resized = True
    if resized:
        try:
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            shapes = ", ".join(f"{i.name}={format_shape(i.shape)}" for i in infos)
            raise ModelLoadError(f"{path}: LiteRT cannot run the model at {shapes} ({' '.join(str(e).split())[:160]})",
                                 "give a shape the model accepts") from None
    return infos


def stored_inputs(shapes: dict[str, tuple[list[int], str]], path: Path,
                  input_shapes: InputShapes | None) -> list[InputInfo]:
    """The inputs of a file read without an interpreter (no resizing possible): the stored shapes, which
    ``input_shapes`` may only repeat."""
    declared = [DeclaredInput(name, list(shape), dtype) for name, (shape, dtype) in shapes.items()]
    return resolve_inputs(declared, input_shapes, where=f"{path.name} (read without an interpreter): ",
                          resizable=False)
