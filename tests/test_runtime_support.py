"""The runtime tables agree with the real interpreters installed here, and the memory model with what they
allocate.

Every (builtin, type) that a TFLite Micro or LiteRT family of device_profiles/_runtimes.yaml lists is built
into a one-op model (tests/tflite_models.py) and must build and invoke in that interpreter; every type it
leaves out must be refused (a correct UNSUPPORTED stays one). Every op class and width the class tables call
supported is tried the same way on a builtin of that class. Models run in child processes (a TFLM crash is a
failed case, not a lost run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tflite_micro")
pytest.importorskip("ai_edge_litert")

from tap_edge.devices import get_device  # noqa: E402
from tap_edge.devices.profile import Runtime, runtime_families  # noqa: E402
from tap_edge.fit.bits import BitAssignment  # noqa: E402
from tap_edge.fit.checker import check  # noqa: E402
from tap_edge.fit.footprint import plan_arena_for  # noqa: E402
from tap_edge.graph.frontends.tflite_frontend import load_tflite_graph  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from tflite_models import BUILDERS, B, ModelWriter, run_batch, single_op_model  # noqa: E402

WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}
#: The types tried per builtin (refusals are checked among these).
TRIED = {True: ["a32w32", "a32w16", "a8w8", "a8w4", "a16w8", "a16w4"], False: ["a32", "a8", "a16"]}
#: Builders that exercise several builtins at once.
GROUPS = {"VARIABLES": ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE")}
#: One builtin per op class (the class tables' claims are tried on it): what converters emit for the class.
CLASS_MODELS = {
    "conv": "CONV_2D", "dwconv": "DEPTHWISE_CONV_2D", "fc": "FULLY_CONNECTED", "matmul": "BATCH_MATMUL",
    "add": "ADD", "mul": "MUL", "concat": "CONCATENATION", "pool": "AVERAGE_POOL_2D", "global_pool": "MEAN",
    "act": "RELU", "softmax": "SOFTMAX", "reshape": "RESHAPE", "transpose": "TRANSPOSE", "pad": "PAD",
    "norm": "LAYER_NORM", "resize": "RESIZE_BILINEAR", "slice": "STRIDED_SLICE", "reduce": "SUM",
    "quantize": "QUANTIZE", "embedding": "EMBEDDING_LOOKUP", "variable": "VARIABLES", "minmax": "MAXIMUM",
    "math": "LOG", "compare": "EQUAL", "select": "SELECT_V2", "shape": "SHAPE", "cast": "CAST", "control": "IF",
}


def _family(name: str) -> Runtime:
    return Runtime.model_validate({"name": name, **runtime_families()[name]})


def _cases(rt: Runtime) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(claimed, refused) (builder, type) pairs of a family for the builtins that have a builder."""
    claimed, refused = [], []
    for builder in BUILDERS:
        names = GROUPS.get(builder, (builder,))
        if builder in ("LAYER_NORM", "DEQUANTIZE_FP16"):
            continue
        sups = [rt.builtin(n) for n in names]
        for t in TRIED[builder in WEIGHTED]:
            if builder in ("QUANTIZE", "DEQUANTIZE") and t == "a32":
                continue  # a float-to-float (de)quantize is no model
            ok = all(s is not None and t in s.types for s in sups)
            if ok and any(t in s.per_tensor_only for s in sups):  # runs with per-tensor scales only
                claimed.append((builder, f"{t}-pt"))
                refused.append((builder, t))
                continue
            (claimed if ok else refused).append((builder, t))
    dq = rt.builtin("DEQUANTIZE")
    (claimed if dq is not None and "f16" in dq.types else refused).append(("DEQUANTIZE_FP16", "a32"))
    return claimed, refused


def _run(cases: list[tuple[str, str]], runtime: str, tmp: Path) -> dict[tuple[str, str], dict]:
    models = [single_op_model(b, t) for b, t in cases]
    return dict(zip(cases, run_batch(models, runtime, tmp), strict=True))


