"""TFLite Micro on the host: does a .tflite build, what arena does it need, what does it output.

TFLite Micro's Python interpreter (``tflite-micro``, reference kernels, 64-bit host) can crash the process
(a segfault when the arena is too small for its first allocations), so every step runs in a child process
(:mod:`tap_edge.backends.measure`), started from the measurement child:

1. :func:`run_tflm` (one child): build at a big arena (grown while TFLM says it is too small), feed each
   sample's inputs, invoke and time, read ``print_allocations()`` (the RecordingMicroAllocator: total = head,
   the planned tensors, + tail, persistent). When TFLM refuses the model, its own words are the reason
   (``dequantize_common.cc:42 input->type == kTfLiteInt8 ... was not true. | Node DEQUANTIZE (number 0) failed
   to prepare with status 1``); a crash is a reason too, with the child's last output lines.
2. :func:`smallest_arena` on a :class:`~tap_edge.backends.measure.ProbeChild` answering :func:`probe_arena`:
   the smallest ``arena_size`` that builds, then the smallest that builds and invokes (1-byte exact). A probe
   that crashes the child is a size that fails (a data point), and the search goes on in a new child.

The smallest arena that builds and runs is what a user must give TFLM; it is larger than ``print_allocations``'s
total when the head is small (the memory planner's per-buffer arrays live in the head during
``AllocateTensors``), and it is the figure compared with the prediction.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.backends.measure import (
    MeasureError,
    ProbeChild,
    capture_fds,
    latency_stats,
    run_child,
)

#: The first arena tried (grown x4 while TFLM reports a shortage, up to :data:`MAX_ARENA`).
BIG_ARENA = 64 << 20
MAX_ARENA = 1 << 30
#: Seconds one arena probe may take before its child is killed (a hang is a failing size).
PROBE_TIMEOUT = 120.0
#: What TFLM prints when an arena is too small (any other failure is the model's).
_SHORTAGE = ("Requested:", "Failed starting model allocation", "Arena size is too small")
_ALLOC_LINE = re.compile(r"\[RecordingMicroAllocator\] (.+)")
_NOISE = ("RecordingMicroAllocator",)


def parse_allocations(text: str) -> dict[str, Any]:
    """The figures ``print_allocations()`` prints, in bytes."""
    out: dict[str, Any] = {"items": {}}
    for line in text.splitlines():
        m = _ALLOC_LINE.search(line)
        if not m:
            continue
        body = m.group(1)
        mm = re.match(r"Arena allocation (total|head|tail) (\d+) bytes", body)
        if mm:
            out[f"arena_{mm.group(1)}_bytes"] = int(mm.group(2))
            continue
        mm = re.match(r"'(.+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+)", body)
        if mm:
            out["items"][mm.group(1)] = {"bytes": int(mm.group(2)), "requested": int(mm.group(3)),
                                         "count": int(mm.group(4))}
    return out


def tflm_reason(text: str, exc: BaseException | None = None, lines: int = 4) -> str:
    """TFLM's own words on a failure: the last lines it printed (allocation-report lines dropped), then the
    exception, joined with `` | ``."""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip() and not any(n in ln for n in _NOISE)]
    parts = kept[-lines:] + ([f"{type(exc).__name__}: {exc}"] if exc is not None else [])
    return " | ".join(parts)[:1000]


def save_samples(samples: list[list[np.ndarray]], path: Path) -> Path:
    """Each sample's inputs (in the model's input order) as one ``.npz`` (``s{i}_in{j}``)."""
    np.savez(path, **{f"s{i}_in{j}": x for i, xs in enumerate(samples) for j, x in enumerate(xs)})
    return path


def load_samples(path: str | Path) -> list[list[np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        keys = sorted(z.files, key=lambda k: tuple(int(n) for n in re.findall(r"\d+", k)))
        out: list[list[np.ndarray]] = []
        for k in keys:
            i, _ = (int(n) for n in re.findall(r"\d+", k))
            while len(out) <= i:
                out.append([])
            out[i].append(z[k])
        return out


def _build(data: bytes, arena: int) -> tuple[Any, str, BaseException | None]:
    """(interpreter or None, what TFLM printed, the exception)."""
    from tflite_micro.python.tflite_micro import runtime as tflm

    exc: BaseException | None = None
    interp = None
    with capture_fds() as cap:
        try:
            interp = tflm.Interpreter.from_bytes(data, arena_size=arena)
        except Exception as e:  # noqa: BLE001 - TFLM raises RuntimeError/ValueError with its reason printed
            exc = e
    return interp, cap.get("text", ""), exc


def _invoke(interp: Any, inputs: list[np.ndarray]) -> tuple[float, str, BaseException | None]:
    """Feed ``inputs`` and invoke once: (milliseconds, what TFLM printed, the exception)."""
    exc: BaseException | None = None
    with capture_fds() as cap:
        try:
            for i, x in enumerate(inputs):
                interp.set_input(x, i)
            t0 = time.perf_counter()
            interp.invoke()
            ms = (time.perf_counter() - t0) * 1e3
        except Exception as e:  # noqa: BLE001
            exc, ms = e, 0.0
    return ms, cap.get("text", ""), exc


def _outputs(interp: Any) -> list[np.ndarray]:
    out = []
    for i in range(256):
        try:
            out.append(np.asarray(interp.get_output(i)).copy())
        except (IndexError, ValueError, RuntimeError):  # past the last output
            break
    return out


def input_details(interp: Any) -> list[dict[str, Any]]:
    """TFLM's inputs in order: shape, dtype, scale and zero point (it keeps no names)."""
    out = []
    for i in range(256):
        try:
            d = interp.get_input_details(i)
        except (IndexError, ValueError, RuntimeError):  # past the last input
            break
        q = d.get("quantization_parameters") or {}
        scales, zps = q.get("scales", []), q.get("zero_points", [])
        out.append({"index": i, "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                    "scale": float(scales[0]) if len(scales) else None,
                    "zero_point": int(zps[0]) if len(zps) else 0})
    return out


