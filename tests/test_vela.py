"""Ethos-U with the real Vela (ethos-u-vela): the device profiles' Vela settings, what ``check`` predicts against
what Vela plans, ops Vela leaves to the CPU, the rules model used without Vela, ``--vela-config`` mistakes, and
(slow) the vela backend's compile and measure, also from a plan made under an SRAM budget.

The fast tests compile small .tflite files written here (a few hundred milliseconds of Vela each); tests that
export a PyTorch model through the TFLite path are marked slow.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from tap_edge.devices import get_device, list_devices
from tap_edge.devices.vela import ACCELERATORS, config_from_file, ini_text, parse_ini
from tap_edge.fit import ethos_u
from tap_edge.fit.bits import BitAssignment
from tap_edge.fit.checker import Checker

sys.path.insert(0, str(Path(__file__).parent))
from tflite_models import OPT, B, ModelWriter, T, _opts, schema  # noqa: E402

HAS_VELA = ethos_u.vela_installed()
needs_vela = pytest.mark.skipif(not HAS_VELA, reason="ethos-u-vela is not installed (pip install 'tap-edge[vela]', "
                                                     "or make install)")
#: (device, runtime) of every bundled profile runtime with an Ethos-U.
ETHOS_U = [(d, rt.name) for d in list_devices() for rt in get_device(d).runtimes if rt.vela is not None]
#: The devices issue 15 asks for, each with at least one Ethos-U runtime.
REQUIRED = ("alif-ensemble-e7", "himax-we2", "imx93", "corstone-300", "corstone-310", "corstone-320")
#: Two accelerator configurations: Ethos-U55-128 with a Shared_Sram arena, Ethos-U85-128 with a Dedicated_Sram cache.
U55, U85 = "corstone-300", "corstone-320"
SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample"
needs_photos = pytest.mark.skipif(not SAMPLES.is_dir(), reason="needs the shared ImageNet sample (calibration)")


def conv_model(path: Path, middle: str | None = None) -> Path:
    """An int8 .tflite of two 3x3 convs (32x32x8 -> 16 channels -> stride 2); ``middle``: a builtin placed between
    them (``L2_NORMALIZATION``: an int8 op TFLite Micro runs and no Ethos-U generation does)."""
    w = ModelWriter()
    x = w.tensor("x", [1, 32, 32, 8], T.INT8)
    h = w.tensor("h", [1, 32, 32, 16], T.INT8)
    y = w.tensor("y", [1, 16, 16, 16], T.INT8)

    def conv(src: int, dst: int, cin: int, stride: int, name: str) -> None:
        f = w.const(f"{name}_filter", [16, 3, 3, cin], T.INT8, seed=cin)
        b = w.const(f"{name}_bias", [16], T.INT32, scale=[0.05 * 0.01] * 16)
        w.op(B.CONV_2D, [src, f, b], [dst], _opts("Conv2DOptionsT", padding=schema.Padding.SAME, strideH=stride,
                                                  strideW=stride, dilationHFactor=1, dilationWFactor=1),
             OPT.Conv2DOptions)

    conv(x, h, 8, 1, "c1")
    if middle is not None:
        h2 = w.tensor("h2", [1, 32, 32, 16], T.INT8, scale=1 / 128, zero_point=0)
        w.op(getattr(B, middle), [h], [h2], _opts("L2NormOptionsT"), OPT.L2NormOptions)
        h = h2
    conv(h, y, 16, 2, "c2")
    w.io([x], [y])
    return w.write(path)


def runtime_of(device: str, name: str = "tflm-ethos-u"):
    return get_device(device).runtime(name)


def vela_figures(tflite: Path, device: str, out: Path) -> ethos_u.VelaFigures:
    """Vela's own plan of ``tflite`` with ``device``'s settings."""
    rt = runtime_of(device)
    run = ethos_u.run_vela(tflite, rt.vela, out)
    return ethos_u.figures_of(run.output, rt.vela, summary=run.summary, stdout=run.stdout, runtime=rt)


def one_error_line(err: str) -> str:
    """The one ``error:`` line of a failed command (progress notes may precede it, as in test_bad_inputs)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---- device profiles ----------------------------------------------------------------------------------------
