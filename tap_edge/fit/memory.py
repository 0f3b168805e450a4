"""Memory model: flash bytes of packed mixed-precision weights and peak SRAM from an activation-arena plan.

Flash (per op): ceil(weights x w_bits / 8) + a float32 scale per output channel + int32 biases when the weights
are integers; float16/float32 storage otherwise; constants of non-quantizable ops stay float32; plus the
runtime's code size from the device profile.

SRAM: activation tensors are planned in one arena in execution order, the way TFLite Micro's
GreedyMemoryPlanner does it: buffers sorted by size (largest first), each placed at the lowest offset that does
not overlap a buffer whose lifetime intersects its own. The arena is the highest end offset; the peak of live
bytes per step is a lower bound that shows where the pressure is. Scratch buffers the runtime's kernels need
are planned with a one-step lifetime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tap_edge.core.units import align
from tap_edge.fit.bits import BitAssignment, tensor_bits
from tap_edge.graph.graph import INPLACE_CLASSES, ModelGraph, Op, Tensor


@dataclass
class FlashBreakdown:
    weights_bytes: int
    scales_bytes: int
    bias_bytes: int
    float_bytes: int
    runtime_bytes: int

    @property
    def model_bytes(self) -> int:
        return self.weights_bytes + self.scales_bytes + self.bias_bytes + self.float_bytes

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.runtime_bytes

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "model_bytes": self.model_bytes, "total_bytes": self.total_bytes}


@dataclass
class Buffer:
    name: str
    size: int
    first: int
    last: int
    offset: int = -1
    scratch: bool = False


@dataclass
class ArenaPlan:
    """``arena_bytes`` is what must fit: the planned activation buffers (``head_bytes``) plus the runtime's
    persistent allocations (``persistent_bytes``, TFLite Micro's tail)."""

    arena_bytes: int
    peak_live_bytes: int
    peak_step: int
    peak_op: str
    live_at_peak: list[tuple[str, int]]
    live_bytes_per_step: list[int]
    buffers: list[Buffer] = field(repr=False, default_factory=list)
    head_bytes: int = 0
    persistent_bytes: int = 0

    def to_dict(self, with_buffers: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_buffers:
            d.pop("buffers")
        d["live_at_peak"] = [{"tensor": t, "bytes": b} for t, b in self.live_at_peak]
        return d


def op_weight_bytes(op: Op, w_bits: int) -> tuple[int, int, int, int]:
    """(packed weights, scales, bias, float constants) in bytes for one op at ``w_bits``."""
    n = op.weight_params
    if n == 0:
        return 0, 0, op.bias * 4, op.other_params * 4
    if w_bits <= 8:
        return (n * w_bits + 7) // 8, op.out_channels * 4, op.bias * 4, op.other_params * 4
    return (n * w_bits + 7) // 8, 0, op.bias * (w_bits // 8), op.other_params * 4


def flash_breakdown(graph: ModelGraph, bits: BitAssignment, runtime_bytes: int = 0) -> FlashBreakdown:
    w = s = b = f = 0
    for op in graph.ops:
        if not op.params:
            continue
        # integer widths apply to the weights a plan quantizes; other constants stay float32
        wb = bits.weight_bits(op) if (op.quantizable or bits.native) else 32
        pw, ps, pb, pf = op_weight_bytes(op, wb)
        w, s, b, f = w + pw, s + ps, b + pb, f + pf
    return FlashBreakdown(w, s, b, f, runtime_bytes)


def scratch_bytes(op: Op, graph: ModelGraph, model: str, act_bits: int) -> int:
    """Per-op kernel scratch (im2col) the runtime allocates in the arena.

    ``cmsis-nn`` follows the CMSIS-NN ``*_get_buffer_size`` functions for s8 kernels on DSP cores:
    conv (not 1x1) 2 columns of int16 im2col = 4 x C_in x kh x kw bytes; depthwise with a non-3x3 kernel
    C_in x kh x kw int16 values; 1x1 conv, 3x3 depthwise and fully-connected need none. Other runtimes: 0.
    """
    if model != "cmsis-nn" or not op.weight_shape or act_bits > 8:
        return 0
    if op.op_class == "conv":
        _, cin_g, kh, kw = (op.weight_shape + [1, 1])[:4]
        if kh == 1 and kw == 1:
            return 0
        return 4 * cin_g * kh * kw
    if op.op_class == "dwconv":
        kh, kw = (op.weight_shape[2:] + [1, 1])[:2]
        if (kh, kw) == (3, 3):
            return 0
        cin = graph.tensors[op.inputs[0]].shape[1] if op.inputs and len(graph.tensors[op.inputs[0]].shape) > 1 else 1
        return 2 * cin * kh * kw
    return 0


def greedy_by_size(buffers: list[Buffer]) -> int:
    """TFLite Micro's greedy-by-size offset planning; sets ``offset`` on every buffer and returns the arena size.

    Written by hand: no Python library plans arenas, and the figure must follow TFLM's algorithm to predict
    its arena. Ties in size are broken as TFLM does (it fills its sort array from the last buffer and sorts
    stably): the later buffer first; measured against TFLM on resnet8 this is the difference between 51,264
    and 65,536 bytes."""
    placed: list[Buffer] = []
    for buf in sorted(buffers, key=lambda x: (-x.size, -x.first, -x.last)):
        overlapping = sorted((p for p in placed if p.first <= buf.last and buf.first <= p.last),
                             key=lambda p: p.offset)
        offset = 0
        for p in overlapping:
            if p.offset - offset >= buf.size:
                break
            offset = max(offset, p.offset + p.size)
        buf.offset = offset
        placed.append(buf)
    return max((b.offset + b.size for b in buffers), default=0)


def with_pad_ops(graph: ModelGraph) -> ModelGraph:
    """The graph as a TFLite converter emits it: a PAD op (and its padded tensor) before every conv whose
    padding TFLite's SAME/VALID cannot express (the front-end marks them with ``attrs["pad_shape"]``)."""
    if not any("pad_shape" in op.attrs for op in graph.ops):
        return graph
    ops: list[Op] = []
    tensors = dict(graph.tensors)
    for op in graph.ops:
        if "pad_shape" in op.attrs and op.inputs:
            src = graph.tensors[op.inputs[0]]
            padded = f"{op.name}::padded"
            tensors[padded] = Tensor(padded, list(op.attrs["pad_shape"]), src.dtype)
            ops.append(Op(f"{op.name}::pad", "PAD", "pad", [op.inputs[0]], [padded]))
            attrs = {k: v for k, v in op.attrs.items() if k != "pad_shape"}  # done: applying it again is a no-op
            op = Op(**{**asdict(op), "inputs": [padded, *op.inputs[1:]], "attrs": attrs})
        ops.append(op)
    return ModelGraph(graph.name, graph.frontend, ops, tensors, graph.inputs, graph.outputs, graph.meta)


#: Ops whose TFLite form carries a small constant input (new shape, axes, paddings).
_SHAPE_CONST_CLASSES = ("reshape", "pad", "global_pool", "reduce", "transpose", "slice")


def tflm_persistent_bytes(graph: ModelGraph) -> int:
    """TFLite Micro's persistent arena tail (tensor structs, node data, per-channel requantization).

    Fitted on the 64-bit host build of tflite-micro against ``print_allocations()`` for resnet8, DS-CNN,
    EfficientNet-Lite0 and MobileNetV2 int8 (within 0.2% on all four): 24 B per tensor (constants included),
    141 B per op, 8 B per output channel of conv / depthwise / fully-connected (multiplier and shift),
    96 B per model input/output, 812 B fixed. 32-bit MCU builds have smaller structs: this is an upper bound."""
    constants = sum((1 if op.weight_shape else 0) + (1 if op.bias else 0) + (op.op_class in _SHAPE_CONST_CLASSES)
                    for op in graph.ops)
    n_tensors = len(graph.tensors) + constants
    channels = sum(op.out_channels for op in graph.ops if op.quantizable)
    io = len(graph.inputs) + len(graph.outputs)
    return 24 * n_tensors + 141 * len(graph.ops) + 8 * channels + 96 * io + 812


def runtime_view(graph: ModelGraph, runtime: Any) -> tuple[ModelGraph, int]:
    """The graph as ``runtime`` executes it, and the bytes it keeps in the arena besides activations.

    Runtimes that run converted ``.tflite`` models (TFLite Micro, LiteRT, Edge TPU) get explicit PAD ops for
    PyTorch models; TFLite Micro runtimes also hold their persistent tail in the arena."""
    name = runtime.name
    if name.startswith(("tflm", "litert", "tflite", "edgetpu", "host-litert")) and graph.frontend == "torch":
        graph = with_pad_ops(graph)
    return graph, (tflm_persistent_bytes(graph) if name.startswith("tflm") else 0)


def plan_arena_for(graph: ModelGraph, bits: BitAssignment, runtime: Any) -> ArenaPlan:
    """``plan_arena`` with a device runtime's settings: alignment, in-place aliasing, kernel scratch, explicit
    PAD ops and persistent allocations (see :func:`runtime_view`)."""
    view, persistent = runtime_view(graph, runtime)
    plan = plan_arena(view, bits, alignment=runtime.arena_alignment, alias_inplace=runtime.alias_inplace,
                      scratch_model=runtime.scratch)
    plan.persistent_bytes = persistent
    plan.arena_bytes += persistent
    return plan


def plan_arena(graph: ModelGraph, bits: BitAssignment, *, alignment: int = 16, alias_inplace: bool = False,
               scratch_model: str = "none") -> ArenaPlan:
    """Plan the activation arena for ``graph`` at the widths in ``bits`` (see the module docstring)."""
    tbits = tensor_bits(graph, bits)
    life = graph.lifetimes()
    cons = graph.consumers()
    alias_of: dict[str, str] = {}
    if alias_inplace:
        for op in graph.ops:
            if (op.op_class in INPLACE_CLASSES and len(op.inputs) == 1 and len(op.outputs) == 1
                    and op.inputs[0] not in graph.inputs and len(cons.get(op.inputs[0], [])) == 1
                    and tbits[op.inputs[0]] == tbits[op.outputs[0]]):
                root = op.inputs[0]
                while root in alias_of:
                    root = alias_of[root]
                alias_of[op.outputs[0]] = root
    buffers: dict[str, Buffer] = {}
    for name, t in graph.tensors.items():
        if name in alias_of:
            continue
        first, last = life[name]
        buffers[name] = Buffer(name, align(t.nbytes(tbits[name]), alignment), first, last)
    for name, root in alias_of.items():
        b = buffers[root]
        first, last = life[name]
        b.first, b.last = min(b.first, first), max(b.last, last)
    bufs = list(buffers.values())
    for i, op in enumerate(graph.ops):
        a = max((tbits.get(t, 8) for t in op.inputs), default=8)
        sb = scratch_bytes(op, graph, scratch_model, a)
        if sb:
            bufs.append(Buffer(f"{op.name}::scratch", align(sb, alignment), i, i, scratch=True))
    arena = greedy_by_size(bufs)
    steps = max(len(graph.ops), 1)
    live = [0] * steps
    for b in bufs:
        for s in range(b.first, min(b.last, steps - 1) + 1):
            live[s] += b.size
    peak_step = max(range(steps), key=lambda s: live[s])
    at_peak = sorted(((b.name, b.size) for b in bufs if b.first <= peak_step <= b.last), key=lambda x: -x[1])
    peak_op = graph.ops[peak_step].name if graph.ops else "(none)"
    return ArenaPlan(arena, live[peak_step], peak_step, peak_op, at_peak, live, bufs, head_bytes=arena)
