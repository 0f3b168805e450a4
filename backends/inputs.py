"""What a measurement feeds a model: every input with data of its own dtype and shape.

A runtime declares each input as a :class:`TensorSpec` (name, dims with the dynamic ones as ``None`` or a symbol,
dtype, quantization). :class:`InputRequest` is what the user asked for (``tap-edge measure --input-shape
NAME=1,3,48,192 --input sr=16000 --input audio=clip.npy``); it travels to the measurement child as JSON.

- :func:`resolve_shapes`: the shape to feed each input, by the rule ``check`` plans with
  (:func:`tap_edge.graph.shapes.resolve_inputs`): the user's shape, else the declared one with a batch dim at 1
  (silero's ``state[2, batch, 128]`` shares ``input``'s batch); any other open dim is a one-line refusal naming
  the input and ``--input-shape``.
- :func:`input_array`: the data for one input. A given value (a number, or a ``.npy`` file) is used as it is,
  a real value on a quantized input goes through the input's scale and zero point. Otherwise seeded data of
  the input's dtype: floats N(0, 0.5); quantized integers uniform over the real range the scale and zero point
  represent, then quantized; other 8/16-bit integers uniform over -128..127 (0..255 unsigned); int32/int64
  scalars 1 (a small positive count, e.g. silero's sample rate ``sr``: give ``--input sr=16000`` for the real
  one), int32/int64 tensors 0 or 1 (valid as indices); booleans random.

The measurement child imports this module (numpy, no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.core.errors import UserError
from tap_edge.documents import InputInfo
from tap_edge.graph.shapes import FLAG as INPUT_SHAPE_FLAG
from tap_edge.graph.shapes import DeclaredInput, InputShapes, resolve_inputs

#: The key of a shape or value given without an input name (the model's only input).
UNNAMED = ""
#: dtypes :func:`input_array` can make data for.
FED_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
              "uint64", "bool")
INPUT_VALUE_FLAG = "--input"


@dataclass(frozen=True)
class TensorSpec:
    """One model input as its runtime declares it. ``dims`` as :class:`tap_edge.graph.shapes.DeclaredInput`
    has them: a positive int per fixed dim; a symbol (ONNX ``batch``), ``?`` (unknown) or -1 (TFLite
    ``shape_signature``) per open one. ``scale``/``zero_point``: set for a quantized integer input (TFLite)."""

    name: str
    dims: tuple[int | str, ...]
    dtype: str
    scale: float | None = None
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return bool(self.scale) and self.dtype in ("int8", "uint8", "int16")

    def declared(self) -> str:
        return "[" + ", ".join(str(d) for d in self.dims) + "]"


@dataclass(frozen=True)
class InputRequest:
    """What the user asked the measurement to feed: shapes (input name -> dims; :data:`UNNAMED` for a model's
    only input) and values (input name -> a number or a ``.npy`` path)."""

    shapes: InputShapes = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, shapes: InputShapes | None = None, values: dict[str, str | float | int] | None = None
           ) -> InputRequest:
        """The request of a caller's shapes and values (numbers or ``.npy`` paths, checked here); a ``.npy``
        file's shape fixes its input's dims unless a shape is given for it."""
        texts = parse_input_values([f"{k}={v}" if k else str(v) for k, v in (values or {}).items()])
        return cls({**npy_shapes(texts), **(shapes or {})}, texts)

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": self.shapes, "values": self.values}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> InputRequest:
        data = data or {}
        return cls({k: [int(d) for d in v] for k, v in data.get("shapes", {}).items()},
                   {k: str(v) for k, v in data.get("values", {}).items()})

    def for_input(self, table: dict[str, Any], name: str, count: int) -> Any:
        """The entry of ``table`` (``shapes`` or ``values``) for input ``name`` of ``count`` inputs: by name,
        or the unnamed entry when the model has one input."""
        if name in table:
            return table[name]
        if UNNAMED in table and count == 1:
            return table[UNNAMED]
        return None

    def check_value_names(self, names: list[str]) -> None:
        """Every ``--input`` name must be an input of the model; a value without a name needs a model with one
        input (``--input-shape`` names are checked by :func:`tap_edge.graph.shapes.resolve_inputs`)."""
        for key in self.values:
            if key == UNNAMED and len(names) != 1:
                raise UserError(f"{INPUT_VALUE_FLAG} without an input name, but the model has {len(names)} inputs "
                                f"({', '.join(names)})", f"write {INPUT_VALUE_FLAG} NAME=...")
            if key != UNNAMED and key not in names:
                raise UserError(f"{INPUT_VALUE_FLAG} {key}=...: the model has no input '{key}'",
                                f"its inputs: {', '.join(names)}")


def declared_inputs(specs: list[TensorSpec]) -> list[DeclaredInput]:
    """``specs`` as :func:`tap_edge.graph.shapes.resolve_inputs` reads them (the rule ``check`` plans by)."""
    return [DeclaredInput(s.name, list(s.dims), s.dtype) for s in specs]


def resolve_shapes(specs: list[TensorSpec], request: InputRequest, where: str) -> list[InputInfo]:
    """The shape to feed each input: the one the user gave, else the declared one with a batch dim at 1; any
    other open dim is the one-line refusal of :func:`tap_edge.graph.shapes.resolve_inputs` (naming the input and
    ``--input-shape``), exactly as the prediction resolves them."""
    request.check_value_names([s.name for s in specs])
    return resolve_inputs(declared_inputs(specs), request.shapes or None, where=where, resizable=False)


def input_array(spec: TensorSpec, shape: list[int], given: str | None, seed: int) -> np.ndarray:
    """Data of ``spec``'s dtype and ``shape`` (see the module docstring): ``given`` (a number or a ``.npy``
    path) when set, else seeded data."""
    if spec.dtype not in FED_DTYPES:
        raise UserError(f"input '{spec.name}' has dtype {spec.dtype}, which measure cannot make data for",
                        f"give it: {INPUT_VALUE_FLAG} {spec.name}=file.npy")
    dt = np.dtype(spec.dtype)
    if given is not None:
        return _given_array(spec, shape, given)
    rng = np.random.default_rng(seed)
    if spec.quantized:
        info = np.iinfo(dt)
        lo, hi = (info.min - spec.zero_point) * spec.scale, (info.max - spec.zero_point) * spec.scale
        return quantize(spec, rng.uniform(lo, hi, shape))
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 0.5).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(dt)
    if dt.itemsize <= 2:
        info = np.iinfo(dt)
        return rng.integers(max(info.min, -128), min(info.max, 127) + 1, shape).astype(dt)
    if not shape:
        return np.array(1, dt)
    return rng.integers(0, 2, shape).astype(dt)


def quantize(spec: TensorSpec, real: np.ndarray) -> np.ndarray:
    """Real values -> ``spec``'s integers with its scale and zero point (rounded, clipped to the type)."""
    info = np.iinfo(np.dtype(spec.dtype))
    q = np.round(np.asarray(real, np.float64) / spec.scale + spec.zero_point)
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def _given_array(spec: TensorSpec, shape: list[int], given: str) -> np.ndarray:
    dt = np.dtype(spec.dtype)
    if given.endswith(".npy"):
        arr = np.load(given, allow_pickle=False)
        if list(arr.shape) != list(shape):
            if arr.size != math.prod(shape):
                raise UserError(f"{INPUT_VALUE_FLAG} {spec.name}={given}: shape {list(arr.shape)}, the input "
                                f"is fed at {shape}", f"save an array of shape {shape}, or pass {INPUT_SHAPE_FLAG}")
            arr = arr.reshape(shape)
    else:
        arr = np.full(shape, parse_number(given, spec.name))
    if spec.quantized and arr.dtype.kind == "f":
        return quantize(spec, arr)
    if dt.kind in "iub" and arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise UserError(f"{INPUT_VALUE_FLAG} {spec.name}: the input is {spec.dtype}, the value is not a "
                            "whole number", "give integers")
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise UserError(f"{INPUT_VALUE_FLAG} {spec.name}: values outside {spec.dtype}'s range "
                            f"{info.min}..{info.max}")
    return arr.astype(dt)


