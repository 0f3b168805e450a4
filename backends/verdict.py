"""The measured verdict: an artifact's measurement beside its prediction, judged on a device (a
:class:`~tap_edge.documents.MeasureReport`, what ``tap-edge measure`` prints and writes).

Comparisons (predicted vs measured bytes, the error, how each figure was measured):

- flash: the flash model's bytes vs the constant bytes in the artifact, counted in the same form;
- sram, TFLite Micro: its arena head vs the planned buffers (TFLM host settings), its total (head + persistent
  tail) vs the predicted arena, and the head vs the arena planned on the converted .tflite's own graph (not
  gated: it isolates planner error from graph differences);
- sram, other runtimes (not gated: host figures, not an arena the runtime reports): the predicted arena vs the
  closest host figure (ONNX Runtime: the RSS growth during the runs; TVM: Relax's static memory plan), and
  predicted weights + arena vs the child's peak RSS over the runtime's import baseline, which also holds the
  runtime's own allocations.

A gated comparison more than :data:`TOLERANCE` off is a flag. On a device the verdict needs both sides:
the prediction (:class:`~tap_edge.fit.checker.Checker` on the manifest's model and widths) and the measurement
(against :func:`~tap_edge.fit.checker.region_limits`) must fit for ``FITS``; a memory over its limit on either
side is ``OOM``; an op or width the runtime cannot run is ``UNSUPPORTED``; without a prediction (no manifest,
or a model that cannot be loaded by its spec) the verdict is ``UNKNOWN``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from tap_edge.backends import get_backend
from tap_edge.backends.manifest import bits_of, read_manifest
from tap_edge.backends.measure import DEFAULT_RUNS, DEFAULT_TIMEOUT, DEFAULT_WARMUP, measure_artifact
from tap_edge.backends.tflite_backend import ARTIFACT_GRAPH, TFLM_HOST
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes, pct
from tap_edge.devices import get_device
from tap_edge.documents import (
    Comparison,
    CrossCheck,
    LatencyStats,
    Limits,
    Manifest,
    MeasuredArena,
    MeasuredMemory,
    MeasuredUse,
    MeasureReport,
)
from tap_edge.fit.checker import Checker, region_limits
from tap_edge.graph.models import load_graph
from tap_edge.graph.shapes import user_shapes

#: A gated figure further than this from its prediction is flagged.
TOLERANCE = 0.05
TFLM_ARENA = "TFLite Micro arena (RecordingMicroAllocator, print_allocations: total = head + tail)"
HOST_RSS = "child peak RSS minus the runtime's import baseline (host; also holds the runtime's own allocations)"
#: Host figures closest to an arena (a key of the child's result, how it was measured), per runtime.
HOST_ARENA = (
    ("ort_inference_growth_bytes", "ONNX Runtime: peak RSS growth during the runs (its arena allocator grows in "
                                   "chunks; page-granular)"),
    ("tvm_planned_bytes", "TVM: Relax's static memory plan (StaticPlanBlockMemory storage)"),
)
#: Keys of the child's result that are the runtime's own figures.
_RUNTIME_FIGURES = ("tflm", "ort_", "tvm_", "runtime_figures_note")


def measure_report(
    artifact: Path,
    *,
    device: str | None = None,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    timeout: float = DEFAULT_TIMEOUT,
    threads: int = 1,
) -> MeasureReport:
    """Measure ``artifact`` in a child process and judge it on ``device`` (default: the device it was
    compiled for; none: figures and comparisons only)."""
    manifest = read_manifest(artifact)
    measurement = measure_artifact(artifact, backend=manifest.backend if manifest else None, runs=runs,
                                   warmup=warmup, timeout=timeout, threads=threads)
    return build_report(Path(artifact), manifest, measurement, device or (manifest.device if manifest else None))


def build_report(artifact: Path, manifest: Manifest | None, measurement: dict[str, Any],
                 device: str | None) -> MeasureReport:
    """The report of one measurement (the child's result, :func:`~tap_edge.backends.measure.measure_artifact`)
    beside the manifest's prediction, with the verdict when a device is given."""
    m = measurement
    arena = _tflm_arena(m)
    report = MeasureReport(
        artifact=str(artifact),
        backend=m["backend"],
        model=manifest.model if manifest else None,
        bits=manifest.bits.label if manifest else None,
        runtime=m.get("runtime"),
        threads=m.get("threads"),
        latency=LatencyStats(**m["latency"]),
        artifact_bytes=m["artifact_bytes"],
        memory=MeasuredMemory(peak_rss_bytes=m.get("peak_rss_bytes"), wait4_maxrss_bytes=m.get("wait4_maxrss_bytes"),
                              import_baseline_bytes=m.get("import_baseline_bytes"),
                              model_rss_bytes=m.get("model_rss_bytes")),
        arena=arena,
        cross_check=_tflm_vs_litert(m),
        runtime_figures={k: v for k, v in m.items() if k.startswith(_RUNTIME_FIGURES)},
        agreement=manifest.agreement if manifest else None,
        tolerance_pct=100 * TOLERANCE,
        device=device,
    )
    if manifest is not None:
        report.comparisons = comparisons(manifest, arena, report.memory, m)
        report.flags = [c for c in report.comparisons if c.gated and c.error_pct is not None
                        and abs(c.error_pct) > 100 * TOLERANCE]
    if device:
        _judge(report, manifest, device)
    return report


def comparisons(manifest: Manifest, arena: MeasuredArena | None, memory: MeasuredMemory,
                measurement: dict[str, Any]) -> list[Comparison]:
    """Every predicted figure of ``manifest`` that has a measurement (see the module docstring)."""
    pred = manifest.prediction
    out = [_compare("weights", "flash", pred.flash.model_bytes, manifest.weights.planned_form_bytes,
                    "constant bytes in the artifact, in the planned form (weights, scales, biases, float constants)",
                    headline=True)]
    if arena is not None:
        host = manifest.other_predictions.get(TFLM_HOST, pred)
        if arena.head_bytes is not None:
            out.append(_compare("arena head (planned tensors)", "sram", host.arena_head_bytes, arena.head_bytes,
                                "TFLite Micro arena head (non-persistent, print_allocations)"))
        out.append(_compare("arena total", "sram", host.arena_bytes, arena.total_bytes,
                            "TFLite Micro arena total = head + tail (persistent)", headline=True))
        planned_on_artifact = manifest.other_predictions.get(ARTIFACT_GRAPH)
        if planned_on_artifact is not None and arena.head_bytes is not None:
            out.append(_compare("arena head, planned on the .tflite graph", "sram",
                                planned_on_artifact.arena_head_bytes, arena.head_bytes, "TFLite Micro arena head",
                                gated=False))
        return out
    host_arena = next(((measurement[k], how) for k, how in HOST_ARENA if measurement.get(k) is not None), None)
    if host_arena is not None:
        out.append(_compare("arena", "sram", pred.arena_bytes, host_arena[0], host_arena[1], headline=True,
                            gated=False))
    if memory.model_rss_bytes is not None:
        out.append(_compare("RAM: weights + arena", "sram", pred.flash.model_bytes + pred.arena_bytes,
                            memory.model_rss_bytes, HOST_RSS, headline=host_arena is None, gated=False))
    return out


def _compare(figure: str, memory: Literal["flash", "sram"], predicted: int, measured: int, how: str, *,
             headline: bool = False, gated: bool = True) -> Comparison:
    return Comparison(figure=figure, memory=memory, predicted_bytes=predicted, measured_bytes=measured,
                      error_pct=pct(measured - predicted, predicted), measured_by=how, headline=headline, gated=gated)


def _tflm_arena(m: dict[str, Any]) -> MeasuredArena | None:
    tflm = m.get("tflm") or {}
    if not tflm.get("arena_total_bytes"):
        return None
    return MeasuredArena(total_bytes=tflm["arena_total_bytes"], head_bytes=tflm.get("arena_head_bytes"),
                         tail_bytes=tflm.get("arena_tail_bytes"), min_constructing_bytes=m.get("tflm_min_arena_bytes"),
                         measured_by=TFLM_ARENA)


def _tflm_vs_litert(m: dict[str, Any]) -> CrossCheck | None:
    check = m.get("tflm_vs_litert")
    if not check:
        return None
    return CrossCheck(between="TFLite Micro vs LiteRT (same quantized inputs)", **check,
                      latency=LatencyStats(**m["tflm_latency"]) if m.get("tflm_latency") else None)


def _judge(report: MeasureReport, manifest: Manifest | None, device: str) -> None:
    """Fill the verdict fields of ``report`` for ``device`` (see the module docstring)."""
    profile = get_device(device)
    runtime = get_backend(report.backend).pick_runtime(profile)
    problems: list[str] = []
    predicted_fits = None
    if manifest is None:
        problems.append("prediction unavailable: no manifest beside the artifact (not compiled by tap-edge)")
    else:
        try:
            graph = load_graph(manifest.model, user_shapes(manifest.inputs))
            verdict = Checker(graph, bits_of(manifest)).check(profile, runtime.name)
        except UserError as e:  # e.g. a model given as an object, which its spec cannot load again
            problems.append(f"prediction unavailable: {e}")
        else:
            predicted_fits = verdict.verdict == "FITS"
            problems += [f"predicted: {p}" for p in verdict.problems]
    weights = manifest.weights.planned_form_bytes if manifest else report.artifact_bytes
    use = MeasuredUse(flash_bytes=weights + runtime.code_bytes)
    if report.arena is not None:
        use.sram_bytes, use.sram_measured_by = report.arena.total_bytes, report.arena.measured_by
    elif report.memory.model_rss_bytes is not None:
        use.sram_bytes, use.sram_measured_by = report.memory.model_rss_bytes, HOST_RSS
    lim = region_limits(profile, use.flash_bytes)
    if use.flash_bytes > lim.flash_bytes:
        problems.append(f"measured: flash ({lim.flash_region}) over by {fmt_bytes(use.flash_bytes - lim.flash_bytes)}")
    if use.sram_bytes is not None and use.sram_bytes > lim.sram_bytes:
        problems.append(f"measured: SRAM ({lim.sram_region}) over by {fmt_bytes(use.sram_bytes - lim.sram_bytes)} "
                        f"({use.sram_measured_by})")
    measured_fits = not any(p.startswith("measured") for p in problems)
    if predicted_fits is None:
        verdict_name = "UNKNOWN"
    elif predicted_fits and measured_fits:
        verdict_name = "FITS"
    else:
        verdict_name = "OOM" if any("over by" in p for p in problems) else "UNSUPPORTED"
    report.verdict = verdict_name
    report.problems = problems
    report.runtime_name = runtime.name
    report.limits = Limits(flash_bytes=lim.flash_bytes, flash_region=lim.flash_region, sram_bytes=lim.sram_bytes,
                           sram_region=lim.sram_region, shared=lim.shared)
    report.measured_use = use
    report.predicted_fits = predicted_fits
    report.measured_fits = measured_fits
