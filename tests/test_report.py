"""The HTML report, rendered from real documents (tests/fixtures, made by tools/make_report_fixtures.py with the
real commands): every fixture validates with its document class, every section renders from its fixtures, the
predicted-vs-measured section of a demo-like set has a number in every cell and its plot, flags read as
sentences, the check and plan blocks show the figures the CLI prints, the page is self-contained, bad input to
``tap-edge report`` is one line, and the page renders in headless Chromium."""

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

import numpy as np
import pytest
from html_refs import external_refs
from PIL import Image

from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes
from tap_edge.documents import (
    BackendList,
    CheckReport,
    DeviceList,
    Document,
    DocumentError,
    EvalResult,
    LatencyStats,
    Manifest,
    MeasureReport,
    ModelSummary,
    Plan,
    RunSummary,
    read_document,
)
from tap_edge.report import build_report, load_result, write_html_if_requested
from tap_edge.report.memory import pick_memory_device
from tap_edge.report.page import SECTIONS

FIXTURES = Path(__file__).parent / "fixtures"
SECTION_IDS = [sid for sid, _ in SECTIONS]
#: The document class of a fixture, by the first word of its file name.
CLASS_OF_PREFIX: dict[str, type[Document]] = {
    "check": CheckReport, "plan": Plan, "eval": EvalResult, "measure": MeasureReport, "evolve": RunSummary,
    "manifest": Manifest, "devices": DeviceList, "backends": BackendList}
#: The fixtures the report has a section for (manifests and listings are samples for tests/test_documents.py).
REPORTED = sorted(p for p in FIXTURES.glob("*.json")
                  if p.stem.split("_")[0] in ("check", "plan", "eval", "measure", "evolve"))
IMG = re.compile(r'<img class="plot" data-plot="([^"]+)" data-natural-width="(\d+)" data-natural-height="(\d+)"'
                 r'[^>]*src="data:image/png;base64,([^"]+)"')
TAG = re.compile(r"<[^>]+>")


def _docs(pattern: str) -> list[Document]:
    files = sorted(FIXTURES.glob(pattern))
    assert files, f"no fixture matches {pattern}"
    return [read_document(f) for f in files]


def _one(name: str) -> Document:
    return read_document(FIXTURES / f"{name}.json")


@pytest.fixture(scope="module")
def everything() -> list[Document]:
    return [read_document(p) for p in REPORTED]


@pytest.fixture(scope="module")
def full_page(everything: list[Document]) -> str:
    return build_report(everything)


@pytest.fixture(scope="module")
def demo() -> list[Document]:
    """What ``make demo`` hands the report: the check, the plan and its eval, the plan's ONNX Runtime run and
    resnet8's TFLite Micro run."""
    return [_one("check_efficientnet_lite0_w8a8"), _one("plan_efficientnet_lite0_raspberry-pi-5"),
            _one("eval_efficientnet_lite0_plan"), _one("measure_efficientnet_lite0_plan_onnxruntime"),
            _one("measure_resnet8_tflite")]


def _sections(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)" class="report-section">', page)


def _section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}"')
    return page[start:page.index("</section>", start)]


def _plots(page: str) -> list[tuple[str, int, int, bytes]]:
    return [(m[0], int(m[1]), int(m[2]), base64.b64decode(m[3])) for m in IMG.findall(page)]


def _words(cell: str) -> str:
    """The text of a cell, tags removed, whitespace collapsed."""
    return " ".join(html.unescape(TAG.sub(" ", cell)).split())


def _rows(table_html: str) -> list[list[str]]:
    """The body rows of one table as lists of cell HTML."""
    body = table_html[table_html.index("<tbody>"):table_html.index("</tbody>")]
    return [re.findall(r"<td>(.*?)</td>", r, re.S) for r in body.split("<tr>")[1:]]


def _table(page: str, cls: str, after: str = "") -> str:
    start = page.index(f'<table class="{cls}">', page.index(after) if after else 0)
    return page[start:page.index("</table>", start)]