def test_the_issues_ethos_u_devices_are_bundled() -> None:
    have = {d for d, _ in ETHOS_U}
    assert set(REQUIRED) <= have
    generations = {runtime_of(d, r).vela.generation for d, r in ETHOS_U}
    assert {"u55", "u65", "u85"} <= generations


@pytest.mark.parametrize(("device_id", "runtime_name"), ETHOS_U, ids=[f"{d}:{r}" for d, r in ETHOS_U])
def test_ethos_u_profile_names_its_vela_config(device_id: str, runtime_name: str) -> None:
    """Each Ethos-U runtime names Vela's accelerator, system config and memory mode, with a source and a
    confidence; its .ini text reads back as the same settings; its NPU table is the generation's."""
    device = get_device(device_id)
    rt = device.runtime(runtime_name)
    v = rt.vela
    assert v.accelerator in ACCELERATORS and v.system_config and v.memory_mode
    assert v.clock_hz > 0
    keys = re.findall(r"\b[A-Z]+\d+\b", re.split(r"[(;]", v.source or "")[0])  # "V1, V2; ..." / "HX2 (...)"
    assert keys and all(k in device.sources for k in keys), (v.source, list(device.sources))
    assert "runtimes.vela" in device.confidence
    sections = parse_ini(ini_text(v), "profile")
    assert set(sections) == {f"System_Config.{v.system_config}", f"Memory_Mode.{v.memory_mode}"}
    again = config_from_file(ini_text(v), "profile", v)
    assert (again.system_config, again.memory_mode) == (v.system_config, v.memory_mode)
    assert again.memory == {k: str(x) for k, x in v.memory.items()} or again.memory == v.memory
    assert (8, 8) in rt.npu_pairs() and all(w == 8 for w, _ in rt.npu_pairs())  # Vela's TFLite input: 8-bit weights
    table = set(rt.npu[v.generation].builtins)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN"} <= table
    assert "L2_NORMALIZATION" not in table
    if not v.arena_in_sram:  # Dedicated_Sram: the cache the NPU may use must be stated
        assert v.arena_cache_size and v.arena_cache_size > 0


def test_devices_show_names_the_vela_settings(run_cli) -> None:
    r = run_cli("devices", "show", U85)
    assert r.code == 0, r.err
    text = " ".join(r.out.split())
    assert ("tflm-ethos-u: Vela ethos-u85-128, [System_Config.Ethos_U85_SYS_DRAM_Mid] @ 1000 MHz, "
            "[Memory_Mode.Dedicated_Sram_384KB] (arena off-chip), arena cache 384.0 KiB") in text
    assert "NPU widths w8a8, w8a16" in text


def test_the_vela_backend_builds_for_every_ethos_u_runtime_with_vela_settings() -> None:
    from tap_edge.backends import backend_for_runtime

    for _, runtime_name in ETHOS_U:
        assert backend_for_runtime(runtime_name).name == "vela", runtime_name
    assert backend_for_runtime("tflm-cmsis-nn").name == "tflite"
    assert backend_for_runtime("executorch-ethos-u") is None  # no vela section: its own tables


def test_u85_places_more_builtins_than_u55() -> None:
    rt = runtime_of(U55)
    assert set(rt.npu["u55"].builtins) < set(rt.npu["u85"].builtins)
    assert {"GATHER", "SELECT", "CAST"} <= set(rt.npu["u85"].builtins) - set(rt.npu["u55"].builtins)


@needs_vela
@pytest.mark.parametrize(("device_id", "runtime_name"), ETHOS_U, ids=[f"{d}:{r}" for d, r in ETHOS_U])
def test_vela_takes_every_profiles_settings(device_id: str, runtime_name: str, tmp_path: Path) -> None:
    """Vela itself compiles a model with each profile's .ini sections, accelerator and memory mode."""
    rt = runtime_of(device_id, runtime_name)
    run = ethos_u.run_vela(conv_model(tmp_path / "m.tflite"), rt.vela, tmp_path / "out")
    f = ethos_u.figures_of(run.output, rt.vela, summary=run.summary, stdout=run.stdout, runtime=rt)
    assert f.accelerator == rt.vela.accelerator and f.memory_mode == rt.vela.memory_mode
    assert f.npu_ops == 1 and not f.cpu_ops
    assert f.sram_bytes > 0 and f.read_only_bytes > 0 and f.ms and f.ms > 0


