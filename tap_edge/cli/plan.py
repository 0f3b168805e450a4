"""``tap-edge plan``: proxy scores on calibration samples + an exact integer program -> plan.json."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tap_edge.cli.app import InputShapeOpt, JsonOpt, QuietOpt, app, input_shapes
from tap_edge.cli.options import ModelArg
from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes, parse_bytes, parse_count
from tap_edge.documents import Plan
from tap_edge.graph.shapes import input_lines
from tap_edge.plan.budgets import BudgetSpec


def _parse_widths(spec: str | None) -> list[int] | None:
    """``2-8`` or ``4,8`` -> [2, ..., 8] / [4, 8] (None: not given; an empty string is an error)."""
    if spec is None:
        return None
    try:
        if "-" in spec:
            lo, hi = (int(x) for x in spec.split("-", 1))
            widths = list(range(lo, hi + 1))
        else:
            widths = [int(x) for x in spec.split(",")]
    except ValueError:
        raise UserError(f"cannot read --weight-bits '{spec}'", "write e.g. 2-8 or 4,8") from None
    bad = [w for w in widths if w not in (2, 3, 4, 5, 6, 7, 8)]
    if not widths or bad:
        raise UserError(f"--weight-bits '{spec}': widths must be 2..8", "write e.g. 2-8 or 4,8")
    return widths

def _parse_act_widths(spec: str | None) -> list[int] | None:
    if not spec:
        return None
    try:
        widths = [int(x) for x in spec.split(",")]
    except ValueError:
        raise UserError(f"cannot read --act-bits '{spec}'", "write e.g. 8 or 8,16") from None
    if any(w not in (8, 16, 32) for w in widths):
        raise UserError(f"--act-bits '{spec}': activation widths are 8, 16 or 32", "write e.g. 8 or 8,16")
    return widths


def _parse_uniform_width(spec: str | None) -> int | None:
    """``--flash-like w4`` (or ``w4a8``: the activation part does not change flash) -> 4."""
    if spec is None:
        return None
    m = re.fullmatch(r"w(\d+)(a\d+)?", spec.strip().lower())
    if not m:
        raise UserError(f"cannot read --flash-like '{spec}'", "write a uniform width, e.g. w4 or w6")
    return int(m.group(1))


_PIN = re.compile(r"w(\d+)(?:a(\d+))?")


def parse_pins(specs: list[str] | None) -> dict[str, tuple[int, int | None]]:
    """``--pin LAYER=w4`` / ``LAYER=w8a16`` (repeatable) -> {layer: (w, a or None)}; one line per bad one."""
    pins: dict[str, tuple[int, int | None]] = {}
    for spec in specs or []:
        layer, sep, widths = spec.rpartition("=")
        m = _PIN.fullmatch(widths.strip().lower())
        if not sep or not layer.strip() or not m:
            raise UserError(f"cannot read --pin '{spec}'", "write LAYER=wN or LAYER=wNaM, e.g. --pin fc=w8a8")
        w, a = int(m.group(1)), int(m.group(2)) if m.group(2) else None
        if w not in (2, 3, 4, 5, 6, 7, 8, 16, 32) or (a is not None and a not in (8, 16, 32)):
            raise UserError(f"--pin '{spec}': weights take 2..8, 16 or 32 bits, activations 8, 16 or 32",
                            "e.g. --pin fc=w8a8")
        if layer.strip() in pins:
            raise UserError(f"--pin: layer '{layer.strip()}' pinned twice", "pin each layer once")
        pins[layer.strip()] = (w, a)
    return pins


def budget_spec(flash: str | None, flash_like: str | None, sram: str | None, bops: str | None,
                latency_ms: float | None) -> BudgetSpec:
    """The budget flags as numbers; each unreadable one is a one-line error naming the flag."""
    if flash is not None and flash_like is not None:
        raise UserError("--flash and --flash-like both given", "use one of them")
    if latency_ms is not None and not latency_ms > 0:
        raise UserError(f"--latency-ms: must be positive, got {latency_ms}")
    return BudgetSpec(flash_bytes=parse_bytes(flash, "--flash") if flash is not None else None,
                      flash_like_bits=_parse_uniform_width(flash_like),
                      sram_bytes=parse_bytes(sram, "--sram") if sram is not None else None,
                      bops=parse_count(bops, "--bops") if bops is not None else None, latency_ms=latency_ms)


@app.command("plan")
def plan_cmd(
    model: ModelArg,
    device: Annotated[str, typer.Option("--device", "-d", help="Profile id or YAML path.")],
    calib: Annotated[Path, typer.Option(help="Folder of calibration images or .npy/.pt tensors.")],
    calib_samples: Annotated[int, typer.Option(help="Calibration samples (TAP uses 16).")] = 16,
    proxy: Annotated[str, typer.Option(help="Sensitivity proxy (see tap-edge proxies).")] = "tap",
    rounding: Annotated[str, typer.Option(help="Weight rounding the plan is for (eval and compile use it): "
                                               "nearest, gptq (second-order, fast) or adaround (learned)")] = "nearest",
    ptq_samples: Annotated[int | None, typer.Option(help="Calibration samples of the PTQ step (default: 16 for "
                                                         "nearest, 64 for gptq / adaround).")] = None,
    runtime: Annotated[str | None, typer.Option(help="Runtime (default: the device's default).")] = None,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="The backend that will build the plan "
                                                "(default: the one that serves the runtime); the plan keeps to "
                                                "what it builds (see tap-edge backends).")] = None,
    pin: Annotated[list[str] | None, typer.Option("--pin", help="Fix a layer's widths: LAYER=w4 or LAYER=w8a16 "
                                                  "(repeatable).")] = None,
    flash: Annotated[str | None, typer.Option(help="Flash budget, e.g. 1.5MB (default: the device).")] = None,
    flash_like: Annotated[str | None, typer.Option(help="Flash budget of a uniform width, e.g. w4.")] = None,
    sram: Annotated[str | None, typer.Option(help="Arena budget, e.g. 256KB (default: the device).")] = None,
    bops: Annotated[str | None, typer.Option(help="Optional BOPs budget, e.g. 5G.")] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Optional latency budget (ms, modelled).")] = None,
    sweep: Annotated[int, typer.Option(min=0, help="Also compute a Pareto front over N flash budgets.")] = 0,
    weight_bits: Annotated[str | None, typer.Option(help="Override the runtime's weight widths, e.g. 2-8 or 4,8 "
                                                         "(for fake-quant studies; the plan may not deploy).")] = None,
    act_bits: Annotated[str | None, typer.Option(help="Allowed activation widths, e.g. 8 or 8,16 (default: all "
                                                      "the runtime supports, float included).")] = None,
    input_shape: InputShapeOpt = None,
    out: Annotated[Path, typer.Option(help="Where to write the plan.")] = Path("plan.json"),
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report here.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Make MODEL fit DEVICE: proxy scores on calibration samples, then an exact integer program picks
    per-layer weight/activation widths under the device's flash and SRAM budgets."""
    from tap_edge.backends import plan_target
    from tap_edge.devices import get_device
    from tap_edge.plan.pipeline import PlanRequest, make_plan

    console.set_quiet(quiet or as_json)
    pins = parse_pins(pin)
    rt, rules = plan_target(get_device(device), runtime, backend)
    request = PlanRequest(model=model, device=device, calib=calib, calib_samples=calib_samples, proxy=proxy,
                          runtime=rt.name, budgets=budget_spec(flash, flash_like, sram, bops, latency_ms), sweep=sweep,
                          weight_bits=_parse_widths(weight_bits), act_bits=_parse_act_widths(act_bits),
                          input_shapes=input_shapes(input_shape), rules=rules, pins=pins,
                          rounding=rounding, ptq_samples=ptq_samples)
    plan = make_plan(request)
    plan.write(out)
    if as_json:
        console.print_json(plan.to_dict())
    else:
        _print_plan(plan, out)
    from tap_edge.report import write_html_if_requested

    write_html_if_requested(plan, html)


