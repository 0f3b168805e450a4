# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""Where tap-edge keeps its caches: ``$XDG_CACHE_HOME/tap-edge/<kind>`` (default ``~/.cache/tap-edge/<kind>``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The cache folder of one kind (``graphs``, ``evolve``, ``tvm-tuning``, ``models``); not created here."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tap-edge" / kind
