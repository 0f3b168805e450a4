"""The ``tap-edge`` command line. Exit codes: 0 success (every target fits), 1 a target does not fit or a
measurement disagrees, 2 bad input (one line on stderr says what and how to fix it), 70 internal error."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.table import Table

from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes

EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL = 1, 2, 70

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fit neural networks onto phones and microcontrollers.")
devices_app = typer.Typer(invoke_without_command=True, help="List the device profiles, or show one.")
app.add_typer(devices_app, name="devices")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]


@devices_app.callback()
def devices_list(ctx: typer.Context, as_json: JsonOpt = False,
                 pattern: Annotated[str, typer.Option(help="Shell-style filter, e.g. 'stm32*'.")] = "*") -> None:
    """List bundled device profiles."""
    if ctx.invoked_subcommand:
        return
    from tap_edge.devices import get_device, list_devices

    profiles = [get_device(n) for n in list_devices(pattern)]
    if as_json:
        console.print_json([{"id": p.id, "name": p.name, "kind": p.kind, "vendor": p.vendor,
                             "runtime": p.runtime().name,
                             "arena_region": p.arena_region().name, "arena_bytes": p.free_bytes(p.arena_region()),
                             "weights_region": p.weights_region().name,
                             "weights_bytes": p.free_bytes(p.weights_region())} for p in profiles])
        return
    t = Table(title=f"{len(profiles)} device profiles")
    for col in ("id", "kind", "name", "default runtime", "arena (largest usable)", "weights"):
        t.add_column(col)
    for p in profiles:
        a, w = p.arena_region(), p.weights_region()
        t.add_row(p.id, p.kind, p.name, p.runtime().name, f"{fmt_bytes(p.free_bytes(a))} {a.name}",
                  f"{fmt_bytes(p.free_bytes(w))} {w.name}")
    console.out.print(t)


@devices_app.command("show")
def devices_show(device: Annotated[str, typer.Argument(help="Profile id or path to a YAML file.")],
                 as_json: JsonOpt = False) -> None:
    """Show one device profile: regions, reservations, runtimes and their bit-widths."""
    from tap_edge.devices import get_device

    p = get_device(device)
    if as_json:
        console.print_json(p.model_dump(mode="json"))
        return
    console.out.print(f"[bold]{p.name}[/] ({p.id}) - {p.vendor} {p.soc}, {p.kind}")
    for c in p.cores:
        console.out.print(f"  cores: {c.count} x {c.name} ({c.isa}) @ {c.clock_hz / 1e6:.0f} MHz")
    t = Table(title="memory regions")
    for col in ("region", "kind", "size", "reserved", "usable", "holds"):
        t.add_column(col)
    for m in p.memories:
        t.add_row(m.name, m.kind, fmt_bytes(m.size), fmt_bytes(m.size - p.free_bytes(m)), fmt_bytes(p.free_bytes(m)),
                  ", ".join(m.holds))
    console.out.print(t)
    for r in p.reserved:
        console.out.print(f"  reserved {fmt_bytes(r.bytes)} of {r.region}: {r.what} [{r.confidence}]")
    t = Table(title="runtimes")
    for col in ("runtime", "weights bits", "activation bits", "ops", "code"):
        t.add_column(col)
    for rt in p.runtimes:
        t.add_row(rt.name + (" (default)" if rt.default else ""),
                  "; ".join(f"{k}: {v}" for k, v in rt.weights.items()),
                  "; ".join(f"{k}: {v}" for k, v in rt.activations.items()),
                  "all" if "*" in rt.ops else f"{len(rt.ops)} classes", fmt_bytes(rt.code_bytes))
    console.out.print(t)
    for m in p.mlperf_tiny:
        console.out.print(f"  MLPerf Tiny {m.version} on {m.system}{' (proxy board)' if m.proxy else ''}: "
                          f"IC {m.ic_ms} / VWW {m.vww_ms} / KWS {m.kws_ms} / AD {m.ad_ms} ms")
    console.out.print("  sources: " + "; ".join(f"[{k}] {v}" for k, v in p.sources.items()))


@app.command("models")
def models_cmd() -> None:
    """List the bundled models (MODEL may also be timm:NAME, package.module:factory, .onnx, .tflite)."""
    from tap_edge.graph.models import describe_model, list_models

    for name in list_models():
        console.out.print(f"{name:20s} {describe_model(name)}")


def _resolve_bits(bits: str | None, plan: Path | None, frontend: str):
    from tap_edge.fit.bits import BitAssignment

    if bits and plan:
        raise UserError("--bits and --plan both given", "pass one of them")
    if plan:
        return BitAssignment.load(plan)
    return BitAssignment.parse(bits or ("native" if frontend == "tflite" else "w8a8"))


@app.command("check")
def check_cmd(
    model: Annotated[str, typer.Argument(help="Bundled name, timm:NAME, package.module:factory, .onnx or .tflite.")],
    device: Annotated[list[str] | None, typer.Option("--device", "-d", help="Profile id or YAML path; repeat.")] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="Check every bundled profile.")] = False,
    bits: Annotated[str | None, typer.Option(help="Uniform widths: w8a8, w4a8, w8a16, fp32, native "
                                                  "(default: native for .tflite, else w8a8).")] = None,
    plan: Annotated[Path | None, typer.Option(help="A plan.json with per-layer widths.")] = None,
    runtime: Annotated[str | None, typer.Option(help="Runtime name (default: each device's default).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report here.")] = None,
) -> None:
    """Will MODEL fit? A device x verdict table; exit 0 only if every target fits."""
    from tap_edge.devices import get_device, list_devices
    from tap_edge.fit.checker import check_report
    from tap_edge.graph.models import load_graph

    console.set_quiet(quiet or as_json)
    if not device and not all_devices:
        raise UserError("no target device", "pass --device ID (repeatable) or --all; see tap-edge devices")
    ids = list(device or [])
    if all_devices:
        ids += [d for d in list_devices() if d not in ids]
    profiles = [get_device(d) for d in ids]
    t0 = time.perf_counter()
    graph = load_graph(model)
    b = _resolve_bits(bits, plan, graph.frontend)
    report = check_report(graph, b, profiles, runtime)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    if as_json:
        console.print_json(report)
    else:
        _print_check(report)
    from tap_edge.cli.report import write_html_if_requested
    write_html_if_requested(report, html)
    if not report["all_fit"]:
        raise typer.Exit(EXIT_FAIL)


def _print_check(report: dict) -> None:
    m = report["model"]
    console.out.print(f"[bold]{m['name']}[/] ({m['frontend']}): {m['ops']} ops, {m['params'] / 1e6:.2f} M params, "
                      f"{m['macs'] / 1e6:.1f} M MACs, bits {report['bits']}")
    if m["unknown_ops"]:
        names = ", ".join(f"{u['op']} ({u['op_type']})" for u in m["unknown_ops"][:5])
        console.out.print(f"[yellow]unknown ops[/]: {names}")
    t = Table()
    for col in ("device", "runtime", "verdict", "flash used / limit", "margin", "peak SRAM / limit", "margin",
                "peak op"):
        t.add_column(col, no_wrap=True, justify="right" if "margin" in col or "/" in col else "left")
    colours = {"FITS": "green", "OOM": "red", "UNSUPPORTED": "yellow"}
    for r in report["devices"]:
        t.add_row(r["device"], r["runtime"], f"[{colours[r['verdict']]}]{r['verdict']}[/]",
                  f"{fmt_bytes(r['flash_bytes'])} / {fmt_bytes(r['flash_limit_bytes'])}",
                  _margin(r["flash_margin_bytes"], r["flash_margin_pct"]),
                  f"{fmt_bytes(r['peak_sram_bytes'])} / {fmt_bytes(r['sram_limit_bytes'])}",
                  _margin(r["sram_margin_bytes"], r["sram_margin_pct"]), r["peak_op"])
    console.out.print(t)
    for r in report["devices"]:
        for p in r["problems"]:
            console.out.print(f"  {r['device']}: {p}")
    n_fit = sum(r["verdict"] == "FITS" for r in report["devices"])
    console.out.print(f"{n_fit}/{len(report['devices'])} targets fit ({report['seconds']:.2f} s)")


def _margin(margin: int, pct: float | None) -> str:
    colour = "green" if margin >= 0 else "red"
    return f"[{colour}]{fmt_bytes(margin)}" + (f" ({pct:+.0f}%)" if pct is not None else "") + "[/]"


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

    debug = bool(os.environ.get("TAP_EDGE_DEBUG"))
    try:
        rc = app(args=argv, standalone_mode=False)
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
