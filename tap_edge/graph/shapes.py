"""Model input shapes: the ``--input-shape`` flag, and the concrete shape each input is planned at.

A file may leave input dimensions open (ONNX ``dim_param`` / unknown dims, TFLite ``shape_signature`` -1).
:func:`resolve_inputs` turns the declared shapes and the user's shapes into one concrete shape per input and
says where each came from (``InputInfo.source``): ``model`` (the file fixes every dim), ``user``
(``--input-shape``), ``assumed batch 1`` (only a batch dim was open) or ``preprocess`` (a PyTorch model's own
preprocessing). Any other open dim is refused with one line naming the input, its declared shape and the flag:
a model is never planned at a size nobody chose.

Shapes are written ``1x3x224x224`` (``x`` or ``,`` between dims); ``NAME=SHAPE`` for one input of a
multi-input model, ``NAME=`` for a scalar. A bare shape (key ``""`` in :data:`InputShapes`) is the only input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tap_edge.core.errors import UserError
from tap_edge.documents import InputInfo

#: Input name -> concrete shape; the key ``""`` stands for the model's only input.
InputShapes = dict[str, list[int]]
#: A declared dim: a positive int (fixed), a symbol (ONNX dim_param), "?" (unknown) or <= 0 (TFLite -1).
Dim = int | str

FLAG = "--input-shape"
_DIMS = re.compile(r"^\d+([x,*]\d+)*$")
_SYMBOL = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,15}$")


def parse_shape(text: str, what: str = FLAG) -> list[int]:
    """``1x3x224x224`` (or ``1,3,224,224``; empty: a scalar) -> [1, 3, 224, 224]; every dim at least 1."""
    s = text.strip().lower().strip("[]()").replace(" ", "")
    if not s:
        return []
    if not _DIMS.match(s):
        raise UserError(f"{what}: cannot read shape '{text}'", "write dims joined by x, e.g. 1x3x224x224")
    dims = [int(d) for d in re.split(r"[x,*]", s)]
    if any(d < 1 for d in dims):
        raise UserError(f"{what}: shape '{text}' has a dim below 1", "every dim is a positive size")
    return dims


def parse_input_shapes(specs: Iterable[str] | None, flag: str = FLAG) -> InputShapes | None:
    """The repeatable flag's values (``1x3x224x224`` or ``NAME=1x3x224x224``) as numbers; None when none given."""
    out: InputShapes = {}
    for spec in specs or []:
        name, sep, shape = spec.rpartition("=") if "=" in spec else ("", "", spec)
        name = name.strip()
        if sep and not name:
            raise UserError(f"{flag} '{spec}': no input name before '='", "write NAME=1x3x224x224")
        key = name if sep else ""
        if key in out:
            raise UserError(f"{flag}: {'input ' + key if key else 'a bare shape'} given twice", "give each input once")
        out[key] = parse_shape(shape, f"{flag} {spec}")
    if "" in out and len(out) > 1:
        raise UserError(f"{flag}: a bare shape and named shapes together", "name every input: NAME=SHAPE")
    return out or None


def format_shape(shape: Iterable[Dim]) -> str:
    """[1, 3, 224, 224] -> ``1x3x224x224`` (the flag's own form)."""
    return "x".join(str(d) for d in shape)


def shape_key(shapes: InputShapes | None) -> str | None:
    """A stable text of the user's shapes (graph cache keys): one input -> its dims, several -> sorted pairs."""
    if not shapes:
        return None
    if len(shapes) == 1:
        return format_shape(next(iter(shapes.values())))
    return ";".join(f"{k}={format_shape(v)}" for k, v in sorted(shapes.items()))


@dataclass
class DeclaredInput:
    """One model input as the file declares it."""

    name: str
    dims: list[Dim]
    dtype: str = "float32"


def _is_open(d: Dim) -> bool:
    return isinstance(d, str) or d <= 0


def _show(d: Dim) -> str:
    return str(d) if not isinstance(d, str) else d


def _batch_symbols(inputs: list[DeclaredInput]) -> set[str]:
    """Symbols of the first dim of inputs of rank >= 2: a batch (silero's state[2, batch, 128] shares it)."""
    return {str(i.dims[0]) for i in inputs if len(i.dims) >= 2 and isinstance(i.dims[0], str) and i.dims[0] != "?"}


def _is_batch(inp: DeclaredInput, axis: int, symbols: set[str]) -> bool:
    d = inp.dims[axis]
    return (axis == 0 and len(inp.dims) >= 2) or (isinstance(d, str) and d in symbols)


def _placeholder(inp: DeclaredInput, axis: int, counter: list[int]) -> str:
    """What to write for an open dim in the suggested flag: its symbol when it reads as a word, a layout letter
    for a 4-D input, else ``D1``, ``D2``, ... numbered across the whole message (two unnamed dims are not one)."""
    d = inp.dims[axis]
    if isinstance(d, str) and _SYMBOL.match(d) and not d.lower().startswith(("unk", "dynamic")):
        return d.upper()
    if len(inp.dims) == 4:  # NCHW (channels small at 1) or NHWC
        letters = "NCHW" if isinstance(inp.dims[1], int) and 0 < inp.dims[1] <= 4 else "NHWC"
        return letters[axis]
    counter[0] += 1
    return f"D{counter[0]}"


def _refusal(open_inputs: list[tuple[DeclaredInput, list[int], list[int]]], where: str) -> UserError:
    """One line naming each input with open dims, its declared shape, and the flag to give."""
    parts, flags = [], []
    counter = [0]
    for inp, axes, shape in open_inputs:
        parts.append(f"{inp.name} [{', '.join(_show(d) for d in inp.dims)}]")
        dims = [_placeholder(inp, a, counter) if a in axes else str(v) for a, v in enumerate(shape)]
        flags.append(f"{FLAG} {inp.name}={'x'.join(dims)}")
    what = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    verb = "has" if len(parts) == 1 else "have"
    return UserError(f"{where}{what} {verb} dynamic dims", f"give {' '.join(flags)}")


