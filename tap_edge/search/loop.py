"""The TAP search loop: LLM-written proxy programs, evolved with three templates chosen by a DPO controller.

A run is a directory:

- ``run.json``: the settings (LLM endpoint and sampling, population, generations, tasks, alpha, seeds used,
  template digest, limits, DPO hyper-parameters);
- ``events.jsonl``: every step appended (and fsync'ed) as it happens: ``prompt``, ``reply``, ``llm_error``,
  ``program`` (code + reasoning + parse problem), ``vet`` (verdict + reason), ``fitness`` (value and per-task
  details, or the reason it has none), ``generation`` (template probabilities before/after the DPO update,
  preference pairs, best/median fitness, invalid rate), ``run_start`` / ``run_end``;
- ``summary.json`` and ``best_proxy.py`` when the run ends.

The loop is a deterministic function of the settings, the LLM replies and the fitness values (per-slot random
generators seeded by ``(seed, generation, slot)``), so ``--resume`` replays the log: a slot with a recorded
fitness is never evaluated again, a recorded reply is never asked again, and only the missing steps run.
A torn last line (``kill -9`` while writing) is ignored.

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
sandbox reports as failing (``evolve/repair.py``); every edit and deletion is logged.
Rejection reasons go back to the LLM in the next mutation / crossover prompt.
"""

from __future__ import annotations

import ast
import json
import math
import os
import statistics
import textwrap
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.core.serialize import json_default
from tap_edge.plan.proxies.sandbox import SandboxRejection, vet_source
from tap_edge.search.controller import DPOController, preference_pairs
from tap_edge.search.fitness import (
    DEFAULT_ALPHA,
    DEFAULT_TASKS,
    Limits,
    SearchTask,
    TaskSpec,
    build_task,
    describe_tasks,
    evaluate_program,
    init_worker,
    worker_tasks,
)
from tap_edge.search.llm import LLMClient, LLMConfig, LLMError
from tap_edge.search.prompts import (
    EDIT_MODES,
    GRAMMARS,
    REWEIGHT_FEATURES,
    SYSTEM_PROMPT,
    TEMPLATES,
    apply_edit,
    apply_reweight,
    compact_code,
    grammar_for,
    layerstats_api,
    load_templates,
    parse_reply,
    render,
    split_at_final_return,
    templates_digest,
)

RUN_FORMAT = "tap-edge/evolve-run"
RUN_VERSION = 1


#: Where fitness evaluations run: a local process pool, threads (tests), Ray tasks (the ray extra).
EXECUTORS = ("process", "thread", "ray")


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
    executor: str = "process"  # one of EXECUTORS
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
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("grammar"), bool):
            known["grammar"] = "full" if known["grammar"] else "off"
        return cls(**known)


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


# ---------------------------------------------------------------------------------------------------------
# the run log

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


# ---------------------------------------------------------------------------------------------------------
# seeds: the built-in proxies as programs

def behaviour_key(cand: Candidate) -> str:
    """What a candidate did on the search tasks (its widths per task); its id when that is not recorded."""
    widths = [(t.get("task"), t.get("bits")) for t in (cand.details or []) if isinstance(t, dict)]
    if not widths or any(w is None for _, w in widths):
        return cand.id
    return json.dumps(widths, sort_keys=True, default=str)


def builtin_seed_programs() -> dict[str, str]:
    """Program sources shipped in ``tap_edge/plan/proxies/programs/*.py`` (the seed TAP program and any others)
    plus the simple seeds in ``tap_edge/search/seeds``, in that order. Only sources that pass vetting count."""
    from importlib import resources

    found: dict[str, str] = {}
    for pkg, folder in (("tap_edge.plan.proxies", "programs"), ("tap_edge.search", "seeds")):
        try:
            base = resources.files(pkg).joinpath(folder)
            entries = sorted(base.iterdir(), key=lambda p: p.name)
        except (FileNotFoundError, NotADirectoryError, ModuleNotFoundError):
            continue
        for entry in entries:
            if not entry.name.endswith(".py") or entry.name.startswith("_"):
                continue
            src = entry.read_text()
            try:
                vet_source(src)
            except SandboxRejection:
                continue
            found.setdefault(entry.name[:-3], src)
    return found


# ---------------------------------------------------------------------------------------------------------
# the loop

