"""The measurement child's memory figures where /proc is missing (macOS, Windows): psutil and rusage."""

from __future__ import annotations

from pathlib import Path

import pytest

from tap_edge.backends import measure


def test_rss_and_peak_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    with_proc = measure.vm_rss(), measure.vm_hwm()
    real_read = Path.read_text

    def no_proc(self: Path, *args: object, **kwargs: object) -> str:
        if str(self).startswith("/proc/"):
            raise FileNotFoundError(self)
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_proc)
    rss, peak = measure.vm_rss(), measure.vm_hwm()
    assert rss > 0 and abs(rss - with_proc[0]) < 0.25 * with_proc[0]  # psutil's RSS, the same process
    assert peak >= rss * 0.9 and abs(peak - with_proc[1]) < 0.25 * with_proc[1]  # ru_maxrss in bytes
