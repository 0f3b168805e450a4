"""The allocator: exact against brute force, device bit-width rules, budgets never exceeded, infeasibility
reported with the smallest achievable figures, plan.json readable by BitAssignment."""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import replace

import numpy as np
import pytest

from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes
from tap_edge.devices import Runtime, get_device
from tap_edge.documents import Plan
from tap_edge.fit.bits import BitAssignment, LayerBits
from tap_edge.fit.checker import Checker, unsupported_ops
from tap_edge.fit.memory import flash_breakdown, plan_arena
from tap_edge.graph.graph import ModelGraph, Op, Tensor, conv_macs
from tap_edge.plan.allocate import Allocation, InfeasibleBudget, _Program, allocate, pareto_sweep
from tap_edge.plan.budgets import Budgets, BudgetSpec, budgets_from_device, flash_of_uniform, resolve_budgets
from tap_edge.plan.document import plan_document

W_ALL = (2, 3, 4, 5, 6, 7, 8)
A_ALL = (8, 16)


# ---- hand-built graphs ------------------------------------------------------------------------------------
def _conv(name: str, inp: str, out: str, cin: int, cout: int, k: int, hw: int, *, dw: bool = False,
          module: str | None = None) -> Op:
    ws = [cout, 1, k, k] if dw else [cout, cin, k, k]
    return Op(name, "Conv", "dwconv" if dw else "conv", [inp], [out], weight_shape=ws, bias=cout,
              macs=conv_macs([1, cout, hw, hw], ws), module=module or name)


def _t(name: str, shape: list[int], kind: str = "activation") -> Tensor:
    return Tensor(name, shape, "float32", kind)


def chain_graph() -> ModelGraph:
    """conv 3x3 -> depthwise 5x5 (CMSIS-NN scratch) -> conv 1x1 -> global pool -> reshape -> fc."""
    ops = [
        _conv("c1", "x", "t1", 3, 8, 3, 16),
        _conv("dw", "t1", "t2", 8, 8, 5, 16, dw=True),
        _conv("c2", "t2", "t3", 8, 16, 1, 16),
        Op("pool", "GlobalAveragePool", "global_pool", ["t3"], ["t4"]),
        Op("flat", "Reshape", "reshape", ["t4"], ["t5"]),
        Op("fc", "Gemm", "fc", ["t5"], ["y"], weight_shape=[10, 16], bias=10, macs=160, module="head.fc"),
    ]
    tensors = {"x": _t("x", [1, 3, 16, 16], "input"), "t1": _t("t1", [1, 8, 16, 16]),
               "t2": _t("t2", [1, 8, 16, 16]), "t3": _t("t3", [1, 16, 16, 16]), "t4": _t("t4", [1, 16, 1, 1]),
               "t5": _t("t5", [1, 16]), "y": _t("y", [1, 10], "output")}
    return ModelGraph("chain", "test", ops, tensors, ["x"], ["y"])


def residual_graph() -> ModelGraph:
    """Stem, an inverted-residual block whose input stays alive over the block, add, head; the add inherits
    the max of two layers' activation widths."""
    ops = [
        _conv("stem", "x", "a", 3, 16, 3, 12),
        _conv("expand", "a", "b", 16, 48, 1, 12),
        _conv("dw", "b", "c", 48, 48, 3, 12, dw=True),
        _conv("project", "c", "d", 48, 16, 1, 12),
        Op("add", "Add", "add", ["d", "a"], ["e"]),
        _conv("head", "e", "f", 16, 32, 1, 12),
        Op("pool", "GlobalAveragePool", "global_pool", ["f"], ["g"]),
        Op("fc", "Gemm", "fc", ["g"], ["y"], weight_shape=[10, 32], bias=10, macs=320),
    ]
    sh = {"x": [1, 3, 12, 12], "a": [1, 16, 12, 12], "b": [1, 48, 12, 12], "c": [1, 48, 12, 12],
          "d": [1, 16, 12, 12], "e": [1, 16, 12, 12], "f": [1, 32, 12, 12], "g": [1, 32], "y": [1, 10]}
    kinds = {"x": "input", "y": "output"}
    tensors = {k: _t(k, v, kinds.get(k, "activation")) for k, v in sh.items()}
    return ModelGraph("residual", "test", ops, tensors, ["x"], ["y"])


