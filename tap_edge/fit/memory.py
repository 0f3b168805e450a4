"""Memory model: flash bytes of packed mixed-precision weights and peak SRAM from an activation-arena plan.

Flash (per op): ceil(weights x w_bits / 8) + a float32 scale per output channel + int32 biases when the weights
are integers; float16/float32 storage otherwise; constants of non-quantizable ops stay float32; plus the
runtime's code size from the device profile. A weight tensor several ops read counts once. Runtimes that run a
``.tflite`` keep the whole flatbuffer in flash: for a ``.tflite`` at its own types that is the file's size,
exactly (its constant buffers + ``format_bytes``, the structure: tensor names, shapes, quantization parameters,
operators); for a graph a converter will write, :func:`flatbuffer_bytes` estimates the structure.

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
from tap_edge.fit.tflm import SHAPE_CONSTS, lowered_builtins, tflm_arena
from tap_edge.graph.graph import INPLACE_CLASSES, ModelGraph, Op, Tensor


@dataclass
class FlashBreakdown:
    weights_bytes: int
    scales_bytes: int
    bias_bytes: int
    float_bytes: int
    runtime_bytes: int
    format_bytes: int = 0  # the model file's own structure (a .tflite's flatbuffer tables and names)

    @property
    def model_bytes(self) -> int:
        return self.weights_bytes + self.scales_bytes + self.bias_bytes + self.float_bytes + self.format_bytes

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.runtime_bytes

    def to_dict(self) -> dict[str, int]:
        d = {**asdict(self), "model_bytes": self.model_bytes, "total_bytes": self.total_bytes}
        if not self.format_bytes:  # documents written before the field existed have no key for it
            d.pop("format_bytes")
        return d


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
    planning_bytes: int = 0
    model: str = ""  # how it was predicted when not by this module's planner (Ethos-U: Vela, tap_edge.fit.ethos_u)
    vela: Any = field(default=None, repr=False)  # the Vela figures behind it (tap_edge.fit.ethos_u.VelaFigures)

    def to_dict(self, with_buffers: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d.pop("vela")
        if not with_buffers:
            d.pop("buffers")
        d["live_at_peak"] = [{"tensor": t, "bytes": b} for t, b in self.live_at_peak]
        return d


#: Bytes per output channel of an integer layer's quantization: a float32 scale (tap-edge's own count), or in a
#: .tflite a float32 scale + int64 zero point for the weights and again for the bias (QuantizationParameters).
SCALE_BYTES, TFLITE_SCALE_BYTES = 4, 24


def op_weight_bytes(op: Op, w_bits: int, scale_bytes: int = SCALE_BYTES) -> tuple[int, int, int, int]:
    """(packed weights, scales, bias, float constants) in bytes for one op at ``w_bits`` (a weight another op
    owns counts 0; ``scale_bytes`` per output channel of an integer layer)."""
    n = op.stored_weight_params
    other = int(op.attrs.get("other_bytes", op.other_params * 4))  # float32 unless the front-end knows better
    if op.weight_params == 0 or op.attrs.get("shared_weight"):
        return (n * w_bits + 7) // 8 if n else 0, 0, op.bias * 4, other
    if w_bits <= 8:
        return (n * w_bits + 7) // 8, op.out_channels * scale_bytes, op.bias * 4, other
    return (n * w_bits + 7) // 8, 0, op.bias * (w_bits // 8), other


def is_tflite_format(runtime: Any) -> bool:
    """Whether ``runtime`` runs a .tflite flatbuffer (TFLite Micro, LiteRT, the Edge TPU): the file is in flash."""
    name = str(getattr(runtime, "name", "")) if runtime is not None else ""
    return name.startswith(("tflm", "litert", "tflite", "edgetpu", "host-litert"))


#: A converted .tflite's structure besides names and channels, fitted on litert-torch files of resnet8 and
#: DS-CNN (float32 and int8): per tensor (Tensor table, shape, buffer entry and padding), per quantized
#: tensor (QuantizationParameters table), fixed (model, subgraph, operator codes, signature, metadata).
FB_TENSOR_BYTES, FB_QUANT_TENSOR_BYTES, FB_FIXED_BYTES = 93, 10, 800
_IO_NAME_BYTES = (22, 31)  # serving_default_args_0, serving_default_output_0_output
_CONST_NAME_BYTES = 16  # tfl.pseudo_qconst, arith.constant


def flatbuffer_bytes(graph: ModelGraph, bits: BitAssignment) -> int:
    """The structure of the .tflite a converter writes for ``graph`` (tensor names, tables, operators), or of
    the file itself for a ``.tflite`` (its size minus its constant buffers).

    Names follow litert-torch: each result is named after the module scopes of the ops fused into it
    (``attrs["scope"]`` / ``"fused_scopes"``); a graph without scopes uses its op names."""
    meta = graph.meta.get("tflite") or {}
    if "file_bytes" in meta:
        return int(meta["file_bytes"]) - int(meta["buffer_bytes"])
    tbits = tensor_bits(graph, bits)
    names = tensors = quantized = 0
    for op in graph.ops:
        scopes = [op.attrs["scope"], *op.attrs.get("fused_scopes", [])] if "scope" in op.attrs else []
        float_out = all(tbits.get(t, 32) >= 32 for t in op.outputs)
        if float_out:  # a float graph keeps a folded BatchNorm's scope in the names, a quantized one does not
            scopes += op.attrs.get("bn_scopes", [])
        out_name = sum(len(x) + 2 for x in scopes) if scopes else len(op.name)
        for t in op.outputs:
            tensors += 1
            names += out_name
            quantized += tbits.get(t, 32) < 32
        if op.weight_shape and not op.attrs.get("shared_weight"):
            tensors += 1
            integer = bits.weight_bits(op) <= 8  # float weights carry the fused ops' names, integer ones their own
            names += ((len(scopes[0]) + 1) if integer else out_name) if scopes else len(op.name)
            quantized += integer
        if op.bias:
            tensors += 1
            names += _CONST_NAME_BYTES
            quantized += bool(op.weight_shape) and bits.weight_bits(op) <= 8
        n_consts = sum(SHAPE_CONSTS.get(b, 0) for b in lowered_builtins(op, graph)) + (1 if op.other_params else 0)
        tensors += n_consts
        names += _CONST_NAME_BYTES * n_consts
    tensors += len(graph.inputs)
    names += _IO_NAME_BYTES[0] * len(graph.inputs) + _IO_NAME_BYTES[1] * len(graph.outputs)
    return names + FB_TENSOR_BYTES * tensors + FB_QUANT_TENSOR_BYTES * quantized + FB_FIXED_BYTES


def _not_ethos_u(runtime: Any) -> None:
    """An Ethos-U runtime's memory is Vela's plan, which :mod:`tap_edge.fit.footprint` dispatches to; reaching
    this module's CPU-arena figures with one is a caller's bug, not a figure to return."""
    if getattr(runtime, "vela", None) is not None:
        raise ValueError(f"runtime {runtime.name} has an Ethos-U (vela section): use tap_edge.fit.footprint")


def flash_breakdown(graph: ModelGraph, bits: BitAssignment, runtime_bytes: int = 0, *,
                    runtime: Any = None) -> FlashBreakdown:
    """Flash of ``graph`` at ``bits`` (see the module docstring). With a ``runtime`` that runs .tflite files the
    flatbuffer's structure is counted too, and a ``.tflite`` at its own types is its file's size. On an Ethos-U
    runtime the flash is the Vela-optimised model's: ask :func:`tap_edge.fit.footprint.flash_breakdown`."""
    _not_ethos_u(runtime)
    tflite = is_tflite_format(runtime)
    scale = TFLITE_SCALE_BYTES if tflite else SCALE_BYTES
    w = s = b = f = 0
    for op in graph.ops:
        if not op.params:
            continue
        # integer widths apply to the weights a plan quantizes; other constants stay float32
        wb = bits.weight_bits(op) if (op.quantizable or bits.native) else 32
        pw, ps, pb, pf = op_weight_bytes(op, wb, scale)
        w, s, b, f = w + pw, s + ps, b + pb, f + pf
    if not tflite:
        return FlashBreakdown(w, s, b, f, runtime_bytes)
    meta = graph.meta.get("tflite") or {}
    if bits.native and "file_bytes" in meta:  # the file as it is: constant buffers + structure
        buffers = int(meta["buffer_bytes"])
        f = max(buffers - w - b, 0)
        return FlashBreakdown(w, 0, b, f, runtime_bytes, int(meta["file_bytes"]) - w - b - f)
    return FlashBreakdown(w, s, b, f, runtime_bytes, flatbuffer_bytes(graph, bits))


