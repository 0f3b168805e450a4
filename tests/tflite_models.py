"""Small .tflite models written with the flatbuffer schema classes that ship in ai_edge_litert (no TensorFlow
converter needed), and a child-process runner that builds and invokes them in TFLite Micro and LiteRT.

``single_op_model(builtin, dtype)`` makes a model holding one op of a TFLite builtin at one numeric type
(``a32w32`` float32, ``a8w8`` int8, ``a8w4`` int8 activations with int4 weights, ``a16w8`` 16x8, ``a32w16``
float16 weights expanded by DEQUANTIZE, ``a32`` / ``a8`` / ``a16`` for ops without weights); the runtime-support
tests build one per (op class, dtype) the memory model calls supported and run it in the real interpreters.
``run_in_child`` keeps a TFLM crash (a segfault on a malformed model) from taking the test process down.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

B = schema.BuiltinOperator
T = schema.TensorType
OPT = schema.BuiltinOptions

_NP = {T.FLOAT32: np.float32, T.FLOAT16: np.float16, T.INT8: np.int8, T.INT16: np.int16, T.INT32: np.int32,
       T.INT64: np.int64, T.BOOL: np.bool_, T.UINT8: np.uint8}
ACT_TYPES = {8: T.INT8, 16: T.INT16, 32: T.FLOAT32}


@dataclass
class Subgraph:
    """One subgraph under construction: tensors, operators, inputs and outputs (indices)."""

    name: str = "main"
    tensors: list[Any] = field(default_factory=list)
    ops: list[Any] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)


class ModelWriter:
    """Builds a .tflite flatbuffer with the object API; subgraph 0 is the main one."""

    def __init__(self) -> None:
        self.buffers = [schema.BufferT()]
        self.codes: list[Any] = []
        self.subgraphs = [Subgraph()]
        self.sg = self.subgraphs[0]

    def subgraph(self, name: str) -> int:
        """Start a new subgraph (tensors and ops go there until :meth:`use` switches back); returns its index."""
        self.subgraphs.append(Subgraph(name))
        self.sg = self.subgraphs[-1]
        return len(self.subgraphs) - 1

    def use(self, index: int) -> None:
        self.sg = self.subgraphs[index]

    def tensor(self, name: str, shape: list[int], ttype: int = T.FLOAT32, data: np.ndarray | None = None,
               scale: float | list[float] | None = None, zero_point: int | list[int] = 0,
               variable: bool = False) -> int:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer, t.isVariable = name.encode(), list(shape), ttype, 0, variable
        if data is not None:
            buf = schema.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8).tolist()
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if scale is None and ttype in (T.INT8, T.INT16, T.INT4):
            scale = 0.05
        if scale is not None:
            q = schema.QuantizationParametersT()
            scales = scale if isinstance(scale, list) else [scale]
            zps = zero_point if isinstance(zero_point, list) else [zero_point] * len(scales)
            q.scale, q.zeroPoint = [float(s) for s in scales], [int(z) for z in zps]
            q.quantizedDimension = 0
            t.quantization = q
        self.sg.tensors.append(t)
        return len(self.sg.tensors) - 1

    def const(self, name: str, shape: list[int], ttype: int = T.FLOAT32, values: np.ndarray | None = None,
              scale: float | list[float] | None = None, seed: int = 0) -> int:
        """A constant with data: ``values`` or small random numbers of the type (INT4 packed two per byte)."""
        rng = np.random.default_rng(seed)
        n = math.prod(shape)
        if values is None:
            if ttype == T.INT4:
                values = rng.integers(0, 256, (n + 1) // 2).astype(np.uint8)
            elif ttype in (T.FLOAT32, T.FLOAT16):
                values = (rng.standard_normal(n) * 0.1).astype(_NP[ttype])
            elif ttype == T.INT32 or ttype == T.INT64:
                values = rng.integers(-100, 100, n).astype(_NP[ttype])
            else:
                values = rng.integers(-20, 20, n).astype(_NP.get(ttype, np.int8))
        if scale is None and ttype in (T.INT8, T.INT4, T.INT16) and len(shape) > 1:
            scale = [0.01] * shape[0] if PER_CHANNEL["on"] else 0.01  # per-channel along dimension 0
        if scale is None and ttype == T.INT32 and name.endswith("bias"):
            scale = 0.0005
        return self.tensor(name, shape, ttype, np.asarray(values), scale)

    def ints(self, name: str, values: list[int], ttype: int = T.INT32) -> int:
        return self.tensor(name, [len(values)], ttype, np.asarray(values, dtype=_NP[ttype]))

    def op(self, code: int, inputs: list[int], outputs: list[int], options: Any = None, options_type: int = 0,
           custom: str | None = None) -> None:
        key = (code, custom)
        index = next((i for i, c in enumerate(self.codes) if (c.builtinCode, c.customCode and
                                                             c.customCode.decode()) == key), None)
        if index is None:
            oc = schema.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), _MIN_VERSION.get(code, 1)
            if custom:
                oc.customCode = custom.encode()
            self.codes.append(oc)
            index = len(self.codes) - 1
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = index, list(inputs), list(outputs)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.sg.ops.append(o)

    def io(self, inputs: list[int], outputs: list[int]) -> None:
        self.sg.inputs, self.sg.outputs = list(inputs), list(outputs)

    def to_bytes(self) -> bytes:
        import flatbuffers

        subgraphs = []
        for s in self.subgraphs:
            sg = schema.SubGraphT()
            sg.name = s.name.encode()
            sg.tensors, sg.inputs, sg.outputs, sg.operators = s.tensors, s.inputs, s.outputs, s.ops
            subgraphs.append(sg)
        m = schema.ModelT()
        m.version, m.subgraphs, m.buffers, m.operatorCodes = 3, subgraphs, self.buffers, self.codes
        m.description = b"tap-edge test model"
        b = flatbuffers.Builder(1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    def write(self, path: Path) -> Path:
        path.write_bytes(self.to_bytes())
        return path


def _opts(cls_name: str, **fields: Any) -> Any:
    o = getattr(schema, cls_name)()
    for k, v in fields.items():
        setattr(o, k, v)
    return o


# ---- one-op models per builtin ------------------------------------------------------------------------------
#: Weight quantization of the model being written: per-channel (the converters' default) or per-tensor.
PER_CHANNEL = {"on": True}


def parse_dtype(dtype: str) -> tuple[int, int | None]:
    """``a8w4`` -> (8, 4); ``a32`` -> (32, None); a ``-pt`` suffix (``a8w4-pt``) asks for per-tensor weights."""
    PER_CHANNEL["on"] = not dtype.endswith("-pt")
    a, _, w = dtype.removesuffix("-pt")[1:].partition("w")
    return int(a), (int(w) if w else None)


def _weights(w: Any, name: str, shape: list[int], w_bits: int) -> int:
    """A weight operand at ``w_bits``: int8 / int4 / float32 constant, or float16 expanded by DEQUANTIZE."""
    if w_bits == 8:
        return w.const(name, shape, T.INT8)
    if w_bits == 4:
        return w.const(name, shape, T.INT4)
    if w_bits == 32:
        return w.const(name, shape, T.FLOAT32)
    if w_bits == 16:
        half = w.const(f"{name}_fp16", shape, T.FLOAT16)
        full = w.tensor(name, shape, T.FLOAT32)
        w.op(B.DEQUANTIZE, [half], [full])
        return full
    raise ValueError(f"no {w_bits}-bit weights")


def _bias(w: Any, name: str, n: int, a_bits: int) -> int:
    """Bias quantized as the converter does: scale = input scale x filter scale, one per output channel."""
    if a_bits == 32:
        return w.const(name, [n], T.FLOAT32)
    scale = [0.05 * 0.01] * n if PER_CHANNEL["on"] else 0.05 * 0.01
    return w.const(name, [n], T.INT64 if a_bits == 16 else T.INT32, scale=scale)


def _act(w: Any, name: str, shape: list[int], a_bits: int) -> int:
    return w.tensor(name, shape, ACT_TYPES[a_bits])


#: Output quantization TFLite's kernels require: (int8 scale, int8 zero point, int16 scale).
_FIXED_OUTPUT = {B.LOGISTIC: (1 / 256, -128, 1 / 32768), B.TANH: (1 / 128, 0, 1 / 32768),
                 B.LOG_SOFTMAX: (16 / 256, 127, 1 / 32768), B.L2_NORMALIZATION: (1 / 128, 0, 1 / 32768)}
#: Operator versions LiteRT registers from (version 1 is refused for these).
_MIN_VERSION = {B.BROADCAST_TO: 2}


def _unary(code: int, options: tuple[str, int] | None = None, shape: list[int] | None = None,
           **fields: Any) -> Callable[[ModelWriter, int, int | None], None]:
    def build(w: ModelWriter, a: int, _wb: int | None) -> None:
        s = shape or [1, 4, 4, 8]
        if code in _FIXED_OUTPUT and a != 32:
            s8, z8, s16 = _FIXED_OUTPUT[code]
            x = w.tensor("x", s, ACT_TYPES[a], scale=2.0 ** -12 if a == 16 else 0.05)
            y = w.tensor("y", s, ACT_TYPES[a], scale=s8 if a == 8 else s16, zero_point=z8 if a == 8 else 0)
        else:
            x, y = _act(w, "x", s, a), _act(w, "y", s, a)
        opt = _opts(options[0], **fields) if options else None
        w.op(code, [x], [y], opt, options[1] if options else 0)
        w.io([x], [y])
    return build


def _binary(code: int, options: tuple[str, int] | None = None, out_type: int | None = None
            ) -> Callable[[ModelWriter, int, int | None], None]:
    def build(w: ModelWriter, a: int, _wb: int | None) -> None:
        x, x2 = _act(w, "x", [1, 4, 4, 8], a), _act(w, "x2", [1, 4, 4, 8], a)
        y = w.tensor("y", [1, 4, 4, 8], out_type) if out_type is not None else _act(w, "y", [1, 4, 4, 8], a)
        w.op(code, [x, x2], [y], _opts(options[0]) if options else None, options[1] if options else 0)
        w.io([x, x2], [y])
    return build


def _conv(w: ModelWriter, a: int, wb: int | None) -> None:
    x, y = _act(w, "x", [1, 8, 8, 3], a), _act(w, "y", [1, 8, 8, 4], a)
    f = _weights(w, "filter", [4, 3, 3, 3], wb or a)
    w.op(B.CONV_2D, [x, f, _bias(w, "bias", 4, a)], [y],
         _opts("Conv2DOptionsT", padding=schema.Padding.SAME, strideH=1, strideW=1, dilationHFactor=1,
               dilationWFactor=1), OPT.Conv2DOptions)
    w.io([x], [y])


def _dwconv(w: ModelWriter, a: int, wb: int | None) -> None:
    x, y = _act(w, "x", [1, 8, 8, 4], a), _act(w, "y", [1, 8, 8, 4], a)
    f = _weights(w, "filter", [1, 3, 3, 4], wb or a)
    if wb in (8, 4) and PER_CHANNEL["on"]:  # depthwise filters are quantized along the last dimension
        w.sg.tensors[f].quantization.quantizedDimension = 3
        w.sg.tensors[f].quantization.scale = [0.01] * 4
        w.sg.tensors[f].quantization.zeroPoint = [0] * 4
    w.op(B.DEPTHWISE_CONV_2D, [x, f, _bias(w, "bias", 4, a)], [y],
         _opts("DepthwiseConv2DOptionsT", padding=schema.Padding.SAME, strideH=1, strideW=1, depthMultiplier=1,
               dilationHFactor=1, dilationWFactor=1), OPT.DepthwiseConv2DOptions)
    w.io([x], [y])


def _fc(w: ModelWriter, a: int, wb: int | None) -> None:
    x, y = _act(w, "x", [1, 16], a), _act(w, "y", [1, 8], a)
    f = _weights(w, "filter", [8, 16], wb or a)
    w.op(B.FULLY_CONNECTED, [x, f, _bias(w, "bias", 8, a)], [y], _opts("FullyConnectedOptionsT"),
         OPT.FullyConnectedOptions)
    w.io([x], [y])


def _batch_matmul(w: ModelWriter, a: int, wb: int | None) -> None:
    """lhs [1, 4, 16] x constant rhs [1, 16, 8] (adj_y false: TFLM keeps a transposed copy of rhs)."""
    x, y = _act(w, "x", [1, 4, 16], a), _act(w, "y", [1, 4, 8], a)
    rhs = w.const("rhs", [1, 16, 8], ACT_TYPES[a], scale=0.05 if a != 32 else None)
    w.op(B.BATCH_MATMUL, [x, rhs], [y], _opts("BatchMatMulOptionsT"), OPT.BatchMatMulOptions)
    w.io([x], [y])


def _concat(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, x2, y = _act(w, "x", [1, 4, 4, 8], a), _act(w, "x2", [1, 4, 4, 8], a), _act(w, "y", [1, 4, 4, 16], a)
    w.op(B.CONCATENATION, [x, x2], [y], _opts("ConcatenationOptionsT", axis=3), OPT.ConcatenationOptions)
    w.io([x, x2], [y])


def _pool(code: int) -> Callable[[ModelWriter, int, int | None], None]:
    def build(w: ModelWriter, a: int, _wb: int | None) -> None:
        x, y = _act(w, "x", [1, 8, 8, 4], a), _act(w, "y", [1, 4, 4, 4], a)
        w.op(code, [x], [y], _opts("Pool2DOptionsT", padding=schema.Padding.VALID, strideH=2, strideW=2,
                                   filterHeight=2, filterWidth=2), OPT.Pool2DOptions)
        w.io([x], [y])
    return build


def _mean(axes: list[int], out: list[int]) -> Callable[[ModelWriter, int, int | None], None]:
    def build(w: ModelWriter, a: int, _wb: int | None) -> None:
        x, y = _act(w, "x", [1, 4, 4, 8], a), _act(w, "y", out, a)
        w.op(B.MEAN, [x, w.ints("axes", axes)], [y], _opts("ReducerOptionsT", keepDims=True),
             OPT.ReducerOptions)
        w.io([x], [y])
    return build


def _reducer(code: int) -> Callable[[ModelWriter, int, int | None], None]:
    def build(w: ModelWriter, a: int, _wb: int | None) -> None:
        x, y = _act(w, "x", [1, 4, 4, 8], a), _act(w, "y", [1, 4, 4, 1], a)
        w.op(code, [x, w.ints("axes", [3])], [y], _opts("ReducerOptionsT", keepDims=True), OPT.ReducerOptions)
        w.io([x], [y])
    return build


def _softmax(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, y = _act(w, "x", [1, 10], a), w.tensor("y", [1, 10], ACT_TYPES[a],
                                               scale=1 / 256 if a == 8 else (1 / 32768 if a == 16 else None),
                                               zero_point=-128 if a == 8 else 0)
    w.op(B.SOFTMAX, [x], [y], _opts("SoftmaxOptionsT", beta=1.0), OPT.SoftmaxOptions)
    w.io([x], [y])


def _reshape(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, y = _act(w, "x", [1, 4, 4, 8], a), _act(w, "y", [1, 128], a)
    w.op(B.RESHAPE, [x, w.ints("shape", [1, 128])], [y])
    w.io([x], [y])


def _transpose(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, y = _act(w, "x", [1, 4, 6, 8], a), _act(w, "y", [1, 8, 4, 6], a)
    w.op(B.TRANSPOSE, [x, w.ints("perm", [0, 3, 1, 2])], [y])
    w.io([x], [y])


def _pad(code: int) -> Callable[[ModelWriter, int, int | None], None]:
    def build(w: ModelWriter, a: int, _wb: int | None) -> None:
        x, y = _act(w, "x", [1, 4, 4, 8], a), _act(w, "y", [1, 6, 6, 8], a)
        pads = w.tensor("pads", [4, 2], T.INT32, np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))
        if code == B.MIRROR_PAD:
            w.op(code, [x, pads], [y], _opts("MirrorPadOptionsT", mode=schema.MirrorPadMode.REFLECT),
                 OPT.MirrorPadOptions)
        elif code == B.PADV2:
            value = w.const("value", [1], ACT_TYPES[a], values=np.zeros(1, _NP[ACT_TYPES[a]]),
                            scale=0.05 if a != 32 else None)
            w.op(code, [x, pads, value], [y])
        else:
            w.op(code, [x, pads], [y])
        w.io([x], [y])
    return build


def _resize(code: int) -> Callable[[ModelWriter, int, int | None], None]:
    def build(w: ModelWriter, a: int, _wb: int | None) -> None:
        x, y = _act(w, "x", [1, 4, 4, 8], a), _act(w, "y", [1, 8, 8, 8], a)
        cls, typ = (("ResizeBilinearOptionsT", OPT.ResizeBilinearOptions) if code == B.RESIZE_BILINEAR
                    else ("ResizeNearestNeighborOptionsT", OPT.ResizeNearestNeighborOptions))
        w.op(code, [x, w.ints("size", [8, 8])], [y], _opts(cls), typ)
        w.io([x], [y])
    return build


def _strided_slice(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, y = _act(w, "x", [1, 4, 4, 8], a), _act(w, "y", [1, 2, 4, 8], a)
    w.op(B.STRIDED_SLICE, [x, w.ints("begin", [0, 0, 0, 0]), w.ints("end", [1, 2, 4, 8]),
                           w.ints("strides", [1, 1, 1, 1])], [y], _opts("StridedSliceOptionsT"),
         OPT.StridedSliceOptions)
    w.io([x], [y])


def _gather(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, y = _act(w, "x", [10, 8], a), _act(w, "y", [3, 8], a)
    w.op(B.GATHER, [x, w.ints("idx", [1, 4, 7])], [y], _opts("GatherOptionsT", axis=0), OPT.GatherOptions)
    w.io([x], [y])


def _quantize(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, y = w.tensor("x", [1, 16], T.FLOAT32), _act(w, "y", [1, 16], a)
    w.op(B.QUANTIZE, [x], [y])
    w.io([x], [y])


def _dequantize(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, y = _act(w, "x", [1, 16], a), w.tensor("y", [1, 16], T.FLOAT32)
    w.op(B.DEQUANTIZE, [x], [y])
    w.io([x], [y])


def _dequantize_fp16(w: ModelWriter, _a: int, _wb: int | None) -> None:
    """A float16 constant expanded by DEQUANTIZE, added to the input (how float16-weight models store data)."""
    half = w.const("c_fp16", [1, 16], T.FLOAT16)
    c = w.tensor("c", [1, 16], T.FLOAT32)
    w.op(B.DEQUANTIZE, [half], [c])
    x, y = w.tensor("x", [1, 16]), w.tensor("y", [1, 16])
    w.op(B.ADD, [x, c], [y], _opts("AddOptionsT"), OPT.AddOptions)
    w.io([x], [y])


def _embedding(w: ModelWriter, a: int, _wb: int | None) -> None:
    ids, y = w.tensor("ids", [3], T.INT32), _act(w, "y", [3, 8], a)
    table = w.const("table", [10, 8], ACT_TYPES[a], scale=0.05 if a != 32 else None)
    w.op(B.EMBEDDING_LOOKUP, [ids, table], [y])
    w.io([ids], [y])


def _select(w: ModelWriter, a: int, _wb: int | None) -> None:
    cond = w.tensor("cond", [1, 16], T.BOOL)
    x, x2, y = _act(w, "x", [1, 16], a), _act(w, "x2", [1, 16], a), _act(w, "y", [1, 16], a)
    w.op(B.SELECT_V2, [cond, x, x2], [y], _opts("SelectV2OptionsT"), OPT.SelectV2Options)
    w.io([cond, x, x2], [y])


def _shape(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, y = _act(w, "x", [1, 4, 4, 8], a), w.tensor("y", [4], T.INT32)
    w.op(B.SHAPE, [x], [y], _opts("ShapeOptionsT", outType=T.INT32), OPT.ShapeOptions)
    w.io([x], [y])


def _cast(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, y = _act(w, "x", [1, 16], a), w.tensor("y", [1, 16], T.INT32)
    w.op(B.CAST, [x], [y])
    w.io([x], [y])


def _variables(w: ModelWriter, a: int, _wb: int | None) -> None:
    """A streaming state: CALL_ONCE runs an init subgraph that assigns zeros to a resource variable; the main
    subgraph reads it, adds the input and assigns the sum back (microWakeWord's pattern)."""
    shape = [1, 16]
    x = _act(w, "x", shape, a)
    h = w.tensor("handle", [], T.RESOURCE)
    w.op(B.CALL_ONCE, [], [], _opts("CallOnceOptionsT", initSubgraphIndex=1), OPT.CallOnceOptions)
    w.op(B.VAR_HANDLE, [], [h], _opts("VarHandleOptionsT", sharedName=b"state"), OPT.VarHandleOptions)
    s = _act(w, "state", shape, a)
    w.op(B.READ_VARIABLE, [h], [s])
    y = _act(w, "y", shape, a)
    w.op(B.ADD, [x, s], [y], _opts("AddOptionsT"), OPT.AddOptions)
    w.op(B.ASSIGN_VARIABLE, [h, y], [])
    w.io([x], [y])
    w.subgraph("init")
    h2 = w.tensor("handle", [], T.RESOURCE)
    zeros = w.const("zeros", shape, ACT_TYPES[a], values=np.zeros(math.prod(shape), _NP[ACT_TYPES[a]]),
                    scale=0.05 if a != 32 else None)
    w.op(B.VAR_HANDLE, [], [h2], _opts("VarHandleOptionsT", sharedName=b"state"), OPT.VarHandleOptions)
    w.op(B.ASSIGN_VARIABLE, [h2, zeros], [])
    w.io([], [])
    w.use(0)


def _if(w: ModelWriter, a: int, _wb: int | None) -> None:
    """IF(cond, x): then-branch adds a constant, else-branch multiplies by it."""
    cond, x, y = w.tensor("cond", [1], T.BOOL), _act(w, "x", [1, 16], a), _act(w, "y", [1, 16], a)
    w.op(B.IF, [cond, x], [y], _opts("IfOptionsT", thenSubgraphIndex=1, elseSubgraphIndex=2), OPT.IfOptions)
    w.io([cond, x], [y])
    for name, code, opt, typ in (("then", B.ADD, "AddOptionsT", OPT.AddOptions),
                                 ("else", B.MUL, "MulOptionsT", OPT.MulOptions)):
        w.subgraph(name)
        bx, by = _act(w, "x", [1, 16], a), _act(w, "y", [1, 16], a)
        c = w.const("c", [1, 16], ACT_TYPES[a], scale=0.05 if a != 32 else None)
        w.op(code, [bx, c], [by], _opts(opt), typ)
        w.io([bx], [by])
    w.use(0)


def _while(w: ModelWriter, a: int, _wb: int | None) -> None:
    """WHILE(i < 3): i += 1, x = x + x."""
    i, x = w.tensor("i", [1], T.INT32), _act(w, "x", [1, 16], a)
    i_out, y = w.tensor("i_out", [1], T.INT32), _act(w, "y", [1, 16], a)
    w.op(B.WHILE, [i, x], [i_out, y], _opts("WhileOptionsT", condSubgraphIndex=1, bodySubgraphIndex=2),
         OPT.WhileOptions)
    w.io([i, x], [i_out, y])
    w.subgraph("cond")
    ci, cx, out = w.tensor("i", [1], T.INT32), _act(w, "x", [1, 16], a), w.tensor("c", [1], T.BOOL)
    w.op(B.LESS, [ci, w.tensor("three", [1], T.INT32, np.array([3], np.int32))], [out])
    w.io([ci, cx], [out])
    w.subgraph("body")
    bi, bx = w.tensor("i", [1], T.INT32), _act(w, "x", [1, 16], a)
    bi2, bx2 = w.tensor("i2", [1], T.INT32), _act(w, "x2", [1, 16], a)
    w.op(B.ADD, [bi, w.tensor("one", [1], T.INT32, np.array([1], np.int32))], [bi2], _opts("AddOptionsT"),
         OPT.AddOptions)
    w.op(B.ADD, [bx, bx], [bx2], _opts("AddOptionsT"), OPT.AddOptions)
    w.io([bi, bx], [bi2, bx2])
    w.use(0)


def _compare(code: int) -> Callable[[ModelWriter, int, int | None], None]:
    return _binary(code, out_type=T.BOOL)


def _logical_and(w: ModelWriter, _a: int, _wb: int | None) -> None:
    x, x2, y = w.tensor("x", [1, 16], T.BOOL), w.tensor("x2", [1, 16], T.BOOL), w.tensor("y", [1, 16], T.BOOL)
    w.op(B.LOGICAL_AND, [x, x2], [y])
    w.io([x, x2], [y])


def _norm(w: ModelWriter, a: int, _wb: int | None) -> None:
    """Layer norm as the TFLite converter decomposes it: MEAN, SQUARED_DIFFERENCE, MEAN, ADD eps, RSQRT, SUB,
    MUL (and the float scale/shift as MUL / ADD by constants)."""
    shape, red = [1, 4, 16], [1, 4, 1]
    x = _act(w, "x", shape, a)
    mu, d2, var, ve, inv, xc, y = (_act(w, n, s, a) for n, s in (
        ("mu", red), ("d2", shape), ("var", red), ("ve", red), ("inv", red), ("xc", shape), ("y", shape)))
    axes = w.ints("axes", [2])
    w.op(B.MEAN, [x, axes], [mu], _opts("ReducerOptionsT", keepDims=True), OPT.ReducerOptions)
    w.op(B.SQUARED_DIFFERENCE, [x, mu], [d2])
    w.op(B.MEAN, [d2, axes], [var], _opts("ReducerOptionsT", keepDims=True), OPT.ReducerOptions)
    eps = w.const("eps", [1], ACT_TYPES[a], values=np.array([1e-5 if a == 32 else 1], _NP[ACT_TYPES[a]]),
                  scale=0.05 if a != 32 else None)
    w.op(B.ADD, [var, eps], [ve], _opts("AddOptionsT"), OPT.AddOptions)
    w.op(B.RSQRT, [ve], [inv])
    w.op(B.SUB, [x, mu], [xc], _opts("SubOptionsT"), OPT.SubOptions)
    w.op(B.MUL, [xc, inv], [y], _opts("MulOptionsT"), OPT.MulOptions)
    w.io([x], [y])


#: Model factories per TFLite builtin (``name -> build(writer, a_bits, w_bits)``).
BUILDERS: dict[str, Callable[[ModelWriter, int, int | None], None]] = {
    "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _dwconv, "FULLY_CONNECTED": _fc, "BATCH_MATMUL": _batch_matmul,
    "ADD": _binary(B.ADD, ("AddOptionsT", OPT.AddOptions)), "SUB": _binary(B.SUB, ("SubOptionsT", OPT.SubOptions)),
    "MUL": _binary(B.MUL, ("MulOptionsT", OPT.MulOptions)), "DIV": _binary(B.DIV, ("DivOptionsT", OPT.DivOptions)),
    "SQUARED_DIFFERENCE": _binary(B.SQUARED_DIFFERENCE),
    "MAXIMUM": _binary(B.MAXIMUM), "MINIMUM": _binary(B.MINIMUM),
    "CONCATENATION": _concat, "AVERAGE_POOL_2D": _pool(B.AVERAGE_POOL_2D), "MAX_POOL_2D": _pool(B.MAX_POOL_2D),
    "MEAN": _mean([1, 2], [1, 1, 1, 8]), "SUM": _reducer(B.SUM), "REDUCE_MAX": _reducer(B.REDUCE_MAX),
    "RELU": _unary(B.RELU), "RELU6": _unary(B.RELU6), "LOGISTIC": _unary(B.LOGISTIC), "TANH": _unary(B.TANH),
    "HARD_SWISH": _unary(B.HARD_SWISH), "LEAKY_RELU": _unary(B.LEAKY_RELU, ("LeakyReluOptionsT",
                                                                           OPT.LeakyReluOptions), alpha=0.1),
    "ELU": _unary(B.ELU), "GELU": _unary(B.GELU, ("GeluOptionsT", OPT.GeluOptions)),
    "SOFTMAX": _softmax, "RESHAPE": _reshape, "TRANSPOSE": _transpose,
    "PAD": _pad(B.PAD), "MIRROR_PAD": _pad(B.MIRROR_PAD),
    "RESIZE_BILINEAR": _resize(B.RESIZE_BILINEAR), "RESIZE_NEAREST_NEIGHBOR": _resize(B.RESIZE_NEAREST_NEIGHBOR),
    "STRIDED_SLICE": _strided_slice, "GATHER": _gather, "QUANTIZE": _quantize, "DEQUANTIZE": _dequantize,
    "DEQUANTIZE_FP16": _dequantize_fp16, "EMBEDDING_LOOKUP": _embedding,
    "NEG": _unary(B.NEG), "RSQRT": _unary(B.RSQRT), "SQRT": _unary(B.SQRT), "SQUARE": _unary(B.SQUARE),
    "LOG": _unary(B.LOG), "EXP": _unary(B.EXP), "ABS": _unary(B.ABS),
    "EQUAL": _compare(B.EQUAL), "GREATER_EQUAL": _compare(B.GREATER_EQUAL), "LESS": _compare(B.LESS),
    "LOGICAL_AND": _logical_and, "SELECT_V2": _select, "SHAPE": _shape, "CAST": _cast,
    "VARIABLES": _variables, "IF": _if, "WHILE": _while, "LAYER_NORM": _norm,
}


def _prelu(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, y = _act(w, "x", [1, 4, 4, 8], a), _act(w, "y", [1, 4, 4, 8], a)
    alpha = w.const("alpha", [1, 1, 8], ACT_TYPES[a], scale=0.05 if a != 32 else None)
    w.op(B.PRELU, [x, alpha], [y])
    w.io([x], [y])


def _shaped(code: int, out: list[int], consts: tuple[list[int], ...] = (), options: tuple[str, int] | None = None,
            in_shape: list[int] | None = None, n_out: int = 1, **fields: Any
            ) -> Callable[[ModelWriter, int, int | None], None]:
    """One op: an activation input, int32 constant operands, ``n_out`` outputs of shape ``out``."""
    def build(w: ModelWriter, a: int, _wb: int | None) -> None:
        x = _act(w, "x", in_shape or [1, 4, 4, 8], a)
        ys = [_act(w, f"y{i}", out, a) for i in range(n_out)]
        ins = [x] + [w.ints(f"c{i}", c) for i, c in enumerate(consts)]
        w.op(code, ins, ys, _opts(options[0], **fields) if options else None, options[1] if options else 0)
        w.io([x], ys)
    return build


def _pack(w: ModelWriter, a: int, _wb: int | None) -> None:
    x, x2, y = _act(w, "x", [4, 8], a), _act(w, "x2", [4, 8], a), _act(w, "y", [2, 4, 8], a)
    w.op(B.PACK, [x, x2], [y], _opts("PackOptionsT", valuesCount=2, axis=0), OPT.PackOptions)
    w.io([x, x2], [y])


def _split(w: ModelWriter, a: int, _wb: int | None) -> None:
    x = _act(w, "x", [1, 4, 4, 8], a)
    ys = [_act(w, f"y{i}", [1, 4, 4, 4], a) for i in range(2)]
    w.op(B.SPLIT, [w.ints("axis", [3]), x], ys, _opts("SplitOptionsT", numSplits=2), OPT.SplitOptions)
    w.io([x], ys)


def _arg(code: int) -> Callable[[ModelWriter, int, int | None], None]:
    def build(w: ModelWriter, a: int, _wb: int | None) -> None:
        x, y = _act(w, "x", [1, 4, 8], a), w.tensor("y", [1, 4], T.INT32)
        cls, typ = (("ArgMaxOptionsT", OPT.ArgMaxOptions) if code == B.ARG_MAX
                    else ("ArgMinOptionsT", OPT.ArgMinOptions))
        w.op(code, [x, w.ints("axis", [2])], [y], _opts(cls, outputType=T.INT32), typ)
        w.io([x], [y])
    return build


def _transpose_conv(w: ModelWriter, a: int, wb: int | None) -> None:
    x, y = _act(w, "x", [1, 4, 4, 8], a), _act(w, "y", [1, 8, 8, 4], a)
    f = _weights(w, "filter", [4, 3, 3, 8], wb or a)
    w.op(B.TRANSPOSE_CONV, [w.ints("out_shape", [1, 8, 8, 4]), f, x, _bias(w, "bias", 4, a)], [y],
         _opts("TransposeConvOptionsT", padding=schema.Padding.SAME, strideH=2, strideW=2), OPT.TransposeConvOptions)
    w.io([x], [y])


BUILDERS.update({
    "PRELU": _prelu, "FLOOR": _unary(B.FLOOR), "CEIL": _unary(B.CEIL), "ROUND": _unary(B.ROUND),
    "SIN": _unary(B.SIN), "COS": _unary(B.COS), "ZEROS_LIKE": _unary(B.ZEROS_LIKE),
    "RELU_N1_TO_1": _unary(B.RELU_N1_TO_1), "RELU_0_TO_1": _unary(B.RELU_0_TO_1),
    "LOG_SOFTMAX": _unary(B.LOG_SOFTMAX, ("LogSoftmaxOptionsT", OPT.LogSoftmaxOptions), shape=[1, 10]),
    "L2_NORMALIZATION": _unary(B.L2_NORMALIZATION, ("L2NormOptionsT", OPT.L2NormOptions)),
    "FLOOR_DIV": _binary(B.FLOOR_DIV), "FLOOR_MOD": _binary(B.FLOOR_MOD), "POW": _binary(B.POW),
    "NOT_EQUAL": _compare(B.NOT_EQUAL), "GREATER": _compare(B.GREATER), "LESS_EQUAL": _compare(B.LESS_EQUAL),
    "ADD_N": _binary(B.ADD_N), "SQUEEZE": _shaped(B.SQUEEZE, [4, 4, 8], options=("SqueezeOptionsT", OPT.SqueezeOptions),
                                                squeezeDims=[0]),
    "EXPAND_DIMS": _shaped(B.EXPAND_DIMS, [1, 1, 4, 4, 8], ([0],)),
    "BROADCAST_TO": _shaped(B.BROADCAST_TO, [2, 4, 4, 8], ([2, 4, 4, 8],)),
    "TILE": _shaped(B.TILE, [2, 4, 4, 8], ([2, 1, 1, 1],)),
    "SLICE": _shaped(B.SLICE, [1, 2, 4, 8], ([0, 0, 0, 0], [1, 2, 4, 8])),
    "SPLIT": _split, "PACK": _pack,
    "UNPACK": _shaped(B.UNPACK, [4, 8], in_shape=[2, 4, 8], n_out=2, options=("UnpackOptionsT", OPT.UnpackOptions),
                      num=2, axis=0),
    "REVERSE_V2": _shaped(B.REVERSE_V2, [1, 4, 4, 8], ([1],)),
    "DEPTH_TO_SPACE": _shaped(B.DEPTH_TO_SPACE, [1, 8, 8, 2], options=("DepthToSpaceOptionsT",
                                                                     OPT.DepthToSpaceOptions), blockSize=2),
    "SPACE_TO_DEPTH": _shaped(B.SPACE_TO_DEPTH, [1, 2, 2, 32], options=("SpaceToDepthOptionsT",
                                                                      OPT.SpaceToDepthOptions), blockSize=2),
    "PADV2": _pad(B.PADV2), "ARG_MAX": _arg(B.ARG_MAX), "ARG_MIN": _arg(B.ARG_MIN),
    "REDUCE_MIN": _reducer(B.REDUCE_MIN), "REDUCE_PROD": _reducer(B.REDUCE_PROD),
    "L2_POOL_2D": _pool(B.L2_POOL_2D), "TRANSPOSE_CONV": _transpose_conv,
    "CUMSUM": _shaped(B.CUMSUM, [1, 4, 4, 8], ([3],), options=("CumsumOptionsT", OPT.CumsumOptions)),
})


def single_op_model(builtin: str, dtype: str) -> bytes:
    """A model holding ``builtin`` (a key of :data:`BUILDERS`) at ``dtype`` (``a8w8``, ``a32``, ...)."""
    a, wb = parse_dtype(dtype)
    w = ModelWriter()
    BUILDERS[builtin](w, a, wb)
    return w.to_bytes()


# ---- running in the real interpreters, in a child process ---------------------------------------------------
_CHILD = r"""
import io, json, os, sys, tempfile
import numpy as np

def n_inputs(data):
    from ai_edge_litert import schema_py_generated as schema
    return schema.Model.GetRootAs(data, 0).Subgraphs(0).InputsLength()

def tflm(data, arena):
    from tflite_micro.python.tflite_micro import runtime
    r, w = os.pipe()
    saved = os.dup(1), os.dup(2)
    os.dup2(w, 1); os.dup2(w, 2)
    res = {"built": False, "invoked": False}
    try:
        it = runtime.Interpreter.from_bytes(data, arena_size=arena)
        res["built"] = True
        for n in range(n_inputs(data)):
            d = it.get_input_details(n)
            shape = [int(s) for s in d["shape"]] or [1]
            it.set_input(np.ones(shape, d["dtype"]), n)
        it.invoke()
        res["invoked"] = True
        it.print_allocations()
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2); os.close(w)
    text = os.read(r, 1 << 20).decode("utf-8", "replace")
    res["log"] = text[-4000:]
    return res

def litert(data):
    from ai_edge_litert.interpreter import Interpreter
    res = {"built": False, "invoked": False}
    try:
        it = Interpreter(model_content=data)
        it.allocate_tensors()
        res["built"] = True
        for d in it.get_input_details():
            shape = [int(s) for s in d["shape"]] or [1]
            it.set_tensor(d["index"], np.ones(shape, d["dtype"]))
        it.invoke()
        res["invoked"] = True
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:600]}"
    return res

for line in sys.stdin:
    spec = json.loads(line)
    data = open(spec["path"], "rb").read()
    out = tflm(data, spec.get("arena", 1 << 22)) if spec["runtime"] == "tflm" else litert(data)
    sys.stdout.write("@@RESULT@@" + json.dumps({"path": spec["path"], **out}) + "\n")
    sys.stdout.flush()
"""


def run_batch(models: list[bytes], runtime: str, tmp: Path, arena: int = 1 << 22,
              timeout: float = 600) -> list[dict[str, Any]]:
    """Build and invoke each model in ``runtime`` (``tflm`` or ``litert``) in child processes, many per child.

    Returns one ``{"built", "invoked", "error", "log"}`` per model; a model that crashes its child is
    ``{"built": False, "error": "crashed ..."}`` and the rest go on in a fresh child."""
    paths = []
    for i, data in enumerate(models):
        path = tmp / f"model_{i}_{abs(hash(data)) % 10**12}.tflite"
        path.write_bytes(data)
        paths.append(str(path))
    results: dict[str, dict[str, Any]] = {}
    todo = list(paths)
    while todo:
        feed = "".join(json.dumps({"path": p, "runtime": runtime, "arena": arena}) + "\n" for p in todo)
        proc = subprocess.run([sys.executable, "-c", _CHILD], input=feed, capture_output=True, text=True,
                              timeout=timeout)
        for line in proc.stdout.splitlines():
            if line.startswith("@@RESULT@@"):
                r = json.loads(line.removeprefix("@@RESULT@@"))
                results[r.pop("path")] = r
        rest = [p for p in todo if p not in results]
        if rest and proc.returncode != 0:  # the first one without a result crashed the child
            results[rest[0]] = {"built": False, "invoked": False,
                                "error": f"crashed (exit {proc.returncode}): {proc.stderr[-300:]}"}
            rest = rest[1:]
        todo = rest if proc.returncode != 0 else []
    return [results.get(p, {"built": False, "invoked": False, "error": "no result"}) for p in paths]


def run_in_child(data: bytes, runtime: str, tmp: Path, arena: int = 1 << 22) -> dict[str, Any]:
    """:func:`run_batch` for one model."""
    return run_batch([data], runtime, tmp, arena)[0]
