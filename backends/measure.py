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

Runtime figures (ORT RSS growth, TFLite Micro's arena from ``print_allocations`` and the smallest arena that
builds and runs) come from the backend's ``child_measure``. A child killed by a signal, exiting non-zero or
running past ``timeout`` s raises :class:`MeasureError` with one line saying which (its last output lines are
kept in ``MeasureError.output``). A measurement child may start children of its own (TFLite Micro runs in one,
so a crash costs its figures only): they stay in the measurement child's process group, so a timeout kills
them too.

:class:`ProbeChild` asks one child process many small questions (``module:function(size, ...)``, one size at a
time): a question that crashes the child (a segfault) or hangs is an answer too (``crashed``), and the next
question starts a fresh child. TFLite Micro's arena search runs on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.backends.inputs import InputRequest
from tap_edge.core.errors import UserError

DEFAULT_RUNS = 20
DEFAULT_WARMUP = 3
DEFAULT_TIMEOUT = 300.0
#: Set in every child's environment: its own children stay in its process group (killed with it).
CHILD_ENV = "TAP_EDGE_MEASURE_CHILD"
#: The folder of the running child's spec; :func:`capture_fds` keeps what it captures there, so the parent
#: still reads it when the child crashes mid-capture.
CHILD_DIR_ENV = "TAP_EDGE_MEASURE_CHILD_DIR"
#: Lines of a failed child's output kept in :attr:`MeasureError.output`.
OUTPUT_TAIL_LINES = 6


class MeasureError(UserError):
    """The measurement child crashed, failed or timed out (the CLI stays up; exit code 1). ``output``: the
    child's last output lines (a crashed runtime's last words)."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", output: str = "") -> None:
        super().__init__(message, hint)
        self.output = output


def vm_hwm() -> int:
    """Peak resident set size of this process in bytes: ``VmHWM`` from /proc (Linux), else ``ru_maxrss``
    (bytes on macOS, KiB on the other Unixes), else psutil's peak working set (Windows, no ``resource``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def vm_rss() -> int:
    """Resident set size of this process in bytes: ``VmRSS`` from /proc, else psutil (macOS, Windows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process().memory_info().rss)


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
        new_session = os.environ.get(CHILD_ENV) != "1"  # a child's children stay in its group
        env = dict(os.environ, **{CHILD_ENV: "1"})
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tap_edge.backends.measure", str(spec)],
                stdout=out_f,
                stderr=err_f,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=new_session,
            )
        finally:
            out_f.close()
            err_f.close()
        status, rusage, timed_out = _wait(proc, timeout, group=new_session)
        wall = time.perf_counter() - t0
        stderr = Path(tmp, "stderr.txt").read_text(errors="replace")
        stdout = Path(tmp, "stdout.txt").read_text(errors="replace")
        if timed_out or os.WIFSIGNALED(status) or not result.exists():
            captured = "".join(p.read_text(errors="replace") for p in sorted(Path(tmp).glob("captured-*")))
            output = output_tail(stdout + "\n" + stderr + "\n" + captured)
        if timed_out:
            raise MeasureError(
                f"{what} timed out after {timeout:.0f} s and was killed", "raise --timeout, or lower --runs", output
            )
        if os.WIFSIGNALED(status):
            name = signal_name(os.WTERMSIG(status))
            hint = "out of memory?" if name == "SIGKILL" else "the runtime crashed; earlier results are kept"
            raise MeasureError(f"{what} process was killed by {name}", hint, output)
        code = os.WEXITSTATUS(status)
        if not result.exists():
            last = _last_line(stderr) or _last_line(stdout) or "no output"
            raise MeasureError(f"{what} process exited with code {code} without a result: {last}", "", output)
        data = json.loads(result.read_text())
        if "error" in data:
            raise MeasureError(f"{what} failed: {data['error']}", data.get("hint", ""))
        data["wait4_maxrss_bytes"] = rusage.ru_maxrss * 1024 if rusage is not None else None
        data["wall_s"] = round(wall, 3)
        data["child_stdout"] = stdout[-20000:]
        return data


def _wait(proc: subprocess.Popen, timeout: float, *, group: bool) -> tuple[int, Any, bool]:
    """Wait for ``proc`` (``wait4``: its rusage too); past ``timeout`` kill it (its process group when it has
    its own)."""
    if not hasattr(os, "wait4"):  # Windows: no rusage (the child's own peak RSS is the figure anyway)
        try:
            return proc.wait(timeout=timeout) << 8, None, False  # as a wait status: the exit code in bits 8-15
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait() << 8, None, True
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = status
            return status, rusage, False
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    os.kill(proc.pid, signal.SIGKILL)
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = status
            return status, rusage, True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def output_tail(text: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of ``text``, joined with `` | `` (a child's last words, one line)."""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])[:1000]


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"


