"""TVM backend (apache-tvm, Relax): build for the host to measure, cross-compile for the device's target.

Compile (needs the ``tvm`` extra: ``apache-tvm==0.26.0`` with ``apache-tvm-ffi==0.1.13.post3``, the pair that
shares an environment with litert-torch): the model goes through the onnxruntime backend's export first (an
int8 QDQ graph at the plan's widths, or the float graph for ``fp32``). TVM cannot import INT4 initializers
or MatMulNBits, so plans with weights below 8 bits are refused (:meth:`TVMBackend.plan_rules`). The ONNX
graph is imported with ``tvm.relax.frontend.onnx``, built with ``tvm.compile`` for this machine's CPU
(``llvm`` with the host ``mcpu``, one thread: ``measure`` and ONNX Runtime run one thread) and saved as a
shared library; Relax's static memory plan is read after block-memory planning (the bytes of the
``alloc_storage`` calls that ``StaticPlanBlockMemory`` leaves, and ``estimate_memory_usage``'s text). With
``--device``, the same (untuned) module is cross-compiled for the profile's CPU (aarch64 for phones and
Raspberry Pi, Cortex-M triples for microcontrollers) and the object sizes are reported (code ``lib0.o`` and
constants ``devc.o``; no cross linker is needed). The artifact's outputs are compared with ONNX Runtime's on
the same ONNX graph (``agreement`` in the manifest, with the largest absolute difference).

Untuned, TVM runs its default schedules (plain loop nests, one TIR function per operator): tens of times
slower than ONNX Runtime. :class:`TVMOptions` ``tune_trials=N`` (``--tune-trials N``) tunes the kernels with
MetaSchedule (``tvm.s_tir.meta_schedule``) on this machine for at most N measured trials in total and builds
with the best schedules found (``compile_relax``: legalize, fold constants, fuse, ``MetaScheduleApplyDatabase``).
Constant folding also evaluates ``DequantizeLinear`` of the constant int8 weights at build time, so a tuned
``w8a8`` artifact holds float32 weights and dequantizes only activations at run time (``relax_constants`` in
the manifest's ``backend_facts`` gives the bytes). The tuning database (MetaSchedule's ``JSONDatabase``:
``database_workload.json`` and ``database_tuning_record.json``, plus ``tap-edge-tuning.json`` with the trials
and seconds spent per workload) lives in ``tune_db`` (``--tune-db DIR``), by default
``~/.cache/tap-edge/tvm-tuning/<workload key>/``; the key hashes the extracted kernels and the target, so a
second compile of the same model for the same machine reuses the database without tuning again
(``tuning.reused`` in the manifest) and a larger N only runs the difference.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tap_edge.backends import Backend, BackendOptions, Build
from tap_edge.backends.inputs import InputRequest, TensorSpec, input_array
from tap_edge.backends.manifest import artifact_stem
from tap_edge.backends.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeOptions, onnx_outputs
from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.core.paths import cache_dir
from tap_edge.devices import DeviceProfile, Runtime
from tap_edge.documents import Manifest
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.models import LoadedModel
from tap_edge.plan.rules import PlanRules

#: Bookkeeping beside MetaSchedule's two JSONDatabase files: trials and seconds spent per workload key.
TUNING_STATE_FILE = "tap-edge-tuning.json"
#: At most this many check inputs are run through TVM and ONNX Runtime for the agreement (untuned TVM takes
#: seconds per image on large models).
AGREEMENT_SAMPLES = 32
#: Seconds one MetaSchedule candidate may take to build / to run. Two shared cores build slowly: the default
#: 30 s build timeout loses valid candidates.
BUILD_TIMEOUT_S = 600.0
RUN_TIMEOUT_S = 120.0
#: Most trials MetaSchedule measures per task and round (see ``_run_meta_schedule``).
MAX_TRIALS_PER_ITER = 64

#: LLVM target per device core ISA (the first core of the profile).
_TRIPLES = {
    "armv8": {"mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
    "armv9": {"mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
    "armv7e-m": {"mtriple": "thumbv7em-none-eabi", "mcpu": "cortex-m7"},
    "armv8-m": {"mtriple": "thumbv8m.main-none-eabi", "mcpu": "cortex-m33"},
    "armv8.1-m": {"mtriple": "thumbv8.1m.main-none-eabi", "mcpu": "cortex-m55"},
    "armv6-m": {"mtriple": "thumbv6m-none-eabi", "mcpu": "cortex-m0plus"},
}


def device_target(device: Any) -> dict[str, Any] | None:
    """The LLVM target dict for a device's first core, or None when its ISA has no mapping here."""
    core = device.cores[0]
    isa = core.isa.lower()
    for key in sorted(_TRIPLES, key=len, reverse=True):
        if isa.startswith(key):
            t = {"kind": "llvm", **_TRIPLES[key]}
            if key == "armv7e-m" and "m4" in core.name.lower():
                t["mcpu"] = "cortex-m4"
            return t
    return None


