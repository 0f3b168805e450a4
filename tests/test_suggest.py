"""What would make it fit (``tap-edge check --suggest``): every suggested change, applied, fits; the widths plan
is the cheapest under its objective (brute force); the floor and the resolution are computed (the model is
reloaded), the nearest profile is the same SoC's; plan's refusals name a fix that works on the device."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from tap_edge.devices import get_device, load_profile
from tap_edge.documents import CheckReport
from tap_edge.fit.bits import BitAssignment, LayerBits
from tap_edge.fit.checker import check_report
from tap_edge.fit.footprint import flash_breakdown, plan_arena_for
from tap_edge.graph.graph import ModelGraph, Op, Tensor, conv_macs
from tap_edge.graph.models import load_graph
from tap_edge.plan.rules import PlanRules
from tap_edge.plan.suggest import OBJECTIVE, change_costs, suggest_for, suggest_report

RT = get_device("stm32h743").runtime()  # tflm-cmsis-nn: 100 KiB of code, the .tflite's structure in flash


def flash(g: ModelGraph, bits: BitAssignment) -> int:
    return flash_breakdown(g, bits, RT.code_bytes, runtime=RT).total_bytes


def profile(tmp_path: Path, name: str, *, flash: int | None = None, sram: int | None = None) -> Path:
    """An STM32H743 whose flash and largest SRAM are the sizes given (no reservations): a board of one's own."""
    data = get_device("stm32h743").model_dump(mode="json", exclude_none=True)
    data["id"] = data["name"] = name
    data["reserved"] = []
    for m in data["memories"]:
        if m["name"] == "FLASH" and flash is not None:
            m["size"] = flash
        if m["name"] == "AXI_SRAM" and sram is not None:
            m["size"] = sram
        if m["name"] != "AXI_SRAM" and "arena" in m["holds"] and sram is not None:
            m["size"] = min(m["size"], sram // 2)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    load_profile(path)
    return path


def run_json(run_cli, *args: str) -> tuple[int, CheckReport]:
    r = run_cli("check", *args, "--json")
    assert r.code in (0, 1), r.err
    return r.code, CheckReport.from_dict(json.loads(r.out))


def test_objective_counts_bytes_of_precision_changed() -> None:
    g = load_graph("resnet8")
    costs = change_costs(g, BitAssignment(8, 8))
    op = next(o for o in g.quantizable_ops() if o.module == "stage3.conv2")
    out_values = sum(g.tensors[t].numel for t in op.outputs)
    assert costs[op.name][(8, 8)] == 0.0
    assert costs[op.name][(4, 8)] == op.weight_params * 4 / 8 + 1
    assert costs[op.name][(8, 16)] == out_values * 8 / 8 + 1
    assert "fewest bytes of precision changed" in OBJECTIVE


def test_flash_overflow_gets_the_cheapest_widths_plan_and_it_fits(run_cli, tmp_path: Path) -> None:
    g = load_graph("resnet8")
    w8 = flash(g, BitAssignment(8, 8))
    convs4 = BitAssignment(8, 8, {op.module: LayerBits(4, 8) for op in g.quantizable_ops() if op.op_class == "conv"})
    w4 = flash(g, convs4)
    limit = (w8 + w4) // 2
    dev = profile(tmp_path, "small-flash", flash=limit)
    code, rep = run_json(run_cli, "resnet8", "-d", str(dev), "--suggest", "--suggest-plans", str(tmp_path / "plans"))
    assert code == 1 and rep.devices[0].verdict == "OOM"
    w = rep.devices[0].suggestions.widths
    assert w is not None and w.backend == "tflite" and w.flash_bytes <= limit
    assert all(c.op_class == "conv" and (c.before.w, c.after.w, c.after.a) == (8, 4, 8) for c in w.changed)
    # the cheapest: brute force over which convs go to 4 bits (the only change the tflite rules allow here)
    convs = [op for op in g.quantizable_ops() if op.op_class == "conv"]
    best = min(sum(op.weight_params * 4 / 8 + 1 for op in sub)
               for n in range(len(convs) + 1) for sub in itertools.combinations(convs, n)
               if flash(g, BitAssignment(8, 8, {op.module: LayerBits(4, 8) for op in sub})) <= limit)
    assert w.cost == pytest.approx(best, abs=1e-3)
    # applied, it fits
    code, again = run_json(run_cli, "resnet8", "-d", str(dev), "--plan", w.plan_file)
    assert code == 0 and again.devices[0].verdict == "FITS" and again.devices[0].flash_bytes == w.flash_bytes


def test_sram_overflow_at_16_bit_activations_goes_to_one_narrower_width(run_cli, tmp_path: Path) -> None:
    g = load_graph("resnet8")
    rt = get_device("stm32h743").runtime()
    a16 = plan_arena_for(g, BitAssignment(8, 16), rt).arena_bytes
    a8 = plan_arena_for(g, BitAssignment(8, 8), rt).arena_bytes
    dev = profile(tmp_path, "small-sram", sram=(a8 + a16) // 2)
    code, rep = run_json(run_cli, "resnet8", "-d", str(dev), "--bits", "w8a16", "--suggest",
                         "--suggest-plans", str(tmp_path / "plans"))
    w = rep.devices[0].suggestions.widths
    assert code == 1 and w is not None and w.default.a == 8
    assert {(v.w, v.a) for v in w.layers.values()} == {(8, 8)} and len(w.changed) == len(w.layers)
    code, again = run_json(run_cli, "resnet8", "-d", str(dev), "--plan", w.plan_file)
    assert code == 0 and again.devices[0].peak_sram_bytes == w.arena_bytes


def test_arena_floor_names_the_peak_and_the_largest_input_that_fits(run_cli, tmp_path: Path) -> None:
    g = load_graph("resnet8")
    rt = get_device("stm32h743").runtime()
    a8 = plan_arena_for(g, BitAssignment(8, 8), rt)
    dev = profile(tmp_path, "tiny-sram", sram=int(a8.arena_bytes * 0.6))
    code, rep = run_json(run_cli, "resnet8", "-d", str(dev), "--suggest")
    s = rep.devices[0].suggestions
    assert code == 1 and s.widths is None and s.floor is not None
    f = s.floor
    assert f.binding == ["SRAM"] and f.activation_bits == 8 and f.arena_floor_bytes > f.sram_limit_bytes
    assert f.peak_op == a8.peak_op and f.live_at_peak[0].bytes == a8.live_at_peak[0][1]
    res = f.resolution
    assert res is not None and res.method == "reloaded" and res.shape == [1, 3, 32, 32]
    assert res.fits_shape is not None and res.fits_shape[2] < 32 and res.arena_bytes <= f.sram_limit_bytes
    shape = "x".join(map(str, res.fits_shape))
    plan = tmp_path / "at_shape.json"
    plan.write_text(json.dumps({"default": res.widths.default.model_dump(),
                                "layers": {k: v.model_dump() for k, v in res.widths.layers.items()}}))
    code, fits = run_json(run_cli, "resnet8", "-d", str(dev), "--input-shape", shape, "--plan", str(plan))
    assert code == 0 and fits.devices[0].verdict == "FITS"
    bigger = [1, 3, res.fits_shape[2] + 8, res.fits_shape[3] + 8]  # the next size up does not fit
    code, over = run_json(run_cli, "resnet8", "-d", str(dev), "--input-shape", "x".join(map(str, bigger)), "--suggest")
    assert code == 1 and over.devices[0].suggestions.widths is None


def test_flash_floor_and_the_nearest_profile(run_cli, tmp_path: Path) -> None:
    g = load_graph("resnet8")
    dev = profile(tmp_path, "no-flash", flash=RT.code_bytes + 20 * 1024)
    code, rep = run_json(run_cli, "resnet8", "-d", str(dev), "--suggest")
    s = rep.devices[0].suggestions
    assert code == 1 and s.floor is not None and "flash" in s.floor.binding and s.floor.resolution is None
    assert s.floor.flash_floor_bytes > s.floor.flash_limit_bytes and s.floor.weight_bits == 4
    near = s.profile
    assert near is not None and near.device == "stm32h743" and "same SoC" in near.why  # the board it came from
    code, there = run_json(run_cli, "resnet8", "-d", near.device)
    assert code == 0 and there.devices[0].flash_bytes == near.flash_bytes
    assert flash(g, BitAssignment(8, 8)) == near.flash_bytes


@pytest.mark.slow
def test_esp32_s3_points_to_its_psram_variant(run_cli) -> None:
    code, rep = run_json(run_cli, "resnet8", "--input-shape", "1x3x160x160", "-d", "esp32-s3", "--suggest")
    s = rep.devices[0].suggestions
    assert code == 1 and s.profile is not None and s.profile.device == "esp32-s3-psram"
    assert s.floor is not None and s.floor.resolution.fits_shape is not None
    code, there = run_json(run_cli, "resnet8", "--input-shape", "1x3x160x160", "-d", "esp32-s3-psram")
    assert code == 0


def _chain(hw: int, frontend: str = "onnx") -> ModelGraph:
    """Three stride-1 convs on an hw x hw input (activation bytes scale with the input area)."""
    def t(n: str, c: int, kind: str = "activation") -> Tensor:
        return Tensor(n, [1, c, hw, hw], "float32", kind)

    ops, chans = [], [3, 16, 32, 16]
    for i in range(3):
        ws = [chans[i + 1], chans[i], 3, 3]
        ops.append(Op(f"c{i}", "Conv", "conv", [f"t{i}"], [f"t{i + 1}"], weight_shape=ws, bias=chans[i + 1],
                      macs=conv_macs([1, chans[i + 1], hw, hw], ws)))
    tensors = {f"t{i}": t(f"t{i}", c, "input" if i == 0 else "output" if i == 3 else "activation")
               for i, c in enumerate(chans)}
    return ModelGraph("chain", frontend, ops, tensors, ["t0"], ["t3"])


def test_a_model_that_cannot_be_reloaded_gets_a_scaled_estimate(tmp_path: Path) -> None:
    g = _chain(64)
    dev = load_profile(profile(tmp_path, "scaled", sram=40 * 1024))
    rt = dev.runtime()
    bits = BitAssignment(8, 8)
    rep = check_report(g, bits, [dev])
    s = suggest_for(g, bits, dev, rt, PlanRules.from_runtime(rt), [], reload=None)
    assert rep.devices[0].verdict == "OOM" and s.floor is not None
    res = s.floor.resolution
    assert res.method == "scaled" and res.fits_shape is not None and res.fits_shape[2] < 64
    true = plan_arena_for(_chain(res.fits_shape[2]), bits, rt).arena_bytes
    assert true <= s.floor.sram_limit_bytes and abs(true - res.arena_bytes) / true < 0.05


def test_ops_the_runtime_cannot_run_are_a_note_not_a_widths_plan() -> None:
    g = _chain(8)
    dev = get_device("stm32h743")
    rt = dev.runtime().model_copy(update={"ops": ["fc"]})
    s = suggest_for(g, BitAssignment(8, 8), dev, rt, PlanRules.from_runtime(rt), [get_device("raspberry-pi-5")])
    assert s.widths is None and s.floor is None and "cannot run op class(es) conv" in s.notes[0]
    assert s.profile is not None and s.profile.device == "raspberry-pi-5"


def test_suggestions_render_in_the_report(tmp_path: Path) -> None:
    from tap_edge.backends import plan_target
    from tap_edge.report import build_report

    g = load_graph("resnet8")
    dev = load_profile(profile(tmp_path, "tiny", sram=8 * 1024))
    bits = BitAssignment(8, 8)
    rep = suggest_report(check_report(g, bits, [dev]), g, bits, [dev], rules_for=plan_target,
                         candidates=[get_device("stm32h743")])
    html = build_report([rep])
    assert "What would make it fit" in html and "No widths plan fits" in html and "stm32h743" in html
    assert CheckReport.from_dict(json.loads(rep.to_json())).devices[0].suggestions == rep.devices[0].suggestions


def test_check_without_suggest_has_no_suggestions_and_flag_needs_it(run_cli, tmp_path: Path) -> None:
    code, rep = run_json(run_cli, "resnet8", "-d", str(profile(tmp_path, "t", sram=8 * 1024)))
    assert code == 1 and rep.devices[0].suggestions is None
    r = run_cli("check", "resnet8", "-d", "stm32h743", "--suggest-plans", str(tmp_path))
    assert r.code == 2 and "--suggest-plans without --suggest" in r.err


def test_plan_refusals_name_a_fix_for_the_device(run_cli, tmp_path: Path) -> None:
    import numpy as np

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):
        np.save(calib / f"x{i}.npy", np.random.default_rng(i).standard_normal((3, 32, 32)).astype(np.float32))
    base = ["plan", "resnet8", "--calib", str(calib), "--calib-samples", "4", "--out", str(tmp_path / "p.json")]
    r = run_cli(*base, "-d", "stm32h743", "--flash", "100KB")
    assert r.code == 2 and "raise the flash budget" in r.err and "stm32h743 has 2.0 MiB" in r.err
    r = run_cli(*base, "-d", str(profile(tmp_path, "tiny2", sram=8 * 1024)))
    assert r.code == 2 and "smallest achievable" in r.err and "onnxruntime" not in r.err
    assert "an input of about 1x3x" in r.err and "e.g. stm32h743" not in r.err.split("an input")[0]
    r = run_cli(*base, "-d", "stm32h743", "--pin", "fc=w4")
    assert r.code == 2 and "pin one of the widths it can take: w8a8, w8a16" in r.err
    r = run_cli(*base, "-d", "stm32h743", "--pin", "stage1.conv=w4")
    assert r.code == 2 and "close matches: stage1.conv" in r.err
