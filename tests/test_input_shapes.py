"""Input shapes (issue 11, deliver 1): --input-shape on every command that loads a model, dynamic ONNX / TFLite
dims refused in one line or planned at the given size, PyTorch models traced at a custom shape, the shape in
every document, and the user-model forms (path/model.py:factory, module:factory from the current folder,
tap_edge_preprocess as a dict or a tuple). Every model here is built in the test (onnx.helper, the TFLite
schema classes, a few torch modules): nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tap_edge.core.errors import UserError
from tap_edge.graph.models import _cache_path, load_graph, load_model
from tap_edge.graph.shapes import DeclaredInput, parse_input_shapes, resolve_inputs

RNG = np.random.default_rng(0)


# ---- model builders ---------------------------------------------------------------------------------------------
def _init(name: str, shape: list[int]) -> TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.1).astype(np.float32), name)


def conv_onnx(path: Path, dims: list[int | str] | None = None, *, reshape: bool = False) -> Path:
    """x[dims] (default [N, 3, H, W]) -> conv 3x3 (8) -> relu -> conv 3x3 (8) [-> Reshape to [N, 8, H*W] by
    Shape/Gather/Concat arithmetic, then ConstantOfShape(Shape) + Add] -> global pool -> fc 10."""
    dims = dims or ["N", 3, "H", "W"]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1])]
    inits = [_init("w1", [8, 3, 3, 3]), _init("w2", [8, 8, 3, 3]), _init("fc", [8, 10])]
    last = "c2"
    if reshape:  # shape arithmetic that plain inference leaves open without data propagation / folding
        inits += [numpy_helper.from_array(np.array([0], np.int64), "i0"),
                  numpy_helper.from_array(np.array([1], np.int64), "i1"),
                  numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
        nodes += [helper.make_node("Shape", ["c2"], ["s"]),
                  helper.make_node("Gather", ["s", "i0"], ["n"]), helper.make_node("Gather", ["s", "i1"], ["c"]),
                  helper.make_node("Concat", ["n", "c", "minus1"], ["target"], axis=0),
                  helper.make_node("Reshape", ["c2", "target"], ["flat"]),
                  helper.make_node("Shape", ["flat"], ["fs"]),
                  helper.make_node("ConstantOfShape", ["fs"], ["ones"],
                                   value=numpy_helper.from_array(np.array([1.0], np.float32))),
                  helper.make_node("Add", ["flat", "ones"], ["shifted"]),
                  helper.make_node("ReduceMean", ["shifted"], ["pooled"], axes=[2], keepdims=0)]
        last = "pooled"
    else:
        nodes += [helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
                  helper.make_node("Flatten", ["g"], ["pooled"])]
        last = "pooled"
    nodes.append(helper.make_node("MatMul", [last, "fc"], ["logits"]))
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def two_input_onnx(path: Path) -> Path:
    """a[N, 3, H, W] + b[N, 3, H, W] -> conv; a scalar input 'gain' [] multiplies the result."""
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Conv", ["s", "w"], ["c"]),
             helper.make_node("Mul", ["c", "gain"], ["y"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, "H", "W"]),
                                             helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3, "H", "W"]),
                                             helper.make_tensor_value_info("gain", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_init("w", [4, 3, 1, 1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def conv_tflite(path: Path, signature: tuple[int, ...] = (1, -1, -1, 3)) -> Path:
    """One float CONV_2D (8 filters 3x3, SAME) whose input signature leaves H and W open (stored 1x1)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    stored = [d if d > 0 else 1 for d in signature]
    buffers = [schema.BufferT()]

    def tensor(name: str, shape: list[int], sig: list[int] | None = None, data: np.ndarray | None = None) -> object:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), schema.TensorType.FLOAT32, 0
        if sig is not None:
            t.shapeSignature = list(sig)
        if data is not None:
            b = schema.BufferT()
            b.data = np.frombuffer(data.astype(np.float32).tobytes(), np.uint8).tolist()
            buffers.append(b)
            t.buffer = len(buffers) - 1
        return t

    tensors = [tensor("x", stored, list(signature)), tensor("w", [8, 3, 3, 3], data=RNG.standard_normal(216)),
               tensor("b", [8], data=np.zeros(8)), tensor("y", [*stored[:3], 8], [*signature[:3], 8])]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CONV_2D
    code.version = 1
    opts = schema.Conv2DOptionsT()
    opts.padding, opts.strideH, opts.strideW = schema.Padding.SAME, 1, 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.Conv2DOptions, opts
    sg = schema.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [3], [op]
    m = schema.ModelT()
    m.version, m.subgraphs, m.buffers, m.operatorCodes = 3, [sg], buffers, [code]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return path


