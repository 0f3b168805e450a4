"""Step 7, one HTML page from the documents other commands wrote: plots inline, nothing fetched.

:func:`build_report` takes documents (:mod:`tap_edge.documents`) or dicts in their on-disk form;
:func:`write_report` writes the page; :func:`write_html_if_requested` is the helper behind every command's
``--html``. One module per section (``fit``, ``memory``, ``bits``, ``accuracy``, ``measured``, ``search``), their
building blocks in ``html`` and the page around them in ``page``. Import rule: the report imports only
``tap_edge.core``, ``tap_edge.documents`` and its own modules.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.documents import Document, document_from_dict, read_document
from tap_edge.report.page import build_page, require_reported

__all__ = ["build_report", "load_result", "write_html_if_requested", "write_report"]


def load_result(path: Path | str) -> Document:
    """Read one document for the report; every problem (no file, bad JSON, another schema or version, a document
    the report has no section for) is one line naming the file."""
    doc = read_document(path)
    require_reported(doc, str(path))
    return doc


def _documents(results: Sequence[Document | dict[str, Any]]) -> list[Document]:
    return [r if isinstance(r, Document) else document_from_dict(r, f"result {i + 1}") for i, r in enumerate(results)]


def build_report(results: Sequence[Document | dict[str, Any]], device: str | None = None,
                 title: str | None = None) -> str:
    """The HTML page of ``results`` (documents, or dicts in their on-disk form, validated here)."""
    return build_page(_documents(results), device=device, title=title)


def write_report(results: Sequence[Document | dict[str, Any]], out: Path, device: str | None = None) -> Path:
    """Build the report from ``results`` and write it to ``out`` (parent folders created). The whole page is
    built (every input validated) before anything is written, and it is written atomically (a temporary file
    beside ``out``, then a rename): a bad input or a failed write never replaces an existing report."""
    page = build_report(results, device=device)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            raise IsADirectoryError(21, "is a directory")
        tmp.write_text(page, encoding="utf-8", errors="replace")
        os.replace(tmp, out)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
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
