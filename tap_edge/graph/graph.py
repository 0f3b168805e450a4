"""ModelGraph: one front-end-independent description of a network for memory planning and quantization.

Ops are listed in execution order; each consumes and produces named activation tensors. Constant data
(weights, biases, other parameters) is attached to the op that uses it. The graph is a plain dataclass tree
that round-trips through JSON, so it can be cached and tested alone.

Front-ends (``tap_edge.graph.frontends``) produce a raw graph; :func:`normalize` then applies the rewrites every
deployment runtime performs (BatchNorm folded into the preceding conv / fc, ReLU/ReLU6 fused into it,
identity and dropout removed), so the PyTorch and ONNX views of one network agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Normalised op classes every front-end maps its ops to (device profiles name them too).
OP_CLASSES = (
    "conv", "dwconv", "fc", "matmul", "add", "mul", "concat", "pool", "global_pool", "act", "softmax",
    "reshape", "transpose", "pad", "norm", "resize", "slice", "reduce", "quantize", "embedding", "variable",
    "unknown",
)
#: Op classes whose weights a plan assigns bits to.
QUANTIZABLE_CLASSES = ("conv", "dwconv", "fc")
#: Activations that TFLite / CMSIS-NN fuse into the producing op.
FUSABLE_ACTIVATIONS = ("relu", "relu6")
#: Ops whose output can alias the input buffer when the runtime allows it.
INPLACE_CLASSES = ("reshape",)

DTYPE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "int32": 32, "int64": 64, "int16": 16, "int8": 8,
              "uint8": 8, "int4": 4, "bool": 8, "float64": 64}


@dataclass
class Tensor:
    """An activation tensor (graph input, intermediate or output). Batch size is 1."""

    name: str
    shape: list[int]
    dtype: str = "float32"
    kind: str = "activation"  # "input" | "activation" | "output"

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    def nbytes(self, bits: int | None = None) -> int:
        b = bits if bits is not None else DTYPE_BITS.get(self.dtype, 32)
        return (self.numel * b + 7) // 8


@dataclass
class Op:
    """One executed operator.

    ``weight_shape`` is the quantizable weight (conv: [out, in/groups, kh, kw]; fc: [out, in]); ``bias`` the
    number of bias values (int32 once quantized); ``other_params`` constants that stay float (e.g. LayerNorm).
    ``macs`` are multiply-accumulates for batch 1. ``module`` is the PyTorch module name (FQN) when known: the
    key of a plan. ``fused`` records rewrites applied by :func:`normalize` (e.g. ``["bn", "relu6"]``).
    """

    name: str
    op_type: str
    op_class: str
    inputs: list[str]
    outputs: list[str]
    weight_shape: list[int] | None = None
    weight_dtype: str = "float32"
    bias: int = 0
    other_params: int = 0
    macs: int = 0
    module: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    fused: list[str] = field(default_factory=list)

    @property
    def weight_params(self) -> int:
        return math.prod(self.weight_shape) if self.weight_shape else 0

    @property
    def params(self) -> int:
        return self.weight_params + self.bias + self.other_params

    @property
    def quantizable(self) -> bool:
        return self.op_class in QUANTIZABLE_CLASSES and self.weight_shape is not None

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0] if self.weight_shape else 0


@dataclass
class ModelGraph:
    """Ops in execution order plus their activation tensors; see the module docstring."""

    name: str
    frontend: str
    ops: list[Op]
    tensors: dict[str, Tensor]
    inputs: list[str]
    outputs: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- summaries -----------------------------------------------------------------------------------
    @property
    def params(self) -> int:
        return sum(op.params for op in self.ops)

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    def quantizable_ops(self) -> list[Op]:
        return [op for op in self.ops if op.quantizable]

    def unknown_ops(self) -> list[Op]:
        return [op for op in self.ops if op.op_class == "unknown"]

    def op(self, name: str) -> Op:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(name)

    def producers(self) -> dict[str, int]:
        return {t: i for i, op in enumerate(self.ops) for t in op.outputs}

    def consumers(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {t: [] for t in self.tensors}
        for i, op in enumerate(self.ops):
            for t in op.inputs:
                out.setdefault(t, []).append(i)
        return out

    def lifetimes(self) -> dict[str, tuple[int, int]]:
        """Tensor name -> (first step, last step), inclusive, as TFLite Micro's planner defines them:
        graph inputs live from step 0, outputs to the last step, others from producer to last consumer."""
        last = len(self.ops) - 1
        prod = self.producers()
        cons = self.consumers()
        life: dict[str, tuple[int, int]] = {}
        for name in self.tensors:
            first = 0 if name in self.inputs or name not in prod else prod[name]
            end = max(cons.get(name) or [first])
            if name in self.outputs:
                end = max(last, 0)
            life[name] = (first, end)
        return life

    # ---- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelGraph:
        return cls(
            name=d["name"], frontend=d["frontend"],
            ops=[Op(**o) for o in d["ops"]],
            tensors={k: Tensor(**t) for k, t in d["tensors"].items()},
            inputs=list(d["inputs"]), outputs=list(d["outputs"]), meta=dict(d.get("meta", {})),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> ModelGraph:
        return cls.from_dict(json.loads(Path(path).read_text()))


def conv_macs(out_shape: list[int], weight_shape: list[int]) -> int:
    """MACs of a convolution for batch 1: output positions x (in/groups x kernel) per output channel."""
    spatial = math.prod(out_shape[2:]) if len(out_shape) > 2 else 1
    return spatial * math.prod(weight_shape)


def normalize(graph: ModelGraph) -> ModelGraph:
    """Apply the rewrites deployment runtimes perform (see module docstring); returns a new graph."""
    ops = [Op(**asdict(o)) for o in graph.ops]
    tensors = dict(graph.tensors)
    protected = set(graph.outputs) | set(graph.inputs)

    def consumers_of(t: str) -> list[Op]:
        return [o for o in ops if t in o.inputs]

    def rename_input(old: str, new: str) -> None:
        for o in ops:
            o.inputs = [new if x == old else x for x in o.inputs]

    def absorb(keep: Op, drop: Op) -> None:
        """``drop`` consumes ``keep``'s single output; remove it and let ``keep`` produce its output."""
        old_out, new_out = keep.outputs[0], drop.outputs[0]
        keep.outputs = [new_out]
        tensors.pop(old_out, None)
        ops.remove(drop)

    changed = True
    while changed:
        changed = False
        for o in list(ops):
            if o.op_class == "identity" and len(o.inputs) == 1 and len(o.outputs) == 1:
                src, dst = o.inputs[0], o.outputs[0]
                if dst in protected:
                    continue
                rename_input(dst, src)
                tensors.pop(dst, None)
                ops.remove(o)
                changed = True
                break
            if len(o.outputs) != 1 or o.outputs[0] in protected:
                continue
            users = consumers_of(o.outputs[0])
            if len(users) != 1:
                continue
            nxt = users[0]
            if nxt.inputs != [o.outputs[0]]:
                continue
            if o.op_class in ("conv", "dwconv", "fc") and nxt.op_class == "norm" and nxt.attrs.get("foldable"):
                if not o.fused:  # fold BN into the conv: weights rescaled, bias per output channel
                    o.bias = o.out_channels
                    o.fused.append("bn")
                    o.fused.extend(nxt.fused)
                    absorb(o, nxt)
                    changed = True
                    break
            if (o.op_class in ("conv", "dwconv", "fc", "add") and nxt.op_class == "act"
                    and nxt.attrs.get("fn") in FUSABLE_ACTIVATIONS
                    and not any(f in FUSABLE_ACTIVATIONS for f in o.fused)):
                o.fused.append(nxt.attrs["fn"])
                absorb(o, nxt)
                changed = True
                break
    # A BatchNorm that could not be folded stays an op with float scale/shift.
    live = {t for o in ops for t in o.inputs + o.outputs} | set(graph.inputs) | set(graph.outputs)
    tensors = {k: v for k, v in tensors.items() if k in live}
    return ModelGraph(graph.name, graph.frontend, ops, tensors, list(graph.inputs), list(graph.outputs),
                      dict(graph.meta))