# ---- check against Vela -------------------------------------------------------------------------------------
@needs_vela
def test_check_of_a_tflite_predicts_vela_on_two_accelerators(run_cli, tmp_path: Path) -> None:
    """``check`` on an int8 .tflite runs Vela on it for an Ethos-U55-128 (Shared_Sram) and an Ethos-U85-128
    (Dedicated_Sram): the SRAM it reports is Vela's plus TFLite Micro's bytes, the flash the optimised model."""
    model = conv_model(tmp_path / "two_convs.tflite")
    r = run_cli("check", str(model), "-d", U55, "-d", U85, "--json")
    assert r.code == 0, r.err
    rows = {d["device"]: d for d in json.loads(r.out)["devices"]}
    for device in (U55, U85):
        row, rt = rows[device], runtime_of(device)
        vela = vela_figures(model, device, tmp_path / device)
        assert row["verdict"] == "FITS"
        assert row["prediction_by"].startswith(f"vela {ethos_u.vela_version()} ({rt.vela.accelerator}")
        assert row["vela"]["sram_bytes"] == vela.sram_bytes
        assert row["peak_sram_bytes"] == vela.sram_need
        assert row["flash_bytes"] == vela.file_bytes + rt.code_bytes
    assert rows[U55]["vela"]["accelerator"] == "ethos-u55-128" and rows[U85]["vela"]["accelerator"] == "ethos-u85-128"
    assert rows[U55]["vela"]["memory_mode"] == "Shared_Sram" and rows[U85]["vela"]["dram_bytes"] > 0


