"""Backends, the measurement child process and the compile/measure verdict.

Default tests are fast (a tiny PyTorch model through ONNX Runtime, the sine model that ships with
tflite-micro, child processes that crash or hang on purpose); the litert-torch conversions are marked slow.
The registry and options of every backend: tests/test_backend_registry.py; the documents compile and
measure write, and the inputs compile reads: tests/test_backend_documents.py."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_quantize import Residual
from torch import nn

from tap_edge.backends import BackendUnavailable, backend_for_artifact, get_backend, read_manifest
from tap_edge.backends.measure import MeasureError, latency_stats, measure_artifact, run_child
from tap_edge.backends.onnxruntime_backend import OnnxRuntimeOptions, onnx_outputs
from tap_edge.backends.reference import agreement
from tap_edge.backends.tvm_backend import TVMOptions
from tap_edge.backends.verdict import build_report
from tap_edge.core.errors import UserError
from tap_edge.documents import (
    ArtifactWeights,
    InputSource,
    InputSpec,
    Manifest,
    ManifestBits,
    MeasureReport,
    PTQSettings,
    Widths,
)
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.models import LoadedModel, Preprocess, load_graph

HAS_TFLM = importlib.util.find_spec("tflite_micro") is not None and importlib.util.find_spec("ai_edge_litert")
HAS_LITERT_TORCH = importlib.util.find_spec("litert_torch") is not None


def _sine() -> Path | None:
    spec = importlib.util.find_spec("tflite_micro")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations)), "python", "tflite_micro", "sine_float.tflite")
    return p if p.is_file() else None


class Tiny(nn.Module):
    """conv-bn-relu, conv, linear: small enough to compile in a second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 5)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-0.1, 0.1)
            self.bn1.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.flatten(self.pool(torch.relu(self.conv2(x)))))


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return LoadedModel(
        "tiny", "torch", Tiny().eval(), preprocess=Preprocess((3, 16, 16), 16, (0.0,) * 3, (1.0,) * 3)
    )


def _inputs(n: int = 8) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, 16, 16)).astype(np.float32)


# ---- dependencies, suffixes, runtimes ---------------------------------------------------------------
def test_missing_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    b = get_backend("tvm")
    monkeypatch.setattr(type(b), "modules", ("surely_not_installed_module_xyz",))
    assert not b.available()
    with pytest.raises(BackendUnavailable, match=r"tap-edge\[tvm\]"):
        b.require()


def test_backend_for_artifact_by_suffix(tmp_path: Path) -> None:
    assert backend_for_artifact(tmp_path / "m.onnx").name == "onnxruntime"
    assert backend_for_artifact(tmp_path / "m.tflite").name == "tflite"
    with pytest.raises(UserError, match="no backend reads"):
        backend_for_artifact(tmp_path / "m.pt")


def test_backends_serve_device_runtimes() -> None:
    from tap_edge.devices import get_device

    assert get_backend("tflite").serves(get_device("stm32h743"))
    assert get_backend("onnxruntime").serves(get_device("raspberry-pi-4"))
    assert not get_backend("onnxruntime").serves(get_device("stm32h743"))
    with pytest.raises(UserError, match="does not serve device"):
        get_backend("onnxruntime").pick_runtime(get_device("stm32h743"))


def test_agreement_metric() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert agreement(a, a) == {"n": 2, "top1_agreement": 1.0, "cosine": 1.0, "max_abs_diff": 0.0}
    assert agreement(a, a[::-1])["top1_agreement"] == 0.0 and agreement(a, a[::-1])["max_abs_diff"] == 1.0


# ---- the measurement child ---------------------------------------------------------------------------------
def test_child_ok_returns_result() -> None:
    r = run_child("tap_edge.backends.measure:_selftest", {"mode": "ok"}, timeout=60)
    assert r["mode"] == "ok" and r["peak_rss_bytes"] > 0 and r["wall_s"] >= 0


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("raise", "failed: RuntimeError: selftest failure"),
        ("crash", "killed by SIGSEGV"),
        ("exit", "exited with code 3"),
    ],
)
def test_child_failures_are_one_line_errors(mode: str, match: str) -> None:
    with pytest.raises(MeasureError, match=match) as ei:
        run_child("tap_edge.backends.measure:_selftest", {"mode": mode}, timeout=60)
    assert "\n" not in str(ei.value) and ei.value.exit_code == 1


def test_child_hang_times_out_and_earlier_results_survive() -> None:
    results = [run_child("tap_edge.backends.measure:_selftest", {"mode": "ok"}, timeout=60)]
    with pytest.raises(MeasureError, match="timed out after 2 s"):
        run_child("tap_edge.backends.measure:_selftest", {"mode": "hang", "seconds": 60}, timeout=2)
    results.append(run_child("tap_edge.backends.measure:_selftest", {"mode": "ok"}, timeout=60))
    assert [r["mode"] for r in results] == ["ok", "ok"]


def test_latency_stats() -> None:
    s = latency_stats([float(i) for i in range(1, 11)])
    assert s["runs"] == 10 and s["median_ms"] == 5.5 and s["p90_ms"] == pytest.approx(9.1)
    assert latency_stats([]) == {"runs": 0}


# ---- onnxruntime -------------------------------------------------------------------------------------------
def test_onnx_node_names_map_to_modules() -> None:
    from tap_edge.backends.onnxruntime_backend import node_module

    assert node_module("/stage1/conv1/Conv") == "stage1.conv1"
    assert node_module("/stage2/shortcut/shortcut.0/Conv") == "stage2.shortcut.0"
    assert node_module("/blocks/blocks.3/blocks.3.2/conv_pw/Conv") == "blocks.3.2.conv_pw"
    assert node_module("Conv_3") is None