class Evolution:
    """One run: build with :meth:`create` or :meth:`resume`, then :meth:`run`."""

    def __init__(self, run_dir: Path, settings: EvolveSettings, events: list[dict[str, Any]],
                 client: LLMClient | None = None, tasks: list[SearchTask] | None = None) -> None:
        self.dir = run_dir
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
        if d.exists() and any(p.name != "llm_server.log" for p in d.iterdir()):
            raise UserError(f"{d}: run directory exists and is not empty",
                            f"continue it with --resume {d}, or choose a new directory")
        d.mkdir(parents=True, exist_ok=True)
        for spec in settings.tasks:
            TaskSpec.parse(spec)
        doc = {"format": RUN_FORMAT, "version": RUN_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime()),
               "settings": asdict(settings)}
        templates = load_templates(settings.templates_dir)
        doc["templates_digest"] = templates_digest(templates)
        (d / "run.json").write_text(json.dumps(doc, indent=2, default=json_default))
        return cls(d, settings, [], client, tasks)

    @classmethod
    def resume(cls, run_dir: str | Path, client: LLMClient | None = None, tasks: list[SearchTask] | None = None,
               overrides: dict[str, Any] | None = None) -> Evolution:
        d = Path(run_dir)
        meta = d / "run.json"
        if not meta.exists():
            raise UserError(f"{d}: not an evolve run (no run.json)", "pass the directory a run created")
        try:
            doc = json.loads(meta.read_text())
        except ValueError as e:
            raise UserError(f"{meta}: damaged run.json ({e})") from None
        settings = EvolveSettings.from_dict(doc.get("settings", {}))
        for k, v in (overrides or {}).items():  # only what does not change results (e.g. workers)
            setattr(settings, k, v)
        return cls(d, settings, read_events(d / "events.jsonl"), client, tasks)

    def _index(self) -> None:
        """Recorded steps per candidate id, and generations already summarised."""
        self.recorded: dict[str, dict[str, dict[str, Any]]] = {}
        self.gen_done: set[int] = set()
        self.started = False
        for ev in self.events:
            kind = ev.get("type")
            if kind == "generation":
                self.gen_done.add(int(ev["generation"]))
            elif kind == "run_start":
                self.started = True
            elif "cid" in ev and kind in ("prompt", "reply", "program", "vet", "fitness", "repair"):
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
        return "; ".join(r[:200] for r in reasons) if reasons else "none so far"

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
        if self.settings.grammar not in EDIT_MODES or template not in ("mutation", "crossover") or not parents:
            return None
        return parents[0] if parents[0].code and split_at_final_return(parents[0].code) else None

    def _prompt(self, template: str, parents: list[Candidate]) -> list[dict[str, str]]:
        tasks = self.tasks()
        bits = tasks[0].bits if tasks else [2, 3, 4, 5, 6, 8]
        api = getattr(tasks[0], "api", "") if tasks else ""
        fields: dict[str, Any] = {"layerstats_api": api or layerstats_api(), "bits_example": bits,
                                  "errors": self._recent_errors(parents[0] if parents else None)}
        for n, p in enumerate(parents[:2]):
            pre = "parent" if n == 0 else "parent2"
            fields[f"{pre}_code"] = compact_code(p.code or "")
            fields[f"{pre}_reasoning"] = p.reasoning or "(none given)"
            fields[f"{pre}_fitness"] = f"{p.fitness:.4f}" if p.fitness is not None else f"none: {p.reason}"
        user = render(self.templates[template], **fields)
        base = self._edit_base(template, parents)
        if base is not None:
            _, tail, names = split_at_final_return(base.code or "") or ([], [""], [])
            suffix = self.templates["reweight" if self.settings.grammar == "reweight" else "edit"]
            user = user.rstrip() + "\n" + render(suffix, return_line=tail[0].strip(),
                                                  variables=", ".join(names) or "none",
                                                  features="\n".join(f"  {f}" for f in REWEIGHT_FEATURES))
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    # -- the run
    def run(self, *, show_progress: bool = True) -> dict[str, Any]:
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
                    for cand, fut in pending:
                        self._finish(cand, fut.result())
                        bar.advance()
                        self._describe(bar, gen, s.population - 1)
                    self._end_generation(gen, children)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        best = summarize(self.dir).get("best")
        self._emit({"type": "run_end", "best_id": best.get("id") if best else None,
                    "best_fitness": best.get("fitness") if best else None,
                    "llm": self.client.totals() if self.client else None,
                    "evaluated_now": self.evaluated_now, "llm_calls_now": self.llm_calls_now})
        summary = summarize(self.dir)
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default))
        if best and best.get("code"):
            (self.dir / "best_proxy.py").write_text(best_program_text(summary))
        return summary

    def _describe(self, bar: Any, gen: int, idx: int) -> None:
        best = max((c.fitness for c in self.candidates if c.valid), default=None)
        bar.update(description=f"gen {gen + 1}/{self.settings.generations} cand {idx + 1}/"
                               f"{self.settings.population} best {best:.4f}" if best is not None else
                   f"gen {gen + 1}/{self.settings.generations} cand {idx + 1}/{self.settings.population}")

    def _executor(self) -> Any:
        """The pool fitness evaluations run on: a local process pool (default), threads (tests), or Ray
        tasks (:class:`RayExecutor`). What was used, and where, is recorded in ``run.json``."""
        s = self.settings
        info: dict[str, Any] = {"executor": s.executor, "workers": max(1, s.workers)}
        if s.executor == "ray":
            ex: Any = RayExecutor([TaskSpec.parse(t) for t in s.tasks], s.cache_dir, s.ray_address, s.workers)
            info.update(ex.info)
        elif s.executor == "thread":
            tasks = self.tasks()
            ex = ThreadPoolExecutor(max_workers=max(1, s.workers))
            ex.tasks = tasks  # type: ignore[attr-defined]
        elif s.executor == "process":
            import multiprocessing as mp

            specs = [TaskSpec.parse(t) for t in s.tasks]
            ex = ProcessPoolExecutor(max_workers=max(1, s.workers), mp_context=mp.get_context("spawn"),
                                     initializer=init_worker, initargs=(specs, s.cache_dir))
        else:
            raise UserError(f"unknown executor '{s.executor}'", f"use one of {', '.join(EXECUTORS)}")
        self._record_executor(info)
        return ex

    def _record_executor(self, info: dict[str, Any]) -> None:
        """Write this session's executor settings into ``run.json`` (a resume may change them: they do not
        change results)."""
        s = self.settings
        s.executor_info = info
        meta = self.dir / "run.json"
        doc = json.loads(meta.read_text())
        doc.setdefault("settings", {}).update(executor=s.executor, workers=s.workers, ray_address=s.ray_address,
                                              executor_info=info)
        tmp = meta.with_name("run.json.tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=json_default))
        os.replace(tmp, meta)

    def _submit(self, executor: Any, code: str) -> Future:
        self.evaluated_now += 1
        s = self.settings
        if isinstance(executor, RayExecutor):
            return executor.evaluate(code, s.alpha, self.limits, s.repair)
        tasks = executor.tasks if isinstance(executor, ThreadPoolExecutor) else None
        return executor.submit(evaluate_program, code, s.alpha, self.limits, tasks, s.repair)

    def _slot(self, gen: int, idx: int, cid: str, seeds: list[tuple[str, str]], executor: Any
              ) -> tuple[Candidate, Future | None, bool]:
        """Bring one slot as far as the log allows, then do the missing steps."""
        rec = self.recorded.get(cid, {})
        by_id = {c.id: c for c in self.candidates}
        if "prompt" in rec:
            p = rec["prompt"]
            template, parents, seed_name = p["template"], [by_id[i] for i in p["parents"] if i in by_id], \
                p.get("seed", "")
            messages = p.get("messages")
            base = by_id.get(p.get("edit_base") or "")
        else:
            template, parents, seed_name = self._plan_slot(gen, idx, seeds)
            messages = None if template == "seed" else self._prompt(template, parents)
            base = self._edit_base(template, parents)
            self._emit({"type": "prompt", "cid": cid, "generation": gen, "slot": idx, "template": template,
                        "parents": [c.id for c in parents], "seed": seed_name,
                        "edit_base": base.id if base else None, "messages": messages})
        cand = Candidate(cid, gen, template, [c.id for c in parents], source=seed_name or None)
        self.candidates.append(cand)
        if "fitness" in rec:  # evaluated before: never pay again
            f = rec["fitness"]
            prog = rec.get("program", {})
            cand.code, cand.reasoning = prog.get("code"), prog.get("reasoning", "")
            if "repair" in rec:
                cand.code = rec["repair"].get("code") or cand.code
            cand.fitness, cand.reason, cand.stage = f.get("fitness"), f.get("reason"), f.get("stage")
            cand.details = f.get("tasks")
            return cand, None, False
        # the reply (or the seed's source)
        if template == "seed":
            text = dict(seeds).get(seed_name, "")
            code, reasoning, problem = text, f"built-in seed program '{seed_name}'", None
        else:
            if "reply" in rec:
                text = rec["reply"]["text"]
            else:
                try:
                    grammar = grammar_for(self.settings.grammar, template) if base is not None \
                        else GRAMMARS.get(self.settings.grammar)
                    reply = self._client().chat(messages or [], extra_body=(
                        {**(self.settings.llm.get("extra_body") or {}), "grammar": grammar} if grammar else None))
                except LLMError as e:
                    self.llm_calls_now += 1
                    # an outage (retryable) is asked again on resume; a refused prompt (e.g. longer than the
                    # context) is this candidate's failure and does not stop the run
                    stage = "llm" if e.retryable else "prompt"
                    cand.reason, cand.stage = f"LLM request failed: {e.message}", stage
                    self._emit({"type": "llm_error", "cid": cid, "error": str(e), "status": e.status,
                                "retryable": e.retryable})
                    self._emit({"type": "fitness", "cid": cid, "ok": False, "stage": stage,
                                "reason": cand.reason})
                    return cand, None, e.retryable
                self.llm_calls_now += 1
                text = reply.text
                self._emit({"type": "reply", "cid": cid, "text": text, **{k: v for k, v in reply.to_dict().items()
                                                                        if k != "text"}})
            parsed = parse_reply(text, edit=base is not None)
            code, reasoning, problem = parsed.code, parsed.reasoning, parsed.problem
        edit = None
        if base is not None and code is not None:
            if self.settings.grammar == "reweight":
                edit, code = code, apply_reweight(base.code or "", code)
                problem = None if code else "the edit is not 'layer_weight = ...' and 'width_power = ...'"
            else:
                edit, code = code, apply_edit(base.code or "", code)
                problem = None if code else "the parent has no final return to insert the edit before"
        if "program" in rec:  # recorded before the crash: the same program
            code, reasoning = rec["program"].get("code"), rec["program"].get("reasoning", "")
        cand.code, cand.reasoning = code, reasoning
        if "program" not in rec:
            self._emit({"type": "program", "cid": cid, "code": code, "reasoning": reasoning, "problem": problem,
                        **({"edit": edit, "edit_base": base.id} if base is not None else {})})
        if code is None:
            cand.reason, cand.stage = f"no program: {problem}", "parse"
            self._emit({"type": "fitness", "cid": cid, "ok": False, "stage": "parse", "reason": cand.reason})
            return cand, None, False
        try:
            vet_source(code)
            verdict: str | None = None
        except SandboxRejection as e:
            verdict = e.reason
        if "vet" not in rec:
            self._emit({"type": "vet", "cid": cid, "ok": verdict is None, "reason": verdict})
        if verdict is not None and not self.settings.repair:
            cand.reason, cand.stage = f"rejected: {verdict}", "vet"
            self._emit({"type": "fitness", "cid": cid, "ok": False, "stage": "vet", "reason": cand.reason})
            return cand, None, False
        return cand, self._submit(executor, code), False

    def _finish(self, cand: Candidate, result: dict[str, Any]) -> None:
        if result.get("repairs") or result.get("repaired_code"):
            fixed = result.pop("repaired_code", None)
            self._emit({"type": "repair", "cid": cand.id, "ok": fixed is not None or bool(result.get("ok")),
                        "removed": result.get("repairs"), "code": fixed})
            if fixed:
                cand.code = fixed
        if result.get("ok"):
            cand.fitness, cand.details = float(result["fitness"]), result.get("tasks")
        else:
            cand.reason, cand.stage = str(result.get("reason")), str(result.get("stage") or "run")
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


# ---------------------------------------------------------------------------------------------------------
# the Ray executor (optional extra: pip install 'tap-edge[ray]')

RAY_INSTALL = "pip install 'tap-edge[ray]'"
RAY_HINT = "start one with `ray start --head`, or fix --ray-address / RAY_ADDRESS"
RAY_AUTH_HINT = ("is it a Ray head node (GCS port) of the same Ray version? with token authentication (Ray's "
                 "default) set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
def _ray_evaluate(code: str, alpha: float, limits: Limits, repair: bool, specs: tuple[TaskSpec, ...],
                  cache_dir: str | None) -> dict[str, Any]:
    """One Ray task: the search tasks are built once per Ray worker process (:func:`worker_tasks`, as the
    process pool's initializer does), then the same :func:`evaluate_program`, whose sandbox runs the program
    in a limited child process."""
    return evaluate_program(code, alpha, limits, worker_tasks(specs, cache_dir), repair)


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray, which is not installed", RAY_INSTALL) from None
    return ray


def probe_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at ``address``: ``ray.init`` would retry for minutes."""
    import socket

    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"Ray address '{address}' is not HOST:PORT", "give the head node's GCS address, e.g. "
                                                                    "10.0.0.5:6379, or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"cannot reach the Ray cluster at {address} ({e.strerror or e})", RAY_HINT) from None


def resolve_ray_address(requested: str | None) -> str | None:
    """What to pass to ``ray.init(address=...)``, or None to start a local instance. ``requested`` None means
    ``auto`` when RAY_ADDRESS is set, else local; ``auto`` means RAY_ADDRESS, else the last ``ray start`` on
    this machine. The cluster is probed first, so an unreachable one is a one-line error, not a long hang.
    ``auto`` is passed on as such: Ray then also picks up a local cluster's authentication token."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    address = requested or ("auto" if env else "local")
    if address == "local" or (address == "auto" and env == "local"):
        return None
    if address != "auto":
        probe_ray_address(address)
        return address
    if env and env != "auto":
        probe_ray_address(env)
        return address
    import_ray()
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die
    except ImportError:  # a Ray without this helper: ray.init looks the cluster up itself
        return address
    try:
        found = canonicalize_bootstrap_address_or_die("auto")
    except (ConnectionError, ValueError) as e:
        raise UserError(f"--ray-address auto: no running Ray cluster found ({str(e).splitlines()[0]})",
                        RAY_HINT) from None
    probe_ray_address(found)
    return address


def join_ray_cluster(target: str) -> None:
    """``ray.init`` on a cluster. Ray's core logs each failed attempt of its ~20 s connect window straight to
    file descriptor 2; those lines are caught, and on failure the last one is the reason given (e.g. a missing
    authentication token), so the error stays one line. On success they are passed on."""
    import logging
    import re
    import sys
    import tempfile

    ray = import_ray()
    with tempfile.TemporaryFile() as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            ray.init(address=target, logging_level=logging.ERROR, log_to_driver=False)
            failure: Exception | None = None
        except Exception as e:  # Ray raises many kinds here (ConnectionError, RayError, ValueError, ...)
            failure = e
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode(errors="replace")
    if failure is None:
        sys.stderr.write(text)
        return
    reasons = re.findall(r"\] \S+:\d+: (.+)", text) or [str(failure).strip().split("\n")[0]]
    raise UserError(f"cannot join the Ray cluster at {target}: {reasons[-1].strip()}", RAY_AUTH_HINT)


class RayExecutor:
    """Fitness evaluations as Ray tasks, behind the two calls the loop makes on a pool: :meth:`evaluate`
    returns a ``concurrent.futures.Future`` (``ObjectRef.future()``) and :meth:`shutdown`. Connects to a
    cluster, or starts a local instance with ``workers`` CPUs; shuts down only what it started (a Ray session
    opened before it is left alone). ``info`` describes the cluster for ``run.json``."""

    def __init__(self, specs: list[TaskSpec], cache_dir: str | None, address: str | None, workers: int) -> None:
        import logging

        ray = import_ray()
        self._ray = ray
        self._owns = not ray.is_initialized()
        target = resolve_ray_address(address) if self._owns else None
        if self._owns and target is not None:
            join_ray_cluster(target)
        elif self._owns:
            try:
                ray.init(num_cpus=max(1, workers), include_dashboard=False, object_store_memory=256 << 20,
                         logging_level=logging.ERROR, log_to_driver=False)
            except Exception as e:  # Ray raises many kinds here (RuntimeError, RayError, ValueError, ...)
                raise UserError(f"cannot start a local Ray instance: {str(e).strip().splitlines()[0]}",
                                "see /tmp/ray/session_latest/logs") from None
        self._remote = ray.remote(_ray_evaluate)
        self._specs = tuple(specs)
        self._cache_dir = cache_dir
        self._pending: list[tuple[Any, Future]] = []
        try:
            resources = ray.cluster_resources()
            self.info: dict[str, Any] = {
                "ray_version": ray.__version__, "ray_address": ray.get_runtime_context().gcs_address,
                "ray_started_here": self._owns and target is None,
                "ray_nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                "ray_resources": {k: v for k, v in sorted(resources.items()) if not k.startswith("node:")}}
        except BaseException:
            self.shutdown(wait=False)
            raise

    def evaluate(self, code: str, alpha: float, limits: Limits, repair: bool) -> Future:
        """Submit one program's fitness evaluation (the references are kept until done, so none is freed)."""
        self._pending = [(r, f) for r, f in self._pending if not f.done()]
        ref = self._remote.remote(code, alpha, limits, repair, self._specs, self._cache_dir)
        fut = ref.future()
        self._pending.append((ref, fut))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Cancel (or wait for) what is still running, then stop the Ray session this executor opened."""
        from concurrent.futures import wait as wait_all

        ray = self._ray
        if cancel_futures:
            for ref, fut in self._pending:
                if not fut.done():
                    try:
                        ray.cancel(ref)
                    except Exception:  # already finished, or the cluster is gone
                        pass
        elif wait:
            wait_all([f for _, f in self._pending])
        self._pending = []
        if self._owns and ray.is_initialized():
            ray.shutdown()


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


# ---------------------------------------------------------------------------------------------------------
# reports

def summarize(run_dir: str | Path) -> dict[str, Any]:
    """A run's summary from its files: settings, per-generation figures, template probabilities, the best
    program with its reasoning, LLM usage and invalid reasons."""
    d = Path(run_dir)
    if not (d / "run.json").exists():
        raise UserError(f"{d}: not an evolve run (no run.json)")
    doc = json.loads((d / "run.json").read_text())
    events = read_events(d / "events.jsonl")
    progs: dict[str, dict[str, Any]] = {}
    prompts: dict[str, dict[str, Any]] = {}
    fits: dict[str, dict[str, Any]] = {}
    gens: dict[int, dict[str, Any]] = {}
    replies = []
    tasks = None
    for ev in events:
        t = ev.get("type")
        if t == "program":
            progs[ev["cid"]] = dict(ev)
        elif t == "repair" and ev.get("code") and ev["cid"] in progs:
            progs[ev["cid"]]["original_code"] = progs[ev["cid"]].get("code")
            progs[ev["cid"]]["code"] = ev["code"]
            progs[ev["cid"]]["repairs"] = ev.get("removed")
        elif t == "prompt":
            prompts[ev["cid"]] = ev
        elif t == "fitness":
            fits[ev["cid"]] = ev
        elif t == "generation":
            gens[int(ev["generation"])] = ev
        elif t == "reply":
            replies.append(ev)
        elif t == "run_start":
            tasks = ev.get("tasks")
    valid = {cid: f for cid, f in fits.items() if f.get("ok")}
    best_id = max(valid, key=lambda c: valid[c]["fitness"]) if valid else None
    best = None
    if best_id:
        best = {"id": best_id, "fitness": valid[best_id]["fitness"],
                "template": prompts.get(best_id, {}).get("template"),
                "parents": prompts.get(best_id, {}).get("parents"),
                "seed": prompts.get(best_id, {}).get("seed") or None,
                "reasoning": progs.get(best_id, {}).get("reasoning"), "code": progs.get(best_id, {}).get("code"),
                "repairs": progs.get(best_id, {}).get("repairs"),
                "tasks": valid[best_id].get("tasks"), "lineage": lineage(best_id, progs, prompts, fits)}
    reasons: dict[str, int] = {}
    for f in fits.values():
        if not f.get("ok"):
            key = f"{f.get('stage')}: {str(f.get('reason'))[:90]}"
            reasons[key] = reasons.get(key, 0) + 1
    generations = []
    for g in sorted(gens):
        e = gens[g]
        generations.append({k: e.get(k) for k in (
            "generation", "children", "valid", "invalid_rate", "best_child_fitness", "median_child_fitness",
            "best_fitness", "best_id", "median_population_fitness", "templates_used", "probs_before",
            "probs_after")})
        generations[-1]["n_pairs"] = (e.get("dpo") or {}).get("n_pairs")
        # the names the HTML report reads (tap_edge.report.page, schema tap-edge/evolve-run)
        generations[-1].update(gen=g, median_fitness=e.get("median_child_fitness"),
                               template_probs=e.get("probs_after"))
    times = [ev["t"] for ev in events if "t" in ev]
    settings = doc.get("settings", {})
    llm = dict(settings.get("llm", {}))
    if isinstance(llm.get("extra_body"), dict) and "grammar" in llm["extra_body"]:
        llm["extra_body"] = {**llm["extra_body"], "grammar": "<GBNF>"}
    return {
        "schema": RUN_FORMAT, "version": RUN_VERSION,
        "run_dir": str(d), "created": doc.get("created"), "settings": {**settings, "llm": llm},
        "tasks": tasks, "generations": generations, "best": best,
        "candidates": len(prompts), "evaluated": len(fits), "valid": len(valid),
        "invalid_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "llm_usage": {"calls": len(replies),
                      "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in replies),
                      "completion_tokens": sum(r.get("completion_tokens") or 0 for r in replies),
                      "seconds": round(sum(r.get("seconds") or 0 for r in replies), 2)},
        "wall_seconds": round(max(times) - min(times), 1) if times else 0.0,
        "finished": any(ev.get("type") == "run_end" for ev in events),
    }


def lineage(cid: str, progs: dict[str, dict[str, Any]], prompts: dict[str, dict[str, Any]],
            fits: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The chain of edits that made ``cid``: itself, the parent it is an edit of, ... down to a program the LLM
    wrote whole or a built-in seed (each with template, fitness and the LLM's edit)."""
    out: list[dict[str, Any]] = []
    while cid and cid in progs and len(out) < 100:
        p, pr = progs[cid], prompts.get(cid, {})
        out.append({"id": cid, "template": pr.get("template"), "seed": pr.get("seed") or None,
                    "fitness": fits.get(cid, {}).get("fitness"), "edit": p.get("edit"),
                    "reasoning": p.get("reasoning")})
        cid = p.get("edit_base") if p.get("edit") else None
    return out


def _without_module_docstring(code: str) -> str:
    """``code`` without its module docstring (an edit child inherits its ancestor's, which describes the
    ancestor: e.g. a seed's "hand-written" label)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    first = tree.body[0] if tree.body else None
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return code
    lines = code.splitlines()
    return "\n".join(lines[:first.lineno - 1] + lines[first.end_lineno or first.lineno:]).lstrip("\n")


def best_program_text(summary: dict[str, Any]) -> str:
    """The best program with its provenance as a comment header (a file ``plan --proxy`` can load)."""
    best = summary["best"]
    s = summary["settings"]
    llm = s.get("llm", {})
    lines = [
        f"# TAP proxy discovered by `tap-edge evolve` (run {Path(summary['run_dir']).name}, candidate {best['id']}).",
        f"# LLM: {llm.get('model')} at {llm.get('base_url')}, temperature {llm.get('temperature')}, "
        f"grammar {s.get('grammar')}, repair {'on' if s.get('repair') else 'off'}.",
        f"# Search: population {s.get('population')}, generations {s.get('generations')}, tasks "
        f"{', '.join(s.get('tasks', []))}, alpha {s.get('alpha')}, seeds {'on' if s.get('seed_builtins') else 'off'}.",
        f"# Fitness {best['fitness']:.4f} (template {best.get('template')}"
        f"{', seed ' + best['seed'] if best.get('seed') else ''}); per generation best: "
        + ", ".join(f"{g['best_fitness']:.4f}" if g.get("best_fitness") is not None else "-"
                    for g in summary["generations"]) + ".",
        "# Reasoning: " + " ".join((best.get("reasoning") or "").split())[:600],
        *([f"# Repair removed {len(best['repairs'])} failing statement(s) of the LLM's program."]
          if best.get("repairs") else []),
    ]
    chain = best.get("lineage") or []
    for step, parent in zip(chain, chain[1:], strict=False):
        edit = " ; ".join(ln.strip() for ln in (step.get("edit") or "").splitlines() if ln.strip())
        lines.append(f"# Lineage: {step['id']} ({step.get('template')}) = LLM edit of {parent['id']}: {edit[:300]}")
    if len(chain) > 1:
        root = chain[-1]
        lines.append(f"# Lineage: {root['id']} = " + (f"built-in seed '{root['seed']}'" if root.get("seed") else
                                                      f"written whole by the LLM ({root.get('template')})")
                     + (f", fitness {root['fitness']:.4f}" if root.get("fitness") is not None else "")
                     + "; its module docstring (about that program) is dropped here.")
    code = best.get("code") or ""
    if len(chain) > 1:
        code = _without_module_docstring(code)
    wrapped = [w for ln in lines for w in textwrap.wrap(ln, 116, subsequent_indent="#   ", break_long_words=False,
                                                        break_on_hyphens=False)]
    return "\n".join([*wrapped, ""]) + code.rstrip() + "\n"


def summary_markdown(summary: dict[str, Any]) -> str:
    """A run summary as Markdown (provenance of a shipped proxy: LLM, settings, per-generation figures,
    template probabilities, the best program with its reasoning and repairs)."""
    s = summary["settings"]
    llm = s.get("llm", {})
    best = summary.get("best") or {}
    out = [f"# TAP search run `{Path(summary['run_dir']).name}`", "",
           f"- created: {summary.get('created')}; finished: {summary.get('finished')}; wall time of the logged "
           f"steps: {summary.get('wall_seconds')} s",
           f"- LLM: `{llm.get('model')}` at `{llm.get('base_url')}`, temperature {llm.get('temperature')}, "
           f"max_tokens {llm.get('max_tokens')}, grammar `{s.get('grammar')}`, repair {s.get('repair')}",
           f"- search: population {s.get('population')}, generations {s.get('generations')} (generation 0 "
           f"included), seeds {'on' if s.get('seed_builtins') else 'off'}, tournament {s.get('tournament')}, "
           f"seed {s.get('seed')}, alpha {s.get('alpha')}, DPO {s.get('dpo')}",
           f"- tasks: {json.dumps(summary.get('tasks'))}",
           f"- candidates {summary.get('candidates')}, valid {summary.get('valid')}; LLM usage "
           f"{json.dumps(summary.get('llm_usage'))}", "",
           "| gen | children | invalid | best child | median child | best overall | templates used | "
           "p(init / mutation / crossover) after | pairs |", "|---|---|---|---|---|---|---|---|---|"]
    for g in summary.get("generations", []):
        p = g.get("probs_after") or {}

        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.4f}"
        out.append(f"| {g['generation']} | {g['children']} | {100 * (g.get('invalid_rate') or 0):.0f}% | "
                   f"{f(g.get('best_child_fitness'))} | {f(g.get('median_child_fitness'))} | "
                   f"{f(g.get('best_fitness'))} | {json.dumps(g.get('templates_used'))} | "
                   + " / ".join(f"{p.get(k, 0):.3f}" for k in ("init", "mutation", "crossover"))
                   + f" | {g.get('n_pairs')} |")
    if summary.get("invalid_reasons"):
        out += ["", "Invalid candidates:", ""] + [f"- {n} x {r}" for r, n in summary["invalid_reasons"].items()]
    if best:
        out += ["", f"## Best program: {best.get('id')} (fitness {best.get('fitness'):.4f}, template "
                    f"{best.get('template')}{', seed ' + best['seed'] if best.get('seed') else ''}, parents "
                    f"{best.get('parents')})", "",
                f"Reasoning: {best.get('reasoning') or '-'}", ""]
        for t in best.get("tasks") or []:
            out.append(f"- {t['task']}: quality (agreement with float) {t['quality']:.4f}, top-1 "
                       f"{t.get('top1') if t.get('top1') is None else round(t['top1'], 4)}, Spearman "
                       f"{t['spearman']:+.3f}, average bits {t.get('avg_bits') or 0:.2f}, widths {t.get('bits')}")
        if best.get("repairs"):
            out += ["", "Statements the repair step deleted from the LLM's program:", ""]
            out += [f"- `{r['removed'][:100]}` ({r['error'][:100]})" for r in best["repairs"]]
        chain = best.get("lineage") or []
        code = best.get("code") or ""
        if len(chain) > 1:
            out += ["", "Lineage (each step an LLM edit of the next):", ""]
            for step in chain:
                fit = f"{step['fitness']:.4f}" if step.get("fitness") is not None else "-"
                what = (f"`{' ; '.join(ln.strip() for ln in step['edit'].splitlines() if ln.strip())}`"
                        if step.get("edit") else f"built-in seed '{step['seed']}'" if step.get("seed")
                        else f"written whole by the LLM ({step.get('template')})")
                out.append(f"- {step['id']} ({step.get('template')}, fitness {fit}): {what}")
            code = _without_module_docstring(code)
            out += ["", "The program (its ancestor's module docstring dropped):"]
        out += ["", "```python", code.rstrip(), "```", ""]
    return "\n".join(out)
