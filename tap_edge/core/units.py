# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""Byte sizes as people write them: ``524288``, ``"512KB"``, ``"1.5 MiB"``.

Embedded datasheets use binary units, so KB = KiB = 1024 bytes (and MB = MiB, GB = GiB); this is documented in
the README. Counts (BOPs) use SI prefixes instead: ``5G`` = 5e9.
"""

from __future__ import annotations

import math
import re

from tap_edge.core.errors import UserError

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GIB": 1024**3}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_bytes(value: int | float | str, what: str = "size") -> int:
    """Return a byte count; raises UserError naming ``what`` for anything unreadable or negative."""
    if isinstance(value, bool):
        raise UserError(f"{what}: expected a byte size, got {value!r}", "write e.g. 524288 or '512KB'")
    if isinstance(value, int | float):
        if value < 0:
            raise UserError(f"{what}: size must not be negative, got {value}")
        return int(value)
    m = _SIZE.match(str(value).replace("_", ""))
    if not m or m.group(2).upper() not in _UNITS:
        raise UserError(f"{what}: cannot read size {value!r}", "write e.g. 524288, '512KB', '1.5MB' (binary units)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def fmt_bytes(n: int | float) -> str:
    """Human-readable binary size, e.g. ``512.0 KiB``."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} GiB"


def parse_count(value: int | float | str, what: str = "count") -> int:
    """``12G`` / ``350M`` / ``5e8`` -> an integer (SI prefixes: BOPs are counted in powers of ten)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0 or not math.isfinite(value):
            raise UserError(f"{what}: must be a finite, non-negative number, got {value}")
        return int(value)
    s = str(value).strip().upper().replace("_", "")
    mult = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(s[-1:], 1.0)
    num = s[:-1] if s[-1:] in "KMGT" and s else s
    try:
        v = float(num) * mult
    except ValueError:
        raise UserError(f"{what}: cannot read {value!r}", "write e.g. 5e9, 5G or 350M") from None
    if v < 0 or not math.isfinite(v):
        raise UserError(f"{what}: must be a finite, non-negative number, got {value!r}")
    return int(v)


def pct(part: float, whole: float, digits: int = 2) -> float | None:
    """``part`` as a percentage of ``whole``; None when ``whole`` is not positive (nothing to compare with)."""
    return round(100.0 * part / whole, digits) if whole > 0 else None


def align(n: int, alignment: int) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return (n + alignment - 1) // alignment * alignment
