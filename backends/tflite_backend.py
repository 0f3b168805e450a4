"""TFLite backend: a plan becomes a ``.tflite``; LiteRT gives the latency, TFLite Micro the arena truth.

Compile (needs the ``tflite`` extra: ``litert-torch``): the model's weights are first put on the plan's grid
by the plan's PTQ (``tap_edge.quantize.ptq``: nearest / GPTQ / AdaRound; exported with float activations).
Int8 plans are then quantized with PT2E before conversion (litert-torch's ``PT2EQuantizer``: per-channel
symmetric int8 weights, int8 activations calibrated on sample inputs), with channel-last input
(``to_channel_last_io``: no TRANSPOSE at the graph input, as on a microcontroller), and converted with
``litert_torch.convert``. ``fp32`` plans convert without quantization. Plans with 4-bit conv weights or
16-bit activations (one activation width for the whole model) go through ai-edge-quantizer per-op recipes on
the float .tflite (``mixed`` mode). Both quantizers re-derive each weight channel's scale from its largest
value, which moves a PTQ grid whose integers do not reach ``qmax`` (GPTQ's need not): :func:`store_ptq_grid`
then writes the fake-quant integers ``round(w / s)`` and scales ``s`` (``PTQInfo.weight_scales``) into every
conv / depthwise / fully-connected weight tensor and re-quantizes its int32 bias at the new ``s_in * s``
(tests/test_backends.py ``test_tflite_stores_the_fake_quant_integers``); the input of each such layer (and the
model output) gets the fake-quant model's activation scale and zero point. What it builds, per runtime, is
:meth:`TFLiteBackend.plan_rules` (one activation width; int4 weights on conv only, and with 8-bit activations
on TFLite Micro; float for the whole model or not at all): ``tap-edge plan`` keeps to them and ``build``
refuses the rest. PT2E is the int8 path rather than ai-edge-quantizer because an ai-edge-quantizer int8
MobileNetV2 gave wrong TFLite Micro output here while the PT2E one matched; every measurement checks TFLM's
outputs against LiteRT's.

Measure (child process), any .tflite: LiteRT (``ai_edge_litert``, one thread) for latency, every input fed
with data of its dtype and shape (:mod:`tap_edge.backends.inputs`; dynamic dims resized to the shapes the user
gives); TFLite Micro's Python interpreter (``tflite-micro``, reference kernels on the host) in child processes
of its own (:mod:`tap_edge.backends.tflm`) for the arena: ``print_allocations()`` (the RecordingMicroAllocator:
total = head (the planned activation tensors) + tail (persistent: tensor structs, op data, quantization
parameters)) and the smallest ``arena_size`` that builds and invokes; TFLM's outputs vs LiteRT's on the same
inputs. When one runtime cannot build the model, its reason (the runtime's own printed lines) replaces its
figures and the other runtime's are kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.backends import Backend, BackendOptions, Build
from tap_edge.backends.inputs import InputRequest, TensorSpec, fed_input, input_array, quantize, resolve_shapes
from tap_edge.backends.manifest import artifact_stem, module_bits, prediction
from tap_edge.backends.reference import agreement
from tap_edge.core.errors import UserError
from tap_edge.devices import DeviceProfile, Runtime
from tap_edge.documents import ArtifactWeights, InputSpec, Manifest
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.frontends.tflite_frontend import load_tflite_graph
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.models import LoadedModel
from tap_edge.plan.rules import ONE_CHANNEL_CONV, PlanRules

#: Keys of :attr:`Manifest.other_predictions`: TFLite Micro's host reference kernels (what ``measure`` runs),
#: and the arena planned on the converted .tflite graph (isolates planner error from graph differences).
TFLM_HOST = "tflm_host"
ARTIFACT_GRAPH = "artifact_graph"
#: Calibration inputs saved beside the artifact for the TFLM-vs-LiteRT check.
MEASURE_SAMPLES = 8
#: Samples of seeded inputs fed to a .tflite tap-edge did not compile.
FOREIGN_SAMPLES = 4
#: TFLite Micro is not started with less of the measurement's time left than this (seconds).
MIN_TFLM_SECONDS = 5.0


def tflite_weight_bytes(path: Path) -> dict[str, int]:
    """Constant bytes in a .tflite by role: integer weights, int32 biases, float constants (buffers shared by
    several tensors, e.g. equal all-zero biases, count once, as stored), per-channel weight scales (4 bytes
    each, in the flatbuffer's quantization tables; the flash model counts them), bias scales and int64 zero
    points (metadata the flash model does not count). ``total_planned_form`` = the figures the flash model
    predicts, counted per tensor; ``total_stored`` subtracts buffers the converter shares between equal
    tensors."""
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    out = {
        "weights": 0,
        "bias": 0,
        "float": 0,
        "other": 0,
        "scales": 0,
        "bias_scales": 0,
        "zero_points": 0,
        "shared_buffers_saved": 0,
    }
    weight_types = {
        schema.TensorType.INT8: 1,
        schema.TensorType.INT4: 0.5,
        schema.TensorType.UINT8: 1,
        schema.TensorType.INT16: 2,
    }
    seen: set[int] = set()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            b = t.Buffer()
            if not 0 < b < model.BuffersLength():
                continue
            buf = model.Buffers(b)
            n = buf.DataLength() if buf.DataLength() > 0 else int(buf.Size()) if buf.Offset() > 1 else 0
            if n == 0:
                continue
            if (
                b in seen
            ):  # the converter stores equal constants once (e.g. all-zero biases of an untrained net)
                out["shared_buffers_saved"] += n
            seen.add(b)
            if t.Type() in weight_types:
                out["weights"] += n
            elif t.Type() == schema.TensorType.INT32:
                out["bias"] += n
            elif t.Type() in (schema.TensorType.FLOAT32, schema.TensorType.FLOAT16):
                out["float"] += n
            else:
                out["other"] += n
            q = t.Quantization()
            if q is not None and q.ScaleLength() > 1:
                key = "scales" if t.Type() in weight_types else "bias_scales"
                out[key] += 4 * q.ScaleLength()
                out["zero_points"] += 8 * q.ZeroPointLength()
    # per tensor, as the flash model counts; the file stores shared buffers once (total_stored)
    out["total_planned_form"] = out["weights"] + out["bias"] + out["float"] + out["other"] + out["scales"]
    out["total_stored"] = out["total_planned_form"] - out["shared_buffers_saved"]
    return out


@dataclass
class TFLiteOptions(BackendOptions):
    """The tflite backend has no options of its own (the plan decides int8, int4-conv or 16x8)."""


class TFLiteBackend(Backend):
    name = "tflite"
    description = "int8 .tflite via litert-torch PT2E (int4 conv / 16x8 via ai-edge-quantizer); LiteRT, TFLM"
    runtimes = ("tflm*", "litert*", "tflite*")
    kinds = ("mcu", "phone", "edge-linux", "npu")
    modules = ("litert_torch", "ai_edge_litert", "tflite_micro")
    measure_modules = ("ai_edge_litert", "tflite_micro")
    extra = "tflite"
    suffix = ".tflite"
    options_class = TFLiteOptions
    agreement_runtime = "litert"

    # ---- compile -----------------------------------------------------------------------------------------
    def build(self, model: LoadedModel, graph: ModelGraph, bits: BitAssignment, out_dir: Path, *,
              calib: np.ndarray, check: np.ndarray, options: TFLiteOptions,
              device: DeviceProfile | None) -> Build:
        """Convert at the plan's widths (see the module docstring); the first calibration inputs are saved
        beside the artifact (``<stem>.samples.npy``) for the TFLM-vs-LiteRT check of ``measure``."""
        self.check_buildable(graph, bits, device)
        mode = self._mode(graph, bits)
        stem = artifact_stem(model, bits)
        path = out_dir / f"{stem}.tflite"
        module, prequant = self.export_module(model, graph, bits, calib)
        self._convert(module, calib, bits, mode, graph, path)
        samples = out_dir / f"{stem}.samples.npy"
        np.save(samples, calib[:MEASURE_SAMPLES])
        wb = tflite_weight_bytes(path)
        artifact_graph = load_tflite_graph(path)
        _, c, h, w = model.input_shape
        return Build(
            artifact=path,
            weights=ArtifactWeights(planned_form_bytes=wb.pop("total_planned_form"),
                                    stored_bytes=wb.pop("total_stored"), by_role=wb),
            input=InputSpec(shape=[1, h, w, c], layout="NHWC"),
            other_predictions={
                TFLM_HOST: prediction(graph, bits, None),  # TFLM reference kernels on the host: no scratch
                ARTIFACT_GRAPH: prediction(artifact_graph, BitAssignment.parse("native"), None),
            },
            facts={"mode": mode, "weights_prequantized": prequant, "samples": samples.name,
                   "artifact_graph_ops": [o.op_type for o in artifact_graph.ops]},
        )

    def outputs(self, artifact: Path, xs: np.ndarray) -> np.ndarray:
        """LiteRT's float (dequantized) outputs."""
        it = _litert(artifact)
        return np.stack([_invoke_litert(it, x) for x in xs])

    def plan_rules(self, runtime: Runtime | None) -> PlanRules:
        """What this backend builds (``runtime`` None: for TFLite Micro, which ``measure`` always runs).

        - One activation width for the whole model: PT2E (int8) and ai-edge-quantizer (int4 conv weights, 16x8)
          quantize every activation alike, and a float layer inside an int8 model is refused by litert-torch's
          PT2E conversion ("quantization_config == None is not supported yet", litert-torch 0.10.0); float is the
          whole model (w32a32) or nothing.
        - Weights int8, int4 on conv only: the ai-edge-quantizer recipe puts CONV_2D at 4 bits; it has no int4
          depthwise policy; TFLite Micro's FULLY_CONNECTED rejects int4 filters (fully_connected_common.cc:98,
          tflite-micro 0.dev20261023182759). No float16 weights (TFLite Micro's DEQUANTIZE takes no float16).
        - TFLite Micro: int4 filters only with int8 activations (conv_common.cc: "Hybrid models are not
          supported on TFLite Micro" for an int4 filter with int16 input); LiteRT runs int4 conv at 16x8.
        - The converter builds a conv with one input channel as DEPTHWISE_CONV_2D (ds_cnn's first layer): such
          a conv takes the depthwise rules (no int4).
        - ``measure`` runs TFLite Micro's reference kernels on the host: a plan for a device whose kernels differ
          (CMSIS-NN reads int4 filters packed, the reference kernels unpack them into scratch) must fit those too
          (``also_fits``), so the measurement confirms what the plan says.
        """
        tflm = runtime is None or runtime.name.startswith("tflm")
        common = {(8, 8), (8, 16), (32, 32)}
        conv = common | {(4, 8)} | (set() if tflm else {(4, 16)})
        reasons = (
            "tflite backend: one activation width for the whole model (PT2E and ai-edge-quantizer quantize every "
            "activation alike; litert-torch 0.10.0 PT2E refuses a float layer in an int8 model)",
            "tflite backend: int4 weights on conv only (ai-edge-quantizer recipe: CONV_2D; no int4 depthwise "
            "policy; TFLite Micro's FULLY_CONNECTED rejects int4 filters, fully_connected_common.cc:98)",
            *(("TFLite Micro: int4 conv filters need int8 activations (conv_common.cc: 'Hybrid models are not "
               "supported on TFLite Micro')",) if tflm else ()),
        )
        reasons += ("litert-torch converts a conv with one input channel into DEPTHWISE_CONV_2D: it follows the "
                    "depthwise rules",)
        also = ()
        if runtime is not None and tflm and runtime.scratch != "tflm":  # measure runs the reference kernels
            also = (runtime.model_copy(update={"name": f"{runtime.name}@host-reference", "scratch": "tflm"}),)
            reasons += (f"measured with TFLite Micro's reference kernels on the host: the arena must fit them too "
                        f"(they unpack int4 filters into scratch, where {runtime.name}'s kernels may not)",)
        rules = PlanRules.of(runtime.name if runtime else "tflm (host reference)", self.name,
                             {"conv": conv, "dwconv": common, "default": common}, one_activation_width=True,
                             reasons=reasons, kernel_class={ONE_CHANNEL_CONV: "dwconv"}, also_fits=also)
        return rules.within(runtime) if runtime is not None else rules

    @staticmethod
    def _mode(graph: Any, bits: Any) -> str:
        """``float``, ``int8`` (PT2E) or ``mixed`` (ai-edge-quantizer: int4 conv weights and/or 16x8), from
        the widths of the quantizable layers (the build has refused what :meth:`plan_rules` forbids)."""
        quant = graph.quantizable_ops()
        ws = {module_bits(bits, op.module)[0] for op in quant} or {bits.default_w}
        acts = {module_bits(bits, op.module)[1] for op in quant} or {bits.default_a}
        if ws <= {32, 16} and acts <= {32}:
            return "float"
        if ws <= {8} and acts <= {8}:
            return "int8"
        return "mixed"

    def _convert(self, module: Any, xs: np.ndarray, bits: Any, mode: str, graph: Any, path: Path) -> None:
        import logging

        import torch

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        logging.getLogger("absl").setLevel(logging.ERROR)
        import litert_torch

        example = (torch.from_numpy(xs[:1]),)
        cl_module = litert_torch.to_channel_last_io(module, args=[0])
        cl_example = (example[0].permute(0, 2, 3, 1).contiguous(),)
        with _quiet():
            if mode == "float":
                litert_torch.convert(cl_module, cl_example).export(str(path))
                return
            if mode == "mixed":
                float_path = path.with_name(path.stem + ".float.tflite")
                litert_torch.convert(cl_module, cl_example).export(str(float_path))
                try:
                    _ai_edge_quantize(float_path, path, xs, bits, graph)
                finally:
                    float_path.unlink(missing_ok=True)
            else:
                self._pt2e(cl_module, cl_example, xs, path)
        if getattr(module, "tap_edge_ptq", None) is not None:
            store_ptq_grid(path, module)

    @staticmethod
    def _pt2e(cl_module: Any, cl_example: tuple[Any, ...], xs: np.ndarray, path: Path) -> None:
        """PT2E int8 (per-channel symmetric weights, int8 activations calibrated on ``xs``) and conversion."""
        import litert_torch
        import torch
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        try:
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        except ImportError:  # older torch keeps PT2E in torch.ao
            from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
        q = PT2EQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
        )
        exported = torch.export.export(cl_module, cl_example).module()
        prepared = prepare_pt2e(exported, q)
        with torch.no_grad():
            for x in xs:
                prepared(torch.from_numpy(x[None]).permute(0, 2, 3, 1).contiguous())
        converted = convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(converted, cl_example, quant_config=QuantConfig(pt2e_quantizer=q)).export(
            str(path)
        )

    # ---- measure (runs in the child) ---------------------------------------------------------------------
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
        """LiteRT in this process (latency, outputs), then TFLite Micro in child processes
        (:func:`tap_edge.backends.tflm.measure_tflm`: build, run, ``print_allocations``, the smallest arena).
        Each runtime's failure is its figures' ``reason``; the other runtime's figures are kept."""
        import ai_edge_litert.interpreter  # noqa: F401 - the runtime is imported before the baseline

        from tap_edge.backends.measure import time_runs
        from tap_edge.backends.tflm import measure_tflm

        baseline()
        t0 = time.perf_counter()
        res: dict[str, Any] = {"times_ms": [], "runtime": f"ai-edge-litert {_version('ai-edge-litert')}",
                               "threads": threads}
        litert, specs, shapes, resized = _litert_session(artifact, threads, feed)
        res["litert"] = litert.status
        samples = _samples(artifact, manifest, specs, shapes, feed)
        res["inputs"] = [fed_input(spec, shape, feed, len(specs)) for spec, shape in zip(specs, shapes, strict=True)]
        lite_outs = None
        if litert.ok:
            try:
                litert.set_inputs(samples[0])
                res["times_ms"] = time_runs(litert.interp.invoke, runs=runs, warmup=warmup)
                lite_outs = [litert.run(x) for x in samples]
            except (RuntimeError, ValueError) as e:  # LiteRT's failure costs its figures only
                res["litert"] = {"ok": False, "stage": "invoke", "reason": f"{type(e).__name__}: {e}"[:600]}
        if resized:
            res["tflm"] = {"built": False, "reason": "it runs only its stored input shapes "
                           f"({'; '.join(f'{n} {s}' for n, s in resized.items())}), not the ones given"}
            return res
        left = timeout - (time.perf_counter() - t0) - min(10.0, 0.1 * timeout)  # a margin to return in
        if left < MIN_TFLM_SECONDS:
            res["tflm"] = {"built": False, "reason": f"not run: {max(left, 0):.0f} s of the measurement's "
                           f"{timeout:.0f} s left (raise --timeout)"}
            return res
        with tempfile.TemporaryDirectory(prefix="tap-edge-tflm-") as tmp:
            tflm, tflm_outs = measure_tflm(artifact, samples, Path(tmp), timeout=left)
        tflm["runtime"] = f"tflite-micro {_version('tflite-micro')}"
        res["tflm"] = tflm
        if lite_outs is not None and tflm_outs is not None:
            res["tflm_vs_litert"] = compare_outputs(lite_outs, tflm_outs)
        res["runtime_figures_note"] = (
            "tflm: TFLite Micro's Python interpreter (reference kernels, 64-bit host) in child processes; "
            "alloc = RecordingMicroAllocator (print_allocations) at a big arena: total = head (planned tensors) "
            "+ tail (persistent); arena_search.min_bytes = smallest arena_size that builds and invokes "
            "(1-byte exact; a crashing probe counts as a failing size)"
        )
        return res


