"""The page: sorts the documents by class, renders each section that has data and wraps them in one
self-contained HTML file (inline CSS and images; a Content-Security-Policy forbids any fetch)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

from tap_edge.core.errors import UserError
from tap_edge.documents import CheckReport, Document, EvalResult, MeasureReport, Plan, RunSummary
from tap_edge.report import accuracy, bits, fit, measured, memory, search
from tap_edge.report.html import RC, STYLE, esc, guard, section, table

#: (id, title) of every section, in page order.
SECTIONS: list[tuple[str, str]] = [(m.ID, m.TITLE) for m in (fit, memory, bits, accuracy, measured, search)]
#: The documents the report has a section for, in the order the inputs table counts them.
REPORTED: tuple[type[Document], ...] = (CheckReport, Plan, EvalResult, MeasureReport, RunSummary)


def describe(doc: Document) -> tuple[str, str]:
    """(model, a few words) saying what one document is about, for the table of inputs."""
    if isinstance(doc, CheckReport):
        return doc.model.name, f"bits {doc.bits}, {len(doc.devices)} devices"
    if isinstance(doc, Plan):
        return doc.model, f"{doc.device} ({doc.runtime}), proxy {doc.proxy}, {len(doc.layers)} layers"
    if isinstance(doc, EvalResult):
        return doc.model, doc.bits + (f" ({doc.plan})" if doc.plan else "") + f", {doc.n_images} images"
    if isinstance(doc, MeasureReport):
        return doc.model or "?", f"{measured.label(doc)}" + (f" on {doc.device}" if doc.device else "")
    if isinstance(doc, RunSummary):
        return "–", f"{len(doc.generations)} generations, {doc.candidates} candidates"
    return "?", doc.KIND


def require_reported(doc: Document, source: str) -> None:
    """One-line error for a document the report has no section for (a manifest, a device list, ...)."""
    if not isinstance(doc, REPORTED):
        raise UserError(f"{source}: a {doc.KIND} document ({doc.SCHEMA}) has no section in the report",
                        "pass documents of " + ", ".join(c.WRITTEN_BY for c in REPORTED))


def build_page(docs: Sequence[Document], device: str | None = None, title: str | None = None) -> str:
    """One self-contained HTML page from documents (any mix of the reported kinds, in any order).

    ``device`` picks whose SRAM limit the memory plot draws (default: the tightest device that fits, else the
    first). Sections without data are left out."""
    from matplotlib import rc_context

    for i, doc in enumerate(docs):
        require_reported(doc, f"result {i + 1}")
    checks = [d for d in docs if isinstance(d, CheckReport)]
    plans = [d for d in docs if isinstance(d, Plan)]
    evals = [d for d in docs if isinstance(d, EvalResult)]
    measures = [d for d in docs if isinstance(d, MeasureReport)]
    runs = [d for d in docs if isinstance(d, RunSummary)]
    memory.check_device_choice(checks, device)
    body: dict[str, str] = {}
    with rc_context(RC):
        if checks:
            body[fit.ID] = guard(fit.render, checks)
        if memory.wanted(checks):
            body[memory.ID] = guard(memory.render, checks, device)
        if plans:
            body[bits.ID] = guard(bits.render, plans)
        if accuracy.wanted(plans, evals):
            body[accuracy.ID] = guard(accuracy.render, plans, evals)
        if measures:
            body[measured.ID] = guard(measured.render, measures)
        if runs:
            body[search.ID] = guard(search.render, runs)
    shown = [(sid, t) for sid, t in SECTIONS if sid in body]
    described = [describe(d) for d in docs]
    models = sorted({m for m, _ in described} - {"?", "–"})
    title = title or ("tap-edge report" + (f": {', '.join(models)}" if models else ""))
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t in shown)
    inputs = table(["result", "model", "what"], [[esc(d.KIND), esc(m), esc(w)] for d, (m, w) in
                                                 zip(docs, described, strict=True)], "narrow") if docs else ""
    sections = "".join(section(sid, t, body[sid]) for sid, t in shown)
    empty = "" if shown else '<p class="muted">None of the results has data for any section.</p>'
    counts = ", ".join(f"{n} {cls.KIND}" for cls in REPORTED if (n := sum(isinstance(d, cls) for d in docs)))
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main>"
            f'<h1>{esc(title)}</h1><p class="muted">{len(docs)} result(s): {esc(counts)}</p>'
            f"<nav>{nav}</nav>{inputs}{empty}{sections}"
            f"<footer>Made by tap-edge {esc(metadata.version('tap-edge'))} from its JSON documents; "
            "self-contained (nothing is fetched).</footer></main></body></html>\n")
