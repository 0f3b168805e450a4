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


# ---- subgraphs, identity-like ops, shared weights ----------------------------------------------------------
def test_subgraph_tensors_live_inside_their_span_and_the_callers_operands_until_its_end() -> None:
    """TFLM's allocation scopes: an IF's branch inputs live from the branch's first op, its outputs to its
    last; the IF's operands and results stay alive until the last branch ran (micro_allocation_info.cc)."""
    from tap_edge.graph.graph import Subgraph

    ops = [Op("if", "IF", "control", ["in"], ["out"]),
           Op("then_op", "ADD", "add", ["then/x"], ["then/y"]),
           Op("else_op", "MUL", "mul", ["else/x"], ["else/y"])]
    g = _graph(ops, {"in": 10, "out": 10, "then/x": 40, "then/y": 40, "else/x": 30, "else/y": 30}, ["in"], ["out"])
    g.subgraphs = [Subgraph("then", "if", ["then_op"], ["then/x"], ["then/y"]),
                   Subgraph("else", "if", ["else_op"], ["else/x"], ["else/y"])]
    life = g.lifetimes()
    assert life["in"] == (0, 2) and life["out"] == (0, 2)
    assert life["then/x"] == (1, 1) and life["else/x"] == (2, 2)
    plan = plan_arena(g, W8A8, alignment=1)
    assert plan.arena_bytes == 20 + 80  # the branches never live together: the larger one is planned
    back = ModelGraph.from_dict(g.to_dict())
    assert back.subgraphs == g.subgraphs and back.lifetimes() == life


def test_identity_in_front_of_a_graph_output_is_dropped() -> None:
    ops = [Op("conv", "Conv2d", "conv", ["in"], ["c"], weight_shape=[4, 3, 3, 3]),
           Op("id", "Identity", "identity", ["c"], ["out"])]
    g = normalize(_graph(ops, {"in": 10, "c": 10, "out": 10}, ["in"], ["out"]))
    assert [o.name for o in g.ops] == ["conv"] and g.ops[0].outputs == ["out"] and "c" not in g.tensors


def test_a_shared_weight_counts_once_in_flash_and_params() -> None:
    a = Op("a", "CONV_2D", "conv", ["in"], ["t"], weight_shape=[8, 4, 3, 3], bias=8)
    b = Op("b", "CONV_2D", "conv", ["t"], ["out"], weight_shape=[8, 4, 3, 3], bias=8, attrs={"shared_weight": "a"})
    g = _graph([a, b], {"in": 10, "t": 10, "out": 10}, ["in"], ["out"])
    assert g.params == 288 + 8 + 8
    f = flash_breakdown(g, W8A8)
    assert (f.weights_bytes, f.scales_bytes, f.bias_bytes) == (288, 32, 64)


