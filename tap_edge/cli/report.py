"""``tap-edge report RESULT.json... --out report.html``: one self-contained HTML report from the JSON results
of other commands; and :func:`write_html_if_requested`, the helper behind every command's ``--html``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tap_edge.cli.app import QuietOpt, app
from tap_edge.core import console
from tap_edge.core.errors import UserError

_HINT = "pass JSON written by tap-edge check/plan/eval/measure/evolve with --json"


def load_result(path: Path) -> dict[str, Any]:
    """Read one result file; every problem becomes a one-line UserError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file", _HINT) from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a JSON result", _HINT) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e.__class__.__name__})", _HINT) from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty", _HINT)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}: {e.msg}"
        raise UserError(f"{path}: not valid JSON ({where})", _HINT) from None
    if not isinstance(data, dict):
        got = type(data).__name__
        raise UserError(f"{path}: expected a JSON object with a 'schema' key, got a {got}", _HINT)
    from tap_edge.report.page import KIND_OF_SCHEMA, SCHEMAS

    if data.get("schema") not in KIND_OF_SCHEMA:
        got = f"schema {data['schema']!r}" if "schema" in data else "no 'schema' key"
        raise UserError(f"{path}: not a tap-edge result ({got})",
                        f"{_HINT} (schemas: {', '.join(SCHEMAS.values())})")
    return data


def write_report(results: list[dict[str, Any]], out: Path, device: str | None = None) -> Path:
    """Build the report from ``results`` and write it to ``out`` (parent folders created)."""
    from tap_edge.report.page import build_report

    page = build_report(results, device=device)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{out}: cannot write the report ({e.strerror or e.__class__.__name__})",
                        "pick a writable path with --out / --html") from None
    return out


def write_html_if_requested(result: dict[str, Any], html_path: Path | str | None) -> Path | None:
    """For a command's ``--html PATH`` option: write the report of ``result`` to ``html_path`` and say so on
    stderr; do nothing when ``html_path`` is None. Returns the path written."""
    if html_path is None:
        return None
    out = write_report([result], Path(html_path))
    console.info(f"report written to {out}")
    return out


@app.command("report")
def report_cmd(
    results: Annotated[
        list[Path] | None,
        typer.Argument(help="JSON results of check/plan/eval/measure/evolve --json.", show_default=False,
                       metavar="RESULT.json"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    device: Annotated[
        str | None,
        typer.Option(help="Device whose SRAM limit the memory plot draws (default: the tightest that fits, "
                          "else the first)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """One self-contained HTML report (plots inline, nothing fetched) from JSON results of other commands."""
    console.set_quiet(quiet)
    if not results:
        raise UserError("no result files given", "e.g. tap-edge check MODEL --all --json > check.json; "
                                                 "tap-edge report check.json --out report.html")
    data = [load_result(p) for p in results]
    path = write_report(data, out, device=device)
    kinds = sorted({str(d["schema"]).split("/")[-1] for d in data})
    size = path.stat().st_size / 1024
    console.info(f"report written to {path} ({size:.0f} KiB, from {len(data)} result(s): {', '.join(kinds)})")
