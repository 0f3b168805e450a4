"""The same network through the PyTorch and ONNX front-ends gives the same parameters, MACs and peak."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from tap_edge.fit.bits import BitAssignment
from tap_edge.fit.memory import flash_breakdown, plan_arena
from tap_edge.graph.frontends.onnx_frontend import load_onnx_graph
from tap_edge.graph.models import describe_model, list_models, load_graph, load_model

#: Bundled models whose ONNX export takes tens of seconds: run with the slow tests.
HEAVY = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
#: Every bundled model (the registry, as timm tests its own) and one timm architecture.
SPECS = [pytest.param(m, marks=pytest.mark.slow) if m in HEAVY else m for m in list_models()] + ["timm:mobilenetv2_050"]


def _randomise_bn(model: torch.nn.Module) -> None:
    """Trained-looking BatchNorm statistics and biases (exporters fold away identity BNs and zero biases)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        elif isinstance(m, torch.nn.Linear | torch.nn.Conv2d) and m.bias is not None:
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)  # zero biases get dropped too


@pytest.mark.parametrize("name", list_models())
def test_every_bundled_model_loads_with_its_preprocessing(name: str) -> None:
    lm = load_model(name)
    assert describe_model(name)
    g = load_graph(lm)
    assert g.tensors[g.inputs[0]].shape == lm.input_shape
    assert g.quantizable_ops() and not g.unknown_ops()


@pytest.mark.parametrize("spec", SPECS)
def test_torch_and_onnx_agree(spec: str, tmp_path: Path) -> None:
    lm = load_model(spec)
    _randomise_bn(lm.module)
    g_torch = load_graph(lm)
    onnx_path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lm.module, torch.zeros(lm.input_shape), str(onnx_path), dynamo=True, verbose=False)
    g_onnx = load_onnx_graph(onnx_path)
    assert g_onnx.params == g_torch.params
    assert g_onnx.macs == g_torch.macs
    assert [o.op_class for o in g_onnx.ops] == [o.op_class for o in g_torch.ops]
    for bits in ("w8a8", "w4a16"):
        b = BitAssignment.parse(bits)
        assert plan_arena(g_onnx, b).arena_bytes == plan_arena(g_torch, b).arena_bytes
        assert flash_breakdown(g_onnx, b).total_bytes == flash_breakdown(g_torch, b).total_bytes
    # weight ops keep their PyTorch module names, so a plan applies to either view
    assert [o.module for o in g_onnx.quantizable_ops()] == [o.module for o in g_torch.quantizable_ops()]


def test_efficientnet_lite0_graph() -> None:
    g = load_graph("efficientnet_lite0")
    assert g.params == 4_631_000  # conv weights + folded BN biases + classifier
    assert len(g.quantizable_ops()) == 50
    assert not g.unknown_ops()
    # the activation peak is the first expanded depthwise stage: 112x112x96 in, 56x56x96 out at int8
    plan = plan_arena(g, BitAssignment.parse("w8a8"))
    assert plan.peak_live_bytes == 112 * 112 * 96 + 56 * 56 * 96


def test_unknown_op_is_named_not_a_crash() -> None:
    g = load_graph("model_factories:model_with_unknown_op")
    unknown = g.unknown_ops()
    assert unknown and unknown[0].op_type in ("fft_fft2", "fft2", "_Weird", "real", "getattr")


def test_graph_json_roundtrip(tmp_path: Path) -> None:
    g = load_graph("resnet8")
    g.save(tmp_path / "g.json")
    from tap_edge.graph.graph import ModelGraph

    g2 = ModelGraph.load(tmp_path / "g.json")
    assert g2.to_dict() == g.to_dict()


def _onnx_if_model(path: Path) -> Path:
    """x -> If(cond input) {then: Conv(w_then 8x3x3x3) ; else: Conv(w_else 4x3x1x1) -> Pad to 8 channels} ->
    Identity -> out: all weights live inside the branches (as in silero-vad 6)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, cout: int, k: int) -> onnx.GraphProto:
        w = numpy_helper.from_array(np.ones((cout, 3, k, k), np.float32), f"{name}_w")
        conv = helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_y"], pads=[k // 2] * 4)
        relu = helper.make_node("Relu", [f"{name}_y"], [f"{name}_out"])
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, cout, 8, 8])
        return helper.make_graph([conv, relu], name, [], [out], initializer=[w])

    node = helper.make_node("If", ["cond"], ["branch_out"], then_branch=branch("then", 8, 3),
                            else_branch=branch("else", 8, 1))
    ident = helper.make_node("Identity", ["branch_out"], ["out"])
    g = helper.make_graph([node, ident], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_if_branches_count_their_weights_and_plan_the_larger_branch(tmp_path: Path) -> None:
    g = load_onnx_graph(_onnx_if_model(tmp_path / "if.onnx"))
    assert [o.op_type for o in g.ops] == ["If", "Conv", "Conv"]  # relu fused, Identity dropped
    assert g.params == 8 * 3 * 9 + 8 * 3 and {s.name.rsplit("/", 1)[-1] for s in g.subgraphs} == {"then_branch",
                                                                                                 "else_branch"}
    assert g.ops[0].op_class == "control" and "x" in g.ops[0].inputs and g.outputs == ["out"]
    plan = plan_arena(g, BitAssignment.parse("w8a8"), alignment=1)
    # x (192 B), cond (1 B) and the If's result (512 B) live across both branches; each branch's own output
    # (512 B) only during its branch
    assert plan.arena_bytes == 192 + 1 + 512 + 512
