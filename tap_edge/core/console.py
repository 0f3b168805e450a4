# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""One terminal style for every command: rich tables on stdout, progress and errors on stderr."""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
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


_native_redirect = {"depth": 0, "saved": -1}
_native_lock = threading.Lock()


def _flush_c_stdout() -> None:
    """Flush the C library's stdout buffer (what native code printed with printf and not yet written)."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C runtime to flush through ctypes (e.g. Windows)
        pass


@contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """Send what native code writes to file descriptor 1 to stderr while the block runs.

    HiGHS (the allocation ILP) prints a debug line, ``HighsMipSolverData::transformNewIntegerFeasibleSolution
    tmpSolver.run();``, with printf whatever its output options say (ERGO-Code/HiGHS#2783); on stdout it would
    corrupt a command's ``--json`` output. Threads share the descriptor: the first to enter redirects it, the
    last to leave restores it."""
    with _native_lock:
        if _native_redirect["depth"] == 0:
            sys.stdout.flush()
            _flush_c_stdout()
            try:
                _native_redirect["saved"] = os.dup(1)
                os.dup2(2, 1)
            except OSError:  # no descriptors 1 / 2 (an embedded interpreter): nothing to protect
                _native_redirect["saved"] = -1
        _native_redirect["depth"] += 1
    try:
        yield
    finally:
        with _native_lock:
            _native_redirect["depth"] -= 1
            if _native_redirect["depth"] == 0 and _native_redirect["saved"] >= 0:
                _flush_c_stdout()
                os.dup2(_native_redirect["saved"], 1)
                os.close(_native_redirect["saved"])
                _native_redirect["saved"] = -1


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
