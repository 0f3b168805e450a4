"""Memory model on small graphs whose answers are computed by hand (alignment 1, 8-bit activations:
one byte per element)."""

from __future__ import annotations

import pytest

from tap_edge.fit.bits import BitAssignment
from tap_edge.fit.memory import Buffer, flash_breakdown, greedy_by_size, plan_arena
from tap_edge.graph.graph import ModelGraph, Op, Tensor, normalize

W8A8 = BitAssignment.parse("w8a8")


def _graph(ops: list[Op], sizes: dict[str, int], inputs: list[str], outputs: list[str]) -> ModelGraph:
    tensors = {n: Tensor(n, [1, s]) for n, s in sizes.items()}
    return ModelGraph("hand", "test", ops, tensors, inputs, outputs)


def chain() -> ModelGraph:
    return _graph([Op("A", "x", "act", ["in"], ["t1"]), Op("B", "x", "act", ["t1"], ["t2"]),
                   Op("C", "x", "act", ["t2"], ["out"])],
                  {"in": 100, "t1": 200, "t2": 50, "out": 10}, ["in"], ["out"])


def test_chain_lifetimes_and_peak() -> None:
    g = chain()
    assert g.lifetimes() == {"in": (0, 0), "t1": (0, 1), "t2": (1, 2), "out": (2, 2)}
    plan = plan_arena(g, W8A8, alignment=1)
    assert plan.live_bytes_per_step == [300, 250, 60]
    assert plan.peak_live_bytes == 300 and plan.peak_op == "A"
    assert plan.arena_bytes == 300
    assert [t for t, _ in plan.live_at_peak] == ["t1", "in"]


def test_chain_sixteen_bit_activations_double() -> None:
    plan = plan_arena(chain(), BitAssignment.parse("w8a16"), alignment=1)
    assert plan.live_bytes_per_step == [600, 500, 120]
    assert plan.arena_bytes == 600


def test_residual_branch_keeps_input_alive() -> None:
    g = _graph([Op("A", "x", "conv", ["in"], ["a"]), Op("B", "x", "conv", ["a"], ["b"]),
                Op("add", "x", "add", ["a", "b"], ["out"])],
               {"in": 100, "a": 100, "b": 100, "out": 100}, ["in"], ["out"])
    plan = plan_arena(g, W8A8, alignment=1)
    assert plan.live_bytes_per_step == [200, 200, 300]
    assert plan.peak_op == "add" and plan.arena_bytes == 300


def test_concatenation() -> None:
    g = _graph([Op("A", "x", "conv", ["in"], ["x"]), Op("B", "x", "conv", ["in"], ["y"]),
                Op("cat", "x", "concat", ["x", "y"], ["out"])],
               {"in": 100, "x": 100, "y": 50, "out": 150}, ["in"], ["out"])
    plan = plan_arena(g, W8A8, alignment=1)
    assert plan.live_bytes_per_step == [200, 250, 300]
    assert plan.arena_bytes == 300


def test_inplace_reshape_aliases_only_when_runtime_allows() -> None:
    g = _graph([Op("A", "x", "conv", ["in"], ["t"]), Op("R", "x", "reshape", ["t"], ["r"]),
                Op("C", "x", "fc", ["r"], ["out"])],
               {"in": 100, "t": 200, "r": 200, "out": 10}, ["in"], ["out"])
    copy = plan_arena(g, W8A8, alignment=1, alias_inplace=False)
    assert copy.live_bytes_per_step == [300, 400, 210] and copy.arena_bytes == 400
    alias = plan_arena(g, W8A8, alignment=1, alias_inplace=True)
    assert alias.live_bytes_per_step == [300, 200, 210] and alias.arena_bytes == 300


def test_alignment_rounds_every_buffer() -> None:
    plan = plan_arena(chain(), W8A8, alignment=16)
    assert plan.live_bytes_per_step == [112 + 208, 208 + 64, 64 + 16]


def test_greedy_by_size_reuses_gaps() -> None:
    bufs = [Buffer("a", 200, 0, 1), Buffer("b", 100, 0, 0), Buffer("c", 50, 1, 2), Buffer("d", 10, 2, 2)]
    assert greedy_by_size(bufs) == 300
    offsets = {b.name: b.offset for b in bufs}
    assert offsets == {"a": 0, "b": 200, "c": 200, "d": 0}


