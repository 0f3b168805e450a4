"""ModelGraph: one front-end-independent description of a network for memory planning and quantization.

Ops are listed in execution order; each consumes and produces named activation tensors. Constant data
(weights, biases, other parameters) is attached to the op that uses it. The graph is a plain dataclass tree
that round-trips through JSON, so it can be cached and tested alone.

Front-ends (``tap_edge.graph.frontends``) produce a raw graph; :func:`normalize` then applies the rewrites every
deployment runtime performs (BatchNorm folded into the preceding conv / fc, ReLU/ReLU6 fused into it,
identity and dropout removed, also in front of a graph output), so the PyTorch and ONNX views of one network
agree. Control-flow subgraphs are flattened into the op list (:class:`Subgraph`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Normalised op classes every front-end maps its ops to (device profiles name them too). Beyond the layers:
#: ``minmax`` element-wise maximum / minimum; ``math`` element-wise arithmetic and functions (neg, abs, sqrt,
#: rsqrt, square, log, exp, squared difference, floor, ...); ``compare`` comparisons and logic; ``select``
#: where / select; ``shape`` a tensor's shape as data; ``cast`` a type change; ``control`` ops that run
#: subgraphs (IF, WHILE, CALL_ONCE; ONNX If / Loop / Scan); ``variable`` resource variables (streaming state);
#: ``identity`` ops with no effect once deployed (Identity, Dropout in eval; removed by :func:`normalize`);
#: ``custom`` a TFLite custom op (``op_type`` is its name); ``unknown`` anything else.
OP_CLASSES = (
    "conv", "dwconv", "fc", "matmul", "add", "mul", "concat", "pool", "global_pool", "act", "softmax",
    "reshape", "transpose", "pad", "norm", "resize", "slice", "reduce", "quantize", "embedding", "variable",
    "minmax", "math", "compare", "select", "shape", "cast", "control", "identity", "custom", "unknown",
)
#: Op classes whose weights a plan assigns bits to.
QUANTIZABLE_CLASSES = ("conv", "dwconv", "fc")
#: Activations that TFLite / CMSIS-NN fuse into the producing op.
FUSABLE_ACTIVATIONS = ("relu", "relu6")
#: Ops whose output can alias the input buffer when the runtime allows it.
INPLACE_CLASSES = ("reshape",)

DTYPE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "int32": 32, "int64": 64, "int16": 16, "int8": 8,
              "uint8": 8, "int4": 4, "bool": 8, "float64": 64, "complex64": 64, "resource": 0}


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
    def stored_weight_params(self) -> int:
        """The weight values this op adds to the model: 0 when another op owns the same tensor
        (``attrs["shared_weight"]``), the stored values of a sparse tensor (``attrs["weight_values"]``)."""
        if self.attrs.get("shared_weight"):
            return 0
        return int(self.attrs.get("weight_values", self.weight_params))

    @property
    def params(self) -> int:
        return self.stored_weight_params + self.bias + self.other_params

    @property
    def quantizable(self) -> bool:
        return self.op_class in QUANTIZABLE_CLASSES and self.weight_shape is not None

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0] if self.weight_shape else 0


@dataclass
class Subgraph:
    """A subgraph a control-flow op (``caller``) runs: TFLite IF / WHILE / CALL_ONCE branches and bodies,
    ONNX If / Loop / Scan bodies. Its ``ops`` (names) sit in :attr:`ModelGraph.ops` right after the caller,
    in the order TFLite Micro's planner visits them (``MarkSubgraphLifetimesIfNecessary``: first branch,
    then second), so one arena plan covers every subgraph as TFLM allocates them all. Its ``inputs`` live from
    its first op, its ``outputs`` to its last, and the caller's operands and results stay alive until the
    last of its subgraphs has run."""

    name: str
    caller: str
    ops: list[str]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class ModelGraph:
    """Ops in execution order plus their activation tensors; see the module docstring. ``subgraphs`` are the
    control-flow bodies whose ops are part of ``ops`` (see :class:`Subgraph`)."""

    name: str
    frontend: str
    ops: list[Op]
    tensors: dict[str, Tensor]
    inputs: list[str]
    outputs: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    subgraphs: list[Subgraph] = field(default_factory=list)

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

    def subgraph_steps(self) -> list[tuple[Subgraph, int, int, int]]:
        """(subgraph, caller step, first step, last step) per subgraph; an empty one spans its caller's step."""
        index = {o.name: i for i, o in enumerate(self.ops)}
        out = []
        for sg in self.subgraphs:
            caller = index.get(sg.caller)
            if caller is None:
                continue
            steps = [index[n] for n in sg.ops if n in index]
            out.append((sg, caller, min(steps, default=caller), max(steps, default=caller)))
        return out

    def lifetimes(self) -> dict[str, tuple[int, int]]:
        """Tensor name -> (first step, last step), inclusive, as TFLite Micro's planner defines them:
        graph inputs live from step 0, outputs to the last step, others from producer to last consumer;
        subgraph inputs from the subgraph's first step, its outputs to its last, and a control-flow op's
        operands and results until its last subgraph has run (micro_allocation_info.cc)."""
        last = len(self.ops) - 1
        prod = self.producers()
        cons = self.consumers()
        spans = self.subgraph_steps()
        sub_first: dict[str, int] = {}
        sub_last: dict[str, int] = {}
        caller_end: dict[int, int] = {}
        for sg, caller, first, end in spans:
            for t in sg.inputs:
                sub_first[t] = min(sub_first.get(t, first), first)
            for t in sg.outputs:
                sub_last[t] = max(sub_last.get(t, end), end)
            caller_end[caller] = max(caller_end.get(caller, caller), end)
        held: dict[str, int] = {}
        for step, end in caller_end.items():
            for t in self.ops[step].inputs + self.ops[step].outputs:
                held[t] = max(held.get(t, end), end)
        life: dict[str, tuple[int, int]] = {}
        for name in self.tensors:
            if name in prod:
                first = prod[name]
            elif name in sub_first and name not in self.inputs:
                first = sub_first[name]
            else:
                first = 0
            end = max(cons.get(name) or [first])
            end = max(end, sub_last.get(name, end), held.get(name, end))
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
            subgraphs=[Subgraph(**s) for s in d.get("subgraphs", [])],
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> ModelGraph:
        return cls.from_dict(json.loads(Path(path).read_text()))


