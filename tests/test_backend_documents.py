"""What compile reads and what compile and measure write: the inputs are the very tensors plan and eval load;
the Manifest and MeasureReport of a real ONNX Runtime run on resnet8 validate and round-trip."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tap_edge.backends import compile_model, get_backend, read_manifest
from tap_edge.backends.manifest import manifest_path
from tap_edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from tap_edge.backends.reference import sample_inputs
from tap_edge.backends.verdict import measure_report
from tap_edge.core.errors import UserError
from tap_edge.documents import DocumentError, InputSource, Manifest, MeasureReport, schema_file
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.models import load_graph, load_model
from tap_edge.plan import calib

#: The shared photo sample beside the checkout (as tests/conftest.py finds it).
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
needs_photos = pytest.mark.skipif(not SAMPLE_DIR.is_dir(), reason="needs the shared ImageNet sample")


class _Stop(Exception):
    """Raised by a spy once it has seen what it waits for (the rest of the command does not run)."""


def _first_load(monkeypatch: pytest.MonkeyPatch, run: Callable[[], object]) -> torch.Tensor:
    """The tensor the first ``calib.load_images`` call of ``run()`` returns (``run`` stops right there)."""
    real, seen = calib.load_images, []

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(real(*args, **kwargs)[0])
        raise _Stop

    monkeypatch.setattr(calib, "load_images", spy)
    with pytest.raises(_Stop):
        run()
    monkeypatch.setattr(calib, "load_images", real)
    return seen[0]


def _compile_inputs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **kwargs: object) -> dict[str, np.ndarray]:
    """The calibration and check inputs ``compile_model`` hands the backend's build."""
    seen: dict[str, np.ndarray] = {}

    def build(self: object, *args: object, calib: np.ndarray, check: np.ndarray, **kw: object) -> None:
        seen.update(calib=calib, check=check)
        raise _Stop

    monkeypatch.setattr(OnnxRuntimeBackend, "build", build)
    with pytest.raises(_Stop):
        compile_model("resnet8", "onnxruntime", BitAssignment.parse("w8a8"), tmp_path, **kwargs)
    monkeypatch.undo()
    return seen


@needs_photos
def test_compile_inputs_are_the_tensors_plan_and_eval_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tap_edge.plan.pipeline import EvalRequest, PlanRequest, evaluate_plan, make_plan

    planned = _first_load(monkeypatch, lambda: make_plan(
        PlanRequest(model="resnet8", device="raspberry-pi-5", calib=SAMPLE_DIR, calib_samples=8)))
    evaluated = _first_load(monkeypatch, lambda: evaluate_plan(
        EvalRequest(model="resnet8", data=SAMPLE_DIR, bits="w8a8", calib_samples=8)))
    assert planned.shape == (8, 3, 32, 32) and torch.equal(planned, evaluated)

    given = _compile_inputs(monkeypatch, tmp_path, calib_dir=SAMPLE_DIR, samples=4, check_samples=8)
    assert np.array_equal(given["calib"], planned[:4].numpy()) and np.array_equal(given["check"], planned.numpy())



def test_integer_activations_need_calibration_data_no_folder_is_taken_silently(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="integer activations need calibration data") as e:
        compile_model("resnet8", "onnxruntime", BitAssignment.parse("w8a8"), tmp_path)
    assert "--calib noise" in e.value.hint
    with pytest.raises(UserError, match="integer activations need calibration data"):
        get_backend("onnxruntime").compile(load_model("resnet8"), load_graph("resnet8"), BitAssignment.parse("w4a8"),
                                           tmp_path)


def test_calib_noise_is_recorded_in_the_manifest(tmp_path: Path) -> None:
    art = compile_model("resnet8", "onnxruntime", BitAssignment.parse("w8a8"), tmp_path, calib_dir="noise",
                        samples=4, check_samples=8)
    assert art.manifest.calibration == InputSource(kind="gaussian noise", samples=4, seed=0)
    assert art.manifest.check_inputs == InputSource(kind="gaussian noise", samples=8, seed=0)
    # float activations need none: the artifact is checked on seeded noise, and the manifest says so
    art = compile_model("resnet8", "onnxruntime", BitAssignment.parse("fp32"), tmp_path / "f", samples=4)
    assert art.manifest.calibration.kind == "gaussian noise"


def test_noise_inputs_are_seeded() -> None:
    lm = load_model("ds_cnn")
    a, b = sample_inputs(lm, 4, "noise"), sample_inputs(lm, 4)
    assert a.source == InputSource(kind="gaussian noise", samples=4, seed=0)
    assert np.array_equal(a.array, b.array) and a.array.shape == (4, *lm.preprocess.input_size)
    assert a.head(2).source.samples == 2 and len(a.head(2)) == 2


def _validate(doc: Manifest | MeasureReport) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc.to_dict(), json.loads(schema_file(type(doc)).read_text()))
    assert type(doc).from_dict(json.loads(doc.to_json())) == doc


@needs_photos
def test_ort_resnet8_manifest_and_measure_report_validate_and_round_trip(tmp_path: Path, run_cli) -> None:
    art = compile_model("resnet8", "onnxruntime", BitAssignment.parse("w8a8"), tmp_path, device="raspberry-pi-5",
                        calib_dir=SAMPLE_DIR, samples=4, check_samples=8)
    on_disk = json.loads(manifest_path(art.path).read_text())
    man = Manifest.from_dict(on_disk, str(art.path))
    assert man == art.manifest == read_manifest(art.path)
    _validate(man)
    assert man.calibration == InputSource(kind="folder", folder=str(SAMPLE_DIR), samples=4)
    assert man.check_inputs.samples == 8 and man.agreement.n == 8
    assert man.weights.planned_form_bytes == man.prediction.flash.model_bytes
    assert man.device == "raspberry-pi-5" and man.runtime == man.prediction.arena_settings.runtime

    report = measure_report(art.path, runs=3, warmup=1)
    _validate(report)
    assert report.device == "raspberry-pi-5" and report.verdict == "FITS" and not report.flags
    assert report.latency.runs == 3 and report.latency.median_ms > 0 and report.agreement == man.agreement
    flash, sram = report.headline("flash"), report.headline("sram")
    assert flash.error_pct == 0.0 and flash.measured_bytes == man.weights.planned_form_bytes
    assert sram.predicted_bytes == man.prediction.arena_bytes and sram.measured_by and not sram.gated
    assert report.limits.shared and report.measured_use.flash_bytes > man.weights.planned_form_bytes

    r = run_cli("measure", str(art.path), "--json", "-q", "--runs", "2")
    assert r.code == 0, r.err
    _validate(MeasureReport.from_dict(json.loads(r.out)))


def test_manifest_of_another_version_is_one_line(tmp_path: Path) -> None:
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"")
    manifest_path(artifact).write_text(json.dumps({"schema": "tap-edge/artifact", "version": 99}))
    with pytest.raises(DocumentError, match="version 99; this tap-edge reads version 1") as ei:
        read_manifest(artifact)
    assert "\n" not in str(ei.value)
    assert read_manifest(tmp_path / "other.onnx") is None