# ---- the flag ---------------------------------------------------------------------------------------------------
def test_parse_input_shapes_forms() -> None:
    assert parse_input_shapes(None) is None and parse_input_shapes([]) is None
    assert parse_input_shapes(["1x3x224x224"]) == {"": [1, 3, 224, 224]}
    assert parse_input_shapes(["x=1,3,64,64", "sr=", "serving_default_input:0=1x1760"]) == {
        "x": [1, 3, 64, 64], "sr": [], "serving_default_input:0": [1, 1760]}


@pytest.mark.parametrize(("specs", "words"), [
    (["1x3xHx224"], "cannot read shape"), (["1x0x4"], "below 1"), (["=1x3"], "no input name"),
    (["x=1x3", "x=1x4"], "given twice"), (["1x3", "y=1x3"], "bare shape and named"),
])
def test_parse_input_shapes_errors_are_one_line(specs: list[str], words: str) -> None:
    with pytest.raises(UserError) as e:
        parse_input_shapes(specs)
    assert words in str(e.value) and "\n" not in str(e.value) and "--input-shape" in str(e.value)


# ---- ONNX ---------------------------------------------------------------------------------------------------------
def test_dynamic_onnx_is_refused_in_one_line(run_cli, tmp_path: Path) -> None:
    model = conv_onnx(tmp_path / "dyn.onnx")
    r = run_cli("check", str(model), "-d", "esp32-s3")
    assert r.code == 2 and r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "x [N, 3, H, W] has dynamic dims" in lines[0] and "--input-shape x=1x3xHxW" in lines[0]


def test_dynamic_onnx_planned_at_the_given_size(run_cli, tmp_path: Path) -> None:
    model = conv_onnx(tmp_path / "dyn.onnx")
    reports = {}
    for size in (32, 64):
        r = run_cli("check", str(model), "-d", "esp32-s3", "--input-shape", f"x=1x3x{size}x{size}", "--json")
        assert r.code in (0, 1), r.err
        reports[size] = json.loads(r.out)
    small, big = reports[32]["model"], reports[64]["model"]
    fc = 8 * 10  # the classifier's MACs do not depend on the input size; the convs' scale with H x W
    assert big["macs"] - fc == 4 * (small["macs"] - fc) > 0
    assert big["inputs"] == [{"name": "x", "shape": [1, 3, 64, 64], "dtype": "float32", "source": "user",
                              "declared": ["N", 3, "H", "W"], "note": None}]
    assert big["unresolved_shapes"] == []
    # the arena follows the activations: the 64x64 input alone is 12 KiB at int8
    assert reports[64]["devices"][0]["peak_sram_bytes"] > 3.5 * reports[32]["devices"][0]["peak_sram_bytes"]


def test_only_a_batch_dim_open_is_assumed_one_and_said(run_cli, tmp_path: Path) -> None:
    model = conv_onnx(tmp_path / "batch.onnx", ["batch", 3, 32, 32])
    r = run_cli("check", str(model), "-d", "esp32-s3")
    assert r.code in (0, 1), r.err
    assert "input x 1x3x32x32 float32 (assumed batch 1; declared [batch, 3, 32, 32])" in r.out
    g = load_graph(str(model))
    assert g.meta["inputs"][0]["source"] == "assumed batch 1" and g.tensors["c2"].shape == [1, 8, 32, 32]