@pytest.mark.parametrize("family, interp", [("tflm", "tflm"), ("litert", "litert")])
def test_every_listed_builtin_and_type_runs_and_every_other_is_refused(family: str, interp: str,
                                                                        tmp_path: Path) -> None:
    claimed, refused = _cases(_family(family))
    assert len(claimed) > 100 and refused
    results = _run(claimed + refused, interp, tmp_path)
    fails = {c: r.get("error", "") + r.get("log", "")[-300:] for c in claimed
             if not (r := results[c])["invoked"]}
    assert not fails, f"{family} lists types its interpreter refuses: {fails}"
    wrong = [c for c in refused if results[c]["invoked"]]
    assert not wrong, f"{family} leaves out types its interpreter runs: {wrong}"


@pytest.mark.parametrize("family, interp", [("tflm", "tflm"), ("litert", "litert")])
def test_every_class_and_width_the_class_tables_call_supported_runs(family: str, interp: str,
                                                                   tmp_path: Path) -> None:
    rt = _family(family)
    cases = []
    for cls, builder in CLASS_MODELS.items():
        if not rt.supports_op(cls):
            continue
        if builder in WEIGHTED:
            cases += [(builder, f"a{a}w{w}") for w in rt.weight_bits(cls) for a in rt.activation_bits(cls)
                      if rt.pair_allowed(cls, w, a)]
        else:
            acts = [a for a in rt.activation_bits(cls) if not (cls == "quantize" and a == 32)]
            cases += [(builder, f"a{a}") for a in acts]
    assert len(cases) > 60
    results = _run(cases, interp, tmp_path)
    fails = [c for c in cases if not results[c]["invoked"]]
    assert not fails, f"{family}'s class tables claim what its interpreter refuses: {fails}"


def test_tflm_refuses_what_the_issue_names_and_the_tables_keep_refused(tmp_path: Path) -> None:
    """float16-weight DEQUANTIZE (dequantize_common.cc:42), DENSIFY, RANGE, RFFT2D, POW, custom ops: refused by
    TFLM and UNSUPPORTED in every TFLM profile; LiteRT runs float16 weights."""
    rt = get_device("stm32h743").runtime()
    for b in ("DENSIFY", "RANGE", "RFFT2D", "POW", "TILE", "GELU"):
        assert rt.builtin(b) is None
    assert "f16" not in rt.builtin("DEQUANTIZE").types and "Convolution2DTransposeBias" not in rt.custom_ops
    w = ModelWriter()
    x, y = w.tensor("x", [1, 4]), w.tensor("y", [1, 4])
    w.op(B.CUSTOM, [x], [y], custom="MyFancyOp")
    w.io([x], [y])
    res = run_batch([w.to_bytes(), single_op_model("DEQUANTIZE_FP16", "a32")], "tflm", tmp_path)
    assert not res[0]["built"] and "CUSTOM" in res[0]["log"]
    assert not res[1]["built"] and "dequantize_common.cc" in res[1]["log"]


def _tflite(tmp: Path, builder: str, dtype: str) -> Path:
    path = tmp / f"{builder}_{dtype}.tflite"
    path.write_bytes(single_op_model(builder, dtype))
    return path


