"""Error-minimising rounding (tap_edge.quantize.rounding / sequential, PTQConfig(rounding=...)) on small layers and
networks whose answer is checked: the columns reproduce each layer, GPTQ and AdaRound never lose to nearest on
the calibration objective, weights already on the grid stay, depthwise groups are separate problems, runs
repeat exactly, and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tap_edge.core.errors import UserError
from tap_edge.documents import PTQSettings
from tap_edge.fit.bits import BitAssignment
from tap_edge.quantize import rounding as R
from tap_edge.quantize.ptq import FakeQuantAct, PTQConfig, ptq, qmax_of, weight_scales


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _layer_output(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``W X`` from the columns, laid out like the layer's output (no bias)."""
    cols, wg = R.layer_columns(mod, x), R.grouped_weight(mod)
    y = wg @ cols  # [G, C/G, N*L]
    g, cg, _ = y.shape
    if isinstance(mod, nn.Linear):
        return y[0].t().reshape(*x.shape[:-1], -1)
    ref = mod(x)
    return y.reshape(g, cg, len(x), -1).permute(2, 0, 1, 3).reshape(ref.shape)


@pytest.mark.parametrize("mod, shape", [
    (nn.Conv2d(8, 16, 3, padding=1), (3, 8, 11, 13)),
    (nn.Conv2d(8, 12, 3, padding=1, groups=4), (3, 8, 9, 9)),
    (nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8), (3, 8, 11, 13)),  # depthwise
    (nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=8), (2, 8, 10, 10)),
    (nn.Conv2d(8, 6, 3, padding=1, padding_mode="reflect"), (2, 8, 7, 7)),
    (nn.Conv2d(8, 16, 1), (2, 8, 5, 6)),
    (nn.Conv2d(8, 12, 1, stride=2, groups=2), (2, 8, 7, 7)),
    (nn.Conv1d(4, 6, 3, padding=1, groups=2), (3, 4, 17)),
    (nn.Linear(10, 7), (5, 3, 10)),
])
def test_columns_reproduce_the_layer(mod: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape)
    with torch.no_grad():
        bias = mod.bias.reshape(-1, *[1] * (len(shape) - 2)) if not isinstance(mod, nn.Linear) else mod.bias
        assert torch.allclose(_layer_output(mod, x), mod(x) - bias, atol=1e-5)


def test_timm_conv2d_same_columns() -> None:
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    mod, x = Conv2dSame(3, 8, 3, stride=2, bias=False), torch.randn(2, 3, 15, 14)
    with torch.no_grad():
        assert torch.allclose(_layer_output(mod, x), mod(x), atol=1e-5)