def test_every_tensor_gets_its_real_size_through_shape_arithmetic(tmp_path: Path) -> None:
    model = conv_onnx(tmp_path / "reshape.onnx", reshape=True)
    g = load_graph(str(model), {"x": [1, 3, 16, 20]})
    assert g.meta["unresolved_shapes"] == []
    assert g.tensors["flat"].shape == [1, 8, 320] and g.tensors["shifted"].shape == [1, 8, 320]
    assert g.tensors["logits"].shape == [1, 10]


def test_fixed_dims_cannot_change_and_names_must_exist(tmp_path: Path) -> None:
    model = str(conv_onnx(tmp_path / "dyn.onnx"))
    with pytest.raises(UserError, match="dim 1 is fixed at 3"):
        load_graph(model, {"x": [1, 4, 32, 32]})
    with pytest.raises(UserError, match="has 3 dims; the model declares"):
        load_graph(model, {"x": [1, 3, 32]})
    with pytest.raises(UserError, match="'images', which is not an input of the model; its inputs: x"):
        load_graph(model, {"images": [1, 3, 32, 32]})


def test_multi_input_onnx(tmp_path: Path) -> None:
    model = str(two_input_onnx(tmp_path / "two.onnx"))
    with pytest.raises(UserError) as e:
        load_graph(model)
    assert "a [N, 3, H, W] and b [N, 3, H, W] have dynamic dims" in str(e.value)
    assert "--input-shape a=1x3xHxW --input-shape b=1x3xHxW" in str(e.value)
    with pytest.raises(UserError, match="without a name, but the model has 3 inputs"):
        load_graph(model, {"": [1, 3, 8, 8]})
    # H and W of b follow from a (one symbol, one size); the scalar keeps rank 0
    g = load_graph(model, parse_input_shapes(["a=1x3x8x12", "gain="]))
    inputs = {i["name"]: i for i in g.meta["inputs"]}
    assert inputs["a"]["shape"] == inputs["b"]["shape"] == [1, 3, 8, 12] and inputs["gain"]["shape"] == []
    assert inputs["a"]["source"] == inputs["b"]["source"] == "user"
    assert g.tensors["y"].shape == [1, 4, 8, 12]


def test_resolve_inputs_suggests_readable_placeholders() -> None:
    declared = [DeclaredInput("input", ["batch_size", "samples"]), DeclaredInput("state", [2, "batch_size", 128])]
    with pytest.raises(UserError) as e:
        resolve_inputs(declared, None)
    assert str(e.value) == ("input [batch_size, samples] has dynamic dims; give --input-shape input=1xSAMPLES")
    unnamed = [DeclaredInput("input", ["?", "?"]), DeclaredInput("state", [2, "?", 128])]
    with pytest.raises(UserError, match="give --input-shape input=1xD1 --input-shape state=2xD2x128$"):
        resolve_inputs(unnamed, None)
    infos = resolve_inputs(declared, {"input": [1, 512]})
    assert [i.shape for i in infos] == [[1, 512], [2, 1, 128]] and infos[1].source == "user"


# ---- TFLite -------------------------------------------------------------------------------------------------------
def test_tflite_signature_dims_are_resized(run_cli, tmp_path: Path) -> None:
    model = conv_tflite(tmp_path / "conv.tflite")
    r = run_cli("check", str(model), "-d", "raspberry-pi-5")
    assert r.code == 2 and "x [1, -1, -1, 3] has dynamic dims; give --input-shape x=1xHxWx3" in r.err
    small, big = load_graph(str(model), {"x": [1, 16, 16, 3]}), load_graph(str(model), {"": [1, 32, 32, 3]})
    assert big.tensors["y"].shape == [1, 32, 32, 8] and big.macs == 4 * small.macs > 0
    info = big.meta["inputs"][0]
    assert info["source"] == "user" and info["declared"] == [1, -1, -1, 3]
    assert info["note"] == "TFLite Micro cannot resize inputs: it runs the stored shape 1x1x1x3"
    with pytest.raises(UserError, match="dim 3 is fixed at 3"):
        load_graph(str(model), {"x": [1, 16, 16, 4]})


