"""How Vela compiles for a device's Ethos-U: the accelerator configuration, the system configuration and memory
mode of a Vela ``.ini`` file, as a runtime of a device profile states them (``runtimes[].vela``), and a user's own
``--vela-config`` file read with the same rules.

Vela (``ethos-u-vela``) reads its system and memory description from ``[System_Config.NAME]`` and
``[Memory_Mode.NAME]`` sections (ARM-software/ethos-u-vela OPTIONS.md, "Configuration File" and "Memory Modes"):
the system section names the memory behind each AXI port and its timing, the memory mode puts the constants
(``const_mem_area``), the arena (``arena_mem_area``) and the cache (``cache_mem_area``) on a port and bounds them with
``arena_cache_size``. A profile writes both sections as mappings; :func:`ini_text` turns them into the file Vela
reads, and :func:`parse_ini` checks a user's file (one line naming the file, section and key when it is wrong).

A profile that does not state ``arena_cache_size`` gets it from its memory (``DeviceProfile``): the free bytes
of the region Vela's SRAM stands for, less ``tflm_reserve`` for what TFLite Micro keeps beside Vela's arena. Vela's
own default (4 MiB, regor's) is larger than many chips' SRAM: its Performance schedule then plans buffers the chip
does not have, the "why did the runtime fail after Vela said it fits" of its users.
"""

from __future__ import annotations

import configparser
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tap_edge.core.errors import UserError
from tap_edge.core.units import parse_bytes

#: Vela's accelerator configurations (``vela --help``, ethos-u-vela 5.2.0).
ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512",
                "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048")
Accelerator = Literal["ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256",
                      "ethos-u65-512", "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024",
                      "ethos-u85-2048"]
#: The memories an AXI port can reach, and the per-memory timing keys (OPTIONS.md, "Configuration File").
MEMORIES = ("Sram", "Dram", "OnChipFlash", "OffChipFlash")
MEMORY_KEYS = ("clock_scale", "burst_length", "read_latency", "write_latency", "max_reads", "max_writes", "ports_used")
SYSTEM_KEYS = ("core_clock", "axi0_port", "axi1_port", *(f"{m}_{k}" for m in MEMORIES for k in MEMORY_KEYS))
MODE_KEYS = ("const_mem_area", "arena_mem_area", "cache_mem_area", "arena_cache_size", "inherit")
PORTS = ("Axi0", "Axi1")
SYSTEM_PREFIX, MODE_PREFIX = "System_Config.", "Memory_Mode."

IniValue = str | int | float


