"""Can a runtime run an op at its widths? The per-builtin tables of a runtime family first, op classes second.

A ``.tflite`` op is looked up by its builtin, with the numeric type of the tensors the kernel checks (its
first float / quantized input: a DEQUANTIZE of a float16 constant is ``f16``, a QUANTIZE is its output's type);
an op of a PyTorch or ONNX graph by the builtins a converter lowers it to (:mod:`tap_edge.graph.tflite_ops`) at
the plan's widths. Runtimes without a builtin table (ONNX Runtime, Core ML, ...) and ops with no known
lowering use the class tables (``ops``, ``weights``, ``activations``, ``pairs``).
"""

from __future__ import annotations

from tap_edge.devices import Runtime
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.graph import DTYPE_BITS, QUANTIZABLE_CLASSES, ModelGraph, Op
from tap_edge.graph.tflite_ops import tflite_builtins

#: Tensor dtype -> the type letter of a TFLite kernel (None: index / bool / resource data, not checked).
_DTYPE_KEYS = {"float32": "a32", "int8": "a8", "int16": "a16", "float16": "f16", "uint8": "a8"}
#: Classes whose tensors' types no kernel table constrains here (state handles, subgraph calls, shapes).
_NO_TYPE_CHECK = ("variable", "control", "identity", "shape", "cast")


def _native_key(op: Op, graph: ModelGraph) -> str | None:
    """The type a ``.tflite`` kernel checks: its first float / quantized input (a constant's type when the
    front-end recorded it in ``attrs["input_dtype"]``), QUANTIZE: its output."""
    if op.op_type != "QUANTIZE" and op.attrs.get("input_dtype") in _DTYPE_KEYS:
        return _DTYPE_KEYS[op.attrs["input_dtype"]]
    names = op.outputs if op.op_type == "QUANTIZE" else op.inputs + op.outputs
    for name in names:
        t = graph.tensors.get(name)
        if t is not None and t.dtype in _DTYPE_KEYS:
            return _DTYPE_KEYS[t.dtype]
    return None


def op_type_key(op: Op, graph: ModelGraph, bits: BitAssignment, tbits: dict[str, int]) -> str | None:
    """The numeric type of ``op`` as the runtime tables write it (``a8``, ``a16w8``, ``a32w16``, ``f16``)."""
    if bits.native:
        key = _native_key(op, graph)
        if key is None or key == "f16" or op.op_class not in QUANTIZABLE_CLASSES:
            return key
        if op.weight_shape:
            return f"{key}w{bits.weight_bits(op)}"
        filt = graph.tensors.get(op.inputs[1]) if len(op.inputs) > 1 else None  # weights computed at run time
        return f"{key}w{DTYPE_BITS.get(filt.dtype, 32)}" if filt is not None else key
    widths = [tbits[t] for t in op.outputs if t in tbits] or [tbits[t] for t in op.inputs if t in tbits]
    if not widths:
        return None
    a = max(widths)
    return f"a{a}w{bits.weight_bits(op)}" if op.quantizable else f"a{a}"


def _per_channel(op: Op, bits: BitAssignment) -> bool:
    """Per-channel weight scales: what the file says, else tap-edge's own quantization (per output channel)."""
    quant = op.attrs.get("weight_quant")
    return quant == "per_channel" if quant is not None else not bits.native


def _fmt_types(types: list[str]) -> str:
    return ", ".join(types) if types else "none"


def support_problem(op: Op, graph: ModelGraph, bits: BitAssignment, runtime: Runtime,
                    tbits: dict[str, int]) -> str | None:
    """Why ``runtime`` cannot run ``op`` at its widths (one sentence with the source of the fact), or None."""
    if op.op_class == "identity":
        return None  # dropped by converters
    if op.op_class == "custom":
        if op.op_type in runtime.custom_ops:
            return None
        return f"custom op {op.op_type} is not registered by {runtime.name} (register it in the application)"
    builtins = tflite_builtins(op.op_type, op.op_class, op.attrs, graph.frontend) if runtime.has_builtins else None
    if builtins:
        return _builtin_problem(op, builtins, graph, bits, runtime, tbits)
    return _class_problem(op, bits, runtime, tbits)


def _builtin_problem(op: Op, builtins: tuple[str, ...], graph: ModelGraph, bits: BitAssignment,
                     runtime: Runtime, tbits: dict[str, int]) -> str | None:
    key = op_type_key(op, graph, bits, tbits)
    lowered = "" if graph.frontend == "tflite" else f" ({op.op_type} becomes {' + '.join(builtins)})"
    for b in builtins:
        sup = runtime.builtin(b)
        if sup is None:
            src = runtime.source_of("registered")
            return f"{b} is not registered by {runtime.name}{lowered}" + (f" [{src}]" if src else "")
        if op.op_class in _NO_TYPE_CHECK or key is None or op.attrs.get("weight_storage"):
            continue  # a weight's storage (DEQUANTIZE / DENSIFY of a constant): its consumer's type says
        if key not in sup.types:
            what = _describe(key)
            src = runtime.source_of(sup.source)
            return (f"{b} has no {what} kernel in {runtime.name}{lowered} (takes {_fmt_types(sup.types)})"
                    + (f" [{src}]" if src else ""))
        if key in sup.per_tensor_only and _per_channel(op, bits):
            src = runtime.source_of(sup.source)
            return (f"{b} takes {_describe(key)} only with per-tensor weight scales in {runtime.name}; these are "
                    "per-channel" + (f" [{src}]" if src else ""))
    return None


def _describe(key: str) -> str:
    """``a8w4`` -> 'int8 x int4', ``a32w16`` -> 'float32 x float16-weight', ``f16`` -> 'float16 input'."""
    names = {"8": "int8", "16": "int16", "32": "float32", "4": "int4"}
    if key == "f16":
        return "float16-input"
    a, _, w = key[1:].partition("w")
    if not w:
        return names.get(a, key)
    wname = "float16" if w == "16" else names.get(w, w)
    return f"{names.get(a, a)} x {wname}-weight"


def _class_problem(op: Op, bits: BitAssignment, runtime: Runtime, tbits: dict[str, int]) -> str | None:
    if not runtime.supports_op(op.op_class):
        what = f"op {op.op_type}" if op.op_class == "unknown" else f"op class {op.op_class} ({op.op_type})"
        return f"{what} not supported by {runtime.name}"
    w = None
    if op.quantizable or (bits.native and op.weight_shape):
        w = bits.weight_bits(op)
        if w not in runtime.weight_bits(op.op_class):
            return (f"{w}-bit weights on {op.op_class} not supported by {runtime.name} "
                    f"(supports {runtime.weight_bits(op.op_class)})")
    if op.op_class in (*_NO_TYPE_CHECK, "quantize") or op.attrs.get("weight_storage"):
        return None  # width converters and weight storage: their outputs are not a kernel's activations
    for t in op.outputs:
        a = tbits.get(t)
        if a is None:
            continue
        if a not in runtime.activation_bits(op.op_class):
            return (f"{a}-bit activations on {op.op_class} not supported by {runtime.name} "
                    f"(supports {runtime.activation_bits(op.op_class)})")
        if w is not None and not runtime.pair_allowed(op.op_class, w, a):
            return (f"w{w}a{a} on {op.op_class} not supported by {runtime.name} "
                    f"(takes {', '.join(runtime.pairs[op.op_class])})")
        break
    return None
