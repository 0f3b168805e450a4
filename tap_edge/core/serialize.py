# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""JSON for results that may hold numpy scalars and arrays (every result file and printed report uses it)."""

from __future__ import annotations

from typing import Any


def json_default(o: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars -> Python numbers, arrays -> lists, else str."""
    item = getattr(o, "item", None)
    if callable(item) and getattr(o, "ndim", None) == 0:
        return item()
    tolist = getattr(o, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(o)