def test_onnx_w8a8_compile_matches_prediction_and_reference(tiny: LoadedModel, tmp_path: Path) -> None:
    b = get_backend("onnxruntime")
    g = load_graph(tiny)
    xs = _inputs()
    art = b.compile(tiny, g, BitAssignment.parse("w8a8"), tmp_path, calib=xs)
    man = art.manifest
    assert read_manifest(art.path) == man
    assert man.backend == "onnxruntime" and man.backend_facts["opset"] == 21
    assert man.weights.planned_form_bytes == man.prediction.flash.model_bytes  # same form: exact
    assert man.agreement.cosine > 0.99 and man.agreement.reference == "fake-quant"
    assert man.calibration == InputSource(kind="array", samples=8) == man.check_inputs


def test_onnx_plan_int4_weights_and_int16_activations(tiny: LoadedModel, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto

    b = get_backend("onnxruntime")
    g = load_graph(tiny)
    plan = BitAssignment.from_plan(
        {"default": {"w": 8, "a": 8}, "layers": {"conv2": {"w": 4, "a": 16}, "fc": {"w": 4, "a": 8}}}
    )
    art = b.compile(tiny, g, plan, tmp_path, calib=_inputs())
    m = onnx.load(str(art.path))
    types = {i.name: i.data_type for i in m.graph.initializer}
    assert any(t == TensorProto.INT4 for n, t in types.items() if n.endswith("_quantized"))
    assert any(t == TensorProto.INT16 for n, t in types.items() if n.endswith("_zero_point"))
    man = art.manifest
    layers = man.backend_facts["layers"]
    assert layers["conv2"]["stored"] == "int4" and layers["conv2"]["activation"] == "int16"
    assert man.weights.planned_form_bytes == man.prediction.flash.model_bytes
    assert man.agreement.cosine > 0.9


def _ptq_settings(rounding: str, samples: int) -> PTQSettings:
    from tap_edge.plan.pipeline import ptq_settings
    from tap_edge.quantize.ptq import PTQConfig

    return ptq_settings(PTQConfig(rounding=rounding), samples)


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_onnx_stores_the_fake_quant_integers_and_scales(tiny: LoadedModel, tmp_path: Path, rounding: str) -> None:
    """Value by value: the artifact's weight integers are round(w / s) of the plan's fake-quant model (its PTQ:
    GPTQ here, whose integers need not reach qmax in a channel) with s = PTQInfo.weight_scales exactly, and
    every tensor the fake-quant model quantizes has its scale and zero point; so the artifact agrees."""
    import onnx
    from onnx import numpy_helper

    from tap_edge.backends.onnxruntime_backend import node_module
    from tap_edge.backends.reference import fake_quant_model

    plan = BitAssignment.from_plan({"default": {"w": 8, "a": 8},
                                    "layers": {"conv1": {"w": 3, "a": 8}, "conv2": {"w": 4, "a": 8}}})
    xs = _inputs()
    g = load_graph(tiny)
    settings = _ptq_settings(rounding, len(xs))
    art = get_backend("onnxruntime").compile(tiny, g, plan, tmp_path, calib=xs, ptq=settings)
    assert art.manifest.ptq == settings and art.manifest.agreement.top1_agreement == 1.0
    fq = fake_quant_model(tiny, g, plan, xs, settings)
    info = fq.tap_edge_ptq
    assert info.rounding == rounding and (rounding == "nearest" or info.rounded)
    modules = dict(fq.named_modules())
    m = onnx.load(str(art.path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    made = {o: n for n in m.graph.node for o in n.output}
    checked = 0
    for node in m.graph.node:
        if node.op_type not in ("Conv", "Gemm") or made.get(node.input[1], node).op_type != "DequantizeLinear":
            continue
        mod = node_module(node.name)
        d = made[node.input[1]]
        q, scale = inits[d.input[0]], inits[d.input[1]]
        want_s = info.weight_scales[mod].numpy().astype(np.float32)
        np.testing.assert_array_equal(scale, want_s)
        w = modules[mod].weight.detach().numpy()
        want_q = np.round(w / want_s.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.int64)
        if node.op_type == "Gemm" and q.shape != want_q.shape:
            q = q.T
        np.testing.assert_array_equal(q.astype(np.int64), want_q)
        assert np.abs(want_q).max() <= 2 ** (info.weight_bits[mod] - 1) - 1
        dq_in = made[node.input[0]]  # the activation: DequantizeLinear(QuantizeLinear(x)) with the fake-quant's
        bits, a_scale, a_zero = info.input_qparams[mod]
        assert dq_in.op_type == "DequantizeLinear" and bits == 8
        assert inits[dq_in.input[1]] == np.float32(a_scale) and int(inits[dq_in.input[2]]) == a_zero
        checked += 1
    assert checked == 3
    out_dq = made[m.graph.output[0].name]
    assert info.output_qparams is not None and inits[out_dq.input[1]] == np.float32(info.output_qparams[1])


@pytest.mark.parametrize("rounding, clip", [("nearest", "mse"), ("gptq", "mse"), ("gptq", "output")])
def test_onnx_runtime_computes_what_the_fake_quant_model_computes(tmp_path: Path, rounding: str, clip: str) -> None:
    """With the add's inputs and the pool's input quantized once per tensor and the biases on the int32 grid,
    ONNX Runtime's outputs differ from the fake-quant model's by at most one output step (integer versus float
    arithmetic at rounding ties) and almost never; with neither (the fake-quant model of an earlier version) on
    many outputs. ``clip="output"``: the scales chosen after the layer's inputs are known are the ones stored."""
    from tap_edge.backends.reference import fake_quant_model

    lm = LoadedModel("tiny_residual", "torch", Residual(channels=16, classes=10, seed=3).eval(),
                     preprocess=Preprocess((3, 16, 16), 16, (0.0,) * 3, (1.0,) * 3))
    g, xs, plan = load_graph(lm), _inputs(32), BitAssignment.parse("w3a8")
    steps = {}
    for exact in (True, False):
        settings = _ptq_settings(rounding, 16).model_copy(update={"quantize_joins": exact, "quantize_bias": exact,
                                                                  "clip": clip})
        art = get_backend("onnxruntime").compile(lm, g, plan, tmp_path / str(exact), calib=xs[:16], ptq=settings)
        fq = fake_quant_model(lm, g, plan, xs[:16], settings)
        with torch.no_grad():
            ref = fq(torch.from_numpy(xs)).numpy()
        step = fq.tap_edge_ptq.output_qparams[1]
        diff = np.abs(onnx_outputs(art.path, xs).reshape(ref.shape) - ref) / step
        steps[exact] = (float(diff.max()), float((diff > 0.5).mean()))
    assert steps[True][0] <= 1.0 + 1e-3 and steps[True][1] <= 0.01 and steps[False][1] >= 0.05, steps


def test_onnx_measure_in_child(tiny: LoadedModel, tmp_path: Path) -> None:
    b = get_backend("onnxruntime")
    art = b.compile(tiny, load_graph(tiny), BitAssignment.parse("w8a8"), tmp_path, calib=_inputs(4))
    r = measure_artifact(art.path, runs=5, warmup=1, timeout=120)
    assert r["latency"]["runs"] == 5 and r["latency"]["median_ms"] > 0
    assert r["peak_rss_bytes"] > r["import_baseline_bytes"] > 0
    assert r["artifact_bytes"] == art.path.stat().st_size


# ---- verdict -----------------------------------------------------------------------------------------------
def _manifest(arena: int, weights: int) -> Manifest:
    """The manifest of a ds_cnn w8a8 .tflite predicted at ``arena`` / ``weights`` bytes (its real prediction
    with those two figures replaced)."""
    from tap_edge.backends.manifest import prediction
    from tap_edge.backends.tflite_backend import TFLM_HOST

    pred = prediction(load_graph("ds_cnn"), BitAssignment.parse("w8a8"), None)
    pred = pred.model_copy(update={"arena_bytes": arena, "arena_head_bytes": arena,
                                   "flash": pred.flash.model_copy(update={"model_bytes": weights})})
    return Manifest(artifact="x.tflite", artifact_bytes=1000, created="2025-01-01T00:00:00", backend="tflite",
                    model="ds_cnn", bits=ManifestBits(default=Widths(w=8, a=8), label="w8a8"),
                    input=InputSpec(shape=[1, 49, 10, 1], layout="NHWC"), compile_s=1.0, prediction=pred,
                    other_predictions={TFLM_HOST: pred},
                    weights=ArtifactWeights(planned_form_bytes=weights, stored_bytes=weights),
                    calibration=InputSource(kind="gaussian noise", samples=16, seed=0),
                    check_inputs=InputSource(kind="gaussian noise", samples=16, seed=0))


def _meas(head: int, tail: int, min_bytes: int | None = None) -> dict:
    """A TFLite measurement: print_allocations' head and tail, and the smallest arena the search found."""
    search = {"arena_search": {"min_build_bytes": min_bytes, "min_bytes": min_bytes, "probes": 20,
                               "crashed_probes": 1}} if min_bytes else {}
    return {
        "backend": "tflite",
        "latency": latency_stats([1.0, 2.0]),
        "litert": {"ok": True},
        "tflm": {"built": True, "invoked": True, "alloc": {"arena_head_bytes": head, "arena_tail_bytes": tail,
                                                           "arena_total_bytes": head + tail}, **search},
        "artifact_bytes": 1000,
    }


def test_report_flags_more_than_five_percent() -> None:
    r = build_report(Path("x.tflite"), _manifest(16000, 26720), _meas(16000, 8240), None)
    figs = {c.figure: c for c in r.comparisons}
    assert figs["arena head (planned tensors)"].error_pct == 0.0
    assert [f.figure for f in r.flags] == ["arena total (print_allocations)"]
    assert r.flags[0].predicted_bytes == 16000 and r.flags[0].measured_bytes == 24240
    assert r.headline("sram") is figs["arena total (print_allocations)"] and r.headline("flash") is figs["weights"]
    assert r.arena.total_bytes == 24240 and r.verdict == "MEASURED" and r.limits is None


def test_smallest_arena_is_the_gated_figure_when_it_was_searched() -> None:
    """The smallest arena that builds and runs is compared with the prediction (gated, the headline) and is
    the measured SRAM use; print_allocations' total is shown, not gated."""
    r = build_report(Path("x.tflite"), _manifest(16000, 26720), _meas(15800, 200, min_bytes=16400), "stm32h743")
    figs = {c.figure: c for c in r.comparisons}
    smallest, total = figs["arena (smallest that builds and runs)"], figs["arena total (print_allocations)"]
    assert r.headline("sram") is smallest and smallest.gated and smallest.measured_bytes == 16400
    assert not total.gated and total.measured_bytes == 16000 and not r.flags
    assert (r.arena.min_bytes, r.arena.probes, r.arena.crashed_probes) == (16400, 20, 1)
    assert r.measured_use.sram_bytes == 16400 and r.verdict == "FITS"


def test_verdict_fits_only_when_prediction_and_measurement_fit() -> None:
    ok = build_report(Path("x.tflite"), _manifest(16000, 26720), _meas(16000, 8240), "stm32h743")
    assert ok.verdict == "FITS" and ok.predicted_fits and ok.measured_fits
    assert ok.measured_use.sram_bytes == 24240 and ok.measured_use.sram_measured_by.startswith("TFLite Micro")
    # the prediction fits but the measured arena does not: OOM, with the measured problem named
    big = build_report(Path("x.tflite"), _manifest(16000, 26720), _meas(16000, 8 << 20), "stm32h743")
    assert big.verdict == "OOM" and big.predicted_fits and not big.measured_fits
    assert any(p.startswith("measured: SRAM") for p in big.problems)


def test_verdict_limits_come_from_region_limits() -> None:
    from tap_edge.devices import get_device
    from tap_edge.fit.checker import region_limits

    r = build_report(Path("x.tflite"), _manifest(16000, 26720), _meas(16000, 8240), "stm32h743")
    lim = region_limits(get_device("stm32h743"), r.measured_use.flash_bytes)
    assert (r.limits.flash_bytes, r.limits.sram_bytes, r.limits.shared) == (lim.flash_bytes, lim.sram_bytes,
                                                                            lim.shared)


def test_no_prediction_is_unknown_and_says_why() -> None:
    """Without any prediction (no manifest and no graph of the file): measured, its file size stands for its
    flash, the verdict is UNKNOWN with the reason (a foreign file gets its own prediction:
    tests/test_measure_foreign.py)."""
    from tap_edge.backends.verdict import PredictionSource
    from tap_edge.devices import get_device

    source = PredictionSource(None, error="tap-edge cannot read the file's graph: broken")
    r = build_report(Path("x.tflite"), None, _meas(16000, 8240), "stm32h743", source)
    assert r.verdict == "UNKNOWN" and not r.comparisons and r.predicted_fits is None
    code = get_backend("tflite").pick_runtime(get_device("stm32h743")).code_bytes
    assert r.measured_use.flash_bytes == 1000 + code and r.problems == [
        "prediction unavailable: tap-edge cannot read the file's graph: broken"]


# ---- TFLite Micro on a model shipped by tflite-micro -------------------------------------------------------
def test_parse_allocations() -> None:
    from tap_edge.backends.tflm import parse_allocations

    text = (
        "[RecordingMicroAllocator] Arena allocation total 1536 bytes\n"
        "[RecordingMicroAllocator] Arena allocation head 128 bytes\n"
        "[RecordingMicroAllocator] Arena allocation tail 1408 bytes\n"
        "[RecordingMicroAllocator] 'TfLiteEvalTensor data' used 240 bytes with alignment overhead "
        "(requested 240 bytes for 10 allocations)\n"
    )
    a = parse_allocations(text)
    assert (a["arena_total_bytes"], a["arena_head_bytes"], a["arena_tail_bytes"]) == (1536, 128, 1408)
    assert a["items"]["TfLiteEvalTensor data"] == {"bytes": 240, "requested": 240, "count": 10}


@pytest.mark.skipif(not HAS_TFLM or _sine() is None, reason="needs tflite-micro and ai-edge-litert")
def test_tflm_arena_measured_in_child(tmp_path: Path) -> None:
    import shutil

    art = tmp_path / "sine.tflite"
    shutil.copyfile(_sine(), art)
    r = measure_artifact(art, runs=3, warmup=1, timeout=120)
    alloc, search = r["tflm"]["alloc"], r["tflm"]["arena_search"]
    assert alloc["arena_total_bytes"] == alloc["arena_head_bytes"] + alloc["arena_tail_bytes"] > 0
    # the smallest arena that builds and runs can exceed the recorded total: planning needs temporary memory in
    # the head, which shows when the planned tensors are tiny (sine: 128-byte head)
    assert search["min_bytes"] >= search["min_build_bytes"] >= alloc["arena_total_bytes"]
    assert r["tflm_vs_litert"]["max_abs_diff"] < 1e-4
    assert r["latency"]["runs"] == 3


def test_cli_measure_missing_artifact_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tap_edge.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["measure", str(tmp_path / "nope.onnx")])
    assert ei.value.code == 2
    assert "artifact not found" in capsys.readouterr().err


# ---- slow: the litert-torch path ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not (HAS_TFLM and HAS_LITERT_TORCH), reason="pip install 'tap-edge[tflite]'")
def test_tflite_int8_ds_cnn_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tap_edge.cli import main

    with pytest.raises(SystemExit) as ei:
        main(
            [
                "compile",
                "ds_cnn",
                "--bits",
                "w8a8",
                "--backend",
                "tflite",
                "--device",
                "stm32h743",
                "--calib",
                "noise",
                "--out-dir",
                str(tmp_path),
                "--json",
            ]
        )
    assert ei.value.code == 0
    art = tmp_path / Manifest.from_dict(json.loads(capsys.readouterr().out)).artifact
    with pytest.raises(SystemExit) as ei:
        main(["measure", str(art), "--json", "--runs", "3"])
    rep = MeasureReport.from_dict(json.loads(capsys.readouterr().out))
    head = next(c for c in rep.comparisons if c.figure.startswith("arena head (planned"))
    assert abs(head.error_pct) <= 5.0
    assert rep.cross_check.top1_agreement == 1.0
    assert rep.verdict == "FITS"


# ---- tvm ---------------------------------------------------------------------------------------------------
def test_tvm_targets_follow_the_device_isa() -> None:
    from tap_edge.backends.tvm_backend import device_target
    from tap_edge.devices import get_device

    assert device_target(get_device("raspberry-pi-4"))["mtriple"] == "aarch64-linux-gnu"
    assert device_target(get_device("stm32h743"))["mtriple"].startswith("thumbv7em")


def test_tvm_planned_storage_bytes_reads_alloc_storage() -> None:
    from tap_edge.backends.tvm_backend import planned_storage_bytes

    class _Mod:
        def script(self) -> str:
            return (
                's0 = R.memory.alloc_storage(R.shape([16384]), R.prim_value(0), R.str("global"), "float32")\n'
                's1 = R.memory.alloc_storage(R.shape([4096]), R.prim_value(0), R.str("global"), "float32")\n'
            )

    assert planned_storage_bytes(_Mod()) == 20480


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="pip install 'tap-edge[tvm]'")
def test_tvm_compile_and_measure(tiny: LoadedModel, tmp_path: Path) -> None:
    from tap_edge.devices import get_device

    b = get_backend("tvm")
    art = b.compile(
        tiny,
        load_graph(tiny),
        BitAssignment.parse("w8a8"),
        tmp_path,
        calib=_inputs(4),
        device=get_device("raspberry-pi-4"),
    )
    facts = art.manifest.backend_facts
    assert facts["relax_memory_plan"]["planned_bytes"] > 0
    assert facts["cross_compile"]["objects"]
    r = measure_artifact(art.path, runs=3, warmup=1, timeout=300)
    assert r["latency"]["runs"] == 3 and r["tvm_planned_bytes"] == facts["relax_memory_plan"]["planned_bytes"]


def test_module_regex_finds_litert_tensor_names() -> None:
    import re

    from tap_edge.backends.tflite_backend import module_regex

    name = (
        "litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper/tap_edge.graph.zoo.DSCNN_wrapped/"
        "torch.nn.modules.container.Sequential_features/torch.nn.modules.conv.Conv2d_6;"
    )
    assert re.search(module_regex("features.6"), name)
    assert not re.search(module_regex("features.16"), name)
    assert not re.search(module_regex("features.6"), name.replace("Conv2d_6;", "Conv2d_16;"))


def test_tflite_rejects_plans_it_cannot_store() -> None:
    from tap_edge.backends.tflite_backend import TFLiteBackend
    from tap_edge.graph.models import load_graph as lg

    g = lg("ds_cnn")
    assert TFLiteBackend._mode(g, BitAssignment.parse("w8a8")) == "int8"
    assert TFLiteBackend._mode(g, BitAssignment.parse("fp32")) == "float"
    assert TFLiteBackend._mode(g, BitAssignment.parse("w8a16")) == "mixed"
    with pytest.raises(UserError, match=r"at w6a8: the tflite backend"):
        TFLiteBackend().check_buildable(g, BitAssignment.parse("w6a8"), None)
    built_as_dw = r"\(conv \(built as dwconv\)\) at w4a8: .* builds w8a8, w8a16, w32a32 on dwconv"
    with pytest.raises(UserError, match=built_as_dw):
        TFLiteBackend().check_buildable(g, BitAssignment.parse("w4a8"), None)


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_TFLM and HAS_LITERT_TORCH), reason="pip install 'tap-edge[tflite]'")
def test_tflite_int4_conv_plan_measured_by_tflm(tmp_path: Path) -> None:
    from tap_edge.backends.reference import sample_inputs
    from tap_edge.backends.tflite_backend import TFLM_HOST
    from tap_edge.graph.models import load_model

    lm = load_model("ds_cnn")
    plan = BitAssignment.from_plan({"default": {"w": 8, "a": 8}, "layers": {"features.6": {"w": 4, "a": 8}}})
    art = get_backend("tflite").compile(lm, load_graph(lm), plan, tmp_path, calib=sample_inputs(lm, 8))
    man = art.manifest
    assert man.backend_facts["mode"] == "mixed" and man.calibration.kind == "gaussian noise"
    wb = man.weights.planned_form_bytes
    assert abs(wb - man.prediction.flash.model_bytes) / wb < 0.01
    r = measure_artifact(art.path, runs=2, warmup=1, timeout=300)
    assert r["tflm_vs_litert"]["top1_agreement"] == 1.0
    # TFLite Micro's reference conv unpacks int4 filters into a scratch buffer of out x in x kh x kw bytes, which
    # the host prediction (the reference kernels) plans: the measured head is the predicted one
    predicted = man.other_predictions[TFLM_HOST]
    assert predicted.arena_settings.scratch == "tflm"
    assert r["tflm"]["alloc"]["arena_head_bytes"] == predicted.arena_head_bytes