def test_check_verdicts_follow_the_tables(tmp_path: Path) -> None:
    """float32 runs on every TFLM profile; float16 weights are UNSUPPORTED on TFLM (with the kernel's source)
    and run on LiteRT; per-channel int4 FULLY_CONNECTED is refused by TFLM, per-tensor is not."""
    devices = ["stm32h743", "esp32-s3", "rp2040", "ek-ra8d1", "raspberry-pi-5"]
    f32 = check(load_tflite_graph(_tflite(tmp_path, "CONV_2D", "a32w32")), devices)
    assert all(d.verdict == "FITS" for d in f32.devices)
    f16 = {d.device: d for d in check(load_tflite_graph(_tflite(tmp_path, "CONV_2D", "a32w16")), devices).devices}
    assert f16["raspberry-pi-5"].verdict == "FITS"
    for dev in devices[:4]:
        assert f16[dev].verdict == "UNSUPPORTED" and "dequantize_common.cc" in f16[dev].problems[0]
    pc = check(load_tflite_graph(_tflite(tmp_path, "FULLY_CONNECTED", "a8w4")), ["stm32h743"]).devices[0]
    pt = check(load_tflite_graph(_tflite(tmp_path, "FULLY_CONNECTED", "a8w4-pt")), ["stm32h743"]).devices[0]
    assert pc.verdict == "UNSUPPORTED" and "per-tensor" in pc.problems[0] and pt.verdict == "FITS"


# The inputs are set (to ones, as run_batch does): an unset input is whatever the arena held, and WHILE's loop
# counter read from there could make the loop run for minutes, which the search took for "does not fit".
_PROBE = r"""
import os, sys
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from tflite_micro.python.tflite_micro import runtime
data = open(sys.argv[1], "rb").read()
devnull = os.open(os.devnull, os.O_WRONLY); os.dup2(devnull, 1); os.dup2(devnull, 2)
try:
    it = runtime.Interpreter.from_bytes(data, arena_size=int(sys.argv[2]))
    for n in range(schema.Model.GetRootAs(data, 0).Subgraphs(0).InputsLength()):
        d = it.get_input_details(n)
        it.set_input(np.ones([int(s) for s in d["shape"]] or [1], d["dtype"]), n)
    it.invoke()
except Exception:
    sys.exit(3)
"""


def _runs_at(path: Path, arena: int) -> bool:
    """Whether TFLM builds and invokes the model in ``arena`` bytes (its own child: a too small arena can
    crash or hang it)."""
    try:
        return subprocess.run([sys.executable, "-c", _PROBE, str(path), str(arena)], timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _smallest_arena(path: Path, guess: int) -> int:
    """The smallest arena (16-byte steps, TFLM's alignment) that builds and invokes, searched from ``guess``."""
    lo, hi = guess, guess
    step = 64
    while not _runs_at(path, hi):
        lo, hi, step = hi, hi + step, step * 2
    while lo == hi or _runs_at(path, lo):
        hi, lo, step = lo, max(lo - step, 16), step * 2
    while hi - lo > 16:
        mid = (lo + hi) // 32 * 16
        lo, hi = (lo, mid) if _runs_at(path, mid) else (mid, hi)
    return hi


@pytest.mark.parametrize("builder, dtype", [
    ("CONV_2D", "a8w4"),  # the unpacked int4 filter in the head
    ("FULLY_CONNECTED", "a32w32"), ("BATCH_MATMUL", "a32"),  # BATCH_MATMUL's transposed constant operand
    ("IF", "a8"), ("WHILE", "a32"), ("VARIABLES", "a8"),  # subgraphs, resource variables
    ("SOFTMAX", "a16"), ("MEAN", "a8"), ("LAYER_NORM", "a32"),
])
def test_predicted_tflm_arena_is_the_smallest_arena_that_runs(builder: str, dtype: str, tmp_path: Path) -> None:
    """The reference-kernel prediction (64-bit host build) against a search of TFLM's smallest arena, one
    child process per probe."""
    path = _tflite(tmp_path, builder, dtype)
    rt = get_device("stm32h743").runtime().model_copy(update={"scratch": "tflm"})
    predicted = plan_arena_for(load_tflite_graph(path), BitAssignment(native=True), rt).arena_bytes
    measured = _smallest_arena(path, predicted)
    # one-op models need about 1-3 KiB, where TFLM's planning temporaries (approximated) decide the minimum
    assert abs(predicted - measured) <= max(0.03 * measured, 224), (predicted, measured)