@dataclass(frozen=True)
class ConvGeometry:
    """A conv / depthwise op as its kernel sees it (NHWC): input, output and filter sizes, stride, padding."""

    cin: int
    h: int
    w: int
    cout: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    pad_h: int
    pad_w: int
    dilation: int
    depth_multiplier: int


def conv_geometry(op: Op, graph: ModelGraph) -> ConvGeometry | None:
    """The geometry of a conv / depthwise op from its tensors (NHWC for TFLite graphs, NCHW otherwise); the
    padding is TFLite's (ComputePaddingHeightWidth: half the total, rounded down)."""
    if not op.weight_shape or not op.inputs or not op.outputs or op.inputs[0] not in graph.tensors \
            or op.outputs[0] not in graph.tensors:
        return None
    ins, outs = graph.tensors[op.inputs[0]].shape, graph.tensors[op.outputs[0]].shape
    if len(ins) != 4 or len(outs) != 4:
        return None
    nhwc = graph.meta.get("layout") == "NHWC"
    (h, w, cin), (oh, ow, cout) = ((ins[1], ins[2], ins[3]), (outs[1], outs[2], outs[3])) if nhwc else \
        ((ins[2], ins[3], ins[1]), (outs[2], outs[3], outs[1]))
    kh, kw = (op.weight_shape + [1, 1])[2:4]
    sh, sw = (list(op.attrs.get("stride", [1, 1])) + [1, 1])[:2]
    dil = max(op.attrs.get("dilation", [1, 1]) or [1])
    pad_h = max((oh - 1) * sh + (kh - 1) * dil + 1 - h, 0) // 2
    pad_w = max((ow - 1) * sw + (kw - 1) * dil + 1 - w, 0) // 2
    return ConvGeometry(cin, h, w, cout, oh, ow, kh, kw, sh, sw, pad_h, pad_w, dil,
                        int(op.attrs.get("depth_multiplier", 1)))