def random_graph(rng: random.Random, n_layers: int) -> ModelGraph:
    """A random small CNN: convs / depthwise convs, sometimes a residual add, a pool, a reshape and an fc."""
    hw = rng.choice([4, 6, 8])
    ch = rng.choice([2, 3, 4])
    ops: list[Op] = []
    tensors = {"x": _t("x", [1, ch, hw, hw], "input")}
    cur = "x"
    for i in range(n_layers - 1):
        dw = i > 0 and rng.random() < 0.3
        cout = ch if dw else rng.choice([4, 8, 12, 16])
        k = rng.choice([1, 3, 5])
        out = f"t{i}"
        ops.append(_conv(f"l{i}", cur, out, ch, cout, k, hw, dw=dw))
        tensors[out] = _t(out, [1, cout, hw, hw])
        if i > 0 and cout == ch and rng.random() < 0.6:
            tensors[f"r{i}"] = _t(f"r{i}", [1, cout, hw, hw])
            ops.append(Op(f"add{i}", "Add", "add", [out, cur], [f"r{i}"]))
            out = f"r{i}"
        cur, ch = out, cout
    ops.append(Op("pool", "GlobalAveragePool", "global_pool", [cur], ["p"]))
    tensors["p"] = _t("p", [1, ch, 1, 1])
    ops.append(Op("flat", "Reshape", "reshape", ["p"], ["q"]))
    tensors["q"] = _t("q", [1, ch])
    ops.append(Op("fc", "Gemm", "fc", ["q"], ["y"], weight_shape=[5, ch], bias=5, macs=5 * ch))
    tensors["y"] = _t("y", [1, 5], "output")
    return ModelGraph("random", "test", ops, tensors, ["x"], ["y"])


def uniform_costs(graph: ModelGraph, ws: tuple[int, ...] = W_ALL, acts: tuple[int, ...] = A_ALL) -> dict:
    """Lower bits cost more (params x 2^-2w); 8-bit activations cost a little more than 16-bit ones."""
    out = {}
    for op in graph.quantizable_ops():
        n = sum(graph.tensors[t].numel for t in op.outputs)
        out[op.name] = {(w, a): op.weight_params * 2.0 ** (-2 * w) + n * 2.0 ** (-a)
                        for w in ws for a in acts}
    return out


def generic_runtime(**kw) -> Runtime:
    args = {"name": "generic", "weights": {"default": list(W_ALL)}, "activations": {"default": list(A_ALL)}}
    args.update(kw)
    return Runtime(**args)


# ---- brute force ------------------------------------------------------------------------------------------
def brute_force(graph: ModelGraph, costs: dict, runtime: Runtime) -> list[tuple[float, int, int, int, dict]]:
    """(cost, flash total, peak live, arena, layers) of every assignment the runtime supports."""
    qops = graph.quantizable_ops()
    options = [[c for c in costs[op.name] if c[0] in runtime.weight_bits(op.op_class)
                and c[1] in runtime.activation_bits(op.op_class)] for op in qops]
    rows = []
    for combo in itertools.product(*options):
        layers = {(op.module or op.name): LayerBits(w, a) for op, (w, a) in zip(qops, combo, strict=True)}
        bits = BitAssignment(8, 8, layers)
        if unsupported_ops(graph, bits, runtime):
            continue
        fl = flash_breakdown(graph, bits, runtime.code_bytes).total_bytes
        ar = plan_arena(graph, bits, alignment=runtime.arena_alignment, alias_inplace=runtime.alias_inplace,
                        scratch_model=runtime.scratch)
        cost = sum(costs[op.name][c] for op, c in zip(qops, combo, strict=True))
        rows.append((cost, fl, ar.peak_live_bytes, ar.arena_bytes, layers))
    return rows


