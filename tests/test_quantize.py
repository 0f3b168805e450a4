"""PTQ (tap_edge.quantize.ptq), evaluation metrics and the calibration loader.

The accuracy check trains a small CNN on scikit-learn's digits (8x8 images) in a few seconds: 8-bit PTQ must
stay within 2 points of float with > 95% agreement, 2-bit weights must be clearly worse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tap_edge.core.errors import UserError
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.models import Preprocess
from tap_edge.plan.calib import labels_for, list_samples, load_images, load_labels
from tap_edge.quantize.evaluate import compare_logits, evaluate
from tap_edge.quantize.ptq import (
    PTQConfig,
    fold_batchnorm,
    folded_copy,
    ptq,
    qmax_of,
    quantize_model,
    quantize_weight,
    weight_quant_table,
    weight_scales,
    weights_only,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small models run faster on one OpenMP thread, and do not spin when other jobs share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- a real small model: a CNN trained on sklearn digits ---------------------------------------------------
def _digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits() -> dict:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    torch.manual_seed(0)
    model = _digits_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xtr, ytr = x[:1400], y[:1400]
    for _ in range(10):
        idx = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 100):
            b = idx[i:i + 100]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[b]), ytr[b]).backward()
            opt.step()
    model.eval()
    return {"model": model, "calib": xtr[:64], "x": x[1400:], "y": y[1400:]}


def test_digits_ptq_8bit_close_to_float_2bit_worse(digits: dict) -> None:
    model, calib, x, y = digits["model"], digits["calib"], digits["x"], digits["y"]
    base = evaluate(model, model, x, y)
    assert base["agreement"] == 1.0 and base["kl"] < 1e-9
    assert base["float_top1"] > 0.9, base
    w8 = evaluate(quantize_model(model, "w8a8", calib), model, x, y)
    assert w8["top1"] >= base["float_top1"] - 0.02, w8
    assert w8["agreement"] > 0.95, w8
    w2 = evaluate(quantize_model(model, "w2a8", calib), model, x, y)
    assert w2["top1"] < w8["top1"] - 0.05 and w2["kl"] > 10 * w8["kl"], (w2, w8)


def test_plan_with_per_layer_widths(digits: dict) -> None:
    model, calib, x = digits["model"], digits["calib"], digits["x"]
    bits = BitAssignment.from_plan({"default": {"w": 8, "a": 8},
                                    "layers": {"0": {"w": 4, "a": 16}, "9": {"w": 2, "a": 8}}})
    q = ptq(model, PTQConfig(bits=bits), calib)
    info = q.tap_edge_ptq
    assert info.weight_bits["0"] == 4 and info.weight_bits["9"] == 2 and info.weight_bits["14"] == 8
    assert ("0", "1") in info.folded and ("3", "4") in info.folded
    assert info.act_bits["3"] == 16  # the input of layer 3 is produced by layer 0 (16-bit activations)
    # the quantized conv weights take at most 2^b - 1 distinct values per output channel
    w = q.get_submodule("0").weight.detach()
    assert max(len(torch.unique(w[c])) for c in range(w.shape[0])) <= 15
    with torch.no_grad():
        assert torch.isfinite(q(x)).all()
    with pytest.raises(UserError, match="does not have"):
        ptq(model, PTQConfig(bits=BitAssignment.from_plan({"layers": {"nope": {"w": 4, "a": 8}}})), calib)


def test_float_activations_and_16bit_stay_exact(digits: dict) -> None:
    model, x = digits["model"], digits["x"]
    calib = x  # ranges cover the evaluated values: no clipping, only rounding
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(quantize_model(model, "w32a32", calib)(x), ref, atol=1e-4)
        q16 = quantize_model(model, BitAssignment(32, 16), calib)
        assert (q16(x) - ref).abs().max() < 1e-2
    assert quantize_model(model, "w8a8", calib, config=PTQConfig(act_calib="percentile")) is not None


class Residual(nn.Module):
    """conv-relu, conv, a residual add, pool, linear: a tensor between layers at every step (the ones a runtime
    quantizes and the layer input quantizers do not see)."""

    def __init__(self, channels: int = 8, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1, self.relu = nn.Conv2d(3, channels, 3, padding=1), nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        return self.fc(self.pool(self.conv2(x) + x).flatten(1))


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_tensors_between_layers_are_quantized_once(rounding: str) -> None:
    """The add reads the skip on conv2's input grid and conv2's output on a grid of its own, the pool reads the
    sum on one too (as QDQ and TFLite run them); the extra ranges come from float activations, as the runtimes
    calibrate; without ``quantize_joins`` the add sums float values."""
    model = Residual().eval()
    calib = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    q = ptq(model, PTQConfig(bits="w4a8", rounding=rounding), calib)
    info = q.tap_edge_ptq
    assert info.join_quant == {"relu": "shared", "conv2": "own", "add": "own"}
    own_y, own_sum = q.get_submodule("join_quant_conv2"), q.get_submodule("join_quant_add")
    skip_q = q.get_submodule("conv2").input_quant
    fc_q = q.get_submodule("fc").input_quant
    with torch.no_grad():
        x = calib[:4]
        x0 = skip_q(q.relu(q.conv1(x)))  # conv1's pre-hook quantizes the model input
        want = q.fc(fc_q(q.pool(own_sum(own_y(q.conv2(x0)) + x0)).flatten(1)))
        torch.testing.assert_close(q(x), want, rtol=0, atol=0)
        # the own quantizers' ranges: the float-activation model (weights on their grid) on the calibration batch
        f = weights_only(q)
        y_float = f.conv2(f.relu(f.conv1(calib)))
        assert float(own_y.scale) == pytest.approx((float(y_float.max()) - min(float(y_float.min()), 0.0)) / 255)
        plain = ptq(model, PTQConfig(bits="w4a8", rounding=rounding, quantize_joins=False), calib)
        assert plain.tap_edge_ptq.join_quant == {} and not torch.equal(plain(calib), q(calib))


def test_biases_are_on_the_runtimes_int32_grid() -> None:
    """Each bias is an integer times s_in * s_w (float32, per channel), what ONNX Runtime and TFLite store; the
    ones of a float-input layer stay float; ``quantize_bias=False`` keeps them all float."""
    model = Residual().eval()
    calib = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    bits = BitAssignment.from_plan({"default": {"w": 3, "a": 8}, "layers": {"conv2": {"w": 3, "a": 32}}})
    q = ptq(model, PTQConfig(bits=bits), calib)
    info = q.tap_edge_ptq
    assert "fc" not in info.input_qparams  # conv2's output is float, so the sum the pool and fc read
    on_grid = []
    for name in ("conv1", "conv2", "fc"):
        b = q.get_submodule(name).bias.detach()
        if name not in info.input_qparams:
            torch.testing.assert_close(b, model.get_submodule(name).bias.detach(), rtol=0, atol=0)
            continue
        step = torch.tensor(info.input_qparams[name][1], dtype=torch.float32) * info.weight_scales[name]
        torch.testing.assert_close(torch.round(b / step) * step, b, rtol=0, atol=0)
        on_grid.append(name)
    assert on_grid == ["conv1", "conv2"]
    plain = ptq(model, PTQConfig(bits=bits, quantize_bias=False), calib)
    b = plain.get_submodule("conv1").bias.detach()
    step = torch.tensor(plain.tap_edge_ptq.input_qparams["conv1"][1]) * plain.tap_edge_ptq.weight_scales["conv1"]
    assert not torch.equal(torch.round(b / step) * step, b)


# ---- BN folding and the weight quantizer ----------------------------------------------------------------
@pytest.mark.parametrize("spec", ["resnet8", "timm:mobilenetv2_050"])
def test_bn_folding_is_exact(spec: str) -> None:
    from tap_edge.graph.models import load_model

    lm = load_model(spec)
    for m in lm.module.modules():  # non-trivial running statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64) if spec.startswith("timm") else torch.randn(2, 3, 32, 32)
    f = folded_copy(lm.module)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in f.modules())
    with torch.no_grad():
        assert torch.allclose(f(x), lm.module(x), atol=1e-4, rtol=1e-4)
    _, pairs = fold_batchnorm(f)
    assert pairs == []  # nothing left to fold


def test_weight_quantizer_mse_search() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 300) * torch.rand(64, 1)
    w[0, 0] = 25.0  # an outlier channel: clipping must help there
    scales, err = weight_quant_table(w, (2, 4, 8))
    assert scales.shape == (3, 64) and err.shape == (3, 64)
    assert (err[0] > err[1]).all() and (err[1] > err[2]).all()  # more bits, less error
    for i, b in enumerate((2, 4, 8)):
        mx = weight_scales(w, b, clip="max")[0]
        e_max = ((quantize_weight(w, mx, b) - w) ** 2).sum(1)
        assert (err[i] <= e_max * 1.0001).all()  # never worse than no clipping
        # close to an exhaustive search over 200 clipping ratios
        amax = w.abs().amax(1)
        best = torch.stack([((quantize_weight(w, amax * r / qmax_of(b), b) - w) ** 2).sum(1)
                            for r in torch.linspace(0.005, 1, 200)]).min(0).values
        assert err[i].sum() <= best.sum() * 1.03
        q = quantize_weight(w, scales[i], b) / scales[i][:, None]
        assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= qmax_of(b) + 1e-3


def test_ptq_config_errors() -> None:
    with pytest.raises(UserError, match="clipping"):
        PTQConfig(clip="minmax")
    with pytest.raises(UserError, match="calibration"):
        PTQConfig(act_calib="kl")
    with pytest.raises(UserError, match="w8a8"):
        PTQConfig(bits="w9")
    assert PTQConfig(bits="w4a16").bits.default_w == 4
    with pytest.raises(UserError, match="calibration batch"):
        ptq(nn.Linear(2, 2), PTQConfig(), torch.zeros(0, 2))


def test_compare_logits_metrics() -> None:
    ref = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    got = torch.tensor([[2.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    r = compare_logits(ref, got, torch.tensor([0, 1, 1]))
    assert r["agreement"] == pytest.approx(2 / 3) and r["top1"] == pytest.approx(1 / 3)
    assert r["float_top1"] == pytest.approx(2 / 3) and r["kl"] > 0
    with pytest.raises(UserError, match="labels"):
        compare_logits(ref, got, torch.tensor([0]))


# ---- calibration loader ---------------------------------------------------------------------------------
_PRE = Preprocess((3, 8, 8), 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _png(path, size=(12, 10), mode="RGB", value=128) -> None:
    from PIL import Image

    Image.new(mode, size, value if mode == "L" else (value,) * len(mode)).save(path)


def test_load_images_preprocessing_and_order(tmp_path) -> None:
    _png(tmp_path / "b.png", value=255)
    _png(tmp_path / "a.png", mode="L", value=0)  # grayscale: replicated to 3 channels
    _png(tmp_path / "c.png", mode="RGBA")
    (tmp_path / "labels.csv").write_text("file,class_index\na.png,3\nb.png,1\nc.png,2\nd.npy[1],7\nd.npy,5\n")
    np.save(tmp_path / "d.npy", np.ones((2, 3, 8, 8), np.float32))  # a batch of 2 preprocessed samples
    (tmp_path / "notes.txt").write_text("ignored")
    x, names = load_images(tmp_path, _PRE)
    assert names == ["a.png", "b.png", "c.png", "d.npy[0]", "d.npy[1]"]
    assert x.shape == (5, 3, 8, 8)
    assert torch.allclose(x[0], torch.full((3, 8, 8), -2.0))  # (0/255 - 0.5) / 0.25
    assert torch.allclose(x[1], torch.full((3, 8, 8), 2.0))
    assert torch.allclose(x[4], torch.ones(3, 8, 8))
    x2, n2 = load_images(tmp_path, _PRE, limit=2, skip=2)
    assert n2 == ["c.png", "d.npy[0]"] and torch.equal(x2, x[2:4])
    labels = load_labels(tmp_path / "labels.csv")
    assert labels_for(names, labels).tolist() == [3, 1, 2, 5, 7]


def test_load_images_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_images(tmp_path / "missing", _PRE)
    (tmp_path / "README.md").write_text("no samples here")
    with pytest.raises(UserError, match="no images or tensors"):
        list_samples(tmp_path)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match="broken.jpg: unreadable image"):
        load_images(tmp_path, _PRE)
    bad.unlink()
    np.save(tmp_path / "gray.npy", np.zeros((1, 8, 8), np.float32))
    with pytest.raises(UserError, match="gray.npy: tensor has 1 channels, the model takes 3"):
        load_images(tmp_path, _PRE)
    (tmp_path / "gray.npy").unlink()
    np.save(tmp_path / "small.npy", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(UserError, match="small.npy"):
        load_images(tmp_path, _PRE)
    (tmp_path / "small.npy").unlink()
    np.save(tmp_path / "pix.npy", np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(UserError, match="wrong channel count"):
        load_images(tmp_path, _PRE)
    (tmp_path / "pix.npy").unlink()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="junk.pt: unreadable tensor"):
        load_images(tmp_path, _PRE)
    (tmp_path / "junk.pt").unlink()
    _png(tmp_path / "ok.png")
    with pytest.raises(UserError, match="4-channel input"):
        load_images(tmp_path, Preprocess((4, 8, 8), 8, (0,) * 4, (1,) * 4))
    with pytest.raises(UserError, match="no samples left"):
        load_images(tmp_path, _PRE, skip=5)
    with pytest.raises(UserError, match="positive"):
        load_images(tmp_path, _PRE, limit=0)


def test_labels_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="labels file not found"):
        load_labels(tmp_path / "none.csv")
    (tmp_path / "l.csv").write_text("name,label\na,1\n")
    with pytest.raises(UserError, match="'file' and 'class_index'"):
        load_labels(tmp_path / "l.csv")
    (tmp_path / "l.csv").write_text("file,class_index\na.png,x\n")
    with pytest.raises(UserError, match="line 2"):
        load_labels(tmp_path / "l.csv")
    (tmp_path / "l.csv").write_text("file,class_index\na.png,1\n")
    with pytest.raises(UserError, match="no label for 'b.png' \\(1 of 2"):
        labels_for(["a.png", "b.png"], load_labels(tmp_path / "l.csv"))
