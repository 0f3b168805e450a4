"""The CLI: tables, JSON that follows its schema, exit codes, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_devices_json_lists_validated_profiles(run_cli) -> None:
    r = run_cli("devices", "--json")
    assert r.code == 0
    from tap_edge.documents import DeviceList

    doc = DeviceList.from_dict(json.loads(r.out))
    assert len(doc.devices) >= 20 and doc.devices[0].arena_bytes > 0


def test_devices_show(run_cli) -> None:
    r = run_cli("devices", "show", "stm32h743")
    assert r.code == 0 and "AXI_SRAM" in r.out and "tflm-cmsis-nn" in r.out


def test_check_fits_exit_zero(run_cli) -> None:
    r = run_cli("check", "resnet8", "--device", "stm32h743", "--device", "raspberry-pi-4")
    assert r.code == 0, r.err
    assert "FITS" in r.out and "2/2 targets fit" in r.out


def test_check_oom_exit_one_names_memory(run_cli) -> None:
    r = run_cli("check", "timm:resnet18", "--device", "stm32f446re")
    assert r.code == 1
    assert "OOM" in r.out and "flash (FLASH) over by" in r.out and "SRAM (SRAM) over by" in r.out


def test_check_json_follows_schema(run_cli) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    r = run_cli("check", "ds_cnn", "--all", "--json")
    report = json.loads(r.out)
    schema = json.loads((ROOT / "tap_edge" / "schemas" / "check-report.schema.json").read_text())
    jsonschema.validate(report, schema)
    assert r.code == (0 if report["all_fit"] else 1)
    row = report["devices"][0]
    for key in ("device", "verdict", "flash_bytes", "flash_limit_bytes", "peak_sram_bytes", "sram_limit_bytes",
                "peak_op"):
        assert key in row


def test_check_unsupported_bits_on_int8_only_device(run_cli) -> None:
    r = run_cli("check", "resnet8", "--device", "coral-edgetpu", "--bits", "w4a8", "--json")
    row = json.loads(r.out)["devices"][0]
    assert r.code == 1 and row["verdict"] == "UNSUPPORTED"
    assert "4-bit weights" in row["problems"][0]


def test_check_with_plan_file(run_cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"default": {"w": 8, "a": 8}, "layers": {"fc": {"w": 4, "a": 8}}}))
    r8 = json.loads(run_cli("check", "resnet8", "-d", "stm32h743", "--json").out)["devices"][0]
    rp = json.loads(run_cli("check", "resnet8", "-d", "stm32h743", "--plan", str(plan), "--json").out)["devices"][0]
    assert r8["flash_bytes"] - rp["flash_bytes"] == 64 * 10 // 2  # fc weights 640 at 8 bits -> 320 at 4


def test_unknown_op_is_unsupported_on_mcu(run_cli) -> None:
    r = run_cli("check", "model_factories:model_with_unknown_op", "-d", "stm32h743", "--json")
    report = json.loads(r.out)
    assert r.code == 1 and report["model"]["unknown_ops"]
    assert report["devices"][0]["verdict"] == "UNSUPPORTED"


# ---- bad input: one line on stderr, non-zero exit, no traceback ------------------------------------
def _corrupt_onnx(tmp: Path) -> str:
    p = tmp / "bad.onnx"
    p.write_bytes(b"\x08\x07garbage" * 10)
    return str(p)


def _truncated_tflite(tmp: Path) -> str:
    import importlib.util

    spec = importlib.util.find_spec("tflite_micro")
    src = None
    if spec and spec.submodule_search_locations:
        src = next(Path(spec.submodule_search_locations[0]).rglob("*.tflite"), None)
    data = src.read_bytes()[:100] if src else b"TFL3" + b"\x00" * 40
    p = tmp / "cut.tflite"
    p.write_bytes(data)
    return str(p)


def _broken_yaml(tmp: Path) -> str:
    p = tmp / "board.yaml"
    p.write_text("id: my-board\nmemories: [oops\n")
    return str(p)


def _unknown_field(tmp: Path) -> str:
    text = (ROOT / "device_profiles" / "stm32h743.yaml").read_text().replace("kind: mcu", "kind: mcu\nwarp: 9")
    p = tmp / "board.yaml"
    p.write_text(text)
    return str(p)


def _unreadable_plan(tmp: Path) -> str:
    p = tmp / "plan.json"
    p.write_text("{not json")
    return str(p)


def _plan_for_other_model(tmp: Path) -> str:
    p = tmp / "plan.json"
    p.write_text(json.dumps({"layers": {"no.such.layer": {"w": 4, "a": 8}}}))
    return str(p)


BAD_INPUTS = {
    "broken yaml": (lambda t: ["check", "resnet8", "--device", _broken_yaml(t)], "broken YAML"),
    "unknown field": (lambda t: ["check", "resnet8", "--device", _unknown_field(t)], "warp"),
    "unknown device": (lambda t: ["check", "resnet8", "--device", "stm32h744"], "unknown device"),
    "missing model file": (lambda t: ["check", str(t / "nope.onnx"), "--all"], "not found"),
    "corrupt onnx": (lambda t: ["check", _corrupt_onnx(t), "--all"], "bad.onnx"),
    "truncated tflite": (lambda t: ["check", _truncated_tflite(t), "--all"], "cut.tflite"),
    "empty model": (lambda t: ["check", "model_factories:empty_model", "--all"], "no operations"),
    "impossible bits": (lambda t: ["check", "resnet8", "--all", "--bits", "w9a8"], "impossible weight width"),
    "unreadable plan": (lambda t: ["check", "resnet8", "--all", "--plan", _unreadable_plan(t)], "not valid JSON"),
    "plan for another model": (lambda t: ["check", "resnet8", "--all", "--plan", _plan_for_other_model(t)],
                               "no.such.layer"),
    "no device": (lambda t: ["check", "resnet8"], "no target device"),
    "unknown model": (lambda t: ["check", "not_a_model_anywhere", "--all"], "unknown model"),
    "unsupported file type": (lambda t: ["check", str(t / "model.h5"), "--all"], "unsupported model file type"),
    "bits and plan": (lambda t: ["check", "resnet8", "--all", "--bits", "w8a8", "--plan", "x.json"], "both given"),
    "unknown runtime": (lambda t: ["check", "resnet8", "-d", "stm32h743", "--runtime", "nope"], "no runtime"),
    "missing argument": (lambda t: ["check"], "Missing argument"),
    "unknown option": (lambda t: ["check", "resnet8", "--nope"], "No such option"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_error(case: str, run_cli, tmp_path: Path) -> None:
    make_args, expected = BAD_INPUTS[case]
    r = run_cli(*make_args(tmp_path))
    assert r.code == 2, (r.code, r.out, r.err)
    lines = [ln for ln in r.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.err
    assert lines[0].startswith("error:") and expected in lines[0]
    assert "Traceback" not in r.err + r.out


def test_console_script_runs_in_a_fresh_process() -> None:
    exe = Path(sys.executable).with_name("tap-edge")
    r = subprocess.run([str(exe), "check", "resnet8", "--device", "nosuch"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "unknown device" in r.stderr


# ---- displays: no negative limits, each overflow once, tables that fit 100 columns and never cut a cell ----------
def _wide_onnx(tmp: Path, fc_in: int = 1024, fc_out: int = 1024, channels: int = 8, size: int = 32) -> Path:
    """x[1, 3, size, size] -> conv 3x3 (channels) -> global pool -> a fc_in x fc_out fc (its weights dominate)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w", [channels, 3, 3, 3]), ("p", [channels, fc_in]), ("fc", [fc_in, fc_out]))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "p"], ["h"]), helper.make_node("MatMul", ["h", "fc"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])
    graph = helper.make_graph(nodes, "wide", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, fc_out])],
                              inits)
    path = tmp / f"wide_{fc_in}_{fc_out}_{channels}_{size}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _table_rows(out: str, devices: list[str]) -> dict[str, str]:
    return {line.split()[0].rstrip("*"): line for line in out.splitlines()
            if line.split() and line.split()[0].rstrip("*") in devices}


