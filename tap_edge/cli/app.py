"""The Typer app every command registers on, the shared options, and :func:`main`.

Exit codes: 0 success (every target fits), 1 a target does not fit or a measurement disagrees, 2 bad input (one
line on stderr says what and how to fix it), 70 internal error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from tap_edge.core import console, flags
from tap_edge.core.errors import UserError

EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL = 1, 2, 70

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Fit neural networks onto phones and microcontrollers.")


def _print_version(value: bool) -> None:
    if value:
        from tap_edge import __version__

        console.out.print(f"tap-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", "-V", is_eager=True, callback=_print_version,
                                                help="Print the version and exit.")] = False) -> None:
    """Fit neural networks onto phones and microcontrollers: check -> plan -> eval -> compile -> measure."""


JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
InputShapeOpt = Annotated[
    list[str] | None,
    typer.Option("--input-shape", metavar="[NAME=]SHAPE",
                 help="Shape to plan an input at, e.g. 1x3x320x320, or NAME=1x3x320x320 per input of a multi-input "
                      "model (NAME= for a scalar); repeat. Needed for dynamic ONNX/TFLite dims; a PyTorch model is "
                      "traced at it (default: its preprocessing)."),
]


def input_shapes(specs: list[str] | None, plan: Path | None = None) -> Any:
    """``--input-shape`` values as numbers (:func:`tap_edge.graph.shapes.parse_input_shapes`); without the
    flag, the shapes a ``--plan`` document was made at (so check, eval and compile of a plan made at
    ``--input-shape`` see the same graph and preprocessing as plan did)."""
    from tap_edge.documents import Plan, read_json
    from tap_edge.graph.shapes import parse_input_shapes, user_shapes

    shapes = parse_input_shapes(specs)
    if shapes is None and plan is not None:
        try:
            data = read_json(plan)
            if isinstance(data, dict) and data.get("schema") == Plan.SCHEMA:
                shapes = user_shapes(Plan.from_dict(data, str(plan)).inputs)
        except UserError:
            pass  # an unreadable plan is reported where its widths are read (resolve_bits, BitAssignment)
    return shapes


def resolve_bits(bits: str | None, plan: Path | None, frontend: str) -> Any:
    """The widths a command was asked for: ``--plan FILE`` or ``--bits`` (default: the stored dtypes of a
    .tflite file, w8a8 otherwise); both given is an error."""
    from tap_edge.fit.bits import BitAssignment

    if bits and plan:
        raise UserError("--bits and --plan both given", "pass one of them")
    if plan:
        return BitAssignment.load(plan)
    return BitAssignment.parse(bits if bits is not None else ("native" if frontend == "tflite" else "w8a8"))


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """The exception class ``name`` from click and from the copy of click that typer vendors (typer>=0.20)."""
    classes: list[type[BaseException]] = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored  # noqa: PLC2701 - typer raises its own copies

        classes.append(getattr(vendored, name))
    except (ImportError, AttributeError):
        pass
    return tuple(classes)


_CLICK_EXIT = _click_classes("Exit")
_CLICK_ERRORS = _click_classes("ClickException")
_CLICK_ABORT = _click_classes("Abort")


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the typer app and turns every error into one line and an exit code."""
    from rich.markup import escape  # messages are text, not markup: keep e.g. the [ray] of tap-edge[ray]

    from tap_edge.cli.options import tidy_help

    debug = flags.debug()
    try:
        rc = tidy_help(typer.main.get_command(app)).main(args=argv, prog_name="tap-edge", standalone_mode=False)
    except UserError as e:
        console.err.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(e.exit_code)
    except _CLICK_EXIT as e:
        sys.exit(e.exit_code)
    except _CLICK_ERRORS as e:
        console.err.print(f"[red]error:[/] {escape(e.format_message())}", soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except (*_CLICK_ABORT, KeyboardInterrupt):
        console.err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # anything unexpected: still one line, traceback only on request
        if debug:
            raise
        console.err.print(f"[red]internal error:[/] {e.__class__.__name__}: {escape(str(e)[:300])} "
                          "(set TAP_EDGE_DEBUG=1 for the traceback and please report it)", soft_wrap=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