def _tflite_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, int, tuple[float, int]]]:
    """Conv / depthwise / fully-connected weight tensors of a .tflite: name -> (integers, scales, builtin, the
    layer input's (scale, zero point))."""
    from ai_edge_litert import schema_py_generated as schema

    from tap_edge.backends.tflite_backend import _unpack

    m = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    sg = m.subgraphs[0]
    out = {}
    for op in sg.operators:
        code = m.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin not in (3, 4, 9):
            continue
        t = sg.tensors[op.inputs[1]]
        n = int(np.prod(t.shape))
        k = _unpack(np.asarray(m.buffers[t.buffer].data, np.uint8), n, t.type == schema.TensorType.INT4)
        a = sg.tensors[op.inputs[0]].quantization
        out[t.name.decode()] = (k.reshape(tuple(t.shape)), np.asarray(t.quantization.scale, np.float32), builtin,
                                (float(a.scale[0]), int(a.zeroPoint[0])))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LITERT_TORCH, reason="pip install 'tap-edge[tflite]'")
@pytest.mark.parametrize("plan", [{"default": {"w": 8, "a": 8}, "layers": {}},
                                  {"default": {"w": 8, "a": 8}, "layers": {"conv2": {"w": 4, "a": 8}}}],
                         ids=["int8-pt2e", "int4-conv-ai-edge-quantizer"])
