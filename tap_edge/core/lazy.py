# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""Lazy package faces (PEP 562): a package lists the names it offers and the module each lives in; a name is
imported on first use, so ``import tap_edge`` stays cheap and ``tap-edge check`` of a file loads no torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__, __dir__ = lazy_exports(__name__, {"check": "tap_edge.fit.checker", ...})``; a target
    ``"module:attr"`` offers ``module.attr`` under another name."""

    def __getattr__(name: str) -> Any:
        try:
            module, _, attr = exports[name].partition(":")
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), attr or name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
