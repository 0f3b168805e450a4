"""TFLite front-end: a real int8 model shipped on PyPI, small models written here with the schema classes
that ship in ai_edge_litert (no TensorFlow converter needed), and every kind of bad file."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tap_edge.core.errors import ModelLoadError
from tap_edge.graph.frontends.tflite_frontend import load_tflite_graph
from tap_edge.graph.graph import ModelGraph

pytest.importorskip("ai_edge_litert")
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

KNOWN_CLASSES = {"conv", "dwconv", "fc", "concat", "slice", "reshape", "act", "quantize", "variable", "control"}


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


#: microWakeWord "okay nabu" (int8, streaming, 80,824 bytes) from PyPI package pymicro-wakeword 2.5.0.
WAKEWORD = _package_file("pymicro_wakeword", "models", "okay_nabu.tflite")
#: The float32 sine model that ships in tflite-micro's Python package (3 FULLY_CONNECTED ops).
SINE = _package_file("tflite_micro", "python", "tflite_micro", "sine_float.tflite")

needs_wakeword = pytest.mark.skipif(WAKEWORD is None,
                                    reason="pip install pymicro-wakeword (ships okay_nabu.tflite)")


# ---- a small model writer ----------------------------------------------------------------------------------
class _Writer:
    """Builds a one-subgraph .tflite with the flatbuffer object API."""

    def __init__(self) -> None:
        self.buffers = [schema.BufferT()]
        self.tensors: list[schema.TensorT] = []
        self.codes: list[schema.OperatorCodeT] = []
        self.ops: list[schema.OperatorT] = []

    def tensor(self, name: str, shape: list[int], ttype: int = schema.TensorType.FLOAT32,
               data: np.ndarray | None = None, scales: int = 0) -> int:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), shape, ttype, 0
        if data is not None:
            b = schema.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8).tolist()
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if scales:
            q = schema.QuantizationParametersT()
            q.scale, q.zeroPoint = [0.1] * scales, [0] * scales
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, shape: list[int], ttype: int = schema.TensorType.FLOAT32,
              scales: int = 0) -> int:
        np_type = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8,
                   schema.TensorType.INT32: np.int32}.get(ttype, np.uint8)
        n = math.prod(shape)
        if ttype == schema.TensorType.INT4:
            n = (n + 1) // 2
        return self.tensor(name, shape, ttype, np.zeros(n, np_type), scales)

    def op(self, code: int, inputs: list[int], outputs: list[int], options: object = None,
           options_type: int = 0, custom: str | None = None, version: int = 1) -> None:
        oc = schema.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
        if custom:
            oc.customCode = custom.encode()
        self.codes.append(oc)
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = len(self.codes) - 1, inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.ops.append(o)

    def write(self, path: Path, inputs: list[int], outputs: list[int]) -> Path:
        import flatbuffers

        sg = schema.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators = self.tensors, inputs, outputs, self.ops
        m = schema.ModelT()
        m.version, m.subgraphs, m.buffers, m.operatorCodes = 3, [sg], self.buffers, self.codes
        b = flatbuffers.Builder(1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        path.write_bytes(bytes(b.Output()))
        return path


def _small_model(path: Path, conv_version: int = 1) -> Path:
    """input 8x8x3 -> conv3x3(4, relu6 fused) -> dwconv3x3 x2 /2 -> relu6 -> mean(1,2) -> reshape
    -> fc(10, int4) -> MyFancyOp (custom) -> logistic -> softmax."""
    B, T = schema.BuiltinOperator, schema.TensorType
    w = _Writer()
    x = w.tensor("input", [1, 8, 8, 3])
    c = w.tensor("conv_out", [1, 8, 8, 4])
    co = schema.Conv2DOptionsT()
    co.padding, co.strideH, co.strideW = schema.Padding.SAME, 1, 1
    co.fusedActivationFunction = schema.ActivationFunctionType.RELU6
    conv_w, conv_b = w.const("conv_w", [4, 3, 3, 3], T.INT8, scales=4), w.const("conv_b", [4], T.INT32)
    w.op(B.CONV_2D, [x, conv_w, conv_b], [c], co, schema.BuiltinOptions.Conv2DOptions, version=conv_version)
    d = w.tensor("dw_out", [1, 4, 4, 8])
    do = schema.DepthwiseConv2DOptionsT()
    do.padding, do.strideH, do.strideW, do.depthMultiplier = schema.Padding.SAME, 2, 2, 2
    w.op(B.DEPTHWISE_CONV_2D, [c, w.const("dw_w", [1, 3, 3, 8], T.INT8), w.const("dw_b", [8], T.INT32)], [d],
         do, schema.BuiltinOptions.DepthwiseConv2DOptions)
    r = w.tensor("relu6_out", [1, 4, 4, 8])
    w.op(B.RELU6, [d], [r])
    axes = w.tensor("mean_axes", [2], T.INT32, np.array([1, 2], np.int32))
    m = w.tensor("mean_out", [1, 1, 1, 8])
    ro = schema.ReducerOptionsT()
    ro.keepDims = True
    w.op(B.MEAN, [r, axes], [m], ro, schema.BuiltinOptions.ReducerOptions)
    flat = w.tensor("flat", [1, 8])
    w.op(B.RESHAPE, [m, w.tensor("new_shape", [2], T.INT32, np.array([1, 8], np.int32))], [flat])
    f = w.tensor("fc_out", [1, 10])
    w.op(B.FULLY_CONNECTED, [flat, w.const("fc_w", [10, 8], T.INT4), w.const("fc_b", [10], T.INT32)], [f],
         schema.FullyConnectedOptionsT(), schema.BuiltinOptions.FullyConnectedOptions)
    cu = w.tensor("custom_out", [1, 10])
    w.op(B.CUSTOM, [f], [cu], custom="MyFancyOp")
    sg = w.tensor("sigmoid_out", [1, 10])
    w.op(B.LOGISTIC, [cu], [sg])
    sm = w.tensor("probs", [1, 10])
    so = schema.SoftmaxOptionsT()
    so.beta = 1.0
    w.op(B.SOFTMAX, [sg], [sm], so, schema.BuiltinOptions.SoftmaxOptions)
    return w.write(path, [x], [sm])


# ---- the real model ----------------------------------------------------------------------------------------
@needs_wakeword
def test_real_int8_model_loads() -> None:
    g = load_tflite_graph(WAKEWORD)
    assert g.frontend == "tflite" and g.name == "okay_nabu"
    assert g.meta["layout"] == "NHWC" and g.meta["path"] == str(WAKEWORD)
    assert len(g.ops) > 0 and g.params > 0 and g.macs > 0
    assert {o.op_class for o in g.ops} <= KNOWN_CLASSES
    counts = {c: sum(o.op_class == c for o in g.ops) for c in ("conv", "dwconv", "fc")}
    assert counts == {"conv": 6, "dwconv": 8, "fc": 1}
    # resource-variable ops (streaming state) get their own class, which TFLM runtimes support; CALL_ONCE runs
    # the init subgraph (VAR_HANDLE + ASSIGN_VARIABLE of zeros), whose 12 ops follow it in the op list
    assert not g.unknown_ops()
    assert {o.op_type for o in g.ops if o.op_class == "variable"} == {"VAR_HANDLE", "READ_VARIABLE",
                                                                       "ASSIGN_VARIABLE"}
    assert [o.op_type for o in g.ops if o.op_class == "control"] == ["CALL_ONCE"]
    (init,) = g.subgraphs
    assert init.caller == g.ops[0].name and len(init.ops) == 12 and len(g.ops) == 73
    assert [g.op(n).op_type for n in init.ops] == ["VAR_HANDLE", "ASSIGN_VARIABLE"] * 6
    tfl = g.meta["tflite"]
    assert tfl["file_bytes"] == 80824 and tfl["tensors"] == 117 and tfl["ops"] == 73 and tfl["subgraphs"] == 2
    assert sorted(tfl["variables"].values()) == [80, 128, 512, 768, 896, 1024]
    q = g.quantizable_ops()
    assert len(q) == 15 and all(o.weight_dtype == "int8" for o in q)
    assert all(o.bias == o.out_channels for o in q)
    first_conv = next(o for o in g.ops if o.op_class == "conv")
    assert first_conv.weight_shape == [64, 40, 5, 1]  # TFLite [64, 5, 1, 40] in PyTorch layout
    assert first_conv.macs == 64 * 40 * 5 and first_conv.fused == ["relu"]
    assert g.tensors[g.inputs[0]].shape == [1, 3, 40] and g.tensors[g.inputs[0]].dtype == "int8"
    assert g.tensors[g.outputs[0]].dtype == "uint8"


@needs_wakeword
def test_real_model_int8_weight_bytes_match_the_file() -> None:
    """Bytes of the int8 weight tensors, as the interpreter reads them, equal the weights the graph holds."""
    g = load_tflite_graph(WAKEWORD)
    it = Interpreter(model_path=str(WAKEWORD))
    weight_ids = {int(op["inputs"][1]) for op in it._get_ops_details()
                  if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")}
    file_bytes = sum(it.get_tensor(i).nbytes for i in weight_ids if it.get_tensor(i).dtype == np.int8)
    assert file_bytes == sum(o.weight_params for o in g.ops if o.weight_params and o.weight_dtype == "int8")
    assert file_bytes == 36480  # 6 conv + 8 dwconv + 1 fc


@needs_wakeword
def test_real_model_graph_is_consistent_and_round_trips(tmp_path: Path) -> None:
    g = load_tflite_graph(WAKEWORD)
    assert len({o.name for o in g.ops}) == len(g.ops)
    for o in g.ops:
        assert all(t in g.tensors for t in o.inputs + o.outputs), o.name
    assert set(g.lifetimes()) == set(g.tensors)
    g.save(tmp_path / "g.json")
    back = ModelGraph.load(tmp_path / "g.json")
    assert back.to_dict() == json.loads(json.dumps(g.to_dict()))


@pytest.mark.skipif(SINE is None, reason="tflite-micro not installed")
def test_tflite_micro_sine_model() -> None:
    g = load_tflite_graph(SINE)
    assert [o.op_class for o in g.ops] == ["fc", "fc", "fc"]
    assert [o.weight_shape for o in g.ops] == [[16, 1], [16, 16], [1, 16]]
    assert g.params == 16 + 16 + 256 + 16 + 16 + 1 and all(o.weight_dtype == "float32" for o in g.ops)


# ---- op mapping on a model written here ------------------------------------------------------------------
def test_op_mapping_layouts_and_macs(tmp_path: Path) -> None:
    g = load_tflite_graph(_small_model(tmp_path / "small.tflite"))
    assert [(o.op_type, o.op_class) for o in g.ops] == [
        ("CONV_2D", "conv"), ("DEPTHWISE_CONV_2D", "dwconv"), ("RELU6", "act"), ("MEAN", "global_pool"),
        ("RESHAPE", "reshape"), ("FULLY_CONNECTED", "fc"), ("MyFancyOp", "custom"), ("LOGISTIC", "act"),
        ("SOFTMAX", "softmax")]
    conv, dw, relu6, mean, reshape, fc, custom, sig, _ = g.ops
    assert conv.weight_shape == [4, 3, 3, 3] and conv.weight_dtype == "int8" and conv.bias == 4
    assert conv.macs == 8 * 8 * 4 * 3 * 3 * 3 and conv.fused == ["relu6"]
    assert conv.attrs["weight_quant"] == "per_channel" and conv.attrs["padding"] == "same"
    assert dw.weight_shape == [8, 1, 3, 3] and dw.macs == 4 * 4 * 8 * 3 * 3
    assert dw.attrs["stride"] == [2, 2] and dw.attrs["groups"] == 4 and dw.attrs["depth_multiplier"] == 2
    assert relu6.attrs["fn"] == "relu6" and sig.attrs["fn"] == "sigmoid"
    assert conv.attrs["operand_scales"] == [0, 4, 0, 0]  # input, per-channel filter, bias, output
    assert mean.other_params == 2 and reshape.other_params == 2  # the axes and new-shape vectors
    assert fc.weight_shape == [10, 8] and fc.weight_dtype == "int4" and fc.bias == 10 and fc.macs == 80
    assert custom.name == "custom_out" and custom.inputs == ["fc_out"]
    assert g.params == 108 + 4 + 72 + 8 + 2 + 2 + 80 + 10
    assert g.inputs == ["input"] and g.outputs == ["probs"]
    assert g.tensors["input"].kind == "input" and g.tensors["probs"].kind == "output"
    assert "conv_w" not in g.tensors and "mean_axes" not in g.tensors  # constants are attached, not tensors


def test_interpreter_alone_when_the_schema_cannot_read_the_file(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the flatbuffer details the interpreter still gives ops, constants (data before allocation)
    and MEAN axes; only the stored INT4 type (read as int8) and the options are lost."""
    from tap_edge.graph.frontends import tflite_frontend

    def broken(data: bytes) -> None:
        raise ValueError("schema mismatch")

    monkeypatch.setattr(tflite_frontend, "_from_flatbuffer", broken)
    g = load_tflite_graph(_small_model(tmp_path / "small.tflite"))
    assert [o.op_class for o in g.ops][:6] == ["conv", "dwconv", "act", "global_pool", "reshape", "fc"]
    assert g.ops[0].weight_shape == [4, 3, 3, 3] and g.ops[0].bias == 4 and g.ops[0].fused == []
    assert g.ops[5].weight_dtype == "int8" and g.params == 108 + 4 + 72 + 8 + 2 + 2 + 80 + 10


