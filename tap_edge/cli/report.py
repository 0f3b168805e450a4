"""``tap-edge report DOC.json... --out report.html``: one self-contained HTML page from other commands' JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tap_edge.cli.app import QuietOpt, app
from tap_edge.core import console
from tap_edge.core.errors import UserError


@app.command("report")
def report_cmd(
    results: Annotated[
        list[Path] | None,
        typer.Argument(help="JSON documents of check/plan/eval/measure/evolve --json.", show_default=False,
                       metavar="RESULT.json"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    device: Annotated[
        str | None,
        typer.Option("--device", "-d", help="Device whose SRAM limit the memory plot draws (default: the "
                                            "tightest that fits, else the first)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """One self-contained HTML report (plots inline, nothing fetched) from JSON results of other commands."""
    from tap_edge.report import load_result, write_report

    console.set_quiet(quiet)
    if not results:
        raise UserError("no result files given", "e.g. tap-edge check MODEL --all --json > check.json; "
                                                 "tap-edge report check.json --out report.html")
    if any(p.resolve() == out.resolve() for p in results):
        raise UserError(f"{out}: --out names one of the input documents", "write the report to another file")
    docs = [load_result(p) for p in results]
    path = write_report(docs, out, device=device)
    kinds = sorted({d.KIND for d in docs})
    size = path.stat().st_size / 1024
    console.info(f"report written to {path} ({size:.0f} KiB, from {len(docs)} result(s): {', '.join(kinds)})")