# ---- kernel scratch ---------------------------------------------------------------------------------------
def _conv_graph(cin: int, cout: int, k: int, hw: int, groups: int = 1, pad: bool = True) -> ModelGraph:
    """One NCHW conv (PyTorch layout) with SAME-like padding (pad=True) or VALID."""
    out_hw = hw if pad else hw - k + 1
    cls = "dwconv" if groups > 1 else "conv"
    op = Op("c", "Conv2d", cls, ["in"], ["out"], weight_shape=[cout, cin // groups, k, k], bias=cout,
            attrs={"stride": [1, 1], "groups": groups})
    tensors = {"in": Tensor("in", [1, cin, hw, hw]), "out": Tensor("out", [1, cout, out_hw, out_hw])}
    return ModelGraph("c", "torch", [op], tensors, ["in"], ["out"])


def test_cmsis_nn_scratch_rounds_im2col_to_four_and_follows_the_core() -> None:
    """arm_convolve_s8_get_buffer_size: 2 columns of int16 of align4(kh kw C_in) (3x3 on 3 channels: 112 B, not
    108); Helium: 4 x ceil16(kh kw C_in); depthwise 3x3 needs none on DSP cores, 4 x 124 x 9 on Helium and
    none without DSP; 1x1 needs none (GCC build)."""
    from tap_edge.fit.memory import scratch_bytes

    g = _conv_graph(3, 8, 3, 16)
    assert scratch_bytes(g.ops[0], g, "cmsis-nn", 8) == 112
    assert scratch_bytes(g.ops[0], g, "cmsis-nn-mve", 8) == 4 * 32
    assert scratch_bytes(g.ops[0], g, "cmsis-nn", 16) == 2 * 27 * 2  # arm_convolve_fast_s16 (DSP)
    assert scratch_bytes(g.ops[0], g, "cmsis-nn", 32) == 0  # float: the reference kernel
    one = _conv_graph(16, 8, 1, 16)
    assert scratch_bytes(one.ops[0], one, "cmsis-nn", 8) == 0
    dw = _conv_graph(16, 16, 3, 16, groups=16)
    assert scratch_bytes(dw.ops[0], dw, "cmsis-nn", 8) == 0
    assert scratch_bytes(dw.ops[0], dw, "cmsis-nn-mve", 8) == 4 * 124 * 9
    assert scratch_bytes(dw.ops[0], dw, "cmsis-nn-c", 8) == 0
    dw5 = _conv_graph(16, 16, 5, 16, groups=16)
    assert scratch_bytes(dw5.ops[0], dw5, "cmsis-nn", 8) == 16 * 25 * 2


def test_int4_filters_are_unpacked_by_the_reference_kernels_not_by_cmsis_nn() -> None:
    """TFLM's reference conv / depthwise / fully-connected unpack an int4 filter into FlatSize(filter) bytes of
    scratch (conv_common.cc ConvPrepare); CMSIS-NN runs packed int4 (arm_convolve_s4: its own im2col)."""
    from tap_edge.fit.memory import scratch_bytes

    g = _conv_graph(32, 64, 3, 16)
    assert scratch_bytes(g.ops[0], g, "tflm", 8, 4) == 64 * 32 * 9
    assert scratch_bytes(g.ops[0], g, "tflm", 8, 8) == 0
    assert scratch_bytes(g.ops[0], g, "esp-nn", 8, 4) == 64 * 32 * 9
    assert scratch_bytes(g.ops[0], g, "cmsis-nn", 8, 4) == 4 * 9 * 32


def test_esp_nn_scratch_follows_esp_nn() -> None:
    """esp_nn_get_conv_scratch_size_esp32s3 / esp_nn_get_depthwise_conv_scratch_size_esp32s3 (ESP-NN 1.x)."""
    from tap_edge.fit.memory import scratch_bytes

    g = _conv_graph(3, 8, 3, 16)  # padded 3x3 on 3 channels: padded input + filter at 16 channels + offsets
    assert scratch_bytes(g.ops[0], g, "esp-nn", 8) == 18 * 18 * 3 + 9 * 16 * 8 + 32 + 4 * 8
    one = _conv_graph(16, 8, 1, 16)  # 1x1: transpose buffer + filter + align
    assert scratch_bytes(one.ops[0], one, "esp-nn", 8) == 16 * 8 + 2 * 8 * 16 + 32
    dw = _conv_graph(16, 16, 3, 16, groups=16)  # 3x3, channels % 16 == 0, padded
    assert scratch_bytes(dw.ops[0], dw, "esp-nn", 8) == 9 * 16 + 18 * 18 * 16 + 16
    assert scratch_bytes(g.ops[0], g, "esp-nn", 16) == 0  # 16x8 runs the reference kernels


def test_allocator_does_not_trade_flash_for_an_int4_scratch_that_breaks_sram() -> None:
    """On TFLM's reference kernels an int4 conv needs its filter unpacked in the arena: under an SRAM budget
    that cannot hold that scratch the allocator keeps the layer at 8 bits even if flash prefers 4."""
    from tap_edge.devices import get_device
    from tap_edge.fit.footprint import plan_arena_for
    from tap_edge.plan.allocate import allocate
    from tap_edge.plan.budgets import Budgets

    g = _conv_graph(64, 64, 3, 4)
    rt = get_device("stm32h743").runtime().model_copy(update={"scratch": "tflm", "code_bytes": 0})
    costs = {"c": {(8, 8): 0.0, (4, 8): 1e-6}}
    a8 = plan_arena_for(g, BitAssignment(8, 8), rt).arena_bytes
    a4 = plan_arena_for(g, BitAssignment(4, 8), rt).arena_bytes
    assert a4 > 64 * 64 * 9 > a8  # the unpacked filter
    flash4 = flash_breakdown(g, BitAssignment(4, 8), runtime=rt).total_bytes
    res = allocate(g, costs, rt, Budgets(flash_bytes=10**7, sram_bytes=a8 + 100))
    assert res.layers["c"]["w"] == 8 and res.arena_bytes <= a8 + 100
    res4 = allocate(g, {"c": {(8, 8): 1.0, (4, 8): 0.0}}, rt, Budgets(flash_bytes=flash4 + 10, sram_bytes=a4))
    assert res4.layers["c"]["w"] == 4 and res4.arena_bytes == a4
