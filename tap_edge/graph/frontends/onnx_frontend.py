"""ONNX front-end: an ``.onnx`` file -> ModelGraph, using onnx's own shape inference.

Initializers, Constant nodes and anything computed only from them (shape arithmetic, DequantizeLinear of a
weight) are constants attached to the op that consumes them; every other tensor is an activation. A constant
several nodes read (shared weights) is counted once. Control flow (If, Loop, Scan): the bodies' nodes follow
their caller in the op list (:class:`~tap_edge.graph.graph.Subgraph`, names prefixed with the body's), so the
weights inside a branch count as parameters and the plan covers the larger branch (the branches never live
at the same time). ONNX Runtime's integer ops (ConvInteger, MatMulInteger, DynamicQuantizeLSTM) keep their
int8 weights; Identity and Dropout are dropped as converters drop them (:func:`normalize`).
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
from tap_edge.graph.graph import ModelGraph, Op, Subgraph, Tensor, conv_macs, conv_padding_attrs, normalize, same_pads
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
    "Max": "minmax", "Min": "minmax", "Neg": "math", "Abs": "math", "Sqrt": "math", "Reciprocal": "math",
    "Log": "math", "Exp": "math", "Pow": "math", "Floor": "math", "Ceil": "math", "Round": "math", "Sin": "math",
    "Cos": "math", "Sign": "math", "Equal": "compare", "Greater": "compare", "GreaterOrEqual": "compare",
    "Less": "compare", "LessOrEqual": "compare", "And": "compare", "Or": "compare", "Not": "compare",
    "Where": "select", "If": "control", "Loop": "control", "Scan": "control", "Tile": "reshape",
    "DynamicQuantizeLinear": "quantize",
}
#: Control-flow nodes and the attributes that hold their bodies, in the order they are planned.
_BODIES = {"If": ("then_branch", "else_branch"), "Loop": ("body",), "Scan": ("body",)}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1}
#: Ops that only re-view their input: a constant they fold is its source's values (counted once).
_VIEWS = ("Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose", "Identity", "Cast")
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


class _Walker:
    """Turns the nodes of the main graph and of every control-flow body into ops (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.init_protos: dict[str, Any] = {}
        self.const_shape: dict[str, tuple[list[int], str]] = {}
        self.shapes: dict[str, tuple[list[int], str]] = {}
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []
        self.spans: list[Subgraph] = []
        self.charged: set[str] = set()  # constants already counted (a shared constant is counted once)
        self.alias: dict[str, str] = {}  # folded views of a constant -> the constant
        self.weight_owner: dict[str, str] = {}
        self.op_names: set[str] = set()
        self._graph_consts(g, "")
        self.graph_inputs = [i.name for i in g.input if i.name not in self.const_shape]
        self.activation = set(self.graph_inputs)
        for name in self.graph_inputs:
            shp, dt = self.shapes.get(name, ([1], "float32"))
            self.tensors[name] = Tensor(name, shp, dt, "input")

    def _graph_consts(self, g: Any, prefix: str) -> None:
        for init in g.initializer:
            self.init_protos[prefix + init.name] = init
            self.const_shape[prefix + init.name] = (list(init.dims), _DTYPES.get(init.data_type, "float32"))
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            sh = _shape(vi)
            if sh:
                self.shapes[prefix + vi.name] = sh

    def numel(self, name: str) -> int:
        return int(np.prod(self.const_shape[name][0])) if name in self.const_shape else 0

    def const_bytes(self, name: str) -> float:
        shape, dt = self.const_shape[name]
        return int(np.prod(shape)) * _DTYPE_BYTES.get(dt, 0)

    def const_value(self, name: str) -> Any:
        if name in self.init_protos:
            return numpy_helper.to_array(self.init_protos[name])
        return None

    def walk(self, g: Any, scope: dict[str, str], prefix: str) -> list[str]:
        """Convert the nodes of ``g``; ``scope`` maps the names visible in it to graph tensor names (outer-scope
        references of a body). Returns the op names, in order."""
        names: list[str] = []
        for i, node in enumerate(g.node):
            names += self._node(node, i, scope, prefix)
        return names

    def _node(self, node: Any, i: int, scope: dict[str, str], prefix: str) -> list[str]:
        def ref(x: str) -> str:
            return scope.get(x, prefix + x if prefix + x in self.activation | set(self.const_shape) else x)

        ins = [ref(x) if x else "" for x in node.input]
        act_in = [x for x in ins if x in self.activation]
        bodies = _BODIES.get(node.op_type, ())
        outer = self._outer_refs(node, scope, prefix) if bodies else []
        act_in += [x for x in outer if x in self.activation and x not in act_in]
        if node.op_type in ("Shape", "Size"):  # static shapes: the result is a constant, not an activation
            act_in = []
        outs = [prefix + o for o in node.output if o]
        if not act_in:  # computed from constants only: constant folding at deployment
            for o_raw, o in zip([x for x in node.output if x], outs, strict=True):
                scope[o_raw] = o
                if node.op_type == "Constant":
                    t = helper.get_attribute_value(node.attribute[0]) if node.attribute else None
                    if isinstance(t, onnx.TensorProto):
                        self.const_shape[o] = (list(t.dims), _DTYPES.get(t.data_type, "float32"))
                        self.init_protos[o] = t
                        continue
                if node.op_type == "DequantizeLinear" and ins and ins[0] in self.const_shape:
                    self.const_shape[o] = self.const_shape[ins[0]]
                    continue
                if o in self.shapes:  # folded by a converter
                    self.const_shape[o] = self.shapes[o]
                    data = [x for x in ins if x in self.const_shape]
                    if bodies:  # a branch on constants picks (a slice of) the constants it reads
                        data = sorted((x for x in outer if x in self.const_shape), key=self.numel, reverse=True)
                    if (node.op_type in _VIEWS or bodies) and data:  # the same values again: one copy
                        self.alias[o] = self.alias.get(data[0], data[0])
                    else:  # a new constant replaces its sources
                        self.charged.update(x for x in ins if x)
            return []
        for o_raw, o in zip([x for x in node.output if x], outs, strict=True):
            scope[o_raw] = o
            self.activation.add(o)
            shp, dt = self.shapes.get(o, ([1], "float32"))
            self.tensors[o] = Tensor(o, shp, dt)
        name = prefix + (node.name or f"{node.op_type}_{i}")
        while name in self.op_names:
            name += "'"
        self.op_names.add(name)
        op = self._op(node, name, ins, act_in, outs)
        self.ops.append(op)
        done = [op.name]
        for attr in bodies:
            body = next((a.g for a in node.attribute if a.name == attr), None)
            if body is not None:
                done += self._body(node, op, attr, body, scope, prefix)
        return done

    def _outer_refs(self, node: Any, scope: dict[str, str], prefix: str) -> list[str]:
        """Names a body reads from the enclosing scopes (implicit inputs of a control-flow node)."""
        out: list[str] = []

        def visit(body: Any, outer_local: set[str]) -> None:
            local = outer_local | {i.name for i in body.input} | {i.name for i in body.initializer}
            for n in body.node:
                for x in n.input:
                    if x and x not in local:
                        r = scope.get(x, prefix + x)
                        if r not in out:
                            out.append(r)
                for a in n.attribute:  # a nested body sees this body's names defined so far
                    if a.type == onnx.AttributeProto.GRAPH:
                        visit(a.g, local)
                local.update(o for o in n.output if o)

        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                visit(a.g, set())
        return out

    def _body(self, node: Any, op: Op, attr: str, body: Any, scope: dict[str, str], prefix: str) -> list[str]:
        sub = f"{op.name}/{attr}/"
        self._graph_consts(body, sub)
        inner = dict(scope)
        inputs = []
        for vi in body.input:
            t = sub + vi.name
            inner[vi.name] = t
            self.activation.add(t)
            shp, dt = self.shapes.get(t, ([1], "float32"))
            self.tensors[t] = Tensor(t, shp, dt)
            inputs.append(t)
        for init in body.initializer:
            inner[init.name] = sub + init.name
        names = self.walk(body, inner, sub)
        outputs = [inner.get(o.name, sub + o.name) for o in body.output]
        self.spans.append(Subgraph(f"{op.name}/{attr}", op.name, names, inputs,
                                   [o for o in outputs if o in self.tensors]))
        return names

    def _op(self, node: Any, name: str, ins: list[str], act_in: list[str], out_names: list[str]) -> Op:
        tensors, const_shape = self.tensors, self.const_shape
        consts = [x for x in ins if x and x not in self.activation]
        out_shape = tensors[out_names[0]].shape if out_names else [1]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute
                 if a.type != onnx.AttributeProto.GRAPH}
        op = Op(name, node.op_type, _CLASSES.get(node.op_type, "unknown"), act_in, out_names)
        weight: str | None = None
        bias_name = ins[2] if len(ins) > 2 and ins[2] else ""
        if node.op_type in ("Conv", "ConvInteger") and len(ins) > 1 and ins[1] in const_shape:
            weight = ins[1]
            w = const_shape[weight][0]
            groups = int(attrs.get("group", 1))
            cin = tensors[act_in[0]].shape[1] if act_in and len(tensors[act_in[0]].shape) > 1 else 1
            op.op_class = "dwconv" if groups > 1 and groups == cin and w[1] == 1 else "conv"
            op.weight_shape = list(w)
            op.macs = conv_macs(out_shape, w)
            if node.op_type == "Conv":
                op.bias = self.numel(bias_name) if bias_name else 0
            else:
                bias_name = ""  # ConvInteger's third input is the input zero point
            op.attrs = {"stride": list(attrs.get("strides", [1, 1])), "groups": groups, "kernel": list(w[2:]),
                        "dilation": list(attrs.get("dilations", [1, 1]))}
            in_shape = tensors[act_in[0]].shape if act_in else []
            if len(w) == 4 and len(in_shape) == 4:  # padding as the TFLite converter would see it
                op.attrs.update(conv_padding_attrs(in_shape, list(w[2:]), op.attrs["stride"], op.attrs["dilation"],
                                                   _onnx_pads(attrs, in_shape, list(w[2:]), op.attrs["stride"],
                                                              op.attrs["dilation"])))
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger") and len(ins) > 1 and ins[1] in const_shape:
            weight = ins[1]
            w = const_shape[weight][0]
            trans_b = int(attrs.get("transB", 0)) if node.op_type == "Gemm" else 0
            op.op_class = "fc"
            op.weight_shape = [w[0], w[1]] if trans_b else [w[-1], int(np.prod(w[:-1]))]
            op.macs = int(np.prod(out_shape)) * op.weight_shape[1]
            op.bias = self.numel(bias_name) if bias_name and node.op_type == "Gemm" else 0
            if node.op_type != "Gemm":
                bias_name = ""
        elif node.op_type == "MatMulNBits":  # onnxruntime contrib: packed low-bit weights for linear layers
            k, n, b = int(attrs["K"]), int(attrs["N"]), int(attrs.get("bits", 4))
            op.op_class, op.weight_shape, op.weight_dtype = "fc", [n, k], "int4" if b == 4 else f"int{b}"
            op.macs = int(np.prod(out_shape)) * k
            weight = ins[1]
            bias_name = ""
        elif node.op_type == "BatchNormalization":
            op.op_class, op.attrs = "norm", {"foldable": True}
            op.other_params = 2 * self.numel(ins[1])
            self.charged.update(ins[1:])
        elif node.op_type in _ACTS:
            op.op_class, op.attrs = "act", {"fn": _ACTS[node.op_type]}
        elif node.op_type == "Clip":
            lo = self.const_value(ins[1]) if len(ins) > 1 and ins[1] else attrs.get("min")
            hi = self.const_value(ins[2]) if len(ins) > 2 and ins[2] else attrs.get("max")
            fn = "relu6" if lo is not None and hi is not None and float(lo) == 0.0 and float(hi) == 6.0 else \
                ("relu" if lo is not None and float(lo) == 0.0 and hi is None else "clip")
            op.op_class, op.attrs = "act", {"fn": fn}
            self.charged.update(ins[1:])
        elif node.op_type == "ReduceMean" and act_in:
            in_shape = tensors[act_in[0]].shape
            if len(in_shape) == 4 and int(np.prod(out_shape)) == in_shape[1]:
                op.op_class = "global_pool"
        elif node.op_type == "Resize":
            op.attrs["mode"] = str(attrs.get("mode", b"nearest"), "utf-8") \
                if isinstance(attrs.get("mode"), bytes) else str(attrs.get("mode", "nearest"))
        if node.op_type == "MatMul" and op.op_class == "matmul" and len(act_in) < 2:
            op.op_class = "fc" if weight else "matmul"
        if weight:
            op.weight_dtype = const_shape[weight][1] if op.weight_dtype == "float32" else op.weight_dtype
            if weight.endswith(".weight"):
                op.module = weight.removesuffix(".weight")
            if weight in self.weight_owner:
                op.attrs["shared_weight"] = self.weight_owner[weight]
            else:
                self.weight_owner[weight] = name
            self.charged.add(weight)
            if op.bias:
                self.charged.add(bias_name)
        # other constants at their stored size (float tables, int8 weights of DynamicQuantizeLSTM, ...); a
        # folded view counts as its source
        consts = [self.alias.get(c, c) for c in consts]
        others = [c for c in dict.fromkeys(consts) if c not in self.charged and c in const_shape
                  and const_shape[c][1] in _DTYPE_BYTES]
        op.other_params += sum(self.numel(c) for c in others)
        other_bytes = sum(self.const_bytes(c) for c in others)
        if other_bytes != 4 * sum(self.numel(c) for c in others):
            op.attrs["other_bytes"] = int(other_bytes + 4 * (op.other_params - sum(self.numel(c) for c in others)))
        self.charged.update(consts)
        return op


