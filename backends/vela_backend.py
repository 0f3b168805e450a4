"""Vela backend: a plan becomes an int8 (or 16x8) ``.tflite`` through the TFLite path, then Vela compiles it for the
device's Ethos-U; the artifact is Vela's optimised ``.tflite`` and its summary.

Compile (needs the ``tflite`` and ``vela`` extras: litert-torch, ai-edge-quantizer, ethos-u-vela): the model's weights
are put on the plan's grid (``tap_edge.quantize.ptq``), exported with litert-torch and quantized with
ai-edge-quantizer at the plan's one activation width (8, or 16 for 16x8; int8 per-channel weights). That is the
TFLite backend's ``mixed`` path; its PT2E int8 path is not used here because it leaves residual adds whose input
also feeds another layer in float (DEQUANTIZE, float ADD, QUANTIZE: MobileNetV2 / EfficientNet-Lite0), which Vela
cannot place on the NPU. Vela then runs in a child process (``python -m ethosu.vela``, with a timeout) with the
device runtime's accelerator configuration, system configuration and memory mode, written as a Vela ``.ini``
beside the artifact (:mod:`tap_edge.devices.vela`; ``--vela-config FILE`` gives Vela a file of your own, checked
first). What it builds is :meth:`VelaBackend.plan_rules`: 8-bit weights (Vela's TFLite input takes no other) and
one activation width, 8 or 16 bits.

Measure (no NPU on this host): Vela's own figures, read back from the artifact and the summary saved at compile
time: "Total SRAM used", the constants' memory, the optimised file, the operators left to the CPU (with Vela's
reasons) and what TFLite Micro keeps beside Vela's arena on the Cortex-M (its persistent tail for the Vela model
and the CPU kernels' scratch: :mod:`tap_edge.fit.tflm` on the optimised model's graph), and Vela's cycle estimate
in milliseconds at the NPU clock of the device profile. The verdict compares them with the device's regions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tap_edge.backends import Artifact, Backend, BackendOptions, Build
from tap_edge.backends.inputs import InputRequest
from tap_edge.backends.manifest import artifact_stem, prediction
from tap_edge.backends.reference import Samples
from tap_edge.backends.tflite_backend import MEASURE_SAMPLES, TFLiteBackend
from tap_edge.core.errors import UserError
from tap_edge.devices import DeviceProfile, Runtime
from tap_edge.devices.vela import VelaConfig, config_from_file, parse_ini
from tap_edge.documents import ArtifactWeights, InputSpec, Manifest, PTQSettings
from tap_edge.fit import ethos_u
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.models import LoadedModel
from tap_edge.plan.rules import ONE_CHANNEL_CONV, PlanRules

#: ``other_predictions`` key: the prediction of tap-edge's rules model of Vela (what ``check`` says without Vela).
VELA_RULES = "vela_rules"
#: The suffix of Vela's optimised model (``<stem>_vela.tflite``) and of its summary saved for ``measure``.
SUFFIX, SUMMARY = "_vela.tflite", ".vela-summary.csv"


@dataclass
class VelaOptions(BackendOptions):
    """``vela_config``: a Vela ``.ini`` of your own (``--vela-config``): its ``[System_Config.*]`` and
    ``[Memory_Mode.*]`` sections replace the device profile's (the profile's names are picked when the file has
    several); the accelerator configuration stays the profile's."""

    FLAG_HELP: ClassVar[dict[str, tuple[str, str]]] = {
        "vela_config": ("gives Vela a system configuration and memory mode of your own", "runs no Vela"),
    }

    vela_config: Path | None = None

    def __post_init__(self) -> None:
        if self.vela_config is None:
            return
        self.vela_config = Path(self.vela_config)
        try:
            text = self.vela_config.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"--vela-config {self.vela_config}: file not found", "pass a Vela .ini file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--vela-config {self.vela_config}: cannot read it ({type(e).__name__})",
                            "pass a readable Vela .ini file") from None
        parse_ini(text, f"--vela-config {self.vela_config}")  # a bad file is one line before anything runs