def test_tflite_input_by_its_short_name() -> None:
    from tap_edge.graph.frontends.tflite_shapes import _by_full_name, short_name

    assert short_name("serving_default_input:0") == "input" and short_name("x") == "x"
    names = ["serving_default_input:0", "serving_default_state:0"]
    assert _by_full_name(names, {"input": [1, 1760], "state": [2]}) == {"serving_default_input:0": [1, 1760],
                                                                        "serving_default_state:0": [2]}
    assert _by_full_name(names, {"nosuch": [1]}) == {"nosuch": [1]}  # left for the one-line error


def test_tflite_open_batch_alone_is_assumed(tmp_path: Path) -> None:
    g = load_graph(str(conv_tflite(tmp_path / "batch.tflite", (-1, 8, 8, 3))))
    assert g.meta["inputs"][0]["source"] == "assumed batch 1" and g.tensors["y"].shape == [1, 8, 8, 8]


# ---- PyTorch --------------------------------------------------------------------------------------------------------
def test_pytorch_model_traced_at_a_custom_shape(run_cli) -> None:
    default = json.loads(run_cli("check", "resnet8", "-d", "esp32-s3", "--json").out)["model"]
    r = run_cli("check", "resnet8", "-d", "esp32-s3", "--input-shape", "x=1x3x64x64", "--json")
    custom = json.loads(r.out)["model"]
    assert default["inputs"][0]["shape"] == [1, 3, 32, 32] and default["inputs"][0]["source"] == "preprocess"
    assert custom["inputs"][0]["shape"] == [1, 3, 64, 64] and custom["inputs"][0]["source"] == "user"
    fc = 64 * 10  # every conv's MACs scale with H x W, the classifier's do not
    assert custom["macs"] - fc == 4 * (default["macs"] - fc)
    text = run_cli("check", "resnet8", "-d", "esp32-s3", "--input-shape", "1x3x64x64").out
    assert "input x 1x3x64x64 float32 (user)" in text


def test_pytorch_preprocessing_follows_the_shape() -> None:
    lm = load_model("efficientnet_lite0", {"": [1, 3, 160, 160]})
    assert lm.input_shape == [1, 3, 160, 160] and lm.preprocess.resize == round(160 * 256 / 224)
    assert lm.preprocess.mean == load_model("efficientnet_lite0").preprocess.mean
    with pytest.raises(UserError, match=r"takes \[1, 3, H, W\]"):
        load_model("resnet8", {"": [1, 1, 32, 32]})
    with pytest.raises(UserError, match=r"takes \[1, 3, H, W\]"):
        load_model("resnet8", {"": [2, 3, 32, 32]})
    with pytest.raises(UserError, match="'input', which is not an input of the model; its inputs: x"):
        load_model("resnet8", {"input": [1, 3, 32, 32]})


def test_graph_cache_key_has_the_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAP_EDGE_NO_CACHE", raising=False)
    keys = {_cache_path("resnet8"), _cache_path("resnet8", "1x3x64x64"), _cache_path("resnet8", "1x3x32x32")}
    assert len(keys) == 3 and None not in keys


def test_plan_document_records_the_shape(run_cli, tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):  # preprocessed tensors must have the traced size: the preprocessing followed the flag
        np.save(calib / f"s{i}.npy", RNG.standard_normal((3, 48, 48)).astype(np.float32))
    out = tmp_path / "plan.json"
    r = run_cli("plan", "resnet8", "-d", "nrf52840", "--calib", str(calib), "--calib-samples", "4",
                "--input-shape", "1x3x48x48", "--out", str(out), "--quiet")
    assert r.code == 0, r.err
    assert "input x 1x3x48x48 float32 (user)" in r.out
    plan = json.loads(out.read_text())
    assert plan["inputs"][0]["shape"] == [1, 3, 48, 48] and plan["inputs"][0]["source"] == "user"
    # check (and eval, compile) of that plan see the plan's shape without the flag again
    r = run_cli("check", "resnet8", "-d", "nrf52840", "--plan", str(out), "--json")
    assert json.loads(r.out)["model"]["inputs"][0]["shape"] == [1, 3, 48, 48], r.err


