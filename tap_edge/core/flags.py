# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""Environment flags, each declared once (read at call time, so tests and users can set them late).

- ``TAP_EDGE_DEBUG=1``: an internal error prints its traceback instead of one line.
- ``TAP_EDGE_NO_CACHE=1``: no graph cache (every PyTorch model is traced again).
"""

from __future__ import annotations

import os


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def debug() -> bool:
    return _flag("TAP_EDGE_DEBUG")


def no_cache() -> bool:
    return _flag("TAP_EDGE_NO_CACHE")
