"""`tap-edge plan` and `tap-edge eval` end to end on a small model and generated calibration tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tap_edge.fit.bits import BitAssignment
from tap_edge.fit.footprint import flash_breakdown
from tap_edge.graph.models import load_graph


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(20):
        np.save(d / f"x{i:02d}.npy", rng.standard_normal((3, 32, 32)).astype(np.float32))
    return d


@pytest.mark.parametrize("proxy", ["fisher", "tap"])
def test_plan_fits_its_budget_and_check_agrees(proxy: str, run_cli, calib_dir: Path, tmp_path: Path) -> None:
    g = load_graph("resnet8")
    w8 = flash_breakdown(g, BitAssignment.parse("w8a8")).model_bytes
    budget = int(0.8 * w8) + 100 * 1024  # 80% of the 8-bit weights + the runtime's code
    out = tmp_path / "plan.json"
    r = run_cli("plan", "resnet8", "-d", "stm32h743", "--calib", str(calib_dir), "--proxy", proxy,
                "--flash", str(budget), "--act-bits", "8", "--out", str(out), "--json")
    assert r.code == 0, r.err
    plan = json.loads(out.read_text())
    assert plan["schema"] == "tap-edge/plan" and plan["proxy"] == proxy
    assert set(plan["layers"]) == {op.module for op in g.quantizable_ops()}
    assert {v["w"] for v in plan["layers"].values()} <= {4, 8}  # CMSIS-NN kernels
    assert {v["a"] for v in plan["layers"].values()} == {8}
    assert 4 in {v["w"] for v in plan["layers"].values()}  # the budget forces some 4-bit layers
    assert plan["predicted"]["flash_bytes"] <= budget
    chk = run_cli("check", "resnet8", "-d", "stm32h743", "--plan", str(out), "--json")
    row = json.loads(chk.out)["devices"][0]
    assert chk.code == 0 and row["verdict"] == "FITS"
    assert row["flash_bytes"] == plan["predicted"]["flash_bytes"]
    assert row["peak_sram_bytes"] == plan["predicted"]["arena_bytes"]


def test_eval_plan_against_uniform(run_cli, calib_dir: Path, tmp_path: Path) -> None:
    r = run_cli("eval", "resnet8", "--bits", "w8a8", "--data", str(calib_dir), "--json")
    assert r.code == 0, r.err
    m = json.loads(r.out)
    assert m["schema"] == "tap-edge/eval" and m["n_images"] == 4 and m["calib_samples"] == 16
    assert m["top1"] is None and 0.0 <= m["agreement"] <= 1.0 and m["kl"] >= 0.0


@pytest.mark.parametrize("args, expected", [
    (["--weight-bits", "9"], "widths must be 2..8"),
    (["--act-bits", "12"], "activation widths are 8, 16 or 32"),
    (["--proxy", "nope"], "unknown proxy"),
    (["--flash", "1KB"], "smallest achievable"),
    (["--calib-samples", "0"], "sample count must be positive"),
])
def test_plan_bad_input(args: list[str], expected: str, run_cli, calib_dir: Path, tmp_path: Path) -> None:
    r = run_cli("plan", "resnet8", "-d", "stm32h743", "--calib", str(calib_dir), "--out", str(tmp_path / "p.json"),
                *args)
    assert r.code == 2 and expected in r.err and "Traceback" not in r.err
    assert not (tmp_path / "p.json").exists()
