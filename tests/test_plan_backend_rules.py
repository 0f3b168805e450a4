"""Plans their backend builds: the backends' rules (tflite: one activation width, int4 on conv only, int4 with
8-bit activations on TFLite Micro; onnxruntime and tvm per layer), the allocator's new constraints (rules per
op class, one activation width for all layers, pins) exact against brute force, the build refusing exactly
what the rules forbid, and (slow) plan -> compile --backend tflite -> measure on TFLite Micro devices."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from tap_edge.backends import get_backend, plan_target
from tap_edge.core.errors import UserError
from tap_edge.devices import Runtime, get_device
from tap_edge.fit.bits import BitAssignment, LayerBits
from tap_edge.fit.footprint import flash_breakdown, plan_arena_for
from tap_edge.graph.graph import ModelGraph, Op, Tensor, conv_macs
from tap_edge.plan.allocate import InfeasibleBudget, _Program, allocate
from tap_edge.plan.budgets import Budgets
from tap_edge.plan.rules import PlanRules

W = (4, 8)
A = (8, 16)


def _t(name: str, shape: list[int], kind: str = "activation") -> Tensor:
    return Tensor(name, shape, "float32", kind)


def _conv(name: str, inp: str, out: str, cin: int, cout: int, k: int, hw: int, dw: bool = False) -> Op:
    ws = [cout, 1, k, k] if dw else [cout, cin, k, k]
    return Op(name, "Conv", "dwconv" if dw else "conv", [inp], [out], weight_shape=ws, bias=cout,
              macs=conv_macs([1, cout, hw, hw], ws), module=name)


def graph_with_preamble(rng: random.Random) -> ModelGraph:
    """A small random CNN whose input goes through a non-layer op first (a PAD), so some tensors take the
    default activation width; a residual add; a pool, a reshape and an fc."""
    hw, ch = rng.choice([4, 6]), rng.choice([2, 3])
    ops = [Op("pre", "Pad", "pad", ["x0"], ["x"])]
    tensors = {"x0": _t("x0", [1, ch, hw, hw], "input"), "x": _t("x", [1, ch, hw + 2, hw + 2])}
    cur, n = "x", rng.randint(2, 4)
    for i in range(n):
        dw = i > 0 and rng.random() < 0.4
        cout = ch if dw else rng.choice([4, 8, 12])
        out = f"t{i}"
        ops.append(_conv(f"l{i}", cur, out, ch, cout, rng.choice([1, 3]), hw + 2, dw))
        tensors[out] = _t(out, [1, cout, hw + 2, hw + 2])
        if i and cout == ch and rng.random() < 0.5:
            tensors[f"r{i}"] = _t(f"r{i}", [1, cout, hw + 2, hw + 2])
            ops.append(Op(f"add{i}", "Add", "add", [out, cur], [f"r{i}"]))
            out = f"r{i}"
        cur, ch = out, cout
    ops += [Op("pool", "GlobalAveragePool", "global_pool", [cur], ["p"]),
            Op("flat", "Reshape", "reshape", ["p"], ["q"]),
            Op("fc", "Gemm", "fc", ["q"], ["y"], weight_shape=[5, ch], bias=5, macs=5 * ch, module="fc")]
    tensors.update(p=_t("p", [1, ch, 1, 1]), q=_t("q", [1, ch]), y=_t("y", [1, 5], "output"))
    return ModelGraph("pre", "test", ops, tensors, ["x0"], ["y"])


def runtime(**kw: object) -> Runtime:
    args = {"name": "generic", "weights": {"default": list(W)}, "activations": {"default": list(A)}, **kw}
    return Runtime(**args)


def tflite_like(rt: Runtime) -> PlanRules:
    """The shape of the tflite backend's TFLite Micro rules on a generic runtime."""
    return PlanRules.of(rt.name, "test", {"conv": {(4, 8), (8, 8), (8, 16)}, "default": {(8, 8), (8, 16)}},
                        one_activation_width=True)


