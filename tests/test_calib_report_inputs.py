"""Two bad inputs outside the search (issue 16, item 9/10): a calibration image with more pixels than Pillow
decodes safely is one line naming the file, and ``tap-edge report`` never replaces an existing page when its
input is bad or the write fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tap_edge.core.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_400_megapixel_png_in_the_calibration_folder_is_one_line(tmp_path: Path) -> None:
    from PIL import Image

    from tap_edge.graph.models import Preprocess
    from tap_edge.plan.calib import load_images

    Image.new("1", (20_000, 20_000)).save(tmp_path / "huge.png")  # 400 Mpixel, a few kB on disk
    with pytest.raises(UserError) as e:
        load_images(tmp_path, Preprocess((3, 32, 32), 32))
    msg = str(e.value)
    assert "huge.png: image too large to read" in msg and "400000000 pixels" in msg and "\n" not in msg


def test_report_with_a_bad_input_keeps_the_existing_page(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "report.html"
    out.write_text("OLD")
    bad = json.loads((FIXTURES / "check_resnet8_w4a8.json").read_text())
    bad["devices"][0]["flash_bytes"] = "many"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = run_cli("report", str(tmp_path / "bad.json"), "--out", str(out), "-q")
    assert r.code == 2 and "flash_bytes" in r.err and len(r.err.strip().splitlines()) == 1
    assert out.read_text() == "OLD"


def test_a_failed_write_keeps_the_existing_page(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up half way through the page: the existing report stays whole, no temporary file stays."""
    out = tmp_path / "report.html"
    out.write_text("OLD")
    real = Path.write_text

    def half_then_full(self: Path, data: str, *args: object, **kw: object) -> int:
        real(self, data[:len(data) // 2], *args, **kw)  # type: ignore[arg-type]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    r = run_cli("report", str(FIXTURES / "check_resnet8_w4a8.json"), "--out", str(out), "-q")
    monkeypatch.undo()
    assert r.code == 2 and "No space left on device" in r.err and len(r.err.strip().splitlines()) == 1
    assert out.read_text() == "OLD"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    r = run_cli("report", str(FIXTURES / "check_resnet8_w4a8.json"), "--out", str(tmp_path), "-q")
    assert r.code == 2 and "cannot write the report" in r.err
