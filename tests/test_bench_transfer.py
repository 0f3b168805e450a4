"""tools/bench_transfer.py: the paired bootstrap finds a known difference (and none where there is none), and the
share of the uniform-to-oracle gap."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from bench_transfer import gap_closed, paired_bootstrap  # noqa: E402


def test_bootstrap_finds_a_known_difference() -> None:
    """Two methods on the same 400 photos: b is right on 80 %, a on the same photos plus 5 % more (known +5)."""
    rng = np.random.default_rng(1)
    b = rng.random(400) < 0.8
    a = b.copy()
    a[np.flatnonzero(~b)[:20]] = True  # 20 more right answers: +5.0 points exactly
    d, lo, hi = paired_bootstrap(a, b)
    assert d == pytest.approx(0.05)
    assert 0 < lo < 0.05 < hi < 0.08  # the interval excludes zero and holds the true difference


def test_bootstrap_of_no_difference_straddles_zero() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random(400) < 0.8, rng.random(400) < 0.8
    d, lo, hi = paired_bootstrap(a, a)
    assert d == lo == hi == 0.0
    d, lo, hi = paired_bootstrap(a, b)  # independent draws of the same rate: zero inside the interval
    assert lo < 0 < hi and lo < d < hi


def test_bootstrap_pairing_is_tighter_than_unpaired() -> None:
    """Paired outcomes that mostly agree give a narrow interval: the pairing is what makes 1 point detectable."""
    rng = np.random.default_rng(3)
    b = rng.random(500) < 0.85
    a = b.copy()
    a[np.flatnonzero(~b)[:15]] = True  # +3 points, the other 485 photos the same
    d, lo, hi = paired_bootstrap(a, b)
    assert d == pytest.approx(0.03) and hi - lo < 0.04 and lo > 0
    # unpaired (the same rates on independent photos) the interval is several times wider
    rest = np.random.default_rng(4).permutation(a)
    assert np.ptp(paired_bootstrap(rest, b)[1:]) > 2 * (hi - lo)


def test_gap_closed() -> None:
    assert gap_closed(0.9, 0.5, 0.9) == pytest.approx(1.0)
    assert gap_closed(0.7, 0.5, 0.9) == pytest.approx(0.5)
    assert gap_closed(0.4, 0.5, 0.9) < 0
    assert gap_closed(0.5, 0.5, 0.5) is None


def test_ptq_ceiling_classes_name_real_layers_of_lite0() -> None:
    """tools/bench_ptq_ceiling.py: every layer class gives 8 bits to some EfficientNet-Lite0 layers and only to
    them (a class that matched nothing would print a row equal to uniform w4a8)."""
    from bench_ptq_ceiling import CLASSES, with_eight_bits

    from tap_edge.graph.models import load_graph, load_model

    ops = load_graph(load_model("efficientnet_lite0")).quantizable_ops()
    seen: set[str] = set()
    for name, keep in CLASSES.items():
        bits = with_eight_bits(ops, keep)
        eight = {op.module for op in ops if bits.weight_bits(op) == 8}
        assert eight and eight == {op.module for op in ops if keep(op.module)}, name
        assert all(bits.weight_bits(op) == 4 for op in ops if op.module not in eight)
        assert not eight & seen, name  # the classes do not overlap
        seen |= eight


def test_pin_sweep_pins_the_layer_within_the_same_budget() -> None:
    """tools/bench_pin_sweep.py: each re-allocated row has the layer at its pinned width and stays within the
    flash of the proxy's plan's budget; the over-budget row differs from the proxy's plan in that layer only."""
    from bench_pin_sweep import pin_sweep_plans
    from bench_plan import fake_quant_runtime

    from tap_edge.graph.models import load_graph, load_model
    from tap_edge.plan.budgets import flash_of_uniform

    graph = load_graph(load_model("efficientnet_lite0"))
    ops = graph.quantizable_ops()
    # a cost that falls with the width, larger for bigger layers: the ILP then spreads the bits
    table = {op.name: {(w, 8): float(op.weight_params) * 4.0 ** (8 - w) for w in range(2, 9)} for op in ops}
    rows = pin_sweep_plans(graph, table, 4, "classifier", [5, 6])
    budget = flash_of_uniform(graph, 4, fake_quant_runtime())
    (_, base, base_flash), pinned, (_, over, over_flash) = rows[0], rows[1:-1], rows[-1]
    assert 0 < base_flash <= budget
    for (_, bits, flash), w in zip(pinned, (5, 6), strict=True):
        assert bits.to_dict()["layers"]["classifier"]["w"] == w and 0 < flash <= budget
    assert over_flash == -1 and over.to_dict()["layers"]["classifier"]["w"] == 8
    base_layers, over_layers = base.to_dict()["layers"], over.to_dict()["layers"]
    assert {k for k in base_layers if base_layers[k] != over_layers[k]} <= {"classifier"}
