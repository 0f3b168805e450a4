"""The README's API script runs end to end and returns the typed documents for a module and its ONNX file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tap_edge.documents import CheckReport, EvalResult, Manifest, MeasureReport, Plan

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "api_example.py"


def test_api_example(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("api_example", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    docs = module.main(["--out", str(tmp_path)])
    kinds = {"check": CheckReport, "plan": Plan, "eval": EvalResult, "manifest": Manifest, "measure": MeasureReport}
    for route in ("module", "onnx"):
        for step, kind in kinds.items():
            assert isinstance(docs[route][step], kind), (route, step)
        assert docs[route]["measure"].verdict == "FITS"
    widths = [{k: (v.w, v.a) for k, v in docs[r]["plan"].layers.items()} for r in ("module", "onnx")]
    assert widths[0] == widths[1] and len(set(widths[0].values())) > 1
