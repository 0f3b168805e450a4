"""PyTorch front-end: torch.fx symbolic trace + shape propagation -> ModelGraph.

Leaf modules are kept whole (Conv2d, Linear, BatchNorm, timm's Conv2dSame and BatchNormAct2d, ...), so every
weight-carrying op keeps its module name (FQN): the key a plan uses for that layer.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from tap_edge.core.errors import ModelLoadError
from tap_edge.graph.graph import ModelGraph, Op, Tensor, conv_macs, conv_padding_attrs, normalize, same_pads

_ACT_MODULES = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "hardsigmoid", nn.GELU: "gelu", nn.Tanh: "tanh", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu",
    nn.Mish: "mish", nn.PReLU: "prelu",
}
_ACT_FUNCS = {
    torch.relu: "relu", nn.functional.relu: "relu", nn.functional.relu6: "relu6", torch.sigmoid: "sigmoid",
    nn.functional.sigmoid: "sigmoid", nn.functional.silu: "silu", nn.functional.gelu: "gelu",
    nn.functional.hardswish: "hardswish", nn.functional.hardsigmoid: "hardsigmoid", torch.tanh: "tanh",
    nn.functional.hardtanh: "hardtanh", nn.functional.leaky_relu: "leaky_relu",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh"}
_FUNC_CLASSES: dict[Any, str] = {
    operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "add", torch.sub: "add",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", operator.truediv: "mul", torch.div: "mul",
    torch.cat: "concat", torch.concat: "concat", torch.flatten: "reshape", torch.reshape: "reshape",
    torch.squeeze: "reshape", torch.unsqueeze: "reshape", torch.matmul: "matmul", operator.matmul: "matmul",
    torch.bmm: "matmul", torch.permute: "transpose", torch.transpose: "transpose",
    nn.functional.pad: "pad", nn.functional.interpolate: "resize", nn.functional.softmax: "softmax",
    torch.softmax: "softmax", nn.functional.layer_norm: "norm", operator.getitem: "slice",
    torch.chunk: "slice", torch.split: "slice", nn.functional.adaptive_avg_pool2d: "global_pool",
    torch.mean: "reduce", nn.functional.avg_pool2d: "pool", nn.functional.max_pool2d: "pool",
    nn.functional.dropout: "identity",
}
_METHOD_CLASSES = {
    "add": "add", "add_": "add", "sub": "add", "mul": "mul", "mul_": "mul", "div": "mul", "flatten": "reshape",
    "view": "reshape", "reshape": "reshape", "squeeze": "reshape", "unsqueeze": "reshape", "permute": "transpose",
    "transpose": "transpose", "contiguous": "identity", "matmul": "matmul", "softmax": "softmax",
    "mean": "reduce", "chunk": "slice", "split": "slice", "expand_as": "reshape", "expand": "reshape",
    "clone": "identity", "float": "identity", "to": "identity", "type_as": "identity",
}


_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)


class _Tracer(torch.fx.Tracer):
    """Keeps torch.nn leaves plus timm's no-trace modules (Conv2dSame, BatchNormAct2d, ...) whole."""

    def __init__(self) -> None:
        try:
            from timm.layers import _fx as timm_fx
            fns = tuple(timm_fx.get_notrace_functions())
            self._timm_leaves = tuple(timm_fx.get_notrace_modules())
        except Exception:  # timm absent or changed: plain torch.nn leaves only
            fns, self._timm_leaves = (), ()
        super().__init__(autowrap_functions=fns)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        name = type(m).__name__
        if name in ("BatchNormAct2d", "Conv2dSame", "SelectAdaptivePool2d") or isinstance(m, self._timm_leaves):
            return True
        # subclasses of the weight-carrying layers (timm.layers.Linear, ...) are those layers: keep them whole,
        # or the tracer sees an F.linear on a float parameter
        if isinstance(m, _LAYER_TYPES):
            return True
        return super().is_leaf_module(m, qualname)


