"""Quality of a (fake-)quantized model against its float reference on an evaluation batch.

Metrics (all over the same samples): ``top1`` with labels (None without), ``float_top1`` of the reference,
``agreement`` = fraction of samples whose top-1 class equals the float model's, and ``kl`` = mean over samples
of KL(p_float || p_quant) of the softmax outputs (nats; per position averaged for dense outputs). Batched, with
a progress bar on stderr; float logits can be passed in (``float_logits``) so several plans share one float
pass (:func:`logits`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tap_edge.core.console import progress
from tap_edge.core.errors import UserError


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, list | tuple):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


def logits(model: nn.Module, images: torch.Tensor, batch_size: int = 32,
           description: str = "float model") -> torch.Tensor:
    """Model outputs for ``images`` in batches (no gradients), with a progress bar."""
    outs = []
    model.eval()
    with torch.no_grad(), progress(description, total=len(images)) as bar:
        for i in range(0, len(images), batch_size):
            xb = images[i:i + batch_size]
            outs.append(_first_tensor(model(xb)).float())
            bar.advance(len(xb))
    return torch.cat(outs)


def per_sample_kl(ref: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_got) of the softmax outputs per sample [N] (dense outputs: averaged over positions), the
    per-image figure paired comparisons resample."""
    logp_r = F.log_softmax(ref.double(), 1)
    logp_g = F.log_softmax(got.double(), 1)
    return (logp_r.exp() * (logp_r - logp_g)).sum(1).reshape(len(ref), -1).mean(1)


def compare_logits(ref: torch.Tensor, got: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """The metrics of the module docstring from two logit batches [N, C, ...]."""
    if ref.shape != got.shape:
        raise UserError(f"output shapes differ: float {list(ref.shape)} vs quantized {list(got.shape)}")
    n = len(ref)
    pr, pg = ref.argmax(1), got.argmax(1)
    res: dict[str, Any] = {
        "n": n,
        "agreement": float((pr == pg).double().mean()),
        "kl": float(per_sample_kl(ref, got).mean()),
        "top1": None,
        "float_top1": None,
    }
    if labels is not None:
        if len(labels) != n:
            raise UserError(f"{len(labels)} labels for {n} samples", "give one label per evaluation sample")
        res["top1"] = float((pg == labels).double().mean())
        res["float_top1"] = float((pr == labels).double().mean())
    return res


def evaluate(model: nn.Module, float_model: nn.Module | None, images: torch.Tensor,
             labels: torch.Tensor | None = None, *, batch_size: int = 32,
             float_logits: torch.Tensor | None = None) -> dict[str, Any]:
    """Top-1 (with ``labels``), agreement and mean KL of ``model`` against ``float_model`` on ``images``.

    Give ``float_logits`` (from :func:`logits`) instead of ``float_model`` to reuse one float pass."""
    if len(images) == 0:
        raise UserError("no evaluation samples", "give a folder with images or tensors to score on")
    if float_logits is None:
        if float_model is None:
            raise UserError("evaluate needs the float model or its logits")
        float_logits = logits(float_model, images, batch_size)
    got = logits(model, images, batch_size, "quantized model")
    return compare_logits(float_logits, got, labels)