def brute(graph: ModelGraph, costs: dict, rt: Runtime, rules: PlanRules, budgets: Budgets,
          pins: dict | None = None) -> float | None:
    """The best cost over every assignment the rules allow (one activation width, default width included)."""
    qops = graph.quantizable_ops()
    best = None
    for combo in itertools.product(*[sorted(rules.allowed(op.op_class)) for op in qops]):
        acts = {a for _, a in combo}
        if rules.one_activation_width and len(acts) > 1:
            continue
        if pins and any(op.name in pins and (c[0], c[1]) != pins[op.name] for op, c in zip(qops, combo, strict=True)):
            continue
        bits = BitAssignment(8, next(iter(acts)) if rules.one_activation_width else 8,
                             {op.name: LayerBits(*c) for op, c in zip(qops, combo, strict=True)})
        fl = flash_breakdown(graph, bits, rt.code_bytes).total_bytes
        ar = plan_arena_for(graph, bits, rt)
        if fl > budgets.flash_bytes or ar.peak_live_bytes > budgets.sram_bytes:
            continue
        cost = sum(costs[op.name][c] for op, c in zip(qops, combo, strict=True))
        best = cost if best is None else min(best, cost)
    return best


def random_costs(graph: ModelGraph, rng: random.Random) -> dict:
    return {op.name: {(w, a): rng.random() for w in W for a in A} for op in graph.quantizable_ops()}


# ---- the allocator's new constraints ----------------------------------------------------------------------
def test_one_activation_width_live_bytes_match_plan_arena() -> None:
    """With one shared width the program's live bytes equal plan_arena's at that width as the default: the
    tensors before the first layer (here the PAD's) follow the shared width."""
    rng = random.Random(5)
    for _ in range(8):
        g = graph_with_preamble(rng)
        rt = runtime(scratch=rng.choice(["none", "cmsis-nn"]), arena_alignment=rng.choice([1, 16]))
        prog = _Program(g, random_costs(g, rng), rt, rules=tflite_like(rt))
        assert prog.nz == 2
        for a in A:
            pick = [next(j for j, c in enumerate(lay.choices) if c[1] == a) for lay in prog.layers]
            ev = prog.evaluate(pick)
            assert ev.bits.default_a == a
            assert np.allclose(prog.live_bytes(pick), ev.arena.live_bytes_per_step)
            assert plan_arena_for(g, ev.bits, rt).live_bytes_per_step == ev.arena.live_bytes_per_step


def test_one_activation_width_matches_brute_force() -> None:
    rng = random.Random(11)
    feasible = infeasible = 0
    for _ in range(25):
        g = graph_with_preamble(rng)
        rt = runtime(scratch=rng.choice(["none", "cmsis-nn"]))
        rules = tflite_like(rt)
        costs = random_costs(g, rng)
        hi = Budgets(10**9, 10**9)
        lo_flash = flash_breakdown(g, BitAssignment(4, 8), 0).total_bytes
        hi_flash = flash_breakdown(g, BitAssignment(8, 8), 0).total_bytes
        lo_sram = plan_arena_for(g, BitAssignment(8, 8), rt).peak_live_bytes
        b = Budgets(rng.randint(lo_flash, hi_flash), int(lo_sram * rng.uniform(0.9, 2.2)))
        best = brute(g, costs, rt, rules, b)
        if best is None:
            infeasible += 1
            with pytest.raises(InfeasibleBudget):
                allocate(g, costs, rt, b, rules=rules, check_arena=False)
            continue
        feasible += 1
        al = allocate(g, costs, rt, b, rules=rules, check_arena=False)
        assert math.isclose(al.objective, best, rel_tol=1e-7, abs_tol=1e-9)
        assert len({v["a"] for v in al.layers.values()}) == 1 and al.default_a == next(iter(al.layers.values()))["a"]
        assert all((v["w"], v["a"]) in rules.allowed("fc" if k == "fc" else "conv") for k, v in al.layers.items())
        assert al.flash_bytes <= b.flash_bytes and al.peak_live_bytes <= b.sram_bytes
        assert brute(g, costs, rt, rules, hi) is not None
    assert feasible >= 8 and infeasible >= 2