def test_tflite_stores_the_fake_quant_integers(tiny: LoadedModel, tmp_path: Path, plan: dict) -> None:
    """Value by value: after GPTQ (integers that need not reach qmax), the .tflite's int8 / int4 weights are
    round(w / s) of the fake-quant model in TFLite's layout, with s = PTQInfo.weight_scales, and each layer's
    input has the fake-quant activation scale and zero point; LiteRT agrees."""
    from tap_edge.backends.reference import fake_quant_model
    from tap_edge.backends.tflite_backend import _WEIGHT_LAYOUT, module_regex

    bits = BitAssignment.from_plan(plan)
    xs = _inputs()
    g = load_graph(tiny)
    settings = _ptq_settings("gptq", len(xs))
    art = get_backend("tflite").compile(tiny, g, bits, tmp_path, calib=xs, ptq=settings)
    assert art.manifest.agreement.top1_agreement == 1.0 and art.manifest.ptq.rounding == "gptq"
    fq = fake_quant_model(tiny, g, bits, xs, settings)
    info, modules = fq.tap_edge_ptq, dict(fq.named_modules())
    stored = _tflite_weights(art.path)
    below_qmax = 0
    for mod, scale in info.weight_scales.items():
        w = modules[mod].weight.detach().numpy()
        (name,) = [n for n, (k, _, b, _) in stored.items()  # PT2E names the last Linear's weight after no module
                   if re.search(module_regex(mod), n)
                   or (len(_WEIGHT_LAYOUT[b]) == w.ndim and k.shape == w.transpose(_WEIGHT_LAYOUT[b]).shape)]
        k, s, builtin, (a_scale, a_zero) = stored[name]
        np.testing.assert_array_equal(s, scale.numpy().astype(np.float32))
        bits_in, want_scale, want_zero = info.input_qparams[mod]  # the fake-quant input quantizer, int8 form
        assert bits_in == 8 and a_scale == np.float32(want_scale) and a_zero == want_zero - 128
        want = np.round(w / scale.numpy().reshape(-1, *([1] * (w.ndim - 1))))
        np.testing.assert_array_equal(k, want.transpose(_WEIGHT_LAYOUT[builtin]).astype(np.int16))
        qmax = 2 ** (info.weight_bits[mod] - 1) - 1
        below_qmax += int(np.abs(want.reshape(len(want), -1)).max(1).min() < qmax)
    assert len(info.weight_scales) == 3 and below_qmax  # a channel the converter's absmax scale would have moved