# ---- the fixtures are real documents -------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_every_fixture_validates_with_its_document_class(path: Path) -> None:
    cls = CLASS_OF_PREFIX[path.stem.split("_")[0]]
    data = json.loads(path.read_text())
    doc = cls.from_dict(data, path.name)
    assert type(doc) is cls and cls.from_dict(doc.to_dict()) == doc  # round trip
    assert "_note" not in data  # made by the commands, not by hand


def test_fixtures_readme_names_the_command_of_every_fixture() -> None:
    readme = (FIXTURES / "README.md").read_text()
    for path in FIXTURES.glob("*.json"):
        assert f"- `{path.name}`\n  - `tap-edge " in readme, path.name


# ---- each section from its fixtures ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "sections", "plots"),
    [
        ("check_*.json", ["fit-matrix", "memory"], {"fit-overview": 2, "memory-timeline": 2}),
        ("plan_*.json", ["bits", "accuracy"], {"bits-per-layer": 2, "accuracy-vs-size": 1}),
        ("eval_*.json", ["accuracy"], {"accuracy-vs-size": 1}),
        ("measure_*.json", ["measured"], {"predicted-vs-measured": 1}),
        ("evolve_*.json", ["search"], {"search-progress": 1}),
    ],
)
def test_each_kind_renders_only_its_sections(pattern: str, sections: list[str], plots: dict[str, int]) -> None:
    page = build_report(_docs(pattern))
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


