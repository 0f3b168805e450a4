"""TAP search: LLM-written sensitivity-proxy programs evolved with init / mutation / crossover templates that
a DPO controller reweights; programs run in :mod:`tap_edge.plan.proxies.sandbox`; fitness on small search tasks.

Modules: :mod:`~tap_edge.search.session` (``start_run`` / ``resume_run``: what ``tap-edge evolve`` calls),
:mod:`~tap_edge.search.loop` (:class:`Evolution`: ``create`` / ``resume`` / ``run``),
:mod:`~tap_edge.search.runlog` (the run directory's files, :class:`EvolveSettings`),
:mod:`~tap_edge.search.executors` (process pool, threads, Ray), :mod:`~tap_edge.search.summary` (the
:class:`~tap_edge.documents.RunSummary` of a run, its best program and Markdown),
:mod:`~tap_edge.search.fitness` (search tasks and :func:`evaluate_program`), :mod:`~tap_edge.search.prompts`
(templates, reply parsing, grammars), :mod:`~tap_edge.search.controller` (:class:`DPOController`),
:mod:`~tap_edge.search.repair` and :mod:`~tap_edge.search.llm`. The names below are imported on first use.
"""

from tap_edge.core.lazy import lazy_exports

_EXPORTS = {
    "start_run": "tap_edge.search.session", "resume_run": "tap_edge.search.session",
    "new_settings": "tap_edge.search.session",
    "Evolution": "tap_edge.search.loop", "EvolveSettings": "tap_edge.search.runlog",
    "summarize": "tap_edge.search.summary", "summary_markdown": "tap_edge.search.summary",
    "best_program_text": "tap_edge.search.summary",
    "DPOController": "tap_edge.search.controller", "preference_pairs": "tap_edge.search.controller",
    "evaluate_program": "tap_edge.search.fitness", "parse_reply": "tap_edge.search.prompts",
    "EXECUTORS": "tap_edge.search.executors", "GRAMMARS": "tap_edge.search.prompts",
    "TASK_BUILDERS": "tap_edge.search.fitness",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