def test_greedy_never_overlaps_live_buffers() -> None:
    import random

    rng = random.Random(0)
    for _ in range(50):
        bufs = []
        for i in range(12):
            f = rng.randrange(10)
            bufs.append(Buffer(str(i), rng.randrange(1, 100), f, f + rng.randrange(4)))
        size = greedy_by_size(bufs)
        for a in bufs:
            assert a.offset + a.size <= size
            for b in bufs:
                if a is not b and a.first <= b.last and b.first <= a.last:
                    assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset


def test_flash_packs_weights_scales_and_bias() -> None:
    conv = Op("conv", "Conv2d", "conv", ["in"], ["out"], weight_shape=[8, 4, 3, 3], bias=8)
    g = _graph([conv], {"in": 10, "out": 10}, ["in"], ["out"])
    f8 = flash_breakdown(g, W8A8, runtime_bytes=1000)
    assert (f8.weights_bytes, f8.scales_bytes, f8.bias_bytes) == (288, 32, 32)
    assert f8.total_bytes == 288 + 32 + 32 + 1000
    f4 = flash_breakdown(g, BitAssignment.parse("w4a8"))
    assert f4.weights_bytes == 144
    f3 = flash_breakdown(g, BitAssignment.parse("w3a8"))
    assert f3.weights_bytes == 108  # ceil(288 * 3 / 8)
    fp = flash_breakdown(g, BitAssignment.parse("fp32"))
    assert (fp.weights_bytes, fp.scales_bytes, fp.bias_bytes) == (1152, 0, 32)


def test_per_layer_plan_overrides() -> None:
    a = Op("a", "Conv2d", "conv", ["in"], ["t"], weight_shape=[4, 1, 1, 1], module="m.a")
    b = Op("b", "Conv2d", "conv", ["t"], ["out"], weight_shape=[4, 4, 1, 1], module="m.b")
    g = _graph([a, b], {"in": 10, "t": 10, "out": 10}, ["in"], ["out"])
    plan = BitAssignment.from_plan({"layers": {"m.a": {"w": 2, "a": 16}, "m.b": {"w": 8, "a": 8}}})
    f = flash_breakdown(g, plan)
    assert f.weights_bytes == 1 + 16
    arena = plan_arena(g, plan, alignment=1)
    # "t" is 16-bit (layer m.a); the model input takes its first consumer's width (16), "out" 8-bit
    assert arena.live_bytes_per_step == [20 + 20, 20 + 10]


def test_normalize_folds_bn_and_relu() -> None:
    ops = [Op("conv", "Conv2d", "conv", ["in"], ["c"], weight_shape=[4, 3, 3, 3]),
           Op("bn", "BatchNorm2d", "norm", ["c"], ["n"], other_params=8, attrs={"foldable": True}),
           Op("relu", "ReLU", "act", ["n"], ["out"], attrs={"fn": "relu"})]
    g = normalize(_graph(ops, {"in": 10, "c": 10, "n": 10, "out": 10}, ["in"], ["out"]))
    assert [o.name for o in g.ops] == ["conv"]
    assert g.ops[0].fused == ["bn", "relu"] and g.ops[0].bias == 4
    assert g.ops[0].outputs == ["out"] and set(g.tensors) == {"in", "out"}


def test_normalize_keeps_shared_output() -> None:
    ops = [Op("conv", "Conv2d", "conv", ["in"], ["c"], weight_shape=[4, 3, 3, 3]),
           Op("relu", "ReLU", "act", ["c"], ["r"], attrs={"fn": "relu"}),
           Op("add", "add", "add", ["c", "r"], ["out"])]
    g = normalize(_graph(ops, {"in": 10, "c": 10, "r": 10, "out": 10}, ["in"], ["out"]))
    assert len(g.ops) == 3  # conv's output has two users: nothing to fuse


@pytest.mark.parametrize("spec", ["w8a8", "w4a8", "w2a16", "fp32", "fp16", "native"])
def test_bit_strings_parse(spec: str) -> None:
    BitAssignment.parse(spec)
