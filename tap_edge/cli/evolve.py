"""``tap-edge evolve``: the TAP search (LLM-written proxies, DPO template controller), resume and report."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tap_edge.cli.app import app
from tap_edge.core import console
from tap_edge.core.errors import UserError


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
    population: Annotated[int, typer.Option(help="Candidates per generation.")] = 10,
    generations: Annotated[int, typer.Option(help="Generations, the initial one included.")] = 5,
    task: Annotated[list[str] | None, typer.Option("--task", help="Search task NAME[@BITS] (repeat): "
                                                                  "digits-cnn, digits-resnet8, synthetic.")] = None,
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report of the run here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Search for a sensitivity proxy with an LLM (TAP): evolve programs, score them on search tasks."""
    from tap_edge.search.llm import LLMClient, LLMConfig, LocalLLMServer
    from tap_edge.search.loop import EXECUTORS, Evolution, EvolveSettings, summarize
    from tap_edge.search.prompts import TEMPLATES

    console.set_quiet(quiet or as_json)
    if report is not None:
        summary = summarize(report)
        if markdown is not None:
            from tap_edge.search.loop import summary_markdown

            markdown.write_text(summary_markdown(summary))
        if as_json:
            console.print_json(summary)
        else:
            print_report(summary)
        _html(summary, html)
        return
    from tap_edge.search.prompts import GRAMMARS

    if grammar is not None and grammar not in GRAMMARS:
        raise UserError(f"unknown --grammar '{grammar}'", f"use one of {', '.join(GRAMMARS)}")
    if executor is not None and executor not in EXECUTORS:
        raise UserError(f"unknown --executor '{executor}'", f"use one of {', '.join(EXECUTORS)}")
    if ray_address is not None and (executor or ("ray" if resume is not None else "process")) != "ray":
        raise UserError("--ray-address is only used with --executor ray", "add --executor ray")
    if executor == "ray":  # before anything starts or is created: Ray installed, the cluster reachable
        _check_ray(ray_address)
    server = None
    try:
        if local_llm:
            log = None
            if resume is None:
                run_dir = run_dir or Path("runs") / time.strftime("evolve-%Y%m%d-%H%M%S")
                run_dir.mkdir(parents=True, exist_ok=True)
                log = str(run_dir / "llm_server.log")
            else:
                log = str(resume / "llm_server.log")
            console.info("starting the local LLM server (llama.cpp, SmolLM2-135M-Instruct)...")
            server = LocalLLMServer(log_path=log).start()
            server.wait_ready()
            llm_base_url, llm_model = server.base_url, "smollm2"
            max_tokens = min(max_tokens, 450)  # a crossover prompt (two parents) + the reply fit the 4096-token context
            if grammar is None:
                grammar = "reweight"
        if resume is not None:
            execution = {"executor": executor, "ray_address": ray_address}
            evo = Evolution.resume(resume, overrides={"workers": workers,
                                                      **{k: v for k, v in execution.items() if v is not None}})
            if executor is None and evo.settings.executor == "ray":
                _check_ray(evo.settings.ray_address)
            if server is not None:
                evo.settings.llm["base_url"] = server.base_url  # a new port; the model is the same
            evo.client = LLMClient(LLMConfig(**evo.settings.llm))
        else:
            if temperature is None:
                temperature = 0.7 if grammar == "reweight" else 0.2
            llm = LLMConfig(base_url=llm_base_url, model=llm_model, temperature=temperature, max_tokens=max_tokens)
            settings = EvolveSettings(
                population=population, generations=generations, tasks=list(task or EvolveSettings().tasks),
                alpha=alpha, seed=seed, seed_builtins=seed_builtins, workers=workers,
                executor=executor or "process", ray_address=ray_address,
                grammar=grammar or "off", repair=repair, templates_dir=str(templates) if templates else None,
                llm=asdict(llm),
                limits={"cpu_seconds": cpu_seconds, "memory_mb": 1024, "wall_seconds": 2 * cpu_seconds})
            target = run_dir or Path("runs") / time.strftime("evolve-%Y%m%d-%H%M%S")
            evo = Evolution.create(target, settings, LLMClient(llm))
        console.info(f"run directory: {evo.dir}  (templates: {', '.join(TEMPLATES)}; resume with "
                     f"--resume {evo.dir})")
        t0 = time.perf_counter()
        summary = evo.run(show_progress=not quiet)
        summary["this_session_seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        if server is not None:
            server.stop()
    if as_json:
        console.print_json(summary)
    else:
        print_report(summary)
    _html(summary, html)


def _check_ray(address: str | None) -> None:
    """Ray installed and its cluster reachable and willing (joined once, then left), else a one-line error
    before a run directory exists."""
    from tap_edge.search.loop import import_ray, join_ray_cluster, resolve_ray_address

    ray = import_ray()
    target = resolve_ray_address(address)
    if target is not None and not ray.is_initialized():
        join_ray_cluster(target)
        ray.shutdown()


def _html(summary: dict, html: Path | None) -> None:
    from tap_edge.report import write_html_if_requested

    write_html_if_requested(summary, html)


def print_report(summary: dict) -> None:
    """The terminal view of a run summary."""
    s = summary["settings"]
    llm = s.get("llm", {})
    out = console.out
    out.print(f"[bold]TAP search[/] {summary['run_dir']}: {summary['candidates']} candidates, "
              f"{summary['valid']} valid; LLM {llm.get('model')} at {llm.get('base_url')} "
              f"(T={llm.get('temperature')}, grammar {s.get('grammar')}, repair {'on' if s.get('repair') else 'off'}); "
              "tasks "
              f"{', '.join(s.get('tasks', []))}; alpha {s.get('alpha')}; wall {summary['wall_seconds']} s"
              + ("" if summary.get("finished") else " [yellow](unfinished: --resume it)[/]"))
    t = Table(title="per generation")
    for col in ("gen", "children", "invalid", "best child", "median child", "best overall", "templates used",
                "p(init/mut/cross) after"):
        t.add_column(col, justify="right" if col not in ("templates used",) else "left")
    for g in summary["generations"]:
        probs = g.get("probs_after") or {}
        t.add_row(str(g["generation"]), str(g["children"]), f"{100 * (g['invalid_rate'] or 0):.0f}%",
                  _f(g.get("best_child_fitness")), _f(g.get("median_child_fitness")), _f(g.get("best_fitness")),
                  ", ".join(f"{k} {v}" for k, v in (g.get("templates_used") or {}).items()),
                  "/".join(f"{probs.get(k, 0):.2f}" for k in ("init", "mutation", "crossover")))
    out.print(t)
    if summary.get("invalid_reasons"):
        out.print("invalid candidates:")
        for reason, n in list(summary["invalid_reasons"].items())[:8]:
            out.print(f"  {n} x {reason}")
    u = summary.get("llm_usage", {})
    out.print(f"LLM: {u.get('calls')} calls, {u.get('prompt_tokens')} prompt + {u.get('completion_tokens')} "
              f"completion tokens, {u.get('seconds')} s")
    best = summary.get("best")
    if not best:
        out.print("[red]no valid program[/]")
        return
    out.print(f"[bold]best[/] {best['id']} fitness {best['fitness']:.4f} ({best.get('template')}"
              f"{', seed ' + best['seed'] if best.get('seed') else ''})")
    for tk in best.get("tasks") or []:
        out.print(f"  {tk['task']}: quality {tk['quality']:.4f}, spearman {tk['spearman']:+.3f}, "
                  f"avg bits {tk.get('avg_bits') or 0:.2f}")
    out.print(f"reasoning: {best.get('reasoning') or '-'}")
    out.print(best.get("code") or "", markup=False, highlight=False)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"

