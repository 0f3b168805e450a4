"""The files of a run directory and what they hold: ``run.json`` (format, creation time, the
:class:`EvolveSettings`, templates digest), ``events.jsonl`` (every step of the search, appended and fsync'ed
as it happens; the event kinds are listed in :mod:`tap_edge.search.loop`) and ``session.lock`` (the
:class:`RunLock` of the session running it: one session per run directory).

The loop writes these files and the summary reads them; both import this module, and the loop imports the
summary, so the format and the settings live here, below both.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tap_edge.core.errors import UserError
from tap_edge.core.serialize import json_default
from tap_edge.plan.proxies.sandbox import one_line
from tap_edge.search.fitness import DEFAULT_ALPHA, DEFAULT_TASKS, Limits
from tap_edge.search.llm import LLMConfig

RUN_FORMAT = "tap-edge/evolve-run"
RUN_VERSION = 1
LOCK_NAME = "session.lock"


@dataclass
class EvolveSettings:
    """Everything that defines a run (saved as ``run.json``)."""

    population: int = 10
    generations: int = 5  # including generation 0 (the initial population)
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    alpha: float = DEFAULT_ALPHA
    seed: int = 0
    seed_builtins: bool = True
    tournament: int = 2
    workers: int = 2
    executor: str = "process"  # one of executors.EXECUTORS
    ray_address: str | None = None  # --executor ray: HOST:PORT or auto; None: auto if RAY_ADDRESS is set, else local
    executor_info: dict[str, Any] | None = None  # set when evaluations start: executor, Ray address, resources
    grammar: str = "off"  # off | full | score | edit | reweight (see prompts.GRAMMARS); llama.cpp servers only
    repair: bool = True  # delete failing statements of a program before giving up on it
    fit_constants: bool = False  # tune a program's float literals before its fitness (search/constants.py)
    templates_dir: str | None = None
    llm: dict[str, Any] = field(default_factory=lambda: asdict(LLMConfig()))
    local_llm: bool = False  # the run asks the offline llama.cpp server of each session (--resume starts a new one)
    limits: dict[str, float] = field(default_factory=lambda: asdict(Limits()))
    dpo: dict[str, float] = field(default_factory=lambda: {"beta": 1.0, "lr": 1.0, "steps": 5, "floor": 0.05})
    max_errors_in_prompt: int = 3
    max_consecutive_llm_failures: int = 5
    cache_dir: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "run.json") -> EvolveSettings:
        """Settings from ``run.json``: keys this version does not know are left out, missing ones take their
        defaults, and ``"grammar": true / false`` (runs written before the grammar modes) reads as full / off.
        A value of the wrong type (a damaged file) is a one-line error naming ``source`` and the field."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("grammar"), bool):
            known["grammar"] = "full" if known["grammar"] else "off"
        defaults = cls()
        for k, v in known.items():
            problem = _type_problem(v, getattr(defaults, k), k)
            if problem:
                raise UserError(f"{source}: settings field {problem}",
                                "the run's settings are damaged; its run_start event in events.jsonl has a copy")
        return cls(**known)


#: Fields whose default is None and what they hold when set.
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {"ray_address": (str,), "executor_info": (dict,),
                                                "templates_dir": (str,), "cache_dir": (str,)}


def _type_problem(value: Any, default: Any, name: str) -> str | None:
    """Why ``value`` cannot stand where ``default`` stands (one line), or None."""
    if value is None and (default is None or name in _OPTIONAL_TYPES):
        return None
    if default is None and name not in _OPTIONAL_TYPES:  # e.g. llm.extra_body: sent as it is
        return None
    want: tuple[type, ...] = _OPTIONAL_TYPES.get(name) or (
        (int, float) if isinstance(default, float) else (int,) if isinstance(default, int) and not isinstance(
            default, bool) else (type(default),))
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, want):
        return f"'{name}' is {type(value).__name__} {json.dumps(value, default=str)[:40]}, not " \
               f"{' or '.join(t.__name__ for t in want)}"
    if isinstance(default, dict) and isinstance(value, dict):
        for k, v in value.items():
            if k in default:
                problem = _type_problem(v, default[k], f"{name}.{k}")
                if problem:
                    return problem
    if isinstance(default, list) and not all(isinstance(x, str) for x in value):
        return f"'{name}' must be a list of strings"
    return None


class RunLock:
    """One session per run directory: an exclusive OS lock (``fcntl.flock``) on ``RUN_DIR/session.lock``,
    held while the session runs, with the holder's PID in the file so that a second session can name it. The
    kernel drops the lock when the process ends (``kill -9`` included): there is nothing to clean up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Take the lock of ``run_dir`` or fail with one line naming the session that holds it."""
        path = Path(run_dir) / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UserError(f"{run_dir}: cannot lock the run directory ({e.strerror or e})",
                            "check that it is a writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{run_dir}: another tap-edge session (PID {holder}) is running this run",
                            "wait for it to end (or stop it), then --resume it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __del__(self) -> None:  # a session object dropped without running still frees its run directory
        self.release()


class RunLog:
    """Append-only JSONL event log with fsync; tolerant reading. A last line torn by ``kill -9`` (no final
    newline) is ended before this session's first event, so that event starts a line of its own."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.path = run_dir / "events.jsonl"
        self._checked = False

    def _end_torn_line(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        except FileNotFoundError:
            return
        if torn:
            with open(self.path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())

    def append(self, event: dict[str, Any]) -> None:
        if not self._checked:
            self._end_torn_line()
            self._checked = True
        event = {"t": round(time.time(), 3), **event}
        line = json.dumps(event, default=json_default) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        return read_events(self.path)


def read_events(path: Path) -> list[dict[str, Any]]:
    """Events of a run; undecodable lines (a write torn by ``kill -9``) are skipped."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(ev, dict):
                out.append(ev)
    return out


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """The ``run.json`` of ``run_dir`` (its settings: ``EvolveSettings.from_dict(doc["settings"])``); a missing
    or damaged file is a one-line error."""
    d = Path(run_dir)
    meta = d / "run.json"
    if not meta.exists():
        raise UserError(f"{d}: not an evolve run (no run.json)", "pass the directory a run created")
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        raise UserError(f"{meta}: damaged run.json ({one_line(e, 120)})",
                        "its settings are also in the run_start event of events.jsonl") from None
    except OSError as e:
        raise UserError(f"{meta}: cannot read run.json ({e.strerror or e})", "check the run directory") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings", {}), dict):
        raise UserError(f"{meta}: not a {RUN_FORMAT} file", "pass the directory a run created")
    return doc


def write_run_json(run_dir: Path, doc: dict[str, Any]) -> None:
    """Write ``run.json`` atomically (a temporary file, then a rename)."""
    meta = run_dir / "run.json"
    tmp = meta.with_name("run.json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=json_default))
    os.replace(tmp, meta)
