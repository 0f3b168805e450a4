# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""One terminal style for every command: rich tables on stdout, progress and errors on stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tap_edge.core.serialize import json_default

#: Width when stdout is no terminal (CI logs, pipes, files) and COLUMNS is unset: rich would assume 80; every
#: table is made to fit 100 (text cells wrap, never cut), so logs read as a 100-column terminal shows them.
PIPE_WIDTH = 100
out = Console(highlight=False, soft_wrap=False,
              width=None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else PIPE_WIDTH)
err = Console(stderr=True, highlight=False)
T = TypeVar("T")

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def info(msg: str) -> None:
    if not _state["quiet"]:
        err.print(msg)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=json_default) + "\n")


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Any]:
    """A progress bar on stderr (hidden with --quiet and when stderr is not a terminal, e.g. in CI logs)."""
    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                 console=err, disable=_state["quiet"] or not err.is_terminal, transient=True)
    with p:
        task = p.add_task(description, total=total)

        class _Handle:
            def advance(self, n: int = 1) -> None:
                p.advance(task, n)

            def update(self, **kw: Any) -> None:
                p.update(task, **kw)

        yield _Handle()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    with progress(description, total) as h:
        for x in items:
            yield x
            h.advance()
