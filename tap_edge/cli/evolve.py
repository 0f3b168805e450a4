"""``tap-edge evolve``: the TAP search (LLM-written proxies, DPO template controller), resume and report.

Everything the terminal view prints from a run (reasons, reasoning, names, paths) is text that a program or an
LLM may control: it is printed as one escaped line (:func:`_text`), never as rich markup."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tap_edge.cli.app import JsonOpt, QuietOpt, app
from tap_edge.core import console
from tap_edge.core.errors import UserError

if TYPE_CHECKING:
    from tap_edge.documents import RunSummary


@app.command("evolve")
def evolve_cmd(
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="New run directory (default runs/evolve-TIME).")
                       ] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in RUN_DIR after a crash or "
                                                                 "kill; nothing evaluated is paid again.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Summarise the run in RUN_DIR and exit.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="With --report: also write the summary "
                                                                     "(provenance, program) as Markdown.")] = None,
    llm_base_url: Annotated[str, typer.Option(help="OpenAI-compatible endpoint (key from OPENAI_API_KEY).")
                            ] = "http://127.0.0.1:8080/v1",
    llm_model: Annotated[str, typer.Option(help="Model name sent to the endpoint.")] = "local",
    local_llm: Annotated[bool, typer.Option("--local-llm", help="Start the offline llama.cpp server with "
                                                                "SmolLM2-135M (implies --grammar).")] = False,
    temperature: Annotated[float | None, typer.Option(
        help="Sampling temperature. Default 0.2 (free-form code from a small model needs it low); 0.7 with "
             "--grammar reweight, where the grammar keeps replies valid and variety helps the search.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Reply length limit.")] = 600,
    grammar: Annotated[str | None, typer.Option(
        help="llama.cpp GBNF grammar sent with each request: off; full (forces the reply format and the "
             "function header); score (forces a skeleton, the LLM writes the score lines); edit (score for init, "
             "mutation/crossover insert 1-8 LLM lines into the parent); reweight (score for init, "
             "mutation/crossover write a per-layer weight expression and a width power that reshape the "
             "parent's costs). Default: reweight with --local-llm, else off.")] = None,
    repair: Annotated[bool, typer.Option("--repair/--no-repair", help="Delete failing statements of a program "
                                                                      "before giving up on it.")] = True,
    fit_constants: Annotated[bool, typer.Option("--fit-constants/--no-fit-constants", help="Tune a program's "
                             "float literals for rank agreement with the tasks' per-layer damage before its "
                             "fitness.")] = True,
    population: Annotated[int, typer.Option(help="Candidates per generation.")] = 10,
    generations: Annotated[int, typer.Option(help="Generations, the initial one included.")] = 5,
    task: Annotated[list[str] | None, typer.Option("--task", help="Search task NAME[@BITS] (repeat): "
                                                                  "lite1-photos, lite2-photos, digits-cnn, "
                                                                  "digits-resnet8, synthetic.")] = None,
    alpha: Annotated[float, typer.Option(help="Weight of the Spearman term in the fitness.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed of template and parent sampling.")] = 0,
    seed_builtins: Annotated[bool, typer.Option("--seed-builtins/--no-seed-builtins",
                                                help="Put the built-in proxy programs in generation 0.")] = True,
    workers: Annotated[int, typer.Option(help="Fitness evaluations in parallel.")] = 2,
    executor: Annotated[str | None, typer.Option(
        help="Where fitness evaluations run: process (local pool, default), thread, or ray (a Ray cluster; "
             "needs the ray extra). With --resume: default the run's own.")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="With --executor ray: the cluster's HOST:PORT or auto. Default: auto if RAY_ADDRESS is set, else a "
             "local Ray instance with --workers CPUs.")] = None,
    templates: Annotated[Path | None, typer.Option(help="Folder with your own evolve_*.txt templates.")] = None,
    cpu_seconds: Annotated[float, typer.Option(help="CPU limit of one program run.")] = 10.0,
    as_json: JsonOpt = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report of the run here.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Search for a sensitivity proxy with an LLM (TAP): evolve programs, score them on search tasks."""
    from tap_edge.search import new_settings, resume_run, start_run, summarize

    console.set_quiet(quiet or as_json)
    given = [name for name, value in (("--run-dir", run_dir), ("--resume", resume), ("--report", report))
             if value is not None]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} both given", "a session starts a run (--run-dir), continues one "
                                                             "(--resume) or summarises one (--report)")
    if markdown is not None and report is None:
        raise UserError("--markdown is only written with --report", "add --report RUN_DIR")
    if report is not None:
        summary = summarize(report)
        if markdown is not None:
            from tap_edge.search.summary import summary_markdown

            _write_text(markdown, summary_markdown(summary), "--markdown")
    elif resume is not None:
        summary = resume_run(resume, workers=workers, executor=executor, ray_address=ray_address,
                             local_llm=local_llm, show_progress=not quiet)
    else:
        settings = new_settings(
            grammar=grammar, temperature=temperature, local_llm=local_llm, llm_base_url=llm_base_url,
            llm_model=llm_model, max_tokens=max_tokens, cpu_seconds=cpu_seconds, templates_dir=templates, tasks=task,
            population=population, generations=generations, alpha=alpha, seed=seed, seed_builtins=seed_builtins,
            workers=workers, executor=executor or "process", ray_address=ray_address, repair=repair,
            fit_constants=fit_constants)
        summary = start_run(settings, run_dir, local_llm=local_llm, show_progress=not quiet)
    if as_json:
        console.print_json(summary.to_dict())
    else:
        print_report(summary)
    from tap_edge.report import write_html_if_requested

    write_html_if_requested(summary, html)