def test_shared_memory_shows_no_negative_limit_and_one_overflow(run_cli, tmp_path: Path) -> None:
    from tap_edge.documents import CheckReport

    model = str(_wide_onnx(tmp_path))  # ~1 MiB of int8 weights: more than spresense's 640 KiB shared SRAM
    devices = ["spresense", "esp32-s3", "raspberry-pi-5"]
    args = ["check", model, *[x for d in devices for x in ("-d", d)]]
    r = run_cli(*args)
    report = CheckReport.from_dict(json.loads(run_cli(*args, "--json").out))
    spresense = report.devices[0]
    assert spresense.sram_limit_bytes < 0  # the document's arithmetic: what the weights leave of the region
    rows = _table_rows(r.out, devices)
    assert set(rows) == set(devices)
    for row in rows.values():
        figures = row.split(None, 3)[3]  # after device, runtime and verdict
        assert not re.search(r"-\s*\d", figures), row  # no negative figure
    assert rows["spresense"].split()[0] == "spresense*" and "640 KiB" in rows["spresense"]
    problems = [line for line in r.out.splitlines() if line.strip().startswith("spresense:")]
    assert len(problems) == 1 and "shared" in problems[0] and "flash (" not in problems[0], problems
    assert "weights and code" in problems[0] and "> 640.0 KiB shared" in problems[0]
    assert spresense.problems == [problems[0].split(": ", 1)[1]]


