"""A stand-in ``.tflite`` for a graph from PyTorch or ONNX: the int8 / 16x8 file tap-edge's TFLite path would
write for it, op for op, so a tool that reads ``.tflite`` files (Vela) can plan it before any conversion runs.

What the TFLite path writes (litert-torch, checked on the bundled models' files): NHWC tensors; a PAD before a conv
whose padding SAME cannot express (:func:`tap_edge.fit.memory.with_pad_ops`); ReLU / ReLU6 fused into the conv,
fully-connected or add; a conv whose filter sees one input channel per group as DEPTHWISE_CONV_2D (depth multiplier
out / in: ds_cnn's first layer); global average pooling as MEAN; per-channel symmetric int8 weights and int32
biases (int64 at 16x8). Memory planners see shapes, types and weights, not the quantization scales, which are
placeholders here. Weights are the model's own when given (int8, the layout of the front-end's ``weight_shape``),
else seeded stand-ins; an op the writer does not know is :class:`NotWritable` (the caller falls back to a model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tap_edge.fit.bits import BitAssignment, tensor_bits
from tap_edge.fit.memory import with_pad_ops
from tap_edge.graph.graph import ModelGraph, Op
from tap_edge.graph.tflite_ops import FN_BUILTINS, tflite_builtins

#: Activation scale of the stand-in tensors; fixed output quantization of the kernels that require one.
ACT_SCALE = 0.05
FIXED_OUTPUT = {"LOGISTIC": (1 / 256, -128), "TANH": (1 / 128, 0), "SOFTMAX": (1 / 256, -128),
                "LOG_SOFTMAX": (16 / 256, 127)}
_FUSED = {"relu": "RELU", "relu6": "RELU6"}
#: Builtins written from their operands alone (no options): one input, or two.
UNARY = ("LOG_SOFTMAX", "NEG", "ABS", "SQRT", "RSQRT", "SQUARE", "LOG", "EXP", "SIN", "COS", "FLOOR", "CEIL", "ROUND",
         "LOGISTIC", "TANH", "HARD_SWISH", "ELU", "RELU", "RELU6", "QUANTIZE", "DEQUANTIZE")
BINARY = ("MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "DIV", "SUB")


#: The metadata litert-torch writes into every model (name, bytes), kept here so the stand-in's flash matches.
LITERT_METADATA = (("min_runtime_version", b"2.0.0" + bytes(11)), ("keep_stablehlo_constant", b"true"))


def _tensor_map(name: str, index: int) -> Any:
    """One entry of a signature's inputs or outputs (litert-torch's ``serving_default`` names them)."""
    from ai_edge_litert import schema_py_generated as s

    tm = s.TensorMapT()
    tm.name, tm.tensorIndex = name.encode(), index
    return tm


class NotWritable(Exception):
    """The graph has an op (or a tensor type) the stand-in writer does not write; ``str()`` says which."""


class _Writer:
    """A .tflite built with the flatbuffer object API of ``ai_edge_litert`` (one subgraph)."""

    def __init__(self) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self.s = schema
        self.buffers = [schema.BufferT()]
        self.codes: list[Any] = []
        self.tensors: list[Any] = []
        self.ops: list[Any] = []
        self.index: dict[str, int] = {}

    def tensor(self, name: str, shape: list[int], ttype: int, data: np.ndarray | None = None,
               scales: list[float] | None = None, zero_point: int = 0, axis: int = 0) -> int:
        s = self.s
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), [int(x) for x in shape], ttype, 0
        if data is not None:
            buf = s.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if scales is not None:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint, q.quantizedDimension = [float(x) for x in scales], [zero_point] * len(scales), axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def ints(self, name: str, values: list[int]) -> int:
        return self.tensor(name, [len(values)], self.s.TensorType.INT32, np.asarray(values, np.int32))

    def op(self, builtin: str, inputs: list[int], outputs: list[int], options: tuple[str, dict[str, Any]] | None = None
           ) -> None:
        s = self.s
        code = getattr(s.BuiltinOperator, builtin)
        index = next((i for i, c in enumerate(self.codes) if c.builtinCode == code), None)
        if index is None:
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            self.codes.append(oc)
            index = len(self.codes) - 1
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = index, list(inputs), list(outputs)
        if options is not None:
            cls, fields = options
            opt = getattr(s, cls + "T")()
            for k, v in fields.items():
                setattr(opt, k, v)
            o.builtinOptionsType, o.builtinOptions = getattr(s.BuiltinOptions, cls), opt
        self.ops.append(o)

    def to_bytes(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        import flatbuffers

        s = self.s
        sg = s.SubGraphT()
        sg.name, sg.tensors, sg.operators, sg.inputs, sg.outputs = b"main", self.tensors, self.ops, inputs, outputs
        m = s.ModelT()
        m.version, m.subgraphs, m.buffers, m.operatorCodes = 3, [sg], self.buffers, self.codes
        m.description = description.encode()
        m.metadata = []
        for name, value in LITERT_METADATA:  # Vela keeps them: they are flash in the optimised model too
            buf = s.BufferT()
            buf.data = np.frombuffer(value, np.uint8)
            self.buffers.append(buf)
            md = s.MetadataT()
            md.name, md.buffer = name.encode(), len(self.buffers) - 1
            m.metadata.append(md)
        sig = s.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = b"serving_default", 0
        sig.inputs, sig.outputs = ([_tensor_map(f"{kind}_{i}", t) for i, t in enumerate(ts)]
                                   for kind, ts in (("args", inputs), ("output", outputs)))
        m.signatureDefs = [sig]
        b = flatbuffers.Builder(1 << 16)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def standin_tflite(graph: ModelGraph, bits: BitAssignment, weights: Mapping[str, np.ndarray] | None = None,
                   seed: int = 0) -> bytes:
    """The stand-in ``.tflite`` of ``graph`` at ``bits`` (see the module docstring); ``weights``: op name -> int8
    weights in the front-end's layout (``[out, in/groups, kh, kw]``, ``[out, in]``). Raises :class:`NotWritable`."""
    if graph.frontend == "tflite":
        raise NotWritable("the graph is a .tflite already: read the file itself")
    view = with_pad_ops(graph)
    tbits = tensor_bits(view, bits)
    nhwc = view.meta.get("layout") == "NHWC"
    w = _Writer()
    rng = np.random.default_rng(seed)
    alias: dict[str, str] = {}

    def ttype(name: str) -> int:
        a = tbits.get(name, 32)
        T = w.s.TensorType
        if a == 8:
            return T.INT8
        if a == 16:
            return T.INT16
        if a >= 32:
            return T.FLOAT32
        raise NotWritable(f"tensor '{name}' at {a}-bit activations")

    def shape_of(name: str) -> list[int]:
        shape = list(view.tensors[name].shape)
        return [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 and not nhwc else shape

    names = _litert_names(view)

    def act(name: str, fixed: str | None = None) -> int:
        name = alias.get(name, name)
        if name in w.index:
            return w.index[name]
        if name not in view.tensors:
            raise NotWritable(f"tensor '{name}' has no shape in the graph")
        tt = ttype(name)
        scales, zp = None, 0
        if tt != w.s.TensorType.FLOAT32:
            scales = [ACT_SCALE]
            if fixed in FIXED_OUTPUT:
                scale, zp8 = FIXED_OUTPUT[fixed]
                scales, zp = ([scale], zp8) if tt == w.s.TensorType.INT8 else ([1 / 32768], 0)
        w.index[name] = w.tensor(names.get(name, name), shape_of(name), tt, scales=scales, zero_point=zp)
        return w.index[name]

    for op in view.ops:
        _write_op(op, view, w, act, shape_of, alias, weights or {}, rng, tbits)
    ins = [act(t) for t in view.inputs]
    outs = [act(t) for t in view.outputs]
    return w.to_bytes(ins, outs, f"tap-edge stand-in of {graph.name} at {bits.label()}")


def _litert_names(graph: ModelGraph) -> dict[str, str]:
    """The tensor names litert-torch writes (they stay in Vela's output for the inputs, the outputs and the tensors
    of ops left to the CPU, so they cost flash): ``serving_default_args_N`` / ``serving_default_output_N_output``,
    else the module scopes of the ops fused into the producer (as :func:`tap_edge.fit.memory.flatbuffer_bytes`)."""
    out = {t: f"serving_default_args_{i}" for i, t in enumerate(graph.inputs)}
    for op in graph.ops:
        if "scope" in op.attrs:
            scoped = ";".join([op.attrs["scope"], *op.attrs.get("fused_scopes", [])])
            for t in op.outputs:
                out.setdefault(t, scoped)
    out.update({t: f"serving_default_output_{i}_output" for i, t in enumerate(graph.outputs)})
    return out


def _fused(op: Op) -> int:
    from ai_edge_litert import schema_py_generated as s

    fn = next((f for f in reversed(op.fused) if f in _FUSED), None)
    return getattr(s.ActivationFunctionType, _FUSED[fn]) if fn else s.ActivationFunctionType.NONE


def _int8_weights(op: Op, weights: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The op's int8 weights in the front-end's layout: the model's, else seeded values spread like a trained
    layer's (per-channel symmetric int8 of Gaussian weights: each channel reaches +-127)."""
    given = weights.get(op.name)
    if given is not None:
        arr = np.asarray(given)
        if list(arr.shape) != list(op.weight_shape or []):
            raise NotWritable(f"weights of '{op.name}' are {list(arr.shape)}, the op's {op.weight_shape}")
        return arr.astype(np.int8)
    shape = op.weight_shape or []
    x = rng.standard_normal((shape[0], max(1, math.prod(shape[1:]))))
    q = np.round(x / np.abs(x).max(axis=1, keepdims=True) * 127)
    return q.reshape(shape).astype(np.int8)


def _write_op(op: Op, g: ModelGraph, w: _Writer, act: Any, shape_of: Any, alias: dict[str, str],
              weights: Mapping[str, np.ndarray], rng: np.random.Generator, tbits: dict[str, int]) -> None:
    s = w.s
    T = s.TensorType
    cls = op.op_class
    if cls == "identity" or (cls == "reshape" and op.inputs and op.outputs
                             and shape_of(op.inputs[0]) == shape_of(op.outputs[0])):
        alias[op.outputs[0]] = alias.get(op.inputs[0], op.inputs[0])
        return
    if not op.outputs or any(t not in g.tensors for t in op.outputs):
        raise NotWritable(f"op '{op.name}' ({op.op_type}) has outputs without shapes")
    out = op.outputs[0]
    if cls in ("conv", "dwconv"):
        _conv(op, g, w, act, shape_of, weights, rng, tbits)
    elif cls == "fc":
        q = _int8_weights(op, weights, rng)
        a16 = tbits.get(out, 8) == 16
        f = w.tensor(f"{op.name}.weight", list(q.shape), T.INT8, q, [0.01] * q.shape[0])
        b = w.tensor(f"{op.name}.bias", [q.shape[0]], T.INT64 if a16 else T.INT32,
                     np.zeros(q.shape[0], np.int64 if a16 else np.int32), [0.0005] * q.shape[0])
        x = act(op.inputs[0])
        if len(w.tensors[x].shape) != 2:  # the converter flattens the input first
            flat = w.tensor(f"{op.name}.flat", [1, q.shape[1]], w.tensors[x].type, scales=[ACT_SCALE])
            w.op("RESHAPE", [x, w.ints(f"{op.name}.shape", [1, q.shape[1]])], [flat],
                 ("ReshapeOptions", {"newShape": [1, q.shape[1]]}))
            x = flat
        w.op("FULLY_CONNECTED", [x, f, b], [act(out)],
             ("FullyConnectedOptions", {"fusedActivationFunction": _fused(op)}))
    elif cls in ("add", "mul"):
        builtin = {"sub": "SUB"}.get(op.op_type.lower(), "MUL" if cls == "mul" else "ADD")
        ins = [act(t) for t in op.inputs[:2]]
        if len(ins) == 1:  # an operand that is a constant
            ins.append(w.tensor(f"{op.name}.const", [1], w.tensors[ins[0]].type, np.zeros(1, np.int8),
                                [ACT_SCALE]))
        w.op(builtin, ins, [act(out)], (f"{builtin.capitalize()}Options", {"fusedActivationFunction": _fused(op)}))
    elif cls == "global_pool":
        ins = shape_of(op.inputs[0])
        keep = len(shape_of(out)) == 4
        axes = w.ints(f"{op.name}.axes", [1, 2] if len(ins) == 4 else [len(ins) - 1])
        w.op("MEAN", [act(op.inputs[0]), axes], [act(out)], ("ReducerOptions", {"keepDims": keep}))
    elif cls == "pool":
        _pool(op, w, act, shape_of)
    elif cls == "reshape":
        shape = shape_of(out)
        w.op("RESHAPE", [act(op.inputs[0]), w.ints(f"{op.name}.shape", shape)], [act(out)],
             ("ReshapeOptions", {"newShape": shape}))
    elif cls == "pad":
        ins, outs = shape_of(op.inputs[0]), shape_of(out)
        pads = [[(o - i) // 2, (o - i) - (o - i) // 2] for i, o in zip(ins, outs, strict=True)]
        w.op("PAD", [act(op.inputs[0]), w.tensor(f"{op.name}.paddings", [len(pads), 2], T.INT32,
                                                 np.asarray(pads, np.int32))], [act(out)], ("PadOptions", {}))
    elif cls == "concat":
        outs = shape_of(out)
        axis = next((d for d in range(len(outs)) if any(shape_of(t)[d] != outs[d] for t in op.inputs)), len(outs) - 1)
        w.op("CONCATENATION", [act(t) for t in op.inputs], [act(out)],
             ("ConcatenationOptions", {"axis": axis, "fusedActivationFunction": _fused(op)}))
    elif cls == "softmax" and "log" in op.op_type.lower():
        w.op("LOG_SOFTMAX", [act(op.inputs[0])], [act(out, "LOG_SOFTMAX")], ("LogSoftmaxOptions", {}))
    elif cls == "softmax":
        w.op("SOFTMAX", [act(op.inputs[0])], [act(out, "SOFTMAX")], ("SoftmaxOptions", {"beta": 1.0}))
    elif cls == "quantize":
        w.op("QUANTIZE", [act(op.inputs[0])], [act(out)])
    elif cls == "act":
        _activation(op, w, act, shape_of)
    else:
        builtins = tflite_builtins(op.op_type, cls, op.attrs, g.frontend) or ()
        if len(builtins) == 1 and builtins[0] in UNARY and len(op.inputs) == 1:
            w.op(builtins[0], [act(op.inputs[0])], [act(out, builtins[0])])
        elif len(builtins) == 1 and builtins[0] in BINARY and len(op.inputs) == 2:
            w.op(builtins[0], [act(t) for t in op.inputs], [act(out)])
        else:
            raise NotWritable(f"op '{op.name}' ({op.op_type}, class {cls})")


def _conv(op: Op, g: ModelGraph, w: _Writer, act: Any, shape_of: Any, weights: Mapping[str, np.ndarray],
          rng: np.random.Generator, tbits: dict[str, int]) -> None:
    s = w.s
    T = s.TensorType
    q = _int8_weights(op, weights, rng)  # [out, in/groups, kh, kw]
    if q.ndim != 4:
        raise NotWritable(f"conv '{op.name}' with a {q.ndim}-d filter")
    x_name, out = op.inputs[0], op.outputs[0]
    n, h, wd, cin = shape_of(x_name)
    _, oh, ow, cout = shape_of(out)
    groups = int(op.attrs.get("groups", 1))
    kh, kw = q.shape[2], q.shape[3]
    sh, sw = (list(op.attrs.get("stride", [1, 1])) + [1, 1])[:2]
    dh, dw = (list(op.attrs.get("dilation", [1, 1])) + [1, 1])[:2]
    padded = x_name.endswith("::padded")  # with_pad_ops put the padding in a PAD op before it
    pad = "VALID" if padded else _padding(op, (h, wd), (oh, ow), (kh, kw), (sh, sw), (dh, dw))
    a16 = tbits.get(out, 8) == 16
    bias = w.tensor(f"{op.name}.bias", [cout], T.INT64 if a16 else T.INT32,
                    np.zeros(cout, np.int64 if a16 else np.int32), [0.0005] * cout)
    depthwise = q.shape[1] == 1 and groups == cin
    if depthwise:
        f = np.transpose(q, (1, 2, 3, 0))  # [1, kh, kw, out]
        filt = w.tensor(f"{op.name}.weight", list(f.shape), T.INT8, f, [0.01] * cout, axis=3)
        w.op("DEPTHWISE_CONV_2D", [act(x_name), filt, bias], [act(out)],
             ("DepthwiseConv2DOptions", {"padding": getattr(s.Padding, pad), "strideH": sh, "strideW": sw,
                                         "depthMultiplier": cout // cin, "dilationHFactor": dh, "dilationWFactor": dw,
                                         "fusedActivationFunction": _fused(op)}))
        return
    if groups != 1:
        raise NotWritable(f"grouped conv '{op.name}' ({groups} groups)")
    f = np.transpose(q, (0, 2, 3, 1))  # [out, kh, kw, in]
    filt = w.tensor(f"{op.name}.weight", list(f.shape), T.INT8, f, [0.01] * cout, axis=0)
    w.op("CONV_2D", [act(x_name), filt, bias], [act(out)],
         ("Conv2DOptions", {"padding": getattr(s.Padding, pad), "strideH": sh, "strideW": sw, "dilationHFactor": dh,
                            "dilationWFactor": dw, "fusedActivationFunction": _fused(op)}))


def _padding(op: Op, size: tuple[int, int], out: tuple[int, int], k: tuple[int, int], stride: tuple[int, int],
             dil: tuple[int, int]) -> str:
    """``SAME`` or ``VALID``: the TFLite padding that gives the op's output size with its pads."""
    pads = list(op.attrs.get("padding", [0, 0, 0, 0]))
    if not any(pads):
        return "VALID"
    same = all(o == math.ceil(i / s) for i, o, s in zip(size, out, stride, strict=True))
    if same:
        return "SAME"
    raise NotWritable(f"conv '{op.name}' padding {pads} is neither SAME nor VALID")


def _pool(op: Op, w: _Writer, act: Any, shape_of: Any) -> None:
    s = w.s
    ins, outs = shape_of(op.inputs[0]), shape_of(op.outputs[0])
    if len(ins) != 4:
        raise NotWritable(f"pool '{op.name}' on a {len(ins)}-d tensor")
    sh, sw = max(1, math.ceil(ins[1] / outs[1])), max(1, math.ceil(ins[2] / outs[2]))
    valid = outs[1] * sh == ins[1] and outs[2] * sw == ins[2]
    builtin = "MAX_POOL_2D" if "max" in op.op_type.lower() else "AVERAGE_POOL_2D"
    w.op(builtin, [act(op.inputs[0])], [act(op.outputs[0])],
         ("Pool2DOptions", {"padding": s.Padding.VALID if valid else s.Padding.SAME, "strideH": sh, "strideW": sw,
                            "filterHeight": sh, "filterWidth": sw}))


def _activation(op: Op, w: _Writer, act: Any, shape_of: Any) -> None:
    """An activation as the builtins a converter emits (SiLU: LOGISTIC then MUL; hard-sigmoid: ADD, RELU6, MUL)."""
    fn = str(op.attrs.get("fn", ""))
    builtins = FN_BUILTINS.get(fn)
    if not builtins:
        raise NotWritable(f"activation '{op.name}' ({fn or op.op_type})")
    x = act(op.inputs[0])
    src = x
    for i, builtin in enumerate(builtins):
        last = i == len(builtins) - 1
        ttype = w.tensors[x].type
        scale, zp = FIXED_OUTPUT.get(builtin, (ACT_SCALE, 0))
        dst = act(op.outputs[0], builtin) if last else w.tensor(
            f"{op.name}.{builtin.lower()}", list(w.tensors[x].shape), ttype,
            scales=None if ttype == w.s.TensorType.FLOAT32 else [scale],
            zero_point=zp if ttype == w.s.TensorType.INT8 else 0)
        if builtin in ("MUL", "ADD"):  # x * sigmoid(x); relu6(x + 3) / 6 (a constant operand)
            other = x if builtin == "MUL" and fn in ("silu", "swish") else w.tensor(
                f"{op.name}.{builtin.lower()}_const", [1], w.tensors[x].type, np.zeros(1, np.int8), [ACT_SCALE])
            w.op(builtin, [src, other], [dst], (f"{builtin.capitalize()}Options", {}))
        elif builtin == "LEAKY_RELU":
            w.op(builtin, [src], [dst], ("LeakyReluOptions", {"alpha": 0.01}))
        else:
            w.op(builtin, [src], [dst])
        src = dst
