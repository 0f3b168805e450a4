"""The search tasks on real networks (issue 13): EfficientNet-Lite1 on a tiny subset of the dev photos, fitness from
the KL to the float model, everything candidate-independent cached, the photos split the same way everywhere."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from tap_edge.core.errors import UserError
from tap_edge.plan.proxies.builtin import SEED_PROGRAM
from tap_edge.search import photo_tasks
from tap_edge.search.fitness import TASK_BUILDERS, Limits, TaskSpec, describe_tasks, evaluate_program
from tap_edge.search.tasks import kl_divergence

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
needs_photos = pytest.mark.skipif(not (SAMPLE / "labels.csv").exists(), reason="needs ../shared/data/imagenet-sample")


def test_round_to_nearest_keeps_quantized_weights_and_gives_the_direct_outputs() -> None:
    import torch

    from tap_edge.quantize.ptq import quantize_weight, weight_scales

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).eval()
    names, bits = ["0", "2"], [2, 3, 4, 8]
    qscale = [weight_scales(model.get_submodule(m).weight.detach(), bits).numpy() for m in names]
    floats = [model.get_submodule(m).weight.detach().clone() for m in names]
    x = torch.randn(5, 3, 9, 9)
    nearest = photo_tasks.RoundToNearest(model, names, qscale, bits)
    for widths in ([2, 8], [4, 3], [2, 8]):
        direct = copy.deepcopy(model)  # the quantizer applied afresh to every layer
        with torch.no_grad():
            for m, w, q, b in zip(names, floats, qscale, widths, strict=True):
                direct.get_submodule(m).weight.copy_(quantize_weight(w, torch.from_numpy(q[bits.index(b)]), b))
            expected = direct(x)
        assert torch.equal(nearest.logits(widths, x), expected)
        for m, w in zip(names, floats, strict=True):  # the float weights are back
            assert torch.equal(model.get_submodule(m).weight, w)
    assert set(nearest._quantized) == {(0, 2), (1, 8), (0, 4), (1, 3)}  # computed once per (layer, width)
    with pytest.raises(ValueError, match="1 widths for 2 layers"):
        nearest.logits([2], x)


def test_photo_task_names_and_missing_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"lite1-photos", "lite2-photos"} <= set(TASK_BUILDERS) and "lite0-photos" not in TASK_BUILDERS
    assert TaskSpec.parse("lite2-photos@4").key() == "lite2-photos@4"
    monkeypatch.setenv(photo_tasks.PHOTOS_ENV, str(tmp_path / "none"))
    with pytest.raises(UserError, match=photo_tasks.PHOTOS_ENV):
        photo_tasks.photos_dir()


@needs_photos
def test_search_never_sees_the_benchmark_photos() -> None:
    calib, ev = photo_tasks.search_photos(SAMPLE)
    unseen = photo_tasks.unseen_photos(SAMPLE)
    assert len(calib) == photo_tasks.CALIB_PHOTOS and len(ev) == photo_tasks.EVAL_PHOTOS
    assert not (set(calib) | set(ev)) & set(unseen)
    assert len(unseen) > 400


@needs_photos
def test_lite1_task_on_a_tiny_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted(SAMPLE.glob("*.jpg"))[:30]:
        (photos / f.name).symlink_to(f)
    (photos / "labels.csv").symlink_to(SAMPLE / "labels.csv")
    monkeypatch.setenv(photo_tasks.PHOTOS_ENV, str(photos))
    monkeypatch.setattr(photo_tasks, "PHOTO_STRIDE", 3)
    monkeypatch.setattr(photo_tasks, "PHOTO_OFFSET", 0)
    monkeypatch.setattr(photo_tasks, "CALIB_PHOTOS", 2)
    monkeypatch.setattr(photo_tasks, "EVAL_PHOTOS", 3)
    monkeypatch.setattr(photo_tasks, "_SHARED", {})
    cache = tmp_path / "cache"
    tasks = [photo_tasks.PhotoTask(TaskSpec.parse(s), cache) for s in ("lite1-photos@3", "lite1-photos@4")]
    t3, t4 = tasks
    assert t3.program_layers() is t4.program_layers()  # one network, two budgets: built once
    assert len(t3.program_layers()) == 65 and len(t3.damage) == 65 and (t3.damage >= 0).all()
    assert {"qerr_hessian", "hessian_trace", "out_sq", "param_share"} <= set(t3.program_layers()[0])
    assert t3.flash < t4.flash
    res = evaluate_program(SEED_PROGRAM.read_text(), 0.1, Limits(cpu_seconds=30, memory_mb=2048, wall_seconds=60),
                           tasks)
    assert res["ok"], res
    for ts, budget in zip(res["tasks"], (3, 4), strict=True):
        assert ts["quality"] == pytest.approx(math.exp(-ts["kl"])) and 0 < ts["quality"] <= 1
        assert 0 <= ts["agreement"] <= 1 and -1 <= ts["spearman"] <= 1
        assert ts["avg_bits"] <= budget + 0.05  # the flash budget holds (scales and biases aside)
    assert res["tasks"][0]["kl"] > res["tasks"][1]["kl"]  # less flash, more damage
    # a plan seen before is not run again, and what is remembered is what a fresh forward pass measures
    chosen = res["tasks"][0]["bits"]
    remembered = t3.measure(chosen)
    assert t3._measured is t4._measured and len(t3._measured) == 2
    forward = t3.nearest.logits
    monkeypatch.setattr(t3.nearest, "logits", lambda *a: pytest.fail("a remembered plan ran a forward pass"))
    again = evaluate_program(SEED_PROGRAM.read_text(), 0.1, Limits(cpu_seconds=30, memory_mb=2048, wall_seconds=60),
                             tasks)
    assert [{k: v for k, v in ts.items() if k != "seconds"} for ts in again["tasks"]] == \
        [{k: v for k, v in ts.items() if k != "seconds"} for ts in res["tasks"]]
    monkeypatch.setattr(t3.nearest, "logits", forward)
    fresh = t3.quantized_logits(chosen)  # a forward pass now, neither the memory nor the store
    assert remembered.kl == kl_divergence(t3.float_logits, fresh)
    assert remembered.agreement == float((fresh.argmax(1) == t3.float_pred).float().mean())
    info = describe_tasks(tasks)
    assert info[0]["model"] == "efficientnet_lite1" and info[0]["eval_samples"] == 3
    # a new process would load the cache file, not build again
    monkeypatch.setattr(photo_tasks, "_SHARED", {})
    again = photo_tasks.PhotoTask(TaskSpec.parse("lite1-photos@3"), cache)
    assert list(again.damage) == list(t3.damage) and len(list(cache.glob("*.pt"))) == 1
    # ... and find the plans measured here in the plan store beside the cache, with no forward pass
    assert not again._measured and len(list(cache.glob("*.sqlite"))) == 1
    monkeypatch.setattr(again.nearest, "logits", lambda *a: pytest.fail("a stored plan ran a forward pass"))
    assert again.measure(chosen) == remembered
    assert again.measure(res["tasks"][1]["bits"]) == t4.measure(res["tasks"][1]["bits"])
    (store := again._store.path).unlink()  # a store that cannot be used only costs time
    store.mkdir()
    monkeypatch.setattr(photo_tasks, "_SHARED", {})
    bare = photo_tasks.PhotoTask(TaskSpec.parse("lite1-photos@3"), cache)
    assert bare.measure(chosen) == remembered and bare._store._failed
