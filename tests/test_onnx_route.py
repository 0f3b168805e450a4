"""An ONNX file through plan, eval and compile agrees with the same network given as PyTorch.

Each network is exported here as a user exports it (``torch.onnx.export``; the dynamo exporter, torch's
default, and the TorchScript one), with trained-looking BatchNorm statistics so that the exporter's folding
matters. The plan of the file and the plan of the module share their keys and widths, their fake-quant
models agree on the sample photos, and the artifacts compiled from either carry the same prediction and
weights and agree with each other.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from tap_edge.core.errors import UserError
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.convert import as_pytorch, set_preprocess
from tap_edge.graph.models import LoadedModel, load_graph, load_model
from tap_edge.graph.onnx_keys import scope_key
from tap_edge.plan.budgets import BudgetSpec
from tap_edge.plan.calib import load_images
from tap_edge.plan.pipeline import PlanRequest, make_plan
from tap_edge.quantize.ptq import quantize_model
from tests.conftest import SAMPLE_DIR
from tests.test_frontends import _randomise_bn

pytestmark = pytest.mark.skipif(not SAMPLE_DIR.is_dir(), reason="the shared sample photos are not there")

#: (spec, dynamo exporter): residual adds and a Linear head (resnet8, mobilenetv2), depthwise convs and a
#: 1-channel input (ds_cnn), TF 'same' padding (efficientnet_lite0: asymmetric pads, slow to export).
ROUTES = [("resnet8", True), ("resnet8", False), ("ds_cnn", True), ("timm:mobilenetv2_050", True),
          pytest.param("efficientnet_lite0", True, marks=pytest.mark.slow)]
#: Networks with real weights: their own BatchNorm statistics (randomised ones would make noise of them).
TRAINED = {"efficientnet_lite0"}
CALIB = 8


def export(spec: str, dynamo: bool, folder: Path) -> tuple[LoadedModel, Path]:
    """The network ``spec`` (BatchNorm statistics randomised, but for EfficientNet-Lite0's trained ones) and its
    ONNX export; a bundled model's own preprocessing is written into the file (timm's is tap-edge's default
    for files: ImageNet)."""
    lm = load_model(spec)
    if spec not in TRAINED:
        _randomise_bn(lm.module)
    path = folder / f"{spec.replace(':', '_')}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lm.module, (torch.zeros(lm.input_shape),), str(path), dynamo=dynamo)
    if not spec.startswith("timm:"):
        set_preprocess(path, lm.preprocess)
    return lm, path


def _plan(model: object) -> dict[str, tuple[int, int]]:
    plan = make_plan(PlanRequest(model=model, device="raspberry-pi-5", runtime="onnxruntime", calib=SAMPLE_DIR,
                                 calib_samples=CALIB, budgets=BudgetSpec(flash_like_bits=5), act_bits=[8]))
    return {k: (v.w, v.a) for k, v in plan.layers.items()}


@pytest.mark.parametrize(("spec", "dynamo"), ROUTES)
def test_plan_and_fake_quant_agree_with_pytorch(spec: str, dynamo: bool, tmp_path: Path) -> None:
    lm, path = export(spec, dynamo, tmp_path)
    from_torch, from_onnx = _plan(lm), _plan(str(path))
    assert list(from_onnx) == list(from_torch)  # plan keys are the PyTorch module names
    assert from_onnx == from_torch
    assert len(set(from_torch.values())) > 1  # a mixed plan, so the widths say something
    converted = as_pytorch(str(path))
    assert converted.preprocess == lm.preprocess
    images, _ = load_images(SAMPLE_DIR, lm.preprocess, limit=256)
    bits = BitAssignment.from_plan({"layers": {k: {"w": w, "a": a} for k, (w, a) in from_torch.items()}})
    calib, scored = images[:16], images[16:]
    outs, steps = [], []
    for model in (lm, converted):
        q = quantize_model(model.module, bits, calib, graph=load_graph(model))
        with torch.no_grad():
            outs.append(torch.cat([q(scored[i:i + 64]) for i in range(0, len(scored), 64)]))
        steps.append(q.tap_edge_ptq.output_qparams[1] if q.tap_edge_ptq.output_qparams else 0.0)
    # top-1 must agree wherever the best two classes are more than two output-grid steps apart: a step either
    # way is the output quantizer's rounding (a random-weight network has many near ties, where it decides)
    top2 = outs[0].topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * max(steps)
    assert int(clear.sum()) >= len(scored) // 2, int(clear.sum())
    agreement = float((outs[0].argmax(1) == outs[1].argmax(1))[clear].float().mean())
    assert agreement >= 0.99, agreement
    # the same logits up to the output quantizer's grid (a zero point on a rounding boundary moves it a step)
    cosine = torch.nn.functional.cosine_similarity(outs[0].flatten(1), outs[1].flatten(1)).mean()
    assert float(cosine) >= 0.999, float(cosine)


def test_tflm_arena_of_the_file_counts_the_converters_pad_ops(tmp_path: Path) -> None:
    """MobileNetV2's stride-2 convs pad 1 on every side, which TFLite's SAME cannot express: the converter writes a
    PAD op and its padded tensor, which TFLite Micro plans. The file's TFLite Micro prediction counts it as the
    module's does (it was a false FITS on imxrt1170: 879.5 KiB predicted for the file, 1,327,288 B measured)."""
    from tap_edge.devices import get_device
    from tap_edge.fit.checker import check_report

    lm, path = export("timm:mobilenetv2_050", False, tmp_path)
    device = get_device("imxrt1170")
    rows = [check_report(load_graph(m), BitAssignment(8, 8), [device]).devices[0] for m in (lm, str(path))]
    assert rows[0].peak_op.endswith("::pad") and rows[1].peak_op.endswith("::pad"), [r.peak_op for r in rows]
    assert abs(rows[1].peak_sram_bytes - rows[0].peak_sram_bytes) <= 0.01 * rows[0].peak_sram_bytes
    assert rows[0].verdict == rows[1].verdict == "OOM"