#: TFLite builtins whose second input is a per-output-channel quantized weight tensor, and the permutation that
#: takes a PyTorch weight (OIHW / [O, I]) to its TFLite layout (OHWI; depthwise [1, H, W, C]; [O, I]).
_WEIGHT_LAYOUT = {3: (0, 2, 3, 1), 4: (1, 2, 3, 0), 9: (0, 1)}


def store_ptq_grid(path: Path, module: Any) -> dict[str, int]:
    """Rewrite, in place, the weight tensors of ``path`` (a quantized .tflite converted from ``module``, a
    :func:`~tap_edge.quantize.ptq.weights_only` copy) so they store the fake-quant integers ``round(w / s)`` and
    scales ``s`` of ``module.tap_edge_ptq.weight_scales``, with each int32 bias re-quantized from the module's
    float bias at ``s_in * s``. Weight tensors are found by the module's name (:func:`module_regex`) and must
    hold the same values as the converter quantized them to within half of its step (else the mapping is wrong:
    an error). An all-zero channel gets scale 1 (the converter's absmax scale is 0 there). Returns ``{"layers": n}``
    rewritten."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    info = module.tap_edge_ptq
    modules = dict(module.named_modules())
    patterns = {name: re.compile(module_regex(name)) for name in info.weight_scales}
    raw = path.read_bytes()
    m = schema.ModelT.InitFromPackedBuf(raw, 0)
    for buf in m.buffers or []:  # large models keep buffers after the flatbuffer (offset, size): read them in
        if buf.data is None and buf.offset > 1:
            buf.data = np.frombuffer(raw[buf.offset:buf.offset + buf.size], np.uint8)
            buf.offset = buf.size = 0
    done: set[str] = set()
    for sg in m.subgraphs:
        for op in sg.operators:
            code = m.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            if builtin not in _WEIGHT_LAYOUT or len(op.inputs) < 2:
                continue
            wt = sg.tensors[op.inputs[1]]
            if wt.type not in (schema.TensorType.INT8, schema.TensorType.INT4) or wt.quantization is None:
                continue
            name = wt.name.decode(errors="replace")
            found = sorted((n for n, pat in patterns.items() if pat.search(name)), key=len)[-1:]
            if not found:  # the converter names some weights after no module (PT2E's last Linear): by value
                found = [n for n in patterns if n not in done and _holds(m, wt, builtin, modules[n], info, n, schema)]
            if len(found) != 1:
                raise RuntimeError(f"TFLite weight '{name}': {len(found)} PTQ layers match it")
            qp = info.input_qparams.get(found[0])
            if qp is not None:
                _set_activation(m, sg, op.inputs[0], qp, schema)
            _store_layer(m, sg, op, builtin, found[0], modules[found[0]], info, schema)
            done.add(found[0])
        if info.output_qparams is not None and sg.outputs is not None and len(sg.outputs):
            _set_activation(m, sg, _before_dequantize(m, sg, int(sg.outputs[0])), info.output_qparams, schema)
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return {"layers": len(done)}


#: Builtins whose output must carry their input's quantization (RESHAPE, SQUEEZE, PAD, PADV2: bytes moved as is).
_SAME_SCALE = (22, 43, 34, 60)


def _producers(m: Any, sg: Any) -> dict[int, Any]:
    return {int(t): op for op in sg.operators for t in (op.outputs if op.outputs is not None else [])}


def _builtin(m: Any, op: Any) -> int:
    code = m.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _before_dequantize(m: Any, sg: Any, tensor: int) -> int:
    """The quantized tensor behind a graph output that a DEQUANTIZE makes float (else ``tensor``)."""
    op = _producers(m, sg).get(tensor)
    return int(op.inputs[0]) if op is not None and _builtin(m, op) == 6 else tensor


def _set_activation(m: Any, sg: Any, tensor: int, qparams: tuple[int, float, int], schema: Any) -> None:
    """Give an int8 / int16 activation tensor (and the tensors it is a reshaped or padded copy of) the fake-quant
    quantizer ``(bits, scale, zero_point)``: uint8 zero point ``z`` is int8 ``z - 128``, the same grid. A float
    tensor, or one whose width is not the quantizer's, is left alone."""
    bits, scale, zero = qparams
    want = {8: (schema.TensorType.INT8, zero - 128), 16: (schema.TensorType.INT16, 0)}.get(bits)
    producers = _producers(m, sg)
    while want is not None:
        t = sg.tensors[tensor]
        if t.type != want[0] or t.quantization is None or t.quantization.scale is None \
                or len(t.quantization.scale) != 1:
            return
        t.quantization.scale = np.array([scale], np.float32)
        t.quantization.zeroPoint = np.array([want[1]], np.int64)
        op = producers.get(tensor)
        if op is None or _builtin(m, op) not in _SAME_SCALE:
            return
        tensor = int(op.inputs[0])