def test_rules_restrict_choices_per_op_class() -> None:
    g = graph_with_preamble(random.Random(2))
    rt = runtime()
    rules = PlanRules.of(rt.name, "test", {"conv": {(4, 8), (8, 8)}, "default": {(8, 8)}})
    costs = {op.name: {(w, a): (8 - w) * 0.0 + (1.0 if w == 8 else 0.0) for w in W for a in A}
             for op in g.quantizable_ops()}  # 4-bit is free: every layer that may takes it
    al = allocate(g, costs, rt, Budgets(None, None), rules=rules)
    for k, v in al.layers.items():
        op = next(o for o in g.ops if o.name == k)
        assert (v["w"], v["a"]) == ((4, 8) if op.op_class == "conv" else (8, 8))


def test_pins_fix_layers_and_name_close_matches() -> None:
    rng = random.Random(9)
    g = graph_with_preamble(rng)
    rt = runtime()
    costs = random_costs(g, rng)
    al = allocate(g, costs, rt, Budgets(None, None), pins={"l0": (4, None), "fc": (8, 16)})
    assert al.layers["l0"]["w"] == 4 and al.layers["fc"] == {"w": 8, "a": 16}
    b = Budgets(10**9, 10**9)
    assert math.isclose(al.objective, brute(g, costs, rt, PlanRules.from_runtime(rt), b,
                                            {"fc": (8, 16), "l0": (4, al.layers["l0"]["a"])}), rel_tol=1e-7)
    with pytest.raises(UserError, match=r"pinned layer 'l00' is not a layer of pre.*close matches: l0"):
        allocate(g, costs, rt, Budgets(None, None), pins={"l00": (4, None)})
    with pytest.raises(UserError, match=r"layer 'fc' \(fc\) is pinned at w4a8.*pin one of the widths it can take: "
                                        r"w8a8, w8a16"):
        allocate(g, costs, rt, Budgets(None, None), rules=tflite_like(rt), pins={"fc": (4, 8)})
    with pytest.raises(UserError, match="no width suits every layer"):
        allocate(g, costs, rt, Budgets(None, None), rules=tflite_like(rt), pins={"fc": (8, 16), "l0": (4, 8)})