class VelaConfig(BaseModel):
    """What Vela is told about the device (see the module docstring). ``system`` / ``memory`` are the keys of the
    ``[System_Config.<system_config>]`` / ``[Memory_Mode.<memory_mode>]`` sections; ``optimise`` Vela's strategy;
    ``tflm_reserve`` the SRAM kept for TFLite Micro's own allocations when the cache size is derived;
    ``arena_cache_note`` says where a derived ``arena_cache_size`` came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accelerator: Accelerator
    system_config: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    memory_mode: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    system: dict[str, IniValue]
    memory: dict[str, IniValue]
    optimise: Literal["Performance", "Size"] = "Performance"
    tflm_reserve: int = Field(8192, ge=0)
    arena_cache_note: str | None = None
    source: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _sizes(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("tflm_reserve"), str):
            try:
                data = {**data, "tflm_reserve": parse_bytes(data["tflm_reserve"], "vela.tflm_reserve")}
            except UserError as e:
                raise ValueError(str(e)) from None
        return data

    @model_validator(mode="after")
    def _known_keys(self) -> VelaConfig:
        problem = section_problem(SYSTEM_PREFIX + self.system_config, self.system) or \
            section_problem(MODE_PREFIX + self.memory_mode, self.memory)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def generation(self) -> str:
        """``u55``, ``u65`` or ``u85``."""
        return self.accelerator.split("-")[1]

    @property
    def macs(self) -> int:
        return int(self.accelerator.rsplit("-", 1)[1])

    @property
    def clock_hz(self) -> float:
        return float(self.system["core_clock"])

    @property
    def arena_cache_size(self) -> int | None:
        value = self.memory.get("arena_cache_size")
        return int(float(value)) if value is not None else None

    def port_memory(self, area: str) -> str:
        """The memory (``Sram``, ``Dram``, ...) behind a memory area (``const``, ``arena`` or ``cache``)."""
        port = str(self.memory.get(f"{area}_mem_area", "Axi0"))
        return str(self.system.get(f"{port.lower()}_port", "Sram"))

    @property
    def arena_in_sram(self) -> bool:
        """Whether Vela's arena (the TFLite Micro tensor arena with the NPU's scratch) lives in SRAM."""
        return self.port_memory("arena") == "Sram"

    @property
    def const_in_sram(self) -> bool:
        return self.port_memory("const") == "Sram"

    def sections(self) -> dict[str, dict[str, IniValue]]:
        return {SYSTEM_PREFIX + self.system_config: dict(self.system),
                MODE_PREFIX + self.memory_mode: dict(self.memory)}


def section_problem(section: str, keys: dict[str, IniValue]) -> str | None:
    """Why a Vela section would not be read as meant (an unknown key, a port or an area Vela does not know, a
    missing required key), or None."""
    system = section.startswith(SYSTEM_PREFIX)
    known = SYSTEM_KEYS if system else MODE_KEYS
    lower = {k.lower(): k for k in known}
    for key, value in keys.items():
        if key.lower() not in lower:
            return f"[{section}]: unknown key '{key}' (Vela reads {', '.join(known[:6])}, ...)"
        name = lower[key.lower()]
        text = str(value).strip()
        if name in ("axi0_port", "axi1_port") and text not in MEMORIES:
            return f"[{section}] {key}={text}: a port connects one of {', '.join(MEMORIES)}"
        if name.endswith("_mem_area") and text not in PORTS:
            return f"[{section}] {key}={text}: a memory area is on Axi0 or Axi1"
        if name not in ("axi0_port", "axi1_port", "inherit") and not name.endswith("_mem_area"):
            try:
                float(text)
            except ValueError:
                return f"[{section}] {key}={text}: not a number"
    required = ("core_clock", "axi0_port", "axi1_port") if system else ()
    if not system and "inherit" not in {k.lower() for k in keys}:
        required = ("const_mem_area", "arena_mem_area", "cache_mem_area")
    missing = [k for k in required if k not in {x.lower() for x in keys}]
    if missing:
        return f"[{section}]: missing {', '.join(missing)}"
    return None


def ini_text(config: VelaConfig, header: str = "") -> str:
    """The Vela ``.ini`` file for ``config`` (its system and memory-mode sections)."""
    lines = [f"; {line}" for line in header.splitlines()] if header else []
    for section, keys in config.sections().items():
        lines.append(f"[{section}]")
        lines += [f"{k}={v}" for k, v in keys.items()]
        lines.append("")
    return "\n".join(lines)


def parse_ini(text: str, origin: str) -> dict[str, dict[str, str]]:
    """The sections of a Vela ``.ini`` file; a file Vela would misread is one UserError naming what is wrong."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # Vela's keys are case-sensitive names
    try:
        parser.read_string(text, source=origin)
    except configparser.Error as e:
        first = " ".join(str(e).split())
        raise UserError(f"{origin}: not a Vela configuration file ({first[:200]})",
                        "write [System_Config.NAME] and [Memory_Mode.NAME] sections as in Vela's Arm/vela.ini"
                        ) from None
    sections = {name: dict(parser[name]) for name in parser.sections()}
    if not sections:
        raise UserError(f"{origin}: no sections", "write [System_Config.NAME] and [Memory_Mode.NAME] sections")
    for name, keys in sections.items():
        if not name.startswith((SYSTEM_PREFIX, MODE_PREFIX)):
            raise UserError(f"{origin}: section [{name}] is neither a System_Config nor a Memory_Mode",
                            "name sections [System_Config.NAME] or [Memory_Mode.NAME]")
        problem = section_problem(name, keys)
        if problem:
            raise UserError(f"{origin}: {problem}", "see Vela's OPTIONS.md, 'Configuration File'")
    for prefix in (SYSTEM_PREFIX, MODE_PREFIX):  # Vela needs one of each; which one is picked later
        if not any(name.startswith(prefix) for name in sections):
            raise UserError(f"{origin}: no [{prefix}NAME] section", "add one, as in Vela's Arm/vela.ini")
    for name, keys in sections.items():
        parent = keys.get("inherit")
        if parent is not None and parent.strip("[] ") not in sections:
            raise UserError(f"{origin}: [{name}] inherits [{parent.strip('[] ')}], which the file does not define",
                            "add the parent section or drop inherit")
    return sections


