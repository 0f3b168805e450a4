"""Section "TAP search" from :class:`~tap_edge.documents.RunSummary`: fitness, template probabilities and invalid
rate per generation, the best program with its lineage and reasoning, LLM usage and why candidates failed."""

from __future__ import annotations

from tap_edge.documents import GenerationSummary, RunSummary
from tap_edge.report.html import (
    BLUE,
    GREEN,
    GREY,
    ORANGE,
    PURPLE,
    RED,
    esc,
    figure,
    finish,
    fmt_b,
    fmt_num,
    fmt_pct,
    guard,
    how,
    kv_table,
    table,
)

ID, TITLE = "search", "TAP search"
HOW = ("each generation the LLM writes new proxy programs from one of three templates (init, mutation, crossover). "
       "Left: the best fitness found so far, the median of the population and of the generation's children "
       "(should rise). Middle: the probability of each template after the controller's update, i.e. for the next "
       "generation; it moves towards templates whose children won. Right: the share of programs rejected by "
       "vetting or failing to run. Below: the best program, the edits that made it and the reasoning the LLM gave.")
_TEMPLATE_ORDER = ["init", "mutation", "crossover"]


def _templates(gens: list[GenerationSummary]) -> list[str]:
    names = list(_TEMPLATE_ORDER)
    for g in gens:
        names += [t for t in g.probs_after if t not in names]
    return names


def _plot(run: RunSummary) -> str:
    import numpy as np

    gens = run.generations
    x = [g.generation for g in gens]
    fig = figure(12, 4.8)
    a1, a2, a3 = fig.subplots(1, 3, width_ratios=[1.3, 1.2, 0.8])
    for series, name, style, colour in (
            ([g.best_fitness for g in gens], "best so far", "-o", GREEN),
            ([g.median_population_fitness for g in gens], "population median", "--s", GREY),
            ([g.median_child_fitness for g in gens], "children's median", ":^", BLUE)):
        pts = [(xi, v) for xi, v in zip(x, series, strict=True) if v is not None]
        if pts:
            a1.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colour, lw=2, ms=7, label=name)
    a1.set_xlabel("generation")
    a1.set_ylabel("fitness (higher is better)")
    a1.set_title("fitness")
    a1.set_xticks(x)
    if a1.get_legend_handles_labels()[0]:
        a1.legend(loc="best", fontsize=10)
    bottom = np.zeros(len(gens))
    colours = [BLUE, ORANGE, PURPLE, GREY, GREEN]
    for i, t in enumerate(_templates(gens)):
        v = np.array([g.probs_after.get(t, 0.0) for g in gens])
        if v.any():
            a2.bar(x, v, bottom=bottom, color=colours[i % len(colours)], label=t, width=0.7)
            bottom += v
    a2.set_ylim(0, 1.0)
    a2.set_xticks(x)
    a2.set_xlabel("generation")
    a2.set_ylabel("probability of being picked next")
    a2.set_title("template probabilities")
    if a2.get_legend_handles_labels()[0]:
        a2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=10)
    a3.bar(x, [100 * g.invalid_rate for g in gens], color=RED, width=0.6)
    a3.set_xticks(x)
    a3.set_ylim(0, 100)
    a3.set_xlabel("generation")
    a3.set_ylabel("invalid candidates (%)")
    a3.set_title("invalid rate")
    return finish(fig, f"TAP search: {len(gens)} generations, {run.candidates} candidates", "search-progress",
                  "fitness, template probabilities and invalid rate per generation", legend=False)


