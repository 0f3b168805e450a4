"""``tap-edge proxies``: the sensitivity proxies ``plan --proxy`` can use."""

from __future__ import annotations

from tap_edge.cli.app import app
from tap_edge.core import console


@app.command("proxies")
def proxies_cmd() -> None:
    """List the sensitivity proxies (use one with tap-edge plan --proxy NAME)."""
    from tap_edge.plan.proxies import get_proxy, list_proxies

    for name in list_proxies():
        p = get_proxy(name)
        doc = (p.summary or p.fn.__doc__ or "").strip().splitlines()
        console.out.print(f"{name:10s} {doc[0] if doc else ''}")
