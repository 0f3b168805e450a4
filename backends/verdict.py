"""The measured verdict: an artifact's measurement beside its prediction, judged on a device (a
:class:`~tap_edge.documents.MeasureReport`, what ``tap-edge measure`` prints and writes).

The prediction comes from the manifest beside an artifact tap-edge compiled, or, for any other .tflite / .onnx,
from the file itself (:func:`prediction_source`: ``load_graph`` at the user's ``--input-shape`` and the fit
checker at the file's stored widths, ``native``), so a file nobody here wrote gets a verdict too.

Comparisons (predicted vs measured bytes, the error, how each figure was measured; ``gated``: beyond
:data:`TOLERANCE` it is a flag):

- flash: an artifact tap-edge compiled: the flash model's bytes vs the constant bytes in the artifact, counted
  in the same form (gated); any other .tflite: vs the file's size, which is what TFLite Micro keeps in flash
  (gated), and vs its constant bytes (not gated: it separates the weights from the flatbuffer's structure);
  any other .onnx: vs its constant bytes (gated) and its size (not gated: a protobuf the runtime unpacks);
- sram, TFLite Micro: the smallest arena that builds and runs vs the predicted arena (gated, the headline),
  the arena head vs the planned buffers (gated), ``print_allocations``' total (head + persistent tail; not
  gated: it leaves out what the planner needs during ``AllocateTensors``), and the head vs the arena planned
  on the converted .tflite's own graph (not gated: it isolates planner error from graph differences);
- sram, other runtimes (not gated: host figures, not an arena the runtime reports): the predicted arena vs the
  closest host figure (ONNX Runtime: the RSS growth during the runs; TVM: Relax's static memory plan), and
  predicted weights + arena vs the child's peak RSS over the runtime's import baseline, which also holds the
  runtime's own allocations.

On a device the verdict needs both sides: the prediction (:class:`~tap_edge.fit.checker.Checker` on the
device's runtime) and the measurement (against :func:`~tap_edge.fit.checker.region_limits`; TFLite Micro's
smallest arena on a TFLite Micro runtime, the host RSS on others) must fit for ``FITS``. Otherwise the
measurement names the verdict where it speaks (the device runtime's own refusal to build or run the model:
``UNSUPPORTED``; a measured memory over its limit: ``OOM``), else the prediction does (its ``UNSUPPORTED`` or
``OOM``); ``UNKNOWN`` only when no prediction could be made (the reason is in the problems). A runtime that
fails costs its own figures: its reason is a :class:`~tap_edge.documents.RuntimeFailure`, the other runtimes'
figures are kept (TFLite Micro's refusal does not decide the verdict on a LiteRT device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tap_edge.backends import backend_for_artifact, get_backend
from tap_edge.backends.inputs import InputRequest
from tap_edge.backends.manifest import bits_of, graph_path, prediction, read_manifest
from tap_edge.backends.measure import DEFAULT_RUNS, DEFAULT_TIMEOUT, DEFAULT_WARMUP, measure_artifact
from tap_edge.backends.onnxruntime_backend import onnx_weight_bytes
from tap_edge.backends.tflite_backend import ARTIFACT_GRAPH, TFLM_HOST, tflite_weight_bytes
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes, pct
from tap_edge.devices import Runtime, get_device
from tap_edge.devices.vela import VelaConfig
from tap_edge.documents import (
    Comparison,
    CrossCheck,
    FedInput,
    LatencyStats,
    Limits,
    Manifest,
    MeasuredArena,
    MeasuredMemory,
    MeasuredUse,
    MeasureReport,
    Prediction,
    RuntimeFailure,
    VelaPlan,
)
from tap_edge.fit.bits import BitAssignment
from tap_edge.fit.checker import Checker, region_limits
from tap_edge.fit.ethos_u import VelaFigures
from tap_edge.graph.frontends.tflite_shapes import short_name
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.models import load_graph
from tap_edge.graph.shapes import FLAG as INPUT_SHAPE_FLAG
from tap_edge.graph.shapes import InputShapes, model_inputs, user_shapes

#: A gated figure further than this from its prediction is flagged.
TOLERANCE = 0.05
TFLM_ARENA = ("TFLite Micro: smallest arena_size that builds and invokes (each probe in a child process); "
              "print_allocations at a big arena: total = head + tail")
TFLM_MIN = "TFLite Micro: smallest arena_size that builds and invokes"
HOST_RSS = "child peak RSS minus the runtime's import baseline (host; also holds the runtime's own allocations)"
#: Host figures closest to an arena (a key of the child's result, how it was measured), per runtime.
HOST_ARENA = (
    ("ort_inference_growth_bytes", "ONNX Runtime: peak RSS growth during the runs (its arena allocator grows in "
                                   "chunks; page-granular)"),
    ("tvm_planned_bytes", "TVM: Relax's static memory plan (StaticPlanBlockMemory storage)"),
)
#: Keys of the child's result that are the runtime's own figures.
_RUNTIME_FIGURES = ("tflm", "litert", "ort_", "tvm_", "runtime_figures_note")
#: Runtime names of the child's result, as the report names them.
RUNTIME_NAMES = {"tflm": "TFLite Micro", "litert": "LiteRT"}
#: The constant bytes of a file tap-edge did not compile (the flash model's form), per backend.
_FILE_WEIGHTS = {"tflite": tflite_weight_bytes, "onnxruntime": onnx_weight_bytes}


@dataclass
class PredictionSource:
    """Where a measurement's prediction comes from: the graph and widths the fit checker judges
    (``graph`` None: no prediction, ``error`` says why), and the predictions to compare the measured figures
    with (``host``: with TFLite Micro's host reference settings; ``base``: the manifest's, with its device's)."""

    origin: Literal["manifest", "file"] | None
    graph: ModelGraph | None = None
    bits: BitAssignment | None = None
    base: Prediction | None = None
    host: Prediction | None = None
    on_artifact_graph: Prediction | None = None
    error: str | None = None


def prediction_source(artifact: Path, manifest: Manifest | None, feed: InputRequest) -> PredictionSource:
    """The prediction for ``artifact``: its manifest's, else made from the file at ``feed``'s input shapes and
    the file's stored widths. An input whose dims nothing fixes is refused in one line (the measurement could
    not feed it either); any other failure to read the graph leaves the measurement without a prediction."""
    if manifest is not None:
        src = PredictionSource("manifest", base=manifest.prediction,
                               host=manifest.other_predictions.get(TFLM_HOST, manifest.prediction),
                               on_artifact_graph=manifest.other_predictions.get(ARTIFACT_GRAPH))
        saved = graph_path(artifact)  # a model given as a Python object: compile saved its graph
        try:
            graph = ModelGraph.load(saved) if saved.exists() else load_graph(manifest.model,
                                                                             user_shapes(manifest.inputs))
            src.graph, src.bits = graph, bits_of(manifest)
        except UserError as e:
            src.error = str(e)
        return src
    bits = BitAssignment.parse("native")
    try:
        graph = load_graph(str(artifact), feed.shapes or None)
    except UserError as e:
        if INPUT_SHAPE_FLAG in str(e):
            raise
        return PredictionSource(None, error=f"tap-edge cannot read the file's graph: {e}")
    host = prediction(graph, bits, None)
    return PredictionSource("file", graph=graph, bits=bits, base=host, host=host)


def measure_report(
    artifact: Path,
    *,
    device: str | None = None,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    timeout: float = DEFAULT_TIMEOUT,
    threads: int = 1,
    input_shapes: InputShapes | None = None,
    input_values: dict[str, str | float | int] | None = None,
) -> MeasureReport:
    """Measure ``artifact`` in a child process and judge it on ``device`` (default: the device it was
    compiled for; none: figures and comparisons only). ``input_shapes`` (``--input-shape``: input name ->
    shape, ``""`` for a model's only input) fixes dynamic dims; ``input_values`` (``--input``: input name -> a
    number or a ``.npy`` path, whose shape also fixes the input's dims) gives real data."""
    feed = InputRequest.of(input_shapes, input_values)
    artifact = Path(artifact)
    if not artifact.exists():
        raise UserError(f"{artifact}: artifact not found", "compile one with tap-edge compile, or give a .tflite / "
                        ".onnx file")
    if artifact.is_file() and artifact.stat().st_size == 0:
        raise UserError(f"{artifact}: the file is empty", "give a .tflite / .onnx model file")
    manifest = read_manifest(artifact)
    device = device or (manifest.device if manifest else None)
    if device:  # an unknown device, or one the backend does not serve, is refused before anything runs
        backend = get_backend(manifest.backend) if manifest else backend_for_artifact(artifact)
        profile = get_device(device)
        try:
            backend.pick_runtime(profile)
        except UserError as e:
            raise UserError(f"{artifact.name}: {e.message}", f"measure it on a device with a runtime "
                            f"{backend.name} serves ({', '.join(backend.runtimes)}; see tap-edge devices), or "
                            "without --device") from None
    source = prediction_source(artifact, manifest, feed)
    if source.origin == "file" and source.graph is not None:
        feed = planned_feed(source.graph, feed)
    measurement = measure_artifact(artifact, backend=manifest.backend if manifest else None, runs=runs,
                                   warmup=warmup, timeout=timeout, threads=threads, feed=feed)
    if manifest is None and measurement["backend"] in _FILE_WEIGHTS:
        measurement["file_weights"] = _FILE_WEIGHTS[measurement["backend"]](artifact)
    return build_report(artifact, manifest, measurement, device, source)


def planned_feed(graph: ModelGraph, feed: InputRequest) -> InputRequest:
    """The request the measurement child gets for a file predicted from its graph: every input at the shape
    the prediction planned it at (the same rules, names as the file spells them) and the user's values, a
    value named by a TFLite input's short name (``input`` for ``serving_default_input:0``) under its full
    name."""
    names = list(graph.inputs)
    values = {}
    for key, value in feed.values.items():
        matches = [n for n in names if short_name(n) == key]
        values[matches[0] if key and key not in names and len(matches) == 1 else key] = value
    return InputRequest({i.name: list(i.shape) for i in model_inputs(graph)}, values)


def build_report(artifact: Path, manifest: Manifest | None, measurement: dict[str, Any], device: str | None,
                 source: PredictionSource | None = None) -> MeasureReport:
    """The report of one measurement (the child's result, :func:`~tap_edge.backends.measure.measure_artifact`)
    beside its prediction (``source``, default :func:`prediction_source` of the manifest), with the verdict
    when a device is given."""
    m = measurement
    if source is None:
        source = (prediction_source(artifact, manifest, InputRequest()) if manifest is not None
                  else PredictionSource(None, error="no manifest beside the artifact and no file graph given"))
    arena = _tflm_arena(m)
    report = MeasureReport(
        artifact=str(artifact),
        backend=m["backend"],
        model=manifest.model if manifest else str(artifact),
        bits=manifest.bits.label if manifest else ("native" if source.graph is not None else None),
        runtime=m.get("runtime"),
        threads=m.get("threads"),
        latency=LatencyStats(**m["latency"]),
        artifact_bytes=m["artifact_bytes"],
        prediction_from=source.origin if source.base is not None else None,
        prediction_error=source.error,
        inputs=[FedInput(**i) for i in m.get("inputs", [])],
        memory=MeasuredMemory(peak_rss_bytes=m.get("peak_rss_bytes"), wait4_maxrss_bytes=m.get("wait4_maxrss_bytes"),
                              import_baseline_bytes=m.get("import_baseline_bytes"),
                              model_rss_bytes=m.get("model_rss_bytes")),
        arena=arena,
        cross_check=_tflm_vs_litert(m),
        runtime_failures=runtime_failures(m),
        runtime_figures={k: v for k, v in m.items() if k.startswith(_RUNTIME_FIGURES)},
        agreement=manifest.agreement if manifest else None,
        tolerance_pct=100 * TOLERANCE,
        device=device,
    )
    report.problems = [f"measured: {RUNTIME_NAMES.get(f.runtime, f.runtime)} cannot {_verb(f.stage)} the model: "
                       f"{f.reason}" for f in report.runtime_failures]
    if m.get("vela"):
        report.vela = VelaFigures.from_dict(m["vela"]).to_doc()
    if report.vela is not None:  # Vela's figures beside the Vela plan the manifest predicted
        predicted = manifest.prediction if manifest is not None else None
        report.comparisons = vela_comparisons(predicted, report.vela) if predicted is not None else []
        report.flags = [c for c in report.comparisons if c.gated and c.error_pct is not None
                        and abs(c.error_pct) > 100 * TOLERANCE]
    elif source.base is not None:
        report.comparisons = comparisons(source, manifest, arena, report.memory, m)
        report.flags = [c for c in report.comparisons if c.gated and c.error_pct is not None
                        and abs(c.error_pct) > 100 * TOLERANCE]
    if device:
        _judge(report, source, manifest, device)
    return report


def runtime_failures(m: dict[str, Any]) -> list[RuntimeFailure]:
    """The runtimes of the child's result that did not build or run the model, with their own reasons."""
    out = []
    lite = m.get("litert") or {}
    if lite and not lite.get("ok"):
        out.append(RuntimeFailure(runtime="litert", stage=lite.get("stage", "build"), reason=lite.get("reason", "")))
    tflm = m.get("tflm") or {}
    if tflm and not (tflm.get("built") and tflm.get("invoked")):
        out.append(RuntimeFailure(runtime="tflm", stage="invoke" if tflm.get("built") else "build",
                                  reason=tflm.get("reason", "")))
    return out


def _verb(stage: str) -> str:
    return "run" if stage == "invoke" else "build"


def comparisons(source: PredictionSource, manifest: Manifest | None, arena: MeasuredArena | None,
                memory: MeasuredMemory, measurement: dict[str, Any]) -> list[Comparison]:
    """Every predicted figure that has a measurement (see the module docstring)."""
    pred = source.base
    assert pred is not None
    if manifest is not None:
        out = [_compare("weights", "flash", pred.flash.model_bytes, manifest.weights.planned_form_bytes,
                        "constant bytes in the artifact, in the planned form (weights, scales, biases, float "
                        "constants)", headline=True)]
    else:  # a .tflite stays whole in TFLite Micro's flash; an .onnx file is a protobuf its runtime unpacks
        in_flash = measurement["backend"] == "tflite"
        out = [_compare("model file", "flash", pred.flash.model_bytes, measurement["artifact_bytes"],
                        "file size (TFLite Micro keeps the flatbuffer in flash)" if in_flash else "file size",
                        headline=in_flash, gated=in_flash)]
        consts = (measurement.get("file_weights") or {}).get("total_planned_form")
        if consts is not None:
            out.append(_compare("constant bytes", "flash", pred.flash.model_bytes, consts,
                                "constants in the file (weights, biases, scales, float constants)",
                                headline=not in_flash, gated=not in_flash))
    if arena is not None:
        host = source.host or pred
        if arena.min_bytes is not None:
            out.append(_compare("arena (smallest that builds and runs)", "sram", host.arena_bytes, arena.min_bytes,
                                TFLM_MIN, headline=True))
        if arena.head_bytes is not None:
            out.append(_compare("arena head (planned tensors)", "sram", host.arena_head_bytes, arena.head_bytes,
                                "TFLite Micro print_allocations: head"))
        out.append(_compare("arena total (print_allocations)", "sram", host.arena_bytes, arena.total_bytes,
                            "TFLite Micro print_allocations: head + tail",
                            headline=arena.min_bytes is None, gated=arena.min_bytes is None))
        if source.on_artifact_graph is not None and arena.head_bytes is not None:
            out.append(_compare("arena head, planned on the .tflite graph", "sram",
                                source.on_artifact_graph.arena_head_bytes, arena.head_bytes,
                                "TFLite Micro arena head", gated=False))
        return out
    host_arena = next(((measurement[k], how) for k, how in HOST_ARENA if measurement.get(k) is not None), None)
    if host_arena is not None:
        out.append(_compare("arena", "sram", pred.arena_bytes, host_arena[0], host_arena[1], headline=True,
                            gated=False))
    if memory.model_rss_bytes is not None:
        out.append(_compare("RAM: weights + arena", "sram", pred.flash.model_bytes + pred.arena_bytes,
                            memory.model_rss_bytes, HOST_RSS, headline=host_arena is None, gated=False))
    return out


def vela_comparisons(pred: Prediction, measured: VelaPlan) -> list[Comparison]:
    """A Vela artifact: the Vela plan the manifest predicted (Vela on a stand-in, or tap-edge's rules of it) vs
    Vela's figures for the artifact. SRAM: "Total SRAM used" (gated, the headline) and what the arena region
    needs with TFLite Micro's own bytes; flash: the optimised model (the headline) and Vela's constants."""
    p = pred.vela
    by = f"Vela {measured.vela_version or '?'} on the artifact's int8 model"
    out = []
    if p is not None:
        out.append(_compare("Vela: Total SRAM used", "sram", p.sram_bytes, measured.sram_bytes,
                            f"{by}: summary CSV sram_memory_used", headline=True))
    out.append(_compare("arena region (Vela's SRAM + TFLite Micro)", "sram", pred.arena_bytes, measured.sram_need_bytes,
                        f"{by} + tap-edge's TFLite Micro tail and CPU kernel scratch on the optimised model",
                        headline=p is None))
    out.append(_compare("optimised model (flash)", "flash", pred.flash.model_bytes, measured.file_bytes,
                        "size of Vela's optimised .tflite (TFLite Micro keeps it whole in flash)", headline=True))
    if p is not None:
        out.append(_compare("Vela: constants (read-only tensor)", "flash", p.flash_bytes, measured.flash_bytes,
                            f"{by}: the constants' memory in its summary (encoded weights, biases, scales)"))
    return out


def _compare(figure: str, memory: Literal["flash", "sram"], predicted: int, measured: int, how: str, *,
             headline: bool = False, gated: bool = True) -> Comparison:
    return Comparison(figure=figure, memory=memory, predicted_bytes=predicted, measured_bytes=measured,
                      error_pct=pct(measured - predicted, predicted), measured_by=how, headline=headline, gated=gated)


def _tflm_arena(m: dict[str, Any]) -> MeasuredArena | None:
    tflm = m.get("tflm") or {}
    alloc = tflm.get("alloc") or {}
    if not alloc.get("arena_total_bytes"):
        return None
    search = tflm.get("arena_search") or {}
    return MeasuredArena(total_bytes=alloc["arena_total_bytes"], head_bytes=alloc.get("arena_head_bytes"),
                         tail_bytes=alloc.get("arena_tail_bytes"),
                         min_constructing_bytes=search.get("min_build_bytes"), min_bytes=search.get("min_bytes"),
                         probes=search.get("probes"), crashed_probes=search.get("crashed_probes"),
                         measured_by=TFLM_ARENA)


def _tflm_vs_litert(m: dict[str, Any]) -> CrossCheck | None:
    check = m.get("tflm_vs_litert")
    if not check:
        return None
    latency = (m.get("tflm") or {}).get("latency")
    return CrossCheck(between="TFLite Micro vs LiteRT (same inputs)", **check,
                      latency=LatencyStats(**latency) if latency else None)


def _judge(report: MeasureReport, source: PredictionSource, manifest: Manifest | None, device: str) -> None:
    """Fill the verdict fields of ``report`` for ``device`` (see the module docstring)."""
    profile = get_device(device)
    runtime = get_backend(report.backend).pick_runtime(profile)
    used = (manifest.backend_facts.get("vela_config") if manifest is not None else None)
    if used and runtime.vela is not None and used != runtime.vela.model_dump():  # compiled with --vela-config
        runtime = runtime.model_copy(update={"vela": VelaConfig(**used)})
        profile = profile.model_copy(update={"runtimes": [runtime if r.name == runtime.name else r
                                                          for r in profile.runtimes]})
    problems = list(report.problems)
    predicted = None
    if source.graph is None or source.bits is None:
        problems.append(f"prediction unavailable: {source.error}")
    else:
        predicted = Checker(source.graph, source.bits).check(profile, runtime.name)
        problems += [f"predicted: {p}" for p in predicted.problems]
    weights = manifest.weights.planned_form_bytes if manifest else report.artifact_bytes
    use = MeasuredUse(flash_bytes=weights + runtime.code_bytes)
    dram_arena = 0
    if report.vela is not None:  # Vela's plan on the NPU: its SRAM and TFLite Micro's bytes beside it
        v = report.vela
        use.sram_bytes = v.sram_need_bytes
        use.sram_measured_by = ("Vela's Total SRAM used" + (" + TFLite Micro's tail and CPU kernel scratch "
                                                           "(tap-edge's model)" if v.arena_in_sram else " (the cache)"))
        dram_arena = 0 if v.arena_in_sram else v.scratch_bytes + v.tflm_tail_bytes + v.cpu_scratch_bytes
    elif _on_tflm(runtime):  # TFLite Micro's own arena; the host RSS says nothing about an MCU
        if report.arena is not None:
            a = report.arena
            use.sram_bytes = a.min_bytes if a.min_bytes is not None else a.total_bytes
            use.sram_measured_by = TFLM_MIN if a.min_bytes is not None else a.measured_by
    elif report.memory.model_rss_bytes is not None:
        use.sram_bytes, use.sram_measured_by = report.memory.model_rss_bytes, HOST_RSS
    lim = region_limits(profile, use.flash_bytes)
    over = []
    if use.flash_bytes > lim.flash_bytes:
        over.append(f"measured: flash ({lim.flash_region}) over by {fmt_bytes(use.flash_bytes - lim.flash_bytes)}")
    if use.sram_bytes is not None and use.sram_bytes > lim.sram_bytes:
        over.append(f"measured: SRAM ({lim.sram_region}) over by {fmt_bytes(use.sram_bytes - lim.sram_bytes)} "
                    f"({use.sram_measured_by})")
    if dram_arena and use.flash_bytes <= lim.flash_bytes < use.flash_bytes + dram_arena:
        over.append(f"measured: model and tensor arena ({lim.flash_region}) over by "
                    f"{fmt_bytes(use.flash_bytes + dram_arena - lim.flash_bytes)} (Vela's {report.vela.memory_mode})")
    problems += over
    refused = [f for f in report.runtime_failures if (f.runtime == "tflm") == _on_tflm(runtime)]
    measured_fits = not refused and not over
    # the measurement is the truth where it speaks: its refusal or overflow names the verdict, else the prediction's
    if predicted is None:
        verdict_name = "UNKNOWN"
    elif refused:
        verdict_name = "UNSUPPORTED"
    elif over:
        verdict_name = "OOM"
    else:
        verdict_name = predicted.verdict
    predicted_fits = predicted.verdict == "FITS" if predicted is not None else None
    report.verdict = verdict_name
    report.problems = problems
    report.runtime_name = runtime.name
    report.limits = Limits(flash_bytes=lim.flash_bytes, flash_region=lim.flash_region, sram_bytes=lim.sram_bytes,
                           sram_region=lim.sram_region, shared=lim.shared)
    report.measured_use = use
    report.predicted_fits = predicted_fits
    report.measured_fits = measured_fits


def _on_tflm(runtime: Runtime) -> bool:
    """Whether the device runtime is a TFLite Micro build (its measured truth is TFLite Micro's)."""
    return runtime.name.startswith("tflm")
