"""A run's summary, read from its files: the :class:`~tap_edge.documents.RunSummary` document (``evolve --json``,
``--report``, ``summary.json``), the best program as a loadable file with its provenance (``best_proxy.py``),
and the summary as Markdown (the provenance of a shipped proxy)."""

from __future__ import annotations

import ast
import json
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tap_edge.documents import LineageStep, RunSummary
from tap_edge.plan.proxies.sandbox import one_line
from tap_edge.search.prompts import bounded_tree
from tap_edge.search.runlog import EvolveSettings, read_events, read_run_json


def summarize(run_dir: str | Path) -> RunSummary:
    """A run's summary from its files: settings, per-generation figures, template probabilities, the best
    program with its reasoning and lineage, LLM usage and invalid reasons."""
    d = Path(run_dir)
    doc = read_run_json(d)
    events = [ev for ev in read_events(d / "events.jsonl") if _well_formed(ev)]
    progs: dict[str, dict[str, Any]] = {}
    prompts: dict[str, dict[str, Any]] = {}
    fits: dict[str, dict[str, Any]] = {}
    gens: dict[int, dict[str, Any]] = {}
    replies = []
    tasks = None
    session_seconds = None
    for ev in events:
        t = ev.get("type")
        if t == "program":
            progs[ev["cid"]] = dict(ev)
        elif t == "repair" and ev.get("code") and ev["cid"] in progs:
            progs[ev["cid"]]["original_code"] = progs[ev["cid"]].get("code")
            progs[ev["cid"]]["code"] = ev["code"]
            progs[ev["cid"]]["repairs"] = ev.get("removed")
        elif t == "constants" and ev.get("cid") in progs:
            progs[ev["cid"]]["constants"] = {k: v for k, v in ev.items() if k not in ("type", "cid", "code", "t")}
            if ev.get("code"):
                progs[ev["cid"]]["code"] = ev["code"]
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
        elif t == "run_end":
            session_seconds = ev.get("session_seconds")
    valid = {cid: f for cid, f in fits.items() if f.get("ok")}
    best_id = max(valid, key=lambda c: valid[c]["fitness"]) if valid else None
    best = None
    if best_id:
        prompt, prog = prompts.get(best_id, {}), progs.get(best_id, {})
        best = {"id": best_id, "fitness": valid[best_id]["fitness"], "template": prompt.get("template"),
                "parents": prompt.get("parents"), "seed": prompt.get("seed") or None,
                "reasoning": prog.get("reasoning"), "code": prog.get("code"), "repairs": prog.get("repairs"),
                "tasks": valid[best_id].get("tasks"), "constants": prog.get("constants"),
                "lineage": [step.model_dump() for step in lineage(best_id, progs, prompts, fits)]}
    reasons: dict[str, int] = {}
    for f in fits.values():
        if not f.get("ok"):
            key = f"{one_line(f.get('stage'), 20)}: {one_line(f.get('reason'), 90)}"
            reasons[key] = reasons.get(key, 0) + 1
    generations = []
    for g in sorted(gens):
        e = gens[g]
        generations.append({k: e.get(k) for k in (
            "generation", "children", "valid", "invalid_rate", "best_child_fitness", "median_child_fitness",
            "best_fitness", "best_id", "median_population_fitness", "templates_used", "probs_before",
            "probs_after")} | {"n_pairs": (e.get("dpo") or {}).get("n_pairs")})
    times = [ev["t"] for ev in events if "t" in ev]
    settings = asdict(EvolveSettings.from_dict(doc.get("settings", {}), str(d / "run.json")))
    llm = settings["llm"]
    if isinstance(llm.get("extra_body"), dict) and "grammar" in llm["extra_body"]:
        llm["extra_body"] = {**llm["extra_body"], "grammar": "<GBNF>"}
    return RunSummary.from_dict({
        "schema": RunSummary.SCHEMA, "version": RunSummary.VERSION,
        "run_dir": str(d), "created": doc.get("created"), "settings": settings,
        "tasks": tasks, "generations": generations, "best": best,
        "candidates": len(prompts), "evaluated": len(fits), "valid": len(valid),
        "invalid_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "llm_usage": {"calls": len(replies),
                      "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in replies),
                      "completion_tokens": sum(r.get("completion_tokens") or 0 for r in replies),
                      "seconds": round(sum(r.get("seconds") or 0 for r in replies), 2)},
        "wall_seconds": round(max(times) - min(times), 1) if times else 0.0,
        "finished": any(ev.get("type") == "run_end" for ev in events),
        "session_seconds": session_seconds,
    }, source=f"{d}: the run's summary")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _well_formed(ev: dict[str, Any]) -> bool:
    """Whether an event has the fields the summary reads, of the right types (a damaged log's other lines
    are left out, as torn ones are)."""
    kind = ev.get("type")
    if "t" in ev and not _is_number(ev["t"]):
        return False
    if kind in ("program", "repair", "prompt", "fitness", "reply") and not isinstance(ev.get("cid"), str):
        return False
    if kind == "fitness" and ev.get("ok") and not _is_number(ev.get("fitness")):
        return False
    if kind == "generation" and not isinstance(ev.get("generation"), int):
        return False
    return True


