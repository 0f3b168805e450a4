"""``tap-edge backends``: the compile/measure backends and whether they are installed."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from tap_edge.cli.app import JsonOpt, app
from tap_edge.core import console


@app.command("backends")
def backends_cmd(as_json: JsonOpt = False) -> None:
    """List the compile/measure backends, what they serve and whether their dependencies are installed."""
    from tap_edge.backends import broken_backends, get_backend, list_backends

    rows = []
    for name in list_backends():
        b = get_backend(name)
        miss = b.missing()
        rows.append(
            {
                "name": name,
                "available": not miss,
                "missing": miss,
                "install": b.install_hint() if miss else "",
                "runtimes": list(b.runtimes),
                "kinds": list(b.kinds),
                "artifact": b.suffix,
                "description": b.description,
            }
        )
    for name, err in broken_backends().items():
        rows.append(
            {
                "name": name,
                "available": False,
                "missing": [],
                "install": "",
                "runtimes": [],
                "kinds": [],
                "artifact": "",
                "description": f"failed to load: {err}",
            }
        )
    if as_json:
        console.print_json(rows)
        return
    t = Table(title=f"{len(rows)} backends")
    for col in ("backend", "status", "serves runtimes", "device kinds", "artifact", "what"):
        t.add_column(col)
    for r in rows:
        status = "[green]ready[/]" if r["available"] else f"[yellow]missing {', '.join(r['missing'])}[/]"
        if r["install"]:
            status += f" ({escape(r['install'])})"
        t.add_row(
            r["name"],
            status,
            ", ".join(r["runtimes"]),
            ", ".join(r["kinds"]),
            r["artifact"],
            r["description"],
        )
    console.out.print(t)