@contextlib.contextmanager
def capture_fds() -> Iterator[dict[str, str]]:
    """Capture what C code writes to file descriptors 1 and 2 (TFLM's ``MicroPrintf`` writes to stderr) into
    ``res["text"]``. In a measurement child the capture is a file in the child's folder, which the parent
    reads if the child crashes before the capture ends (:attr:`MeasureError.output`)."""
    res: dict[str, str] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    folder = os.environ.get(CHILD_DIR_ENV)
    tmp = tempfile.NamedTemporaryFile(prefix="captured-", dir=folder or None, delete=False)  # noqa: SIM115
    os.dup2(tmp.fileno(), 1)
    os.dup2(tmp.fileno(), 2)
    try:
        yield res
    finally:
        try:
            import ctypes

            ctypes.CDLL(None).fflush(None)
        except OSError:
            pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        tmp.seek(0)
        res["text"] = tmp.read().decode(errors="replace")
        tmp.close()
        Path(tmp.name).unlink(missing_ok=True)


class ProbeChild:
    """Asks a child process ``target(size, **kwargs, **args)`` (``module:function``, returning a JSON-able
    dict) for one size at a time (see the module docstring). :meth:`probe` returns the function's dict, or
    ``{"crashed": "killed by SIGSEGV"}`` / ``{"crashed": "timed out after 60 s"}`` /
    ``{"crashed": "exited with code 1"}``; the next probe then starts a new child. ``starts`` counts the
    children started, ``crashes`` the probes that crashed one."""

    def __init__(self, target: str, kwargs: dict[str, Any], *, timeout: float = 60.0) -> None:
        self.target = target
        self.kwargs = kwargs
        self.timeout = timeout
        self.starts = 0
        self.crashes = 0
        self._proc: subprocess.Popen | None = None
        self._results: int | None = None
        self._buffer = b""

    def __enter__(self) -> ProbeChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> subprocess.Popen:
        read_fd, write_fd = os.pipe()
        spec = json.dumps({"target": self.target, "kwargs": self.kwargs, "result_fd": write_fd}, default=str)
        env = dict(os.environ, **{CHILD_ENV: "1"})
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "tap_edge.backends.measure", "--serve", spec],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        self._proc, self._results, self._buffer = proc, read_fd, b""
        self.starts += 1
        return proc

    def probe(self, size: int, **args: Any) -> dict[str, Any]:
        """The child's answer for ``size`` (``args``: more keyword arguments for this probe only; see the
        class docstring)."""
        proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
        assert proc.stdin is not None and self._results is not None
        try:
            proc.stdin.write(json.dumps({"size": size, "args": args}, default=str).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child died on start: its status is read below
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready = select.select([self._results], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                self._stop()
                self.crashes += 1
                return {"crashed": f"timed out after {self.timeout:.0f} s"}
            chunk = os.read(self._results, 65536)
            if not chunk:  # the child is gone: it crashed on this size
                status = proc.wait()
                self._stop()
                self.crashes += 1
                how = f"killed by {signal_name(-status)}" if status < 0 else f"exited with code {status}"
                return {"crashed": how}
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            if self._proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    self._proc.stdin.close()
        if self._results is not None:
            os.close(self._results)
        self._proc, self._results = None, None

    def close(self) -> None:
        """End the child (it also ends when its stdin closes)."""
        self._stop()


def measure_artifact(
    artifact: Path,
    *,
    backend: str | None = None,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    timeout: float = DEFAULT_TIMEOUT,
    threads: int = 1,
    feed: InputRequest | None = None,
) -> dict[str, Any]:
    """Measure a compiled artifact (or any .tflite / .onnx) in a child process (see the module docstring);
    ``backend`` defaults to the one whose artifacts end like ``artifact``; ``feed``: the input shapes and values
    to feed (:mod:`tap_edge.backends.inputs`)."""
    from tap_edge.backends import backend_for_artifact, get_backend

    artifact = Path(artifact)
    if not artifact.exists():
        raise UserError(f"{artifact}: artifact not found", "compile one with tap-edge compile")
    b = get_backend(backend) if backend else backend_for_artifact(artifact)
    b.require(measure=True)
    data = run_child(
        "tap_edge.backends.measure:_measure_in_child",
        {"backend": b.name, "artifact": str(artifact.resolve()), "runs": runs, "warmup": warmup, "threads": threads,
         "feed": (feed or InputRequest()).to_dict(), "timeout": timeout},
        timeout=timeout,
        what=f"{b.name} measurement",
    )
    data["backend"] = b.name
    data["artifact_bytes"] = artifact.stat().st_size
    data["latency"] = latency_stats(data.pop("times_ms", []))
    return data


# ---- child side ------------------------------------------------------------------------------------------
def _measure_in_child(backend: str, artifact: str, runs: int, warmup: int, threads: int, feed: dict[str, Any],
                      timeout: float) -> dict[str, Any]:
    from tap_edge.backends import get_backend, read_manifest

    b = get_backend(backend)
    state: dict[str, int] = {}

    def baseline() -> None:
        state["import_baseline_bytes"] = vm_hwm()

    path = Path(artifact)
    res = b.child_measure(path, read_manifest(path), runs=runs, warmup=warmup, threads=threads, baseline=baseline,
                          feed=InputRequest.from_dict(feed), timeout=timeout)
    peak = vm_hwm()
    base = state.get("import_baseline_bytes", 0)
    res["peak_rss_bytes"] = peak
    res["import_baseline_bytes"] = base
    res["model_rss_bytes"] = peak - base if base else None
    return res


def _selftest_probe(size: int, crash_below: int = 0, hang_at: int = -1, builds_from: int = 0, runs_from: int = 0,
                    invoke: bool = False) -> dict[str, Any]:
    """A :class:`ProbeChild` target for tests, shaped like TFLite Micro's arena probe: segfaults for sizes
    below ``crash_below``, hangs at ``hang_at``, else builds from ``builds_from`` and (with ``invoke``) runs from
    ``runs_from``."""
    if size < crash_below:
        os.kill(os.getpid(), signal.SIGSEGV)
    if size == hang_at:
        time.sleep(3600)
    built = size >= builds_from
    return {"built": built, "invoked": built and size >= runs_from if invoke else None, "pid": os.getpid()}


def _serve(spec_json: str) -> int:
    """Body of a :class:`ProbeChild`: one JSON request a line on stdin, one JSON answer a line on the result
    pipe, until stdin closes."""
    import importlib

    spec = json.loads(spec_json)
    mod_name, _, fn_name = spec["target"].partition(":")
    fn = getattr(importlib.import_module(mod_name), fn_name)
    with os.fdopen(spec["result_fd"], "w") as out:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                data = fn(request["size"], **spec["kwargs"], **request.get("args", {}))
            except UserError as e:
                data = {"error": e.message}
            except Exception as e:  # noqa: BLE001 - one answer, the child goes on
                data = {"error": f"{e.__class__.__name__}: {str(e)[:500]}"}
            out.write(json.dumps(data, default=_default) + "\n")
            out.flush()
    return 0


def _selftest(mode: str = "ok", seconds: float = 60.0) -> dict[str, Any]:
    """A child target for tests: ``ok``, ``raise``, ``crash`` (SIGSEGV), ``crash_in_capture`` (C code's last
    words, then SIGSEGV, inside :func:`capture_fds`), ``hang``, ``exit``."""
    if mode == "raise":
        raise RuntimeError("selftest failure")
    if mode == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "crash_in_capture":
        with capture_fds():
            os.write(2, b"kernels/conv.cc:42 filter->type == kTfLiteInt8 was not true.\n")
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
    os.environ[CHILD_DIR_ENV] = str(Path(spec_path).parent)
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
    sys.exit(_serve(sys.argv[2]) if sys.argv[1] == "--serve" else _child_main(sys.argv[1]))
