"""A run directory and the processes of a session: one session per run directory (a second one is refused in
one line naming the holder's PID), nothing of a run keeps running after ``kill -9`` of ``tap-edge evolve``
(pool workers, sandbox children), a torn last line is ended before the next event, and a resumed run does not
replay a crash forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import BrokenExecutor
from pathlib import Path

import psutil
import pytest
from test_evolve import GOOD_GRAD, GOOD_SIZE, ScriptedLLM, _settings, _wait_for

from tap_edge.core.errors import UserError
from tap_edge.search import executors
from tap_edge.search.llm import LLMClient, LLMConfig
from tap_edge.search.loop import MAX_EVALUATION_ATTEMPTS, Evolution
from tap_edge.search.runlog import LOCK_NAME, RunLock, RunLog, read_events

SPIN = "REASONING: spin\n```python\ndef proxy(layer, bits):\n    x = 0\n    while x >= 0:\n        x += 1\n" \
       "    return [1.0] * len(bits)\n```"


def _evolve(run: Path, url: str, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from tap_edge.cli import main; main()", "evolve", "--run-dir", str(run),
           "--llm-base-url", url, "--llm-model", "scripted", "--task", "synthetic", "-q", *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for_lock(run: Path, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (run / LOCK_NAME).read_text().strip() == str(pid) and (run / "events.jsonl").exists():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"session {pid} did not lock {run}")


def test_a_second_session_on_a_run_is_refused_naming_the_holder(tmp_path: Path, run_cli) -> None:
    run = tmp_path / "run"
    with ScriptedLLM([GOOD_GRAD, GOOD_SIZE], delay=0.3) as srv:
        proc = _evolve(run, srv.base_url, "--population", "3", "--generations", "4", "--executor", "thread",
                       "--cpu-seconds", "2")
        try:
            _wait_for_lock(run, proc.pid)
            r = run_cli("evolve", "--resume", str(run), "--executor", "thread")
            assert r.code == 2 and f"another tap-edge session (PID {proc.pid}) is running this run" in r.err, r.err
            assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
            with pytest.raises(UserError, match=f"PID {proc.pid}"):
                Evolution.resume(run)
            r = run_cli("evolve", "--report", str(run), "-q")  # reading a running run is fine
            assert r.code == 0, r.err
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        asked = len(srv.requests)
        # the kernel dropped the killed session's lock: this one takes it and finishes the run
        evo = Evolution.resume(run)
        evo.client = LLMClient(LLMConfig(**evo.settings.llm))
        summary = evo.run(show_progress=False)
    events = read_events(run / "events.jsonl")
    fits = [e["cid"] for e in events if e["type"] == "fitness"]
    assert summary.finished and len(fits) == len(set(fits)) == 12  # every slot scored once, by one session
    replies = [e["cid"] for e in events if e["type"] == "reply"]
    assert len(replies) == len(set(replies)) and len(srv.requests) - asked == evo.llm_calls_now
    RunLock.acquire(run).release()  # free again once the session ended


def test_a_torn_last_line_is_ended_before_the_next_event(tmp_path: Path) -> None:
    with ScriptedLLM([GOOD_GRAD, GOOD_SIZE]) as srv:
        s = _settings(srv.base_url, population=2, generations=2, seed_builtins=False)
        Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
        log = tmp_path / "run" / "events.jsonl"
        lines = log.read_text().splitlines(keepends=True)
        gen1 = next(i for i, ln in enumerate(lines) if '"cid": "g1c0"' in ln)
        log.write_text("".join(lines[:gen1]) + '{"type": "prompt", "cid": "g1c0", "gener')  # kill -9 mid-write
        evo = Evolution.resume(tmp_path / "run")
        evo.client = LLMClient(LLMConfig(**evo.settings.llm))
        summary = evo.run(show_progress=False)
    events = read_events(log)
    assert [e["type"] for e in events].count("resume") == 1  # the first event after the torn line is not lost
    fits = [e["cid"] for e in events if e["type"] == "fitness"]
    assert sorted(fits) == ["g0c0", "g0c1", "g1c0", "g1c1"] and summary.finished
    assert log.read_text().count('"gener\n') == 1  # the torn fragment stays on a line of its own


def test_run_log_ends_a_torn_line_once(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text('{"type": "a"}\n{"type": "b", "x": tr')
    log = RunLog(tmp_path)
    log.append({"type": "c"})
    log.append({"type": "d"})
    assert [e["type"] for e in log.read()] == ["a", "c", "d"]


def test_an_evaluation_error_is_the_candidates_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a program's content makes the evaluation raise (here a RecursionError) costs that candidate."""
    real = executors.evaluate_program

    def evaluate(code: str, *args: object) -> dict:
        if "amax" in code:
            raise RecursionError("maximum recursion depth exceeded")
        return real(code, *args)

    monkeypatch.setattr(executors, "evaluate_program", evaluate)
    with ScriptedLLM([GOOD_GRAD, GOOD_SIZE]) as srv:
        s = _settings(srv.base_url, population=2, generations=1, seed_builtins=False)
        summary = Evolution.create(tmp_path / "run", s, LLMClient(LLMConfig(**s.llm))).run(show_progress=False)
    assert summary.finished and summary.valid == 1
    assert any("the evaluation failed: RecursionError" in r for r in summary.invalid_reasons)