def test_float16_weights_behind_dequantize(tmp_path: Path) -> None:
    """fp16 weight storage: DEQUANTIZE(const fp16) -> FULLY_CONNECTED; the weights count once, as float16."""
    B, T = schema.BuiltinOperator, schema.TensorType
    w = _Writer()
    x = w.tensor("x", [1, 4])
    w16 = w.tensor("fc_w_fp16", [3, 4], T.FLOAT16, np.zeros((3, 4), np.float16))
    deq = w.tensor("fc_w", [3, 4])
    w.op(B.DEQUANTIZE, [w16], [deq])
    y = w.tensor("y", [1, 3])
    w.op(B.FULLY_CONNECTED, [x, deq, w.const("fc_b", [3])], [y], schema.FullyConnectedOptionsT(),
         schema.BuiltinOptions.FullyConnectedOptions)
    g = load_tflite_graph(w.write(tmp_path / "fp16.tflite", [x], [y]))
    dq, fc = g.ops
    assert dq.op_class == "quantize" and dq.params == 0 and dq.attrs["weight_storage"]
    assert fc.weight_shape == [3, 4] and fc.weight_dtype == "float16" and fc.bias == 3 and fc.quantizable
    assert g.params == 15 and fc.inputs == ["x", "fc_w"]


def test_op_unknown_to_the_runtime_is_read_from_the_flatbuffer(tmp_path: Path) -> None:
    """A CONV_2D version the installed runtime lacks: the interpreter refuses it, the graph still loads."""
    g = load_tflite_graph(_small_model(tmp_path / "newer.tflite", conv_version=99))
    assert g.meta["reader"] == "flatbuffer" and "CONV_2D" in g.meta["runtime_error"]
    assert len(g.ops) == 9 and g.ops[0].op_class == "conv" and g.ops[0].weight_shape == [4, 3, 3, 3]
    assert g.ops[5].weight_dtype == "int4" and g.ops[3].op_class == "global_pool"


