"""The DPO strategy controller: which prompt template (init, mutation, crossover) to use next.

Policy: logits ``theta`` over the templates and a probability floor ``f`` for exploration,
``pi(k) = f + (1 - K f) softmax(theta)_k`` (so every template keeps at least ``f``). After each generation,
preference pairs ``(w, l)`` = (template of the better child, template of the worse child) over every pair of
that generation's children whose templates differ (an invalid child is worse than every valid one; equal
fitness gives no pair). The reference policy ``pi_ref`` is the policy before the update (each generation is
a step from the last one), and a few gradient steps minimise the DPO loss

    L = mean over pairs of -log sigmoid(beta [(log pi(w) - log pi_ref(w)) - (log pi(l) - log pi_ref(l))])

on ``theta`` (analytic gradient, plain gradient descent). The LLM is never fine-tuned; only these three
numbers change. Without preferences nothing changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tap_edge.search.prompts import TEMPLATES


@dataclass
class DPOController:
    """Logits over ``templates`` with a probability floor; :meth:`update` takes preference pairs."""

    templates: tuple[str, ...] = TEMPLATES
    beta: float = 1.0
    lr: float = 1.0
    steps: int = 5
    floor: float = 0.05
    theta: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        k = len(self.templates)
        if not 0 <= self.floor * k < 1:
            raise ValueError(f"floor {self.floor} too large for {k} templates")
        self.theta = np.zeros(k) if self.theta is None else np.asarray(self.theta, dtype=float).copy()

    # ---- policy
    def _softmax(self, theta: np.ndarray) -> np.ndarray:
        e = np.exp(theta - theta.max())
        return e / e.sum()

    def _probs(self, theta: np.ndarray) -> np.ndarray:
        k = len(self.templates)
        return self.floor + (1.0 - k * self.floor) * self._softmax(theta)

    def probs(self) -> dict[str, float]:
        """Current template probabilities (floor included)."""
        return {t: float(p) for t, p in zip(self.templates, self._probs(self.theta), strict=True)}

    def log_probs(self) -> dict[str, float]:
        return {t: math.log(p) for t, p in self.probs().items()}

    def sample(self, rng: np.random.Generator, allowed: list[str] | None = None) -> str:
        """Draw a template; ``allowed`` restricts the choice (renormalised), e.g. no crossover without parents."""
        p = self._probs(self.theta)
        if allowed is not None:
            mask = np.array([t in allowed for t in self.templates], dtype=float)
            if mask.sum() == 0:
                raise ValueError("no allowed template")
            p = p * mask
            p = p / p.sum()
        return self.templates[int(rng.choice(len(p), p=p))]

    # ---- learning
    def _loss_grad(self, theta: np.ndarray, ref_logp: np.ndarray, pairs: list[tuple[int, int]]
                   ) -> tuple[float, np.ndarray]:
        k = len(self.templates)
        s = self._softmax(theta)
        p = self._probs(theta)
        logp = np.log(p)
        # d log p_i / d theta_j = c s_i (delta_ij - s_j) / p_i
        c = 1.0 - k * self.floor
        jac = (c * s[:, None] * (np.eye(k) - s[None, :])) / p[:, None]
        loss, grad = 0.0, np.zeros(k)
        for w, lo in pairs:
            margin = self.beta * ((logp[w] - ref_logp[w]) - (logp[lo] - ref_logp[lo]))
            loss += float(np.logaddexp(0.0, -margin))  # -log sigmoid(margin)
            dmargin = -1.0 / (1.0 + math.exp(margin)) if margin > -700 else -1.0
            grad += dmargin * self.beta * (jac[w] - jac[lo])
        n = max(1, len(pairs))
        return loss / n, grad / n

    def update(self, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        """A few gradient steps on the DPO loss; returns a log record (pairs, loss, probabilities)."""
        before = self.probs()
        idx = [(self.templates.index(w), self.templates.index(lo)) for w, lo in pairs if w != lo]
        rec: dict[str, Any] = {"n_pairs": len(idx), "probs_before": before}
        if not idx:
            rec.update(loss_before=None, loss_after=None, probs_after=before, theta=self.theta.tolist(),
                       log_probs_after={k: round(v, 6) for k, v in self.log_probs().items()})
            return rec
        ref_logp = np.log(self._probs(self.theta))
        loss0, _ = self._loss_grad(self.theta, ref_logp, idx)
        theta = self.theta.copy()
        for _ in range(self.steps):
            _, g = self._loss_grad(theta, ref_logp, idx)
            theta = theta - self.lr * g
        theta -= theta.mean()
        loss1, _ = self._loss_grad(theta, ref_logp, idx)
        self.theta = theta
        counts: dict[str, int] = {}
        for w, lo in pairs:
            if w != lo:
                counts[f"{w}>{lo}"] = counts.get(f"{w}>{lo}", 0) + 1
        rec.update(loss_before=round(loss0, 6), loss_after=round(loss1, 6), probs_after=self.probs(),
                   log_probs_after={k: round(v, 6) for k, v in self.log_probs().items()},
                   theta=[round(float(x), 6) for x in theta], pair_counts=counts)
        return rec

    def to_dict(self) -> dict[str, Any]:
        return {"templates": list(self.templates), "beta": self.beta, "lr": self.lr, "steps": self.steps,
                "floor": self.floor, "theta": self.theta.tolist()}


def preference_pairs(children: list[tuple[str, float | None]]) -> list[tuple[str, str]]:
    """(template of better child, template of worse child) for every pair of children with different templates.

    ``children`` are (template, fitness or None for invalid). Invalid children lose to valid ones; two invalid
    children or equal fitness give no pair.
    """
    pairs: list[tuple[str, str]] = []
    for i in range(len(children)):
        for j in range(i + 1, len(children)):
            (ti, fi), (tj, fj) = children[i], children[j]
            if ti == tj:
                continue
            vi = -math.inf if fi is None else fi
            vj = -math.inf if fj is None else fj
            if vi > vj:
                pairs.append((ti, tj))
            elif vj > vi:
                pairs.append((tj, ti))
    return pairs