class VelaBackend(Backend):
    name = "vela"
    description = "Ethos-U: int8 / 16x8 .tflite (TFLite path) compiled by Vela; Vela's SRAM, flash, CPU ops, cycles"
    runtimes = ("tflm-ethos-u*", "litert-ethos-u*")  # the families with a vela section (not executorch-ethos-u)
    kinds = ("mcu", "edge-linux", "npu")
    modules = ("litert_torch", "ai_edge_litert", "ai_edge_quantizer", "ethosu.vela")
    measure_modules = ("ai_edge_litert",)
    extra = "vela"
    suffix = SUFFIX
    options_class = VelaOptions
    agreement_runtime = "litert (the int8 .tflite Vela compiled)"

    def install_hint(self) -> str:
        return "pip install 'tap-edge[tflite,vela]'"

    def pick_runtime(self, device: DeviceProfile) -> Runtime:
        rt = super().pick_runtime(device)
        if rt.vela is None:
            raise UserError(f"device '{device.id}': runtime '{rt.name}' has no vela section",
                            "describe the Ethos-U in the profile (device_profiles/README.md, runtimes[].vela)")
        return rt

    # ---- what it builds ------------------------------------------------------------------------------------
    def plan_rules(self, runtime: Runtime | None) -> PlanRules:
        """8-bit weights with 8- or 16-bit activations, one activation width for the whole model.

        - Vela's TFLite input: "Weight tensors must be 8-bit precision" on every Ethos-U generation (SUPPORTED_OPS.md,
          ethos-u-vela 5.2.0); int4 weights reach Vela only as TOSA, which tap-edge does not write. A float or int4
          layer would be left to the Cortex-M.
        - The TFLite path (ai-edge-quantizer) quantizes every activation at one width.
        """
        pairs = sorted(runtime.npu_pairs()) if runtime is not None and runtime.npu_pairs() else [(8, 8), (8, 16)]
        reasons = (
            "vela backend: 8-bit weights (Vela's TFLite constraint 'Weight tensors must be 8-bit precision', "
            "SUPPORTED_OPS.md of ethos-u-vela 5.2.0; int4 weights only through TOSA input)",
            "vela backend: one activation width for the whole model (ai-edge-quantizer quantizes every activation "
            "alike), int8 or int16 (16x8)",
            "a conv with one input channel is built as DEPTHWISE_CONV_2D: it follows the depthwise rules",
        )
        rules = PlanRules.of(runtime.name if runtime else "ethos-u", self.name,
                             {"conv": pairs, "dwconv": pairs, "fc": pairs, "default": pairs},
                             one_activation_width=True, reasons=reasons, kernel_class={ONE_CHANNEL_CONV: "dwconv"})
        return rules.within(runtime) if runtime is not None else rules

    # ---- compile -----------------------------------------------------------------------------------------
    def compile(self, model: LoadedModel, graph: ModelGraph, bits: BitAssignment, out_dir: Path, *,
                device: DeviceProfile | None = None, calib: Samples | np.ndarray | None = None,
                check: Samples | np.ndarray | None = None, options: BackendOptions | None = None,
                ptq: PTQSettings | None = None) -> Artifact:
        """:meth:`Backend.compile` for a device (Vela needs its Ethos-U); with ``--vela-config`` the prediction and
        the build both use the user's Vela sections."""
        if device is None:
            raise UserError("the vela backend compiles for a device's Ethos-U",
                            "pass -d DEVICE (e.g. corstone-300, alif-ensemble-e7, himax-we2; tap-edge devices)")
        opts = self.check_options(options)
        device = with_vela_config(device, self.pick_runtime(device), opts)
        return super().compile(model, graph, bits, out_dir, device=device, calib=calib, check=check, options=opts,
                               ptq=ptq)

    def build(self, model: LoadedModel, graph: ModelGraph, bits: BitAssignment, out_dir: Path, *,
              calib: np.ndarray, check: np.ndarray, options: VelaOptions, device: DeviceProfile | None) -> Build:
        """The int8 / 16x8 ``<stem>.tflite`` (kept beside the artifact: LiteRT runs it for the agreement), then
        Vela into ``<stem>_vela.tflite`` with its ``.ini``, summary CSV and console output."""
        assert device is not None
        runtime = self.pick_runtime(device)
        config = runtime.vela
        assert config is not None
        self.require_pytorch(model, bits)
        self.check_buildable(graph, bits, device)
        if not any(op.quantizable for op in graph.ops):
            raise UserError(f"{model.spec}: no conv or fully-connected layer to quantize", "the NPU would run nothing")
        stem = artifact_stem(model, bits)
        int8 = out_dir / f"{stem}.tflite"
        tflite = TFLiteBackend()
        module, prequant = tflite.export_module(model, graph, bits, calib)
        t0 = time.perf_counter()
        tflite._convert(module, calib, bits, "mixed", graph, int8)
        convert_s = time.perf_counter() - t0
        samples = out_dir / f"{stem}.samples.npy"
        np.save(samples, calib[:MEASURE_SAMPLES])
        run = ethos_u.run_vela(int8, config, out_dir)
        summary = out_dir / f"{stem}{SUMMARY}"
        if run.summary is not None:
            run.summary.replace(summary)
        figures = ethos_u.figures_of(run.output, config, summary=summary if summary.exists() else None,
                                     stdout=run.stdout, what=f"{int8.name} (the TFLite path's int8 model)",
                                     runtime=runtime)
        (out_dir / f"{stem}.vela-stdout.txt").write_text(run.stdout)
        _, c, h, w = model.input_shape
        rules = ethos_u.rules_figures(graph, bits, runtime)
        rules_pred = prediction(graph, bits, runtime).model_copy(update={
            "arena_bytes": rules.sram_need, "arena_head_bytes": rules.sram_bytes, "prediction_by":
            ethos_u.prediction_note(rules), "vela": rules.to_doc()})
        return Build(
            artifact=run.output,
            weights=ArtifactWeights(planned_form_bytes=figures.file_bytes, stored_bytes=figures.read_only_bytes,
                                    by_role={"read_only": figures.read_only_bytes,
                                             "command_stream": figures.command_stream_bytes,
                                             "other": figures.file_bytes - figures.read_only_bytes
                                             - figures.command_stream_bytes},
                                    note="the Vela-optimised .tflite: read-only tensor (encoded weights, biases, "
                                         "scales), command streams, the CPU ops and the flatbuffer"),
            input=InputSpec(shape=[1, h, w, c], layout="NHWC"),
            other_predictions={VELA_RULES: rules_pred},
            facts={"vela": figures.to_dict(), "vela_config": config.model_dump(), "vela_ini": f"{stem}.vela.ini",
                   "vela_summary": summary.name if summary.exists() else None, "vela_command": run.command[2:],
                   "int8_tflite": int8.name, "samples": samples.name, "weights_prequantized": prequant,
                   "quantizer": "ai-edge-quantizer (the TFLite backend's mixed path)", "convert_s": round(convert_s, 3),
                   "scratch_model": runtime.scratch},
        )

    def outputs(self, artifact: Path, xs: np.ndarray) -> np.ndarray:
        """LiteRT's float outputs of the int8 model Vela compiled (no NPU here to run Vela's)."""
        return TFLiteBackend().outputs(int8_model(artifact), xs)

    def summary_lines(self, manifest: Manifest) -> list[str]:
        f = ethos_u.VelaFigures.from_dict(manifest.backend_facts.get("vela") or {})
        return vela_lines(f)

    # ---- measure (runs in the child) ---------------------------------------------------------------------
    def child_measure(self, artifact: Path, manifest: Manifest | None, *, runs: int, warmup: int, threads: int,
                      baseline: Callable[[], None], feed: InputRequest, timeout: float) -> dict[str, Any]:
        """Vela's figures of the artifact (see the module docstring); no inference runs here."""
        import ai_edge_litert.interpreter  # noqa: F401 - read with its schema; imported before the baseline

        baseline()
        facts = manifest.backend_facts if manifest is not None else {}
        config = VelaConfig(**facts["vela_config"]) if facts.get("vela_config") else None
        summary = artifact.parent / facts["vela_summary"] if facts.get("vela_summary") else None
        stdout_file = artifact.with_name(artifact.name.removesuffix(SUFFIX) + ".vela-stdout.txt")
        stdout = stdout_file.read_text() if stdout_file.exists() else ""
        figures = ethos_u.figures_of(artifact, config, summary=summary, stdout=stdout,
                                     what=artifact.name if manifest is not None else f"{artifact.name} (a Vela model "
                                     "tap-edge did not compile: no summary, no cycle estimate)",
                                     scratch_model=facts.get("scratch_model"))
        return {"times_ms": [], "runtime": f"vela {ethos_u.vela_version() or '?'} (figures; no NPU on this host)",
                "threads": threads, "vela": figures.to_dict(),
                "runtime_figures_note": "vela: Vela's summary of the compile and the optimised model's tensors; "
                                        "tflm_tail_bytes / cpu_scratch_bytes: tap-edge's TFLite Micro model on the "
                                        "optimised model's graph"}