# ---- bad input ---------------------------------------------------------------------------------------------
def _load_error(path: Path) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as exc:
        load_tflite_graph(path)
    err = exc.value
    assert str(path) in err.message and err.hint and "\n" not in str(err)
    return err


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _load_error(tmp_path / "nope.tflite").message


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.tflite"
    p.write_bytes(b"")
    assert "empty" in _load_error(p).message


def test_directory(tmp_path: Path) -> None:
    assert "directory" in _load_error(tmp_path).message


@pytest.mark.parametrize("keep", [100, 0.5])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    src = WAKEWORD or _small_model(tmp_path / "src.tflite")
    data = src.read_bytes()
    p = tmp_path / "cut.tflite"
    p.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    assert "truncated or corrupt" in _load_error(p).message


@pytest.mark.parametrize("content", [b"hello, this is plain text and not a model\n", bytes(range(256)) * 4,
                                     b"\x08\x07\x12\x04onnx" + b"\x00" * 64])
def test_not_a_flatbuffer(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "model.tflite"
    p.write_bytes(content)
    assert "not a TFLite flatbuffer" in _load_error(p).message


def test_git_lfs_pointer_and_zip_are_named(tmp_path: Path) -> None:
    lfs = tmp_path / "lfs.tflite"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    assert "git lfs pull" in _load_error(lfs).hint
    z = tmp_path / "bundle.tflite"
    z.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    assert "zip" in _load_error(z).message


def test_op_referencing_a_missing_tensor_is_corrupt(tmp_path: Path) -> None:
    p = _small_model(tmp_path / "bad.tflite")
    m = schema.ModelT.InitFromPackedBuf(bytearray(p.read_bytes()), 0)
    m.subgraphs[0].operators[0].inputs = [0, 1, 200]
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    p.write_bytes(bytes(b.Output()))
    assert "corrupt" in _load_error(p).message