def resolve_inputs(declared: list[DeclaredInput], given: InputShapes | None, *, where: str = "",
                   resizable: bool = True) -> list[InputInfo]:
    """One concrete shape per declared input (see the module docstring); one-line UserError otherwise.

    ``resizable=False``: the file's fixed dims may not change (ONNX, TFLite); True lets any dim change (a
    PyTorch model is traced at whatever shape it is given). ``where`` prefixes messages (e.g. the file)."""
    given = dict(given or {})
    names = [i.name for i in declared]
    if "" in given:
        if len(declared) != 1:
            raise UserError(f"{where}{FLAG} without a name, but the model has {len(declared)} inputs "
                            f"({', '.join(names)})", f"write NAME=SHAPE for each, e.g. {names[0]}=...")
        given = {declared[0].name: given.pop("")}
    unknown = [n for n in given if n not in names]
    if unknown:
        raise UserError(f"{where}{FLAG} names '{unknown[0]}', which is not an input of the model",
                        f"its inputs: {', '.join(names)}")
    bound: dict[str, int] = {}  # symbol -> size, from the user's shapes
    for inp in declared:
        if inp.name in given:
            shape = given[inp.name]
            _check_given(inp, shape, where, resizable)
            bound.update({d: v for d, v in zip(inp.dims, shape, strict=True) if isinstance(d, str) and d != "?"})
    symbols = _batch_symbols(declared)
    out: list[InputInfo] = []
    open_inputs: list[tuple[DeclaredInput, list[int], list[int]]] = []
    for inp in declared:
        info = InputInfo(name=inp.name, shape=[], dtype=inp.dtype, source="model", declared=list(inp.dims))
        if inp.name in given:
            info.shape, info.source = list(given[inp.name]), "user"
            out.append(info)
            continue
        shape: list[int] = []
        still_open: list[int] = []
        assumed = False
        for axis, d in enumerate(inp.dims):
            if not _is_open(d):
                shape.append(int(d))
            elif isinstance(d, str) and d in bound:
                shape.append(bound[d])
                info.source = "user"
            elif _is_batch(inp, axis, symbols):
                shape.append(1)
                assumed = True
            else:
                shape.append(1)
                still_open.append(axis)
        if still_open:
            open_inputs.append((inp, still_open, shape))
        info.shape = shape
        if assumed and info.source == "model":
            info.source = "assumed batch 1"
        out.append(info)
    if open_inputs:
        raise _refusal(open_inputs, where)
    return out


def _check_given(inp: DeclaredInput, shape: list[int], where: str, resizable: bool) -> None:
    """A user shape must have the declared rank and, unless the model is resizable, keep its fixed dims."""
    declared = f"[{', '.join(_show(d) for d in inp.dims)}]"
    if len(shape) != len(inp.dims):
        raise UserError(f"{where}{FLAG} {inp.name}={format_shape(shape)} has {len(shape)} dims; the model declares "
                        f"{inp.name} {declared}", f"give {len(inp.dims)} dims")
    if resizable:
        return
    for axis, (d, v) in enumerate(zip(inp.dims, shape, strict=True)):
        if not _is_open(d) and int(d) != v:
            raise UserError(f"{where}{FLAG} {inp.name}={format_shape(shape)}: dim {axis} is fixed at {d} in the "
                            f"model ({inp.name} {declared})", f"keep {d} there; only the open dims can change")


def describe(info: InputInfo) -> str:
    """``images 1x3x320x320 float32 (user)``: one input as the table headers print it."""
    text = f"{info.name} {format_shape(info.shape) or 'scalar'} {info.dtype} ({info.source}"
    if info.source != "model" and info.declared is not None and info.declared != info.shape:
        text += f"; declared [{', '.join(_show(d) for d in info.declared)}]"
    text += ")"
    return text + (f"; {info.note}" if info.note else "")


def model_inputs(graph: Any) -> list[InputInfo]:
    """The inputs of a :class:`~tap_edge.graph.graph.ModelGraph` as planned (``meta["inputs"]`` written by the
    loaders; a graph without it, e.g. an old cache entry, reports its tensors' shapes as the model's)."""
    recorded = {d["name"]: d for d in graph.meta.get("inputs", []) if isinstance(d, dict)}
    out = []
    for name in graph.inputs:
        if name in recorded:
            out.append(InputInfo.model_validate(recorded[name]))
        else:
            t = graph.tensors[name]
            out.append(InputInfo(name=name, shape=list(t.shape), dtype=t.dtype, source="model"))
    return out


def user_shapes(inputs: list[InputInfo]) -> InputShapes | None:
    """The shapes a document's inputs were given with (to load the same graph again), None when none were."""
    return {i.name: list(i.shape) for i in inputs if i.source == "user"} or None


def as_input_shapes(value: InputShapes | str | Iterable[str] | None) -> InputShapes | None:
    """The Python faces' ``input_shapes``: a dict of dims, or the flag's text (one string or several)."""
    if value is None or isinstance(value, dict):
        return {k: [int(d) for d in v] for k, v in value.items()} if value else None
    return parse_input_shapes([value] if isinstance(value, str) else list(value), "input_shapes")


def input_lines(inputs: list[InputInfo], indent: str = "") -> list[str]:
    """The header lines a command prints for its inputs (plain text: print it without markup)."""
    return [f"{indent}input {describe(i)}" for i in inputs]