def int8_model(artifact: Path) -> Path:
    """The int8 / 16x8 ``.tflite`` Vela compiled into ``artifact`` (``<stem>_vela.tflite`` -> ``<stem>.tflite``)."""
    return artifact.with_name(artifact.name.removesuffix(SUFFIX) + ".tflite")


def with_vela_config(device: DeviceProfile, runtime: Runtime, options: VelaOptions) -> DeviceProfile:
    """``device`` with the user's ``--vela-config`` sections on ``runtime`` (the device itself without one)."""
    if options.vela_config is None:
        return device
    origin = f"--vela-config {options.vela_config}"
    config = config_from_file(options.vela_config.read_text(encoding="utf-8"), origin, runtime.vela)
    if config.arena_cache_size is None and runtime.vela is not None and runtime.vela.arena_cache_size is not None:
        config = config.model_copy(update={"memory": {**config.memory,
                                                      "arena_cache_size": runtime.vela.arena_cache_size},
                                           "arena_cache_note": runtime.vela.arena_cache_note})
    runtimes = [rt.model_copy(update={"vela": config}) if rt.name == runtime.name else rt for rt in device.runtimes]
    return device.model_copy(update={"runtimes": runtimes})


def vela_lines(f: ethos_u.VelaFigures) -> list[str]:
    """What ``compile`` and ``measure`` print about a Vela plan."""
    from tap_edge.core.units import fmt_bytes

    out = [f"Vela {f.vela_version or '?'}: {f.accelerator}, {f.system_config}, {f.memory_mode}, {f.optimise}"
           + (f", arena cache {fmt_bytes(f.arena_cache_size)}" if f.arena_cache_size else ""),
           f"  SRAM used {fmt_bytes(f.sram_bytes)} ({f.sram_bytes} B)"
           + (f"; DRAM used {fmt_bytes(f.dram_bytes)}" if f.dram_bytes else "")
           + f"; constants {fmt_bytes(f.flash_bytes)}; optimised model {fmt_bytes(f.file_bytes)}",
           f"  TFLite Micro beside it: tail {f.tflm_tail_bytes} B, CPU kernel scratch {f.cpu_scratch_bytes} B "
           f"(tap-edge's TFLM model); the arena region needs {fmt_bytes(f.sram_need)}"]
    if f.ms is not None:
        out.append(f"  NPU time {f.ms:.3f} ms (Vela's estimate: {f.total_cycles} cycles at {f.clock_hz / 1e6:g} MHz; "
                   f"{f.npu_cycles} NPU cycles)")
    if f.cpu_ops:
        names = ", ".join(f"{c.op} ({c.tensor[-40:]}{': ' + c.reason if c.reason else ''})" for c in f.cpu_ops[:4])
        out.append(f"  {len(f.cpu_ops)} op(s) left to the CPU: {names}" + (" ..." if len(f.cpu_ops) > 4 else ""))
    else:
        out.append(f"  every op on the NPU ({f.npu_ops} ethos-u block{'s' if f.npu_ops != 1 else ''})")
    return out
