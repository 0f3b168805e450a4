"""The files of a run directory and what they hold: ``run.json`` (format, creation time, the
:class:`EvolveSettings`, templates digest) and ``events.jsonl`` (every step of the search, appended and fsync'ed
as it happens; the event kinds are listed in :mod:`tap_edge.search.loop`).

The loop writes these files and the summary reads them; both import this module, and the loop imports the
summary, so the format and the settings live here, below both.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tap_edge.core.errors import UserError
from tap_edge.core.serialize import json_default
from tap_edge.search.fitness import DEFAULT_ALPHA, DEFAULT_TASKS, Limits
from tap_edge.search.llm import LLMConfig

RUN_FORMAT = "tap-edge/evolve-run"
RUN_VERSION = 1


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
    templates_dir: str | None = None
    llm: dict[str, Any] = field(default_factory=lambda: asdict(LLMConfig()))
    limits: dict[str, float] = field(default_factory=lambda: asdict(Limits()))
    dpo: dict[str, float] = field(default_factory=lambda: {"beta": 1.0, "lr": 1.0, "steps": 5, "floor": 0.05})
    max_errors_in_prompt: int = 3
    max_consecutive_llm_failures: int = 5
    cache_dir: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvolveSettings:
        """Settings from ``run.json``: keys this version does not know are left out, missing ones take their
        defaults, and ``"grammar": true / false`` (runs written before the grammar modes) reads as full / off."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("grammar"), bool):
            known["grammar"] = "full" if known["grammar"] else "off"
        return cls(**known)


class RunLog:
    """Append-only JSONL event log with fsync; tolerant reading."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.path = run_dir / "events.jsonl"

    def append(self, event: dict[str, Any]) -> None:
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
            except ValueError:
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
        doc = json.loads(meta.read_text())
    except ValueError as e:
        raise UserError(f"{meta}: damaged run.json ({e})",
                        "its settings are also in the run_start event of events.jsonl") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings", {}), dict):
        raise UserError(f"{meta}: not a {RUN_FORMAT} file", "pass the directory a run created")
    return doc


def write_run_json(run_dir: Path, doc: dict[str, Any]) -> None:
    """Write ``run.json`` atomically (a temporary file, then a rename)."""
    meta = run_dir / "run.json"
    tmp = meta.with_name("run.json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=json_default))
    os.replace(tmp, meta)