def _shape(meta: Any) -> list[int] | None:
    if isinstance(meta, TensorMetadata):
        return [int(d) for d in meta.shape]
    return None


def _dtype(meta: TensorMetadata) -> str:
    return str(meta.dtype).removeprefix("torch.")


def _act_fn(m: nn.Module) -> str | None:
    for cls, fn in _ACT_MODULES.items():
        if isinstance(m, cls):
            return fn
    if isinstance(m, nn.Hardtanh):
        return "relu6" if (m.min_val, m.max_val) == (0.0, 6.0) else "hardtanh"
    return None


def _tflite_padding(m: nn.Module, tname: str, in_shape: list[int]) -> dict[str, Any]:
    """Padding of a 2-D conv and whether a TFLite converter must emit a separate PAD op before it.

    TFLite convs only pad VALID (none) or SAME (TF's asymmetric rule). PyTorch's symmetric padding that is
    neither, e.g. every stride-2 3x3 conv with padding 1 on an even input, and timm's Conv2dSame (which pads
    with F.pad at run time), become PAD + conv in the converted model: one more activation tensor."""
    h, w = in_shape[2], in_shape[3]
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    same = (same_pads(h, kh, sh, dh), same_pads(w, kw, sw, dw))
    if tname == "Conv2dSame":  # pads with F.pad at run time: a PAD op whenever it pads at all
        out: dict[str, Any] = {"padding": [same[0][0], same[0][1], same[1][0], same[1][1]]}
        if any(sum(p) for p in same):
            out["pad_shape"] = [in_shape[0], in_shape[1], h + sum(same[0]), w + sum(same[1])]
        return out
    if isinstance(m.padding, str):
        pads = same if m.padding == "same" else ((0, 0), (0, 0))
    else:
        ph, pw = m.padding
        pads = ((ph, ph), (pw, pw))
    return conv_padding_attrs(in_shape, [kh, kw], [sh, sw], [dh, dw], pads)


def _module_op(name: str, m: nn.Module, inputs: list[str], out: str, out_shape: list[int],
               in_shape: list[int] | None) -> list[Op]:
    """Ops for one leaf module call (BatchNormAct2d gives two: the norm and its activation)."""
    tname = type(m).__name__
    nparams = sum(p.numel() for p in m.parameters())
    if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        w = list(m.weight.shape)
        cls = "dwconv" if m.groups > 1 and m.groups == m.in_channels and w[1] == 1 else "conv"
        attrs: dict[str, Any] = {"stride": list(m.stride), "groups": m.groups, "kernel": list(m.kernel_size)}
        if in_shape is not None and len(in_shape) == 4:
            attrs.update(_tflite_padding(m, tname, in_shape))
        return [Op(name, tname, cls, inputs, [out], weight_shape=w, bias=m.bias.numel() if m.bias is not None else 0,
                   macs=conv_macs(out_shape, w), module=name, attrs=attrs)]
    if isinstance(m, nn.Linear):
        w = list(m.weight.shape)
        tokens = max(1, int(torch.Size(out_shape).numel()) // w[0])
        return [Op(name, tname, "fc", inputs, [out], weight_shape=w, bias=m.bias.numel() if m.bias is not None else 0,
                   macs=tokens * w[0] * w[1], module=name)]
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        ops = [Op(name, tname, "norm", inputs, [out], other_params=2 * m.num_features, module=name,
                  attrs={"foldable": True})]
        act = getattr(m, "act", None)
        fn = _act_fn(act) if act is not None else None
        if tname == "BatchNormAct2d" and act is not None and not isinstance(act, nn.Identity):
            mid = f"{out}.bn"
            ops[0].outputs = [mid]
            ops.append(Op(f"{name}.act", type(act).__name__, "act" if fn else "unknown", [mid], [out],
                          module=f"{name}.act", attrs={"fn": fn or type(act).__name__.lower()}))
        return ops
    fn = _act_fn(m)
    if fn:
        return [Op(name, tname, "act", inputs, [out], other_params=nparams, module=name, attrs={"fn": fn})]
    simple = {
        nn.Identity: "identity", nn.Dropout: "identity", nn.Flatten: "reshape", nn.Softmax: "softmax",
        nn.MaxPool2d: "pool", nn.AvgPool2d: "pool", nn.ZeroPad2d: "pad", nn.ConstantPad2d: "pad",
        nn.Upsample: "resize", nn.LayerNorm: "norm", nn.GroupNorm: "norm", nn.Embedding: "embedding",
        nn.MaxPool1d: "pool", nn.AvgPool1d: "pool",
    }
    for cls, oc in simple.items():
        if isinstance(m, cls):
            return [Op(name, tname, oc, inputs, [out], other_params=nparams, module=name)]
    if tname == "SelectAdaptivePool2d" and not isinstance(getattr(m, "flatten", None), nn.Identity | None):
        # timm's pool+flatten module: two ops, as every exporter and runtime sees it
        mid = f"{out}.pooled"
        return [Op(name, tname, "global_pool", inputs, [mid], module=name, attrs={"shape": [*out_shape, 1, 1]}),
                Op(f"{name}.flatten", "Flatten", "reshape", [mid], [out], module=f"{name}.flatten")]
    if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) or tname == "SelectAdaptivePool2d":
        oc = "global_pool" if out_shape[-1] == 1 or len(out_shape) == 2 else "pool"
        return [Op(name, tname, oc, inputs, [out], module=name)]
    if isinstance(m, nn.Dropout2d | nn.AlphaDropout):
        return [Op(name, tname, "identity", inputs, [out], module=name)]
    return [Op(name, tname, "unknown", inputs, [out], other_params=nparams, module=name)]