def _correlated(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    return torch.randn(n, k, generator=g) @ mix


def _stats(mod: nn.Module, x: torch.Tensor) -> R.LayerStats:
    return R.layer_stats(mod, x, x)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("kind", ["linear", "conv", "depthwise"])
def test_gptq_and_adaround_never_worse_than_nearest(bits: int, kind: str) -> None:
    """The calibration objective ||W X - Q X||^2 of GPTQ and AdaRound is at most nearest's, per output channel,
    and clearly below it in total for correlated inputs (the case the methods exist for)."""
    torch.manual_seed(1)
    if kind == "linear":
        mod, x = nn.Linear(48, 16), _correlated(400, 48)
    elif kind == "conv":
        mod, x = nn.Conv2d(6, 8, 3, padding=1), _correlated(8 * 10 * 10, 6).reshape(8, 10, 10, 6).permute(0, 3, 1, 2)
    else:
        mod, x = nn.Conv2d(6, 6, 3, padding=1, groups=6), torch.randn(8, 6, 10, 10).cumsum(3)  # smooth rows
    w = R.grouped_weight(mod)
    scale = weight_scales(mod.weight, bits)[0].reshape(w.shape[0], w.shape[1])
    stats = _stats(mod, x)
    near = R.objective(w, R.nearest_levels(w, scale, qmax_of(bits)) * scale[..., None], stats)
    for levels in (R.gptq_round(w, stats, scale, bits), R.adaround(w, stats, scale, bits, iters=200)):
        assert levels.abs().max() <= qmax_of(bits) and torch.equal(levels, levels.round())
        got = R.objective(w, levels * scale[..., None], stats)
        assert (got <= near * (1 + 1e-9) + 1e-12).all()
        if bits <= 4:
            assert got.sum() < 0.95 * near.sum(), (kind, bits, float(got.sum() / near.sum()))


@pytest.mark.parametrize("kind", ["linear", "depthwise"])
def test_output_clipping_never_worse_than_the_weight_mse_clip(kind: str) -> None:
    """``clip="output"`` picks each row's scale on the output error of nearest rounding: never above the weight-MSE
    scale's, and clearly below it at 2-3 bits when a few inputs carry most of the energy (the weight error
    treats every weight alike)."""
    torch.manual_seed(3)
    if kind == "linear":
        mod, x = nn.Linear(32, 12), _correlated(300, 32) * torch.logspace(-1, 1, 32)
    else:
        mod, x = nn.Conv2d(6, 6, 3, padding=1, groups=6), torch.randn(8, 6, 10, 10).cumsum(3)
    w, stats = R.grouped_weight(mod), _stats(mod, x)
    for bits in (2, 3, 4):
        qmax = qmax_of(bits)
        mse = weight_scales(mod.weight, bits)[0].reshape(w.shape[0], w.shape[1])
        out = R.output_scales(w, stats, mse, bits)
        assert out.shape == mse.shape and (out > 0).all()
        before = R.objective(w, R.nearest_levels(w, mse, qmax) * mse[..., None], stats)
        after = R.objective(w, R.nearest_levels(w, out, qmax) * out[..., None], stats)
        assert (after <= before).all()
        if bits <= 3:
            assert after.sum() < 0.9 * before.sum(), (kind, bits, float(after.sum() / before.sum()))


def test_depthwise_channels_are_separate_problems() -> None:
    """GPTQ on a depthwise conv equals GPTQ on each channel alone (its own 9 inputs, its own Hessian)."""
    torch.manual_seed(2)
    dw, x = nn.Conv2d(5, 5, 3, padding=1, groups=5), torch.randn(4, 5, 9, 9).cumsum(2)
    w = R.grouped_weight(dw)
    scale = weight_scales(dw.weight, 3)[0].reshape(5, 1)
    together = R.gptq_round(w, _stats(dw, x), scale, 3)
    for c in range(5):
        one = nn.Conv2d(1, 1, 3, padding=1)
        one.weight.data = dw.weight.data[c:c + 1].clone()
        alone = R.gptq_round(R.grouped_weight(one), _stats(one, x[:, c:c + 1]), scale[c:c + 1], 3)
        assert torch.equal(together[c], alone[0])


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.ReLU6(), nn.Conv2d(8, 12, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(12, 5))


def _put_on_grid(model: nn.Module, bits: int) -> None:
    """Integer weights in [-qmax, qmax] times a per-channel scale, every channel reaching +-qmax."""
    g = torch.Generator().manual_seed(3)
    qmax = qmax_of(bits)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            w = m.weight.data
            ints = torch.randint(-qmax, qmax + 1, w.shape, generator=g).float().reshape(w.shape[0], -1)
            ints[:, 0] = qmax
            scale = torch.rand(w.shape[0], 1, generator=g) * 0.1 + 0.02
            m.weight.data = (ints * scale).reshape(w.shape)


@pytest.mark.parametrize("rounding", ["nearest", "gptq", "adaround"])
def test_weights_on_the_grid_are_unchanged(rounding: str) -> None:
    torch.manual_seed(4)
    model = _small_net().eval()
    _put_on_grid(model, 4)
    calib = torch.randn(16, 3, 8, 8)
    cfg = PTQConfig(bits="w4a32", rounding=rounding, bias_correction=True, iters=100)
    q = ptq(model, cfg, calib)
    for (name, a), (_, b) in zip(model.named_parameters(), q.named_parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), name  # weights and (uncorrected) biases


def test_rounding_in_a_network_beats_nearest_and_repeats() -> None:
    """On a small random network at 3-bit weights, GPTQ and AdaRound reproduce the float outputs on the
    calibration batch better than nearest, and two runs give the same weights bit for bit."""
    torch.manual_seed(5)
    model = _small_net().eval()
    calib = torch.randn(32, 3, 8, 8).cumsum(3) / 3
    with torch.no_grad():
        ref = model(calib)
    err = {}
    for rounding in ("nearest", "gptq", "adaround"):
        cfg = PTQConfig(bits="w3a8", rounding=rounding, iters=200)
        q1, q2 = ptq(model, cfg, calib), ptq(model, cfg, calib)
        assert all(torch.equal(a, b) for a, b in zip(q1.state_dict().values(), q2.state_dict().values(), strict=True))
        with torch.no_grad():
            err[rounding] = float(((q1(calib) - ref) ** 2).mean())
        if rounding != "nearest":
            assert set(q1.tap_edge_ptq.rounded) == {"0", "2", "4", "8"}
        for name, scale in q1.tap_edge_ptq.weight_scales.items():  # what an exporter stores: s and q exactly
            w = q1.get_submodule(name).weight.detach()
            levels = w / scale.reshape(-1, *[1] * (w.dim() - 1))
            assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= qmax_of(3) + 1e-4
    assert err["gptq"] < err["nearest"] and err["adaround"] < err["nearest"], err


def test_grouped_conv_rounding_and_bias_correction() -> None:
    """A grouped conv goes through the sequential path; bias correction removes the mean output shift."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(8, 6, 1)).eval()
    calib = torch.randn(16, 4, 6, 6) + 0.5
    with torch.no_grad():
        ref = model(calib)
    for bc in (False, True):
        q = ptq(model, PTQConfig(bits="w2a32", rounding="gptq", bias_correction=bc), calib)
        with torch.no_grad():
            shift = (q(calib) - ref).mean((0, 2, 3)).abs().max()
        if bc:
            assert shift < 1e-4
        else:
            assert shift > 1e-3


def test_activation_range_search() -> None:
    """'mse' trades the tail of a Laplace-like activation for finer steps: less squared error than min/max."""
    torch.manual_seed(7)
    x = torch.distributions.Laplace(0.0, 1.0).sample((50000,))
    errs = {}
    for method in ("minmax", "mse"):
        fq = FakeQuantAct(8, method)
        fq(x)
        fq.finish()
        errs[method] = float(((fq(x) - x) ** 2).sum())
    assert errs["mse"] < 0.95 * errs["minmax"], errs


def test_config_round_trip_and_document_fields() -> None:
    cfg = PTQConfig(bits=BitAssignment.from_plan({"layers": {"0": {"w": 3, "a": 8}}}), rounding="gptq",
                    act_calib="mse", percdamp=0.05)
    again = PTQConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.bias_correction is True
    assert PTQConfig().bias_correction is False  # nearest: plain round-to-nearest unless asked
    clipped = PTQConfig(rounding="adaround", clip="output")
    assert PTQConfig.from_dict(json.loads(json.dumps(clipped.to_dict()))) == clipped
    settings = set(PTQSettings.model_fields) - {"samples"}
    assert settings == set(cfg.to_dict()) - {"bits"}  # the plan document records every setting
    with pytest.raises(UserError, match="did you mean rounding"):
        PTQConfig.from_dict({"roundin": "gptq"})


def _one_line(e: pytest.ExceptionInfo[UserError]) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_bad_input_is_one_line() -> None:
    model = _small_net().eval()
    calib = torch.randn(4, 3, 8, 8)
    with pytest.raises(UserError) as e:
        PTQConfig(rounding="gtpq")
    assert "unknown rounding 'gtpq'" in _one_line(e) and "did you mean gptq" in str(e.value)
    with pytest.raises(UserError) as e:
        PTQConfig(clip="output")
    assert "needs the layer inputs that gptq / adaround collect" in _one_line(e)
    with pytest.raises(UserError) as e:
        ptq(model, PTQConfig(rounding="gptq"), calib[:0])
    assert "non-empty calibration batch" in _one_line(e)
    bad = _small_net().eval()
    bad[2].weight.data[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError) as e:
        ptq(bad, PTQConfig(rounding="gptq"), calib)
    assert "layer '2' has NaN or infinite weights" in _one_line(e)
    for width in (1, 9):
        with pytest.raises(UserError) as e:
            BitAssignment.from_plan({"layers": {"4": {"w": width, "a": 8}}})
        assert f"impossible widths w{width}a8" in _one_line(e)
        with pytest.raises(UserError) as e:  # an assignment built in Python, not read from a plan
            ptq(model, PTQConfig(bits=BitAssignment(width, 8), rounding="gptq"), calib)
        assert "gptq rounding takes 2..8-bit integer weights" in _one_line(e)
        with pytest.raises(UserError) as e:
            R.gptq_round(torch.ones(1, 1, 4), R.LayerStats(torch.eye(4)[None], torch.eye(4)[None], 4),
                         torch.ones(1, 1), width)
        assert "2..8" in _one_line(e)
    with pytest.raises(UserError) as e:
        ptq(model, PTQConfig(rounding="gptq"), calib * float("nan"))
    assert "NaN" in _one_line(e)


# ---- the option through plan and eval -------------------------------------------------------------------
@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(20):
        np.save(d / f"x{i:02d}.npy", rng.standard_normal((3, 32, 32)).astype(np.float32))
    return d


def test_plan_records_the_rounding_and_eval_uses_it(run_cli, calib_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    r = run_cli("plan", "resnet8", "-d", "raspberry-pi-4", "--calib", str(calib_dir), "--weight-bits", "4,8",
                "--act-bits", "8", "--flash-like", "w6", "--rounding", "gptq", "--ptq-samples", "8", "--out", str(out),
                "--quiet")
    assert r.code == 0, r.err
    plan = json.loads(out.read_text())
    assert plan["ptq"]["rounding"] == "gptq" and plan["ptq"]["samples"] == 8 and plan["ptq"]["bias_correction"]
    r = run_cli("eval", "resnet8", "--data", str(calib_dir), "--plan", str(out), "--json")
    assert r.code == 0, r.err
    m = json.loads(r.out)
    assert m["ptq"]["rounding"] == "gptq" and m["ptq"]["samples"] == 8 and m["calib_samples"] == 8
    assert m["n_images"] == 12 and m["seconds"] >= m["ptq_s"] > 0
    plan["ptq"]["clip"] = "output"  # a setting edited in plan.json reaches the PTQ eval runs
    out.write_text(json.dumps(plan))
    r = run_cli("eval", "resnet8", "--data", str(calib_dir), "--plan", str(out), "--json")
    assert r.code == 0 and json.loads(r.out)["ptq"]["clip"] == "output", r.err
    plan["ptq"]["rounding"] = "nearest"
    (tmp_path / "bad.json").write_text(json.dumps(plan))
    r = run_cli("eval", "resnet8", "--data", str(calib_dir), "--plan", str(tmp_path / "bad.json"))
    assert r.code == 2 and "needs the layer inputs that gptq / adaround collect" in r.err and "Traceback" not in r.err
    r = run_cli("eval", "resnet8", "--data", str(calib_dir), "--plan", str(out), "--rounding", "nearest", "--json")
    m = json.loads(r.out)
    assert r.code == 0 and m["ptq"]["rounding"] == "nearest" and m["ptq"]["samples"] == 16  # nearest's default
    r = run_cli("eval", "resnet8", "--data", str(calib_dir), "--bits", "w4a8", "--rounding", "gptq",
                "--ptq-samples", "4", "--json")
    m = json.loads(r.out)
    assert r.code == 0 and m["ptq"]["rounding"] == "gptq" and m["n_images"] == 16
    r = run_cli("eval", "resnet8", "--data", str(calib_dir), "--bits", "w4a8", "--rounding", "adarond")
    assert r.code == 2 and "did you mean adaround" in r.err and "Traceback" not in r.err
    r = run_cli("plan", "resnet8", "-d", "raspberry-pi-4", "--calib", str(calib_dir), "--rounding", "gptq",
                "--ptq-samples", "0", "--out", str(tmp_path / "p.json"))
    assert r.code == 2 and "must be positive" in r.err


def test_eval_result_without_ptq_still_reads() -> None:
    """Plans written before the rounding option have no ``ptq``: they read, and eval falls back to nearest."""
    from tap_edge.documents import EvalResult

    doc = {"schema": "tap-edge/eval", "version": EvalResult.VERSION, "model": "m", "bits": "w8a8", "n_images": 1,
           "calib_samples": 16, "model_bytes": 1, "ptq_s": 0.1, "agreement": 1.0, "kl": 0.0}
    assert EvalResult.from_dict(doc).ptq is None
