# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""Byte sizes as people write them: ``524288``, ``"512KB"``, ``"1.5 MiB"``.

Embedded datasheets use binary units, so KB = KiB = 1024 bytes (and MB = MiB, GB = GiB); this is documented in
the README. Also parses the ``--flash-like w4`` style is done elsewhere.
"""

from __future__ import annotations

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