@needs_vela
def test_an_op_vela_cannot_place_is_cpu_fallback_not_a_failure(run_cli, tmp_path: Path) -> None:
    """L2_NORMALIZATION between two convs: Vela leaves it to the CPU with its reason; ``check`` says FITS and
    names it, ``measure`` of Vela's model lists it and fits; the convs still run on the NPU (two blocks)."""
    model = conv_model(tmp_path / "l2norm.tflite", middle="L2_NORMALIZATION")
    for device in (U55, U85):
        f = vela_figures(model, device, tmp_path / device)
        assert [c.op for c in f.cpu_ops] == ["L2_NORMALIZATION"] and f.cpu_ops[0].tensor == "h2"
        assert f.cpu_ops[0].reason == "Unsupported opType"
        assert f.npu_ops == 2
    r = run_cli("check", str(model), "-d", U55)
    assert r.code == 0, r.err
    assert "FITS" in r.out and "left to the CPU (L2_NORMALIZATION)" in " ".join(r.out.split())
    r = run_cli("check", str(model), "-d", U55, "--json")
    row = json.loads(r.out)["devices"][0]
    assert row["verdict"] == "FITS" and not row["unsupported"]
    assert [c["op"] for c in row["vela"]["cpu_ops"]] == ["L2_NORMALIZATION"]
    r = run_cli("measure", str(tmp_path / U55 / "l2norm_vela.tflite"), "-d", U55, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["verdict"] == "FITS"
    assert [c["op"] for c in report["vela"]["cpu_ops"]] == ["L2_NORMALIZATION"]


@pytest.mark.slow  # the ONNX file is converted to PyTorch on load (about 10 s)
def test_an_onnx_model_is_predicted_with_its_own_weights(tmp_path: Path) -> None:
    """The stand-in of an ONNX graph carries the file's weights (Vela's encoder compresses them, not seeded ones:
    -4.6% flash on ResNet-8 with seeded ones): the PyTorch route's int8 weights, so its Vela prediction."""
    import torch

    from tap_edge.graph.models import load_graph, load_model

    lm = load_model("resnet8")
    path = tmp_path / "resnet8.onnx"
    torch.onnx.export(lm.module.eval(), torch.zeros(1, *lm.input_shape[1:]), str(path), dynamo=False)
    torch_graph, graph = load_graph(lm), load_graph(load_model(str(path)))
    assert graph.frontend == "onnx"
    ours = ethos_u.onnx_int8_weights(graph)
    theirs = ethos_u.int8_weights(lm.module, torch_graph)
    assert ours is not None and len(ours) == len(graph.quantizable_ops()) == len(theirs)
    by_module = {op.module: op.name for op in torch_graph.quantizable_ops()}
    for op in graph.quantizable_ops():
        assert np.array_equal(ours[op.name], theirs[by_module[op.module]]), op.name
    if HAS_VELA:
        f = ethos_u.predict(graph, BitAssignment.parse("w8a8"), runtime_of(U55))
        assert f.by == "vela" and "the model's int8 weights" in f.what
        g = ethos_u.predict(torch_graph, BitAssignment.parse("w8a8"), runtime_of(U55))
        assert (f.sram_bytes, f.read_only_bytes) == (g.sram_bytes, g.read_only_bytes)


# ---- the rules model (no Vela) ------------------------------------------------------------------------------
def test_rules_model_without_vela(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without Vela, ``check`` predicts with tap-edge's rules model of Vela and says so; it leaves the op outside
    the NPU's table to the CPU, and its figures stay near Vela's own (measured here when Vela is installed)."""
    from tap_edge.graph.frontends.tflite_frontend import load_tflite_graph

    model = conv_model(tmp_path / "l2norm.tflite", middle="L2_NORMALIZATION")
    real = {d: vela_figures(model, d, tmp_path / d) for d in (U55, U85)} if HAS_VELA else {}
    monkeypatch.setattr(ethos_u, "vela_installed", lambda: False)
    graph = load_tflite_graph(model)
    bits = BitAssignment.parse("native")
    for device in (U55, U85):
        verdict = Checker(graph, bits).check(get_device(device))
        assert verdict.verdict == "FITS"
        assert verdict.prediction_by.startswith("tap-edge's rules model of Vela (Vela not installed")
        rules = verdict.vela
        assert rules.by == "rules"
        assert [c.op for c in rules.cpu_ops] == ["L2_NORMALIZATION"]
        assert "not in Vela's Ethos-U" in rules.cpu_ops[0].reason
        assert rules.npu_ops == 2
        if device in real:
            v = real[device]  # raw weights + 10 B per channel: Vela's encoder compresses these 3.5 k weights
            assert v.read_only_bytes <= rules.read_only_bytes <= 1.2 * v.read_only_bytes
            assert abs(rules.file_bytes - v.file_bytes) <= 0.2 * v.file_bytes
            if v.arena_in_sram:  # Shared_Sram: the whole arena; Dedicated_Sram: a cache Vela sizes, here smaller
                assert abs(rules.sram_bytes - v.sram_bytes) <= 0.05 * v.sram_bytes
            else:
                assert rules.sram_bytes >= v.sram_bytes


def test_rules_model_on_resnet8_against_recorded_vela(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules model on ResNet-8 w8a8, Ethos-U55-128 Shared_Sram, against Vela 5.2.0 on the vela backend's int8
    file (tools/bench_backends.py --backends vela: Total SRAM used 52,000 B, optimised model 87,936 B)."""
    from tap_edge.graph.models import load_graph, load_model

    monkeypatch.setattr(ethos_u, "vela_installed", lambda: False)
    graph = load_graph(load_model("resnet8"))
    f = ethos_u.predict(graph, BitAssignment.parse("w8a8"), runtime_of(U55))
    assert f.by == "rules" and not f.cpu_ops
    assert abs(f.sram_bytes - 52000) <= 0.02 * 52000
    assert abs(f.file_bytes - 87936) <= 0.05 * 87936


def test_rules_model_folds_the_converters_pad_as_vela_does(tmp_path: Path) -> None:
    """A stride-2 depthwise conv with padding 1 reaches a .tflite with an explicit PAD (65x65x32 here), which
    Vela folds into the conv: the rules model counts no PAD tensor, and (with Vela) lands within 2% of Vela."""
    import torch
    from torch import nn

    from tap_edge.fit.memory import with_pad_ops
    from tap_edge.fit.tflite_writer import standin_tflite
    from tap_edge.graph.frontends.torch_frontend import trace_module

    net = nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32),
                        nn.ReLU(), nn.Conv2d(32, 8, 1)).eval()
    graph = trace_module(net, torch.zeros(1, 8, 64, 64), "padnet")
    assert "PAD" in [op.op_type for op in with_pad_ops(graph).ops]
    bits, rt = BitAssignment.parse("w8a8"), runtime_of(U55)
    rules = ethos_u.rules_figures(graph, bits, rt)
    with_pad = 64 * 64 * 32 + 65 * 65 * 32  # the expand conv's output and the PAD's, live together
    assert 64 * 64 * (8 + 32) <= rules.sram_bytes < with_pad
    if HAS_VELA:
        model = tmp_path / "padnet.tflite"
        model.write_bytes(standin_tflite(graph, bits))
        vela = vela_figures(model, U55, tmp_path / "out")
        assert abs(rules.sram_bytes - vela.sram_bytes) <= 0.02 * vela.sram_bytes