def test_also_fits_keeps_the_plan_inside_the_measured_kernels_arena() -> None:
    """CMSIS-NN reads int4 filters packed; TFLite Micro's reference kernels (what measure runs) unpack them into
    scratch: with the reference runtime in ``also_fits`` the plan's arena fits both."""
    hw = 8
    ops = [_conv("c0", "x", "t0", 8, 64, 1, hw), _conv("c1", "t0", "t1", 64, 64, 1, hw)]
    tensors = {"x": _t("x", [1, 8, hw, hw], "input"), "t0": _t("t0", [1, 64, hw, hw]),
               "t1": _t("t1", [1, 64, hw, hw], "output")}
    g = ModelGraph("one-by-one", "test", ops, tensors, ["x"], ["t1"])
    device_rt = runtime(name="tflm-dev", weights={"default": [4, 8]}, activations={"default": [8]},
                        scratch="cmsis-nn")
    reference = device_rt.model_copy(update={"name": "tflm-dev@host-reference", "scratch": "tflm"})
    w4 = BitAssignment(4, 8)
    dev4, ref4 = plan_arena_for(g, w4, device_rt).arena_bytes, plan_arena_for(g, w4, reference).arena_bytes
    ref8 = plan_arena_for(g, BitAssignment(8, 8), reference).arena_bytes
    assert dev4 < ref4 and ref8 < ref4  # the unpacked int4 filter is the difference
    budget = Budgets(None, (max(dev4, ref8) + ref4) // 2)
    costs = {op.name: {(4, 8): 0.0, (8, 8): op.weight_params * 1.0} for op in g.quantizable_ops()}
    plain = allocate(g, costs, device_rt, budget)
    assert plain.layers["c1"]["w"] == 4 and plan_arena_for(g, plain.bits(), reference).arena_bytes > budget.sram_bytes
    rules = PlanRules.from_runtime(device_rt)
    rules = PlanRules(runtime=rules.runtime, choices=rules.choices, also_fits=(reference,))
    al = allocate(g, costs, device_rt, budget, rules=rules)
    assert plan_arena_for(g, al.bits(), reference).arena_bytes <= budget.sram_bytes
    assert al.arena_bytes <= budget.sram_bytes and any("also_sram" in t for t in al.tightenings)
    tfl = get_backend("tflite").plan_rules(get_device("stm32h743").runtime())
    assert [r.scratch for r in tfl.also_fits] == ["tflm"] and tfl.to_info().also_fits


# ---- the backends' rules --------------------------------------------------------------------------------------
def test_tflite_rules_on_tflite_micro_and_litert() -> None:
    rt, rules = plan_target(get_device("stm32h743"))
    table = PlanRules.from_runtime(rt)  # what the runtime runs; the backend builds a part of it
    assert rt.name == "tflm-cmsis-nn" and rules.backend == "tflite" and rules.one_activation_width
    assert rules.allowed("conv") == {(4, 8), (8, 8), (8, 16), (32, 32)} & table.allowed("conv")
    assert {(4, 8), (8, 8), (8, 16)} <= rules.allowed("conv")
    for cls in ("dwconv", "fc"):
        assert rules.allowed(cls) == {(8, 8), (8, 16), (32, 32)} & table.allowed(cls)
        assert not any(w == 4 for w, _ in rules.allowed(cls))
    esp_rt, esp = plan_target(get_device("esp32-s3"))  # the backend's rules, within ESP-NN's table
    tflm_build = get_backend("tflite").plan_rules(None)
    for cls in ("conv", "dwconv", "fc", "default"):
        assert esp.allowed(cls) == tflm_build.allowed(cls) & PlanRules.from_runtime(esp_rt).allowed(cls)
    litert = get_backend("tflite").plan_rules(None)  # no device: TFLite Micro's (measure always runs it)
    assert (4, 16) not in litert.allowed("conv")
    pi = get_device("raspberry-pi-5")
    lite_rules = get_backend("tflite").plan_rules(pi.runtime("litert-xnnpack").model_copy(
        update={"weights": {"default": [4, 8, 32]}, "activations": {"default": [8, 16, 32]}}))
    assert (4, 16) in lite_rules.allowed("conv") and (4, 8) not in lite_rules.allowed("fc")


def test_onnxruntime_and_tvm_rules_are_per_layer() -> None:
    pi = get_device("raspberry-pi-5")
    rt, ort = plan_target(pi, runtime="onnxruntime")
    assert ort.backend == "onnxruntime" and not ort.one_activation_width
    assert ort.allowed("fc") == {(4, 8), (8, 8), (32, 32)} and (8, 32) not in ort.allowed("default")
    _, tvm = plan_target(pi, backend="tvm")
    assert all(w >= 8 for v in tvm.choices.values() for w, _ in v)
    with pytest.raises(UserError, match="does not build for runtime 'onnxruntime'"):
        plan_target(pi, runtime="onnxruntime", backend="tflite")
    _, none = plan_target(get_device("nucleo-l4r5zi"))  # x-cube-ai: no tap-edge backend builds for it
    assert none.backend is None and none.runtime == "x-cube-ai"


def test_builds_refuse_exactly_what_the_rules_forbid() -> None:
    from tap_edge.graph.models import load_graph

    g = load_graph("ds_cnn")
    tfl = get_backend("tflite")
    dev = get_device("stm32h743")
    ok = [BitAssignment.parse("w8a8"), BitAssignment.parse("w8a16"),
          BitAssignment(8, 8, {"features.6": LayerBits(4, 8)})]
    for bits in ok:
        tfl.check_buildable(g, bits, dev)
    refused = {
        "w6a8": BitAssignment.parse("w6a8"),
        "dwconv at w4": BitAssignment(8, 8, {"features.3": LayerBits(4, 8)}),
        "fc at w4": BitAssignment(8, 8, {"fc": LayerBits(4, 8)}),
        "int4 at 16x8": BitAssignment(8, 16, {"features.6": LayerBits(4, 16)}),
        "two activation widths": BitAssignment(8, 8, {"features.6": LayerBits(8, 16)}),
        # ds_cnn's first conv has one input channel: the converter builds it as DEPTHWISE_CONV_2D
        "one-channel conv at w4": BitAssignment(8, 8, {"features.0": LayerBits(4, 8)}),
    }
    for what, bits in refused.items():
        with pytest.raises(UserError) as e:
            tfl.check_buildable(g, bits, dev)
        assert "onnxruntime" not in str(e.value), what  # the hint is a fix for this MCU
        assert "tap-edge plan -d stm32h743 --backend tflite" in e.value.hint, what
    with pytest.raises(UserError, match=r"'features.0' \(conv \(built as dwconv\)\) at w4a8"):
        tfl.check_buildable(g, refused["one-channel conv at w4"], dev)
    assert tfl._mode(g, BitAssignment.parse("fp32")) == "float"
    assert tfl._mode(g, BitAssignment.parse("w8a8")) == "int8"
    assert tfl._mode(g, BitAssignment.parse("w8a16")) == "mixed"


def test_plans_made_for_a_device_pass_its_build_check() -> None:
    """Whatever the budget, a plan made with a device's rules is accepted by the backend's build check."""
    from tap_edge.graph.models import load_graph
    from tap_edge.plan.budgets import budgets_from_device, flash_of_uniform
    from tap_edge.plan.document import plan_document

    rng = random.Random(0)
    for model in ("resnet8", "ds_cnn"):
        g = load_graph(model)
        costs = {op.name: {(w, a): rng.random() * (9 - w) + (0.3 if a == 8 else 0.0) for w in (2, 4, 8, 16, 32)
                           for a in (8, 16, 32)} for op in g.quantizable_ops()}
        for dev_id in ("stm32h743", "nrf52840", "esp32-s3"):
            dev = get_device(dev_id)
            rt, rules = plan_target(dev)
            base = budgets_from_device(dev)
            for bits in (4, 6, 8):
                b = Budgets(flash_of_uniform(g, bits, rt), base.sram_bytes)
                try:
                    al = allocate(g, costs, rt, b, rules=rules)
                except InfeasibleBudget:
                    assert bits < 8 or dev_id == "esp32-s3"
                    continue
                doc = plan_document(al, g, model=model, device=dev_id, runtime=rt.name, proxy="test", budgets=b,
                                    rules=rules)
                plan = BitAssignment.from_plan(json.loads(doc.to_json()))
                get_backend("tflite").check_buildable(g, plan, dev)
                assert doc.backend == "tflite" and doc.rules is not None and doc.rules.one_activation_width


# ---- plan -> compile -> measure (TFLite Micro) ----------------------------------------------------------------------
def _has_tflite() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "tflite_micro", "ai_edge_litert"))


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(16):
        np.save(d / f"x{i:02d}.npy", rng.standard_normal((3, 32, 32)).astype(np.float32))
    return d


