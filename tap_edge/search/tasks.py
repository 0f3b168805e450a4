"""What every search task shares (design.md, "TAP fitness of a proxy"): a task's spec and score, the rank
statistics of the fitness, the flash budget of a task and the documentation a program's ``layer`` dict follows.

The task implementations (:mod:`tap_edge.search.fitness` for the digits and synthetic tasks,
:mod:`tap_edge.search.photo_tasks` for the photo tasks) and constant fitting (:mod:`tap_edge.search.constants`)
stand on this module; :mod:`tap_edge.search.fitness` builds tasks by name and scores programs on them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tap_edge.core.errors import UserError
from tap_edge.core.paths import cache_dir

SEARCH_BITS = [2, 3, 4, 5, 6, 7, 8]  # tap_edge.quantize.ptq.CANDIDATE_BITS
REF_BITS = 3
#: The search tasks by name (``--task NAME[@BITS]``); :data:`tap_edge.search.fitness.TASK_BUILDERS` builds each.
TASK_NAMES = ("synthetic", "digits-cnn", "digits-resnet8", "lite1-photos", "lite2-photos")


@dataclass(frozen=True)
class TaskSpec:
    """A picklable search-task description; ``budget_bits`` sizes the flash budget like uniform weights."""

    name: str
    budget_bits: float = 3.0
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> TaskSpec:
        name, _, b = text.partition("@")
        if name not in TASK_NAMES:
            raise UserError(f"unknown search task '{name}'", f"known: {', '.join(TASK_NAMES)}")
        try:
            budget = float(b) if b else 3.0
        except ValueError:
            raise UserError(f"search task '{text}': cannot read the budget '{b}'", "write e.g. digits-cnn@3") from None
        if not 2 <= budget <= 8:
            raise UserError(f"search task '{text}': budget must be 2..8 bits")
        return cls(name, budget)

    def key(self) -> str:
        return f"{self.name}@{self.budget_bits:g}"


@dataclass
class TaskScore:
    """One task's part of the fitness."""

    task: str
    quality: float
    spearman: float
    fitness: float
    top1: float | None = None
    avg_bits: float | None = None
    bits: dict[str, int] | None = None
    seconds: float = 0.0
    agreement: float | None = None  # top-1 agreement with the float model (photo tasks)
    kl: float | None = None  # mean KL(p_float || p_quantized) (photo tasks)


class SearchTask(Protocol):
    spec: TaskSpec
    bits: list[int]
    api: str  # the documentation of program_layers()' dicts for the prompt (tap_edge.plan.stats.LAYERSTATS_API)

    def program_layers(self) -> list[dict]: ...

    def score(self, costs: list[list[float]], alpha: float) -> TaskScore: ...


def spearman(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""
    from scipy.stats import rankdata

    a, b = rankdata(np.asarray(x, dtype=float)), rankdata(np.asarray(y, dtype=float))
    if a.std() == 0 or b.std() == 0:
        return 0.0
    r = float(np.corrcoef(a, b)[0, 1])
    return r if math.isfinite(r) else 0.0


def layer_scores(costs: list[list[float]], bits: list[int], ref_bits: int = REF_BITS) -> np.ndarray:
    """A program's per-layer sensitivity score: cost at ``ref_bits`` minus cost at the widest width."""
    c = np.asarray(costs, dtype=float)
    j = bits.index(ref_bits) if ref_bits in bits else 0
    return c[:, j] - c[:, int(np.argmax(bits))]


def cache_root() -> Path:
    return cache_dir("evolve")


def flash_budget(graph: Any, bits: list[int], budget_bits: float) -> tuple[Any, Any, int]:
    """(search runtime, Budgets, flash bytes) of a task: a runtime with ``bits`` weights and 8-bit activations on
    every layer and no code overhead, and the flash of uniform ``budget_bits``-bit weights (a fractional width
    interpolates between its neighbours)."""
    from tap_edge.devices import Runtime
    from tap_edge.plan.budgets import Budgets, flash_of_uniform

    runtime = Runtime(name="search", weights={"default": list(bits)}, activations={"default": [8]}, code_bytes=0)
    lo, hi = math.floor(budget_bits), math.ceil(budget_bits)
    f_lo = flash_of_uniform(graph, lo, runtime)
    f_hi = flash_of_uniform(graph, hi, runtime)
    flash = int(f_lo + (f_hi - f_lo) * (budget_bits - lo))
    return runtime, Budgets(flash_bytes=flash, sram_bytes=None), flash


def layerstats_api() -> str:
    """The documentation of a program's ``layer`` dict for the prompt (imported here: ``tap_edge.plan.stats``
    loads torch, which the synthetic task and ``evolve --report`` do not need)."""
    from tap_edge.plan.stats import LAYERSTATS_API

    return LAYERSTATS_API.strip()



def kl_divergence(p_logits: Any, q_logits: Any) -> float:
    """Mean over samples of KL(softmax(p_logits) || softmax(q_logits))."""
    import torch

    lp = torch.log_softmax(p_logits, 1)
    lq = torch.log_softmax(q_logits, 1)
    return float((lp.exp() * (lp - lq)).sum(1).mean())


def load_or_build(path: Path, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A task's cached contents at ``path``, else ``build()``'s, saved there atomically (a damaged or unreadable
    cache entry is built again)."""
    import torch

    blob = None
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a damaged cache entry (torch raises many kinds) is rebuilt
            blob = None
    if blob is None:
        blob = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(blob, tmp)
        tmp.replace(path)
    return blob