# ---- --vela-config ------------------------------------------------------------------------------------------
BAD_CONFIGS = {
    "not_ini": ("garbage without a section\n", "not a Vela configuration file"),
    "unknown_key": ("[System_Config.X]\ncore_clock=1e8\naxi0_port=Sram\naxi1_port=Dram\nturbo=1\n", "unknown key"),
    "not_a_number": ("[System_Config.X]\ncore_clock=fast\naxi0_port=Sram\naxi1_port=Dram\n", "not a number"),
    "bad_port": ("[System_Config.X]\ncore_clock=1e8\naxi0_port=Cache\naxi1_port=Dram\n", "a port connects"),
    "other_section": ("[Accelerator]\nmacs=128\n", "neither a System_Config nor a Memory_Mode"),
    "no_mode": ("[System_Config.X]\ncore_clock=1e8\naxi0_port=Sram\naxi1_port=Dram\n",
                "no [Memory_Mode.NAME] section"),
    "two_modes": ("[System_Config.X]\ncore_clock=1e8\naxi0_port=Sram\naxi1_port=Dram\n"
                  "[Memory_Mode.A]\nconst_mem_area=Axi1\narena_mem_area=Axi0\ncache_mem_area=Axi0\n"
                  "[Memory_Mode.B]\nconst_mem_area=Axi0\narena_mem_area=Axi0\ncache_mem_area=Axi0\n",
                  "which [Memory_Mode.NAME] to use? it defines A, B"),
}


@needs_vela
@pytest.mark.parametrize("case", [*BAD_CONFIGS, "missing_file"])
def test_bad_vela_config_is_one_line_and_exit_2(case: str, run_cli, tmp_path: Path) -> None:
    path = tmp_path / "vela.ini"
    if case != "missing_file":
        path.write_text(BAD_CONFIGS[case][0])
    r = run_cli("compile", "resnet8", "-b", "vela", "-d", U55, "--vela-config", str(path), "--calib", "noise",
                "--out-dir", str(tmp_path / "out"))
    assert r.code == 2, r.err
    line = one_error_line(r.err)
    assert f"--vela-config {path}" in line
    assert (BAD_CONFIGS[case][1] if case != "missing_file" else "file not found") in line
    assert not (tmp_path / "out").exists()


