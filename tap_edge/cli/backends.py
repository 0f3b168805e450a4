"""``tap-edge backends``: the compile/measure backends and whether they are installed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tap_edge.cli.app import JsonOpt, app
from tap_edge.core import console


@app.command("backends")
def backends_cmd(
    pattern: Annotated[str, typer.Argument(help="Shell wildcard over backend names, e.g. 'onnx*'.")] = "*",
    as_json: JsonOpt = False,
) -> None:
    """List the compile/measure backends, what they serve and whether their dependencies are installed."""
    from tap_edge.backends import backend_list

    listing = backend_list(pattern)
    if as_json:
        console.print_json(listing.to_dict())
        return
    t = Table(title=f"{len(listing.backends)} backends")
    for col in ("backend", "status", "serves runtimes", "device kinds", "artifact", "options", "what"):
        t.add_column(col)
    for b in listing.backends:
        if b.broken:
            status = f"[red]broken[/]: {escape(b.broken)}"
        elif b.available:
            status = "[green]ready[/]"
        else:
            status = f"[yellow]missing {', '.join(b.missing)}[/] ({escape(b.install)})"
        t.add_row(b.name, status, ", ".join(b.runtimes), ", ".join(b.kinds), b.artifact, " ".join(b.options),
                  b.description)
    console.out.print(t)
