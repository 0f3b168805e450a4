"""TVM backend (apache-tvm, Relax): build for the host to measure, cross-compile for the device's target.

Compile (needs the ``tvm`` extra: ``apache-tvm==0.26.0`` with ``apache-tvm-ffi==0.1.13.post3``, the pair that
shares an environment with litert-torch): the model goes through the onnxruntime backend's export first (an
int8 QDQ graph at the plan's widths, or the float graph for ``fp32``). TVM cannot import INT4 initializers
or MatMulNBits, so layers planned below 8 bits are given to TVM at int8 (recorded in the manifest). The ONNX
graph is imported with ``tvm.relax.frontend.onnx``, built with ``tvm.compile`` for the host (``llvm``) and
saved as a shared library; Relax's static memory plan is read after block-memory planning (the bytes of the
``alloc_storage`` calls that ``StaticPlanBlockMemory`` leaves, and ``estimate_memory_usage``'s text). With
``--device``, the same module is cross-compiled for the profile's CPU (aarch64 for phones and Raspberry Pi,
Cortex-M triples for microcontrollers) and the object sizes are reported (code ``lib0.o`` and constants
``devc.o``; no cross linker is needed).

TVM keeps the int8 weights and their ``DequantizeLinear`` (it runs them at every inference: slow untuned);
the weight bytes reported are the constants of the graph given to TVM (the cross build's ``devc.o`` holds
them). Untuned: no
MetaSchedule tuning is run here (80 trials took 27 minutes on 2 cores in issue 5); the latency is the
untuned default schedule, reported as a ratio to ONNX Runtime by ``tools/bench_backends.py``.
"""

from __future__ import annotations

import re
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tap_edge.backends import Backend, prediction, write_manifest

from tap_edge.errors import UserError

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

    def pick_runtime(self, device: Any) -> Any:
        """Any device can be a cross-compile target; the runtime settings are the device's TVM runtime when it
        lists one, else its default."""
        for rt in device.runtimes:
            if self.serves_runtime(rt.name):
                return rt
        return device.runtime()

    def serves(self, device: Any) -> bool:
        return device_target(device) is not None or super().serves(device)

    def compile(
        self,
        model: Any,
        graph: Any,
        bits: Any,
        out_dir: Path,
        *,
        device: Any = None,
        calib: np.ndarray | None = None,
        check: np.ndarray | None = None,
    ) -> Path:
        self.require()
        import onnx
        import tvm
        from tap_edge.backends import get_backend
        from tvm.relax.frontend.onnx import from_onnx

        from tap_edge.bits import BitAssignment, LayerBits

        # TVM cannot import INT4 initializers: give it int8 where the plan says fewer bits.
        tvm_bits = BitAssignment(
            8 if bits.default_w < 8 else bits.default_w,
            bits.default_a,
            {k: LayerBits(8 if v.w < 8 else v.w, v.a) for k, v in bits.layers.items()},
        )
        widened = sorted(k for k, v in bits.layers.items() if v.w < 8)
        if bits.default_w < 8:
            widened.insert(0, f"default (w{bits.default_w})")
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        from tap_edge.backends.onnxruntime_backend import onnx_weight_bytes

        with tempfile.TemporaryDirectory(prefix="tap-edge-tvm-") as tmp:
            onnx_path = get_backend("onnxruntime").compile(
                model, graph, tvm_bits, Path(tmp), calib=calib, check=calib[:2] if calib is not None else None
            )
            proto = onnx.load(str(onnx_path))
            given = onnx_weight_bytes(onnx_path)
        stripped = strip_scalar_qdq(proto)
        shape = [1, *model.preprocess.input_size]
        mod = from_onnx(proto, {"input": shape}, keep_params_in_input=False)
        planned, estimate = _plan_memory(mod)
        ex = tvm.compile(mod, target=tvm.target.Target("llvm"))
        stem = f"{_safe(model.spec)}-{bits.label()}"
        path = out_dir / f"{stem}.tvm.so"
        ex.export_library(str(path))
        compile_s = time.perf_counter() - t0
        cross: dict[str, Any] = {}
        runtime = self.pick_runtime(device) if device is not None else None
        if device is not None:
            tgt = device_target(device)
            if tgt is None:
                cross = {"error": f"no LLVM target known for ISA {device.cores[0].isa}"}
            else:
                cross = {
                    "target": tgt,
                    **self._cross_compile(mod, tgt, out_dir / f"{stem}.{tgt['mtriple']}.tar"),
                }
        pred = prediction(graph, bits, runtime)
        write_manifest(
            path,
            {
                "backend": self.name,
                "model": model.spec,
                "bits": bits.to_dict() | {"label": bits.label()},
                "device": device.id if device is not None else None,
                "runtime": runtime.name if runtime else None,
                "input": {"name": "input", "shape": shape, "dtype": "float32"},
                "compile_s": round(compile_s, 3),
                "tvm_version": tvm.__version__,
                "widened_to_int8": widened,
                "scalar_qdq_removed": stripped,
                "tuned": False,
                "prediction": pred,
                "relax_memory_plan": {"planned_bytes": planned, "estimate": estimate},
                "actual": {
                    "weight_bytes": {
                        **given,
                        "note": "constants of the QDQ graph given to TVM (int8 weights "
                        "kept; devc.o of a cross build holds them)",
                    }
                },
                "cross_compile": cross,
            },
        )
        return path

    @staticmethod
    def _cross_compile(mod: Any, tgt: dict[str, Any], tar_path: Path) -> dict[str, Any]:
        import tvm

        try:
            t0 = time.perf_counter()
            ex = tvm.compile(mod, target=tvm.target.Target(tgt))
            ex.export_library(str(tar_path))
            with tarfile.open(tar_path) as tf:
                objects = {m.name: m.size for m in tf.getmembers()}
            return {
                "archive": tar_path.name,
                "objects": objects,
                "seconds": round(time.perf_counter() - t0, 2),
                "note": "devc.o holds the constants (weights), lib*.o the generated code",
            }
        except Exception as e:  # noqa: BLE001 - a target LLVM cannot build is reported, not fatal
            return {"error": f"{e.__class__.__name__}: {str(e)[:300]}"}

    def child_measure(
        self,
        artifact: Path,
        manifest: dict[str, Any],
        *,
        runs: int,
        warmup: int,
        baseline: Callable[[], None],
    ) -> dict[str, Any]:
        import tvm
        from tvm import relax

        from tap_edge.measure import time_runs

        baseline()
        lib = tvm.runtime.load_module(str(artifact))
        vm = relax.VirtualMachine(lib, tvm.cpu())
        shape = (manifest.get("input") or {}).get("shape")
        if not shape:
            raise UserError(
                f"{artifact}: the manifest does not give the input shape", "re-run tap-edge compile"
            )
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        xt = tvm.runtime.tensor(x) if hasattr(tvm.runtime, "tensor") else tvm.nd.array(x)
        fn = vm["main"]
        times = time_runs(lambda: fn(xt), runs=runs, warmup=warmup)
        plan = manifest.get("relax_memory_plan") or {}
        return {
            "times_ms": times,
            "runtime": f"tvm {tvm.__version__} (untuned)",
            "tvm_planned_bytes": plan.get("planned_bytes"),
            "runtime_figures_note": "tvm planned bytes: Relax StaticPlanBlockMemory constant-size storage",
        }


def _safe(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(spec).name)[:60] or "model"