def run_tflm(path: str, samples: str, outputs: str) -> dict[str, Any]:
    """Child target: build ``path`` at a big arena, run every sample of ``samples`` (``.npz``, see
    :func:`save_samples`; each sample's outputs go to ``outputs``), then ``print_allocations()``.
    Returns ``{"built", "arena_size", "invoked", "reason", "inputs", "alloc", "times_ms"}``."""
    data = Path(path).read_bytes()
    arena = max(BIG_ARENA, 8 * len(data))
    while True:
        interp, text, exc = _build(data, arena)
        if interp is not None or arena >= MAX_ARENA or not any(s in text for s in _SHORTAGE):
            break
        arena = min(arena * 4, MAX_ARENA)
    res: dict[str, Any] = {"built": interp is not None, "arena_size": arena}
    if interp is None:
        res["reason"] = tflm_reason(text, exc)
        return res
    res["inputs"] = input_details(interp)
    xs = load_samples(samples)
    times, outs = [], []
    for sample in xs:
        ms, text, exc = _invoke(interp, sample)
        if exc is not None:
            res.update(invoked=False, reason=tflm_reason(text, exc))
            return res
        times.append(ms)
        outs.append(_outputs(interp))
    res["invoked"] = True
    res["times_ms"] = times
    save_samples(outs, Path(outputs))
    with capture_fds() as cap:
        interp.print_allocations()
    res["alloc"] = parse_allocations(cap.get("text", ""))
    return res


def probe_arena(size: int, path: str, samples: str, invoke: bool = False) -> dict[str, Any]:
    """:class:`~tap_edge.backends.measure.ProbeChild` target: does ``path`` build at ``size`` bytes of
    arena (and, with ``invoke``, run the first sample)?"""
    interp, _, _ = _build(Path(path).read_bytes(), size)
    if interp is None:
        return {"built": False}
    if not invoke:
        return {"built": True}
    _, _, exc = _invoke(interp, load_samples(samples)[0])
    return {"built": True, "invoked": exc is None}


@dataclass
class ArenaSearch:
    """The smallest arena that builds, the smallest that builds and invokes (None: not even ``ceiling``), and
    every probe: ``(size, answer)`` with answer ``runs``, ``builds``, ``fails`` or ``crashed: <how>``."""

    min_build_bytes: int | None = None
    min_bytes: int | None = None
    probes: list[tuple[int, str]] = field(default_factory=list)

    @property
    def crashes(self) -> int:
        return sum(a.startswith("crashed") for _, a in self.probes)

    def to_dict(self) -> dict[str, Any]:
        return {"min_build_bytes": self.min_build_bytes, "min_bytes": self.min_bytes,
                "probes": len(self.probes), "crashed_probes": self.crashes,
                "crashed_at": [n for n, a in self.probes if a.startswith("crashed")][:20]}