def test_converted_module_matches_float_outputs(tmp_path: Path) -> None:
    lm, path = export("resnet8", True, tmp_path)
    converted = as_pytorch(str(path))
    x = torch.randn(5, *lm.preprocess.input_size)  # any batch: the converter keeps the batch dim free
    with torch.no_grad():
        assert torch.allclose(converted.module(x), lm.module(x), atol=1e-5)
    modules = dict(converted.module.named_modules())
    assert isinstance(modules["stage2.shortcut.0"], torch.nn.Conv2d) and isinstance(modules["fc"], torch.nn.Linear)


def test_compile_of_the_file_matches_pytorch(tmp_path: Path) -> None:
    from tap_edge.backends import compile_model
    from tap_edge.backends.onnxruntime_backend import onnx_outputs

    lm, path = export("resnet8", True, tmp_path)
    bits = BitAssignment.parse("w4a8")
    xs, _ = load_images(SAMPLE_DIR, lm.preprocess, limit=32)
    arts = [compile_model(m, "onnxruntime", bits, tmp_path / name, calib_dir=SAMPLE_DIR, samples=16,
                          check_samples=32) for m, name in ((lm, "torch"), (str(path), "onnx"))]
    a, b = (x.manifest for x in arts)
    assert a.prediction.flash == b.prediction.flash
    assert a.weights.planned_form_bytes == b.weights.planned_form_bytes
    assert b.agreement.top1_agreement >= 0.99
    assert b.calibration.kind == "folder" and b.calibration.samples == 16
    assert arts[1].path.name == "resnet8-w4a8.onnx"  # the file's stem, not 'resnet8.onnx-w4a8'
    got = [onnx_outputs(x.path, xs.numpy()) for x in arts]
    assert np.mean(got[0].argmax(1) == got[1].argmax(1)) >= 0.99


def test_cli_plan_eval_compile_measure_an_onnx_file(run_cli, tmp_path: Path) -> None:
    _, path = export("resnet8", True, tmp_path)
    plan = tmp_path / "plan.json"
    r = run_cli("plan", str(path), "-d", "stm32h743", "--calib", str(SAMPLE_DIR), "--calib-samples", "8",
                "--out", str(plan), "-q")
    assert r.code == 0, r.err
    r = run_cli("eval", str(path), "--plan", str(plan), "--data", str(SAMPLE_DIR), "--limit", "32", "--json")
    assert r.code == 0, r.err
    r = run_cli("compile", str(path), "--plan", str(plan), "-b", "onnxruntime", "--calib", str(SAMPLE_DIR),
                "--out-dir", str(tmp_path / "ort"), "-q")
    assert r.code == 0, r.err
    artifact = next((tmp_path / "ort").glob("*.onnx"))
    r = run_cli("measure", str(artifact), "-d", "raspberry-pi-5", "-q")
    assert r.code in (0, 1), r.err


def test_a_tflite_file_is_refused_in_one_line_for_planning(tmp_path: Path) -> None:
    p = tmp_path / "m.tflite"
    p.write_bytes(b"TFL3")
    with pytest.raises(UserError, match="pass the .onnx or PyTorch model it was converted from"):
        as_pytorch(str(p), purpose="planning")


def test_an_op_the_converter_lacks_is_one_line(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
                               helper.make_node("Hardmax", ["h"], ["y"], name="odd")], "g", [x], [y], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UserError, match=r"node 'odd' \(Hardmax\): this op is not translated"):
        as_pytorch(str(path))


def test_scope_keys_of_the_torchscript_exporter() -> None:
    assert scope_key("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert scope_key("/stage2/shortcut/shortcut.0/Conv") == "stage2.shortcut.0"
    assert scope_key("/blocks/blocks.0/blocks.0.0/conv_dw/Conv") == "blocks.0.0.conv_dw"
    assert scope_key("/Conv") is None and scope_key("node_Conv_3") is None