# ---- user models --------------------------------------------------------------------------------------------------
_USER_MODEL = '''
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d({c}, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, img):
        return self.fc(self.conv(img).mean((2, 3)))

def build():
    m = Tiny()
    m.tap_edge_preprocess = {pre}
    return m
'''


def _user_model(folder: Path, pre: str, c: int = 3, name: str = "tiny_model") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{name}.py"
    p.write_text(_USER_MODEL.format(c=c, pre=pre))
    return p


def test_model_py_factory_with_dict_preprocess(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _user_model(tmp_path / "models", '{"input_size": [3, 96, 96], "mean": [0.5], "std": [0.25]}')
    lm = load_model(f"{path}:build")
    assert lm.input_shape == [1, 3, 96, 96] and lm.preprocess.mean == (0.5,)
    assert lm.preprocess.resize == round(96 * 256 / 224)
    monkeypatch.chdir(tmp_path)
    r = run_cli("check", "./models/tiny_model.py:build", "-d", "esp32-s3", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["model"]["inputs"][0] == {"name": "img", "shape": [1, 3, 96, 96], "dtype": "float32",
                                                       "source": "preprocess", "declared": None, "note": None}
    r = run_cli("check", "models/tiny_model.py:build", "-d", "esp32-s3", "--input-shape", "img=1x3x64x64", "--json")
    assert json.loads(r.out)["model"]["inputs"][0]["shape"] == [1, 3, 64, 64]


def test_module_factory_from_the_current_folder_with_tuple_preprocess(run_cli, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _user_model(tmp_path, "(1, 49, 10)", c=1, name="kws_from_cwd")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    lm = load_model("kws_from_cwd:build")
    assert lm.input_shape == [1, 1, 49, 10]
    r = run_cli("check", "kws_from_cwd:build", "-d", "nrf52840")
    assert r.code == 0, r.err
    assert "input img 1x1x49x10 float32 (preprocess)" in r.out


def test_user_model_without_preprocess_says_the_default(tmp_path: Path) -> None:
    path = tmp_path / "plain.py"
    path.write_text(_USER_MODEL.format(c=3, pre="None").replace("    m.tap_edge_preprocess = None\n", ""))
    g = load_graph(load_model(f"{path}:build"))
    assert g.meta["inputs"][0]["source"] == "preprocess"
    assert "no tap_edge_preprocess" in g.meta["inputs"][0]["note"] and g.tensors["img"].shape == [1, 3, 224, 224]


@pytest.mark.parametrize(("pre", "words"), [
    ('"224"', "tap_edge_preprocess is not readable (str)"),
    ('{"size": 96}', "tap_edge_preprocess is not readable (keys ['size'])"),
    ("(96, 96)", "input_size [96, 96] is not (C, H, W)"),
    ('{"input_size": [3, 96, 96], "mean": [0.1, 0.2]}', "one mean and std (> 0) per channel"),
])
def test_bad_preprocess_is_one_line(run_cli, tmp_path: Path, pre: str, words: str) -> None:
    path = _user_model(tmp_path, pre, name="bad_pre")
    r = run_cli("check", f"{path}:build", "-d", "esp32-s3")
    assert r.code == 2 and words in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_user_model_errors_are_one_line(run_cli, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def build(:\n")
    raising = tmp_path / "raising.py"
    raising.write_text("def build():\n    raise RuntimeError('no weights here')\n")
    for spec, words in ((f"{tmp_path}/missing.py:build", "not found"), (f"{broken}:build", "SyntaxError"),
                        (f"{raising}:build", "raised RuntimeError: no weights here"),
                        (f"{raising}:nothing", "AttributeError")):
        r = run_cli("check", spec, "-d", "esp32-s3")
        assert r.code == 2 and words in r.err and len(r.err.strip().splitlines()) == 1, (spec, r.err)