# ---- tvm: MetaSchedule tuning ------------------------------------------------------------------------------
HAS_TVM = importlib.util.find_spec("tvm") is not None


class OneConv(nn.Module):
    """One conv + ReLU: the fewest kernels to tune (a tuning test stays short)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


def test_tvm_tuning_options_are_validated(tmp_path: Path) -> None:
    assert not TVMOptions().tuned and TVMOptions(tune_trials=0).tuned and TVMOptions(tune_db=tmp_path).tuned
    with pytest.raises(UserError, match="backend 'onnxruntime' has no tuning step"):
        get_backend("onnxruntime").options_from_flags(tune_trials=10)
    with pytest.raises(UserError, match="--tune-db holds TVM's MetaSchedule tuning database; backend 'tflite'"):
        get_backend("tflite").options_from_flags(tune_db=Path("db"))
    with pytest.raises(UserError, match="--tune-trials must be 0 or more, got -1"):
        TVMOptions(tune_trials=-1)
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        TVMOptions(tune_db=str(tmp_path / "f"))


def test_cli_tvm_tuning_options_are_one_line_errors(run_cli, tmp_path: Path) -> None:
    r = run_cli("compile", "resnet8", "--backend", "onnxruntime", "--tune-trials", "5", "--out-dir", str(tmp_path))
    assert r.code == 2 and "has no tuning step" in r.err and len(r.err.strip().splitlines()) == 1
    r = run_cli("compile", "resnet8", "--backend", "tvm", "--tune-trials", "-3", "--out-dir", str(tmp_path))
    assert r.code == 2 and "--tune-trials must be 0 or more" in r.err and len(r.err.strip().splitlines()) == 1
    f = tmp_path / "a-file"
    f.write_text("")
    r = run_cli("compile", "resnet8", "--backend", "tvm", "--tune-db", str(f), "--out-dir", str(tmp_path))
    assert r.code == 2 and "not a directory" in r.err
    assert not list(tmp_path.glob("*.so"))


@pytest.fixture(scope="module")
def one_conv() -> LoadedModel:
    return LoadedModel(
        "one_conv", "torch", OneConv().eval(), preprocess=Preprocess((3, 8, 8), 8, (0.0,) * 3, (1.0,) * 3)
    )


def _conv_inputs(n: int = 4) -> np.ndarray:
    return np.random.default_rng(2).standard_normal((n, 3, 8, 8)).astype(np.float32)


@pytest.mark.skipif(not HAS_TVM, reason="pip install 'tap-edge[tvm]'")
def test_tvm_tuning_database_is_written_applied_and_reused(one_conv: LoadedModel, tmp_path: Path) -> None:
    g, bits, xs = load_graph(one_conv), BitAssignment.parse("fp32"), _conv_inputs()
    b, db = get_backend("tvm"), tmp_path / "db"

    tuned = b.compile(one_conv, g, bits, tmp_path / "tuned", calib=xs, options=TVMOptions(tune_trials=2, tune_db=db))
    man = tuned.manifest
    first = man.backend_facts["tuning"]
    assert man.backend_facts["tuned"] and not first["reused"] and first["trials_run"] >= 1 and first["tuning_s"] > 0
    assert first["tasks_with_records"] == first["tasks"] >= 1 and first["database"] == str(db)
    records = (db / "database_tuning_record.json").read_text().splitlines()
    assert len(records) == first["trials_run"] and (db / "database_workload.json").stat().st_size > 0
    state = json.loads((db / "tap-edge-tuning.json").read_text())["workloads"][first["workload_key"]]
    assert state["trials_budget"] == 2 and state["sessions"][0]["records"] == first["trials_run"]
    assert state["sessions"][0]["seed"] == 0
    # built with the database's schedules, it computes what ONNX Runtime computes on the same graph
    assert man.agreement.max_abs_diff < 1e-4 and man.agreement.top1_agreement == 1.0
    assert man.agreement.reference == "ONNX Runtime (same graph)"
    assert any("tuned with MetaSchedule" in line for line in b.summary_lines(man))

    # the same model, target and database again: reused, nothing tuned, no record added
    again = b.compile(one_conv, g, bits, tmp_path / "again", calib=xs,
                      options=TVMOptions(tune_trials=2, tune_db=db)).manifest
    tu = again.backend_facts["tuning"]
    assert tu["reused"] and tu["tuning_s"] == 0 and tu["trials_run"] == 0 and tu["trials_budget_total"] == 2
    assert tu["workload_key"] == first["workload_key"] and tu["tasks_with_records"] == first["tasks_with_records"]
    assert (db / "database_tuning_record.json").read_text().splitlines() == records
    assert again.agreement.max_abs_diff < 1e-4

    r = measure_artifact(tuned.path, runs=3, warmup=1, timeout=300)
    assert r["latency"]["runs"] == 3 and "tuned" in r["runtime"] and r["threads"] == 1
    assert r["tvm_tuning"]["workload_key"] == first["workload_key"]


@pytest.mark.skipif(not HAS_TVM, reason="pip install 'tap-edge[tvm]'")
def test_tvm_apply_only_needs_records(one_conv: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no tuning record for this model's 1 kernels"):
        get_backend("tvm").compile(
            one_conv,
            load_graph(one_conv),
            BitAssignment.parse("fp32"),
            tmp_path,
            calib=_conv_inputs(2),
            options=TVMOptions(tune_trials=0, tune_db=tmp_path / "empty-db"),
        )
    assert not list(tmp_path.glob("*.so"))


# ---- onnxruntime: MatMulNBits for 4-bit linear layers -------------------------------------------------------
def _decode_matmulnbits(node, inits: dict) -> np.ndarray:
    """MatMulNBits (bits 4) -> the float weights [N, K] it multiplies by: unpack B (low nibble first), subtract
    the zero point (default 8), scale per block, drop the K padding."""
    attrs = {a.name: a.i for a in node.attribute}
    k, n, bs = attrs["K"], attrs["N"], attrs["block_size"]
    packed = inits[node.input[1]]
    n_blocks = -(-k // bs)
    assert attrs["bits"] == 4 and packed.shape == (n, n_blocks, bs // 2) and packed.dtype == np.uint8
    u = np.empty((n, n_blocks * bs), np.int16)
    u[:, 0::2] = packed.reshape(n, -1) & 0x0F
    u[:, 1::2] = packed.reshape(n, -1) >> 4
    zp = 8 if len(node.input) < 4 or not node.input[3] else None
    assert zp == 8  # symmetric grid: no zero points stored
    scales = inits[node.input[2]].astype(np.float64).reshape(n, n_blocks)
    w = (u - zp).reshape(n, n_blocks, bs) * scales[:, :, None]
    return w.reshape(n, -1)[:, :k]


def test_onnx_matmulnbits_weights_are_the_fake_quant_weights(tiny: LoadedModel, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from tap_edge.backends.onnxruntime_backend import node_module
    from tap_edge.quantize.ptq import quantize_model

    plan = BitAssignment.from_plan({"default": {"w": 8, "a": 8}, "layers": {"fc": {"w": 4, "a": 8}}})
    xs = _inputs()
    art = get_backend("onnxruntime").compile(tiny, load_graph(tiny), plan, tmp_path, calib=xs,
                                             options=OnnxRuntimeOptions(linear_int4="matmulnbits"))
    m = onnx.load(str(art.path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    nodes = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 1 and not any(n.op_type == "Gemm" for n in m.graph.node)
    producer = {o: n for n in m.graph.node for o in n.output}
    assert producer[nodes[0].input[0]].op_type == "DequantizeLinear"  # activation stays uint8-quantized
    fq = dict(quantize_model(tiny.module, plan, torch.from_numpy(xs)).named_modules())
    want = fq[node_module(nodes[0].name)].weight.detach().double().numpy()
    np.testing.assert_allclose(_decode_matmulnbits(nodes[0], inits), want, rtol=1e-6, atol=1e-8)
    man = art.manifest
    facts = man.backend_facts
    assert facts["linear_int4"] == "matmulnbits" and facts["layers"]["fc"]["stored"] == "int4-matmulnbits"
    # K = 16 = one block: per-block scales are the per-channel scales, so the planned form matches exactly
    assert man.weights.planned_form_bytes == man.prediction.flash.model_bytes
    assert man.agreement.top1_agreement == 1.0
    assert get_backend("onnxruntime").summary_lines(man) == ["1 linear layer(s) stored as MatMulNBits (4-bit blocks)"]


def test_onnx_matmulnbits_agrees_with_qdq_int4(tiny: LoadedModel, tmp_path: Path) -> None:
    plan = BitAssignment.from_plan({"default": {"w": 8, "a": 8}, "layers": {"fc": {"w": 4, "a": 8}}})
    b, g, xs = get_backend("onnxruntime"), load_graph(tiny), _inputs()
    qdq = b.compile(tiny, g, plan, tmp_path / "qdq", calib=xs).path
    nb = b.compile(tiny, g, plan, tmp_path / "nb", calib=xs, options=OnnxRuntimeOptions(linear_int4="matmulnbits")).path
    assert read_manifest(qdq).backend_facts["layers"]["fc"]["stored"] == "int4"
    check = np.random.default_rng(7).standard_normal((64, 3, 16, 16)).astype(np.float32)
    r = agreement(onnx_outputs(qdq, check), onnx_outputs(nb, check))
    assert r["top1_agreement"] == 1.0 and r["cosine"] > 0.999


#: Input channels of :func:`_saturating_qdq_conv`: each output sums K products 255 x 127.
_K = 64
#: Its output scale: the exact answer is the integer 200 (u8S8 saturation gives about 101).
_SAT_SCALE = 255 * 127 * _K / 200


def _saturating_qdq_conv(path: Path) -> Path:
    """A 1x1 QDQ conv (uint8 input, int8 weights all 127, uint8 output) that ONNX Runtime fuses into QLinearConv;
    fed 255 everywhere, each pair of products is 64,770, past the int16 sum of the U8S8 kernel of x86-64 CPUs
    without VNNI (``vpmaddubsw``), which saturates at 32,767."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("xs", np.array(1.0, np.float32)), ("xz", np.array(0, np.uint8)),
        ("wq", np.full((8, _K, 1, 1), 127, np.int8)), ("ws", np.ones(8, np.float32)), ("wz", np.zeros(8, np.int8)),
        ("ys", np.array(_SAT_SCALE, np.float32)), ("yz", np.array(0, np.uint8)))]
    nodes = [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"], axis=0),
             helper.make_node("Conv", ["xf", "wf"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["output"])]
    graph = helper.make_graph(nodes, "saturating_conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                         [1, _K, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 4, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


#: Child: the saturating conv through tap-edge's sessions and through a default session, as integers.
_SATURATION_CHILD = """
import json, sys, numpy as np, onnxruntime as ort
from tap_edge.backends.onnxruntime_backend import onnx_outputs
x = np.full((1, {k}, 4, 4), 255, np.float32)
ours = np.unique(np.round(onnx_outputs(sys.argv[1], x) / {scale}))
plain = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(None, {{"input": x}})[0]
print("RESULT", json.dumps([ours.tolist(), np.unique(np.round(plain / {scale})).tolist()]))
"""


def test_onnx_runtime_sessions_use_exact_integer_kernels(tmp_path: Path) -> None:
    """tap-edge's ONNX Runtime sessions give the exact integer answer where 8-bit weights meet activations near
    255, on this CPU and, when ``qemu-x86_64`` is installed (Debian's qemu-user), on an emulated Haswell
    (AVX2, no VNNI), where a default session is shown to saturate: so the test fails on any CPU if the
    exact-kernel option goes."""
    import platform
    import shutil
    import subprocess
    import sys

    model = _saturating_qdq_conv(tmp_path / "saturating_conv.onnx")
    got = onnx_outputs(model, np.full((1, _K, 4, 4), 255, np.float32)) / _SAT_SCALE
    assert np.unique(np.round(got)).tolist() == [200.0]
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or platform.machine() != "x86_64":
        pytest.skip("qemu-x86_64 not installed (Debian qemu-user): the CPU without VNNI is not emulated")
    code = _SATURATION_CHILD.format(k=_K, scale=_SAT_SCALE)
    out = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, "-c", code, str(model)], capture_output=True,
                         text=True, timeout=300)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line is not None, out.stderr[-2000:]
    ours, plain = json.loads(line.split(" ", 1)[1])
    assert plain != [200.0], "the emulated CPU did not saturate: the check would prove nothing"
    assert ours == [200.0]