def recompute(alloc: Allocation, graph: ModelGraph, runtime: Runtime) -> tuple[int, int, int]:
    """Flash total, arena and peak live of a plan read back through plan.json and BitAssignment.from_plan."""
    doc = plan_document(alloc, graph, model=graph.name, device="test", runtime=runtime.name, proxy="test",
                        budgets=alloc.budgets, timing={})
    plan = json.loads(doc.to_json())
    bits = BitAssignment.from_plan(plan)
    fl = flash_breakdown(graph, bits, runtime.code_bytes).total_bytes
    ar = plan_arena(graph, bits, alignment=runtime.arena_alignment, alias_inplace=runtime.alias_inplace,
                    scratch_model=runtime.scratch)
    return fl, ar.arena_bytes, ar.peak_live_bytes


def _random_instance(rng: random.Random) -> tuple[ModelGraph, dict, Runtime]:
    g = random_graph(rng, rng.randint(3, 5))
    costs = {}
    for op in g.quantizable_ops():
        choices = rng.sample([(w, a) for w in (2, 4, 6, 8) for a in A_ALL], rng.randint(2, 3))
        costs[op.name] = {c: rng.random() for c in choices}
    rt = generic_runtime(scratch=rng.choice(["none", "cmsis-nn"]), arena_alignment=rng.choice([1, 4, 16]),
                         alias_inplace=rng.random() < 0.5, code_bytes=rng.choice([0, 1000]))
    return g, costs, rt


def _quantile(values: list[int], rng: random.Random) -> int:
    lo, hi = min(values), max(values)
    return int(lo + (hi - lo) * rng.uniform(-0.1, 0.7))


# ---- exactness --------------------------------------------------------------------------------------------
def test_program_live_bytes_match_plan_arena() -> None:
    """The program's per-step live bytes equal memory.plan_arena's, for any choice, on every graph type."""
    rng = random.Random(3)
    graphs = [chain_graph(), residual_graph()] + [random_graph(rng, rng.randint(3, 6)) for _ in range(6)]
    for g in graphs:
        for rt in (generic_runtime(scratch="cmsis-nn", alias_inplace=True, arena_alignment=16),
                   generic_runtime(activations={"default": [8, 16, 32]}, weights={"default": [4, 8, 32]},
                                   arena_alignment=1)):
            costs = uniform_costs(g, tuple(rt.weights["default"]), tuple(rt.activations["default"]))
            prog = _Program(g, costs, rt)
            for _ in range(10):
                pick = [rng.randrange(len(lay.choices)) for lay in prog.layers]
                ev = prog.evaluate(pick)
                assert np.allclose(prog.live_bytes(pick), ev.arena.live_bytes_per_step)
                picked = sum(lay.flash[j] for lay, j in zip(prog.layers, pick, strict=True))
                flash = prog.flash_fixed + rt.code_bytes + picked
                assert flash == ev.flash.total_bytes