def _facts(run: RunSummary) -> str:
    st, u = run.settings, run.llm_usage
    tasks = ", ".join(st.tasks)
    if run.tasks:
        tasks = "; ".join(f"{t.task}: {t.layers} layers, widths {min(t.bits)}-{max(t.bits)}"
                          + (f", float top-1 {100 * t.float_top1:.1f}%" if t.float_top1 is not None else "")
                          + (f", flash budget {fmt_b(t.flash_budget_bytes)}" if t.flash_budget_bytes else "")
                          for t in run.tasks)
    pairs = [("run", f"<code>{esc(run.run_dir)}</code>" + (f" ({esc(run.created)})" if run.created else "")),
             ("tasks", esc(tasks)),
             ("search", esc(f"{st.population} candidates x {st.generations} generations, alpha {st.alpha:g}, "
                            f"seed {st.seed}, grammar {st.grammar}, {st.executor} executor with {st.workers} "
                            f"workers" + (", built-in seeds" if st.seed_builtins else ""))),
             ("LLM", esc(f"{st.llm.model} at {st.llm.base_url}, temperature {st.llm.temperature:g}; {u.calls} calls, "
                         f"{u.prompt_tokens:,} prompt + {u.completion_tokens:,} completion tokens, {u.seconds:.0f} s")),
             ("candidates", f"{run.candidates} written, {run.evaluated} evaluated, {run.valid} valid"
                            + ("" if run.finished else " (run not finished)")),
             ("wall time", f"{run.wall_seconds:.0f} s")]
    return kv_table(pairs)


def _generations_table(gens: list[GenerationSummary]) -> str:
    rows = [[str(g.generation), f"{g.valid} of {g.children}", fmt_num(g.best_fitness),
             fmt_num(g.median_population_fitness), fmt_num(g.median_child_fitness),
             fmt_pct(100 * g.invalid_rate, signed=False, digits=0),
             esc(", ".join(f"{k} {v}" for k, v in g.templates_used.items())),
             esc(", ".join(f"{k} {v:.2f}" for k, v in g.probs_after.items()))] for g in gens]
    return table(["generation", "valid children", "best so far", "population median", "children's median",
                  "invalid", "templates used", "template probabilities after"], rows, "narrow")


def _best(run: RunSummary) -> str:
    best = run.best
    if best is None:
        return '<p class="muted">No valid program in this run.</p>'
    out = [f"<h4>Best program <code>{esc(best.id)}</code> (fitness {fmt_num(best.fitness)}"
           f"{', template ' + esc(best.template) if best.template else ''})</h4>"]
    if best.lineage:
        rows = [[f"<code>{esc(s.id)}</code>", esc(s.template or "–") + (f" ({esc(s.seed)})" if s.seed else ""),
                 fmt_num(s.fitness), f'<pre class="code">{esc(s.edit)}</pre>' if s.edit else "written whole"]
                for s in best.lineage]
        out.append("<p class='small'><b>How it was made</b> (itself first, then the program it edits):</p>"
                   + table(["program", "template", "fitness", "edit"], rows, "narrow"))
    if best.tasks:
        rows = [[esc(t.task), fmt_num(t.fitness), fmt_num(t.quality), fmt_num(t.spearman),
                 f"{100 * t.top1:.1f}%" if t.top1 is not None else "–", fmt_num(t.avg_bits, 3)] for t in best.tasks]
        out.append(table(["task", "fitness", "quality (agreement)", "Spearman", "top-1", "mean bits"], rows, "narrow"))
    if best.reasoning:
        out.append(f'<p class="small"><b>Its reasoning:</b></p><pre class="reasoning">{esc(best.reasoning)}</pre>')
    if best.code:
        out.append(f'<pre class="code">{esc(best.code)}</pre>')
    return "".join(out)


def _block(run: RunSummary) -> str:
    out = [_facts(run)]
    out.append(guard(_plot, run) if run.generations else '<p class="muted">No generations recorded.</p>')
    if run.generations:
        out.append(_generations_table(run.generations))
    out.append(_best(run))
    if run.invalid_reasons:
        rows = [[esc(reason), str(n)] for reason, n in run.invalid_reasons.items()]
        out.append("<h4>Why candidates were invalid</h4>" + table(["reason", "candidates"], rows, "narrow"))
    return "".join(out)


def render(runs: list[RunSummary]) -> str:
    return how(HOW) + "".join(guard(_block, r) for r in runs)
