"""Locate real model files that PyPI packages ship (used by the demo and tests; nothing is downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tap_edge.core.errors import UserError


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{name}' is not installed", f"pip install {name.replace('_', '-')}")
    return Path(spec.submodule_search_locations[0])


def wakeword_tflite(name: str = "okay_nabu") -> Path:
    """An int8 microWakeWord model (streaming DS-CNN-like, ~80 KB) shipped by the PyPI package pymicro-wakeword."""
    p = _package_dir("pymicro_wakeword") / "models" / f"{name}.tflite"
    if not p.exists():
        raise UserError(f"{p}: wake-word model not found", "reinstall pymicro-wakeword")
    return p