def lineage(cid: str, progs: dict[str, dict[str, Any]], prompts: dict[str, dict[str, Any]],
            fits: dict[str, dict[str, Any]]) -> list[LineageStep]:
    """The chain of edits that made ``cid``: itself, the parent it is an edit of, ... down to a program the LLM
    wrote whole or a built-in seed (each with template, fitness and the LLM's edit)."""
    out: list[LineageStep] = []
    while cid and cid in progs and len(out) < 100:
        p, pr = progs[cid], prompts.get(cid, {})
        out.append(LineageStep(id=cid, template=pr.get("template"), seed=pr.get("seed") or None,
                               fitness=fits.get(cid, {}).get("fitness"), edit=p.get("edit"),
                               reasoning=p.get("reasoning")))
        cid = p.get("edit_base") if p.get("edit") else None
    return out


def _without_module_docstring(code: str) -> str:
    """``code`` without its module docstring (an edit child inherits its ancestor's, which describes the
    ancestor: e.g. a seed's "hand-written" label)."""
    tree = bounded_tree(code)
    if tree is None:
        return code
    first = tree.body[0] if tree.body else None
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return code
    lines = code.splitlines()
    return "\n".join(lines[:first.lineno - 1] + lines[first.end_lineno or first.lineno:]).lstrip("\n")