def _cmsis_conv(g: ConvGeometry, a_bits: int, w_bits: int, arch: str) -> int:
    """CMSIS-NN's conv wrapper buffer (arm_convolve_get_buffer_sizes_s8.c / _s16.c / _s4.c); arch is
    ``dsp``, ``mve`` or ``c`` (no DSP). Builds with GCC: the 1x1 fast kernel needs no buffer (it does only with
    Arm Compiler >= 6.01)."""
    cols = g.kh * g.kw * g.cin
    one_by_one = g.kh == g.kw == 1 and g.pad_h == g.pad_w == 0 and g.dilation == 1
    if a_bits == 16:
        if arch == "dsp" and cols < 512 and g.dilation == 1:
            return 2 * cols * 2  # arm_convolve_fast_s16_get_buffer_size_dsp
        return 0
    if w_bits == 4:
        return 0 if one_by_one else 2 * cols * 2  # arm_convolve_s4_get_buffer_size
    if one_by_one:
        return 0
    one_by_n = g.h == 1 and g.kh == 1 and g.dilation == 1 and g.ow % 4 == 0
    if arch == "mve":
        if one_by_n:  # arm_convolve_1_x_n_s8_get_buffer_size_mve
            total_pad = (g.ow - 1) * g.sw + g.kw - g.w
            asym = total_pad % 2
            right = max(1, (g.pad_w + asym + g.sw - 1) // g.sw) if g.pad_w + asym else 0
            left = max(1, (g.pad_w + g.sw - 1) // g.sw) if g.pad_w else 0
            if right + left + max(g.ow - (right + left), 0) == g.ow:
                pad_left = g.pad_w * g.cin
                pad_right = right * g.cin if asym else pad_left
                n_left = g.kw * g.cin
                return max(n_left + pad_left, n_left - g.cin + pad_right)
        return 4 * ((cols + 15) // 16) * 16  # arm_convolve_s8_get_buffer_size_mve
    return 2 * align(cols, 4) * 2  # arm_convolve_s8_get_buffer_size: 2 im2col columns of int16


def _cmsis_depthwise(g: ConvGeometry, a_bits: int, w_bits: int, arch: str) -> int:
    """CMSIS-NN's depthwise wrapper buffer (arm_depthwise_conv_get_buffer_sizes_s8.c / _s16.c / _s4.c): only
    for batch 1, C_in == C_out, dilation 1; CH_IN_BLOCK_MVE = 124 (arm_nnsupportfunctions.h)."""
    if g.depth_multiplier != 1 or g.dilation != 1:
        return 0
    taps = g.kh * g.kw
    if a_bits == 16:
        if taps >= 512:
            return 0
        return {"mve": 4 * g.cin * taps * 2 + 8, "dsp": g.cin * taps * 2}.get(arch, 0)
    if w_bits == 4:
        return g.cin * taps * 2  # arm_depthwise_conv_s4_opt_get_buffer_size
    if arch == "mve":
        return 4 * 124 * taps
    if arch == "dsp":
        return 0 if (g.kh, g.kw) == (3, 3) and g.pad_h <= 1 and g.pad_w <= 1 else g.cin * taps * 2
    return 0


def _esp_nn_conv(g: ConvGeometry) -> int:
    """esp_nn_get_conv_scratch_size_esp32s3 (espressif/esp-nn src/convolution/esp_nn_conv_esp32s3.c)."""
    align_buf = 32
    if g.kh == g.kw == 1 and g.pad_h == g.pad_w == 0 and g.sh == g.sw == 1:
        new_ch = (g.cin + 7) & ~7
        transpose = 0 if g.w * g.h < 8 else 2 * 8 * new_ch
        inp = g.w * g.h * new_ch if g.cin % 8 else 0
        return inp + new_ch * g.cout + transpose + align_buf
    new_ch = (g.cin + 15) & ~15
    inp = 0 if g.pad_h == g.pad_w == 0 else (g.w + 2 * g.pad_w) * (g.h + 2 * g.pad_h) * g.cin
    return inp + g.kw * g.kh * new_ch * g.cout + align_buf + 4 * g.cout


def _esp_nn_depthwise(g: ConvGeometry) -> int:
    """esp_nn_get_depthwise_conv_scratch_size_esp32s3 (espressif/esp-nn esp_nn_depthwise_conv_s8_esp32s3.c)."""
    filter_size = g.kw * g.kh * g.cin * g.depth_multiplier
    if g.depth_multiplier == 1 and g.cin % 8 == 0 and (g.kh, g.kw) == (3, 3):
        if g.cin % 16 == 0:
            if g.pad_h or g.pad_w:
                pw, ph = 2 * g.pad_w, 2 * g.pad_h
            else:
                pw, ph = g.ow * g.sw + g.kw - 1 - g.w, g.oh * g.sh + g.kh - 1 - g.h
            if pw or ph:
                return filter_size + (g.w + pw) * (g.h + ph) * g.cin + 16
            return filter_size + 16
        return 2 * (filter_size + g.w * g.h * g.cin) + 16
    if g.depth_multiplier % 4 == 0:
        return 2 * (filter_size + g.w * g.h * g.cin) + 16
    return 32


#: Scratch models whose int4 filters are unpacked by the reference kernels (1 byte per weight).
_UNPACKS_INT4 = ("tflm", "esp-nn")
_CMSIS_ARCH = {"cmsis-nn": "dsp", "cmsis-nn-mve": "mve", "cmsis-nn-c": "c"}


def scratch_bytes(op: Op, graph: ModelGraph, model: str, act_bits: int, w_bits: int | None = None) -> int:
    """Arena scratch the runtime's conv / depthwise / fully-connected kernel requests for ``op`` at weight width
    ``w_bits`` (default: 8) and activation width ``act_bits`` (planned for the op's step).

    ``tflm`` (reference kernels): an int4 filter is unpacked into FlatSize(filter) bytes (conv_common.cc,
    depthwise_conv_common.cc, fully_connected.cc), float / int8 / 16x8 need none. ``cmsis-nn`` / ``-mve`` /
    ``-c``: the CMSIS-NN buffer of the s8, s16 or s4 wrapper (packed int4 is native there); float32 runs the
    reference kernels. ``esp-nn``: ESP-NN's int8 conv / depthwise scratch (int4 unpacked as in the reference
    kernels, 16x8 and float on the reference kernels). Other runtimes: 0."""
    w = 8 if w_bits is None else w_bits
    if not op.weight_shape or op.op_class not in ("conv", "dwconv", "fc") or act_bits >= 32 or w > 8:
        return 0
    if w == 4 and model in _UNPACKS_INT4:
        return op.weight_params
    if op.op_class == "fc":
        return 0
    g = conv_geometry(op, graph)
    if g is None:
        return 0
    if model in _CMSIS_ARCH:
        fn = _cmsis_conv if op.op_class == "conv" else _cmsis_depthwise
        return fn(g, act_bits, w, _CMSIS_ARCH[model])
    if model == "esp-nn" and act_bits == 8 and w == 8:
        return _esp_nn_conv(g) if op.op_class == "conv" else _esp_nn_depthwise(g)
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


def is_tflm(runtime: Any) -> bool:
    return str(getattr(runtime, "name", "")).startswith("tflm") or str(getattr(runtime, "family", "") or "") \
        .startswith("tflm")


def runtime_view(graph: ModelGraph, runtime: Any, bits: BitAssignment | None = None) -> tuple[ModelGraph, int]:
    """The graph as ``runtime`` executes it, and the bytes it keeps in the arena besides activations.

    Runtimes that run converted ``.tflite`` models (TFLite Micro, LiteRT, Edge TPU) get explicit PAD ops for
    PyTorch and ONNX models (both reach a .tflite through a converter, which writes the PAD); TFLite Micro runtimes
    also hold their persistent tail in the arena (:mod:`.tflm`, at ``bits``; default the model's own types for a
    .tflite, else w8a8)."""
    name = runtime.name
    if name.startswith(("tflm", "litert", "tflite", "edgetpu", "host-litert")) and graph.frontend in ("torch", "onnx"):
        graph = with_pad_ops(graph)
    if not is_tflm(runtime):
        return graph, 0
    b = bits or (BitAssignment(native=True) if graph.frontend == "tflite" else BitAssignment(8, 8))
    arena, _ = tflm_arena(graph, b, tensor_bits(graph, b))
    return graph, arena.tail_bytes


def kernel_width(op: Op, tbits: dict[str, int]) -> int:
    """The activation width a layer's kernel runs at: its output's (TFLite converters make a layer's input
    and output one type, inserting a QUANTIZE where widths change)."""
    return max((tbits.get(t, 8) for t in op.outputs), default=8)


def layer_scratch(graph: ModelGraph, bits: BitAssignment, runtime: Any,
                  tbits: dict[str, int] | None = None) -> dict[int, int]:
    """Conv / depthwise / fully-connected scratch per op step at ``bits`` (:func:`scratch_bytes`)."""
    tb = tbits if tbits is not None else tensor_bits(graph, bits)
    out = {}
    for i, op in enumerate(graph.ops):
        if not op.weight_shape:
            continue
        sb = scratch_bytes(op, graph, runtime.scratch, kernel_width(op, tb), bits.weight_bits(op))
        if sb:
            out[i] = sb
    return out


@dataclass(frozen=True)
class RuntimeMemory:
    """What a runtime adds to a plan's live activation bytes, at one bit assignment: the persistent tail, the
    scratch requests of kernels other than conv / depthwise / fully-connected (op step -> bytes) and the least
    arena the runtime's planning needs (:mod:`.tflm`; all 0 for runtimes that keep nothing in the arena)."""

    graph: ModelGraph
    persistent_bytes: int
    planning_bytes: int
    other_scratch: dict[int, list[int]]


def runtime_memory(graph: ModelGraph, runtime: Any, bits: BitAssignment | None = None) -> RuntimeMemory:
    """:class:`RuntimeMemory` of ``graph`` on ``runtime`` (bits: the model's own types for a .tflite, else w8a8;
    the tail and planning floor change by a few bytes with the widths)."""
    view, _ = runtime_view(graph, runtime)
    if not is_tflm(runtime):
        return RuntimeMemory(view, 0, 0, {})
    b = bits or (BitAssignment(native=True) if graph.frontend == "tflite" else BitAssignment(8, 8))
    arena, scratch = tflm_arena(view, b, tensor_bits(view, b))
    return RuntimeMemory(view, arena.tail_bytes, arena.planning_bytes, scratch)


def plan_arena_for(graph: ModelGraph, bits: BitAssignment, runtime: Any) -> ArenaPlan:
    """``plan_arena`` with a device runtime's settings: alignment, in-place aliasing, kernel scratch, explicit
    PAD ops; for TFLite Micro also the persistent tail, the other kernels' scratch requests and the arena its
    planning needs (:mod:`.tflm`): ``arena_bytes`` = max(head + tail, planning). On an Ethos-U runtime the arena is
    Vela's plan: ask :func:`tap_edge.fit.footprint.plan_arena_for`."""
    _not_ethos_u(runtime)
    view, _ = runtime_view(graph, runtime)
    tb = tensor_bits(view, bits)
    scratch = {i: [b] for i, b in layer_scratch(view, bits, runtime, tb).items()}
    tail = planning = 0
    if is_tflm(runtime):
        arena, scratch = tflm_arena(view, bits, tb, {i: v[0] for i, v in scratch.items()})
        tail, planning = arena.tail_bytes, arena.planning_bytes
    plan = plan_arena(view, bits, alignment=runtime.arena_alignment, alias_inplace=runtime.alias_inplace,
                      scratch=scratch)
    plan.persistent_bytes = tail
    plan.planning_bytes = planning
    plan.arena_bytes = max(plan.head_bytes + tail, planning)
    return plan


def plan_arena(graph: ModelGraph, bits: BitAssignment, *, alignment: int = 16, alias_inplace: bool = False,
               scratch_model: str = "none", scratch: dict[int, list[int]] | None = None) -> ArenaPlan:
    """Plan the activation arena for ``graph`` at the widths in ``bits`` (see the module docstring).

    Kernel scratch: ``scratch`` (op step -> request sizes) when given, else :func:`scratch_bytes` of
    ``scratch_model`` per op."""
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
    if scratch is None:
        scratch = {}
        for i, op in enumerate(graph.ops):
            sb = scratch_bytes(op, graph, scratch_model, kernel_width(op, tbits),
                               bits.weight_bits(op) if op.weight_shape else None)
            if sb:
                scratch[i] = [sb]
    for i, sizes in sorted(scratch.items()):
        for k, sb in enumerate(sizes):
            suffix = "" if k == 0 else f"{k + 1}"
            bufs.append(Buffer(f"{graph.ops[i].name}::scratch{suffix}", align(sb, alignment), i, i, scratch=True))
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
