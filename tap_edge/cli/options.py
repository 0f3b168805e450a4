"""CLI habits shared by every command: help text without type noise, ``--verbose``, quiet third-party
libraries, and the flags that moved.

- :func:`tidy_help` gives every option and argument a metavar that says what to write (``N``, ``PATH``,
  ``DEVICE``) instead of typer's ``<int>`` / ``<str>`` / ``<bool>`` type names; flags show none.
- :func:`third_party_quiet`: TensorFlow, absl, oneDNN, XNNPACK and torch warnings and logs are kept off the
  terminal during ``compile`` and ``measure`` unless ``--verbose``.
- :func:`refuse_moved`: a flag that was renamed, given under its old name (a hidden option), is refused in
  one line naming the new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from tap_edge.core.errors import UserError

ModelArg = Annotated[str, typer.Argument(help="Bundled name (tap-edge models), timm:NAME, package.module:factory, "
                                                "path/to/model.py:factory or an .onnx file (converted to PyTorch).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Show third-party warnings and logs (TensorFlow, absl, oneDNN, torch).")]

#: Metavars by the option's value type (an option may set its own).
_TYPE_METAVARS = {"integer": "N", "float": "X", "path": "PATH", "file": "FILE", "directory": "DIR"}
#: Options whose value names a thing better than its type does.
_NAME_METAVARS = {"device": "DEVICE", "backend": "BACKEND", "runtime": "RUNTIME", "proxy": "PROXY",
                  "bits": "WIDTHS", "plan": "PLAN.json", "out": "FILE", "out_dir": "DIR", "calib": "DIR",
                  "data": "DIR", "labels": "CSV", "html": "FILE.html", "flash": "SIZE", "sram": "SIZE", "bops": "N",
                  "flash_like": "wN", "weight_bits": "WIDTHS", "act_bits": "WIDTHS", "pin": "LAYER=wN",
                  "rounding": "METHOD", "pattern": "PATTERN", "model": "MODEL", "artifact": "ARTIFACT",
                  "results": "FILE...", "run_dir": "DIR", "markdown": "FILE.md", "templates": "DIR",
                  "tune_db": "DIR", "linear_int4": "qdq|matmulnbits", "input": "NAME=VALUE", "task": "TASK",
                  "executor": "EXECUTOR", "grammar": "GRAMMAR", "llm_base_url": "URL", "llm_model": "MODEL",
                  "ray_address": "ADDRESS", "suggest_plans": "N"}


def _metavar(param: Any) -> str:
    name = _NAME_METAVARS.get(param.name or "")
    if name:
        return name
    desc = getattr(param, "type_descriptor", None)
    annotation = getattr(desc, "annotation", None)
    if desc is not None and desc.is_list and getattr(annotation, "__args__", None):
        annotation = annotation.__args__[0]
    kind = {int: "integer", float: "float"}.get(annotation, "path" if desc is not None and desc.is_path else "")
    return _TYPE_METAVARS.get(kind, (param.name or "value").upper())


def tidy_help(command: Any) -> Any:
    """Give every parameter of ``command`` and its subcommands a metavar that says what to write (flags:
    none), so ``--help`` shows ``--calib-samples N``, not ``<int>``; returns ``command``."""
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
    ctx = command.context_class(command, help_option_names=["-h", "--help"])
    help_option = command.get_help_option(ctx)  # created once per command and cached by it
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if param.param_type_name == "argument":
            param.metavar = param.metavar or _metavar(param)
            param.display_type_rich = _no_type  # the metavar (MODEL) already names it
        elif param.is_flag:
            param.metavar = ""
        elif param.metavar is None:
            param.metavar = _metavar(param)
    return command


def _no_type(ctx: Any) -> None:
    return None


@contextlib.contextmanager
def third_party_quiet(verbose: bool) -> Iterator[None]:
    """Keep TensorFlow / absl / oneDNN / XNNPACK / torch warnings and logs off the terminal unless ``verbose``.

    Log levels are set before any backend imports TensorFlow (it reads ``TF_CPP_MIN_LOG_LEVEL`` once), Python
    warnings and the libraries' loggers are muted, and what C++ code writes to file descriptor 2 (absl's
    pre-init banner, glog lines, "Created TensorFlow Lite XNNPACK delegate") goes to a file that is dropped,
    while tap-edge's own progress and notes still reach the terminal (on a failure the file's last lines are
    kept for ``TAP_EDGE_DEBUG=1``)."""
    if verbose:
        yield
        return
    import sys
    import tempfile

    from tap_edge.core import console, flags

    for key, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("TF_ENABLE_ONEDNN_OPTS", "0"), ("GLOG_minloglevel", "2")):
        os.environ.setdefault(key, value)
    loggers = [logging.getLogger(n) for n in ("absl", "tensorflow", "torch", "jax", "onnxscript", "onnx_ir", "tvm")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        real_fd = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured stream (pytest, a notebook): nothing to redirect
        real_fd = False
    saved_fd, capture, terminal, previous = None, None, None, None
    if real_fd:
        sys.stderr.flush()
        saved_fd = os.dup(2)
        capture = tempfile.TemporaryFile()
        terminal = os.fdopen(os.dup(saved_fd), "w", buffering=1)
        previous = console.err._file  # None: rich follows sys.stderr
        console.err.file = terminal
        os.dup2(capture.fileno(), 2)
    failed = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        failed = True
        raise
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if saved_fd is not None and capture is not None and terminal is not None:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            console.err._file = previous
            if failed and flags.debug():
                capture.seek(0)
                tail = capture.read()[-4000:].decode(errors="replace")
                terminal.write(f"--- third-party output before the failure ---\n{tail}\n")
            terminal.close()
            capture.close()


def refuse_moved(value: Any, old: str, new: str, why: str) -> None:
    """A renamed flag given under its old name (a hidden option kept for this): one line naming the new one."""
    if value is not None and value is not False:
        raise UserError(f"{old} is now {new}: {why}", f"write {new}")


def expand_devices(specs: list[str]) -> list[str]:
    """``--device`` values with shell wildcards expanded over the bundled profiles (``-d 'stm32*'``), in order,
    each once; a pattern that matches none is one line."""
    from tap_edge.devices import list_devices

    ids: list[str] = []
    for spec in specs:
        if any(c in spec for c in "*?["):
            matched = list_devices(spec)
            if not matched:
                raise UserError(f"--device '{spec}' matches no device profile", "see tap-edge devices")
        else:
            matched = [spec]
        ids += [d for d in matched if d not in ids]
    return ids