def _grid(m: Any, wt: Any, builtin: int, mod: Any, info: Any, name: str,
          schema: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """(the module's integers in the tensor's layout, their per-channel scales with 1 for an all-zero channel,
    whether the tensor holds those weights to within half of its own quantization step)."""
    bits = info.weight_bits[name]
    scales = info.weight_scales[name].numpy().astype(np.float32).astype(np.float64)
    w = mod.weight.detach().double().numpy()
    k = np.round(w / scales.reshape(-1, *([1] * (w.ndim - 1))))
    if np.abs(k).max(initial=0.0) > (1 << (bits - 1)) - 1:
        raise RuntimeError(f"{name}: weights off the {bits}-bit PTQ grid")
    k = k.transpose(_WEIGHT_LAYOUT[builtin])
    shape = tuple(int(d) for d in wt.shape)
    if k.shape != shape:
        return k, scales, False
    axis = int(wt.quantization.quantizedDimension)
    per = (-1, *([1] * (len(shape) - 1)))
    new_s = np.where(np.any(np.moveaxis(k, axis, 0).reshape(shape[axis], -1) != 0, axis=1), scales, 1.0)
    data = m.buffers[wt.buffer].data
    if data is None:
        raise RuntimeError(f"{name}: the TFLite weight buffer is stored outside the flatbuffer")
    int4 = wt.type == schema.TensorType.INT4
    old = _unpack(np.asarray(data, np.uint8), k.size, int4).reshape(shape).astype(np.float64)
    step = np.moveaxis(np.broadcast_to(np.asarray(wt.quantization.scale, np.float64), (shape[axis],)).reshape(per),
                       0, axis)
    # rounding ties (k * s exactly half-way between two of the converter's levels) sit at 0.5 step: a margin
    close = np.abs(old * step - k * np.moveaxis(new_s.reshape(per), 0, axis)) <= step * (0.5 + 1e-4) + 1e-12
    # an all-zero channel is fully given by k = 0 (the converter's own integers there may be junk: scale 0)
    nonzero = np.moveaxis(np.moveaxis(k, axis, 0).reshape(shape[axis], -1).any(1).reshape(per), 0, axis)
    holds = bool(np.all(close | ~nonzero))
    return k, new_s, holds


def _holds(m: Any, wt: Any, builtin: int, mod: Any, info: Any, name: str, schema: Any) -> bool:
    return _grid(m, wt, builtin, mod, info, name, schema)[2]


def _store_layer(m: Any, sg: Any, op: Any, builtin: int, name: str, mod: Any, info: Any, schema: Any) -> None:
    """One layer of :func:`store_ptq_grid`: its weight integers and scales, then its bias."""
    wt = sg.tensors[op.inputs[1]]
    k, new_s, holds = _grid(m, wt, builtin, mod, info, name, schema)
    if not holds:
        raise RuntimeError(f"{name}: the TFLite weight tensor '{wt.name.decode(errors='replace')}' does not hold "
                           "this module's weights")
    m.buffers[wt.buffer].data = _pack(k.astype(np.int8), wt.type == schema.TensorType.INT4)
    wt.quantization.scale = new_s.astype(np.float32)
    wt.quantization.zeroPoint = np.zeros(len(new_s), np.int64)
    if len(op.inputs) < 3 or op.inputs[2] < 0 or mod.bias is None:
        return
    bt = sg.tensors[op.inputs[2]]
    at = sg.tensors[op.inputs[0]]
    if bt.type != schema.TensorType.INT32 or at.quantization is None or at.quantization.scale is None:
        return
    s_in = float(np.asarray(at.quantization.scale, np.float32)[0])
    b_s = (np.float32(s_in) * new_s.astype(np.float32)).astype(np.float32)
    b_q = np.clip(np.round(mod.bias.detach().double().numpy() / b_s.astype(np.float64)), -(2 ** 31), 2 ** 31 - 1)
    m.buffers[bt.buffer].data = np.frombuffer(b_q.astype("<i4").tobytes(), np.uint8)
    bt.quantization.scale = b_s
    bt.quantization.zeroPoint = np.zeros(len(b_s), np.int64)


def _unpack(raw: np.ndarray, n: int, int4: bool) -> np.ndarray:
    """Signed integers of a weight buffer: int8 as is; int4 two a byte (low nibble first) when packed."""
    if not int4 or len(raw) == n:
        return raw.view(np.int8)[:n].astype(np.int16)
    lo, hi = (raw & 0x0F).astype(np.int16), (raw >> 4).astype(np.int16)
    both = np.stack([lo, hi], 1).reshape(-1)[:n]
    return np.where(both > 7, both - 16, both)


def _pack(k: np.ndarray, int4: bool) -> np.ndarray:
    """The inverse of :func:`_unpack` (int4 packed two a byte, low nibble first; an odd count pads a zero)."""
    flat = k.reshape(-1)
    if not int4:
        return flat.astype(np.int8).view(np.uint8).copy()
    u = (flat.astype(np.int16) & 0x0F).astype(np.uint8)
    if len(u) % 2:
        u = np.append(u, np.uint8(0))
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def compare_outputs(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> dict[str, Any]:
    """Two runtimes' outputs on the same samples (each a list of outputs): agreement of the first output
    (top-1, cosine), the largest difference over every output."""
    first_a = np.stack([s[0] for s in a]).astype(np.float64)
    first_b = np.stack([s[0] for s in b]).astype(np.float64)
    diffs = [np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max(initial=0.0)
             for sa, sb in zip(a, b, strict=True) for x, y in zip(sa, sb, strict=False)]
    return {**agreement(first_a, first_b), "max_abs_diff": float(max(diffs, default=0.0)),
            "output_dtype": str(np.asarray(a[0][0]).dtype), "outputs": len(a[0])}


def module_regex(module: str) -> str:
    """A regex that finds a PyTorch module's ops by the tensor names litert-torch writes
    (``.../tap_edge.graph.zoo._ResBlock_stage1/torch.nn.modules.conv.Conv2d_conv1;...`` for ``stage1.conv1``)."""
    parts = [re.escape(p) for p in module.split(".") if p]
    return r"(^|/)" + "/".join(rf"[^/;]*_{p}" for p in parts) + r"(;|$)"


def _ai_edge_quantize(float_path: Path, out: Path, xs: np.ndarray, bits: Any, graph: Any) -> None:
    """ai-edge-quantizer with per-op recipes: one activation width everywhere (8, or 16 for 16x8), int8
    per-channel weights, int4 per-channel weights on the conv layers the plan puts at 4 bits."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer

    a = next(iter({module_bits(bits, op.module)[1] for op in graph.quantizable_ops()} | {bits.default_a}))

    def cfg(wb: int) -> dict[str, Any]:
        return {
            "activation_tensor_config": {
                "num_bits": a,
                "symmetric": a == 16,
                "granularity": "TENSORWISE",
                "dtype": "INT",
            },
            "weight_tensor_config": {
                "num_bits": wb,
                "symmetric": True,
                "granularity": "CHANNELWISE",
                "dtype": "INT",
            },
            "compute_precision": "INTEGER",
            "explicit_dequantize": False,
            "skip_checks": False,
            "min_weight_elements": 0,
        }

    default_w = 4 if bits.default_w == 4 else 8
    recipe = [
        {"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize", "op_config": cfg(8)}
    ]
    if default_w == 4:
        recipe.append(
            {
                "regex": ".*",
                "operation": "CONV_2D",
                "algorithm_key": "min_max_uniform_quantize",
                "op_config": cfg(4),
            }
        )
    for op in graph.quantizable_ops():
        w = module_bits(bits, op.module)[0]
        if op.module and op.op_class == "conv" and w != default_w and op.module in bits.layers:
            recipe.append(
                {
                    "regex": module_regex(op.module),
                    "operation": "CONV_2D",
                    "algorithm_key": "min_max_uniform_quantize",
                    "op_config": cfg(w),
                }
            )
    it = Interpreter(model_path=str(float_path))
    sig = it.get_signature_list()
    key = next(iter(sig))
    name = sig[key]["inputs"][0]
    cal = {key: [{name: x[None].transpose(0, 2, 3, 1).astype(np.float32)} for x in xs]}
    qt = quantizer.Quantizer(str(float_path), recipe)
    qt.quantize(qt.calibrate(cal)).export_model(str(out), overwrite=True)


# ---- helpers -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the converter's progress output on stdout/stderr (fd level)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with (
        open(os.devnull, "wb") as null,
        open(os.devnull, "w") as tnull,
        contextlib.redirect_stdout(tnull),
        contextlib.redirect_stderr(tnull),
    ):
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def _litert(path: Path, threads: int = 1) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def _quantize_input(it: Any, x: np.ndarray) -> np.ndarray:
    """A float NCHW sample -> the interpreter's input (NHWC; int8 with its scale/zero point)."""
    d = it.get_input_details()[0]
    shape = list(d["shape"])
    x = np.asarray(x, np.float32)
    if x.ndim == 3 and len(shape) == 4 and list(x.shape) != shape[1:]:
        x = x.transpose(1, 2, 0)
    x = x.reshape(shape)
    if d["dtype"] in (np.int8, np.uint8, np.int16):
        scale, zp = d["quantization"]
        info = np.iinfo(d["dtype"])
        return np.clip(np.round(x / (scale or 1.0) + zp), info.min, info.max).astype(d["dtype"])
    return x.astype(d["dtype"])


def _invoke_litert_q(it: Any, q: np.ndarray) -> np.ndarray:
    it.set_tensor(it.get_input_details()[0]["index"], q)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def _invoke_litert(it: Any, x: np.ndarray) -> np.ndarray:
    """Float output (dequantized) for one float NCHW sample."""
    out = _invoke_litert_q(it, _quantize_input(it, x))
    d = it.get_output_details()[0]
    if d["dtype"] in (np.int8, np.uint8, np.int16):
        scale, zp = d["quantization"]
        return (out.astype(np.float32) - zp) * scale
    return out.astype(np.float32)


class _LiteRT:
    """A LiteRT interpreter with every input allocated, or the reason it is not (``status``)."""

    def __init__(self, interp: Any, status: dict[str, Any]) -> None:
        self.interp = interp
        self.status = status

    @property
    def ok(self) -> bool:
        return bool(self.status.get("ok"))

    def set_inputs(self, xs: list[np.ndarray]) -> None:
        for d, x in zip(self.interp.get_input_details(), xs, strict=True):
            self.interp.set_tensor(d["index"], x)

    def run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        self.set_inputs(xs)
        self.interp.invoke()
        return [self.interp.get_tensor(d["index"]).copy() for d in self.interp.get_output_details()]


def _litert_session(artifact: Path, threads: int, feed: InputRequest
                    ) -> tuple[_LiteRT, list[TensorSpec], list[list[int]], dict[str, list[int]]]:
    """LiteRT's interpreter for ``artifact``, its inputs, the shapes to feed (the stored ones unless ``feed``
    gives others, which LiteRT is resized to) and the inputs so resized (TFLite Micro cannot resize)."""
    from ai_edge_litert.interpreter import Interpreter

    from tap_edge.backends.measure import capture_fds

    with capture_fds() as cap:
        try:
            interp = Interpreter(model_path=str(artifact), num_threads=threads)
        except (RuntimeError, ValueError) as e:
            interp, error = None, e
    if interp is None:
        raise UserError(f"{artifact}: LiteRT cannot read it ({_lines(cap.get('text', ''), error)})",
                        "is it a .tflite file?")
    details = interp.get_input_details()
    specs = [_spec(d) for d in details]
    # the stored shape where the user gives none (TFLite Micro runs that one), else the signature's open dims
    stored = [[int(n) for n in d["shape"]] for d in details]
    declared = [s if feed.for_input(feed.shapes, s.name, len(specs)) is not None else
                TensorSpec(s.name, tuple(shape), s.dtype, s.scale, s.zero_point) for s, shape in zip(specs, stored,
                                                                                                   strict=True)]
    shapes = [i.shape for i in resolve_shapes(declared, feed, f"{artifact.name}: ")]
    resized = {}
    for d, spec, shape, was in zip(details, specs, shapes, stored, strict=True):
        if shape != was:
            interp.resize_tensor_input(d["index"], shape)
            resized[spec.name] = was
    with capture_fds() as cap:
        try:
            interp.allocate_tensors()
            status: dict[str, Any] = {"ok": True}
        except (RuntimeError, ValueError) as e:  # e.g. an unresolved custom op: LiteRT's figures are lost
            status = {"ok": False, "stage": "allocate", "reason": _lines(cap.get("text", ""), e)}
    return _LiteRT(interp, status), specs, shapes, resized


def _spec(d: dict[str, Any]) -> TensorSpec:
    """A LiteRT input detail as a :class:`TensorSpec` (``shape_signature`` -1 dims are dynamic)."""
    sig = d.get("shape_signature")
    dims = [int(n) for n in (sig if sig is not None and len(sig) == len(d["shape"]) else d["shape"])]
    scale, zp = d.get("quantization") or (0.0, 0)
    return TensorSpec(name=d["name"], dims=tuple(dims),
                      dtype=np.dtype(d["dtype"]).name, scale=float(scale) or None, zero_point=int(zp))


def _lines(text: str, exc: BaseException) -> str:
    """A runtime's failure in one line: the last lines it printed (INFO lines dropped), then the exception."""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("INFO")]
    return " | ".join(kept[-3:] + [f"{type(exc).__name__}: {' '.join(str(exc).split())}"])[:600]


def _samples(artifact: Path, manifest: Manifest | None, specs: list[TensorSpec], shapes: list[list[int]],
             feed: InputRequest) -> list[list[np.ndarray]]:
    """Each sample's inputs: for an artifact tap-edge compiled, the calibration inputs ``compile`` saved beside
    it (NCHW floats -> the input's layout and quantization); otherwise :data:`FOREIGN_SAMPLES` samples of
    :func:`~tap_edge.backends.inputs.input_array` for every input (a value the user gave in every sample)."""
    name = manifest.backend_facts.get("samples") if manifest is not None else None
    if name and (artifact.parent / name).exists() and len(specs) == 1 and not feed.values:
        return [[_to_input(specs[0], shapes[0], x)] for x in np.load(artifact.parent / name)[:MEASURE_SAMPLES]]
    return [[input_array(spec, shape, feed.for_input(feed.values, spec.name, len(specs)), 1000 * i + j)
             for j, (spec, shape) in enumerate(zip(specs, shapes, strict=True))] for i in range(FOREIGN_SAMPLES)]


def _to_input(spec: TensorSpec, shape: list[int], x: np.ndarray) -> np.ndarray:
    """A float NCHW sample -> the input (NHWC when the input is; quantized with its scale and zero point)."""
    x = np.asarray(x, np.float32)
    if x.ndim == 3 and len(shape) == 4 and list(x.shape) != shape[1:]:
        x = x.transpose(1, 2, 0)
    x = x.reshape(shape)
    return quantize(spec, x) if spec.quantized else x.astype(spec.dtype)
