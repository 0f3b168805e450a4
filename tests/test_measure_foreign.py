"""``tap-edge measure`` on files tap-edge did not write: its own prediction from the file, TFLite Micro's arena
search in child processes (a crashing probe is a failing size), every figure kept when one runtime cannot build
the model (with that runtime's own reason), every input fed with data of its dtype and shape.

Default tests: the arena search on a probe child that segfaults, hangs and answers; input data by dtype; the
microWakeWord int8 model (pymicro-wakeword, a test extra) and TFLite Micro's sine model measured with a
prediction made from the file; a generated float16-weight model TFLite Micro refuses; a generated ONNX model with
a dynamic dim, an int64 scalar and two inputs. Slow: the foreign corpus models (tools/foreign_models.py), when
they are in the cache.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tap_edge.backends.inputs import InputRequest, TensorSpec, input_array, parse_input_values
from tap_edge.backends.measure import ProbeChild
from tap_edge.backends.tflm import ArenaSearch, smallest_arena
from tap_edge.backends.verdict import measure_report
from tap_edge.core.errors import UserError
from tap_edge.documents import MeasureReport

HAS_TFLITE = bool(importlib.util.find_spec("tflite_micro") and importlib.util.find_spec("ai_edge_litert"))
needs_tflite = pytest.mark.skipif(not HAS_TFLITE, reason="needs tflite-micro and ai-edge-litert")
CORPUS = Path.home() / ".cache" / "tap-edge" / "foreign-models" / "models"


# ---- the arena search ----------------------------------------------------------------------------------------
def test_arena_search_is_exact_and_counts_a_crash_as_a_failing_size() -> None:
    """A fake probe: crashes below 700, builds from 1000, runs from 1234."""
    def probe(n: int, invoke: bool) -> dict:
        if n < 700:
            return {"crashed": "killed by SIGSEGV"}
        return {"built": n >= 1000, "invoked": n >= 1234}

    s = smallest_arena(probe, start=900, ceiling=1 << 20)
    assert (s.min_build_bytes, s.min_bytes) == (1000, 1234)
    assert all(a != "runs" for n, a in s.probes if n < 1234) and (1234, "runs") in s.probes
    none = smallest_arena(lambda n, invoke: {"built": False}, start=100, ceiling=4096)
    assert none.min_build_bytes is None and none.min_bytes is None and none.probes[-1] == (4096, "fails")


def test_arena_search_survives_a_probe_child_that_segfaults() -> None:
    """Real child processes: the probe child segfaults below 500 B (as TFLite Micro does when its first tail
    allocation fails), so the search restarts it and goes on."""
    kwargs = {"crash_below": 500, "builds_from": 520, "runs_from": 777}
    with ProbeChild("tap_edge.backends.measure:_selftest_probe", kwargs, timeout=30) as child:
        s = smallest_arena(lambda n, invoke: child.probe(n, invoke=invoke), start=2000, ceiling=1 << 16)
    assert (s.min_build_bytes, s.min_bytes) == (520, 777)
    assert s.crashes >= 1 and all(n < 500 for n, a in s.probes if a.startswith("crashed"))
    assert child.starts == s.crashes + 1  # one fresh child after each crash
    assert ArenaSearch(**{"probes": s.probes}).to_dict()["crashed_probes"] == s.crashes


def test_probe_child_answers_crashes_and_hangs_in_one_session() -> None:
    kwargs = {"crash_below": 100, "hang_at": 555}
    with ProbeChild("tap_edge.backends.measure:_selftest_probe", kwargs, timeout=2) as child:
        first = child.probe(500)
        assert child.probe(50) == {"crashed": "killed by SIGSEGV"}
        assert child.probe(555) == {"crashed": "timed out after 2 s"}
        last = child.probe(500)
    assert first["built"] and last["built"] and first["pid"] != last["pid"] and child.crashes == 2


def test_a_crashed_runtime_keeps_its_last_words() -> None:
    """What a runtime printed just before it crashed, inside a capture, reaches the parent (TFLM's reason)."""
    from tap_edge.backends.measure import MeasureError, run_child

    with pytest.raises(MeasureError, match="killed by SIGSEGV") as ei:
        run_child("tap_edge.backends.measure:_selftest", {"mode": "crash_in_capture"}, timeout=60)
    assert "conv.cc:42 filter->type == kTfLiteInt8 was not true." in ei.value.output
    assert "\n" not in str(ei.value)


# ---- inputs ----------------------------------------------------------------------------------------------------
def test_input_data_has_the_dtype_shape_and_quantization_of_the_input() -> None:
    q = TensorSpec("audio", (1, 3, 40), "int8", scale=0.1, zero_point=-128)
    x = input_array(q, [1, 3, 40], None, 0)
    assert x.dtype == np.int8 and x.shape == (1, 3, 40) and x.min() >= -128 and len(np.unique(x)) > 50
    assert input_array(q, [1, 3, 40], "1.0", 0).tolist() == np.full((1, 3, 40), -118).tolist()  # 1.0 / 0.1 - 128
    sr = TensorSpec("sr", (), "int64")
    assert input_array(sr, [], None, 0).shape == () and int(input_array(sr, [], None, 0)) == 1
    assert int(input_array(sr, [], "16000", 0)) == 16000
    for dtype in ("float16", "uint8", "int16", "int32", "bool"):
        assert input_array(TensorSpec("t", (2, 3), dtype), [2, 3], None, 1).dtype == np.dtype(dtype)
    with pytest.raises(UserError, match="not a whole number"):
        input_array(sr, [], "0.5", 0)
    with pytest.raises(UserError, match="cannot make data for"):
        input_array(TensorSpec("s", (1,), "complex64"), [1], None, 0)


def test_input_values_parse_numbers_and_npy_files(tmp_path: Path) -> None:
    np.save(tmp_path / "clip.npy", np.zeros((1, 7), np.float32))
    values = parse_input_values(["sr=16000", f"audio={tmp_path / 'clip.npy'}"])
    assert values["sr"] == "16000" and values["audio"].endswith("clip.npy")
    assert parse_input_values(["0.5"]) == {"": "0.5"}
    for bad, match in (("sr=fast", "not a number"), (f"x={tmp_path / 'no.npy'}", "not found")):
        with pytest.raises(UserError, match=match):
            parse_input_values([bad])
    with pytest.raises(UserError, match="no input 'nope'"):
        InputRequest(values={"nope": "1"}).check_value_names(["x", "sr"])


# ---- TFLite: prediction from the file, TFLM's arena, TFLM's refusal --------------------------------------------
def _wakeword() -> Path:
    pytest.importorskip("pymicro_wakeword", reason="pip install pymicro-wakeword (test extra)")
    from tap_edge.graph.samples import wakeword_tflite

    return wakeword_tflite()


@needs_tflite
def test_foreign_int8_tflite_gets_a_prediction_and_a_verdict() -> None:
    r = measure_report(_wakeword(), device="esp32-s3", runs=3, warmup=1, timeout=240)
    assert r.prediction_from == "file" and r.bits == "native" and r.verdict in ("FITS", "OOM", "UNSUPPORTED")
    assert r.predicted_fits is not None and not any(p.startswith("prediction unavailable") for p in r.problems)
    a = r.arena
    assert a.total_bytes == a.head_bytes + a.tail_bytes and a.min_bytes >= a.min_constructing_bytes > 0
    assert a.min_bytes > a.total_bytes  # the planner's head arrays during AllocateTensors (small head)
    headline = r.headline("sram")
    assert headline.figure.startswith("arena (smallest") and headline.gated and headline.measured_bytes == a.min_bytes
    total = next(c for c in r.comparisons if c.figure.startswith("arena total"))
    assert not total.gated and total.measured_bytes == a.total_bytes
    assert r.headline("flash").measured_bytes == r.artifact_bytes and r.measured_use.sram_bytes == a.min_bytes
    (fed,) = r.inputs
    assert fed.dtype == "int8" and fed.shape == [1, 3, 40] and "quantized" in fed.data
    assert r.cross_check.top1_agreement == 1.0 and not r.runtime_failures


@needs_tflite
def test_tflm_sine_arena_is_searched_in_child_processes(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("tflite_micro")
    sine = Path(next(iter(spec.submodule_search_locations)), "python", "tflite_micro", "sine_float.tflite")
    art = shutil.copyfile(sine, tmp_path / "sine.tflite")
    r = measure_report(art, runs=3, warmup=1, timeout=240)
    assert r.verdict == "MEASURED" and r.prediction_from == "file" and r.latency.runs == 3
    assert r.arena.min_bytes >= r.arena.total_bytes and r.arena.probes > 5
    assert r.cross_check.max_abs_diff < 1e-4 and r.inputs[0].declared == "[-1, 1]"


def _float16_weight_model(tmp_path: Path) -> Path:
    """A model LiteRT runs and TFLite Micro refuses: float16 weights expanded by DEQUANTIZE (how MediaPipe and
    other float16 models store their weights), generated with tests/tflite_models.py; else the corpus's
    BlazeFace when it is cached."""
    path = tmp_path / "conv_fp16.tflite"
    try:
        from tflite_models import single_op_model
    except ImportError:
        corpus = CORPUS / "mp_face_detection_short.tflite"
        if not corpus.exists():
            pytest.skip("needs tests/tflite_models.py or the cached corpus model mp_face_detection_short")
        return shutil.copyfile(corpus, path)
    path.write_bytes(single_op_model("CONV_2D", "a32w16"))
    return path


@needs_tflite
def test_tflm_refusal_keeps_litert_latency_and_names_tflm_reason(tmp_path: Path) -> None:
    model = _float16_weight_model(tmp_path)
    r = measure_report(model, device="stm32h743", runs=3, warmup=1, timeout=240)
    assert r.latency.runs == 3 and r.latency.median_ms > 0  # LiteRT's figures are kept
    (failure,) = r.runtime_failures
    assert failure.runtime == "tflm" and failure.stage == "build"
    assert "DEQUANTIZE" in failure.reason and "failed to prepare" in failure.reason
    assert r.runtime_figures["tflm"]["reason"] == failure.reason and r.arena is None
    assert any(p.startswith("measured: TFLite Micro cannot build the model: ") and "DEQUANTIZE" in p
               for p in r.problems)
    assert r.verdict == "UNSUPPORTED" and r.measured_fits is False
    # on a LiteRT device the TFLite Micro refusal is a figure, not the verdict
    pi = measure_report(model, device="raspberry-pi-5", runs=2, warmup=0, timeout=240)
    assert pi.runtime_failures and pi.measured_fits and pi.runtime_name.startswith("litert")


@needs_tflite
def test_cli_prints_tflm_reason_and_the_smallest_arena(tmp_path: Path, run_cli) -> None:
    model = _float16_weight_model(tmp_path)
    r = run_cli("measure", str(model), "--runs", "2", "--warmup", "0")
    assert r.code == 1 and "TFLite Micro cannot build the model" in r.out and "DEQUANTIZE" in r.out
    assert "latency: median" in r.out and "prediction from the file itself" in r.out


# ---- ONNX: several inputs, an int64 scalar, a dynamic dim --------------------------------------------------------
def _two_input_onnx(path: Path) -> Path:
    """y = x * float(sr) + 1: x float32 [batch, samples] (samples dynamic), sr an int64 scalar (silero-like)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "srf"], ["xs"]),
             helper.make_node("Add", ["xs", "one"], ["y"])]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "samples"]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_with_int64_scalar_and_two_inputs_measures(tmp_path: Path) -> None:
    model = _two_input_onnx(tmp_path / "two.onnx")
    with pytest.raises(UserError, match="samples") as ei:
        measure_report(model, runs=2, warmup=0)
    assert "--input-shape" in str(ei.value) and "\n" not in str(ei.value)
    r = measure_report(model, runs=3, warmup=1, device="raspberry-pi-5", input_shapes={"x": [1, 512]},
                       input_values={"sr": 16000})
    assert r.latency.runs == 3 and r.prediction_from == "file" and r.verdict != "UNKNOWN"
    fed = {i.name: i for i in r.inputs}
    assert fed["x"].shape == [1, 512] and fed["x"].dtype == "float32" and fed["x"].declared == "[batch, samples]"
    assert fed["sr"].shape == [] and fed["sr"].dtype == "int64" and fed["sr"].data == "given: 16000"


def test_a_device_the_file_cannot_run_on_is_refused_before_measuring(tmp_path: Path) -> None:
    model = _two_input_onnx(tmp_path / "two.onnx")
    with pytest.raises(UserError, match="does not serve device 'esp32-s3'") as ei:
        measure_report(model, device="esp32-s3", input_shapes={"x": [1, 8]})
    assert "without --device" in ei.value.hint


def test_cli_measure_onnx_takes_input_shape_and_an_npy_value(tmp_path: Path, run_cli) -> None:
    model = _two_input_onnx(tmp_path / "two.onnx")
    np.save(tmp_path / "clip.npy", np.linspace(-1, 1, 160, dtype=np.float32).reshape(1, 160))
    r = run_cli("measure", str(model), "--input", f"x={tmp_path / 'clip.npy'}", "--runs", "2", "--json")
    rep = MeasureReport.from_dict(json.loads(r.out))
    assert r.code in (0, 1) and rep.inputs[0].shape == [1, 160] and rep.inputs[0].data.startswith("given: ")
    assert rep.inputs[1].data == "seeded" and rep.inputs[1].dtype == "int64"
    refused = run_cli("measure", str(model), "--runs", "2")
    (error,) = [line for line in refused.err.splitlines() if line.startswith("error:")]
    assert refused.code == 2 and "x [batch, samples]" in error and "--input-shape x=" in error


# ---- slow: the foreign corpus ------------------------------------------------------------------------------------
CORPUS_RUNS = {
    "mww_okay_nabu.tflite": ({}, "esp32-s3"),
    "tflm_sine_float.tflite": ({}, "stm32h743"),
    "mp_face_detection_short.tflite": ({}, "raspberry-pi-5"),
    "silero_vad_op15.onnx": ({"input": [1, 512]}, "raspberry-pi-5"),
    "ppocr_cls_v2.onnx": ({"x": [1, 3, 48, 192]}, "raspberry-pi-5"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CORPUS_RUNS))
def test_corpus_models_measure_with_a_prediction(name: str) -> None:
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"{path} not cached (.venv/bin/python tools/foreign_models.py --fetch)")
    if path.suffix == ".tflite" and not HAS_TFLITE:
        pytest.skip("needs tflite-micro and ai-edge-litert")
    shapes, device = CORPUS_RUNS[name]
    values = {"sr": "16000"} if name.startswith("silero") else {}
    r = measure_report(path, device=device, runs=3, warmup=1, timeout=600, input_shapes=shapes,
                       input_values=values)
    assert r.prediction_from == "file" and r.verdict != "UNKNOWN" and r.latency.runs == 3
    if name == "mp_face_detection_short.tflite":
        assert r.runtime_failures[0].runtime == "tflm" and "dequantize_common.cc" in r.runtime_failures[0].reason