def test_memory_problems_state_each_overflow_once() -> None:
    from tap_edge.fit.checker import RegionLimits, memory_problems

    shared = RegionLimits(1000, "RAM", 1000 - 400, "RAM", True)
    assert memory_problems(400, 500, "conv", shared) == []
    over_sum = memory_problems(400, 700, "conv", shared)
    assert over_sum == ["weights and code 400 B + arena 700 B > 1000 B shared RAM: over by 100 B at conv"]
    assert memory_problems(1200, 50, "conv", RegionLimits(1000, "RAM", -200, "RAM", True)) == [
        "weights and code 1.2 KiB > 1000 B shared RAM"]
    split = RegionLimits(1000, "FLASH", 100, "SRAM", False)
    assert memory_problems(1200, 150, "conv", split) == ["flash (FLASH) over by 200 B",
                                                         "SRAM (SRAM) over by 50 B at conv"]


@pytest.mark.parametrize("columns", ["100", "140", None])
def test_check_table_fits_the_terminal_and_never_cuts(tmp_path: Path, columns: str | None) -> None:
    import os

    model = _wide_onnx(tmp_path, 256, 64)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns:
        env["COLUMNS"] = columns
    # fp32 on every profile: UNSUPPORTED on the int8-only runtimes, the widest verdict there is
    exe = Path(sys.executable).with_name("tap-edge")
    r = subprocess.run([str(exe), "check", str(model), "--all", "--bits", "fp32"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode in (0, 1), r.stderr
    width = int(columns or 100)  # stdout is a pipe here: without COLUMNS the table is made for 100 columns
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in r.stdout
    from tap_edge.devices import list_devices

    verdicts = re.findall(r"\b(FITS|OOM|UNSUPPORTED)\b", "\n".join(lines[:len(list_devices()) * 2 + 4]))
    assert len(verdicts) == len(list_devices()) and "UNSUPPORTED" in verdicts
    if width >= 140:  # wide enough: every device id whole on its own row
        assert set(_table_rows(r.stdout, list_devices())) == set(list_devices())