def _print_plan(plan: Plan, out: Path) -> None:
    hist: dict[tuple[int, int], int] = {}
    for v in plan.layers.values():
        hist[(v.w, v.a)] = hist.get((v.w, v.a), 0) + 1
    console.out.print(f"[bold]{plan.model}[/] on {plan.device} ({plan.runtime}), proxy {plan.proxy}: "
                      f"{len(plan.layers)} layers -> "
                      + ", ".join(f"{n} x w{w}a{a}" for (w, a), n in sorted(hist.items())))
    for line in input_lines(plan.inputs):
        console.out.print(line, markup=False)
    if plan.rules is not None:
        r = plan.rules
        built = f"built by the {r.backend} backend" if r.backend else "no tap-edge backend builds for it: its tables"
        pins = f"; pinned: {', '.join(f'{k}=w{v.w}' + (f'a{v.a}' if v.a else '') for k, v in plan.pins.items())}" \
            if plan.pins else ""
        console.out.print(f"widths {built}{' (one activation width for every layer)' if r.one_activation_width else ''}"
                          f"{pins}", markup=False)
    t = Table(title="bits per layer")
    for col in ("layer", "class", "params", "w", "a", "cost"):
        t.add_column(col, justify="left" if col in ("layer", "class") else "right")
    for name, v in plan.layers.items():
        t.add_row(name, v.op_class, f"{v.params:,}", str(v.w), str(v.a), f"{v.cost:.3g}")
    console.out.print(t)
    p, b = plan.predicted, plan.budgets
    t = Table(title="predicted footprint vs budget")
    for col in ("", "predicted", "budget", "margin"):
        t.add_column(col, justify="right")
    if b.flash_bytes:
        t.add_row("flash", fmt_bytes(p.flash_bytes), fmt_bytes(b.flash_bytes), fmt_bytes(b.flash_bytes - p.flash_bytes))
    if b.sram_bytes:
        shared = " + flash (shared region)" if b.shared_region else ""
        used = p.arena_bytes + (p.flash_bytes if b.shared_region else 0)
        t.add_row(f"peak SRAM (arena{shared})", fmt_bytes(used), fmt_bytes(b.sram_bytes),
                  fmt_bytes(b.sram_bytes - used))
    console.out.print(t)
    tm = plan.timing
    console.out.print(f"peak op {p.peak_op}; LayerStats {tm.get('stats_s', 0):.2f} s, proxy "
                      f"{tm.get('proxy_s', 0):.2f} s, ILP {tm.get('ilp_s', 0):.3f} s ({plan.solver.status}); "
                      f"total {tm.get('total_s', 0):.1f} s -> {out}")
    if plan.sweep:
        sw = plan.sweep
        console.out.print(f"Pareto sweep: {len(sw)} non-dominated plans from {fmt_bytes(sw[0].flash_bytes)} "
                          f"to {fmt_bytes(sw[-1].flash_bytes)}")