def parse_number(text: str, name: str) -> int | float:
    """``16000`` -> 16000, ``0.5`` -> 0.5; anything else is a one-line error."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{INPUT_VALUE_FLAG} {name}={text}: not a number or a .npy file",
                        f"write {INPUT_VALUE_FLAG} {name}=16000 or {INPUT_VALUE_FLAG} {name}=data.npy") from None


def parse_input_values(items: list[str]) -> dict[str, str]:
    """``--input NAME=value`` / ``NAME=file.npy`` (or ``value`` alone for a one-input model) -> {name: text};
    a missing file or a value that is not a number is one line."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = (name.strip(), text.strip()) if sep else (UNNAMED, name.strip())
        if text.endswith(".npy"):
            if not Path(text).is_file():
                raise UserError(f"{INPUT_VALUE_FLAG} {item}: {text} not found", "give an existing .npy file")
            text = str(Path(text).resolve())
        else:
            parse_number(text, name or "input")
        if name in out:
            raise UserError(f"{INPUT_VALUE_FLAG} given twice for '{name or 'the input'}'", "give each input once")
        out[name] = text
    return out


def npy_shapes(values: dict[str, str]) -> dict[str, list[int]]:
    """The shapes of the ``.npy`` files among ``values`` (a file fixes its input's dynamic dims)."""
    return {name: list(np.load(text, mmap_mode="r", allow_pickle=False).shape)
            for name, text in values.items() if text.endswith(".npy")}


def fed_input(spec: TensorSpec, shape: list[int], request: InputRequest, count: int) -> dict[str, Any]:
    """What one input was fed (a :class:`~tap_edge.documents.FedInput`'s fields), for the report."""
    given = request.for_input(request.values, spec.name, count)
    how = (f"given: {given}" if given is not None else
           "uniform over its quantized range (scale/zero point)" if spec.quantized else "seeded")
    return {"name": spec.name, "shape": list(shape), "dtype": spec.dtype, "declared": spec.declared(), "data": how}