def _fitness(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def best_program_text(summary: RunSummary) -> str:
    """The best program with its provenance as a comment header (a file ``plan --proxy`` can load)."""
    best = summary.best
    if best is None:
        raise ValueError("the run has no valid program")
    s, llm = summary.settings, summary.settings.llm
    lines = [
        f"# TAP proxy discovered by `tap-edge evolve` (run {Path(summary.run_dir).name}, candidate {best.id}).",
        f"# LLM: {llm.model} at {llm.base_url}, temperature {llm.temperature}, "
        f"grammar {s.grammar}, repair {'on' if s.repair else 'off'}.",
        f"# Search: population {s.population}, generations {s.generations}, tasks "
        f"{', '.join(s.tasks)}, alpha {s.alpha}, seeds {'on' if s.seed_builtins else 'off'}.",
        f"# Fitness {best.fitness:.4f} (template {best.template}"
        f"{', seed ' + best.seed if best.seed else ''}); per generation best: "
        + ", ".join(_fitness(g.best_fitness) for g in summary.generations) + ".",
        "# Reasoning: " + one_line(best.reasoning or "", 600),  # LLM text: one printable line in a comment
        *([f"# Repair removed {len(best.repairs)} failing statement(s) of the LLM's program."]
          if best.repairs else []),
    ]
    chain = best.lineage
    for step, parent in zip(chain, chain[1:], strict=False):
        edit = one_line(" ; ".join(ln.strip() for ln in (step.edit or "").splitlines() if ln.strip()), 300)
        lines.append(f"# Lineage: {step.id} ({step.template}) = LLM edit of {parent.id}: {edit[:300]}")
    if len(chain) > 1:
        root = chain[-1]
        lines.append(f"# Lineage: {root.id} = " + (f"built-in seed '{root.seed}'" if root.seed else
                                                   f"written whole by the LLM ({root.template})")
                     + (f", fitness {root.fitness:.4f}" if root.fitness is not None else "")
                     + "; its module docstring (about that program) is dropped here.")
    code = best.code or ""
    if len(chain) > 1:
        code = _without_module_docstring(code)
    wrapped = [w for ln in lines for w in textwrap.wrap(ln, 116, subsequent_indent="#   ", break_long_words=False,
                                                        break_on_hyphens=False)]
    return "\n".join([*wrapped, ""]) + code.rstrip() + "\n"


def summary_markdown(summary: RunSummary) -> str:
    """A run summary as Markdown (provenance of a shipped proxy: LLM, settings, per-generation figures,
    template probabilities, the best program with its reasoning and repairs)."""
    s, llm, best = summary.settings, summary.settings.llm, summary.best
    out = [f"# TAP search run `{Path(summary.run_dir).name}`", "",
           f"- created: {summary.created}; finished: {summary.finished}; wall time of the logged "
           f"steps: {summary.wall_seconds} s",
           f"- LLM: `{llm.model}` at `{llm.base_url}`, temperature {llm.temperature}, "
           f"max_tokens {llm.max_tokens}, grammar `{s.grammar}`, repair {s.repair}",
           f"- search: population {s.population}, generations {s.generations} (generation 0 "
           f"included), seeds {'on' if s.seed_builtins else 'off'}, tournament {s.tournament}, "
           f"seed {s.seed}, alpha {s.alpha}, DPO {s.dpo.model_dump()}",
           f"- tasks: {json.dumps([t.model_dump() for t in summary.tasks] if summary.tasks is not None else None)}",
           f"- candidates {summary.candidates}, valid {summary.valid}; LLM usage "
           f"{json.dumps(summary.llm_usage.model_dump())}", "",
           "| gen | children | invalid | best child | median child | best overall | templates used | "
           "p(init / mutation / crossover) after | pairs |", "|---|---|---|---|---|---|---|---|---|"]
    for g in summary.generations:
        p = g.probs_after
        out.append(f"| {g.generation} | {g.children} | {100 * g.invalid_rate:.0f}% | "
                   f"{_fitness(g.best_child_fitness)} | {_fitness(g.median_child_fitness)} | "
                   f"{_fitness(g.best_fitness)} | {json.dumps(g.templates_used)} | "
                   + " / ".join(f"{p.get(k, 0):.3f}" for k in ("init", "mutation", "crossover"))
                   + f" | {g.n_pairs} |")
    if summary.invalid_reasons:
        out += ["", "Invalid candidates:", ""] + [f"- {n} x {r}" for r, n in summary.invalid_reasons.items()]
    if best:
        out += ["", f"## Best program: {best.id} (fitness {best.fitness:.4f}, template "
                    f"{best.template}{', seed ' + best.seed if best.seed else ''}, parents "
                    f"{best.parents})", "",
                f"Reasoning: {best.reasoning or '-'}", ""]
        for t in best.tasks or []:
            out.append(f"- {t.task}: quality (agreement with float) {t.quality:.4f}, top-1 "
                       f"{t.top1 if t.top1 is None else round(t.top1, 4)}, Spearman "
                       f"{t.spearman:+.3f}, average bits {t.avg_bits or 0:.2f}, widths {t.bits}")
        if best.repairs:
            out += ["", "Statements the repair step deleted from the LLM's program:", ""]
            out += [f"- `{r.removed[:100]}` ({(r.error or '')[:100]})" for r in best.repairs]
        chain = best.lineage
        code = best.code or ""
        if len(chain) > 1:
            out += ["", "Lineage (each step an LLM edit of the next):", ""]
            for step in chain:
                what = (f"`{' ; '.join(ln.strip() for ln in step.edit.splitlines() if ln.strip())}`"
                        if step.edit else f"built-in seed '{step.seed}'" if step.seed
                        else f"written whole by the LLM ({step.template})")
                out.append(f"- {step.id} ({step.template}, fitness {_fitness(step.fitness)}): {what}")
            code = _without_module_docstring(code)
            out += ["", "The program (its ancestor's module docstring dropped):"]
        out += ["", "```python", code.rstrip(), "```", ""]
    return "\n".join(out)