Probe = Callable[[int, bool], dict[str, Any]]


def smallest_arena(probe: Probe, start: int, ceiling: int) -> ArenaSearch:
    """Bisection, 1-byte exact, from ``start`` (e.g. ``print_allocations``' total) up to ``ceiling``.
    ``probe(size, invoke)`` answers ``{"built": bool, "invoked": bool}`` or ``{"crashed": how}``; a crash
    counts as a size that fails. A larger arena is assumed to work whenever a smaller one does."""
    search = ArenaSearch()
    answers: dict[tuple[int, bool], bool] = {}

    def ok(size: int, invoke: bool) -> bool:
        if (size, invoke) not in answers:
            a = probe(size, invoke)
            crashed = a.get("crashed")
            passed = not crashed and bool(a.get("built")) and (not invoke or bool(a.get("invoked")))
            answers[(size, invoke)] = passed
            if passed and invoke:
                answers[(size, False)] = True
            label = (f"crashed: {crashed}" if crashed else "runs" if invoke and passed
                     else "builds" if a.get("built") else "fails")
            search.probes.append((size, label))
        return answers[(size, invoke)]

    search.min_build_bytes = _smallest(lambda n: ok(n, False), max(start, 1), ceiling)
    if search.min_build_bytes is not None:
        n = search.min_build_bytes
        search.min_bytes = n if ok(n, True) else _smallest(lambda m: ok(m, True), n, ceiling)
    return search


def _smallest(ok: Callable[[int], bool], start: int, ceiling: int) -> int | None:
    """Smallest n <= ``ceiling`` with ``ok(n)``: steps growing x4 from ``start`` to bracket it, then bisection."""
    hi = start
    step = 16
    if not ok(hi):
        lo = hi
        while True:
            hi = min(lo + step, ceiling)
            if ok(hi):
                break
            if hi >= ceiling:
                return None
            lo, step = hi, step * 4
    else:
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


class OutOfTime(Exception):
    """The measurement's time ran out during the arena search (the search stops; no size is made up)."""


def measure_tflm(artifact: Path, samples: list[list[np.ndarray]], folder: Path, *,
                 timeout: float) -> tuple[dict[str, Any], list[list[np.ndarray]] | None]:
    """Run :func:`run_tflm` and the arena search in child processes within ``timeout`` seconds (see the module
    docstring); returns (TFLM's figures, its outputs per sample, None when it did not run). Never raises for
    TFLM's failures: they are the figures' ``reason``; a search that runs out of time says so and keeps the
    other figures."""
    samples_path = save_samples(samples, folder / "tflm_inputs.npz")
    outputs_path = folder / "tflm_outputs.npz"
    deadline = time.monotonic() + timeout
    try:
        res = run_child("tap_edge.backends.tflm:run_tflm",
                        {"path": str(artifact), "samples": str(samples_path), "outputs": str(outputs_path)},
                        timeout=timeout, what="TFLite Micro")
    except MeasureError as e:  # a crash or a hang of TFLM itself: its figures are lost, not the run's
        return {"built": False, "reason": f"{e.message}" + (f" | {e.output}" if e.output else "")}, None
    for key in ("wait4_maxrss_bytes", "wall_s", "child_stdout"):
        res.pop(key, None)
    if not res.get("built") or not res.get("invoked"):
        return res, None
    res["latency"] = latency_stats(res.pop("times_ms"))

    def probe(n: int, invoke: bool) -> dict[str, Any]:
        if time.monotonic() > deadline:
            raise OutOfTime
        return child.probe(n, invoke=invoke)

    left = deadline - time.monotonic()
    with ProbeChild("tap_edge.backends.tflm:probe_arena", {"path": str(artifact), "samples": str(samples_path)},
                    timeout=max(min(PROBE_TIMEOUT, left), 1.0)) as child:
        try:
            search = smallest_arena(probe, res["alloc"].get("arena_total_bytes") or res["arena_size"],
                                    res["arena_size"])
            res["arena_search"] = search.to_dict()
        except OutOfTime:
            res["arena_search"] = {"stopped": f"out of time after {timeout:.0f} s (raise --timeout)"}
    res["arena_search"]["children"] = child.starts
    return res, load_samples(outputs_path)