def test_onnx_linear_int4_option_is_checked(tiny: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--linear-int4 'nbits' is not known; use qdq or matmulnbits"):
        OnnxRuntimeOptions(linear_int4="nbits")
    with pytest.raises(UserError, match="takes OnnxRuntimeOptions, not TVMOptions"):
        get_backend("onnxruntime").compile(tiny, load_graph(tiny), BitAssignment.parse("w8a8"), tmp_path,
                                           options=TVMOptions())


def test_cli_linear_int4_matmulnbits(run_cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"default": {"w": 8, "a": 8}, "layers": {"fc": {"w": 4, "a": 8}}}))
    r = run_cli("compile", "resnet8", "--backend", "onnxruntime", "--plan", str(plan), "--linear-int4",
                "matmulnbits", "--calib", "noise", "--out-dir", str(tmp_path), "--json", "-q")
    assert r.code == 0, r.err
    man = Manifest.from_dict(json.loads(r.out))
    assert man.backend_facts["layers"]["fc"]["stored"] == "int4-matmulnbits" and man.agreement.top1_agreement == 1.0
    r = run_cli("compile", "resnet8", "--backend", "tvm", "--linear-int4", "matmulnbits", "--out-dir", str(tmp_path))
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "--linear-int4 chooses an ONNX Runtime kernel; backend 'tvm' has none" in r.err
    r = run_cli("compile", "resnet8", "--backend", "onnxruntime", "--linear-int4", "nbits", "--out-dir", str(tmp_path))
    assert r.code == 2 and "use qdq or matmulnbits" in r.err


