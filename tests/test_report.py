"""The HTML report: renders from recorded results of every kind (tests/fixtures), is self-contained, says why
a device does not fit, tolerates missing optional keys, and renders in headless Chromium (sections present,
every plot decoded at its expected size, a screenshot that is not blank).

The check fixtures are real ``tap-edge check --json`` outputs; the plan, eval, measure and evolve fixtures are
hand-made in the formats those commands write (their ``_note`` key says so)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tap_edge.core.errors import UserError
from tap_edge.report.page import SECTIONS, build_report, external_refs, pick_memory_device

FIXTURES = Path(__file__).parent / "fixtures"
SECTION_IDS = [sid for sid, _ in SECTIONS]
IMG = re.compile(
    r'<img class="plot" data-plot="([^"]+)" data-natural-width="(\d+)" data-natural-height="(\d+)"'
    r'[^>]*src="data:image/png;base64,([^"]+)"'
)


def _load(pattern: str) -> list[dict[str, Any]]:
    files = sorted(FIXTURES.glob(pattern))
    assert files, f"no fixture matches {pattern}"
    return [json.loads(f.read_text()) for f in files]


@pytest.fixture(scope="module")
def everything() -> list[dict[str, Any]]:
    return _load("*.json")


@pytest.fixture(scope="module")
def full_page(everything: list[dict[str, Any]]) -> str:
    return build_report(everything)


def _sections(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)" class="report-section">', page)


def _plots(page: str) -> list[tuple[str, int, int, bytes]]:
    return [(m[0], int(m[1]), int(m[2]), base64.b64decode(m[3])) for m in IMG.findall(page)]


# ---- each kind renders its own section -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "sections", "plots"),
    [
        ("check_*.json", ["fit-matrix", "memory"], {"fit-overview": 2, "memory-timeline": 2}),
        ("plan_*.json", ["bits", "accuracy"], {"bits-per-layer": 1, "accuracy-vs-size": 1}),
        ("eval_*.json", ["accuracy"], {}),
        ("measure_*.json", ["measured"], {"predicted-vs-measured": 1}),
        ("evolve_*.json", ["search"], {"search-progress": 1}),
    ],
)
def test_each_kind_renders_only_its_sections(
    pattern: str, sections: list[str], plots: dict[str, int]
) -> None:
    page = build_report(_load(pattern))
    assert _sections(page) == sections
    got: dict[str, int] = {}
    for name, *_ in _plots(page):
        got[name] = got.get(name, 0) + 1
    assert got == plots
    assert 'class="render-error"' not in page
    assert page.count('<p class="how"><b>How to read this:</b>') == len(sections)


def test_all_kinds_give_every_section_in_order(full_page: str) -> None:
    assert _sections(full_page) == SECTION_IDS
    for sid, title in SECTIONS:
        assert f'<a href="#{sid}">{title}</a>' in full_page
    assert 'class="render-error"' not in full_page


def test_no_external_url(full_page: str) -> None:
    assert external_refs(full_page) == []
    for attr in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", full_page, re.I):
        assert not attr.lower().startswith(("http://", "https://", "//")), attr
    for ref in re.findall(r"url\(\s*['\"]?([^'\")]*)", full_page, re.I):
        assert not ref.lower().startswith(("http://", "https://", "//")), ref
    assert not re.search(r"<(script|link|iframe)[^>]+(src|href)=", full_page, re.I)
    assert "default-src 'none'" in full_page  # the browser itself refuses to fetch anything


def test_external_refs_catches_fetches() -> None:
    page = (
        '<html><head><style>body{background:url("https://x.example/a.png")} @import "b.css";</style>'
        '<link rel="stylesheet" href="//cdn.example/c.css"></head><body><a href="#fit">in-page</a>'
        '<img src="data:image/png;base64,AAAA"><img src="http://x.example/i.png">'
        '<pre>src = "http://text.only"</pre><div style="background: url(d.png)"></div></body></html>'
    )
    assert sorted(external_refs(page)) == sorted(
        ["https://x.example/a.png", "b.css", "//cdn.example/c.css", "http://x.example/i.png", "d.png"]
    )


def test_plots_are_real_images_of_their_stated_size(full_page: str) -> None:
    plots = _plots(full_page)
    assert len(plots) == 8
    for name, w, h, png in plots:
        im = Image.open(io.BytesIO(png))
        assert im.format == "PNG" and im.size == (w, h), name
        assert w >= 800 and h >= 300, (name, w, h)
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000) or []
        assert len(colours) > 20, f"{name} looks blank"


def test_oom_device_says_which_memory_at_which_op_and_by_how_much() -> None:
    page = build_report(_load("check_efficientnet_lite0_w8a8.json"))
    why = page[page.index("do not fit</h4>") :]
    items = {re.search(r"<b>([^<]+)</b>", li).group(1): li for li in why.split("<li>")[1:]}
    nano = items["arduino-nano-33-ble-sense"]
    assert "SRAM (RAM) overflows by <b>1.3 MiB</b> at op <code>blocks.1.0.conv_dw</code>" in nano
    assert "needs 1.4 MiB, 176.0 KiB free" in nano
    assert "Flash (FLASH) overflows by <b>3.8 MiB</b>" in nano
    esp = items["esp32-s3"]
    assert "SRAM (INTERNAL_DRAM) overflows by <b>1.2 MiB</b>" in esp and "Flash" not in esp
    assert "×8.4" in page  # the SRAM bar of the Nano: 8.4 times what it has


def test_unsupported_ops_are_grouped() -> None:
    page = build_report(_load("check_resnet8_w4a8.json"))
    assert "4-bit weights on conv not supported by edgetpu (supports [8]): 9 op(s)" in page
    assert "+5 more" in page


def test_memory_plot_device_choice() -> None:
    lite0, r8 = _load("check_*.json")
    assert pick_memory_device(lite0)["device"] == "coral-edgetpu"  # the tightest SRAM among those that fit
    assert pick_memory_device(r8)["device"] == "stm32f446re"
    none_fit = {**lite0, "devices": [d for d in lite0["devices"] if d["verdict"] != "FITS"]}
    assert pick_memory_device(none_fit)["device"] == none_fit["devices"][0]["device"]
    assert pick_memory_device(lite0, "stm32h7a3")["device"] == "stm32h7a3"
    page = build_report([lite0], device="stm32h7a3")
    assert "Limit drawn: <b>stm32h7a3</b>" in page and "chosen with --device" in page
    with pytest.raises(UserError, match="not in the check results"):
        build_report([lite0], device="no-such-board")


def test_tensors_live_at_peak_listed(full_page: str) -> None:
    assert "Tensors live at the peak (<code>blocks.1.0.conv_dw</code>)" in full_page
    assert "<code>blocks_1_0_bn1</code>" in full_page


def test_untrusted_text_is_escaped(full_page: str) -> None:
    assert "<script>alert(1)</script>" not in full_page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in full_page
    assert '<pre class="code">def proxy(stats, bits):' in full_page


def test_predicted_vs_measured_table(full_page: str) -> None:
    sec = full_page[full_page.index('id="measured"') : full_page.index('id="search"')]
    assert '<span class="bad">+16.7%</span>' in sec  # onnxruntime SRAM, beyond 5%
    assert '<span class="good">+1.9%</span>' in sec  # TFLM arena vs prediction (derived: no error_pct given)
    assert "tflite-micro interpreter, arena_used_bytes()" in sec  # how the figure was measured


def test_tolerates_missing_optional_keys() -> None:
    minimal = [
        {
            "schema": "tap-edge/check-report",
            "devices": [
                {"device": "a", "verdict": "OOM", "peak_sram_bytes": 2000, "sram_limit_bytes": 1000},
                {"device": "b", "verdict": "FITS"},
            ],
            "memory_timeline": {"ops": ["x", "y", "z"], "live_bytes": [100, 2000, 50]},
        },
        {"schema": "tap-edge/check-report", "devices": []},
        {"schema": "tap-edge/plan", "layers": {"conv1": {"w": 4, "a": 8}, "fc": {"w": 8}}},
        {
            "schema": "tap-edge/plan",
            "model": "m",
            "layers": {"c": {"w": 4, "a": 8, "op": "c"}},
            "proxy_scores": {"c": {"w4a8": 0.5}},
            "sweep": [{"flash_bytes": 1000, "objective": 0.2}, {"flash_bytes": 2000, "objective": 0.1}],
        },
        {"schema": "tap-edge/eval", "top1": 0.5},
        {"schema": "tap-edge/measure", "backend": "x", "latency_ms": 3.0},
        {"schema": "tap-edge/measure", "backend": "y"},
        {"schema": "tap-edge/evolve-run", "generations": [{"gen": 0}, {"best_fitness": 0.1}]},
        {"schema": "tap-edge/evolve-run"},
    ]
    page = build_report(minimal)
    assert 'class="render-error"' not in page
    assert _sections(page) == SECTION_IDS
    assert "SRAM (?) overflows by <b>1000 B</b>" in page
    assert external_refs(page) == []


def test_nothing_to_show_and_bad_input() -> None:
    assert "None of the results has data" in build_report([])
    with pytest.raises(UserError, match="unknown schema"):
        build_report([{"schema": "something/else"}])
    with pytest.raises(UserError, match="unknown schema"):
        build_report([["not", "a", "dict"]])  # type: ignore[list-item]


# ---- the command line ------------------------------------------------------------------------------------
def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from tap_edge.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    return int(e.value.code or 0), capsys.readouterr().err


def test_cli_report_writes_one_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "report.html"
    files = [str(p) for p in sorted(FIXTURES.glob("*.json"))]
    rc, err = _run(["report", *files, "--out", str(out)], capsys)
    assert rc == 0 and out.exists() and "report written to" in err
    assert _sections(out.read_text()) == SECTION_IDS


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "the file is empty"),
        ('{"a": ', "not valid JSON (line 1"),
        ("[1, 2]", "expected a JSON object"),
        ('{"schema": "other"}', "not a tap-edge document"),
    ],
)
def test_cli_report_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    src = tmp_path / "result.json"
    if content is not None:
        src.write_text(content)
    rc, err = _run(["report", str(src), "--out", str(tmp_path / "r.html")], capsys)
    assert rc == 2
    assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_cli_report_without_files(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(["report"], capsys)
    assert rc == 2 and "no result files given" in err


def test_check_html_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "check.html"
    rc, _ = _run(
        [
            "check",
            "resnet8",
            "-d",
            "stm32f446re",
            "-d",
            "nrf52840",
            "--bits",
            "w4a8",
            "-q",
            "--html",
            str(out),
        ],
        capsys,
    )
    assert rc == 0
    page = out.read_text()
    assert _sections(page) == ["fit-matrix", "memory"] and "stm32f446re" in page


def test_write_html_if_requested(tmp_path: Path) -> None:
    from tap_edge.report import write_html_if_requested

    assert write_html_if_requested(_load("check_resnet8_w4a8.json")[0], None) is None
    out = write_html_if_requested(_load("evolve_*.json")[0], tmp_path / "e.html")
    assert out == tmp_path / "e.html" and _sections(out.read_text()) == ["search"]


# ---- headless Chromium ------------------------------------------------------------------------------------
_CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
_PROBE = """<pre id="report-probe"></pre><script>
window.addEventListener("load", () => {
  const imgs = [...document.querySelectorAll("img.plot")].map(i => ({
    plot: i.dataset.plot, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
    want_w: +i.dataset.naturalWidth, want_h: +i.dataset.naturalHeight,
    shown_w: i.getBoundingClientRect().width}));
  const sections = [...document.querySelectorAll("section.report-section")].map(s => ({
    id: s.id, title: s.querySelector("h2").textContent, height: s.getBoundingClientRect().height}));
  document.getElementById("report-probe").textContent = JSON.stringify({imgs, sections});
});
</script>"""


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # a fresh profile for every start
    cmd = [
        _CHROMIUM or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp)}
    )


@pytest.mark.skipif(
    _CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)"
)
def test_report_in_headless_chromium(tmp_path: Path, full_page: str) -> None:
    # 1. The DOM after load: every section is there and every plot decoded at the size it says it has.
    probe = tmp_path / "probe.html"
    probe.write_text(full_page.replace("</body>", _PROBE + "</body>"))
    res = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="report-probe">(.*?)</pre>', res.stdout, re.S)
    assert m and m.group(1), f"no probe output; chromium said: {res.stderr[-2000:]}"
    seen = json.loads(html.unescape(m.group(1)))
    assert [s["id"] for s in seen["sections"]] == SECTION_IDS
    assert [s["title"] for s in seen["sections"]] == [t for _, t in SECTIONS]
    assert all(s["height"] > 100 for s in seen["sections"])
    assert len(seen["imgs"]) == len(_plots(full_page)) == 8
    for img in seen["imgs"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
        assert (img["w"], img["h"]) == (img["want_w"], img["want_h"]), img
        assert img["shown_w"] >= 600, img  # drawn at a legible size, not shrunk to a thumbnail

    # 2. A screenshot of the report as it is (no probe): the right size and not blank.
    page = tmp_path / "report.html"
    page.write_text(full_page)
    shot = tmp_path / "report.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri())
    assert shot.exists(), f"no screenshot; chromium said: {res.stderr[-2000:]}"
    im = Image.open(shot).convert("L")
    assert im.size == (1400, 3000)
    dark = sum(im.histogram()[:200]) / (im.size[0] * im.size[1])
    assert dark > 0.03, f"screenshot looks blank ({dark:.1%} non-white pixels)"
    if os.environ.get("TAP_EDGE_SCREENSHOT_DIR"):  # keep it for a human (e.g. as a CI artifact)
        shutil.copy(shot, Path(os.environ["TAP_EDGE_SCREENSHOT_DIR"]) / "report.png")
