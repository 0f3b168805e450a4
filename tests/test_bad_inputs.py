"""Bad inputs found by probing every command (issue 16's list): each is one line on stderr, exit code 2, and
nothing a user had is replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_DIR


def _check_doc(run_cli, tmp_path: Path) -> Path:
    out = tmp_path / "check.json"
    r = run_cli("check", "resnet8", "-d", "stm32h743", "--json")
    out.write_text(r.out)
    return out


CASES = {
    "empty --bits": (lambda t, run: ["check", "resnet8", "-d", "stm32h743", "--bits", ""], "empty bit-width"),
    "deep plan JSON": (lambda t, run: ["check", "resnet8", "-d", "stm32h743", "--plan", _deep(t)], "too deeply"),
    "negative --sweep": (lambda t, run: ["plan", "resnet8", "-d", "nrf52840", "--calib", str(SAMPLE_DIR),
                                         "--sweep", "-3"], "--sweep"),
    "empty --weight-bits": (lambda t, run: ["plan", "resnet8", "-d", "nrf52840", "--calib", str(SAMPLE_DIR),
                                            "--weight-bits", ""], "--weight-bits"),
    "--out-dir is a file": (lambda t, run: ["compile", "resnet8", "--bits", "w8a8", "--backend", "onnxruntime",
                                            "--calib", "noise", "--out-dir", _file(t)], "is a file"),
    "negative --timeout": (lambda t, run: ["measure", _file(t, "m.onnx"), "--timeout", "-1"], "--timeout"),
    "nan --timeout": (lambda t, run: ["measure", _file(t, "m.onnx"), "--timeout", "nan"], "--timeout"),
    "empty model file": (lambda t, run: ["measure", _file(t, "m.onnx")], "the file is empty"),
    "report over its input": (lambda t, run: ["report", str(_check_doc(run, t)), "--out", str(t / "check.json")],
                              "names one of the input documents"),
}


def _deep(tmp: Path) -> str:
    p = tmp / "plan.json"
    p.write_text("[" * 100_000)
    return str(p)


def _file(tmp: Path, name: str = "a-file") -> str:
    p = tmp / name
    p.write_bytes(b"")
    return str(p)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2(case: str, run_cli, tmp_path: Path) -> None:
    make, message = CASES[case]
    r = run_cli(*make(tmp_path, run_cli))
    assert r.code == 2, (r.code, r.err)
    assert message in r.err and "Traceback" not in r.err
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.err  # progress notes may precede it


def test_report_over_its_input_leaves_the_input(run_cli, tmp_path: Path) -> None:
    doc = _check_doc(run_cli, tmp_path)
    before = doc.read_text()
    assert run_cli("report", str(doc), "--out", str(doc)).code == 2
    assert doc.read_text() == before and json.loads(before)["schema"] == "tap-edge/check-report"
