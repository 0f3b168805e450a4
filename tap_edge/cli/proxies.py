"""``tap-edge proxies [PATTERN]``: the sensitivity proxies ``plan --proxy`` can use."""

from __future__ import annotations

from typing import Annotated

import typer

from tap_edge.cli.app import JsonOpt, app
from tap_edge.core import console
from tap_edge.core.errors import UserError


@app.command("proxies")
def proxies_cmd(
    pattern: Annotated[str, typer.Argument(help="Shell wildcard over the names, e.g. 'tap*'.")] = "*",
    as_json: JsonOpt = False,
) -> None:
    """List the sensitivity proxies (use one with tap-edge plan --proxy NAME)."""
    from tap_edge.plan.proxies import get_proxy, list_proxies

    names = list_proxies(pattern)
    if not names:
        raise UserError(f"no proxy matches '{pattern}'", "tap-edge proxies lists them all")
    rows = []
    for name in names:
        p = get_proxy(name)
        doc = (p.summary or p.fn.__doc__ or "").strip().splitlines()
        rows.append((name, doc[0] if doc else ""))
    if as_json:
        console.print_json({"proxies": [{"name": n, "summary": d} for n, d in rows]})
        return
    for name, doc in rows:
        console.out.print(f"{name:10s} {doc}")
