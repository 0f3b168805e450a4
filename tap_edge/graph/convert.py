"""ONNX -> PyTorch: an ``.onnx`` file as a ``torch.fx.GraphModule`` that plan, eval and compile work on.

Planning needs the network as PyTorch (LayerStats take gradients, PTQ fake-quantizes modules, the backends
export a module), so an ONNX file is converted, op by op, into an fx graph whose weighted layers are real
``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Linear`` modules **named by the file's plan keys**
(:func:`tap_edge.graph.onnx_keys.with_module_keys`: the PyTorch module names the exporter kept), so a plan of
the file and a plan of the same network given as PyTorch share their keys, and ``plan``, ``eval`` and
``compile`` of the file use the very graph ``check`` reads (:func:`tap_edge.graph.models.load_graph`).

Why our own converter: ``onnx2torch`` (1.5.15, the maintained PyPI release) refuses every export of
``torch.onnx.export`` in torch 2.14, dynamo or not (opset 18+ ``ReduceMean`` / ``Identity``; at opset 17
after ``onnx.version_converter``: a Conv bias that is not an initializer, ``Reshape(allowzero=1)``), and it
names modules after ONNX nodes; ``onnx2tf`` needs TensorFlow. This one covers the ops of CNN classifiers and
keyword spotters and refuses any other op in one line.

How: the model is read at its concrete input shapes (the front-end's shape inference), every value computed
from constants alone (shape arithmetic, ``Shape`` of a tensor of known size, weight transposes,
``DequantizeLinear`` of a weight) is evaluated once with ONNX's reference evaluator; a BatchNormalization that
only follows a conv is folded into it (as deployment runtimes and tap-edge's PTQ fold it); each other op becomes
a torch call with its constants inlined. Static shapes come from shape inference, with the batch dim left
free, so the module runs any batch (calibration, LayerStats and eval run batches): an op that mixes the batch
dim with another (a Reshape over it, a Transpose moving it, a Concat or Gather along it) is refused.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.fx
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from tap_edge.core.errors import ModelLoadError
from tap_edge.graph.frontends.onnx_shapes import evaluate_node
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.shapes import InputShapes

#: Ops whose inputs are all constants are evaluated once; these ops never are (their value is the data).
_NEVER_FOLD = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial")
_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
           "Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add}
_UNARY = {"Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
          "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf, "Reciprocal": torch.reciprocal,
          "Floor": torch.floor, "Ceil": torch.ceil, "HardSwish": F.hardswish, "Mish": F.mish,
          "Softplus": F.softplus, "Sin": torch.sin, "Cos": torch.cos}
_IDENTITY = ("Identity", "Dropout")
_REDUCE = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax, "ReduceMin": torch.amin}
_TORCH_DTYPES = {1: torch.float32, 10: torch.float16, 11: torch.float64, 6: torch.int32, 7: torch.int64,
                 3: torch.int8, 2: torch.uint8, 9: torch.bool, 16: torch.bfloat16}


class PaddedConv(nn.Conv2d):
    """A 2-D convolution with ONNX's asymmetric ``pads`` (TF 'same' padding: one more row at the end),
    applied inside the module, as timm's ``Conv2dSame`` does: the layer's input is the unpadded tensor."""

    def __init__(self, *args: Any, pad: tuple[int, int, int, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pad = pad  # F.pad order: left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class Scope(nn.Module):
    """A parent module on a layer's name path (``stage1`` of ``stage1.conv1``). The converted model calls each
    layer through its parents, so exporters that name nodes after the module call stack (the TorchScript ONNX
    exporter: ``/stage1/conv1/Conv``) see the names the original network gives them."""

    def forward(self, x: torch.Tensor, path: str = "") -> torch.Tensor:
        head, _, rest = path.partition(".")
        child = getattr(self, head)
        return child(x, path=rest) if rest else child(x)


class ConversionError(ModelLoadError):
    """The ONNX file holds an op (or a use of one) the converter does not translate."""


def onnx_to_torch(path: str | Path, graph: ModelGraph, input_shapes: InputShapes | None = None) -> torch.fx.GraphModule:
    """The network of the ``.onnx`` file ``path`` as a GraphModule whose weighted layers are named by
    ``graph``'s plan keys (``graph``: :func:`tap_edge.graph.models.load_graph` of the same file at the same
    ``input_shapes``). Raises :class:`ConversionError` (one line) on what it cannot translate."""
    from tap_edge.graph.frontends.onnx_shapes import concrete_model

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises DecodeError and others on corrupt bytes
        raise ModelLoadError(f"{path}: not a readable ONNX model ({e.__class__.__name__})", "re-export it") from None
    inferred, _, _ = concrete_model(model, input_shapes, path)
    keys = {op.name: op.module for op in graph.quantizable_ops() if op.module}
    return _Converter(inferred, keys, path).run()


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


class _Converter:
    def __init__(self, model: onnx.ModelProto, keys: dict[str, str], path: Path) -> None:
        self.model, self.keys, self.path = model, keys, path
        g = model.graph
        self.fx = torch.fx.Graph()
        self.root = nn.Module()
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.shapes: dict[str, list[int]] = {}
        for vi in [*g.value_info, *g.input, *g.output]:
            tt = vi.type.tensor_type
            if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                self.shapes[vi.name] = [int(d.dim_value) for d in tt.shape.dim]
        self.env: dict[str, torch.fx.Node] = {}
        self.uses: dict[str, int] = {}
        for node in g.node:
            for x in node.input:
                self.uses[x] = self.uses.get(x, 0) + 1
        for o in g.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        self.n_buffers = 0
        self.folded_bn: dict[str, str] = {}  # BN output -> the conv node that absorbed it

    # ---- helpers ---------------------------------------------------------------------------------------
    def fail(self, node: onnx.NodeProto, why: str) -> ConversionError:
        return ConversionError(f"{self.path.name}: node '{node.name or node.op_type}' ({node.op_type}): {why}",
                               "plan, eval and compile of an ONNX file convert it to PyTorch; for other ops pass "
                               "the PyTorch model (bundled name, timm:NAME, package.module:factory)")

    def shape(self, name: str, node: onnx.NodeProto) -> list[int]:
        if name not in self.shapes:
            raise self.fail(node, f"the size of '{name}' is unknown after shape inference (pass --input-shape?)")
        return self.shapes[name]

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def tensor_arg(self, name: str) -> Any:
        """An op input as an fx value: the activation's node, or a constant as a buffer of the root."""
        if name in self.env:
            return self.env[name]
        value = self.consts[name]
        buf = f"const_{self.n_buffers}"
        self.n_buffers += 1
        self.root.register_buffer(buf, torch.from_numpy(np.array(value)))
        return self.fx.get_attr(buf)

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> torch.fx.Node:
        return self.fx.call_function(fn, tuple(args), kwargs)

    def add_module(self, key: str, module: nn.Module) -> str:
        parent = self.root
        *path, leaf = key.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, Scope())
            parent = getattr(parent, part)
        if hasattr(parent, leaf):
            return key  # a layer whose weight another node shares: one module, called twice
        parent.add_module(leaf, module)
        return key

    def call_layer(self, key: str, x: Any) -> torch.fx.Node:
        """Call the layer ``key`` through its parents (:class:`Scope`), as the original network did."""
        head, _, rest = key.partition(".")
        return self.fx.call_module(head, (x,), {"path": rest} if rest else {})

    def batch_axis_ok(self, node: onnx.NodeProto, axis: int, rank: int) -> None:
        if rank and axis % rank == 0:
            raise self.fail(node, "it works along the batch dim, which the converted model keeps free")

    # ---- the walk --------------------------------------------------------------------------------------
    def run(self) -> torch.fx.GraphModule:
        g = self.model.graph
        inputs = [i.name for i in g.input if i.name not in self.consts]
        for name in inputs:
            shape = self.shapes.get(name, [])
            if not shape or shape[0] != 1:
                raise ConversionError(f"{self.path.name}: input '{name}' {shape} has no batch dim 1 first",
                                      "export the model with a leading batch dim, e.g. [1, 3, 224, 224]")
            self.env[name] = self.fx.placeholder(_identifier(name))
        for i, node in enumerate(g.node):
            self.node(node, i)
        outs = []
        for o in g.output:
            if o.name not in self.env:
                raise ConversionError(f"{self.path.name}: output '{o.name}' does not depend on the input",
                                      "export the model with its input wired to every output")
            outs.append(self.env[o.name])
        self.fx.output(outs[0] if len(outs) == 1 else tuple(outs))
        gm = torch.fx.GraphModule(self.root, self.fx, class_name="OnnxModel")
        return gm.eval()

    def node(self, node: onnx.NodeProto, index: int) -> None:
        op = node.op_type
        ins = list(node.input)
        live = [x for x in ins if x in self.env]
        if op in ("Shape", "Size") and ins[0] in self.env:
            shape = np.array(self.shape(ins[0], node), dtype=np.int64)
            a = _attrs(node)
            value = shape[a.get("start", 0):a.get("end", None)] if op == "Shape" else np.array(shape.prod())
            self.consts[node.output[0]] = value
            return
        if not live:
            if node.domain not in ("", "ai.onnx") or op in _NEVER_FOLD:
                raise self.fail(node, "cannot be evaluated ahead")
            values = evaluate_node(node, self.consts, self.model)
            if values is None:
                raise self.fail(node, "ONNX's reference evaluator cannot evaluate it on its constants")
            for o, v in zip([o for o in node.output if o], values, strict=False):
                self.consts[o] = np.asarray(v)
            return
        if node.domain not in ("", "ai.onnx"):
            raise self.fail(node, f"an op of domain '{node.domain}' is not translated")
        if op in _IDENTITY:
            self.env[node.output[0]] = self.env[ins[0]]
            return
        if op == "BatchNormalization" and node.output[0] in self.folded_bn:
            return  # folded into the conv before it
        name = node.name or f"{op}_{index}"
        handler = getattr(self, f"op_{op}", None)
        if handler is not None:
            result = handler(node, name, ins, _attrs(node))
        elif op in _BINARY:
            result = self.binary(node, ins)
        elif op in _UNARY:
            result = self.call(_UNARY[op], self.tensor_arg(ins[0]))
        elif op in _REDUCE:
            result = self.reduce(node, ins, _attrs(node))
        else:
            raise self.fail(node, "this op is not translated")
        outs = [o for o in node.output if o]
        if isinstance(result, list):
            for o, r in zip(outs, result, strict=True):
                self.env[o] = r
        else:
            self.env[outs[0]] = result

    # ---- layers ----------------------------------------------------------------------------------------
    def _bn_after(self, out: str) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray] | None:
        """The BatchNormalization that is the only consumer of ``out`` (constant statistics), as a per-channel
        (scale, shift) to fold, or None."""
        if self.uses.get(out, 0) != 1:
            return None
        for node in self.model.graph.node:
            if node.op_type == "BatchNormalization" and node.input and node.input[0] == out:
                vals = [self.const(x) for x in node.input[1:5]]
                if any(v is None for v in vals) or len([o for o in node.output if o]) != 1:
                    return None
                gamma, beta, mean, var = (v.astype(np.float64) for v in vals)  # type: ignore[union-attr]
                eps = float(_attrs(node).get("epsilon", 1e-5))
                scale = gamma / np.sqrt(var + eps)
                return node, scale, beta - mean * scale
        return None

    def op_Conv(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        w = self.const(ins[1])
        if w is None:
            raise self.fail(node, "the weight is not a constant")
        b = self.const(ins[2]) if len(ins) > 2 else None
        if len(ins) > 2 and ins[2] and b is None:
            raise self.fail(node, "the bias is not a constant")
        w = w.astype(np.float64)
        b = b.astype(np.float64) if b is not None else None
        bn = self._bn_after(node.output[0])
        if bn is not None:
            bn_node, scale, shift = bn
            w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
            b = (b if b is not None else 0.0) * scale + shift
        rank = w.ndim - 2
        if rank not in (1, 2):
            raise self.fail(node, f"{rank}-D convolutions are not translated")
        in_shape, out_shape = self.shape(ins[0], node), self.shape(node.output[0], node)
        kernel = list(w.shape[2:])
        strides = list(a.get("strides", [1] * rank))
        dil = list(a.get("dilations", [1] * rank))
        pads = self._pads(node, a, in_shape[2:], out_shape[2:], kernel, strides, dil)
        groups = int(a.get("group", 1))
        cin, cout = w.shape[1] * groups, w.shape[0]
        symmetric = pads[:rank] == pads[rank:]
        cls = (nn.Conv1d if rank == 1 else nn.Conv2d) if symmetric else PaddedConv
        if not symmetric and rank != 2:
            raise self.fail(node, "asymmetric padding of a 1-D convolution is not translated")
        kwargs: dict[str, Any] = {"pad": (pads[1], pads[3], pads[0], pads[2])} if not symmetric else {}
        conv = cls(cin, cout, kernel, stride=strides, padding=pads[:rank] if symmetric else 0, dilation=dil,
                   groups=groups, bias=b is not None, **kwargs)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w))
            if b is not None:
                conv.bias.copy_(torch.from_numpy(np.broadcast_to(b, (cout,)).copy()))
        key = self.add_module(self.keys.get(name) or _identifier(name), conv)
        result = self.call_layer(key, self.tensor_arg(ins[0]))
        if bn is not None:
            self.env[bn[0].output[0]] = result
            self.folded_bn[bn[0].output[0]] = name
        return result

    def _pads(self, node: onnx.NodeProto, a: dict[str, Any], ins: list[int], outs: list[int], kernel: list[int],
              strides: list[int], dil: list[int]) -> list[int]:
        """ONNX pads ``[begin..., end...]``, auto_pad resolved from the static sizes."""
        rank = len(kernel)
        auto = a.get("auto_pad", "NOTSET")
        if auto in ("NOTSET", "VALID"):
            return list(a.get("pads", [0] * 2 * rank)) if auto == "NOTSET" else [0] * 2 * rank
        total = [max((o - 1) * s + (k - 1) * d + 1 - i, 0) for i, o, k, s, d in zip(ins, outs, kernel, strides, dil,
                                                                                     strict=True)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        return small + big if auto == "SAME_UPPER" else big + small

    def op_Gemm(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        w = self.const(ins[1])
        if w is None or ins[0] not in self.env or int(a.get("transA", 0)):
            raise self.fail(node, "only activation x constant weight (transA=0) is translated")
        w = w.astype(np.float64) * float(a.get("alpha", 1.0))
        if not int(a.get("transB", 0)):
            w = w.T
        c = self.const(ins[2]) if len(ins) > 2 and ins[2] else None
        if len(ins) > 2 and ins[2] and c is None:
            raise self.fail(node, "the bias is not a constant")
        return self._linear(name, w, None if c is None else c.astype(np.float64) * float(a.get("beta", 1.0)), ins[0])

    def op_MatMul(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        w = self.const(ins[1])
        if w is not None and w.ndim == 2 and ins[0] in self.env:
            return self._linear(name, w.astype(np.float64).T, None, ins[0])
        return self.call(torch.matmul, self.tensor_arg(ins[0]), self.tensor_arg(ins[1]))

    def _linear(self, name: str, w: np.ndarray, bias: np.ndarray | None, x: str) -> Any:
        out_f, in_f = w.shape
        lin = nn.Linear(in_f, out_f, bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            if bias is not None:
                lin.bias.copy_(torch.from_numpy(np.broadcast_to(bias, (out_f,)).copy()))
        key = self.add_module(self.keys.get(name) or _identifier(name), lin)
        return self.call_layer(key, self.tensor_arg(x))

    def op_BatchNormalization(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        if any(self.const(x) is None for x in ins[1:5]):
            raise self.fail(node, "the statistics are not constants")
        gamma, beta, mean, var = (self.tensor_arg(x) for x in ins[1:5])
        return self.call(F.batch_norm, self.tensor_arg(ins[0]), mean, var, gamma, beta, False, 0.0,
                         float(a.get("epsilon", 1e-5)))

    # ---- element-wise ----------------------------------------------------------------------------------
    def binary(self, node: onnx.NodeProto, ins: list[str]) -> Any:
        fn = _BINARY[node.op_type]
        args = [self.tensor_arg(x) for x in ins if x]
        result = args[0]
        for other in args[1:]:
            result = self.call(fn, result, other)
        return result

    def op_Clip(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        lo = self.const(ins[1]) if len(ins) > 1 and ins[1] else a.get("min")
        hi = self.const(ins[2]) if len(ins) > 2 and ins[2] else a.get("max")
        lo = None if lo is None else float(np.asarray(lo))
        hi = None if hi is None else float(np.asarray(hi))
        x = self.tensor_arg(ins[0])
        if lo == 0.0 and hi == 6.0:
            return self.call(F.relu6, x)
        if lo == 0.0 and hi is None:
            return self.call(F.relu, x)
        return self.call(torch.clamp, x, lo, hi)

    def op_HardSigmoid(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        x = self.tensor_arg(ins[0])
        if abs(alpha - 1 / 6) < 1e-6 and beta == 0.5:
            return self.call(F.hardsigmoid, x)
        return self.call(torch.clamp, self.call(torch.add, self.call(torch.mul, x, alpha), beta), 0.0, 1.0)

    def op_LeakyRelu(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        return self.call(F.leaky_relu, self.tensor_arg(ins[0]), float(a.get("alpha", 0.01)))

    def op_Elu(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        return self.call(F.elu, self.tensor_arg(ins[0]), float(a.get("alpha", 1.0)))

    def op_Gelu(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        return self.call(F.gelu, self.tensor_arg(ins[0]), approximate=a.get("approximate", "none"))

    def op_PRelu(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        slope = self.const(ins[1])
        if slope is None:
            raise self.fail(node, "the slope is not a constant")
        return self.call(F.prelu, self.tensor_arg(ins[0]), torch.from_numpy(slope.reshape(-1).copy()))

    def op_Softmax(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        return self._softmax(node, ins, a, F.softmax)

    def op_LogSoftmax(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        return self._softmax(node, ins, a, F.log_softmax)

    def _softmax(self, node: onnx.NodeProto, ins: list[str], a: dict[str, Any], fn: Any) -> Any:
        rank = len(self.shape(ins[0], node))
        axis = int(a.get("axis", -1 if _opset(self.model) >= 13 else 1))
        if _opset(self.model) < 13 and axis % rank != rank - 1:
            raise self.fail(node, "softmax over flattened trailing dims (opset < 13) is not translated")
        self.batch_axis_ok(node, axis, rank)
        return self.call(fn, self.tensor_arg(ins[0]), dim=axis)

    # ---- pooling ---------------------------------------------------------------------------------------
    def op_GlobalAveragePool(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        rank = len(self.shape(ins[0], node))
        return self.call(torch.mean, self.tensor_arg(ins[0]), dim=tuple(range(2, rank)), keepdim=True)

    def op_GlobalMaxPool(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        rank = len(self.shape(ins[0], node))
        return self.call(torch.amax, self.tensor_arg(ins[0]), dim=tuple(range(2, rank)), keepdim=True)

    def _pool(self, node: onnx.NodeProto, ins: list[str], a: dict[str, Any], average: bool) -> Any:
        in_shape, out_shape = self.shape(ins[0], node), self.shape(node.output[0], node)
        kernel = list(a["kernel_shape"])
        rank = len(kernel)
        if rank not in (1, 2):
            raise self.fail(node, f"{rank}-D pooling is not translated")
        strides = list(a.get("strides", [1] * rank))
        dil = list(a.get("dilations", [1] * rank))
        pads = self._pads(node, a, in_shape[2:], out_shape[2:], kernel, strides, dil)
        ceil = bool(a.get("ceil_mode", 0))
        x = self.tensor_arg(ins[0])
        if pads[:rank] != pads[rank:] or any(p > k // 2 for p, k in zip(pads, kernel * 2, strict=True)):
            if average and not a.get("count_include_pad", 0):
                raise self.fail(node, "asymmetric padding that the average does not count is not translated")
            torch_pad = [p for d in reversed(range(rank)) for p in (pads[d], pads[rank + d])]
            x = self.call(F.pad, x, torch_pad, value=0.0 if average else float("-inf"))
            pads = [0] * 2 * rank
        fn = (F.avg_pool1d if rank == 1 else F.avg_pool2d) if average else (F.max_pool1d if rank == 1 else
                                                                             F.max_pool2d)
        if average:
            if any(d != 1 for d in dil):
                raise self.fail(node, "dilated average pooling is not translated")
            return self.call(fn, x, kernel, strides, pads[:rank], ceil, bool(a.get("count_include_pad", 0)))
        return self.call(fn, x, kernel, strides, pads[:rank], dil, ceil)

    def op_MaxPool(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        if len([o for o in node.output if o]) > 1:
            raise self.fail(node, "MaxPool's indices output is not translated")
        return self._pool(node, ins, a, average=False)

    def op_AveragePool(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        return self._pool(node, ins, a, average=True)

    def reduce(self, node: onnx.NodeProto, ins: list[str], a: dict[str, Any]) -> Any:
        rank = len(self.shape(ins[0], node))
        axes = a.get("axes")
        if axes is None and len(ins) > 1 and ins[1]:
            axes = self.const(ins[1])
            if axes is None:
                raise self.fail(node, "the axes are not constants")
            axes = [int(v) for v in np.asarray(axes).reshape(-1)]
        if axes is None or len(axes) == 0:
            if int(a.get("noop_with_empty_axes", 0)):
                return self.tensor_arg(ins[0])
            axes = list(range(rank))
        for ax in axes:
            self.batch_axis_ok(node, ax, rank)
        return self.call(_REDUCE[node.op_type], self.tensor_arg(ins[0]), dim=tuple(int(x) for x in axes),
                         keepdim=bool(a.get("keepdims", 1)))

    # ---- shapes ----------------------------------------------------------------------------------------
    def _reshape_to_output(self, node: onnx.NodeProto, ins: list[str]) -> Any:
        in_shape, out_shape = self.shape(ins[0], node), self.shape(node.output[0], node)
        if not out_shape or out_shape[0] != 1 or in_shape[0] != 1:
            raise self.fail(node, f"it reshapes {in_shape} to {out_shape}, across the batch dim")
        return self.call(torch.reshape, self.tensor_arg(ins[0]), (-1, *out_shape[1:]))

    def op_Reshape(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        return self._reshape_to_output(node, ins)

    op_Flatten = op_Squeeze = op_Unsqueeze = op_Reshape

    def op_Expand(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        in_shape, out_shape = self.shape(ins[0], node), self.shape(node.output[0], node)
        if len(in_shape) != len(out_shape) or out_shape[0] != 1:
            raise self.fail(node, f"it expands {in_shape} to {out_shape}, across the batch dim")
        return self.call(_expand, self.tensor_arg(ins[0]), (-1, *out_shape[1:]))

    def op_Transpose(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        rank = len(self.shape(ins[0], node))
        perm = list(a.get("perm", reversed(range(rank))))
        if perm[0] != 0:
            raise self.fail(node, f"perm {perm} moves the batch dim")
        return self.call(torch.permute, self.tensor_arg(ins[0]), perm)

    def op_Concat(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        rank = len(self.shape(node.output[0], node))
        axis = int(a["axis"])
        self.batch_axis_ok(node, axis, rank)
        if any(x not in self.env for x in ins if x):
            raise self.fail(node, "a constant joined to an activation is not translated")
        return self.call(torch.cat, [self.env[x] for x in ins if x], dim=axis)

    def op_Pad(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        rank = len(self.shape(ins[0], node))
        pads = self.const(ins[1]) if len(ins) > 1 and ins[1] else a.get("pads")
        if pads is None:
            raise self.fail(node, "the pads are not constants")
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        axes = list(range(rank))
        if len(ins) > 3 and ins[3]:
            axes = [int(v) % rank for v in np.asarray(self.const(ins[3])).reshape(-1)]
        full = [0] * 2 * rank
        for j, ax in enumerate(axes):
            full[ax], full[rank + ax] = pads[j], pads[len(axes) + j]
        if full[0] or full[rank]:
            raise self.fail(node, "it pads the batch dim")
        value = self.const(ins[2]) if len(ins) > 2 and ins[2] else a.get("value", 0.0)
        mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(
            a.get("mode", "constant"))
        if mode is None:
            raise self.fail(node, f"pad mode {a.get('mode')} is not translated")
        last = max((d for d in range(rank) if full[d] or full[rank + d]), default=rank - 1)
        torch_pad = [p for d in reversed(range(1, last + 1)) for p in (full[d], full[rank + d])]
        kwargs = {"value": float(np.asarray(value))} if mode == "constant" else {}
        return self.call(F.pad, self.tensor_arg(ins[0]), torch_pad, mode=mode, **kwargs)

    def op_Resize(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        in_shape, out_shape = self.shape(ins[0], node), self.shape(node.output[0], node)
        if out_shape[:2] != in_shape[:2]:
            raise self.fail(node, "it resizes the batch or channel dim")
        mode, coords = a.get("mode", "nearest"), a.get("coordinate_transformation_mode", "half_pixel")
        size = tuple(out_shape[2:])
        x = self.tensor_arg(ins[0])
        if mode == "nearest":
            nearest = a.get("nearest_mode", "round_prefer_floor")
            if coords == "asymmetric" and nearest == "floor":
                return self.call(F.interpolate, x, size=size, mode="nearest")
            if coords in ("half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_floor",
                                                                               "round_prefer_ceil"):
                return self.call(F.interpolate, x, size=size, mode="nearest-exact")
        elif mode in ("linear", "cubic") and coords in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            torch_mode = ("linear", "bilinear", "trilinear")[len(size) - 1] if mode == "linear" else "bicubic"
            return self.call(F.interpolate, x, size=size, mode=torch_mode, align_corners=coords == "align_corners")
        raise self.fail(node, f"resize mode {mode} with {coords} coordinates is not translated")

    def op_Slice(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        in_shape = self.shape(ins[0], node)
        rank = len(in_shape)
        vals = [self.const(x) if len(ins) > j and x else None for j, x in enumerate(ins[1:5] + [""] * 4)][:4]
        if len(ins) > 1 and any(x and self.const(x) is None for x in ins[1:5]):
            raise self.fail(node, "the slice bounds are not constants")
        starts = vals[0] if len(ins) > 1 else a.get("starts")
        ends = vals[1] if len(ins) > 1 else a.get("ends")
        axes = vals[2] if len(ins) > 1 else a.get("axes")
        steps = vals[3] if len(ins) > 1 else None
        starts, ends = [int(v) for v in np.asarray(starts).reshape(-1)], [int(v) for v in np.asarray(ends).reshape(-1)]
        axes = [int(v) % rank for v in np.asarray(axes).reshape(-1)] if axes is not None else list(range(len(starts)))
        steps = [int(v) for v in np.asarray(steps).reshape(-1)] if steps is not None else [1] * len(starts)
        index: list[Any] = [slice(None)] * rank
        for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
            n = in_shape[ax]
            if ax == 0 and slice(s, e, st).indices(n) != (0, n, 1):
                raise self.fail(node, "it slices the batch dim")
            lo, hi, step = slice(s, e, st).indices(n)
            index[ax] = slice(lo, hi if hi >= 0 else None, step)
        return self.call(operator.getitem, self.tensor_arg(ins[0]), tuple(index))

    def op_Split(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        in_shape = self.shape(ins[0], node)
        axis = int(a.get("axis", 0)) % len(in_shape)
        self.batch_axis_ok(node, axis, len(in_shape))
        outs = [o for o in node.output if o]
        sizes = [self.shape(o, node)[axis] for o in outs]
        parts = self.call(torch.split, self.tensor_arg(ins[0]), sizes, dim=axis)
        return [self.call(operator.getitem, parts, j) for j in range(len(outs))]

    def op_Gather(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        idx = self.const(ins[1])
        if idx is None or ins[0] not in self.env:
            raise self.fail(node, "only constant indices into an activation are translated")
        rank = len(self.shape(ins[0], node))
        axis = int(a.get("axis", 0)) % rank
        self.batch_axis_ok(node, axis, rank)
        n = self.shape(ins[0], node)[axis]
        flat = torch.from_numpy((np.asarray(idx).reshape(-1) % n).astype(np.int64))
        picked = self.call(torch.index_select, self.tensor_arg(ins[0]), axis, flat)
        return self._reshape_to_output_node(node, picked)

    def _reshape_to_output_node(self, node: onnx.NodeProto, value: Any) -> Any:
        out_shape = self.shape(node.output[0], node)
        return self.call(torch.reshape, value, (-1, *out_shape[1:]))

    def op_Cast(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        dtype = _TORCH_DTYPES.get(int(a["to"]))
        if dtype is None:
            raise self.fail(node, f"cast to ONNX type {a['to']} is not translated")
        return self.call(_cast, self.tensor_arg(ins[0]), dtype)

    def op_LayerNormalization(self, node: onnx.NodeProto, name: str, ins: list[str], a: dict[str, Any]) -> Any:
        shape = self.shape(ins[0], node)
        axis = int(a.get("axis", -1)) % len(shape)
        self.batch_axis_ok(node, axis, len(shape))
        scale = self.const(ins[1])
        bias = self.const(ins[2]) if len(ins) > 2 and ins[2] else None
        if scale is None or (len(ins) > 2 and ins[2] and bias is None):
            raise self.fail(node, "scale and bias are not constants")
        return self.call(F.layer_norm, self.tensor_arg(ins[0]), tuple(shape[axis:]), self.tensor_arg(ins[1]),
                         self.tensor_arg(ins[2]) if bias is not None else None, float(a.get("epsilon", 1e-5)))


def _expand(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return x.expand(*shape)


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype)


def _identifier(name: str) -> str:
    from tap_edge.graph.onnx_keys import sanitized

    s = sanitized(name)
    return f"v_{s}" if s[0].isdigit() else s


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)




# ---- the file's preprocessing and the LoadedModel that carries the converted module -------------------------
#: The ONNX metadata key holding a file's preprocessing (JSON of :class:`~tap_edge.graph.models.Preprocess`).
PREPROCESS_KEY = "tap_edge_preprocess"


def file_preprocess(path: Path, input_shape: list[int]) -> tuple[Any, str | None]:
    """(the Preprocess of an ONNX file at its input shape ``[1, C, H, W]``, a note when it is a default).

    From the file's ``tap_edge_preprocess`` metadata (:func:`set_preprocess`) when it has one; else ImageNet's
    mean and std (3 channels; other channel counts: pixels / 255) with the resize over the 224/256 crop,
    which is what torchvision and most timm classifiers were trained with."""
    import json

    from tap_edge.graph.models import Preprocess

    size = tuple(input_shape[1:])
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if PREPROCESS_KEY in meta:
        try:
            value = json.loads(meta[PREPROCESS_KEY])
        except ValueError:
            raise ModelLoadError(f"{path}: metadata {PREPROCESS_KEY} is not JSON",
                                 "write it with tap_edge.graph.convert.set_preprocess") from None
        pre = Preprocess.coerce(value, str(path))
        if tuple(pre.input_size) != size:
            pre = pre.at_shape(list(input_shape))
        return pre, None
    if len(size) == 3 and size[0] == 3:
        pre = Preprocess(size, round(min(size[1:]) * 256 / 224))
        what = "ImageNet mean/std, resize to 256/224 of the input side, centre crop"
    else:
        n = size[0] if size else 1
        pre = Preprocess(size, min(size[1:]) if len(size) == 3 else 1, (0.0,) * n, (1.0,) * n)
        what = "pixels / 255, no normalisation"
    return pre, (f"no {PREPROCESS_KEY} metadata in the file: images are read with tap-edge's default ({what}); "
                 "set it with tap_edge.graph.convert.set_preprocess, or calibrate on .npy tensors")


def set_preprocess(path: str | Path, preprocess: Any) -> None:
    """Record how images become the input of the ONNX file ``path`` (a Preprocess, its dict, or ``(C, H,
    W)``) in its metadata, so plan, eval and compile of the file read images as the network expects."""
    import json

    from tap_edge.graph.models import Preprocess

    path = Path(path)
    pre = Preprocess.coerce(preprocess, str(path))
    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != PREPROCESS_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=PREPROCESS_KEY, value=json.dumps(pre.to_dict()))
    onnx.save(proto, str(path))


def with_torch_module(lm: Any, graph: ModelGraph | None = None) -> Any:
    """``lm`` (a loaded ``.onnx`` file) with its converted PyTorch module and its preprocessing; ``graph``:
    the file's graph when already read (:func:`tap_edge.graph.models.load_graph`)."""
    import dataclasses

    from tap_edge.graph.models import load_graph

    graph = graph if graph is not None else load_graph(lm)
    if len(graph.inputs) != 1:
        raise ModelLoadError(f"{lm.spec}: plan, eval and compile take a model with one input, this file has "
                             f"{len(graph.inputs)} ({', '.join(graph.inputs)})",
                             "check and measure work on it; for the rest pass a single-input model")
    module = onnx_to_torch(lm.path, graph, lm.input_shapes)
    pre, note = file_preprocess(lm.path, graph.tensors[graph.inputs[0]].shape)
    if note:
        from tap_edge.core import console

        console.info(f"{lm.spec}: {note}")
    return dataclasses.replace(lm, module=module, preprocess=pre, input_note=note)


def as_pytorch(model: Any, input_shapes: InputShapes | None = None, purpose: str = "planning") -> Any:
    """The LoadedModel with a PyTorch module that ``purpose`` (plan, eval, compile) works on, from a spec
    string, a path, a LoadedModel or an ``nn.Module`` (:func:`tap_edge.graph.models.from_module`): an ONNX file
    is converted (:func:`with_torch_module`); a TFLite file is refused in one line saying what to give."""
    from tap_edge.graph.models import LoadedModel, _at_shape, from_module, load_model

    if isinstance(model, nn.Module):
        lm = from_module(model)
        lm = _at_shape(lm, input_shapes) if input_shapes else lm
    elif isinstance(model, LoadedModel):
        lm = model
    else:
        lm = load_model(str(model), input_shapes)
    if lm.frontend == "tflite":
        raise ModelLoadError(f"{lm.spec}: {purpose} needs the network's float weights, which a .tflite file does "
                             "not give back faithfully",
                             "pass the .onnx or PyTorch model it was converted from (check and measure take the "
                             ".tflite)")
    if lm.frontend == "onnx" and lm.module is None:
        lm = with_torch_module(lm)
    return lm