# ---- the vela backend end to end (slow: the TFLite path exports PyTorch) ------------------------------------
@needs_vela
@needs_photos
@pytest.mark.slow
@pytest.mark.parametrize("device", [U55, U85])
def test_vela_backend_compile_and_measure_match_the_prediction(device: str, run_cli, tmp_path: Path) -> None:
    """ResNet-8 at w8a8 through the vela backend: the manifest's prediction (Vela on tap-edge's stand-in .tflite)
    within 3% of what Vela planned for the compiled file; measure reports Vela's figures and FITS."""
    out = tmp_path / device
    r = run_cli("compile", "resnet8", "-b", "vela", "-d", device, "--bits", "w8a8", "--calib", str(SAMPLES),
                "--out-dir", str(out), "--json")
    assert r.code == 0, r.err
    manifest = json.loads(r.out)
    pred = manifest["prediction"]
    assert pred["prediction_by"].startswith(f"vela {ethos_u.vela_version()}")
    artifact = out / manifest["artifact"]
    r = run_cli("measure", str(artifact), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    vela = report["vela"]
    assert vela["accelerator"] == runtime_of(device).vela.accelerator
    assert report["verdict"] == "FITS" and report["measured_fits"] and report["predicted_fits"]
    assert abs(pred["vela"]["sram_bytes"] - vela["sram_bytes"]) <= 0.03 * vela["sram_bytes"]
    assert abs(pred["vela"]["file_bytes"] - vela["file_bytes"]) <= 0.03 * vela["file_bytes"]
    assert vela["npu_ms"] > 0 and not vela["cpu_ops"]


@needs_vela
@pytest.mark.slow
def test_vela_backend_with_a_vela_config_of_ones_own(run_cli, tmp_path: Path) -> None:
    """--vela-config: Vela compiles with the user's memory mode (here the constants in SRAM too, as Sram_Only)."""
    v = runtime_of(U55).vela
    ini = tmp_path / "mine.ini"
    ini.write_text(ini_text(v).replace(f"Memory_Mode.{v.memory_mode}", "Memory_Mode.Mine")
                   .replace("const_mem_area=Axi1", "const_mem_area=Axi0"))
    r = run_cli("compile", "ds_cnn", "-b", "vela", "-d", U55, "--bits", "w8a8", "--vela-config", str(ini),
                "--calib", "noise", "--out-dir", str(tmp_path / "out"), "--json")
    assert r.code == 0, r.err
    facts = json.loads(r.out)["backend_facts"]
    assert facts["vela_config"]["memory_mode"] == "Mine"
    assert "--memory-mode" in facts["vela_command"] and "Mine" in facts["vela_command"]


@needs_vela
@needs_photos
@pytest.mark.slow
def test_plan_under_an_sram_budget_compile_measure(run_cli, tmp_path: Path) -> None:
    """plan -> compile --backend vela -> measure: under an SRAM budget the 16x8 ResNet-8 does not meet, the plan
    takes 8-bit activations (the vela backend builds one activation width) and Vela's build fits the budget."""
    bits16 = ethos_u.predict(_resnet8(), BitAssignment.parse("w8a16"), runtime_of(U55))
    bits8 = ethos_u.predict(_resnet8(), BitAssignment.parse("w8a8"), runtime_of(U55))
    assert bits8.sram_need < bits16.sram_need
    budget = (bits8.sram_need + bits16.sram_need) // 2
    plan = tmp_path / "plan.json"
    r = run_cli("plan", "resnet8", "-d", U55, "-b", "vela", "--calib", str(SAMPLES), "--sram", str(budget),
                "--out", str(plan))
    assert r.code == 0, r.err
    doc = json.loads(plan.read_text())
    assert {(v["w"], v["a"]) for v in doc["layers"].values()} == {(8, 8)}
    assert doc["predicted"]["arena_bytes"] <= budget
    r = run_cli("compile", "resnet8", "-b", "vela", "-d", U55, "--plan", str(plan), "--calib", str(SAMPLES),
                "--out-dir", str(tmp_path / "out"), "--json")
    assert r.code == 0, r.err
    artifact = tmp_path / "out" / json.loads(r.out)["artifact"]
    r = run_cli("measure", str(artifact), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["verdict"] == "FITS"
    assert report["vela"]["sram_need_bytes"] <= budget


def _resnet8():
    from tap_edge.graph.models import load_graph, load_model

    return load_graph(load_model("resnet8"))


def test_the_cpu_memory_model_refuses_an_ethos_u_runtime() -> None:
    """fit.footprint dispatches an Ethos-U runtime to Vela's plan; fit.memory's CPU-arena figures for one would be
    a wrong number, so asking it is an error, not a figure."""
    from tap_edge.devices import get_device
    from tap_edge.fit import memory
    from tap_edge.fit.bits import BitAssignment
    from tap_edge.fit.footprint import plan_arena_for
    from tap_edge.graph.models import load_graph

    graph, bits = load_graph("ds_cnn"), BitAssignment(8, 8)
    rt = get_device("corstone-300").runtime("tflm-ethos-u")
    with pytest.raises(ValueError, match="use tap_edge.fit.footprint"):
        memory.plan_arena_for(graph, bits, rt)
    with pytest.raises(ValueError, match="use tap_edge.fit.footprint"):
        memory.flash_breakdown(graph, bits, runtime=rt)
    assert plan_arena_for(graph, bits, rt).arena_bytes > 0