def same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) of one spatial dimension."""
    eff = (k - 1) * d + 1
    total = max((-(-size // s) - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def conv_padding_attrs(in_shape: list[int], kernel: list[int], stride: list[int], dilation: list[int],
                       pads: tuple[tuple[int, int], tuple[int, int]]) -> dict[str, Any]:
    """A 2-D conv's padding ``[top, bottom, left, right]`` and, when TFLite's VALID / SAME cannot express it,
    ``pad_shape``: the padded input a converter materialises with a PAD op before the conv (one more
    activation tensor, which ``fit.memory.with_pad_ops`` plans). Front-ends of every format call this."""
    h, w = in_shape[2], in_shape[3]
    same = (same_pads(h, kernel[0], stride[0], dilation[0]), same_pads(w, kernel[1], stride[1], dilation[1]))
    out: dict[str, Any] = {"padding": [pads[0][0], pads[0][1], pads[1][0], pads[1][1]]}
    if any(sum(p) for p in pads) and pads != same:
        out["pad_shape"] = [in_shape[0], in_shape[1], h + sum(pads[0]), w + sum(pads[1])]
    return out


def conv_macs(out_shape: list[int], weight_shape: list[int]) -> int:
    """MACs of a convolution for batch 1: output positions x (in/groups x kernel) per output channel."""
    spatial = math.prod(out_shape[2:]) if len(out_shape) > 2 else 1
    return spatial * math.prod(weight_shape)


def normalize(graph: ModelGraph) -> ModelGraph:
    """Apply the rewrites deployment runtimes perform (see module docstring); returns a new graph."""
    ops = [Op(**asdict(o)) for o in graph.ops]
    tensors = dict(graph.tensors)
    protected = set(graph.outputs) | set(graph.inputs)
    for sg in graph.subgraphs:  # a subgraph's inputs and outputs are its interface: keep their names
        protected.update(sg.inputs + sg.outputs)

    def consumers_of(t: str) -> list[Op]:
        return [o for o in ops if t in o.inputs]

    def rename_input(old: str, new: str) -> None:
        for o in ops:
            o.inputs = [new if x == old else x for x in o.inputs]

    def absorb(keep: Op, drop: Op) -> None:
        """``drop`` consumes ``keep``'s single output; remove it and let ``keep`` produce its output."""
        old_out, new_out = keep.outputs[0], drop.outputs[0]
        keep.outputs = [new_out]
        if "scope" in drop.attrs:  # the converter names the fused result after the ops it absorbed
            key = "bn_scopes" if drop.op_class == "norm" else "fused_scopes"
            keep.attrs[key] = [*keep.attrs.get(key, []), drop.attrs["scope"]]
        tensors.pop(old_out, None)
        ops.remove(drop)

    changed = True
    while changed:
        changed = False
        for o in list(ops):
            if o.op_class == "identity" and len(o.inputs) == 1 and o.outputs:
                src, dst = o.inputs[0], o.outputs[0]
                if any(consumers_of(t) or t in protected for t in o.outputs[1:]):
                    continue  # e.g. a Dropout mask somebody reads
                if dst not in protected:
                    rename_input(dst, src)
                    tensors.pop(dst, None)
                elif src not in protected and sum(src in p.outputs for p in ops) == 1:
                    # the graph's output: let the producer write it (as converters drop a final Identity)
                    producer = next(p for p in ops if src in p.outputs)
                    producer.outputs = [dst if t == src else t for t in producer.outputs]
                    rename_input(src, dst)
                    tensors.pop(src, None)
                else:
                    continue  # input passed straight to an output: the op stays, as a no-op
                for t in o.outputs[1:]:
                    tensors.pop(t, None)
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
                      dict(graph.meta), [Subgraph(**asdict(sg)) for sg in graph.subgraphs])
