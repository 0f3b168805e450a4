"""The backend registry (entry points, wildcards, close matches, broken plug-ins) and, for every backend it
holds, its shape and options; the compile -> measure round trip of every backend is marked slow."""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import fields
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

import tap_edge.backends as backends_pkg
from tap_edge.backends import (
    ENTRY_POINT_GROUP,
    FIRST_PARTY,
    Backend,
    BackendOptions,
    backend_list,
    broken_backends,
    get_backend,
    list_backends,
    reload_backends,
)
from tap_edge.backends.verdict import measure_report
from tap_edge.core.errors import UserError
from tap_edge.devices import get_device
from tap_edge.documents import BackendList, Manifest, MeasureReport
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.models import load_graph, load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch):
    """``use(extra=..., drop=...)``: the installed entry points plus / minus some; the real registry is read
    again afterwards."""
    real = backends_pkg._entry_points()

    def use(extra: tuple[EntryPoint, ...] = (), drop: tuple[str, ...] = ()) -> None:
        eps = [ep for ep in real if ep.name not in drop] + list(extra)
        monkeypatch.setattr(backends_pkg, "_entry_points", lambda: eps)
        reload_backends()

    yield use
    monkeypatch.undo()
    reload_backends()


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


# ---- the registry ------------------------------------------------------------------------------------------
def test_pyproject_declares_the_first_party_backends() -> None:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert set(table) == set(FIRST_PARTY)
    assert all(v.startswith("tap_edge.backends.") for v in table.values())
    assert set(FIRST_PARTY) <= set(list_backends()) and not broken_backends()


def test_list_backends_takes_wildcards() -> None:
    assert list_backends("onnx*") == ["onnxruntime"]
    assert list_backends("t*") == ["tflite", "tvm"]
    assert list_backends("nothing*") == []


def test_unknown_backend_suggests_a_close_match() -> None:
    with pytest.raises(UserError, match="unknown backend 'onnxrutime'; did you mean onnxruntime") as ei:
        get_backend("onnxrutime")
    assert "\n" not in str(ei.value)


def test_broken_third_party_plugin_is_listed_not_fatal(entry_points, run_cli) -> None:
    entry_points(extra=(_ep("acme", "surely_missing_acme_pkg.backend:AcmeBackend"), _ep("notabackend", "json:dumps")))
    assert "acme" not in list_backends() and set(FIRST_PARTY) <= set(list_backends())
    broken = broken_backends()
    assert broken["acme"].startswith("ModuleNotFoundError") and broken["notabackend"].startswith("TypeError")
    with pytest.raises(UserError, match="backend 'acme' failed to load .ModuleNotFoundError"):
        get_backend("acme")
    rows = {b.name: b for b in backend_list().backends}
    assert rows["acme"].broken and not rows["acme"].available and rows["onnxruntime"].broken is None
    r = run_cli("backends")
    assert r.code == 0 and "acme" in r.out and "broken" in r.out
    listed = BackendList.from_dict(json.loads(run_cli("backends", "--json").out))
    assert {b.name for b in listed.backends if b.broken} == {"acme", "notabackend"}


def test_missing_first_party_entry_point_is_named(entry_points) -> None:
    entry_points(drop=("tvm",))
    assert "tvm" not in list_backends()
    assert "missing from the installed package metadata" in broken_backends()["tvm"]
    with pytest.raises(UserError, match=r"re-install tap-edge"):
        get_backend("tvm")


def test_a_broken_module_of_our_own_fails_loudly(entry_points) -> None:
    entry_points(extra=(_ep("ours", "tap_edge.backends.no_such_backend_module:Nothing"),))
    with pytest.raises(ModuleNotFoundError, match="no_such_backend_module"):
        list_backends()