def test_plots_are_real_images_of_their_stated_size(full_page: str) -> None:
    plots = _plots(full_page)
    assert len(plots) == 10  # fit and memory per check, bits per plan, accuracy x2, measured, search
    for name, w, h, png in plots:
        im = Image.open(io.BytesIO(png))
        assert im.format == "PNG" and im.size == (w, h), name
        assert w >= 800 and h >= 300, (name, w, h)
        assert len(im.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 20, f"{name} looks blank"


def test_no_external_url(full_page: str) -> None:
    assert external_refs(full_page) == []
    assert not re.search(r"<(script|link|iframe)[^>]+(src|href)=", full_page, re.I)
    assert "default-src 'none'" in full_page  # the browser itself refuses to fetch anything


def test_external_refs_catches_fetches() -> None:
    page = ('<html><head><style>body{background:url("https://x.example/a.png")} @import "b.css";</style>'
            '<link rel="stylesheet" href="//cdn.example/c.css"></head><body><a href="#fit">in-page</a>'
            '<img src="data:image/png;base64,AAAA"><img src="http://x.example/i.png">'
            '<pre>src = "http://text.only"</pre><div style="background: url(d.png)"></div></body></html>')
    assert sorted(external_refs(page)) == sorted(
        ["https://x.example/a.png", "b.css", "//cdn.example/c.css", "http://x.example/i.png", "d.png"])


# ---- predicted vs measured -------------------------------------------------------------------------------------
def test_demo_predicted_vs_measured_has_a_number_in_every_cell_and_its_plot(demo: list[Document]) -> None:
    page = build_report(demo)
    sec = _section(page, "measured")
    rows = _rows(_table(sec, "measured"))
    measures = [d for d in demo if isinstance(d, MeasureReport)]
    assert len(rows) == len(measures) == 2
    size, error = r"[\d,]+ B", r"[+-]\d+\.\d%( \(not judged\))?"
    number = {1: r"\d+(\.\d+)? / \d+(\.\d+)?", 2: size, 3: size, 4: error, 5: size, 6: size, 7: error}
    for row, m in zip(rows, measures, strict=True):
        for i, pattern in number.items():
            assert re.fullmatch(pattern, _words(row[i])), (m.backend, i, row[i])
        sram, flash = m.headline("sram"), m.headline("flash")
        assert sram is not None and flash is not None
        assert row[2] == f"{sram.predicted_bytes:,} B" and row[3] == f"{sram.measured_bytes:,} B"
        assert row[5] == f"{flash.predicted_bytes:,} B" and row[6] == f"{flash.measured_bytes:,} B"
        assert f"{m.latency.median_ms:.3g} / {m.latency.p90_ms:.3g}" == row[1]
    plots = [p for p in _plots(sec) if p[0] == "predicted-vs-measured"]
    assert len(plots) == 1 and Image.open(io.BytesIO(plots[0][3])).size == plots[0][1:3]
    every = _rows(_table(sec, "", after="Every comparison"))
    assert len(every) == sum(len(m.comparisons) for m in measures)
    assert all(re.search(r"\d", c) for r in every for c in r[3:6])


def test_tflm_arena_comparison_is_judged_and_ort_rss_is_not() -> None:
    ort, tflm = _one("measure_resnet8_onnxruntime"), _one("measure_resnet8_tflite")
    sec = _section(build_report([ort, tflm]), "measured")
    arena = tflm.headline("sram")
    assert arena is not None and arena.gated
    cls = "bad" if abs(arena.error_pct) > tflm.tolerance_pct else "good"
    assert f'<span class="{cls}">{arena.error_pct:+.1f}%</span>' in sec
    ungated = [c for c in ort.comparisons if not c.gated]
    assert ungated and all(f"{c.error_pct:+.1f}% (not judged)" in sec for c in ungated)


def test_flags_and_problems_are_sentences() -> None:
    tflm = _one("measure_resnet8_tflite")
    arena = tflm.headline("sram")
    measured = arena.predicted_bytes + arena.predicted_bytes // 10  # 10% over: beyond the 5% tolerance
    err = round(100 * (measured - arena.predicted_bytes) / arena.predicted_bytes, 2)
    flagged = arena.model_copy(update={"measured_bytes": measured, "error_pct": err})
    doc = tflm.model_copy(update={
        "comparisons": [flagged if c is arena else c for c in tflm.comparisons], "flags": [flagged],
        "verdict": "OOM", "problems": ["measured: SRAM (AXI_SRAM) over by 1.0 KiB (TFLite Micro arena)"]})
    sec = _section(build_report([doc]), "measured")
    sentence = (f"{arena.figure}: predicted {arena.predicted_bytes:,} B, measured {measured:,} B ({err:+.1f}%), "
                f"over the 5% tolerance")
    assert sentence in html.unescape(sec)
    assert "measured: SRAM (AXI_SRAM) over by 1.0 KiB (TFLite Micro arena)" in sec
    assert "{'" not in sec and "'figure'" not in sec and "predicted_bytes" not in sec  # never a raw dict


# ---- the check and plan blocks show the CLI's figures ---------------------------------------------------------
def test_check_block_shows_the_figures_tap_edge_check_prints(run_cli) -> None:
    from tap_edge.cli.check import short_bytes
    from tap_edge.report.fit import sram_view

    devices = ["stm32f446re", "nrf52840", "esp32-s3", "raspberry-pi-5"]
    args = ["check", "resnet8", *[x for d in devices for x in ("-d", d)], "--bits", "w4a8"]
    r = run_cli(*args)
    assert r.code in (0, 1), r.err
    table_rows = {line.split()[0].rstrip("*"): line for line in r.out.splitlines()
                  if line.split() and line.split()[0].rstrip("*") in devices}
    report = CheckReport.from_dict(json.loads(run_cli(*args, "--json").out))
    rows = _rows(_table(_section(build_report([report]), "fit-matrix"), "fit"))
    assert len(rows) == len(report.devices) == len(devices)
    for d, row in zip(report.devices, rows, strict=True):
        cli = table_rows[d.device]
        used, limit, margin, pct = sram_view(d)  # a shared memory: arena + weights against its whole size
        assert limit > 0 and d.verdict in cli
        assert f"{short_bytes(d.flash_bytes)} / {short_bytes(d.flash_limit_bytes)}" in cli
        assert f"{short_bytes(used)} / {short_bytes(limit)}" in cli
        assert f"{fmt_bytes(d.flash_bytes)} of {fmt_bytes(d.flash_limit_bytes)}" in row[3]
        assert f"{fmt_bytes(used)} of {fmt_bytes(limit)}" in row[4]
        for m, p, cell in ((d.flash_margin_bytes, d.flash_margin_pct, row[3]), (margin, pct, row[4])):
            shown = f"{fmt_bytes(abs(m))} {'left' if m >= 0 else 'short'} ({p:+.0f}%)"
            assert shown in cell and (f"{p:.0f}%" if m >= 0 else "over") in cli


def test_plan_block_shows_the_figures_tap_edge_plan_prints(run_cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(16):
        np.save(tmp_path / f"x{i:02d}.npy", rng.standard_normal((3, 32, 32)).astype(np.float32))
    out = tmp_path / "out" / "plan.json"
    r = run_cli("plan", "resnet8", "-d", "nrf52840", "--calib", str(tmp_path), "--flash-like", "w5",
                "--act-bits", "8", "--out", str(out))
    assert r.code == 0, r.err
    plan = Plan.read(out)
    cli = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
           for line in r.out.splitlines() if line.count("│") == 5}
    p, b = plan.predicted, plan.budgets
    assert cli["flash"] == [fmt_bytes(p.flash_bytes), fmt_bytes(b.flash_bytes)]
    assert cli["peak SRAM (arena)"] == [fmt_bytes(p.arena_bytes), fmt_bytes(b.sram_bytes)]
    _assert_plan_block(plan)


@pytest.mark.parametrize("name", ["plan_efficientnet_lite0_raspberry-pi-5", "plan_resnet8_nrf52840"])
def test_plan_block_figures_equal_the_plan_document(name: str) -> None:
    _assert_plan_block(_one(name))


def _assert_plan_block(plan: Plan) -> None:
    kv = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", _section(build_report([plan]), "bits")))
    p, b = plan.predicted, plan.budgets
    assert f"{fmt_bytes(p.flash_bytes)} / {fmt_bytes(b.flash_bytes)}" in kv["flash: predicted / budget"]
    arena = kv["peak SRAM (arena): predicted / budget"]
    assert f"{fmt_bytes(p.arena_bytes)} / {fmt_bytes(b.sram_bytes)}" in arena
    assert fmt_bytes(p.weights_bytes) == kv["weights"]


# ---- fit and memory details ------------------------------------------------------------------------------------
def test_oom_device_says_which_memory_at_which_op_and_by_how_much() -> None:
    rep = _one("check_efficientnet_lite0_w8a8")
    page = build_report([rep])
    why = page[page.index("do not fit</h4>"):]
    items = {re.search(r"<b>([^<]+)</b>", li).group(1): li for li in why.split("<li>")[1:]}
    nano = next(d for d in rep.devices if d.device == "arduino-nano-33-ble-sense")
    assert nano.verdict == "OOM" and nano.sram_margin_bytes < 0 and nano.flash_margin_bytes < 0
    li = items[nano.device]
    assert (f"SRAM ({nano.sram_region}) overflows by <b>{fmt_bytes(-nano.sram_margin_bytes)}</b> at op "
            f"<code>{nano.peak_op}</code>") in li
    assert f"needs {fmt_bytes(nano.peak_sram_bytes)}, {fmt_bytes(nano.sram_limit_bytes)} free" in li
    assert f"Flash ({nano.flash_region}) overflows by <b>{fmt_bytes(-nano.flash_margin_bytes)}</b>" in li
    esp = next(d for d in rep.devices if d.device == "esp32-s3")
    assert esp.flash_margin_bytes >= 0 and "SRAM (INTERNAL_DRAM) overflows by" in items["esp32-s3"]
    assert "Flash" not in items["esp32-s3"]
    assert f"×{nano.peak_sram_bytes / nano.sram_limit_bytes:.1f}" in page


def test_unsupported_ops_are_grouped() -> None:
    page = build_report([_one("check_resnet8_w4a8")])
    assert "4-bit weights on conv not supported by edgetpu (supports [8]): 9 op(s)" in page
    assert "+5 more" in page


def test_memory_plot_device_choice() -> None:
    lite0, r8 = _one("check_efficientnet_lite0_w8a8"), _one("check_resnet8_w4a8")
    tightest = min((d for d in lite0.devices if d.verdict == "FITS"), key=lambda d: d.sram_limit_bytes)
    assert pick_memory_device(lite0).device == tightest.device
    assert pick_memory_device(r8).verdict == "FITS"
    none_fit = lite0.model_copy(update={"devices": [d for d in lite0.devices if d.verdict != "FITS"]})
    assert pick_memory_device(none_fit).device == none_fit.devices[0].device
    assert pick_memory_device(lite0, "stm32h7a3").device == "stm32h7a3"
    page = build_report([lite0], device="stm32h7a3")
    assert "Limit drawn: <b>stm32h7a3</b>" in page and "chosen with --device" in page
    with pytest.raises(UserError, match="not in the check results"):
        build_report([lite0], device="no-such-board")


def test_tensors_live_at_peak_listed(full_page: str) -> None:
    lite0 = _one("check_efficientnet_lite0_w8a8")
    dev = pick_memory_device(lite0)
    assert f"Tensors live at the peak (<code>{dev.peak_op}</code>)" in full_page
    assert all(f"<code>{t.tensor}</code>" in full_page for t in dev.live_at_peak)


# ---- accuracy and search ---------------------------------------------------------------------------------------
def test_accuracy_places_the_chosen_plan_among_uniform_widths() -> None:
    evals = _docs("eval_*.json")
    sec = _section(build_report([_one("plan_efficientnet_lite0_raspberry-pi-5"), *evals]), "accuracy")
    assert [p[0] for p in _plots(sec)] == ["accuracy-vs-size"]
    rows = _rows(_table(sec, "narrow", after="Evaluations"))
    assert len(rows) == len(evals)
    for e, row in zip(evals, rows, strict=True):
        assert row[2] == (f"{100 * e.top1:.2f}%" if e.top1 is not None else "–")
        assert row[4] == f"{100 * e.agreement:.2f}%" and row[6] == fmt_bytes(e.model_bytes)


def test_untrusted_text_is_escaped() -> None:
    run = _one("evolve_rw3")
    assert run.best is not None
    evil = run.model_copy(update={"best": run.best.model_copy(update={"reasoning": "<script>alert(1)</script>"})})
    page = build_report([evil])
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<pre class="code">' in page and html.escape(run.best.code.splitlines()[0]) in page


def test_search_block_reads_the_run_summary() -> None:
    run = _one("evolve_rw3")
    sec = _section(build_report([run]), "search")
    assert f"Best program <code>{run.best.id}</code>" in sec
    assert all(s.id in sec for s in run.best.lineage)
    assert len(_rows(_table(sec, "narrow", after="template probabilities after"))) >= 1
    assert f"{run.candidates} written, {run.evaluated} evaluated, {run.valid} valid" in sec


# ---- sparse documents and bad input ----------------------------------------------------------------------------
def test_sparse_documents_render() -> None:
    model = ModelSummary(name="m", frontend="torch", ops=0, params=0, macs=0)
    lite0 = _one("check_efficientnet_lite0_w8a8")
    oom = lite0.devices[0].model_copy(update={"verdict": "OOM", "peak_sram_bytes": 2000, "sram_limit_bytes": 1000,
                                              "sram_margin_bytes": -1000, "sram_region": "RAM", "live_at_peak": []})
    plan = _one("plan_resnet8_nrf52840")
    run = _one("evolve_rw3")
    docs = [CheckReport(model=model, bits="w8a8", all_fit=False, devices=[oom],
                        memory_timeline={"ops": ["x", "y", "z"], "live_bytes": [100, 2000, 50]}),
            CheckReport(model=model, bits="w8a8", all_fit=True, devices=[]),
            plan.model_copy(update={"layers": {}, "sweep": [], "proxy_scores": {}, "calibration": None}),
            EvalResult(model="m", bits="w8a8", n_images=1, calib_samples=1, model_bytes=10, ptq_s=0.1,
                       agreement=1.0, kl=0.0),
            MeasureReport(artifact="a.onnx", backend="onnxruntime", latency=LatencyStats(), artifact_bytes=1),
            run.model_copy(update={"generations": [], "best": None, "tasks": None, "invalid_reasons": {}})]
    page = build_report(docs)
    assert 'class="render-error"' not in page
    assert _sections(page) == ["fit-matrix", "memory", "bits", "accuracy", "measured", "search"]
    assert "SRAM (RAM) overflows by <b>1000 B</b>" in page
    assert "No devices in this result." in page and "This plan lists no layers" in page
    assert "No valid program in this run." in page and "no device given" in page
    assert external_refs(page) == []


def test_nothing_to_show_and_bad_input() -> None:
    assert "None of the results has data" in build_report([])
    with pytest.raises(DocumentError, match="not a tap-edge document"):
        build_report([{"schema": "something/else"}])
    with pytest.raises(DocumentError, match="expected a JSON object"):
        build_report([["not", "a", "dict"]])  # type: ignore[list-item]
    with pytest.raises(DocumentError, match="version 2; this tap-edge reads version 1"):
        build_report([{**_one("plan_resnet8_nrf52840").to_dict(), "version": 2}])
    with pytest.raises(UserError, match="a devices document .* has no section in the report"):
        build_report([DeviceList(devices=[])])


# ---- the command line ------------------------------------------------------------------------------------------
def test_cli_report_writes_one_file(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.html"
    r = run_cli("report", *[str(p) for p in REPORTED], "--out", str(out))
    assert r.code == 0 and out.exists() and "report written to" in r.err
    assert _sections(out.read_text()) == SECTION_IDS


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "the file is empty"),
        ('{"a": ', "not valid JSON (line 1"),
        ("[1, 2]", "expected a JSON object"),
        ('{"schema": "other"}', "not a tap-edge document"),
        ('{"schema": "tap-edge/measure-report", "version": 7}', "version 7; this tap-edge reads version 1"),
        ('{"schema": "tap-edge/eval", "version": 1, "model": "m"}', "tap-edge/eval field 'bits': Field required"),
        ('{"schema": "tap-edge/device-list", "version": 1, "devices": []}', "has no section in the report"),
        ((FIXTURES / "manifest_resnet8_tflite.json").read_text(), "a manifest document (tap-edge/artifact) has no"),
    ],
)
def test_cli_report_bad_input_is_one_line(run_cli, tmp_path: Path, content: str | None, message: str) -> None:
    src = tmp_path / "result.json"
    if content is not None:
        src.write_text(content)
    r = run_cli("report", str(src), "--out", str(tmp_path / "r.html"))
    assert r.code == 2
    assert message in r.err and r.err.strip().count("\n") == 0 and "Traceback" not in r.err
    assert not (tmp_path / "r.html").exists()


def test_cli_report_without_files(run_cli) -> None:
    r = run_cli("report")
    assert r.code == 2 and "no result files given" in r.err


def test_check_html_option(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "check.html"
    r = run_cli("check", "resnet8", "-d", "stm32f446re", "-d", "nrf52840", "--bits", "w8a8", "-q", "--html",
                str(out))
    assert r.code == 0
    page = out.read_text()
    assert _sections(page) == ["fit-matrix", "memory"] and "stm32f446re" in page


def test_write_html_if_requested(tmp_path: Path) -> None:
    assert write_html_if_requested(_one("check_resnet8_w4a8"), None) is None
    run = _one("evolve_rw3")
    out = write_html_if_requested(run.to_dict(), tmp_path / "e.html")  # a dict in its on-disk form works too
    assert out == tmp_path / "e.html" and _sections(out.read_text()) == ["search"]
    assert isinstance(load_result(FIXTURES / "evolve_rw3.json"), RunSummary)


# ---- headless Chromium -----------------------------------------------------------------------------------------
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
    cmd = [_CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp)})


@pytest.mark.skipif(_CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)")
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
    assert len(seen["imgs"]) == len(_plots(full_page))
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