def pick_sections(sections: dict[str, dict[str, str]], config: VelaConfig | None, origin: str) -> tuple[str, str]:
    """The (system config, memory mode) names to select in a user's file: the profile's names when the file defines
    them, else the file's only section of each kind; one line otherwise."""
    names = {prefix: [n.removeprefix(prefix) for n in sections if n.startswith(prefix)]
             for prefix in (SYSTEM_PREFIX, MODE_PREFIX)}
    picked = []
    for prefix, wanted in ((SYSTEM_PREFIX, config.system_config if config else None),
                           (MODE_PREFIX, config.memory_mode if config else None)):
        have = names[prefix]
        if wanted in have:
            picked.append(wanted)
        elif len(have) == 1:
            picked.append(have[0])
        else:
            kind = prefix.rstrip(".")
            listed = ", ".join(have) or "none"
            raise UserError(f"{origin}: which [{kind}.NAME] to use? it defines {listed}"
                            + (f", not the profile's '{wanted}'" if wanted else ""),
                            f"keep one [{kind}.NAME] section, or name it '{wanted}' as the device profile does"
                            if wanted else f"keep one [{kind}.NAME] section")
    return picked[0], picked[1]


def resolved_mode(sections: dict[str, dict[str, str]], mode: str) -> dict[str, str]:
    """A memory mode's keys with its ``inherit`` chain applied (the child's keys win)."""
    keys: dict[str, str] = {}
    seen: set[str] = set()
    name = MODE_PREFIX + mode
    while name in sections and name not in seen:
        seen.add(name)
        keys = {**sections[name], **keys}
        parent = sections[name].get("inherit")
        name = parent.strip("[] ") if parent else ""
    keys.pop("inherit", None)
    return keys


def config_from_file(text: str, origin: str, base: VelaConfig | None) -> VelaConfig:
    """A :class:`VelaConfig` from a user's ``--vela-config`` file (validated, see :func:`parse_ini`), on the
    profile's accelerator (``base``; a device must be given)."""
    if base is None:
        raise UserError("--vela-config needs a device whose runtime has an Ethos-U",
                        "pass -d DEVICE (tap-edge devices)")
    sections = parse_ini(text, origin)
    system, mode = pick_sections(sections, base, origin)
    memory = resolved_mode(sections, mode)
    for area in ("const", "arena", "cache"):
        if f"{area}_mem_area" not in memory:
            raise UserError(f"{origin}: [Memory_Mode.{mode}] does not say {area}_mem_area",
                            "Vela would use an internal default the device may not have; state it")
    try:
        return VelaConfig(accelerator=base.accelerator, system_config=system, memory_mode=mode,
                          system=dict(sections[SYSTEM_PREFIX + system]), memory=memory, optimise=base.optimise,
                          tflm_reserve=base.tflm_reserve, source=f"--vela-config {origin}")
    except ValidationError as e:
        raise UserError(f"{origin}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