def test_cli_backends_json_is_a_backend_list(run_cli) -> None:
    r = run_cli("backends", "--json")
    assert r.code == 0, r.err
    listed = BackendList.from_dict(json.loads(r.out))
    rows = {b.name: b for b in listed.backends}
    assert set(FIRST_PARTY) <= set(rows)
    assert rows["tvm"].options == ["--tune-trials", "--tune-db"] and rows["onnxruntime"].options == ["--linear-int4"]
    only = BackendList.from_dict(json.loads(run_cli("backends", "onnx*", "--json").out))
    assert [b.name for b in only.backends] == ["onnxruntime"]


# ---- every backend -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_backends())
def test_backend_has_the_plugin_shape(name: str) -> None:
    b = get_backend(name)
    cls = type(b)
    assert isinstance(b, Backend) and b.name == name and b.runtimes and b.kinds and b.suffix and b.description
    assert (sys.modules[cls.__module__].__doc__ or "").strip(), "a backend file begins with its docstring"
    for method in ("build", "outputs", "child_measure"):
        assert getattr(cls, method) is not getattr(Backend, method), f"{name} does not implement {method}"
    assert issubclass(b.options_class, BackendOptions) and b.options_class is not BackendOptions
    assert set(b.options_class.FLAG_HELP) <= {f.name for f in fields(b.options_class)}
    assert b.options_from_flags() == b.options_class()  # no flag given: the defaults, which are valid
    assert b.check_options(None) == b.options_class()


@pytest.mark.parametrize("name", list_backends())
def test_a_flag_of_another_backend_is_one_line_naming_it(name: str) -> None:
    own = {f.name for f in fields(get_backend(name).options_class)}
    for other in list_backends():
        for option in fields(get_backend(other).options_class):
            if option.name in own:
                continue
            with pytest.raises(UserError, match=f"backend '{name}'") as ei:
                get_backend(name).options_from_flags(**{option.name: option.default or 1})
            assert f"pass --backend {other}" in ei.value.hint and "\n" not in str(ei.value)


TINY_MODEL_PY = '''import torch
from torch import nn



class Tiny(nn.Module):
    tap_edge_preprocess = {"input_size": (3, 16, 16), "resize": 16, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(torch.relu(self.conv(x)))))


def tiny() -> nn.Module:
    return Tiny()
'''


@pytest.mark.slow
@pytest.mark.parametrize("name", list_backends())
def test_every_backend_compiles_and_measures(name: str, tmp_path: Path) -> None:
    b = get_backend(name)
    if not b.available() or b.missing(measure=True):
        pytest.skip(b.install_hint())
    # a model file, so that measure can load the model again for its prediction (a vela artifact is judged on the
    # device it was compiled for)
    (tmp_path / "tiny_model.py").write_text(TINY_MODEL_PY)
    lm = load_model(f"{tmp_path / 'tiny_model.py'}:tiny")
    xs = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    device = get_device("corstone-300") if name == "vela" else None  # Vela compiles for a device's Ethos-U
    art = b.compile(lm, load_graph(lm), BitAssignment.parse("w8a8"), tmp_path, calib=xs, device=device)
    assert art.path.exists() and art.path.name.endswith(b.suffix)
    assert Manifest.from_dict(json.loads((tmp_path / f"{art.path.name}.manifest.json").read_text())) == art.manifest
    assert art.manifest.agreement.n == 8 and art.manifest.agreement.top1_agreement >= 0.75
    report = measure_report(art.path, runs=2, warmup=1)
    assert MeasureReport.from_dict(report.to_dict()) == report
    assert report.headline("flash") is not None
    if name == "vela":  # no NPU here: Vela's own figures (SRAM, cycle estimate) instead of timed runs
        assert report.vela is not None and report.vela.sram_bytes > 0 and report.vela.npu_ms is not None
    else:
        assert report.latency.runs == 2
    if name == "vela":
        assert report.device == "corstone-300" and report.verdict == "FITS", report.problems
    else:
        assert report.verdict == "MEASURED", report.problems  # no device given