def _function_class(node: torch.fx.Node) -> tuple[str, dict[str, Any]]:
    tgt = node.target
    if node.op == "call_method":
        if tgt in _ACT_METHODS:
            return "act", {"fn": _ACT_METHODS[tgt]}
        return _METHOD_CLASSES.get(str(tgt), "unknown"), {}
    if tgt in _ACT_FUNCS:
        fn = _ACT_FUNCS[tgt]
        if fn == "hardtanh" and node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0) == 0.0:
            fn = "relu6"
        return "act", {"fn": fn}
    return _FUNC_CLASSES.get(tgt, "unknown"), {}


def _scope(root: nn.Module, node: torch.fx.Node) -> str:
    """The module scope of an fx node as litert-torch names the tensors it writes (the class path of every
    enclosing module and its attribute name): the .tflite's tensor names, which cost flash bytes."""
    parts = [f"{type(root).__module__}.{type(root).__qualname__}_wrapped"]
    for key, (_, cls) in (node.meta.get("nn_module_stack") or {}).items():
        parts.append(f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', cls)}_{key.rsplit('.', 1)[-1]}")
    return "litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper/" + "/".join(parts)


def trace_module(model: nn.Module, example: torch.Tensor, name: str = "model") -> ModelGraph:
    """Trace ``model`` (in eval mode) on ``example`` (batch 1) and return the normalised graph."""
    model = model.eval()
    try:
        tracer = _Tracer()
        fx_graph = tracer.trace(model)
        gm = torch.fx.GraphModule(tracer.root, fx_graph)
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as e:  # tracing arbitrary user code can fail in many ways
        raise ModelLoadError(f"cannot trace model '{name}' with torch.fx ({e.__class__.__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''})",
                             "export it to ONNX (torch.onnx.export) and pass the .onnx file") from None
    modules = dict(gm.named_modules())
    tensors: dict[str, Tensor] = {}
    ops: list[Op] = []
    const_numel: dict[str, int] = {}
    alias: dict[str, str] = {}  # fx node -> tensor name (tuple elements, no-op getitem)
    inputs: list[str] = []
    outputs: list[str] = []
    charged: set[str] = set()

    def tensor_inputs(node: torch.fx.Node) -> list[str]:
        names = []
        for a in node.all_input_nodes:
            n = alias.get(a.name, a.name)
            if n in tensors and n not in names:
                names.append(n)
        return names

    def consts_of(node: torch.fx.Node) -> int:
        total = 0
        for a in node.all_input_nodes:
            if a.name in const_numel and a.name not in charged:
                charged.add(a.name)
                total += const_numel[a.name]
        return total

    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        shape = _shape(meta)
        if node.op == "placeholder":
            if shape is not None:
                tensors[node.name] = Tensor(node.name, shape, _dtype(meta), "input")
                inputs.append(node.name)
            continue
        if node.op == "get_attr":
            if shape is not None:
                const_numel[node.name] = int(torch.Size(shape).numel())
            continue
        if node.op == "output":
            flat = torch.fx.node.map_arg(node.args[0], lambda n: n)
            stack = [flat]
            while stack:
                x = stack.pop()
                if isinstance(x, torch.fx.Node):
                    t = alias.get(x.name, x.name)
                    if t in tensors and t not in outputs:
                        outputs.append(t)
                elif isinstance(x, list | tuple):
                    stack.extend(reversed(x))
                elif isinstance(x, dict):
                    stack.extend(x.values())
            continue
        ins = tensor_inputs(node)
        is_getitem = (node.op == "call_function" and node.target is operator.getitem
                      and isinstance(node.args[0], torch.fx.Node))
        if isinstance(meta, list | tuple) and all(isinstance(m, TensorMetadata) for m in meta):
            outs = [f"{node.name}.{i}" for i in range(len(meta))]
            for o, m in zip(outs, meta, strict=True):
                tensors[o] = Tensor(o, _shape(m) or [], _dtype(m))
            cls, attrs = _function_class(node) if node.op != "call_module" else ("unknown", {})
            ops.append(Op(node.name, str(getattr(node.target, "__name__", node.target)), cls, ins, outs,
                          other_params=consts_of(node), attrs=attrs))
            continue
        if shape is None:
            # getitem on a tuple of tensors: alias the element; other non-tensor values (sizes) are skipped
            if is_getitem:
                alias[node.name] = f"{node.args[0].name}.{node.args[1]}"
            continue
        if is_getitem and not isinstance(node.args[0].meta.get("tensor_meta"), TensorMetadata):
            alias[node.name] = f"{node.args[0].name}.{node.args[1]}"
            continue
        if not ins:  # a tensor made from constants only (e.g. torch.zeros): a constant, not an op
            const_numel[node.name] = int(torch.Size(shape).numel())
            continue
        tensors[node.name] = Tensor(node.name, shape, _dtype(meta))
        if node.op == "call_module":
            m = modules[str(node.target)]
            in_shape = tensors[ins[0]].shape if ins else None
            new_ops = _module_op(str(node.target), m, ins, node.name, shape, in_shape)
            for o in new_ops:
                o.attrs["scope"] = _scope(model, node)
            for o in new_ops:
                for t in o.outputs:
                    if t not in tensors:
                        tensors[t] = Tensor(t, o.attrs.pop("shape", shape), _dtype(meta))
            ops.extend(new_ops)
        else:
            cls, attrs = _function_class(node)
            tgt = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            if cls == "reduce" and len(shape) == 2 and len(tensors[ins[0]].shape) == 4:
                cls = "global_pool"
            ops.append(Op(node.name, str(tgt), cls, ins, [node.name], other_params=consts_of(node),
                          attrs={**attrs, "scope": _scope(model, node)}))
    if not ops:
        raise ModelLoadError(f"model '{name}' has no operations", "pass a model with at least one layer")
    graph = ModelGraph(name, "torch", ops, tensors, inputs, outputs,
                       meta={"input_shape": list(example.shape)})
    return normalize(graph)
