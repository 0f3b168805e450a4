"""The LayerStats building blocks of TAP programs (issue 13): the input-covariance-weighted weight error
tr(dW H dW^T) equals the measured change of each layer's output, for plain, strided TF-"same", depthwise and
linear layers; the Hutchinson trace matches the exact trace of a linear softmax classifier; share features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from tap_edge.graph.frontends.torch_frontend import trace_module
from tap_edge.plan.stats import LAYERSTATS_API, compute_layer_stats


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2)  # TF "same" padding, asymmetric at stride 2
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pw(torch.relu(self.dw(x))))
        return self.fc(self.pool(x).flatten(1))


def test_weighted_error_is_the_output_change() -> None:
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = torch.randn(6, 3, 15, 15)
    stats = compute_layer_stats(model, trace_module(model, x[:1], "small"), x)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, a, o, k=k: inputs.__setitem__(k, a[0].detach()))
             for k, m in model.named_modules() if k in ("stem", "dw", "pw", "fc")]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    mods = dict(model.named_modules())
    assert [s.module for s in stats] == ["stem", "dw", "pw", "fc"]
    for s in stats:
        mod = mods[s.module]
        for b in (2, 4, 8):
            dw = torch.from_numpy(s.quantized_weight(b) - s.weight)
            with torch.no_grad():
                dy = torch.func.functional_call(mod, {"weight": dw, "bias": torch.zeros(dw.shape[0])},
                                                (inputs[s.module],))
            measured = float(dy.double().square().sum()) / len(x)
            assert s.qerr_hessian[s.bits.index(b)] == pytest.approx(measured, rel=1e-4), (s.module, b)
        with torch.no_grad():
            y = torch.func.functional_call(mod, {"bias": torch.zeros(s.weight.shape[0])}, (inputs[s.module],))
        assert s.out_sq == pytest.approx(float(y.double().square().sum()) / len(x), rel=1e-4)
        assert np.all(np.diff(s.qerr_hessian) < 0)  # more bits, less output change
    assert sum(s.param_share for s in stats) == pytest.approx(1.0)
    assert sum(s.mac_share for s in stats) == pytest.approx(1.0)
    d = stats[0].to_program_input()
    for key in ("qerr_hessian", "out_sq", "hessian_trace", "param_share", "mac_share", "in_kurtosis"):
        assert key in d and key.replace("in_", "") in LAYERSTATS_API


def test_hutchinson_trace_of_a_linear_classifier() -> None:
    """Tr of the KL Hessian w.r.t. W of softmax(W x): mean_n sum_c p_nc (1 - p_nc) ||x_n||^2."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(6, 4, bias=False))
    x = torch.randn(400, 6)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (s,) = compute_layer_stats(lin, trace_module(lin, x[:1], "lin"), x, grad_batch=1)
    finally:
        torch.set_num_threads(n)
    with torch.no_grad():
        p = torch.softmax(lin(x), 1)
    exact = float(((p * (1 - p)).sum(1) * (x ** 2).sum(1)).mean())
    assert s.hessian_trace == pytest.approx(exact, rel=0.15)
