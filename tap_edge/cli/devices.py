"""``tap-edge devices [PATTERN]`` (list the profiles, shell wildcards) and ``tap-edge devices show ID``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from tap_edge.cli.app import JsonOpt, app
from tap_edge.core import console
from tap_edge.core.errors import UserError
from tap_edge.core.units import fmt_bytes


@app.command("devices")
def devices_cmd(
    args: Annotated[list[str] | None, typer.Argument(metavar="[PATTERN | show DEVICE]",
                                                     help="Shell wildcard over profile ids, e.g. 'stm32*' (default "
                                                          "all); or 'show DEVICE' for one profile.")] = None,
    as_json: JsonOpt = False,
    pattern: Annotated[str | None, typer.Option("--pattern", hidden=True)] = None,
) -> None:
    """List the device profiles (filtered by PATTERN), or show one: tap-edge devices show stm32h743."""
    words = list(args or [])
    if words[:1] == ["show"]:
        if len(words) != 2:
            raise UserError("devices show takes one DEVICE", "e.g. tap-edge devices show stm32h743")
        devices_show(words[1], as_json)
        return
    if len(words) > 1:
        raise UserError(f"devices takes one PATTERN, got {len(words)}: {' '.join(words)}",
                        "quote a wildcard so the shell does not expand it: tap-edge devices 'stm32*'")
    devices_list(words[0] if words else (pattern or "*"), as_json)


def devices_list(pattern: str, as_json: bool) -> None:
    """List bundled device profiles whose id matches ``pattern``."""
    from tap_edge.devices import device_list, get_device, list_devices

    profiles = [get_device(n) for n in list_devices(pattern)]
    if not profiles:
        raise UserError(f"no device profile matches '{pattern}'", "tap-edge devices lists them all")
    if as_json:
        console.print_json(device_list(profiles).to_dict())
        return
    t = Table(title=f"{len(profiles)} device profiles")
    for col in ("id", "kind", "name", "default runtime", "arena (largest usable)", "weights"):
        t.add_column(col)
    for p in profiles:
        a, w = p.arena_region(), p.weights_region()
        t.add_row(p.id, p.kind, p.name, p.runtime().name, f"{fmt_bytes(p.free_bytes(a))} {a.name}",
                  f"{fmt_bytes(p.free_bytes(w))} {w.name}")
    console.out.print(t)


def devices_show(device: str, as_json: bool) -> None:
    """Show one device profile (id or YAML path): regions, reservations, runtimes and their bit-widths."""
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
    for rt in p.runtimes:
        if rt.vela is not None:
            console.out.print(vela_line(rt), markup=False)
    for m in p.mlperf_tiny:
        console.out.print(f"  MLPerf Tiny {m.version} on {m.system}{' (proxy board)' if m.proxy else ''}: "
                          f"IC {m.ic_ms} / VWW {m.vww_ms} / KWS {m.kws_ms} / AD {m.ad_ms} ms")
    console.out.print("  sources: " + "; ".join(f"[{k}] {v}" for k, v in p.sources.items()))


def vela_line(rt: Any) -> str:
    """What an Ethos-U runtime tells Vela and what its NPU runs (the widths above are the CPU's, for fallbacks)."""
    v = rt.vela
    cache = f", arena cache {fmt_bytes(v.arena_cache_size)}" if v.arena_cache_size is not None else ""
    pairs = ", ".join(f"w{w}a{a}" for w, a in sorted(rt.npu_pairs())) or "-"
    support = rt.npu.get(v.generation)
    table = f"; {len(support.builtins)} builtins on the NPU, others on the CPU" if support and support.builtins else ""
    return (f"  {rt.name}: Vela {v.accelerator}, [System_Config.{v.system_config}] @ {v.clock_hz / 1e6:g} MHz, "
            f"[Memory_Mode.{v.memory_mode}] (arena {'in SRAM' if v.arena_in_sram else 'off-chip'}){cache}, "
            f"{v.optimise}; NPU widths {pairs}{table}")
