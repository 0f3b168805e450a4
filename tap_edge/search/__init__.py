"""TAP search: LLM-written sensitivity-proxy programs evolved with init / mutation / crossover templates that
a DPO controller reweights; programs run in :mod:`tap_edge.plan.proxies.sandbox`; fitness on small search tasks.

Entry points: :class:`~tap_edge.search.loop.Evolution` (``create`` / ``resume`` / ``run``),
:func:`~tap_edge.search.loop.summarize`, :class:`~tap_edge.search.controller.DPOController`,
:func:`~tap_edge.search.prompts.parse_reply`, :func:`~tap_edge.search.fitness.evaluate_program`; the CLI is
``tap-edge evolve`` (``--resume RUN_DIR``, ``--report RUN_DIR``).
"""

from tap_edge.search.controller import DPOController, preference_pairs
from tap_edge.search.loop import Evolution, EvolveSettings, summarize

__all__ = ["DPOController", "Evolution", "EvolveSettings", "preference_pairs", "summarize"]
