"""Tiny PyTorch factories used by tests through the ``package.module:factory`` MODEL form."""

from __future__ import annotations

import torch
from torch import nn

from tap_edge.graph.models import Preprocess


def empty_model() -> nn.Module:
    return nn.Sequential()


class _Weird(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x).real  # an op no MCU runtime runs


def model_with_unknown_op() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), _Weird(), nn.Conv2d(8, 4, 1))
    m.tap_edge_preprocess = Preprocess((3, 16, 16), 16)
    return m