def test_a_resumed_run_does_not_replay_a_crash_forever(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An evaluation that ends the session each time (a worker that dies) is tried MAX_EVALUATION_ATTEMPTS
    times over resumes, then recorded as the candidate's failure; the run then finishes."""
    real = executors.evaluate_program

    def evaluate(code: str, *args: object) -> dict:
        if "amax" in code:
            raise BrokenExecutor("a worker died")
        return real(code, *args)

    monkeypatch.setattr(executors, "evaluate_program", evaluate)
    run = tmp_path / "run"
    with ScriptedLLM([GOOD_GRAD, GOOD_SIZE]) as srv:
        s = _settings(srv.base_url, population=2, generations=1, seed_builtins=False)
        evo = Evolution.create(run, s, LLMClient(LLMConfig(**s.llm)))
        for _ in range(MAX_EVALUATION_ATTEMPTS):
            with pytest.raises(UserError, match="evaluation worker died"):
                evo.run(show_progress=False)
            evo = Evolution.resume(run)
            evo.client = LLMClient(LLMConfig(**evo.settings.llm))
        summary = evo.run(show_progress=False)
    assert summary.finished and summary.valid == 1
    assert any(f"started {MAX_EVALUATION_ATTEMPTS} times" in r for r in summary.invalid_reasons)
    assert len(srv.requests) == 2  # the reply was recorded once and never asked again


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_kill_9_mid_generation_leaves_nothing_running(tmp_path: Path) -> None:
    """``kill -9`` of evolve while the process pool's workers run sandbox children: after 5 s nothing of the
    run is left (workers, the children's supervisors and program processes, multiprocessing's helpers)."""
    run = tmp_path / "run"
    with ScriptedLLM([SPIN, GOOD_GRAD, SPIN, GOOD_SIZE]) as srv:
        proc = _evolve(run, srv.base_url, "--population", "4", "--generations", "2", "--executor", "process",
                       "--workers", "2", "--cpu-seconds", "20", "--no-seed-builtins")
        try:
            _wait_for(run / "events.jsonl", "evaluate", 2, timeout=90)
            deadline = time.monotonic() + 60
            seen: dict[int, psutil.Process] = {}
            while time.monotonic() < deadline:  # until sandbox children run under the workers
                for p in _descendants(proc.pid):
                    seen.setdefault(p.pid, p)
                supervisors = [p for p in seen.values() if _alive(p) and "-I" in _cmdline(p)]
                if len(supervisors) >= 2 and len(seen) >= 6:
                    break
                time.sleep(0.1)
            for p in _descendants(proc.pid):
                seen.setdefault(p.pid, p)
            assert len(seen) >= 4, [_cmdline(p) for p in seen.values()]
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        time.sleep(5)
        left = [p for p in seen.values() if _alive(p)]
    for p in left:  # no stray process either way
        p.kill()
    assert not left, [(p.pid, " ".join(_cmdline(p))[:120]) for p in left]