def planned_storage_bytes(mod: Any) -> int:
    """Bytes of the constant-size ``alloc_storage`` calls left after ``StaticPlanBlockMemory``."""
    text = mod.script()
    total = 0
    for m in re.finditer(r"alloc_storage\(R\.shape\(\[(\d+)\]\)", text):
        total += int(m.group(1))
    return total


def strip_scalar_qdq(model: Any) -> int:
    """Remove QuantizeLinear -> DequantizeLinear pairs on rank-0 constants (ONNX Runtime can quantize scalar
    constants, e.g. of shape arithmetic left in a graph; TVM's Relax importer rejects a per-axis quantize
    on a scalar). Returns the number of pairs removed; the values change by at most half a quantization
    step."""
    scalars = {i.name for i in model.graph.initializer if len(i.dims) == 0}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and len(a.t.dims) == 0:
                    scalars.add(node.output[0])
    q_of = {
        n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in scalars
    }
    rename: dict[str, str] = {}
    drop = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in q_of:
            q = q_of[node.input[0]]
            rename[node.output[0]] = q.input[0]
            drop.update({id(node), id(q)})
    keep = [n for n in model.graph.node if id(n) not in drop]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return len(rename)


def _plan_memory(mod: Any) -> tuple[int, str]:
    import tvm
    from tvm import relax

    seq = tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(),
        ]
    )
    with tvm.target.Target("llvm"):
        planned = seq(mod)
    return planned_storage_bytes(planned), str(relax.analysis.estimate_memory_usage(planned)).strip()


def host_target() -> dict[str, Any]:
    """The LLVM target of this machine's CPU (``mcpu`` as LLVM detects it), for one thread: ``tap-edge measure``
    and ONNX Runtime run one thread, and MetaSchedule needs ``num-cores`` to size its parallel loops."""
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": 1}


def default_tuning_root() -> Path:
    """Where tuning databases go when ``--tune-db`` is not given (one folder per workload key)."""
    return cache_dir("tvm-tuning")


@dataclass
class TVMOptions(BackendOptions):
    """``tune_trials``: tune the kernels with MetaSchedule, at most N measured trials in all (a database that
    holds them is reused; 0: apply the database only); ``tune_db``: the tuning database folder (default
    ``~/.cache/tap-edge/tvm-tuning/<workload key>/``). Either one asks for a tuned build."""

    FLAG_HELP: ClassVar[dict[str, tuple[str, str]]] = {
        "tune_trials": ("tunes TVM kernels with MetaSchedule", "has no tuning step"),
        "tune_db": ("holds TVM's MetaSchedule tuning database", "has no tuning step"),
    }

    tune_trials: int | None = None
    tune_db: Path | None = None

    def __post_init__(self) -> None:
        if self.tune_trials is not None and self.tune_trials < 0:
            raise UserError(f"--tune-trials must be 0 or more, got {self.tune_trials}",
                            "pass a trial budget such as --tune-trials 200 (0: apply an existing database only)")
        if self.tune_db is not None:
            self.tune_db = Path(self.tune_db)
            if self.tune_db.exists() and not self.tune_db.is_dir():
                raise UserError(f"--tune-db {self.tune_db}: not a directory", "pass a folder for the tuning database")

    @property
    def tuned(self) -> bool:
        return self.tune_trials is not None or self.tune_db is not None


@dataclass
class TuningSummary:
    """What a tuning call did, as recorded in the artifact's manifest under ``tuning``."""

    database: str
    workload_key: str
    target: dict[str, Any]
    trials_requested: int
    trials_budget_total: int
    trials_run: int
    trials_measured_total: int
    tuning_s: float
    tuning_s_total: float
    reused: bool
    tasks: int
    tasks_with_records: int
    cost_model: str
    search_strategy: str
    task_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_for_tuning(mod: Any, target: Any) -> Any:
    """The passes ``compile_relax`` runs before ``MetaScheduleApplyDatabase`` (library dispatch, legalize,
    constant folding, fusion): the kernels of this module are the workloads tuned and later looked up."""
    import tvm
    from tvm import relax

    seq = tvm.transform.Sequential(
        [
            *relax.pipeline.library_dispatch_passes(target),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ]
    )
    with target, tvm.transform.PassContext(opt_level=3):
        return seq(mod)


