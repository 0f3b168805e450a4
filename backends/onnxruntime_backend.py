"""ONNX Runtime backend: a plan becomes an ONNX QDQ model with the planned per-layer widths.

Compile: the model is first put through the plan's PTQ (``tap_edge.quantize.ptq``: BatchNorm folded, weights
rounded as the plan says, nearest / GPTQ / AdaRound, on per-channel grids), then exported with float
activations (:func:`tap_edge.quantize.ptq.weights_only`) with the TorchScript ONNX
exporter (opset 21; node names keep the module path, ``/stage1/conv1/Conv`` -> ``stage1.conv1``, which is how
plan entries find their nodes) and pre-processed with ``quant_pre_process`` (static shapes folded, Pad merged
into Conv). ``onnxruntime.quantization.quantize_static`` then writes QDQ: per-tensor activations calibrated
(MinMax) on sample inputs, except that every tensor the fake-quant model quantizes (the input of each weighted
layer, the model output) gets the fake-quant model's own scale and zero point, and per-channel weights whose
scales are the PTQ grid's (``PTQInfo.weight_scales``: GPTQ's integers need not reach ``qmax`` in a channel, so
``max|w| / qmax`` would move them), all through ``TensorQuantOverrides``, with ORT's int32-bias weight-scale
adjustment off: the stored integers and scales are exactly the fake-quant model's (tests/test_backends.py
``test_onnx_stores_the_fake_quant_integers_and_scales``):

- weights: 8 -> int8; 2..4 -> INT4 (opset 21 QDQ; 2/3-bit grids stored in the int4 container); 5..7 -> their
  grid in an int8 container (ONNX has no such types: the flash prediction assumes packing, the manifest's
  ``weights.stored_bytes`` show the container); 16/32 -> the layer is left in float;
- activations: 8 -> uint8 (ORT's fast path), 16 -> int16 on that layer's output; 32 -> float (layer excluded).

``linear_int4="matmulnbits"`` then rewrites each INT4 QDQ Gemm into ONNX Runtime's 4-bit weight-only kernel
(``com.microsoft.MatMulNBits``, float compute): its input stays the DequantizeLinear output (activation
semantics unchanged), its packed uint4 weights are the same integers + 8 (the default zero point, so no zero
points are stored), every block of an output channel carries that channel's scale (the same weights exactly).

Run: every session tap-edge opens (compile's agreement check, ``measure``, TVM's same-graph reference) sets
:data:`SESSION_CONFIG`: ``session.x64quantprecision=1`` makes ONNX Runtime use its exact U8U8 integer kernel on
x86-64 CPUs without VNNI (AVX2, AVX-512 without VNNI), where the default U8S8 kernel (``vpmaddubsw``) saturates
a 16-bit sum of two uint8 x int8 products: 8-bit weights beside activations near 255 give wrong answers
(seen in CI on such a CPU: TVM agreed with ONNX Runtime's w8a8 EfficientNet-Lite0 on 90.6 % of photos; the
same kernel under ``qemu-x86_64 -cpu Haswell`` turns an exact 200 into 101, tests/test_backends.py). The
option changes nothing on CPUs with VNNI or on ARM; the manifest records it (``backend_facts.session_config``)
and a deployment on such a CPU needs it too.

Options: :class:`OnnxRuntimeOptions`. The artifact's outputs are compared with the PTQ fake-quant model
(``tap_edge.quantize.ptq``) on the check inputs by :meth:`tap_edge.backends.Backend.compile`.
"""

from __future__ import annotations

import logging
import math
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tap_edge.backends import Backend, BackendOptions, Build, is_float
from tap_edge.backends.inputs import InputRequest, TensorSpec, fed_input, input_array, resolve_shapes
from tap_edge.backends.manifest import artifact_stem, module_bits
from tap_edge.core.errors import UserError
from tap_edge.devices import DeviceProfile, Runtime
from tap_edge.documents import ArtifactWeights, Manifest
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.models import LoadedModel
from tap_edge.plan.rules import PlanRules