def load_onnx_graph(path: str | Path, input_shapes: InputShapes | None = None) -> ModelGraph:
    """Read an ``.onnx`` file into a ModelGraph at ``input_shapes`` (``--input-shape``; open dims other than
    a batch dim are refused without it)."""
    path = Path(path)
    model, input_infos, open_sizes = _read(path, input_shapes)
    g = model.graph
    w = _Walker(model)
    w.walk(g, {}, "")
    tensors = w.tensors
    outputs = [o.name for o in g.output if o.name in tensors]
    for o in outputs:
        tensors[o].kind = "output"
    if not w.ops:
        raise ModelLoadError(f"{path}: no operation consumes the model input", "is this an empty model?")
    meta = {"path": str(path), "inputs": [i.model_dump() for i in input_infos],
            "unresolved_shapes": [t for t in tensors if t in set(open_sizes)]}
    raw = ModelGraph(path.stem, "onnx", w.ops, tensors, w.graph_inputs, outputs, meta=meta, subgraphs=w.spans)
    return normalize(raw)


def _onnx_pads(attrs: dict[str, Any], in_shape: list[int], kernel: list[int], stride: list[int],
               dilation: list[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """A Conv's ((top, bottom), (left, right)) from ``pads`` ([top, left, bottom, right]) or ``auto_pad``."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        hs = same_pads(in_shape[2], kernel[0], stride[0], dilation[0])
        ws = same_pads(in_shape[3], kernel[1], stride[1], dilation[1])
        if auto == "SAME_LOWER":  # the odd pixel goes before
            hs, ws = hs[::-1], ws[::-1]
        return hs, ws
    if auto == "VALID":
        return (0, 0), (0, 0)
    p = list(attrs.get("pads", [0, 0, 0, 0]))
    return (int(p[0]), int(p[2])), (int(p[1]), int(p[3]))