def workload_key(tasks: list[Any], target: Any) -> str:
    """A stable hash of the kernels to tune (their TIR text) and the target: the same model compiled for the
    same machine gets the same key, whatever its weights."""
    h = hashlib.sha256(json.dumps(target.export(), sort_keys=True, default=str).encode())
    for text in sorted(t.dispatched[0].script() for t in tasks):
        h.update(text.encode())
    return h.hexdigest()[:16]


def relax_constant_bytes(mod: Any) -> int:
    """Bytes of the constants in the Relax functions of ``mod`` (after folding: what the artifact stores)."""
    from tvm import relax

    total = [0]

    @relax.expr_functor.visitor
    class _Constants(relax.expr_functor.PyExprVisitor):
        def visit_constant_(self, op: Any) -> None:
            total[0] += math.prod(int(d) for d in op.data.shape) * np.dtype(op.data.dtype).itemsize

    for fn in mod.functions.values():
        if isinstance(fn, relax.Function):
            _Constants().visit_expr(fn)
    return total[0]


def _search_choice() -> tuple[str, str]:
    """MetaSchedule's learned cost model needs xgboost; without it the evolutionary search would rank
    candidates with a random model, so sample the design space directly instead (replay-trace)."""
    if importlib.util.find_spec("xgboost") is not None:
        return "xgb", "evolutionary"
    return "random", "replay-trace"


def _build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's ``default_build`` minus its ``import tvm.s_tir.tensor_intrin``, which also parses the CUDA,
    ROCm and Hexagon intrinsics: a batch took 33 s instead of 4 s here, as the builder starts fresh processes
    for every batch. A tensorized candidate already carries its intrinsic's body."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


#: The tensor-intrinsic modules of ``tvm.s_tir.tensor_intrin`` a CPU tuning may use, per host architecture.
_CPU_INTRINSICS = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm_cpu", "arm64": "arm_cpu", "riscv64": "riscv_cpu"}


def _register_cpu_tensor_intrinsics() -> None:
    """Register only this CPU's tensor intrinsics before MetaSchedule asks for all of them.

    ``TuneContext`` runs ``import tvm.s_tir.tensor_intrin``, whose package ``__init__`` also parses the CUDA,
    ROCm and Hexagon intrinsics: 22 s on 2 cores here, 106 s under load, for intrinsics a CPU schedule never
    uses. The package is put in ``sys.modules`` without running its ``__init__`` and
    the host's own module (x86, arm_cpu or riscv_cpu) is imported under it; TVM's later import is then a
    no-op. On another architecture, or once the package is imported, nothing changes."""
    import platform
    import sys

    name = "tvm.s_tir.tensor_intrin"
    module = _CPU_INTRINSICS.get(platform.machine().lower())
    if name in sys.modules or module is None:
        return
    import importlib

    import tvm.s_tir

    spec = importlib.util.find_spec(name)
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    try:
        importlib.import_module(f"{name}.{module}")
    except Exception:
        del sys.modules[name]
        raise
    tvm.s_tir.tensor_intrin = package