OPSET = 21
_WEIGHTED = ("Conv", "Gemm", "MatMul", "ConvTranspose")
LINEAR_INT4 = ("qdq", "matmulnbits")
_BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits: a power of two >= 16 (MLAS' fast kernels: up to 256)
#: Session config entries of every ONNX Runtime session tap-edge opens (the module docstring says why).
SESSION_CONFIG = {"session.x64quantprecision": "1"}


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime ``SessionOptions`` with :data:`SESSION_CONFIG` (exact integer kernels on x86-64 without
    VNNI), warnings off and ``threads`` intra-op threads (None: ONNX Runtime's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
    for key, value in SESSION_CONFIG.items():
        so.add_session_config_entry(key, value)
    return so


def node_module(node_name: str) -> str | None:
    """``/stage1/conv1/Conv`` -> ``stage1.conv1`` (the TorchScript exporter's scope naming). Children of
    Sequentials repeat their parent's segment (``/blocks/blocks.3/blocks.3.2/conv_pw/Conv`` is timm's
    ``blocks.3.2.conv_pw``, ``/stage2/shortcut/shortcut.0/Conv`` is ``stage2.shortcut.0``)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2:
        return None
    segs: list[str] = []
    for seg in parts[:-1]:
        if segs and seg.startswith(segs[-1] + "."):
            segs[-1] = seg  # "shortcut" then "shortcut.0": the child of a Sequential
        else:
            segs.append(seg)
    return ".".join(segs)


def _dedupe_identity_initializers(model: Any) -> None:
    """The exporter shares equal constants through Identity nodes; quantization wants initializers."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(arr.copy(), node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _preprocess(path: Path) -> Any:
    """ONNX Runtime's recommended pre-processing (``quant_pre_process``: shape inference + basic graph
    optimisation) in place: with the static input shape it folds shape arithmetic (timm's Conv2dSame computes
    its padding at run time) and merges Pad into Conv, so no scalar constant is quantized and TVM can import
    the graph. Node names are kept. Falls back to the plain export when it fails."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = path.with_name(path.stem + ".pre.onnx")
    try:
        quant_pre_process(str(path), str(tmp), skip_symbolic_shape=True)
        tmp.replace(path)
    except Exception:  # noqa: BLE001 - optional clean-up
        tmp.unlink(missing_ok=True)
    return onnx.load(str(path))


def onnx_weight_bytes(path: Path) -> dict[str, int]:
    """Bytes of the constants stored in an ONNX file, by role (packed INT4 counted at 4 bits)."""
    import onnx
    from onnx import TensorProto

    m = onnx.load(str(path), load_external_data=True)
    sizes = {
        TensorProto.INT4: 0.5,
        TensorProto.UINT4: 0.5,
        TensorProto.INT8: 1,
        TensorProto.UINT8: 1,
        TensorProto.INT16: 2,
        TensorProto.UINT16: 2,
        TensorProto.FLOAT16: 2,
        TensorProto.BFLOAT16: 2,
        TensorProto.FLOAT: 4,
        TensorProto.INT32: 4,
        TensorProto.INT64: 8,
        TensorProto.DOUBLE: 8,
        TensorProto.BOOL: 1,
    }
    out = {
        "weights": 0,
        "weight_scales": 0,
        "zero_points": 0,
        "bias": 0,
        "bias_qparams": 0,
        "act_qparams": 0,
        "float": 0,
        "other": 0,
    }
    consts = list(m.graph.initializer)
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    t = a.t
                    t.name = node.output[0]
                    consts.append(t)
    # MatMulNBits (com.microsoft): B is packed uint8 (two 4-bit weights a byte), its scales are per block
    nbits_role: dict[str, str] = {}
    for node in m.graph.node:
        if node.op_type == "MatMulNBits":
            for i, role in ((1, "weights"), (2, "weight_scales"), (3, "zero_points")):
                if len(node.input) > i and node.input[i]:
                    nbits_role[node.input[i]] = role
    for t in consts:
        n = math.prod(t.dims) if t.dims else 1
        b = int(math.ceil(n * sizes.get(t.data_type, 4)))
        name = t.name
        if name in nbits_role:
            out[nbits_role[name]] += b
        elif name.endswith("_quantized") and t.data_type == TensorProto.INT32:
            out["bias"] += b
        elif name.endswith(("_quantized_scale", "_quantized_zero_point")):
            out["bias_qparams"] += b
        elif name.endswith("_quantized"):
            out["weights"] += b
        elif name.endswith("_scale"):
            out["weight_scales" if n > 1 else "act_qparams"] += b
        elif name.endswith("_zero_point"):
            out["zero_points" if n > 1 else "act_qparams"] += b
        elif t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16):
            out["float"] += b
        else:
            out["other"] += b
    out["total"] = sum(out.values())
    # the figures the flash model predicts (QDQ also stores zero points and bias scales: in "total")
    out["total_planned_form"] = out["weights"] + out["weight_scales"] + out["bias"] + out["float"]
    return out


@dataclass
class OnnxRuntimeOptions(BackendOptions):
    """``linear_int4``: how Gemm layers planned at <= 4 bits are stored: ``"qdq"`` (INT4 QDQ, per-channel) or
    ``"matmulnbits"`` (com.microsoft MatMulNBits, 4-bit blocks carrying the same per-channel scales)."""

    FLAG_HELP: ClassVar[dict[str, tuple[str, str]]] = {"linear_int4": ("chooses an ONNX Runtime kernel", "has none")}

    linear_int4: str = "qdq"

    def __post_init__(self) -> None:
        if self.linear_int4 not in LINEAR_INT4:
            raise UserError(f"--linear-int4 '{self.linear_int4}' is not known", f"use {' or '.join(LINEAR_INT4)}")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX QDQ (int8 / INT4 weights, 8/16-bit activations) run with ONNX Runtime on the host"
    runtimes = ("onnxruntime*", "ort*")
    kinds = ("phone", "edge-linux")
    modules = ("onnx", "onnxruntime")
    extra = None  # core dependencies of tap-edge
    suffix = ".onnx"
    options_class = OnnxRuntimeOptions

    def plan_rules(self, runtime: Runtime | None) -> PlanRules:
        """Per layer: integer weights of 2..8 bits (INT4 containers up to 4, int8 containers above) with 8-bit
        (uint8) or 16-bit (int16) activations, or the layer in float32 (w32a32: 16-bit weights or 32-bit
        activations leave the whole layer float, so no other pair with them is built as planned)."""
        pairs = {(w, a) for w in range(2, 9) for a in (8, 16)} | {(32, 32)}
        rules = PlanRules.of(runtime.name if runtime else "onnxruntime", self.name, {"default": pairs},
                             reasons=("onnxruntime backend: QDQ per layer; 16-bit weights or 32-bit activations "
                                      "leave the layer float32 (onnxruntime_backend._quantization_table)",))
        return rules.within(runtime) if runtime is not None else rules

    def build(self, model: LoadedModel, graph: ModelGraph, bits: BitAssignment, out_dir: Path, *,
              calib: np.ndarray, check: np.ndarray, options: OnnxRuntimeOptions,
              device: DeviceProfile | None) -> Build:
        """Export, quantize to QDQ at the plan's widths (see the module docstring), optionally rewrite INT4
        Gemms into MatMulNBits."""
        self.check_buildable(graph, bits, device)
        stem = artifact_stem(model, bits)
        float_path = out_dir / f"{stem}.float.onnx"
        q_path = out_dir / f"{stem}.onnx"
        module, prequant = self.export_module(model, graph, bits, calib)
        m = _export(module, calib[:1], float_path)
        layers, overrides, exclude = _quantization_table(m, bits, getattr(module, "tap_edge_ptq", None))
        missing = sorted(set(bits.layers) - set(layers))
        if missing:  # a plan layer that maps to no ONNX node would silently stay at the default width
            raise UserError(f"{len(missing)} plan layer(s) have no node in the exported ONNX graph, e.g. "
                            f"'{missing[0]}' (nodes map to e.g. '{next(iter(layers), '?')}')",
                            "was the plan made for this model? (tap-edge plan MODEL ...)")
        if is_float(bits):
            shutil.copyfile(float_path, q_path)
        else:
            _quantize(float_path, q_path, calib, overrides, exclude)
        float_path.unlink(missing_ok=True)
        nbits: dict[str, Any] = {}
        if options.linear_int4 == "matmulnbits" and not is_float(bits):
            nbits = _gemm_int4_to_matmulnbits(q_path, layers)
        wb = onnx_weight_bytes(q_path)
        return Build(
            artifact=q_path,
            weights=ArtifactWeights(planned_form_bytes=wb.pop("total_planned_form"), stored_bytes=wb.pop("total"),
                                    by_role=wb),
            facts={"opset": OPSET, "layers": layers, "weights_prequantized": prequant,
                   "linear_int4": options.linear_int4, "session_config": dict(SESSION_CONFIG),
                   **({"matmulnbits": nbits} if nbits else {})},
        )

    def outputs(self, artifact: Path, xs: np.ndarray) -> np.ndarray:
        return onnx_outputs(artifact, xs)

    def summary_lines(self, manifest: Manifest) -> list[str]:
        converted = manifest.backend_facts.get("matmulnbits", {}).get("layers", {})
        return [f"{len(converted)} linear layer(s) stored as MatMulNBits (4-bit blocks)"] if converted else []

    def child_measure(
        self,
        artifact: Path,
        manifest: Manifest | None,
        *,
        runs: int,
        warmup: int,
        threads: int,
        baseline: Callable[[], None],
        feed: InputRequest,
        timeout: float,
    ) -> dict[str, Any]:
        """ONNX Runtime (CPU) on every input of the graph, each fed data of its dtype and shape
        (:mod:`tap_edge.backends.inputs`: dynamic dims from ``--input-shape``, values from ``--input``)."""
        import onnxruntime as ort

        from tap_edge.backends.measure import time_runs, vm_hwm, vm_rss

        baseline()
        rss0 = vm_rss()
        so = session_options(threads)
        sess = ort.InferenceSession(str(artifact), so, providers=["CPUExecutionProvider"])
        specs = [_spec(i) for i in sess.get_inputs()]
        shapes = [i.shape for i in resolve_shapes(specs, feed, f"{artifact.name}: ")]
        x = {spec.name: input_array(spec, shape, feed.for_input(feed.values, spec.name, len(specs)), j)
             for j, (spec, shape) in enumerate(zip(specs, shapes, strict=True))}
        loaded_hwm = vm_hwm()
        rss_loaded = vm_rss()
        times = time_runs(lambda: sess.run(None, x), runs=runs, warmup=warmup)
        return {
            "times_ms": times,
            "threads": so.intra_op_num_threads,
            "runtime": f"onnxruntime {ort.__version__}",
            "inputs": [fed_input(s, shape, feed, len(specs)) for s, shape in zip(specs, shapes, strict=True)],
            "ort_session_config": dict(SESSION_CONFIG),
            "ort_session_rss_bytes": rss_loaded - rss0,
            "ort_inference_growth_bytes": max(vm_hwm() - loaded_hwm, 0),
            "runtime_figures_note": "ONNX Runtime exposes no arena statistics to Python: session RSS = RSS "
            "after creating the session minus before; inference growth = peak RSS "
            "during the timed runs minus the peak after loading",
        }


#: ONNX Runtime's input types -> numpy dtype names.
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
              "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64",
              "tensor(uint64)": "uint64", "tensor(bool)": "bool"}


def _spec(node_arg: Any) -> TensorSpec:
    """An ONNX Runtime input as a :class:`TensorSpec` (a dim without size or symbol is ``?``)."""
    dims = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else "?")
                 for d in node_arg.shape)
    return TensorSpec(node_arg.name, dims, ORT_DTYPES.get(node_arg.type, node_arg.type))


def onnx_outputs(path: Path, xs: np.ndarray) -> np.ndarray:
    """ONNX Runtime's first output on each of ``xs`` (batch 1 as exported; CPU, :func:`session_options`)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, {"input": x[None]})[0][0] for x in xs])


def _export(module: Any, example: np.ndarray, path: Path) -> Any:
    """The TorchScript ONNX export of ``module`` at opset :data:`OPSET` (input ``input``, output ``output``),
    Identity-shared constants turned into initializers, then :func:`_preprocess`; returns the ONNX model."""
    import onnx
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(example),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)
    m = onnx.load(str(path))
    _dedupe_identity_initializers(m)
    onnx.save(m, str(path))
    return _preprocess(path)


def _quantization_table(
    m: Any, bits: BitAssignment, info: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]], list[str]]:
    """Per weighted node: its widths and storage (the manifest's ``layers``, keyed by module), the
    ``TensorQuantOverrides`` that give ``quantize_static`` the fake-quant model's weight grids and activation
    quantizers (``info``: its :class:`~tap_edge.quantize.ptq.PTQInfo`; None for a float export), and the nodes
    left in float (16/32-bit weights or 32-bit activations)."""
    from onnxruntime.quantization import QuantType

    overrides: dict[str, list[dict[str, Any]]] = {}
    exclude: list[str] = []
    layers: dict[str, dict[str, Any]] = {}
    inits = {i.name: i for i in m.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in m.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    producers = {o: n for n in m.graph.node for o in n.output}
    act_overrides: dict[str, list[dict[str, Any]]] = {}
    for node in m.graph.node:
        if node.op_type not in _WEIGHTED:
            continue
        mod = node_module(node.name)
        w, a = module_bits(bits, mod)
        entry: dict[str, Any] = {"node": node.name, "w": w, "a": a}
        if w >= 16 or a >= 32:
            exclude.append(node.name)
            entry["stored"] = "float32"
        else:
            wname = node.input[1] if len(node.input) > 1 else None
            if wname in inits:
                qt = QuantType.QInt4 if w <= 4 else QuantType.QInt8
                entry["stored"] = "int4" if w <= 4 else "int8"
                scales = info.weight_scales.get(mod) if info is not None and mod else None
                if scales is not None:  # exact: the scales of the grid the weights are already on
                    overrides[wname] = _grid_overrides(inits[wname], w, _axis(node), qt, scales.numpy(), mod)
                elif w <= 4:
                    overrides[wname] = [{"quant_type": qt, "axis": _axis(node)}]
            if a == 16:
                overrides[_activation_output(node, consumers)] = [{"quant_type": QuantType.QInt16}]
                entry["activation"] = "int16"
            qp = info.input_qparams.get(mod) if info is not None and mod else None
            if qp is not None and node.input[0] not in inits:
                for tensor in _same_values(node.input[0], producers):
                    act_overrides[tensor] = [_activation_override(qp)]
        layers[mod or node.name] = entry
    if info is not None and info.output_qparams is not None and m.graph.output:
        act_overrides[m.graph.output[0].name] = [_activation_override(info.output_qparams)]
    overrides.update(act_overrides)  # the fake-quant quantizers themselves win over width-only overrides
    return layers, overrides, exclude


#: Ops that only move values: ORT's QDQ quantizer gives their output their input's quantization parameters.
_SAME_VALUES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity")


def _same_values(tensor: str, producers: dict[str, Any]) -> list[str]:
    """``tensor`` and the tensors it is a reshaped view of (through :data:`_SAME_VALUES` ops): all of them carry
    one scale and zero point in QDQ, so a layer's input quantizer is given to each."""
    out = [tensor]
    node = producers.get(tensor)
    while node is not None and node.op_type in _SAME_VALUES and node.input:
        out.append(node.input[0])
        node = producers.get(node.input[0])
    return out


def _activation_override(qparams: tuple[int, float, int]) -> dict[str, Any]:
    """A fake-quant activation quantizer ``(bits, scale, zero_point)`` as a tensor override (uint8 / int16)."""
    from onnxruntime.quantization import QuantType

    bits, scale, zero = qparams
    if bits == 8:
        return {"quant_type": QuantType.QUInt8, "scale": np.array(scale, np.float32),
                "zero_point": np.array(zero, np.uint8)}
    return {"quant_type": QuantType.QInt16, "scale": np.array(scale, np.float32),
            "zero_point": np.array(zero, np.int16)}


def _quantize(float_path: Path, q_path: Path, calib: np.ndarray, overrides: dict[str, list[dict[str, Any]]],
              exclude: list[str]) -> None:
    """``quantize_static`` to QDQ: uint8 activations calibrated (MinMax) on ``calib``, per-channel symmetric
    weights with the given overrides."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": x[None].astype(np.float32)} for x in calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    logging.getLogger().setLevel(logging.ERROR)
    quantize_static(
        str(float_path),
        str(q_path),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        extra_options={"TensorQuantOverrides": overrides, "WeightSymmetric": True,
                       "QDQDisableWeightAdjustForInt32Bias": True},  # it would move the grid's weights
    )


def _gemm_int4_to_matmulnbits(path: Path, layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rewrite, in place, each Gemm stored ``int4`` (QDQ: ``Gemm(DQ(a), DQ(W_int4, s, 0), DQ(bias))``) into
    ``MatMulNBits(DQ(a), B, scales, bias=DQ(bias))``: bits 4, B = the same int4 integers + 8 (unsigned, the
    default zero point 8, so no zero points are stored) packed two a byte (low nibble first), shape
    [N, n_blocks, block_size / 2], K padded with zeros (stored 8) to n_blocks * block_size; scales [N, n_blocks]
    with every block of a channel holding that channel's scale. Weights, activation Q/DQ and bias are the QDQ
    graph's own, so the only numerical difference is float vs ORT's QGemm arithmetic. Gemms with transA,
    alpha or beta != 1, or non-zero weight zero points stay QDQ. Returns what the manifest records."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    by_node = {e["node"]: (mod, e) for mod, e in layers.items()}
    drop_nodes: list[Any] = []
    new_nodes: dict[int, Any] = {}
    converted: dict[str, Any] = {}
    for idx, node in enumerate(g.node):
        if node.op_type != "Gemm" or node.name not in by_node:
            continue
        mod, entry = by_node[node.name]
        if entry.get("stored") != "int4":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int16)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
        zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.int16) if len(dq.input) > 2 and dq.input[2] else 0
        if np.any(zp != 0) or q.ndim != 2:
            continue
        if not attrs.get("transB", 0):
            q = q.T  # [K, N] -> [N, K]
        n_out, k = q.shape
        if scale.size != n_out or q.min() < -8 or q.max() > 7:
            continue
        # the block size storing the fewest bytes (packed weights + per-block float scales); ties: the larger
        bs = min(_BLOCK_SIZES, key=lambda b: (-(-k // b) * (b // 2 + 4), -b))
        n_blocks = -(-k // bs)
        u = np.full((n_out, n_blocks * bs), 8, np.uint8)  # padding: 8 - 8 = 0
        u[:, :k] = (q + 8).astype(np.uint8)
        packed = (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8).reshape(n_out, n_blocks, bs // 2)
        scales = np.repeat(scale.reshape(n_out, 1), n_blocks, axis=1).astype(np.float32)
        base = dq.input[0].removesuffix("_quantized") or dq.input[0]
        b_name, s_name = f"{base}_MatMulNBits_B", f"{base}_MatMulNBits_scales"
        g.initializer.extend([numpy_helper.from_array(packed, b_name), numpy_helper.from_array(scales, s_name)])
        inputs = [node.input[0], b_name, s_name]
        if len(node.input) > 2 and node.input[2]:
            inputs += ["", "", node.input[2]]  # zero_points (default 8), g_idx: absent; bias
        new_nodes[idx] = helper.make_node(
            "MatMulNBits", inputs, [node.output[0]], name=node.name, domain="com.microsoft",
            K=k, N=n_out, bits=4, block_size=bs,
        )
        drop_nodes.append(dq)
        entry["stored"] = "int4-matmulnbits"
        entry["block_size"] = bs
        converted[mod] = {"K": k, "N": n_out, "block_size": bs, "n_blocks": n_blocks}
    if not converted:
        return {}
    dropped = {id(d) for d in drop_nodes}  # the weight DequantizeLinear nodes, unless something else reads them
    nodes = [new_nodes.get(i, n) for i, n in enumerate(g.node)]
    used = {t for n in nodes if id(n) not in dropped for t in n.input}
    nodes = [n for n in nodes if id(n) not in dropped or any(o in used for o in n.output)]
    used = {t for n in nodes for t in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(m, str(path))
    return {
        "layers": converted,
        "form": "MatMulNBits (com.microsoft), bits 4, float compute (accuracy_level 0) on the DequantizeLinear "
        "output: weights = the INT4 QDQ integers + 8 packed two a byte; no zero points stored (default 8); "
        "differs from the planned form in weight_scales (one float scale per block: N * n_blocks, all blocks of "
        "a channel equal to its per-channel scale) and in K padded to a multiple of block_size",
    }


def _grid_overrides(init: Any, bits: int, axis: int, qt: Any, scales: np.ndarray, module: str) -> list[dict[str, Any]]:
    """Per-channel ``scale`` / ``zero_point`` overrides that store weights already on a symmetric ``bits`` grid
    (``k * s``, ``|k| <= 2^(bits-1) - 1``, ``s`` = ``scales``, the PTQ grid's) as the integers ``k`` in the
    int4/int8 container. An all-zero channel gets scale 1 (any scale stores it; a tiny one would overflow its
    int32 bias). Weights that are not on that grid (a node mapped to the wrong module) are an error."""
    from onnx import numpy_helper

    w = np.moveaxis(numpy_helper.to_array(init).astype(np.float64), axis, 0)
    w = w.reshape(len(w), -1)
    s = np.asarray(scales, np.float32).astype(np.float64).reshape(-1)
    qmax = 2 ** (bits - 1) - 1
    if len(s) != len(w):
        raise RuntimeError(f"{module}: {len(s)} grid scales for {len(w)} ONNX weight channels")
    k = w / s[:, None]
    if np.abs(k - np.round(k)).max(initial=0.0) > 1e-3 or np.abs(np.round(k)).max(initial=0.0) > qmax:
        raise RuntimeError(f"{module}: the exported weights are not on the PTQ grid (ONNX node mapped to the wrong "
                           "module?)")
    zero = ~np.any(np.round(k) != 0, axis=1)
    s = np.where(zero, 1.0, s)
    return [{"quant_type": qt, "axis": axis, "scale": np.float32(sc), "zero_point": 0} for sc in s]


def _activation_output(node: Any, consumers: dict[str, list[Any]]) -> str:
    """The tensor the quantizer puts Q/DQ on for ``node``'s output: after a fused Relu / Clip when the output
    feeds only that activation (QDQ Conv+Relu is one quantized group)."""
    out = node.output[0]
    users = consumers.get(out, [])
    while len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
        out = users[0].output[0]
        users = consumers.get(out, [])
    return out


def _axis(node: Any) -> int:
    if node.op_type == "Gemm":
        for a in node.attribute:
            if a.name == "transB" and a.i == 0:
                return 1
        return 0
    if node.op_type == "MatMul":
        return 1
    return 0

