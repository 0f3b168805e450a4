"""CLI sub-commands beyond ``check`` and ``devices``: each module here registers its commands on
``tap_edge.cli.app`` when imported (``@app.command("plan")``); ``tap_edge.cli`` imports them all."""

from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