@contextmanager
def _tuning_environment(threads: int) -> Iterator[None]:
    """MetaSchedule's runner processes time candidates with ``threads`` TVM threads (inherited through the
    environment); its console log (stdout) is kept to warnings, the full log goes to ``DIR/logs``."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    old_level, old_threads = logger.level, os.environ.get("TVM_NUM_THREADS")
    logger.setLevel(logging.WARNING)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        logger.setLevel(old_level)
        if old_threads is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = old_threads


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"workloads": {}}
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable tuning state ({e.__class__.__name__})", "delete the file") from None
    return data if isinstance(data.get("workloads"), dict) else {"workloads": {}}


def tune_relax_module(
    prepared: Any, target: Any, *, trials: int, database_dir: Path | None = None
) -> tuple[Any, TuningSummary]:
    """Tune the kernels of ``prepared`` (a module from :func:`prepare_for_tuning`) for ``target`` with
    MetaSchedule and return (database, summary).

    ``trials`` caps the trials measured for this workload over every call: a database that already holds
    that many is reused as it is (no tuning), a larger budget runs only the difference. ``trials=0`` applies
    an existing database and fails when it has no record for these kernels. Each call seeds the search with
    the number of earlier calls on this workload, so a later call samples other schedules than the first."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(prepared, target)
    if not tasks:
        raise UserError("TVM found no kernels to tune in this model", "compile without --tune-trials")
    key = workload_key(tasks, target)
    db_dir = Path(database_dir) if database_dir is not None else default_tuning_root() / key
    db_dir.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(db_dir))
    state_path = db_dir / TUNING_STATE_FILE
    state = _read_state(state_path)
    entry = state["workloads"].get(key, {})
    done = int(entry.get("trials_budget", 0))
    new_trials = max(0, trials - done)
    seed = len(entry.get("sessions", []))
    cost_model, strategy = _search_choice()
    records_before = len(database)
    seconds = 0.0
    if new_trials:
        t0 = time.perf_counter()
        _run_meta_schedule(tasks, target, database, db_dir, new_trials, seed, cost_model, strategy)
        seconds = time.perf_counter() - t0
    records_added = len(database) - records_before
    with_records = sum(
        database.query_tuning_record(t.dispatched[0], target, "main") is not None for t in tasks
    )
    if not with_records:
        if new_trials:
            raise UserError(
                f"MetaSchedule measured no valid schedule in {new_trials} trials", f"see the log in {db_dir}/logs"
            )
        raise UserError(
            f"{db_dir}: no tuning record for this model's {len(tasks)} kernels on {target.attrs.get('mcpu')}",
            "pass --tune-trials N (N > 0) to tune them",
        )
    if new_trials:
        entry = {
            "trials_budget": done + new_trials,
            "trials_measured": int(entry.get("trials_measured", 0)) + records_added,
            "tuning_s": round(float(entry.get("tuning_s", 0.0)) + seconds, 1),
            "tasks": len(tasks),
            "target": target.export(),
            "cost_model": cost_model,
            "search_strategy": strategy,
            "sessions": [
                *entry.get("sessions", []),
                {
                    "trials": new_trials,
                    "records": records_added,
                    "seed": seed,
                    "seconds": round(seconds, 1),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            ],
        }
        state["workloads"][key] = entry
        state_path.write_text(json.dumps(state, indent=1, default=str))
    summary = TuningSummary(
        database=str(db_dir),
        workload_key=key,
        target={k: v for k, v in target.export().items() if k in ("kind", "mcpu", "num-cores", "mtriple")},
        trials_requested=trials,
        trials_budget_total=int(entry.get("trials_budget", 0)),
        trials_run=records_added,
        trials_measured_total=int(entry.get("trials_measured", records_added)),
        tuning_s=round(seconds, 1),
        tuning_s_total=float(entry.get("tuning_s", 0.0)),
        reused=new_trials == 0,
        tasks=len(tasks),
        tasks_with_records=with_records,
        cost_model=str(entry.get("cost_model", cost_model)),
        search_strategy=str(entry.get("search_strategy", strategy)),
        task_names=[t.task_name for t in tasks],
    )
    return database, summary


def _run_meta_schedule(
    tasks: list[Any],
    target: Any,
    database: Any,
    db_dir: Path,
    trials: int,
    seed: int,
    cost_model: str,
    strategy: str,
) -> None:
    """One MetaSchedule session: ``trials`` more trials over ``tasks``, records committed to ``database``, a
    progress bar on stderr. Half the trials go to a first round over every kernel (so each gets some), the
    gradient task scheduler gives the rest where the estimated latency drops most."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import PyBuilder

    _register_cpu_tensor_intrinsics()
    per_iter = max(1, min(MAX_TRIALS_PER_ITER, trials // (2 * len(tasks))))
    with (
        _tuning_environment(int(target.attrs.get("num-cores", 1))),
        console.progress(f"tuning {len(tasks)} TVM kernels", total=trials) as bar,
    ):

        @derived_object
        class _CountingBuilder(PyBuilder):
            """MetaSchedule's LocalBuilder, advancing the progress bar by the candidates built (measure
            callbacks only run when a task's results are collected, which can be a whole round later)."""

            def __init__(self) -> None:
                super().__init__()
                self.inner = ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S, f_build=_build_candidate)

            def build(self, build_inputs: list[Any]) -> list[Any]:
                results = self.inner.build(build_inputs)
                bar.advance(len(build_inputs))
                return results

        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, str(db_dir), strategy=strategy, seed=seed, num_threads=os.cpu_count() or 1
        )
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(db_dir),
            max_trials_global=trials,
            num_trials_per_iter=per_iter,
            builder=_CountingBuilder(),
            runner=ms.runner.LocalRunner(
                timeout_sec=RUN_TIMEOUT_S,
                evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=30),
            ),
            database=database,
            cost_model=cost_model,
        )