def test_ilp_matches_brute_force_on_random_instances() -> None:
    """Same optimum as enumeration (peak live bytes as the SRAM measure); infeasible exactly when nothing
    fits; with the greedy-arena measure the plan fits and is never better than the true optimum."""
    rng = random.Random(12345)
    n_infeasible = n_feasible = 0
    for _ in range(30):
        g, costs, rt = _random_instance(rng)
        rows = brute_force(g, costs, rt)
        fb = _quantile([r[1] for r in rows], rng)
        sb = _quantile([r[2] for r in rows], rng)
        budgets = Budgets(fb, sb)
        fits_live = [r for r in rows if r[1] <= fb and r[2] <= sb]
        if not fits_live:
            n_infeasible += 1
            with pytest.raises(InfeasibleBudget):
                allocate(g, costs, rt, budgets, check_arena=False)
        else:
            n_feasible += 1
            al = allocate(g, costs, rt, budgets, check_arena=False)
            best = min(r[0] for r in fits_live)
            assert al.status == "optimal"
            assert math.isclose(al.objective, best, rel_tol=1e-7, abs_tol=1e-9)
            assert al.flash_bytes <= fb and al.peak_live_bytes <= sb
        fits_arena = [r for r in rows if r[1] <= fb and r[3] <= sb]
        try:
            al = allocate(g, costs, rt, budgets)
        except InfeasibleBudget:
            assert not fits_live or any(r[3] > sb for r in fits_live)
            continue
        assert fits_arena and al.arena_bytes <= sb and al.flash_bytes <= fb
        assert al.objective >= min(r[0] for r in fits_arena) - 1e-9
        if not any("sram_steps" in t for t in al.tightenings):  # only exact cuts: the arena optimum
            assert math.isclose(al.objective, min(r[0] for r in fits_arena), rel_tol=1e-7, abs_tol=1e-9)
    assert n_infeasible >= 3 and n_feasible >= 10


