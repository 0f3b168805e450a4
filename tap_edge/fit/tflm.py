"""What TensorFlow Lite Micro allocates in its arena besides the planned activations.

TFLM's arena has a *head* (the memory plan: activations and the kernels' scratch buffers, one step each) and a
*tail* (persistent: one ``TfLiteEvalTensor`` per tensor of every subgraph, one ``NodeAndRegistration`` per op,
each op's parsed options and kernel state, the input/output ``TfLiteTensor`` structs, resource variables).
While it builds the plan, ``MicroAllocator::CommitStaticMemoryPlan`` needs an ``AllocationInfo`` per tensor and
the greedy planner's per-buffer arrays on top of the tail, and each kernel's ``Prepare`` needs temporary
``TfLiteTensor`` structs: when the head is small that sets the smallest arena that builds.

The byte counts are those of the 64-bit host build (``tflite-micro`` 0.dev20261023182759 from pip, where
pointers and ``size_t`` are 8 bytes), measured with ``print_allocations()`` on one-op models of every builtin
(tests/test_runtime_support.py) and read from the kernels (sources in ``device_profiles/_runtimes.yaml``):
a 32-bit MCU build has smaller structs, so the tail is an upper bound there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tap_edge.core.units import align
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.graph import DTYPE_BITS, ModelGraph, Op
from tap_edge.graph.tflite_ops import tflite_builtins

#: Allocator objects, interpreter state and the planner placed in the tail before any model data.
FIXED_BYTES = 488
#: ``SubgraphAllocations`` and bookkeeping per subgraph beyond the first.
SUBGRAPH_BYTES = 24
EVAL_TENSOR_BYTES = 24  # TfLiteEvalTensor
NODE_BYTES = 64  # NodeAndRegistration
IO_TENSOR_BYTES = 64  # the interpreter's persistent TfLiteTensor per model input / output
IO_QUANT_BYTES = 32  # its TfLiteAffineQuantization + zero-point array when quantized
SCRATCH_HANDLE_BYTES = 8  # ScratchBufferHandle per RequestScratchBufferInArena
#: ``MicroResourceVariables`` (object); per variable its ``MicroResourceVariable`` record and the READ / ASSIGN
#: kernels' state (measured: 72 B a variable).
VARIABLES_BYTES, VARIABLE_BYTES = 16, 72
#: Planning (CommitStaticMemoryPlan): AllocationInfo per tensor and scratch buffer; the greedy planner's
#: BufferRequirements + sorted sizes / ids + ListEntry + offset per planned buffer; fixed slack.
ALLOCATION_INFO_BYTES, PLANNER_BUFFER_BYTES, PLANNING_FIXED_BYTES = 32, 40, 176
#: Prepare: a temporary TfLiteTensor per operand, plus its quantization (struct + zero points + scales).
TEMP_TENSOR_BYTES, TEMP_QUANT_BYTES = 64, 32

#: Kernel state a builtin allocates with AllocatePersistentBuffer (bytes per allocation) besides the
#: per-channel, LUT and transposed-operand buffers handled in :func:`kernel_allocations`.
OP_DATA: dict[str, tuple[int, ...]] = {
    "CONV_2D": (80,), "DEPTHWISE_CONV_2D": (80,), "TRANSPOSE_CONV": (88,), "FULLY_CONNECTED": (72,),
    "BATCH_MATMUL": (48,), "ADD": (60,), "SUB": (52,), "MUL": (36,), "DIV": (28,), "SQUARED_DIFFERENCE": (112,),
    "CONCATENATION": (80,), "AVERAGE_POOL_2D": (32,), "MAX_POOL_2D": (32,), "L2_POOL_2D": (20,),
    "MEAN": (44,), "SUM": (44,), "REDUCE_MAX": (44,), "REDUCE_MIN": (44,), "RELU": (28,), "RELU6": (8,),
    "LOGISTIC": (16,), "TANH": (16,), "HARD_SWISH": (20,), "LEAKY_RELU": (24,), "ELU": (256,), "PRELU": (28,),
    "SOFTMAX": (80,), "PAD": (56,), "PADV2": (56,), "MIRROR_PAD": (20,), "STRIDED_SLICE": (84,), "GATHER": (12,),
    "QUANTIZE": (32,), "DEQUANTIZE": (32,), "EMBEDDING_LOOKUP": (12, 16), "RSQRT": (28,), "ABS": (28,),
    "EQUAL": (32,), "NOT_EQUAL": (32,), "GREATER": (32,), "GREATER_EQUAL": (32,), "LESS": (32,),
    "LESS_EQUAL": (32,), "SELECT_V2": (1,), "L2_NORMALIZATION": (4,), "DEPTH_TO_SPACE": (20,),
    "SPACE_TO_DEPTH": (20,), "IF": (8,), "WHILE": (8,), "CALL_ONCE": (8,), "VAR_HANDLE": (8,),
}
#: Kernel state only the quantized kernels allocate.
OP_DATA_QUANTIZED: dict[str, tuple[int, ...]] = {"LOG_SOFTMAX": (40,), "ADD_N": (40,), "CUMSUM": (36,)}
#: The parsed builtin options (``TfLite*Params``) per op.
BUILTIN_DATA: dict[str, int] = {
    "CONV_2D": 28, "DEPTHWISE_CONV_2D": 28, "TRANSPOSE_CONV": 20, "FULLY_CONNECTED": 32, "BATCH_MATMUL": 3,
    "ADD": 8, "SUB": 8, "MUL": 4, "DIV": 4, "CONCATENATION": 8, "AVERAGE_POOL_2D": 40, "MAX_POOL_2D": 40,
    "L2_POOL_2D": 40, "MEAN": 9, "SUM": 9, "REDUCE_MAX": 9, "REDUCE_MIN": 9, "RESHAPE": 36, "SQUEEZE": 36,
    "STRIDED_SLICE": 24, "GATHER": 8, "LEAKY_RELU": 4, "SOFTMAX": 4, "MIRROR_PAD": 4, "PACK": 8, "UNPACK": 8,
    "SPLIT": 4, "SPLIT_V": 4, "ARG_MAX": 4, "ARG_MIN": 4, "SHAPE": 4, "CAST": 8, "DEPTH_TO_SPACE": 4,
    "SPACE_TO_DEPTH": 4, "L2_NORMALIZATION": 4, "ADD_N": 8, "IF": 8, "WHILE": 8, "CALL_ONCE": 4,
    "VAR_HANDLE": 16, "RESIZE_BILINEAR": 2, "RESIZE_NEAREST_NEIGHBOR": 2, "CUMSUM": 2, "GELU": 1,
}
#: Ops whose TFLite form reads small constant operands (new shape, axes, paddings, sizes).
SHAPE_CONSTS = {"RESHAPE": 1, "MEAN": 1, "SUM": 1, "REDUCE_MAX": 1, "REDUCE_MIN": 1, "PAD": 1, "PADV2": 2,
                 "MIRROR_PAD": 1, "TRANSPOSE": 1, "STRIDED_SLICE": 3, "SLICE": 2, "RESIZE_BILINEAR": 1,
                 "RESIZE_NEAREST_NEIGHBOR": 1, "GATHER": 1, "SPLIT": 1, "EXPAND_DIMS": 1, "TRANSPOSE_CONV": 1}
_BYTES = {8: 1, 16: 2, 32: 4, 4: 1}


@dataclass(frozen=True)
class TflmArena:
    """TFLM's persistent tail, the head's kernel scratch buffers (op step -> bytes) and the least arena its
    planning needs (``planning_bytes``: the arena is at least this whatever the head)."""

    tail_bytes: int
    planning_bytes: int
    io_bytes: int


def lowered_builtins(op: Op, graph: ModelGraph) -> tuple[str, ...]:
    """The TFLite builtins ``op`` is in a TFLite Micro model (a converter's lowering for other front-ends)."""
    if op.op_class == "identity":
        return ()
    if graph.frontend == "tflite":
        return (op.op_type,)
    return tflite_builtins(op.op_type, op.op_class, op.attrs, graph.frontend) or ("UNKNOWN",)


def _channels(op: Op) -> int:
    return op.out_channels if op.weight_shape else 0


def kernel_allocations(op: Op, builtin: str, a_bits: int, w_bits: int | None) -> list[int]:
    """The AllocatePersistentBuffer requests (bytes) of one TFLM kernel for ``op`` (conv_common.cc,
    depthwise_conv_common.cc, fully_connected_common.cc, batch_matmul.cc, softmax_common.cc, ...)."""
    out = list(OP_DATA.get(builtin, ()))
    if a_bits != 32:
        out += OP_DATA_QUANTIZED.get(builtin, ())
    ch = _channels(op)
    if builtin in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV") and ch:
        out += [4 * ch, 4 * ch]  # per-channel multiplier and shift, for every type
    per_channel = op.attrs.get("weight_quant", "per_channel") == "per_channel"
    if builtin == "FULLY_CONNECTED" and ch and a_bits != 32 and per_channel:
        out += [4 * ch, 4 * ch]  # fully_connected_common.cc: per-channel multiplier and shift
    if builtin == "SOFTMAX" and a_bits == 16:
        out += [1026, 1026]  # exp and 1/(1+x) lookup tables
    if builtin == "BATCH_MATMUL":
        if a_bits != 32:
            out.append(28)  # quantization parameters
        for side, flag in (("lhs", "adj_x"), ("rhs", "adj_y")):
            transposed = op.attrs.get(flag, False) if side == "lhs" else not op.attrs.get(flag, False)
            shape = op.attrs.get(f"{side}_shape")
            if transposed and shape:
                # AllocInitTransposeTensorFromTfLiteTensor: eval tensor, dims, a full copy of the operand
                out += [24, 4 + 4 * len(shape), math.prod(shape) * _BYTES.get(a_bits, 4)]
    return out


def scratch_requests(op: Op, builtin: str, a_bits: int, w_bits: int | None, out_numel: int) -> list[int]:
    """RequestScratchBufferInArena sizes of the reference kernels other than conv / depthwise / fully-connected
    (those depend on the kernel library: :func:`tap_edge.fit.memory.scratch_bytes`): MEAN / SUM sums,
    TRANSPOSE_CONV accumulators."""
    out: list[int] = []
    if builtin in ("MEAN", "SUM"):
        out.append(32)  # resolved axes / index
        if a_bits != 32:
            out.append(4 * out_numel)  # int32 sums per output value
    if builtin == "TRANSPOSE_CONV" and a_bits != 32:
        out.append((4 if a_bits == 8 else 8) * out_numel)  # int32 / int64 accumulators
    return out


#: Kernels whose Prepare makes its operands' temporary tensors twice over (ConvPrepare then
#: CalculateOpDataConv; the reduce kernels' Prepare and their helper).
_TEMP_TWICE = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN")


def prepare_temp_bytes(op: Op, graph: ModelGraph, a_bits: int) -> int:
    """Temporary tensors a kernel's Prepare holds: one TfLiteTensor per operand and, when quantized, its
    quantization (struct, zero points and scales: 8 B per channel); the operands' scale counts come from the
    file, else from the op (per-channel weights and bias of a quantized layer)."""
    scales = op.attrs.get("operand_scales")
    if scales is None:
        n_other = sum(SHAPE_CONSTS.get(b, 0) for b in lowered_builtins(op, graph))
        per = 1 if a_bits != 32 else 0
        scales = [per] * (len(op.inputs) + len(op.outputs)) + [0] * n_other
        if op.weight_shape:
            scales += [_channels(op) if a_bits != 32 else 0] * (2 if op.bias else 1)
    total = sum(TEMP_TENSOR_BYTES + (TEMP_QUANT_BYTES + 8 * c if c else 0) for c in scales)
    builtins = lowered_builtins(op, graph)
    return total * (2 if builtins and builtins[0] in _TEMP_TWICE else 1)


def _tensor_counts(graph: ModelGraph) -> tuple[int, int, int]:
    """(tensors of every subgraph incl. constants, ops, subgraphs) of the .tflite TFLM runs: the file's own
    counts, or a converter's for a graph from PyTorch / ONNX (activations + weights, biases, shape operands)."""
    meta = graph.meta.get("tflite")
    if meta and "tensors" in meta:
        return int(meta["tensors"]), int(meta["ops"]), int(meta["subgraphs"])
    consts = 0
    nodes = 0
    extra_tensors = 0
    for op in graph.ops:
        bs = lowered_builtins(op, graph)
        nodes += len(bs)
        extra_tensors += max(len(bs) - 1, 0)  # the lowering's intermediate results
        consts += (1 if op.weight_shape else 0) + (1 if op.bias else 0) + (1 if op.other_params else 0)
        consts += sum(SHAPE_CONSTS.get(b, 0) for b in bs)
    return len(graph.tensors) + consts + extra_tensors, nodes, 1 + len(graph.subgraphs)


def _widths(op: Op, graph: ModelGraph, bits: BitAssignment, tbits: dict[str, int]) -> tuple[int, int | None]:
    acts = [tbits[t] for t in op.outputs if t in tbits] or [tbits[t] for t in op.inputs if t in tbits] or [8]
    a = max(acts)
    w = bits.weight_bits(op) if op.weight_shape else None
    return (32 if a >= 32 else a), w


def tflm_arena(graph: ModelGraph, bits: BitAssignment, tbits: dict[str, int],
               layer_scratch: dict[int, int] | None = None) -> tuple[TflmArena, dict[int, list[int]]]:
    """TFLM's tail, planning floor and the scratch requests per op step (see the module docstring);
    ``layer_scratch``: the conv / depthwise / fully-connected scratch per step (one handle each)."""
    n_tensors, n_nodes, n_subgraphs = _tensor_counts(graph)
    tail = FIXED_BYTES + SUBGRAPH_BYTES * (n_subgraphs - 1) + EVAL_TENSOR_BYTES * n_tensors + NODE_BYTES * n_nodes
    quantized_io = sum(1 for t in graph.inputs + graph.outputs if tbits.get(t, 32) < 32)
    io = IO_TENSOR_BYTES * (len(graph.inputs) + len(graph.outputs)) + IO_QUANT_BYTES * quantized_io
    tail += io + align(8 * len(graph.inputs), 16) + align(8 * len(graph.outputs), 16)
    scratch: dict[int, list[int]] = {}
    temp_peak = 0
    for step, op in enumerate(graph.ops):
        a, w = _widths(op, graph, bits, tbits)
        out_numel = max((graph.tensors[t].numel for t in op.outputs if t in graph.tensors), default=1)
        for b in lowered_builtins(op, graph):
            tail += sum(align(x, 16) for x in kernel_allocations(op, b, a, w)) + BUILTIN_DATA.get(b, 0)
            reqs = [r for r in scratch_requests(op, b, a, w, out_numel) if r > 0]
            if reqs:
                scratch.setdefault(step, []).extend(reqs)
                tail += SCRATCH_HANDLE_BYTES * len(reqs)
        temp_peak = max(temp_peak, prepare_temp_bytes(op, graph, a))
    for step, nbytes in (layer_scratch or {}).items():
        if nbytes > 0:
            scratch.setdefault(step, []).append(nbytes)
            tail += SCRATCH_HANDLE_BYTES
    variables = graph.meta.get("tflite", {}).get("variables", {})
    if variables:
        tail += VARIABLES_BYTES + VARIABLE_BYTES * len(variables) + sum(align(v, 16) for v in variables.values())
    planned = sum(1 for t in graph.tensors.values() if t.nbytes(tbits.get(t.name, DTYPE_BITS.get(t.dtype, 32))) > 0)
    n_scratch = sum(len(v) for v in scratch.values())
    planning = (tail - io + ALLOCATION_INFO_BYTES * (n_tensors + n_scratch)
                + PLANNER_BUFFER_BYTES * (planned + n_scratch) + PLANNING_FIXED_BYTES)
    planning = max(planning, tail - io + temp_peak)
    return TflmArena(tail, planning, io), scratch