class TVMBackend(Backend):
    name = "tvm"
    description = (
        "apache-tvm Relax build (from the int8 QDQ / float ONNX graph) for the host and cross targets"
    )
    runtimes = ("tvm*", "microtvm*")
    kinds = ("mcu", "phone", "edge-linux")
    modules = ("tvm", "onnx", "onnxruntime")
    measure_modules = ("tvm",)
    extra = "tvm"
    suffix = ".tvm.so"
    options_class = TVMOptions

    def pick_runtime(self, device: DeviceProfile) -> Runtime:
        """Any device can be a cross-compile target; the runtime settings are the device's TVM runtime when it
        lists one, else its default."""
        for rt in device.runtimes:
            if self.serves_runtime(rt.name):
                return rt
        return device.runtime()

    def serves(self, device: DeviceProfile) -> bool:
        return device_target(device) is not None or super().serves(device)

    def plan_rules(self, runtime: Runtime | None) -> PlanRules:
        """Per layer int8 weights with 8- or 16-bit activations, or float32: TVM is given the onnxruntime
        backend's QDQ graph and cannot import INT4 initializers, so weights below 8 bits would reach it only
        widened to int8, not as planned."""
        rules = PlanRules.of(runtime.name if runtime else "tvm", self.name, {"default": {(8, 8), (8, 16), (32, 32)}},
                             reasons=("tvm backend: no INT4 import (weights below 8 bits widen to int8); int16 QDQ "
                                      "activations build and agree with ONNX Runtime (resnet8, apache-tvm 0.26.0)",))
        return rules.within(runtime) if runtime is not None else rules

    def build(self, model: LoadedModel, graph: ModelGraph, bits: BitAssignment, out_dir: Path, *,
              calib: np.ndarray, check: np.ndarray, options: TVMOptions, device: DeviceProfile | None) -> Build:
        """Build the host artifact from the onnxruntime backend's ONNX graph (tuned with MetaSchedule when
        ``options`` ask for it, see :func:`tune_relax_module`) and cross-compile it for ``device``. The
        reference is ONNX Runtime on that same graph, on the first :data:`AGREEMENT_SAMPLES` check inputs."""
        import onnx
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        self.check_buildable(graph, bits, device)
        xs_check = check[:AGREEMENT_SAMPLES]
        with tempfile.TemporaryDirectory(prefix="tap-edge-tvm-") as tmp:
            given = OnnxRuntimeBackend().build(model, graph, bits, Path(tmp), calib=calib, check=xs_check,
                                               options=OnnxRuntimeOptions(), device=None)
            proto = onnx.load(str(given.artifact))
            ort_outputs = onnx_outputs(given.artifact, xs_check)
        stripped = strip_scalar_qdq(proto)
        mod = relax.transform.DecomposeOpsForInference()(
            from_onnx(proto, {"input": model.input_shape}, keep_params_in_input=False))
        planned, estimate = _plan_memory(mod)
        target = tvm.target.Target(host_target())
        tuning: TuningSummary | None = None
        if options.tuned:
            from tvm.s_tir import meta_schedule as ms

            prepared = prepare_for_tuning(mod, target)
            database, tuning = tune_relax_module(prepared, target, trials=options.tune_trials or 0,
                                                 database_dir=options.tune_db)
            ex = ms.relax_integration.compile_relax(database, mod, target, params=None)
            constant_bytes = relax_constant_bytes(prepared)
        else:
            ex = tvm.compile(mod, target=target)
            constant_bytes = relax_constant_bytes(mod)
        stem = artifact_stem(model, bits)
        path = out_dir / f"{stem}.tvm.so"
        ex.export_library(str(path))
        return Build(
            artifact=path,
            weights=given.weights.model_copy(update={
                "note": "constants of the ONNX graph given to TVM (QDQ: int8 weights; the cross build's devc.o "
                        "holds them)"}),
            reference=(ort_outputs, "ONNX Runtime (same graph)"),
            facts={
                "tvm_version": tvm.__version__,
                "host_target": host_target(),
                "scalar_qdq_removed": stripped,
                "tuned": tuning is not None,
                "tuning": tuning.to_dict() if tuning is not None else None,
                "relax_memory_plan": {"planned_bytes": planned, "estimate": estimate},
                "relax_constants": {
                    "bytes": constant_bytes,
                    "note": "constants of the built Relax module: a tuned build folds DequantizeLinear of "
                    "constant int8 weights into float32 weights; the untuned build keeps the int8 weights",
                },
                "cross_compile": self._cross_compile(mod, device, out_dir / stem) if device is not None else {},
            },
        )

    def outputs(self, artifact: Path, xs: np.ndarray) -> np.ndarray:
        import tvm
        from tvm import relax

        return _vm_outputs(relax.VirtualMachine(tvm.runtime.load_module(str(artifact)), tvm.cpu()), xs)

    def summary_lines(self, manifest: Manifest) -> list[str]:
        if not manifest.backend_facts.get("tuning"):
            return []
        tu = TuningSummary(**manifest.backend_facts["tuning"])
        how = "reused, no new trials" if tu.reused else f"{tu.trials_run} trials in {tu.tuning_s:.0f} s"
        return [f"tuned with MetaSchedule ({how}): budget {tu.trials_budget_total} trials, "
                f"{tu.trials_measured_total} measured in {tu.tuning_s_total:.0f} s in all; "
                f"{tu.tasks_with_records}/{tu.tasks} kernels have records; database {tu.database}"]

    @staticmethod
    def _cross_compile(mod: Any, device: DeviceProfile, stem: Path) -> dict[str, Any]:
        """The same (untuned) module built for the device's CPU, saved as ``<stem>.<triple>.tar``: object sizes
        (code ``lib0.o``, constants ``devc.o``; no cross linker needed)."""
        import tvm

        tgt = device_target(device)
        if tgt is None:
            return {"error": f"no LLVM target known for ISA {device.cores[0].isa}"}
        tar_path = stem.with_name(f"{stem.name}.{tgt['mtriple']}.tar")
        try:
            t0 = time.perf_counter()
            ex = tvm.compile(mod, target=tvm.target.Target(tgt))
            ex.export_library(str(tar_path))
            with tarfile.open(tar_path) as tf:
                objects = {m.name: m.size for m in tf.getmembers()}
        except Exception as e:  # noqa: BLE001 - a target LLVM cannot build is reported, not fatal
            return {"target": tgt, "tuned": False, "error": f"{e.__class__.__name__}: {str(e)[:300]}"}
        return {
            "target": tgt,
            "tuned": False,
            "archive": tar_path.name,
            "objects": objects,
            "seconds": round(time.perf_counter() - t0, 2),
            "note": "devc.o holds the constants (weights), lib*.o the generated code",
        }

    def child_measure(
        self,
        artifact: Path,
        manifest: Manifest | None,
        *,
        runs: int,
        warmup: int,
        threads: int,
        baseline: Callable[[], None],
        feed: InputRequest,
        timeout: float,
    ) -> dict[str, Any]:
        """The Relax VM on the compiled input shape: the user's ``--input`` value when given, else seeded
        noise."""
        if manifest is None:
            raise UserError(f"{artifact}: no manifest beside it gives the input shape", "re-run tap-edge compile")
        os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts
        import tvm
        from tvm import relax

        from tap_edge.backends.measure import time_runs

        baseline()
        lib = tvm.runtime.load_module(str(artifact))
        vm = relax.VirtualMachine(lib, tvm.cpu())
        spec = TensorSpec(manifest.input.name or "input", tuple(manifest.input.shape), "float32")
        feed.check_value_names([spec.name])
        x = input_array(spec, list(manifest.input.shape), feed.for_input(feed.values, spec.name, 1), 0)
        xt = tvm.runtime.tensor(x)
        fn = vm["main"]
        times = time_runs(lambda: fn(xt), runs=runs, warmup=warmup)
        tuning = manifest.backend_facts.get("tuning")
        how = f"tuned, {tuning['trials_budget_total']} trials" if tuning else "untuned"
        return {
            "times_ms": times,
            "threads": threads,
            "runtime": f"tvm {tvm.__version__} ({how})",
            "tvm_tuning": tuning,
            "tvm_planned_bytes": manifest.backend_facts["relax_memory_plan"]["planned_bytes"],
            "runtime_figures_note": "tvm planned bytes: Relax StaticPlanBlockMemory constant-size storage",
        }


def _vm_outputs(vm: Any, xs: np.ndarray) -> np.ndarray:
    """The Relax VM's first output on each of ``xs`` (batch 1)."""
    import tvm

    outs = []
    for x in xs:
        out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[None])))
        outs.append((out.numpy() if hasattr(out, "numpy") else out[0].numpy())[0])
    return np.stack(outs)

