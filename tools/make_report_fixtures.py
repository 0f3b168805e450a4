"""Regenerate tests/fixtures/*.json: real documents written by the real commands on small, fast cases.

One or more of every document class: the report's inputs (check, plan, eval, measure, evolve) and the others
(compile manifests, the device and backend lists), which tests/test_documents.py validates against the schemas.

Run it after a document class changes (``python tools/make_report_fixtures.py``, a few minutes on 2 cores):
every command runs in a scratch folder with relative paths (so the documents hold no machine paths), each
output is validated with its document class (:func:`tap_edge.documents.document_from_dict`) before it
replaces the fixture, and ``tests/fixtures/README.md`` lists the command behind each file. ``--only NAME``
remakes some of them; a fixture whose command fails or whose output does not validate is reported and left
as it was.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tap_edge.core.errors import UserError
from tap_edge.documents import document_from_dict

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
RUN_ARCHIVE = ROOT / "tap_edge" / "plan" / "proxies" / "programs" / "runs" / "rw3.tar.gz"
SAMPLE = "imagenet-sample"  # the photo folder, linked into the scratch folder under this name


@dataclass
class Fixture:
    """One fixture: the commands to run (the last one writes the document, to stdout or to ``output``)."""

    name: str
    commands: list[list[str]]
    output: str | None = None  # file the last command writes; None: its stdout
    prepare: Callable[[Path], None] | None = field(default=None, repr=False)


def _unpack_run(work: Path) -> None:
    with tarfile.open(RUN_ARCHIVE) as tar:
        tar.extractall(work, filter="data")


def _compile(model: str, widths: list[str], backend: str, device: str, out: str) -> list[str]:
    return ["compile", model, *widths, "--backend", backend, "-d", device, "--calib", SAMPLE, "--out-dir", out, "-q"]


def _eval(widths: list[str], out: str) -> list[str]:
    return ["eval", "efficientnet_lite0", *widths, "--data", SAMPLE, "--limit", "96", "--out", out, "-q"]


R8 = ["--bits", "w8a8"]
FIXTURE_LIST = [
    Fixture("check_resnet8_w4a8", [["check", "resnet8", "--all", "--bits", "w4a8", "--json"]]),
    Fixture("check_efficientnet_lite0_w8a8", [["check", "efficientnet_lite0", "--all", "--json"]]),
    Fixture("plan_efficientnet_lite0_raspberry-pi-5",  # the demo's plan
            [["plan", "efficientnet_lite0", "-d", "raspberry-pi-5", "--runtime", "onnxruntime", "--calib", SAMPLE,
              "--flash-like", "w6", "--act-bits", "8", "--out", "plan-lite0.json", "-q"]], output="plan-lite0.json"),
    Fixture("eval_efficientnet_lite0_plan", [_eval(["--plan", "plan-lite0.json"], "eval-plan.json")],
            output="eval-plan.json"),
    Fixture("eval_efficientnet_lite0_w8a8", [_eval(["--bits", "w8a8"], "eval-w8a8.json")], output="eval-w8a8.json"),
    Fixture("eval_efficientnet_lite0_w4a8", [_eval(["--bits", "w4a8"], "eval-w4a8.json")], output="eval-w4a8.json"),
    Fixture("measure_efficientnet_lite0_plan_onnxruntime",  # the demo's ONNX Runtime run of the plan above
            [_compile("efficientnet_lite0", ["--plan", "plan-lite0.json"], "onnxruntime", "raspberry-pi-5",
                      "ort-lite0"),
             ["measure", "ort-lite0/efficientnet_lite0-plan.onnx", "-d", "raspberry-pi-5", "--json", "-q"]]),
    Fixture("plan_resnet8_nrf52840",
            [["plan", "resnet8", "-d", "nrf52840", "--calib", SAMPLE, "--flash-like", "w5", "--act-bits", "8",
              "--sweep", "6", "--out", "plan-resnet8.json", "-q"]], output="plan-resnet8.json"),
    Fixture("measure_resnet8_onnxruntime",
            [_compile("resnet8", R8, "onnxruntime", "raspberry-pi-5", "ort"),
             ["measure", "ort/resnet8-w8a8.onnx", "-d", "raspberry-pi-5", "--json", "-q"]]),
    Fixture("measure_resnet8_tflite",
            [_compile("resnet8", R8, "tflite", "stm32h743", "tflite"),
             ["measure", "tflite/resnet8-w8a8.tflite", "-d", "stm32h743", "--json", "-q"]]),
    Fixture("evolve_rw3", [["evolve", "--report", "rw3", "--json"]], prepare=_unpack_run),
    # documents the report has no section for, kept so that every document class has a real sample
    Fixture("manifest_resnet8_onnxruntime", [_compile("resnet8", R8, "onnxruntime", "raspberry-pi-5", "m-ort")],
            output="m-ort/resnet8-w8a8.onnx.manifest.json"),
    Fixture("manifest_resnet8_tflite", [_compile("resnet8", R8, "tflite", "stm32h743", "m-tflite")],
            output="m-tflite/resnet8-w8a8.tflite.manifest.json"),
    Fixture("devices", [["devices", "--json"]]),
    Fixture("backends", [["backends", "--json"]]),
]


def _tap_edge() -> str:
    exe = Path(sys.executable).with_name("tap-edge")
    if not exe.exists():
        raise UserError(f"{exe}: no tap-edge beside this Python", "run the script with the project's venv Python")
    return str(exe)


def _run(fx: Fixture, work: Path, log: list[str]) -> dict:
    """Run the fixture's commands in ``work``; the parsed document the last one wrote."""
    if fx.prepare is not None:
        fx.prepare(work)
    out = ""
    for argv in fx.commands:
        log.append("tap-edge " + " ".join(argv))
        res = subprocess.run([_tap_edge(), *argv], cwd=work, capture_output=True, text=True, timeout=1800)
        if res.returncode not in (0, 1):  # 1: a target does not fit or a figure is flagged, still a document
            tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise UserError(f"{fx.name}: `tap-edge {' '.join(argv)}` exited {res.returncode}: {tail}")
        out = res.stdout
    text = (work / fx.output).read_text() if fx.output else out
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{fx.name}: the output is not JSON ({e.msg} at line {e.lineno})") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, default=ROOT.parent / "shared" / "data" / "imagenet-sample",
                    help="folder of sample photos (the demo's SAMPLE)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="remake only these fixtures")
    ap.add_argument("--out", type=Path, default=FIXTURES, help="where the fixtures go")
    args = ap.parse_args(argv)
    known = {fx.name for fx in FIXTURE_LIST}
    unknown = sorted(set(args.only or []) - known)
    if unknown:
        ap.error(f"unknown fixture(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if not args.sample.is_dir():
        ap.error(f"{args.sample}: no such folder of sample photos (pass --sample DIR)")
    chosen = [fx for fx in FIXTURE_LIST if not args.only or fx.name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    provenance: dict[str, list[str]] = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tap-edge-fixtures-") as tmp:
        work = Path(tmp)
        (work / SAMPLE).symlink_to(args.sample.resolve(), target_is_directory=True)
        for fx in chosen:  # in order: the evals read the plan written before them
            t0, log = time.perf_counter(), []
            try:
                data = _run(fx, work, log)
                doc = document_from_dict(data, fx.name)
            except UserError as e:
                failed.append(fx.name)
                print(f"FAILED {fx.name}: {e}", file=sys.stderr)
                continue
            (args.out / f"{fx.name}.json").write_text(json.dumps(data, indent=1) + "\n")
            provenance[fx.name] = log
            print(f"{fx.name}: {doc.SCHEMA} v{doc.VERSION} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    _write_readme(args.out, provenance)
    return 1 if failed else 0


def _write_readme(out: Path, made: dict[str, list[str]]) -> None:
    """Keep ``README.md`` listing the commands behind every fixture (entries of fixtures not remade stay)."""
    readme = out / "README.md"
    entries: dict[str, list[str]] = {}
    if readme.exists():
        name = None
        for line in readme.read_text().splitlines():
            if line.startswith("- `") and line.endswith(".json`"):
                name = line[3:-6]
                entries[name] = []
            elif name and line.startswith("  - `tap-edge "):
                entries[name].append(line[5:-1])
    entries.update(made)
    lines = ["# Report fixtures", "",
             "Real documents written by the real commands (`tools/make_report_fixtures.py` remakes them; run in a",
             "scratch folder where `imagenet-sample` is the demo's sample photos). Each file and its commands:", ""]
    for name in sorted(entries):
        lines.append(f"- `{name}.json`")
        lines += [f"  - `{cmd}`" for cmd in entries[name]]
    readme.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
