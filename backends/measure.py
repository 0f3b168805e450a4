"""Measurement always runs in a child process, so a runtime that crashes, hangs or eats memory cannot take the
CLI (or a benchmark's earlier results) down with it.

The parent starts ``python -m tap_edge.backends.measure SPEC.json``, waits with ``os.wait4`` (no polling of the child's
memory: that slows inference on small machines) and reads the child's JSON result. The child:

1. imports the backend's runtime and records its peak RSS (``VmHWM``): the *import baseline*;
2. loads the artifact, runs ``warmup`` untimed then ``runs`` timed inferences (median and p90 reported);
3. records ``VmHWM`` again. ``peak_rss_bytes`` is the child's whole peak (``VmHWM``);
   ``model_rss_bytes`` = peak minus the import baseline: what the model itself costs in that runtime on this
   host. ``wait4_maxrss_bytes`` (``ru_maxrss`` from ``wait4``) is kept as a cross-check only: Linux carries
   the pre-``exec`` high-water mark into it, so from a large parent (a benchmark holding torch models) it
   reports the parent's size; from the small CLI process it equals ``VmHWM``.

Runtime figures (ORT RSS growth, TFLite Micro's arena from ``print_allocations`` and from the smallest arena
that constructs) come from the backend's ``child_measure``. A child killed by a signal, exiting non-zero or
running past ``timeout`` s raises :class:`MeasureError` with one line saying which.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.core.errors import UserError

DEFAULT_RUNS = 20
DEFAULT_WARMUP = 3
DEFAULT_TIMEOUT = 300.0


class MeasureError(UserError):
    """The measurement child crashed, failed or timed out (the CLI stays up; exit code 1)."""

    exit_code = 1


def vm_hwm() -> int:
    """Peak resident set size of this process in bytes (``VmHWM`` from /proc; ``ru_maxrss`` elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def vm_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def latency_stats(times_ms: list[float]) -> dict[str, Any]:
    a = np.asarray(times_ms, dtype=np.float64)
    if a.size == 0:
        return {"runs": 0}
    return {
        "runs": int(a.size),
        "median_ms": round(float(np.median(a)), 4),
        "p90_ms": round(float(np.percentile(a, 90)), 4),
        "min_ms": round(float(a.min()), 4),
        "mean_ms": round(float(a.mean()), 4),
    }


def time_runs(fn: Any, *, runs: int, warmup: int) -> list[float]:
    """Call ``fn()`` ``warmup`` times untimed, then ``runs`` times timed; milliseconds per call."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


# ---- parent side -----------------------------------------------------------------------------------------
def run_child(
    target: str, kwargs: dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT, what: str = "measurement"
) -> dict[str, Any]:
    """Run ``module:function(**kwargs)`` in a fresh Python process; return its dict result plus
    ``wait4_maxrss_bytes`` and ``wall_s``. Raises :class:`MeasureError` on a crash, a failure or a timeout."""
    with tempfile.TemporaryDirectory(prefix="tap-edge-measure-") as tmp:
        spec = Path(tmp, "spec.json")
        result = Path(tmp, "result.json")
        spec.write_text(json.dumps({"target": target, "kwargs": kwargs, "result": str(result)}, default=str))
        out_f = open(Path(tmp, "stdout.txt"), "wb")  # noqa: SIM115 - closed below
        err_f = open(Path(tmp, "stderr.txt"), "wb")  # noqa: SIM115
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tap_edge.backends.measure", str(spec)],
                stdout=out_f,
                stderr=err_f,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            out_f.close()
            err_f.close()
        status, rusage, timed_out = _wait(proc, timeout)
        wall = time.perf_counter() - t0
        stderr = Path(tmp, "stderr.txt").read_text(errors="replace")
        stdout = Path(tmp, "stdout.txt").read_text(errors="replace")
        if timed_out:
            raise MeasureError(
                f"{what} timed out after {timeout:.0f} s and was killed", "raise --timeout, or lower --runs"
            )
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            hint = (
                "out of memory?" if sig == signal.SIGKILL else "the runtime crashed; earlier results are kept"
            )
            raise MeasureError(f"{what} process was killed by {name}", hint)
        code = os.WEXITSTATUS(status)
        if not result.exists():
            last = _last_line(stderr) or _last_line(stdout) or "no output"
            raise MeasureError(f"{what} process exited with code {code} without a result: {last}")
        data = json.loads(result.read_text())
        if "error" in data:
            raise MeasureError(f"{what} failed: {data['error']}", data.get("hint", ""))
        data["wait4_maxrss_bytes"] = rusage.ru_maxrss * 1024 if rusage is not None else None
        data["wall_s"] = round(wall, 3)
        data["child_stdout"] = stdout[-20000:]
        return data


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int, Any, bool]:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = status
            return status, rusage, False
        if time.monotonic() > deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = status
            return status, rusage, True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def measure_artifact(
    artifact: Path,
    *,
    backend: str | None = None,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    timeout: float = DEFAULT_TIMEOUT,
    threads: int = 1,
) -> dict[str, Any]:
    """Measure a compiled artifact in a child process (see the module docstring); ``backend`` defaults to
    the one whose artifacts end like ``artifact``."""
    from tap_edge.backends import backend_for_artifact, get_backend

    artifact = Path(artifact)
    if not artifact.exists():
        raise UserError(f"{artifact}: artifact not found", "compile one with tap-edge compile")
    b = get_backend(backend) if backend else backend_for_artifact(artifact)
    b.require(measure=True)
    data = run_child(
        "tap_edge.backends.measure:_measure_in_child",
        {"backend": b.name, "artifact": str(artifact.resolve()), "runs": runs, "warmup": warmup, "threads": threads},
        timeout=timeout,
        what=f"{b.name} measurement",
    )
    data["backend"] = b.name
    data["artifact_bytes"] = artifact.stat().st_size
    data["latency"] = latency_stats(data.pop("times_ms", []))
    return data


# ---- child side ------------------------------------------------------------------------------------------
def _measure_in_child(backend: str, artifact: str, runs: int, warmup: int, threads: int) -> dict[str, Any]:
    from tap_edge.backends import get_backend, read_manifest

    b = get_backend(backend)
    state: dict[str, int] = {}

    def baseline() -> None:
        state["import_baseline_bytes"] = vm_hwm()

    path = Path(artifact)
    res = b.child_measure(path, read_manifest(path), runs=runs, warmup=warmup, threads=threads, baseline=baseline)
    peak = vm_hwm()
    base = state.get("import_baseline_bytes", 0)
    res["peak_rss_bytes"] = peak
    res["import_baseline_bytes"] = base
    res["model_rss_bytes"] = peak - base if base else None
    return res


def _selftest(mode: str = "ok", seconds: float = 60.0) -> dict[str, Any]:
    """A child target for tests: ``ok``, ``raise``, ``crash`` (SIGSEGV), ``hang``, ``exit``."""
    if mode == "raise":
        raise RuntimeError("selftest failure")
    if mode == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "hang":
        time.sleep(seconds)
    if mode == "exit":
        os._exit(3)
    return {"mode": mode, "times_ms": [1.0, 2.0, 3.0], "peak_rss_bytes": vm_hwm()}


def _child_main(spec_path: str) -> int:
    import importlib
    import traceback

    spec = json.loads(Path(spec_path).read_text())
    result = Path(spec["result"])
    try:
        mod_name, _, fn_name = spec["target"].partition(":")
        fn = getattr(importlib.import_module(mod_name), fn_name)
        data = fn(**spec["kwargs"])
    except UserError as e:
        data = {"error": e.message, "hint": e.hint}
    except Exception as e:  # reported to the parent as one line
        data = {
            "error": f"{e.__class__.__name__}: {str(e)[:500]}",
            "traceback": traceback.format_exc()[-4000:],
        }
    sys.stdout.flush()
    result.write_text(json.dumps(data, default=_default))
    return 0


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
