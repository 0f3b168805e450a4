"""The TAP search loop: LLM-written proxy programs, evolved with three templates chosen by a DPO controller.

A run is a directory:

- ``run.json``: the settings (LLM endpoint and sampling, population, generations, tasks, alpha, seeds used,
  template digest, limits, DPO hyper-parameters);
- ``events.jsonl``: every step appended (and fsync'ed) as it happens: ``prompt``, ``reply``, ``llm_error``,
  ``program`` (code + reasoning + parse problem), ``vet`` (verdict + reason), ``evaluate`` (an evaluation
  submitted, with its attempt number), ``repair``, ``constants`` (the float literals before and after constant
  fitting, :mod:`~tap_edge.search.constants`, and the tuned code), ``fitness`` (value and per-task details, or the
  reason it has none), ``generation`` (template probabilities before/after the DPO update, preference pairs, best/median
  fitness, invalid rate), ``run_start`` / ``resume`` / ``run_end``;
- ``session.lock``: the lock of the session running it;
- ``summary.json`` and ``best_proxy.py`` when the run ends.

The loop is a deterministic function of the settings, the LLM replies and the fitness values (per-slot random
generators seeded by ``(seed, generation, slot)``), so ``--resume`` replays the log: a slot with a recorded
fitness is never evaluated again, a recorded reply is never asked again, and only the missing steps run.
A torn last line (``kill -9`` while writing) is ignored, and ended before the next event is appended. One
session holds a run directory at a time (:class:`~tap_edge.search.runlog.RunLock`); a second one is refused in
one line naming the holder's PID.

What an LLM sends is bounded before anything handles it (:mod:`~tap_edge.search.prompts`: reply length, program
size and nesting), and a reply or program that cannot be handled costs that candidate, never the run: every
step of a candidate that could still fail on its content (building a prompt from a parent, parsing, vetting,
evaluating) records the failure as the candidate's and goes on. An evaluation is logged (``evaluate``) before
it is submitted, so one that the session died during is tried again on resume, but at most
:data:`MAX_EVALUATION_ATTEMPTS` times: a resumed run cannot replay the same crash forever. Reasons are one line
of bounded length (:func:`~tap_edge.plan.proxies.sandbox.one_line`) before they reach a prompt, the log or a
terminal.

Generation 0 is the initial population (init template, plus the built-in seed programs with
``seed_builtins``: at most half of it, the shipped ``tap_discovered`` and ``tap_seed`` first); generations 1..
sample a template per child from the controller: ``mutation`` (one parent by tournament, its code, reasoning,
fitness and the errors it caused), ``crossover`` (two parents) or ``init``. Survivors are the best
``population`` valid programs of parents and children (elitism), one per behaviour (widths on every task).
After every generation the controller takes preference pairs from that generation's children.

For weak local models: ``grammar`` sends a llama.cpp GBNF grammar (``full``: forced reply format and function
header; ``score``: a forced skeleton in which the model writes the score lines; ``edit``: ``score`` for init,
while mutation / crossover children are the parent's program plus 1-8 lines the model inserts before its final
``return``; ``reweight``: ``score`` for init, while mutation / crossover children reshape the parent's costs per
layer with a weight expression and a width power the model writes), and ``repair`` deletes the statements the
sandbox reports as failing (``search/repair.py``); every edit and deletion is logged.
Rejection reasons go back to the LLM in the next mutation / crossover prompt.

The run directory's files are read and written by :mod:`~tap_edge.search.runlog`, evaluations run on an
executor of :mod:`~tap_edge.search.executors`, and :mod:`~tap_edge.search.summary` reads a run back.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from concurrent.futures import BrokenExecutor, Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.documents import RunSummary
from tap_edge.plan.proxies.sandbox import SandboxRejection, one_line, vet_source
from tap_edge.search.controller import DPOController, preference_pairs
from tap_edge.search.executors import Executor, Workload, check_executor, open_executor
from tap_edge.search.fitness import Limits, SearchTask, TaskSpec, build_task, describe_tasks
from tap_edge.search.llm import LLMClient, LLMConfig, LLMError
from tap_edge.search.prompts import (
    MAX_REPLY_CHARS,
    REWEIGHT_FEATURES,
    TEMPLATES,
    compact_code,
    grammar_mode,
    load_templates,
    parse_reply,
    render,
    split_at_final_return,
    system_prompt,
    templates_digest,
)
from tap_edge.search.runlog import (
    RUN_FORMAT,
    RUN_VERSION,
    EvolveSettings,
    RunLock,
    RunLog,
    read_events,
    read_run_json,
    write_run_json,
)
from tap_edge.search.summary import best_program_text, summarize

__all__ = ["Candidate", "Evolution", "EvolveSettings", "behaviour_key", "builtin_seed_programs", "check_new_run_dir",
           "check_settings"]

#: An evaluation the session died during is tried again on resume, this many times in all at most (more than a
#: few kill -9 in a row can interrupt: those must lose nothing; a crash it causes each time ends there).
MAX_EVALUATION_ATTEMPTS = 6
#: Files a new run's directory may already hold (the local LLM server's log, a lock of a session that ended).
_NEW_RUN_FILES = ("llm_server.log", "session.lock")


@dataclass
class Candidate:
    """One proxy program and its outcome."""

    id: str
    generation: int
    template: str  # init | mutation | crossover | seed
    parents: list[str]
    code: str | None = None
    reasoning: str = ""
    fitness: float | None = None
    reason: str | None = None  # why it has no fitness
    stage: str | None = None  # llm | parse | vet | run | output | score
    details: list[dict[str, Any]] | None = None
    source: str | None = None  # seed name for seeds

    @property
    def valid(self) -> bool:
        return self.fitness is not None


def behaviour_key(cand: Candidate) -> str:
    """What a candidate did on the search tasks (its widths per task); its id when that is not recorded."""
    widths = [(t.get("task"), t.get("bits")) for t in (cand.details or []) if isinstance(t, dict)]
    if not widths or any(w is None for _, w in widths):
        return cand.id
    return json.dumps(widths, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------------------
# seeds: the built-in proxies as programs

def builtin_seed_programs() -> dict[str, str]:
    """Program sources shipped in ``tap_edge/plan/proxies/programs/*.py`` (the seed TAP program and any others)
    plus the simple seeds in ``tap_edge/search/seeds``, in that order. Only sources that pass vetting count."""
    from importlib import resources

    found: dict[str, str] = {}
    for pkg, folder in (("tap_edge.plan.proxies", "programs"), ("tap_edge.search", "seeds")):
        for entry in sorted(resources.files(pkg).joinpath(folder).iterdir(), key=lambda p: p.name):
            if not entry.name.endswith(".py") or entry.name.startswith("_"):
                continue
            src = entry.read_text()
            try:
                vet_source(src)
            except SandboxRejection:
                continue
            found.setdefault(entry.name[:-3], src)
    return found


def check_new_run_dir(run_dir: Path) -> None:
    """A new run needs a new or empty directory (the local LLM server's log may already be there)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file, not a run directory", "give --run-dir a new or empty directory")
    if run_dir.exists() and any(p.name not in _NEW_RUN_FILES for p in run_dir.iterdir()):
        raise UserError(f"{run_dir}: run directory exists and is not empty",
                        f"continue it with --resume {run_dir}, or choose a new directory")


def _check_number(value: Any, option: str, low: float, high: float | None = None, *, integer: bool = False,
                  low_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and (
        value > low if low_open else value >= low) and (high is None or value <= high) and (
        not integer or float(value).is_integer())
    if not ok:
        bound = (f"more than {low:g}" if low_open else f"at least {low:g}") + (f" and at most {high:g}" if high
                                                                                 is not None else "")
        raise UserError(f"{option} {value!r} is out of range", f"give a{'n integer' if integer else ' number'} "
                                                                f"{bound}")


def check_settings(settings: EvolveSettings) -> None:
    """One-line errors for settings a run cannot use: a population or a number of generations that is not a
    count, limits that kill every program, sampling values an endpoint refuses, no task, an unknown task,
    grammar or executor, a Ray address without the Ray executor."""
    s, llm, lim = settings, settings.llm, settings.limits
    _check_number(s.population, "--population", 1, integer=True)
    _check_number(s.generations, "--generations", 0, integer=True)
    _check_number(s.workers, "--workers", 1, integer=True)
    _check_number(s.tournament, "tournament size", 1, integer=True)
    _check_number(s.alpha, "--alpha", 0)
    _check_number(lim.get("cpu_seconds"), "--cpu-seconds", 0, low_open=True)
    _check_number(lim.get("wall_seconds"), "the wall-clock limit", 0, low_open=True)
    _check_number(lim.get("memory_mb"), "the memory limit (MB)", 64, integer=True)
    _check_number(llm.get("temperature"), "--temperature", 0, 2)
    _check_number(llm.get("max_tokens"), "--max-tokens", 1, integer=True)
    _check_number(s.max_errors_in_prompt, "max_errors_in_prompt", 0, integer=True)
    _check_number(s.max_consecutive_llm_failures, "max_consecutive_llm_failures", 1, integer=True)
    _check_number(s.seed, "--seed", 0, integer=True)
    url = llm.get("base_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise UserError(f"--llm-base-url {url!r} is not an http(s) URL", "e.g. http://127.0.0.1:8080/v1")
    if not settings.tasks:
        raise UserError("no search task given", "add one with --task NAME[@BITS], e.g. --task digits-cnn@3")
    for spec in settings.tasks:
        TaskSpec.parse(spec)
    grammar_mode(settings.grammar)
    check_executor(settings.executor)
    load_templates(settings.templates_dir)
    if settings.ray_address is not None and settings.executor != "ray":
        raise UserError("--ray-address is only used with --executor ray", "add --executor ray")


# ---------------------------------------------------------------------------------------------------------
# the loop

class Evolution:
    """One run: build with :meth:`create` or :meth:`resume`, then :meth:`run`."""

    def __init__(self, run_dir: Path, settings: EvolveSettings, events: list[dict[str, Any]],
                 client: LLMClient | None = None, tasks: list[SearchTask] | None = None,
                 lock: RunLock | None = None) -> None:
        self.dir = run_dir
        self.lock = lock if lock is not None else RunLock.acquire(run_dir)  # released when run() ends
        self.settings = settings
        self.log = RunLog(run_dir)
        self.events = events
        self.client = client
        self._tasks = tasks
        self.templates = load_templates(settings.templates_dir)
        self.controller = DPOController(beta=settings.dpo.get("beta", 1.0), lr=settings.dpo.get("lr", 1.0),
                                        steps=int(settings.dpo.get("steps", 5)),
                                        floor=settings.dpo.get("floor", 0.05))
        self.limits = Limits(**settings.limits)
        self.candidates: list[Candidate] = []
        self.population: list[Candidate] = []
        self.evaluated_now = 0  # fitness evaluations paid in this process (resume: only the missing ones)
        self.llm_calls_now = 0
        self._index()

    # -- construction
    @classmethod
    def create(cls, run_dir: str | Path, settings: EvolveSettings, client: LLMClient | None = None,
               tasks: list[SearchTask] | None = None) -> Evolution:
        d = Path(run_dir)
        check_new_run_dir(d)
        check_settings(settings)
        templates = load_templates(settings.templates_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{d}: cannot create the run directory ({e.strerror or e})",
                            "give --run-dir a writable path") from None
        lock = RunLock.acquire(d)
        try:
            check_new_run_dir(d)  # again, holding the lock: another session may have started it meanwhile
            write_run_json(d, {"format": RUN_FORMAT, "version": RUN_VERSION,
                               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "settings": asdict(settings), "templates_digest": templates_digest(templates)})
            return cls(d, settings, [], client, tasks, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def resume(cls, run_dir: str | Path, client: LLMClient | None = None, tasks: list[SearchTask] | None = None,
               overrides: dict[str, Any] | None = None) -> Evolution:
        d = Path(run_dir)
        read_run_json(d)  # a directory a run created, before its lock file is made there
        lock = RunLock.acquire(d)
        try:  # read under the lock: no other session appends meanwhile
            settings = EvolveSettings.from_dict(read_run_json(d).get("settings", {}), str(d / "run.json"))
            for k, v in (overrides or {}).items():  # only what does not change results (e.g. workers)
                setattr(settings, k, v)
            check_settings(settings)
            return cls(d, settings, read_events(d / "events.jsonl"), client, tasks, lock)
        except BaseException:
            lock.release()
            raise

    def _index(self) -> None:
        """Recorded steps per candidate id, and generations already summarised."""
        self.recorded: dict[str, dict[str, dict[str, Any]]] = {}
        self.attempts: dict[str, int] = {}  # evaluations started per candidate
        self.gen_done: set[int] = set()
        self.started = False
        for ev in self.events:
            kind = ev.get("type")
            if kind == "generation" and isinstance(ev.get("generation"), int):
                self.gen_done.add(ev["generation"])
            elif kind == "run_start":
                self.started = True
            elif kind == "evaluate" and isinstance(ev.get("cid"), str):
                self.attempts[ev["cid"]] = self.attempts.get(ev["cid"], 0) + 1
            elif isinstance(ev.get("cid"), str) and kind in ("prompt", "reply", "program", "vet", "fitness",
                                                              "repair", "constants"):
                if kind == "fitness" and ev.get("stage") == "llm":
                    continue  # the LLM never answered: nothing was paid, ask again on resume
                self.recorded.setdefault(ev["cid"], {})[kind] = ev

    # -- helpers
    def tasks(self) -> list[SearchTask]:
        if self._tasks is None:
            cache = Path(self.settings.cache_dir) if self.settings.cache_dir else None
            self._tasks = [build_task(TaskSpec.parse(s), cache) for s in self.settings.tasks]
        return self._tasks

    def _client(self) -> LLMClient:
        if self.client is None:
            self.client = LLMClient(LLMConfig(**self.settings.llm))
        return self.client

    def _emit(self, event: dict[str, Any]) -> None:
        self.log.append(event)

    def _recent_errors(self, parent: Candidate | None = None) -> str:
        reasons: list[str] = []
        if parent is not None and parent.reason:
            reasons.append(f"the parent itself failed: {parent.reason}")
        if parent is not None:
            for c in reversed(self.candidates):
                if parent.id in c.parents and c.reason and c.reason not in reasons:
                    reasons.append(c.reason)
        for c in reversed(self.candidates):
            if c.reason and c.reason not in reasons:
                reasons.append(c.reason)
            if len(reasons) >= self.settings.max_errors_in_prompt:
                break
        reasons = reasons[:self.settings.max_errors_in_prompt]
        return "; ".join(one_line(r, 200) for r in reasons) if reasons else "none so far"

    def _select(self, rng: np.random.Generator, k: int, exclude: str | None = None) -> Candidate:
        pool = [c for c in self.population if c.id != exclude] or self.population
        picks = [pool[int(i)] for i in rng.integers(0, len(pool), size=min(k, len(pool)))]
        return max(picks, key=lambda c: c.fitness if c.fitness is not None else -math.inf)

    def _repair_parent(self) -> Candidate | None:
        return next((c for c in reversed(self.candidates) if c.code and not c.valid), None)

    def _plan_slot(self, gen: int, idx: int, seeds: list[tuple[str, str]]) -> tuple[str, list[Candidate], str]:
        """(template, parents, seed name) for a slot; deterministic in (seed, gen, idx) and the state."""
        rng = np.random.default_rng([self.settings.seed, gen, idx])
        if gen == 0:
            if idx < len(seeds):
                return "seed", [], seeds[idx][0]
            return "init", [], ""
        valid = [c for c in self.population if c.valid]
        allowed = ["init"]
        if valid or self._repair_parent():
            allowed.append("mutation")
        if len(valid) >= 2:
            allowed.append("crossover")
        template = self.controller.sample(rng, allowed)
        if template == "mutation":
            parent = self._select(rng, self.settings.tournament) if valid else self._repair_parent()
            return template, [parent] if parent else [], ""
        if template == "crossover":
            a = self._select(rng, self.settings.tournament)
            b = self._select(rng, self.settings.tournament, exclude=a.id)
            return template, [a, b], ""
        return template, [], ""

    def _edit_base(self, template: str, parents: list[Candidate]) -> Candidate | None:
        """In ``--grammar edit`` mode, the parent a mutation / crossover child is an edit of (None: rewrite)."""
        if grammar_mode(self.settings.grammar).edit is None or template not in ("mutation", "crossover") \
                or not parents:
            return None
        return parents[0] if parents[0].code and split_at_final_return(parents[0].code) else None

    def _prompt(self, template: str, parents: list[Candidate]) -> list[dict[str, str]]:
        task = self.tasks()[0]
        fields: dict[str, Any] = {"layerstats_api": task.api, "bits_example": task.bits,
                                  "errors": self._recent_errors(parents[0] if parents else None)}
        for n, p in enumerate(parents[:2]):
            pre = "parent" if n == 0 else "parent2"
            fields[f"{pre}_code"] = compact_code(p.code or "")
            fields[f"{pre}_reasoning"] = one_line(p.reasoning, 600) if p.reasoning else "(none given)"
            fields[f"{pre}_fitness"] = f"{p.fitness:.4f}" if p.fitness is not None else \
                f"none: {one_line(p.reason, 200)}"
        user = render(self.templates[template], **fields)
        base = self._edit_base(template, parents)
        if base is not None:
            _, tail, names = split_at_final_return(base.code or "") or ([], [""], [])
            suffix = self.templates[grammar_mode(self.settings.grammar).suffix or ""]
            user = user.rstrip() + "\n" + render(suffix, return_line=tail[0].strip(),
                                                  variables=", ".join(names) or "none",
                                                  features="\n".join(f"  {f}" for f in REWEIGHT_FEATURES))
        return [{"role": "system", "content": system_prompt(task.api)}, {"role": "user", "content": user}]

    # -- the run
    def run(self, *, show_progress: bool = True) -> RunSummary:
        """Do every step the log does not hold yet; write ``summary.json`` and ``best_proxy.py``; return the
        summary. The run directory's lock is released when this returns or fails."""
        try:
            return self._run(show_progress)
        finally:
            self.lock.release()

    def _run(self, show_progress: bool) -> RunSummary:
        t0 = time.perf_counter()
        s = self.settings
        tasks = self.tasks()
        # seeds fill at most half of generation 0, so the init template is used too (shipped TAP programs first)
        seeds = list(builtin_seed_programs().items())[:max(1, s.population // 2)] if s.seed_builtins else []
        executor = self._executor()  # first: an unreachable Ray cluster stops the run before anything is logged
        if not self.started:
            self._emit({"type": "run_start", "settings": asdict(s), "tasks": describe_tasks(tasks),
                        "seeds": [n for n, _ in seeds], "templates_digest": templates_digest(self.templates)})
        else:
            self._emit({"type": "resume", "recorded_candidates": len(self.recorded),
                        "executor_info": s.executor_info})
        total = s.generations * s.population
        failures = 0
        try:
            with (console.progress("evolve", total=total) if show_progress else _NoBar()) as bar:
                for gen in range(s.generations):
                    pending: list[tuple[Candidate, Future]] = []
                    children: list[Candidate] = []
                    for idx in range(s.population):
                        cid = f"g{gen}c{idx}"
                        cand, fut, failed = self._slot(gen, idx, cid, seeds, executor)
                        failures = failures + 1 if failed else 0
                        if failures >= s.max_consecutive_llm_failures:
                            raise UserError(f"{failures} LLM requests in a row failed: {cand.reason}",
                                            f"check the server; the run continues with --resume {self.dir}")
                        children.append(cand)
                        if fut is not None:
                            pending.append((cand, fut))
                        else:
                            bar.advance()
                        self._describe(bar, gen, idx)
                    broken: UserError | None = None
                    for cand, fut in pending:
                        try:
                            self._finish(cand, self._result(cand, fut))
                        except UserError as e:  # a dead worker: record what the others finished, then stop
                            broken = broken or e
                            continue
                        bar.advance()
                        self._describe(bar, gen, s.population - 1)
                    if broken is not None:
                        raise broken
                    self._end_generation(gen, children)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        best = summarize(self.dir).best
        self._emit({"type": "run_end", "best_id": best.id if best else None,
                    "best_fitness": best.fitness if best else None,
                    "llm": self.client.totals() if self.client else None,
                    "evaluated_now": self.evaluated_now, "llm_calls_now": self.llm_calls_now,
                    "session_seconds": round(time.perf_counter() - t0, 1)})
        summary = summarize(self.dir)
        summary.write(self.dir / "summary.json")
        if best and best.code:
            (self.dir / "best_proxy.py").write_text(best_program_text(summary), encoding="utf-8", errors="replace")
        return summary

    def _describe(self, bar: Any, gen: int, idx: int) -> None:
        best = max((c.fitness for c in self.candidates if c.valid), default=None)
        bar.update(description=f"gen {gen + 1}/{self.settings.generations} cand {idx + 1}/"
                               f"{self.settings.population} best {best:.4f}" if best is not None else
                   f"gen {gen + 1}/{self.settings.generations} cand {idx + 1}/{self.settings.population}")

    def _executor(self) -> Executor:
        """The executor fitness evaluations run on (:data:`~tap_edge.search.executors.EXECUTORS`); what was
        used, and where, is recorded in ``run.json``."""
        s = self.settings
        work = Workload(self.tasks(), tuple(TaskSpec.parse(t) for t in s.tasks), s.cache_dir, s.workers,
                        s.ray_address)
        executor = open_executor(s.executor, work)
        self._record_executor(executor.info)
        return executor

    def _record_executor(self, info: dict[str, Any]) -> None:
        """Write this session's executor settings into ``run.json`` (a resume may change them: they do not
        change results)."""
        s = self.settings
        s.executor_info = info
        doc = read_run_json(self.dir)
        doc["settings"].update(executor=s.executor, workers=s.workers, ray_address=s.ray_address,
                               executor_info=info)
        write_run_json(self.dir, doc)

    def _submit(self, executor: Executor, cid: str, code: str) -> Future:
        """Log the evaluation (so that resume counts the attempts), then submit it."""
        self.attempts[cid] = self.attempts.get(cid, 0) + 1
        self._emit({"type": "evaluate", "cid": cid, "attempt": self.attempts[cid]})
        self.evaluated_now += 1
        return executor.evaluate(code, self.settings.alpha, self.limits, self.settings.repair,
                                 self.settings.fit_constants)

    def _result(self, cand: Candidate, fut: Future) -> dict[str, Any]:
        """An evaluation's outcome. An error raised by the evaluation is the candidate's failure; a worker
        that died ends the session (resume tries the evaluation again, :data:`MAX_EVALUATION_ATTEMPTS` times
        in all)."""
        try:
            result = fut.result()
        except BrokenExecutor:
            raise UserError(f"an evaluation worker died while {cand.id} was evaluated",
                            f"the run continues with --resume {self.dir}") from None
        except Exception as e:  # noqa: BLE001 - whatever a program's content makes the evaluation raise
            return {"ok": False, "stage": "run",
                    "reason": one_line(f"the evaluation failed: {e.__class__.__name__}: {e}")}
        if not isinstance(result, dict):
            return {"ok": False, "stage": "run", "reason": "the evaluation returned no result"}
        return result

    def _fail(self, cand: Candidate, stage: str, reason: str) -> None:
        """Record ``cand``'s failure (one line) in the log: it is never tried again."""
        cand.reason, cand.stage = one_line(reason), stage
        self._emit({"type": "fitness", "cid": cand.id, "ok": False, "stage": stage, "reason": cand.reason})

    def _slot(self, gen: int, idx: int, cid: str, seeds: list[tuple[str, str]], executor: Executor
              ) -> tuple[Candidate, Future | None, bool]:
        """Bring one slot as far as the log allows, then do the missing steps. A step that fails on the
        candidate's content is recorded as its failure (and so never replayed on resume)."""
        rec = self.recorded.get(cid, {})
        by_id = {c.id: c for c in self.candidates}
        problem: str | None = None
        if "prompt" in rec:
            p = rec["prompt"]
            template, seed_name = str(p.get("template")), str(p.get("seed") or "")
            parents = [by_id[i] for i in p.get("parents") or [] if isinstance(i, str) and i in by_id]
            messages = p.get("messages")
            base = by_id.get(str(p.get("edit_base") or ""))
        else:
            template, parents, seed_name = self._plan_slot(gen, idx, seeds)
            try:
                messages = None if template == "seed" else self._prompt(template, parents)
                base = self._edit_base(template, parents)
            except (RecursionError, MemoryError) as e:  # bounded parents make this unreachable: last guard
                messages, base = None, None
                problem = f"the prompt could not be built from the parent ({e.__class__.__name__})"
            self._emit({"type": "prompt", "cid": cid, "generation": gen, "slot": idx, "template": template,
                        "parents": [c.id for c in parents], "seed": seed_name,
                        "edit_base": base.id if base else None, "messages": messages})
        cand = Candidate(cid, gen, template, [c.id for c in parents], source=seed_name or None)
        self.candidates.append(cand)
        if "fitness" in rec:  # evaluated before: never pay again
            f = rec["fitness"]
            prog = rec.get("program", {})
            cand.code, cand.reasoning = prog.get("code"), str(prog.get("reasoning") or "")
            if "repair" in rec:
                cand.code = rec["repair"].get("code") or cand.code
            if "constants" in rec:
                cand.code = rec["constants"].get("code") or cand.code
            fitness = f.get("fitness")
            cand.fitness = float(fitness) if f.get("ok") and isinstance(fitness, int | float) else None
            cand.reason, cand.stage = f.get("reason"), f.get("stage")
            cand.details = f.get("tasks") if isinstance(f.get("tasks"), list) else None
            return cand, None, False
        if problem is not None:
            self._fail(cand, "prompt", problem)
            return cand, None, False
        try:
            return self._candidate(cand, rec, seeds, messages, base, executor)
        except (RecursionError, MemoryError) as e:  # the bounds make this unreachable: the last guard
            self._fail(cand, "parse", f"the reply could not be handled ({e.__class__.__name__})")
            return cand, None, False

    def _candidate(self, cand: Candidate, rec: dict[str, dict[str, Any]], seeds: list[tuple[str, str]],
                   messages: Any, base: Candidate | None, executor: Executor) -> tuple[Candidate, Future | None, bool]:
        """The reply (asked, or read from the log), its program, vetting and the evaluation's submission."""
        cid = cand.id
        if cand.template == "seed":
            text = dict(seeds).get(cand.source or "", "")
            code, reasoning, problem = text, f"built-in seed program '{cand.source}'", None
        else:
            if "reply" in rec:
                text = rec["reply"].get("text")
                text = text if isinstance(text, str) else ""
            else:
                try:
                    mode = grammar_mode(self.settings.grammar)
                    grammar = mode.edit if base is not None else mode.program
                    reply = self._client().chat(messages or [], extra_body=(
                        {**(self.settings.llm.get("extra_body") or {}), "grammar": grammar} if grammar else None))
                except LLMError as e:
                    self.llm_calls_now += 1
                    if e.fatal:  # e.g. it asks to wait for an hour: no request of this session can succeed
                        raise
                    # an outage (retryable) is asked again on resume; a refused prompt (e.g. longer than the
                    # context) is this candidate's failure and does not stop the run
                    stage = "llm" if e.retryable else "prompt"
                    self._emit({"type": "llm_error", "cid": cid, "error": one_line(e, 500), "status": e.status,
                                "retryable": e.retryable})
                    self._fail(cand, stage, f"LLM request failed: {e.message}")
                    return cand, None, e.retryable
                self.llm_calls_now += 1
                text = reply.text[:MAX_REPLY_CHARS + 1]  # a longer reply is refused unread (prompts.parse_reply)
                self._emit({"type": "reply", "cid": cid, "text": text, **{k: v for k, v in reply.to_dict().items()
                                                                        if k != "text"}})
            parsed = parse_reply(text, edit=base is not None)
            code, reasoning, problem = parsed.code, parsed.reasoning, parsed.problem
        edit = None
        if base is not None and code is not None:
            mode = grammar_mode(self.settings.grammar)
            assert mode.apply is not None  # an edit base exists only in the edit modes
            edit, code = code, mode.apply(base.code or "", code)
            problem = None if code else mode.refusal
        if "program" in rec:  # recorded before the crash: the same program
            code, reasoning = rec["program"].get("code"), str(rec["program"].get("reasoning") or "")
            code = code if isinstance(code, str) else None
        cand.code, cand.reasoning = code, reasoning
        if "program" not in rec:
            self._emit({"type": "program", "cid": cid, "code": code, "reasoning": reasoning, "problem": problem,
                        **({"edit": edit, "edit_base": base.id} if base is not None else {})})
        if code is None:
            self._fail(cand, "parse", f"no program: {problem or 'unreadable log entry'}")
            return cand, None, False
        try:
            vet_source(code)
            verdict: str | None = None
        except SandboxRejection as e:
            verdict = one_line(e.reason)
        if "vet" not in rec:
            self._emit({"type": "vet", "cid": cid, "ok": verdict is None, "reason": verdict})
        if verdict is not None and not self.settings.repair:
            self._fail(cand, "vet", f"rejected: {verdict}")
            return cand, None, False
        tried = self.attempts.get(cid, 0)
        if tried >= MAX_EVALUATION_ATTEMPTS:
            self._fail(cand, "run", f"the evaluation was started {tried} times and each time the session ended "
                                    "during it")
            return cand, None, False
        return cand, self._submit(executor, cid, code), False

    def _finish(self, cand: Candidate, result: dict[str, Any]) -> None:
        if result.get("repairs") or result.get("repaired_code"):
            fixed = result.pop("repaired_code", None)
            self._emit({"type": "repair", "cid": cand.id, "ok": fixed is not None or bool(result.get("ok")),
                        "removed": result.get("repairs"), "code": fixed})
            if fixed:
                cand.code = fixed
        if "constants" in result:  # the fitness below is the tuned program's when the constants improved
            tuned = result.pop("tuned_code", None)
            self._emit({"type": "constants", "cid": cand.id, **result.pop("constants"), "code": tuned})
            if tuned:
                cand.code = tuned
        if result.get("ok"):
            cand.fitness, cand.details = float(result["fitness"]), result.get("tasks")
        else:
            result["reason"] = cand.reason = one_line(result.get("reason") or "unknown failure")
            cand.stage = one_line(result.get("stage") or "run", 20)
        self._emit({"type": "fitness", "cid": cand.id, **result})

    def _end_generation(self, gen: int, children: list[Candidate]) -> None:
        before = self.controller.probs()
        pairs = preference_pairs([(c.template, c.fitness) for c in children if c.template in TEMPLATES])
        rec = self.controller.update(pairs)
        merged = {c.id: c for c in [*self.population, *children] if c.valid}
        ranked = sorted(merged.values(), key=lambda c: (-(c.fitness or 0.0), c.id))
        # survivors: one per behaviour (same widths on every task = the same program to the search), so copies
        # of one program (e.g. init replies the repair step reduced to the same lines) do not fill the population
        seen: set[str] = set()
        self.population = []
        for c in ranked:
            key = behaviour_key(c)
            if key not in seen:
                seen.add(key)
                self.population.append(c)
        self.population = self.population[:self.settings.population]
        if gen in self.gen_done:
            return
        fits = [c.fitness for c in children if c.valid]
        counts: dict[str, int] = {}
        for c in children:
            counts[c.template] = counts.get(c.template, 0) + 1
        best = self.population[0] if self.population else None
        self._emit({"type": "generation", "generation": gen, "children": len(children),
                    "valid": len(fits), "invalid_rate": round(1 - len(fits) / max(1, len(children)), 4),
                    "best_child_fitness": max(fits) if fits else None,
                    "median_child_fitness": statistics.median(fits) if fits else None,
                    "best_fitness": best.fitness if best else None, "best_id": best.id if best else None,
                    "median_population_fitness": statistics.median([c.fitness for c in self.population])
                    if self.population else None,
                    "templates_used": counts, "probs_before": before, "probs_after": rec["probs_after"],
                    "dpo": rec, "population": [c.id for c in self.population]})
        self.gen_done.add(gen)


class _NoBar:
    """Stands in for the progress bar when it is switched off."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None

    def update(self, **kw: Any) -> None:
        return None