def test_bops_and_latency_budgets_against_brute_force() -> None:
    g = residual_graph()
    rt = generic_runtime(weights={"default": [4, 6, 8]})
    costs = uniform_costs(g, (4, 6, 8))
    prog = _Program(g, costs, rt)
    picks = list(itertools.product(*[range(len(lay.choices)) for lay in prog.layers]))
    bops = [int(sum(lay.bops[j] for lay, j in zip(prog.layers, p, strict=True))) for p in picks]
    budget = sorted(bops)[len(bops) // 3]
    best = min(prog.cost_of(list(p)) for p, b in zip(picks, bops, strict=True) if b <= budget)
    al = allocate(g, costs, rt, Budgets(None, None, bops=budget))
    assert al.bops <= budget and math.isclose(al.objective, best, rel_tol=1e-7)
    clock = 100_000_000
    lats = [prog.evaluate(list(p), clock).latency_ms for p in picks[:: max(1, len(picks) // 50)]]
    lat_budget = float(np.median(lats))
    al = allocate(g, costs, rt, Budgets(None, None, latency_ms=lat_budget, clock_hz=clock))
    assert al.latency_ms is not None and al.latency_ms <= lat_budget


def test_arena_fragmentation_is_tightened_away() -> None:
    """A graph whose greedy arena exceeds its peak live bytes: the returned plan's arena still fits, and the
    activation-pattern cuts find the true optimum."""
    def fc(name: str, i: str, o: str, cin: int, cout: int) -> Op:
        return Op(name, "Gemm", "fc", [i], [o], weight_shape=[cout, cin], macs=cin * cout)

    ops = [fc("f0", "x", "t0", 40, 80), fc("f1", "t0", "t1", 80, 80),
           Op("add", "Add", "add", ["t1", "x"], ["t2"]), fc("f3", "t2", "t3", 60, 80)]
    sizes = {"x": 40, "t0": 80, "t1": 80, "t2": 60, "t3": 80}
    g = ModelGraph("frag", "test", ops, {k: _t(k, [1, v]) for k, v in sizes.items()}, ["x"], ["t3"])
    rt = generic_runtime(weights={"default": [8]}, arena_alignment=1)
    rng = random.Random(7)
    for _ in range(40):
        costs = {op.name: {(8, 8): rng.random(), (8, 16): rng.random()} for op in g.quantizable_ops()}
        rows = brute_force(g, costs, rt)
        for sb in sorted({r[3] for r in rows} | {r[2] for r in rows}):
            live_best = min((r for r in rows if r[2] <= sb), key=lambda r: r[0], default=None)
            if live_best is not None and live_best[3] > sb and any(r[3] <= sb for r in rows):
                best = min(r[0] for r in rows if r[3] <= sb)
                al = allocate(g, costs, rt, Budgets(None, sb))
                assert al.arena_bytes <= sb and "arena_cut" in al.tightenings[0]
                assert math.isclose(al.objective, best, rel_tol=1e-7, abs_tol=1e-9)  # cuts keep it exact
                al = allocate(g, costs, rt, Budgets(None, sb), max_cuts=0)  # live-bytes tightening only
                assert al.arena_bytes <= sb and "sram_steps" in al.tightenings[0]
                assert al.objective >= best - 1e-9
                try:  # no repairs allowed: the smallest-SRAM plan, when it fits, is returned as "feasible"
                    al = allocate(g, costs, rt, Budgets(None, sb), max_cuts=0, max_tightenings=0)
                    assert al.status == "feasible" and al.arena_bytes <= sb
                except InfeasibleBudget as e:
                    assert "arena layout" in e.binding
                return
    pytest.fail("no fragmentation case found")


# ---- graphs built by hand ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [chain_graph, residual_graph])
def test_hand_graphs_tight_budgets(make) -> None:
    g = make()
    rt = generic_runtime(scratch="cmsis-nn")
    costs = uniform_costs(g)
    f8 = flash_of_uniform(g, 8, rt)
    f2 = flash_of_uniform(g, 2, rt)
    a8 = plan_arena(g, BitAssignment(8, 8), alignment=16, scratch_model="cmsis-nn").arena_bytes
    a16 = plan_arena(g, BitAssignment(8, 16), alignment=16, scratch_model="cmsis-nn").arena_bytes
    loose = allocate(g, costs, rt, Budgets(f8 * 2, a16 * 2))
    assert all(v == {"w": 8, "a": 16} for v in loose.layers.values())  # cheapest choices when nothing binds
    tight = allocate(g, costs, rt, Budgets((f2 + f8) // 2, (a8 + a16) // 2))
    assert tight.flash_bytes <= (f2 + f8) // 2 and tight.arena_bytes <= (a8 + a16) // 2
    assert tight.objective > loose.objective
    assert {v["a"] for v in tight.layers.values()} <= {8, 16}
    assert set(tight.layers) == {op.module or op.name for op in g.quantizable_ops()}
    fl, ar, _ = recompute(tight, g, rt)
    assert fl == tight.flash_bytes and ar == tight.arena_bytes


def test_residual_add_takes_max_of_inputs() -> None:
    """A 16-bit project layer makes the add's output 16-bit too (the add inherits the max of its inputs):
    the program counts those bytes, so the smallest budget that admits it is exact."""
    ops = [_conv("stem", "x", "a", 4, 16, 1, 8), _conv("project", "a", "d", 16, 16, 1, 8),
           Op("add", "Add", "add", ["d", "a"], ["e"]), _conv("head", "e", "y", 16, 4, 1, 8)]
    sh = {"x": [1, 4, 8, 8], "a": [1, 16, 8, 8], "d": [1, 16, 8, 8], "e": [1, 16, 8, 8], "y": [1, 4, 8, 8]}
    g = ModelGraph("res", "test", ops, {k: _t(k, v) for k, v in sh.items()}, ["x"], ["y"])
    rt = generic_runtime(weights={"default": [8]})
    costs = {op.name: {(8, 8): 0.0} for op in g.quantizable_ops()}
    costs["project"] = {(8, 8): 1.0, (8, 16): 0.0}
    arena16 = plan_arena(g, BitAssignment(8, 8, {"project": LayerBits(8, 16)}), alignment=16)
    assert arena16.peak_op == "add" and arena16.peak_live_bytes == 5 * 1024  # d, e at 16 bits, a at 8
    live16 = arena16.peak_live_bytes
    assert allocate(g, costs, rt, Budgets(None, live16), check_arena=False).layers["project"]["a"] == 16
    assert allocate(g, costs, rt, Budgets(None, live16 - 1), check_arena=False).layers["project"]["a"] == 8


def test_shared_module_gets_one_choice() -> None:
    g = chain_graph()
    g.ops[2].module = "c1"  # c2 runs the same module as c1 (weights shared by name)
    costs = uniform_costs(g)
    al = allocate(g, costs, generic_runtime(), Budgets(flash_of_uniform(g, 5), None))
    assert "c2" not in al.layers and al.layer_ops["c1"] == ["c1", "c2"]


# ---- device constraints -----------------------------------------------------------------------------------
def test_edgetpu_int8_only() -> None:
    dev = get_device("coral-edgetpu")
    rt = dev.runtime()
    g = residual_graph()
    al = allocate(g, uniform_costs(g), rt, budgets_from_device(dev))
    assert all(v == {"w": 8, "a": 8} for v in al.layers.values())
    assert Checker(g, al.bits()).check(dev).verdict == "FITS"


def test_cmsis_nn_int4_only_on_conv_dw_fc() -> None:
    dev = get_device("stm32h743")
    rt = dev.runtime("tflm-cmsis-nn")
    g = chain_graph()
    costs = uniform_costs(g)
    budgets = replace(budgets_from_device(dev), flash_bytes=flash_of_uniform(g, 6, rt))
    al = allocate(g, costs, rt, budgets)
    ops = {op.module or op.name: op for op in g.quantizable_ops()}
    for key, v in al.layers.items():
        assert ops[key].op_class in ("conv", "dwconv", "fc")
        assert v["w"] in (4, 8) and v["a"] in (8, 16)
    assert any(v["w"] == 4 for v in al.layers.values())
    assert not unsupported_ops(g, al.bits(), rt)
    verdict = Checker(g, al.bits()).check(dev, "tflm-cmsis-nn")
    assert verdict.verdict == "FITS"


def test_cmsis_nn_runtime_without_int4_fc() -> None:
    """A runtime table that allows int4 on conv only keeps the depthwise and fc layers at 8 bits."""
    rt = Runtime(name="m", weights={"conv": [4, 8], "default": [8]}, activations={"default": [8]})
    g = chain_graph()
    al = allocate(g, uniform_costs(g), rt, Budgets(flash_of_uniform(g, 4, rt) + 200, None))
    assert al.layers["dw"]["w"] == 8 and al.layers["head.fc"]["w"] == 8
    assert al.layers["c1"]["w"] == 4 and al.layers["c2"]["w"] == 4


def test_inherited_activation_width_must_be_supported() -> None:
    """An add whose kernels only run int8 forbids 16-bit activations on the layers feeding it."""
    rt = Runtime(name="m", weights={"default": [8]}, activations={"add": [8], "default": [8, 16]})
    g = residual_graph()
    costs = {op.name: {(8, 8): 1.0, (8, 16): 0.0} for op in g.quantizable_ops()}
    al = allocate(g, costs, rt, Budgets(None, None))
    assert al.layers["stem"]["a"] == 8 and al.layers["project"]["a"] == 8 and al.layers["head"]["a"] == 16
    assert not unsupported_ops(g, al.bits(), rt)


def test_phone_shared_region_fits_check() -> None:
    dev = get_device("apple-a17-pro")
    rt = dev.runtime()
    g = residual_graph()
    b = budgets_from_device(dev)
    assert b.shared_region
    al = allocate(g, uniform_costs(g, (2, 4, 8)), rt, b)
    assert Checker(g, al.bits()).check(dev).verdict == "FITS"
    # a shared region just big enough for w8 arena + flash forces smaller plans than arena alone would
    fl = flash_of_uniform(g, 4, rt)
    ar = plan_arena(g, BitAssignment(4, 8), alignment=rt.arena_alignment).arena_bytes
    tight = allocate(g, uniform_costs(g, (2, 4, 8)), rt, Budgets(None, fl + ar, shared_region=True))
    assert tight.flash_bytes + tight.arena_bytes <= fl + ar


# ---- infeasible budgets -----------------------------------------------------------------------------------
def test_infeasible_flash_names_smallest_achievable() -> None:
    g = residual_graph()
    rt = generic_runtime(scratch="cmsis-nn")
    costs = uniform_costs(g, (4, 8))
    rows = brute_force(g, costs, rt)
    min_flash = min(r[1] for r in rows)
    min_live = min(r[2] for r in rows)
    with pytest.raises(InfeasibleBudget) as ei:
        allocate(g, costs, rt, Budgets(min_flash - 1, 10**9))
    e = ei.value
    assert e.binding == "flash" and e.min_flash_bytes == min_flash
    assert fmt_bytes(min_flash) in str(e) and str(min_flash) in str(e)
    assert e.min_peak_live_bytes == min_live
    assert isinstance(e, UserError) and e.hint


def test_infeasible_sram_and_joint() -> None:
    g = residual_graph()
    rt = generic_runtime(scratch="cmsis-nn")
    costs = uniform_costs(g, (4, 8))
    rows = brute_force(g, costs, rt)
    min_live = min(r[2] for r in rows)
    min_arena = min(r[3] for r in rows)
    with pytest.raises(InfeasibleBudget) as ei:
        allocate(g, costs, rt, Budgets(None, min_live - 1))
    assert ei.value.binding == "SRAM" and ei.value.min_sram_bytes >= min_arena
    assert fmt_bytes(ei.value.min_sram_bytes) in str(ei.value)
    # each budget alone achievable, together not: 4-bit weights need 16-bit activations here
    costs2 = {op.name: {(4, 16): 0.0, (8, 8): 0.0} for op in g.quantizable_ops()}
    rows2 = brute_force(g, costs2, rt)
    fb = min(r[1] for r in rows2)
    sb = min(r[3] for r in rows2)
    assert not [r for r in rows2 if r[1] <= fb and r[3] <= sb]
    with pytest.raises(InfeasibleBudget) as ei:
        allocate(g, costs2, rt, Budgets(fb, sb))
    assert "together" in ei.value.binding and "within the flash budget" in str(ei.value)


def test_bad_costs_are_user_errors() -> None:
    g = chain_graph()
    costs = uniform_costs(g)
    del costs["dw"]
    with pytest.raises(UserError, match="no costs"):
        allocate(g, costs, generic_runtime(), Budgets(None, None))
    costs = uniform_costs(g)
    costs["nope"] = {(8, 8): 1.0}
    with pytest.raises(UserError, match="not quantizable"):
        allocate(g, costs, generic_runtime(), Budgets(None, None))
    costs = uniform_costs(g, (2,))
    with pytest.raises(UserError, match="no cost for any bit-width"):
        allocate(g, costs, Runtime(name="i8", weights={"default": [8]}, activations={"default": [8]}),
                 Budgets(None, None))


# ---- plan.json, sweep, budget parsing ---------------------------------------------------------------------
def test_plan_json_format_and_from_plan() -> None:
    g = chain_graph()
    rt = generic_runtime()
    b = Budgets(flash_of_uniform(g, 5, rt), 64 * 1024)
    al = allocate(g, uniform_costs(g), rt, b)
    doc = plan_document(al, g, model="chain", device="stm32h743", runtime=rt.name, proxy="uniform", budgets=b,
                        timing={"proxy_s": 0.1})
    plan = json.loads(doc.to_json())
    assert Plan.from_dict(plan) == doc
    assert plan["schema"] == "tap-edge/plan" and plan["version"] == 1
    assert plan["default"] == {"w": 8, "a": 8} and plan["runtime"] == "generic"
    for key in ("model", "device", "runtime", "proxy", "layers", "budgets", "predicted", "solver", "timing"):
        assert key in plan
    assert set(plan["predicted"]) >= {"flash_bytes", "weights_bytes", "arena_bytes", "peak_live_bytes",
                                      "peak_op"}
    assert set(plan["solver"]) >= {"status", "seconds", "objective", "iterations"}
    assert set(plan["budgets"]) >= {"flash_bytes", "sram_bytes", "bops", "latency_ms"}
    fc = plan["layers"]["head.fc"]
    assert fc["op"] == "fc" and fc["op_class"] == "fc" and fc["params"] == 170
    assert isinstance(fc["cost"], float)
    bits = BitAssignment.from_plan(plan)
    bits.check_names(g)
    assert bits.layers["head.fc"] == LayerBits(fc["w"], fc["a"])
    assert plan["predicted"]["flash_bytes"] == flash_breakdown(g, bits, rt.code_bytes).total_bytes


def test_pareto_sweep() -> None:
    g = residual_graph()
    rt = generic_runtime()
    costs = uniform_costs(g)
    lo, hi = flash_of_uniform(g, 2, rt), flash_of_uniform(g, 8, rt)
    budgets = [lo - 100] + [int(lo + (hi - lo) * f) for f in np.linspace(0, 1, 9)]
    front = pareto_sweep(g, costs, rt, budgets, 10**6)
    assert 2 <= len(front) <= 9
    flashes = [a.flash_bytes for a in front]
    objs = [a.objective for a in front]
    assert flashes == sorted(flashes) and all(x > y for x, y in zip(objs, objs[1:], strict=False))
    assert all(a.flash_bytes <= a.budgets.flash_bytes for a in front)


def test_budget_resolution() -> None:
    dev = get_device("stm32h743")
    rt = dev.runtime()
    g = chain_graph()
    b = budgets_from_device(dev)
    assert b.flash_bytes == 2 * 1024**2 and b.sram_bytes == 480 * 1024 and not b.shared_region
    assert resolve_budgets(BudgetSpec(flash_bytes=1572864), dev, rt, g).flash_bytes == 1572864
    s = resolve_budgets(BudgetSpec(sram_bytes=262144), dev, rt, g)
    assert s.sram_bytes == 262144 and s.flash_bytes == b.flash_bytes
    w4 = resolve_budgets(BudgetSpec(flash_like_bits=4), dev, rt, g).flash_bytes
    assert w4 == flash_breakdown(g, BitAssignment(4, 8), rt.code_bytes, runtime=rt).total_bytes \
        == flash_of_uniform(g, 4, rt)
    with pytest.raises(UserError):
        BudgetSpec(flash_bytes=1 << 20, flash_like_bits=4)
    with pytest.raises(UserError):
        BudgetSpec(latency_ms=0)
    with pytest.raises(UserError):
        flash_of_uniform(g, 9, rt)


# ---- a real model -----------------------------------------------------------------------------------------
def test_efficientnet_lite0_solves() -> None:
    from tap_edge.graph.models import load_graph

    g = load_graph("efficientnet_lite0")
    assert len(g.quantizable_ops()) >= 40
    dev = get_device("stm32h743")
    costs = uniform_costs(g)
    rt = generic_runtime(scratch="cmsis-nn", code_bytes=100 * 1024)
    b = Budgets(flash_of_uniform(g, 4, rt), 2 * plan_arena(g, BitAssignment(8, 8), alignment=16,
                                                              scratch_model="cmsis-nn").arena_bytes)
    al = allocate(g, costs, rt, b)
    assert al.status == "optimal" and al.flash_bytes <= b.flash_bytes and al.arena_bytes <= b.sram_bytes
    assert al.n_variables >= len(g.quantizable_ops()) * 14
    fl, ar, _ = recompute(al, g, rt)
    assert fl == al.flash_bytes and ar == al.arena_bytes
    # 1.2 x the 8-bit arena: mixed widths fragment the greedy arena; the repairs must still land inside it
    tight = Budgets(b.flash_bytes, int(0.6 * b.sram_bytes))
    al3 = allocate(g, costs, rt, tight)
    assert al3.status == "optimal" and al3.arena_bytes <= tight.sram_bytes
    assert any(v["a"] == 16 for v in al3.layers.values())
    cm = dev.runtime("tflm-cmsis-nn")
    al2 = allocate(g, costs, cm, Budgets(flash_of_uniform(g, 6, cm), b.sram_bytes))
    assert al2.status == "optimal" and {v["w"] for v in al2.layers.values()} <= {4, 8}
