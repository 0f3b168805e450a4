"""Step 6, one HTML page from the documents other commands wrote: plots inline, nothing fetched.

:func:`build_report` takes documents (:mod:`tap_edge.documents`); :func:`write_report` writes the page;
:func:`write_html_if_requested` is the helper behind every command's ``--html``. Import rule: the report
imports only ``tap_edge.core``, ``tap_edge.documents`` and its own modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.documents import Document, read_document

__all__ = ["build_report", "load_result", "write_html_if_requested", "write_report"]


def load_result(path: Path) -> Document | dict[str, Any]:
    """Read one document; every problem becomes a one-line error naming the file."""
    # INTERIM (layout move): legacy dict results are still accepted until every producer writes documents
    from tap_edge.documents import read_json
    from tap_edge.report.page import KIND_OF_SCHEMA

    data = read_json(path)
    if isinstance(data, dict) and data.get("schema") in KIND_OF_SCHEMA:
        return data
    return read_document(path)


def build_report(results: list[Document | dict[str, Any]], device: str | None = None,
                 title: str | None = None) -> str:
    """The HTML page of ``results`` (documents, or dicts in their on-disk form)."""
    # INTERIM (layout move): the page still reads dicts
    from tap_edge.report.page import build_report as build_page

    return build_page([r.to_dict() if isinstance(r, Document) else r for r in results], device=device, title=title)


def write_report(results: list[Document | dict[str, Any]], out: Path, device: str | None = None) -> Path:
    """Build the report from ``results`` and write it to ``out`` (parent folders created)."""
    page = build_report(results, device=device)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{out}: cannot write the report ({e.strerror or e.__class__.__name__})",
                        "pick a writable path with --out / --html") from None
    return out


def write_html_if_requested(result: Document | dict[str, Any], html_path: Path | str | None) -> Path | None:
    """For a command's ``--html PATH`` option: write the report of ``result`` to ``html_path`` and say so on
    stderr; do nothing when ``html_path`` is None. Returns the path written."""
    if html_path is None:
        return None
    out = write_report([result], Path(html_path))
    console.info(f"report written to {out}")
    return out
