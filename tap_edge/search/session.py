"""One session of a TAP search, as ``tap-edge evolve`` starts it: the settings of a new run from the command's
choices, the checks that must pass before anything is created (settings, Ray), the offline LLM server's life
cycle (``--local-llm``), then :class:`~tap_edge.search.loop.Evolution` ``create`` / ``resume`` and ``run``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.markup import escape

from tap_edge.core import console
from tap_edge.documents import RunSummary
from tap_edge.search.executors import check_ray
from tap_edge.search.llm import LLMClient, LLMConfig, LocalLLMServer
from tap_edge.search.loop import Evolution, check_new_run_dir, check_settings
from tap_edge.search.prompts import TEMPLATES
from tap_edge.search.runlog import EvolveSettings

#: Reply length limit with the local LLM: a crossover prompt (two parents) and its reply fit its 4096-token context.
LOCAL_MAX_TOKENS = 450


def default_run_dir() -> Path:
    """``runs/evolve-YYYYmmdd-HHMMSS`` (local time)."""
    return Path("runs") / time.strftime("evolve-%Y%m%d-%H%M%S")


def new_settings(*, grammar: str | None = None, temperature: float | None = None, local_llm: bool = False,
                 llm_base_url: str = LLMConfig.base_url, llm_model: str = LLMConfig.model,
                 max_tokens: int = LLMConfig.max_tokens, cpu_seconds: float = 10.0,
                 templates_dir: str | Path | None = None, tasks: list[str] | None = None,
                 **search: Any) -> EvolveSettings:
    """The settings of a new run. The defaults that follow other choices: ``grammar`` reweight with
    ``local_llm``, else off; ``temperature`` 0.7 with the reweight grammar (the grammar keeps replies valid and
    variety helps the search), else 0.2 (free-form code from a small model needs it low). A program run may
    use ``cpu_seconds`` of CPU and twice that of wall time. ``search``: other :class:`EvolveSettings` fields
    (population, generations, alpha, seed, seed_builtins, workers, executor, ray_address, repair, ...)."""
    grammar = grammar or ("reweight" if local_llm else "off")
    if temperature is None:
        temperature = 0.7 if grammar == "reweight" else 0.2
    llm = LLMConfig(base_url=llm_base_url, model=llm_model, temperature=temperature, max_tokens=max_tokens)
    return EvolveSettings(**search, tasks=list(tasks or EvolveSettings().tasks), grammar=grammar,
                          templates_dir=str(templates_dir) if templates_dir else None, llm=asdict(llm),
                          limits={"cpu_seconds": cpu_seconds, "memory_mb": 1024, "wall_seconds": 2 * cpu_seconds})


def start_run(settings: EvolveSettings, run_dir: str | Path | None = None, *, local_llm: bool = False,
              show_progress: bool = True) -> RunSummary:
    """Create a run in ``run_dir`` (default :func:`default_run_dir`) and do it. The directory, the settings
    (and with ``--executor ray`` the cluster) are checked before anything is created or started. With
    ``local_llm`` the offline llama.cpp server is started first (its log in ``RUN_DIR/llm_server.log``), the
    run asks it (replies of at most :data:`LOCAL_MAX_TOKENS` tokens), and it is stopped when the session ends."""
    target = Path(run_dir) if run_dir is not None else default_run_dir()
    check_new_run_dir(target)
    check_settings(settings)
    if settings.executor == "ray":
        check_ray(settings.ray_address)
    if local_llm:
        target.mkdir(parents=True, exist_ok=True)
    with _local_server(target, local_llm) as server:
        if server is not None:  # the caller's settings stay as they were
            settings = replace(settings, llm={**settings.llm, "base_url": server.base_url, "model": server.alias,
                                              "max_tokens": min(settings.llm["max_tokens"], LOCAL_MAX_TOKENS)},
                               local_llm=True)
        evo = Evolution.create(target, settings, LLMClient(LLMConfig(**settings.llm)))
        return _run(evo, show_progress)


def resume_run(run_dir: str | Path, *, workers: int | None = None, executor: str | None = None,
               ray_address: str | None = None, local_llm: bool = False, show_progress: bool = True) -> RunSummary:
    """Continue the run in ``run_dir`` after a crash or kill: nothing evaluated is paid again. ``workers``,
    ``executor`` and ``ray_address`` (None: the run's own) do not change results. A run started with the local
    LLM (or ``local_llm``) gets a new local server (the same model on a new port): the old one died with its
    session, so its address answers nothing."""
    overrides = {"workers": workers, "executor": executor, "ray_address": ray_address}
    evo = Evolution.resume(run_dir, overrides={k: v for k, v in overrides.items() if v is not None})
    try:
        if evo.settings.executor == "ray":
            check_ray(evo.settings.ray_address)
        with _local_server(evo.dir, local_llm or evo.settings.local_llm) as server:
            if server is not None:
                evo.settings.llm["base_url"] = server.base_url
            evo.client = LLMClient(LLMConfig(**evo.settings.llm))
            return _run(evo, show_progress)
    finally:
        evo.lock.release()  # run() releases it too; this covers a failure before the run starts


def _run(evo: Evolution, show_progress: bool) -> RunSummary:
    where = escape(str(evo.dir))  # a path is text, not markup
    console.info(f"run directory: {where}  (templates: {', '.join(TEMPLATES)}; resume with --resume {where})")
    return evo.run(show_progress=show_progress)


@contextmanager
def _local_server(run_dir: Path, wanted: bool) -> Iterator[LocalLLMServer | None]:
    """The local LLM server for the session when ``wanted`` (stopped on the way out), else None."""
    if not wanted:
        yield None
        return
    console.info("starting the local LLM server (llama.cpp, SmolLM2-135M-Instruct)...")
    with LocalLLMServer(log_path=str(run_dir / "llm_server.log")) as server:
        yield server