def test_cli_compile_runs_the_plans_ptq(run_cli, tmp_path: Path) -> None:
    """compile of a plan runs the PTQ the plan records (rounding, samples); --rounding / --ptq-samples win."""
    from tap_edge.documents import Plan
    from tap_edge.plan.pipeline import resolve_ptq

    fixture = Path(__file__).parent / "fixtures" / "plan_resnet8_nrf52840.json"
    doc = Plan.from_dict(json.loads(fixture.read_text()))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(doc.model_copy(update={"ptq": _ptq_settings("gptq", 6)}).to_dict()))
    assert resolve_ptq(plan) == _ptq_settings("gptq", 6)
    assert resolve_ptq(plan, "nearest") == _ptq_settings("nearest", 16)
    assert resolve_ptq(plan, None, 9).samples == 9 and resolve_ptq(None).rounding == "nearest"
    r = run_cli("compile", "resnet8", "--backend", "onnxruntime", "--plan", str(plan), "--calib", "noise",
                "--check-samples", "4", "--out-dir", str(tmp_path), "--json", "-q")
    assert r.code == 0, r.err
    man = Manifest.from_dict(json.loads(r.out))
    assert man.ptq == _ptq_settings("gptq", 6) and man.calibration.samples == 6 and man.ptq_s > 0
    assert man.agreement.top1_agreement == 1.0
    r = run_cli("compile", "resnet8", "--backend", "onnxruntime", "--bits", "w8a8", "--rounding", "gtpq",
                "--out-dir", str(tmp_path))
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "did you mean gptq" in r.err