def _write_text(path: Path, text: str, option: str) -> None:
    try:
        path.write_text(text, encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write ({e.strerror or e.__class__.__name__})",
                        "pick a writable path") from None


def _text(value: object, limit: int = 300) -> str:
    """A value from a run as one escaped line for rich (program- or LLM-controlled text is never markup)."""
    from tap_edge.plan.proxies.sandbox import one_line

    return escape(one_line(value, limit))


def print_report(summary: RunSummary) -> None:
    """The terminal view of a run summary."""
    s, llm, out = summary.settings, summary.settings.llm, console.out
    out.print(f"[bold]TAP search[/] {_text(summary.run_dir)}: {summary.candidates} candidates, {summary.valid} "
              f"valid; LLM {_text(llm.model)} at {_text(llm.base_url)} (T={llm.temperature}, grammar "
              f"{_text(s.grammar)}, repair {'on' if s.repair else 'off'}); tasks {_text(', '.join(s.tasks))}; "
              f"alpha {s.alpha}; wall {summary.wall_seconds} s"
              + ("" if summary.finished else " [yellow](unfinished: --resume it)[/]"))
    t = Table(title="per generation")
    for col in ("gen", "children", "invalid", "best child", "median child", "best overall", "templates used",
                "p(init/mut/cross) after"):
        t.add_column(col, justify="left" if col == "templates used" else "right")
    for g in summary.generations:
        t.add_row(str(g.generation), str(g.children), f"{100 * g.invalid_rate:.0f}%", _f(g.best_child_fitness),
                  _f(g.median_child_fitness), _f(g.best_fitness),
                  _text(", ".join(f"{k} {v}" for k, v in g.templates_used.items())),
                  "/".join(f"{g.probs_after.get(k, 0):.2f}" for k in ("init", "mutation", "crossover")))
    out.print(t)
    if summary.invalid_reasons:
        out.print("invalid candidates:")
        for reason, n in list(summary.invalid_reasons.items())[:8]:
            out.print(f"  {n} x {_text(reason)}")
    u = summary.llm_usage
    out.print(f"LLM: {u.calls} calls, {u.prompt_tokens} prompt + {u.completion_tokens} completion tokens, "
              f"{u.seconds} s")
    best = summary.best
    if best is None:
        out.print("[red]no valid program[/]")
        return
    out.print(f"[bold]best[/] {_text(best.id)} fitness {best.fitness:.4f} ({_text(best.template)}"
              f"{', seed ' + _text(best.seed) if best.seed else ''})")
    for tk in best.tasks or []:
        out.print(f"  {_text(tk.task)}: quality {tk.quality:.4f}, spearman {tk.spearman:+.3f}, "
                  f"avg bits {tk.avg_bits or 0:.2f}")
    out.print(f"reasoning: {_text(best.reasoning or '-', 1000)}")
    code = (best.code or "").encode("utf-8", "replace").decode("utf-8")  # no unpaired surrogate reaches stdout
    out.print(code, markup=False, highlight=False)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