def _flash_range(model: str, device: str) -> tuple[int, int]:
    """The flash total of ``model`` on ``device`` with every layer the backend builds at 4 bits at 4 bits (the
    smallest its rules allow), and at uniform 8 bits."""
    from tap_edge.graph.models import load_graph

    g = load_graph(model)
    rt, rules = plan_target(get_device(device))
    low = BitAssignment(8, 8, {op.module: LayerBits(4, 8) for op in g.quantizable_ops()
                               if (4, 8) in rules.allowed_for(op)})
    return (flash_breakdown(g, low, rt.code_bytes, runtime=rt).total_bytes,
            flash_breakdown(g, BitAssignment(8, 8), rt.code_bytes, runtime=rt).total_bytes)


def _tight_profile(tmp_path: Path, name: str, model: str, flash_share: float, sram_factor: float) -> Path:
    """An STM32H743 (CMSIS-NN runtime) whose flash is ``flash_share`` of the way from the smallest flash the
    tflite backend can build for ``model`` to its 8-bit flash, and whose arena region is ``sram_factor`` x the
    model's w8a8 arena: the planner must trade widths for both."""
    import yaml

    from tap_edge.graph.models import load_graph

    g = load_graph(model)
    dev = get_device("stm32h743")
    rt = dev.runtime()
    low, high = _flash_range(model, "stm32h743")
    data = dev.model_dump(mode="json", exclude_none=True)
    data.update(id=name, name=name, reserved=[])
    sram = int(sram_factor * plan_arena_for(g, BitAssignment(8, 8), rt).arena_bytes)
    for m in data["memories"]:
        if m["name"] == "FLASH":
            m["size"] = int(low + flash_share * (high - low))
        elif "arena" in m["holds"]:
            m["size"] = sram if m["name"] == "AXI_SRAM" else min(m["size"], sram // 2)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


#: (device or (tight profile name, flash share, SRAM factor), flash share of the plan's budget or None for the
#: device's): from the smallest flash the backend can build (all 4-bit that may be) to 8-bit, on bundled TFLite
#: Micro devices, the ESP32-S3, and boards of one's own whose flash and arena both bind.
SWEEP = [
    ("stm32h743", 0.0),
    ("stm32h743", 0.4),
    ("nrf52840", 0.75),
    ("esp32-s3", None),
    (("tight-a", 0.5, 1.2), None),
    (("tight-b", 0.1, 1.6), None),
]


@pytest.mark.slow
@pytest.mark.skipif(not _has_tflite(), reason="pip install 'tap-edge[tflite]'")
@pytest.mark.parametrize("model", ["resnet8", "ds_cnn"])
def test_plan_compile_measure_fits_on_tflite_micro(model: str, run_cli, tmp_path: Path) -> None:
    """plan -> compile --backend tflite -> measure never fails on a constraint the planner could have known:
    every plan builds, TFLite Micro runs it, and the measured verdict is FITS whenever plan said it fits."""
    from tap_edge.graph.models import load_model

    rng = np.random.default_rng(0)
    calib = tmp_path / "calib"
    calib.mkdir()
    shape = load_model(model).input_shape[1:]
    for i in range(8):
        np.save(calib / f"x{i}.npy", rng.standard_normal(shape).astype(np.float32))
    planned = 0
    for target, share in SWEEP:
        dev = str(_tight_profile(tmp_path, target[0], model, target[1], target[2])) if isinstance(target, tuple) \
            else target
        flags = []
        if share is not None:
            low, high = _flash_range(model, dev)
            flags = ["--flash", str(int(low + share * (high - low)))]
        out = tmp_path / f"{Path(dev).stem}-{share}.plan.json"
        r = run_cli("plan", model, "-d", dev, "--calib", str(calib), "--calib-samples", "8", "--out", str(out), "-q",
                    *flags)
        assert r.code == 0, f"{dev} {flags}: {r.err}"
        planned += 1
        plan = json.loads(out.read_text())
        assert plan["backend"] == "tflite" and len({v["a"] for v in plan["layers"].values()}) == 1
        build = tmp_path / f"build-{out.stem}"
        r = run_cli("compile", model, "--backend", "tflite", "--plan", str(out), "-d", dev, "--calib", str(calib),
                    "--calib-samples", "8", "--check-samples", "8", "--out-dir", str(build), "-q")
        assert r.code == 0, f"{dev} {flags}: compile refused a plan made for it: {r.err}"
        artifact = next(build.glob("*.tflite"))
        r = run_cli("measure", str(artifact), "-d", dev, "--runs", "2", "--warmup", "1", "--json")
        rep = json.loads(r.out)
        assert rep["verdict"] == "FITS", f"{dev} {flags}: plan said it fits, measured {rep['verdict']}: " \
                                         f"{rep['problems']}"
    assert planned == len(SWEEP)
