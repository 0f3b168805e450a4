"""ONNX front-end: an ``.onnx`` file -> ModelGraph, using onnx's own shape inference.

Initializers, Constant nodes and anything computed only from them (shape arithmetic, DequantizeLinear of a
weight) are constants attached to the op that consumes them; every other tensor is an activation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tap_edge.core.errors import ModelLoadError
from tap_edge.documents import InputInfo
from tap_edge.graph.frontends.onnx_shapes import concrete_model
from tap_edge.graph.graph import ModelGraph, Op, Tensor, conv_macs, normalize
from tap_edge.graph.shapes import InputShapes

_CLASSES = {
    "Add": "add", "Sub": "add", "Sum": "add", "Mul": "mul", "Div": "mul", "Concat": "concat",
    "MaxPool": "pool", "AveragePool": "pool", "GlobalAveragePool": "global_pool", "GlobalMaxPool": "global_pool",
    "Softmax": "softmax", "LogSoftmax": "softmax", "Reshape": "reshape", "Flatten": "reshape",
    "Squeeze": "reshape", "Unsqueeze": "reshape", "Expand": "reshape", "Transpose": "transpose", "Pad": "pad",
    "Resize": "resize", "Upsample": "resize", "Slice": "slice", "Split": "slice", "Gather": "slice",
    "LayerNormalization": "norm", "InstanceNormalization": "norm", "GroupNormalization": "norm",
    "QuantizeLinear": "quantize", "DequantizeLinear": "quantize", "Identity": "identity", "Dropout": "identity",
    "ReduceMean": "reduce", "ReduceSum": "reduce", "ReduceMax": "reduce", "MatMul": "matmul", "Cast": "identity",
}
_ACTS = {"Relu": "relu", "Sigmoid": "sigmoid", "HardSwish": "hardswish", "HardSigmoid": "hardsigmoid",
         "Tanh": "tanh", "LeakyRelu": "leaky_relu", "Elu": "elu", "Gelu": "gelu", "PRelu": "prelu",
         "Mish": "mish", "Softplus": "softplus"}
_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 3: "int8", 2: "uint8", 5: "int16",
           6: "int32", 7: "int64", 9: "bool", 22: "int4", 21: "uint4"}


def _read(path: Path, input_shapes: InputShapes | None = None) -> tuple[onnx.ModelProto, list[InputInfo], list[str]]:
    """The model with its tensor sizes inferred at the resolved input shapes (:mod:`.onnx_shapes`), the
    inputs as planned and the tensors whose size stayed open."""
    if not path.exists():
        raise ModelLoadError(f"{path}: model file not found", "check the path")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: empty file", "re-export the model")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises DecodeError and others on corrupt bytes
        raise ModelLoadError(f"{path}: not a readable ONNX model ({e.__class__.__name__})",
                             "the file is corrupt or truncated; re-export it") from None
    if not model.graph.node:
        raise ModelLoadError(f"{path}: the ONNX graph has no nodes", "re-export the model")
    return concrete_model(model, input_shapes, path)


def _shape(vi: onnx.ValueInfoProto) -> tuple[list[int], str] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
    return dims, _DTYPES.get(tt.elem_type, "float32")


def load_onnx_graph(path: str | Path, input_shapes: InputShapes | None = None) -> ModelGraph:
    """Read an ``.onnx`` file into a ModelGraph at ``input_shapes`` (``--input-shape``; open dims other than
    a batch dim are refused without it)."""
    path = Path(path)
    model, input_infos, open_sizes = _read(path, input_shapes)
    g = model.graph
    inits: dict[str, np.ndarray | None] = {}
    for init in g.initializer:
        inits[init.name] = None  # arrays are loaded lazily, only where values matter (Clip bounds)
    init_protos = {i.name: i for i in g.initializer}
    const_shape: dict[str, tuple[list[int], str]] = {
        i.name: (list(i.dims), _DTYPES.get(i.data_type, "float32")) for i in g.initializer}
    shapes: dict[str, tuple[list[int], str]] = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        s = _shape(vi)
        if s:
            shapes[vi.name] = s
    graph_inputs = [i.name for i in g.input if i.name not in inits]
    activation = set(graph_inputs)
    tensors: dict[str, Tensor] = {}
    for name in graph_inputs:
        shp, dt = shapes.get(name, ([1], "float32"))
        tensors[name] = Tensor(name, shp, dt, "input")
    ops: list[Op] = []
    charged: set[str] = set()

    def numel(name: str) -> int:
        return int(np.prod(const_shape[name][0])) if name in const_shape else 0

    def const_value(name: str) -> Any:
        if name in init_protos:
            return numpy_helper.to_array(init_protos[name])
        return None

    for i, node in enumerate(g.node):
        name = node.name or f"{node.op_type}_{i}"
        act_in = [x for x in node.input if x in activation]
        if node.op_type in ("Shape", "Size"):  # static shapes: the result is a constant, not an activation
            act_in = []
        if not act_in:  # computed from constants only: constant folding at deployment
            for o in node.output:
                if node.op_type == "Constant":
                    t = helper.get_attribute_value(node.attribute[0]) if node.attribute else None
                    if isinstance(t, onnx.TensorProto):
                        const_shape[o] = (list(t.dims), _DTYPES.get(t.data_type, "float32"))
                        init_protos[o] = t
                        continue
                if node.op_type == "DequantizeLinear" and node.input and node.input[0] in const_shape:
                    const_shape[o] = const_shape[node.input[0]]
                    continue
                if o in shapes:
                    const_shape[o] = shapes[o]
            continue
        consts = [x for x in node.input if x and x not in activation]
        out_names = [o for o in node.output if o]
        for o in out_names:
            activation.add(o)
            shp, dt = shapes.get(o, ([1], "float32"))
            tensors[o] = Tensor(o, shp, dt)
        out_shape = tensors[out_names[0]].shape if out_names else [1]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = Op(name, node.op_type, _CLASSES.get(node.op_type, "unknown"), act_in, out_names)
        weight: str | None = None
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in const_shape:
            weight = node.input[1]
            w = const_shape[weight][0]
            groups = int(attrs.get("group", 1))
            cin = tensors[act_in[0]].shape[1] if len(tensors[act_in[0]].shape) > 1 else 1
            op.op_class = "dwconv" if groups > 1 and groups == cin and w[1] == 1 else "conv"
            op.weight_shape = list(w)
            op.macs = conv_macs(out_shape, w)
            op.bias = numel(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
            op.attrs = {"stride": list(attrs.get("strides", [1, 1])), "groups": groups,
                        "kernel": list(w[2:])}
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in const_shape:
            weight = node.input[1]
            w = const_shape[weight][0]
            trans_b = int(attrs.get("transB", 0)) if node.op_type == "Gemm" else 0
            op.op_class = "fc"
            op.weight_shape = [w[0], w[1]] if trans_b else [w[-1], int(np.prod(w[:-1]))]
            op.macs = int(np.prod(out_shape)) * op.weight_shape[1]
            op.bias = numel(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
        elif node.op_type == "MatMulNBits":  # onnxruntime contrib: packed low-bit weights for linear layers
            k, n, b = int(attrs["K"]), int(attrs["N"]), int(attrs.get("bits", 4))
            op.op_class, op.weight_shape, op.weight_dtype = "fc", [n, k], "int4" if b == 4 else f"int{b}"
            op.macs = int(np.prod(out_shape)) * k
            weight = node.input[1]
        elif node.op_type == "BatchNormalization":
            op.op_class, op.attrs = "norm", {"foldable": True}
            op.other_params = 2 * numel(node.input[1])
            charged.update(node.input[1:])
        elif node.op_type in _ACTS:
            op.op_class, op.attrs = "act", {"fn": _ACTS[node.op_type]}
        elif node.op_type == "Clip":
            lo = const_value(node.input[1]) if len(node.input) > 1 and node.input[1] else attrs.get("min")
            hi = const_value(node.input[2]) if len(node.input) > 2 and node.input[2] else attrs.get("max")
            fn = "relu6" if lo is not None and hi is not None and float(lo) == 0.0 and float(hi) == 6.0 else \
                ("relu" if lo is not None and float(lo) == 0.0 and hi is None else "clip")
            op.op_class, op.attrs = "act", {"fn": fn}
            charged.update(node.input[1:])
        elif node.op_type == "ReduceMean":
            in_shape = tensors[act_in[0]].shape
            if len(in_shape) == 4 and int(np.prod(out_shape)) == in_shape[1]:
                op.op_class = "global_pool"
        if node.op_type == "MatMul" and op.op_class == "matmul" and len(act_in) < 2:
            op.op_class = "fc" if weight else "matmul"
        if weight:
            op.weight_dtype = const_shape[weight][1] if op.weight_dtype == "float32" else op.weight_dtype
            if weight.endswith(".weight"):
                op.module = weight.removesuffix(".weight")
            charged.add(weight)
            if op.bias:
                charged.add(node.input[2])
        op.other_params += sum(numel(c) for c in consts if c not in charged and c in const_shape
                               and const_shape[c][1].startswith(("float", "bfloat")))
        charged.update(consts)
        ops.append(op)
    outputs = [o.name for o in g.output if o.name in tensors]
    for o in outputs:
        tensors[o].kind = "output"
    if not ops:
        raise ModelLoadError(f"{path}: no operation consumes the model input", "is this an empty model?")
    meta = {"path": str(path), "inputs": [i.model_dump() for i in input_infos],
            "unresolved_shapes": [t for t in tensors if t in set(open_sizes)]}
    raw = ModelGraph(path.stem, "onnx", ops, tensors, graph_inputs, outputs, meta=meta)
    return normalize(raw)
