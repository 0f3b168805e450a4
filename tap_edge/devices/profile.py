"""Device profiles: memory described as regions, platform reservations, runtimes with supported bit-widths.

One YAML file per real device lives in ``device_profiles/`` (shipped as package data) and is validated by the
pydantic models below; users pass their own file with ``--device path/to/board.yaml``. A bad file gives one
line naming the file, the field and the problem.

Runtimes that many boards share (TFLite Micro with its kernel libraries, LiteRT) are *families* in
``device_profiles/_runtimes.yaml``: their op and type support per TFLite builtin, learned from the runtimes'
kernel registrations and type checks, each fact with its source. A profile's runtime names its ``family`` and
adds what is board-specific (code size, default); fields it sets override the family's.
"""

from __future__ import annotations

import importlib.resources
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from tap_edge.core.errors import ProfileError, UserError
from tap_edge.core.registry import Registry
from tap_edge.core.units import parse_bytes
from tap_edge.devices.vela import VelaConfig
from tap_edge.documents import DeviceEntry, DeviceList
from tap_edge.graph.graph import OP_CLASSES

Confidence = Literal["high", "medium", "low", "default-guess"]


def _to_bytes(value: Any) -> int:
    try:
        return parse_bytes(value, "size")
    except UserError as e:  # a ValueError lets pydantic name the field that holds the bad size
        raise ValueError(str(e)) from None


Bytes = Annotated[int, BeforeValidator(_to_bytes)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Core(_Strict):
    name: str
    isa: str
    count: int = Field(1, ge=1)
    clock_hz: int = Field(gt=0)
    fpu: str | None = None
    simd: str | None = None


class MemoryRegion(_Strict):
    """A contiguous memory block. ``holds`` says what may be placed there: the activation arena, the weights,
    the runtime code. The arena must fit one region: that is why regions, not totals, are described."""

    name: str
    kind: Literal["sram", "tcm", "flash", "dram", "psram", "storage"]
    size: Bytes = Field(gt=0)
    base: int | None = None
    holds: list[Literal["arena", "weights", "code"]]
    xip: bool = False
    note: str | None = None


class Reservation(_Strict):
    """Bytes the platform takes from a region before the model gets any (stack, heap, BLE stack, OS)."""

    region: str
    bytes: Bytes = Field(ge=0)
    what: str
    confidence: Confidence = "medium"


#: A numeric type of a TFLite kernel: ``a8`` int8 activations, ``a16`` int16, ``a32`` float32; with weights
#: ``a8w4`` (int8 activations, int4 weights), ``a16w8`` (16x8), ``a32w16`` (float16 weights expanded to
#: float32), ``a32w8`` (hybrid); ``f16`` a float16 input (DEQUANTIZE of float16 constants).
TYPE_PATTERN = re.compile(r"^(a(8|16|32)(w(4|8|16|32))?|f16)$")
#: Kernel scratch models (memory.scratch_bytes): ``tflm`` TFLite Micro reference kernels (the int4 filter
#: unpacked into the arena), ``cmsis-nn`` CMSIS-NN on DSP cores (Cortex-M4/M7/M33), ``cmsis-nn-mve`` on
#: Helium cores (Cortex-M55/M85), ``cmsis-nn-c`` without DSP extension (Cortex-M0+), ``esp-nn`` ESP-NN on
#: the ESP32-S3, ``xnnpack`` XNNPACK, ``none``.
ScratchModel = Literal["none", "tflm", "cmsis-nn", "cmsis-nn-mve", "cmsis-nn-c", "esp-nn", "xnnpack"]


class BuiltinSupport(_Strict):
    """What a runtime's kernel for one TFLite builtin accepts: numeric ``types`` (see :data:`TYPE_PATTERN`);
    ``per_tensor_only`` lists the types it takes with per-tensor weight scales only; ``source`` a key of the
    runtime's ``sources``."""

    types: list[str]
    per_tensor_only: list[str] = Field(default_factory=list)
    source: str | None = None

    @model_validator(mode="after")
    def _known_types(self) -> BuiltinSupport:
        for t in self.types + self.per_tensor_only:
            if not TYPE_PATTERN.match(t):
                raise ValueError(f"unknown type '{t}' (write a8, a16, a32, a8w8, a8w4, a16w8, a32w32, a32w16 or f16)")
        return self


class NpuSupport(_Strict):
    """What an NPU generation runs: the (weight, activation) widths (``pairs``: ``w8a8``, ``w8a16``) and the TFLite
    builtins Vela can place on it (``builtins``); other ops fall back to the CPU. ``source``: a key of the runtime's
    ``sources``."""

    pairs: list[str]
    builtins: list[str] = Field(default_factory=list)
    source: str | None = None


class Runtime(_Strict):
    """One inference runtime on this device and what it can execute.

    ``weights`` / ``activations`` map an op class (or ``default``) to the bit-widths the kernels support, e.g.
    CMSIS-NN: ``{conv: [4, 8], dwconv: [4, 8], fc: [4, 8], default: [8]}``. 32 means float32; 16 in ``weights``
    means float16 storage (a plan's w16), 16 in ``activations`` int16 for integer runtimes. ``pairs`` restricts
    a class to the (weight, activation) combinations its kernels take (``w8a8``, ``w4a8``, ``w8a16``,
    ``w32a32``). ``builtins`` is the exact table for ``.tflite`` files: TFLite builtin (``*`` for every other
    one) -> :class:`BuiltinSupport`; a builtin missing from it is not registered. ``custom_ops`` are the
    custom ops the runtime registers. ``family`` names the shared table this runtime came from.
    """

    name: str
    family: str | None = None
    default: bool = False
    code_bytes: Bytes = 0
    weights: dict[str, list[int]]
    activations: dict[str, list[int]]
    pairs: dict[str, list[str]] = Field(default_factory=dict)
    ops: list[str] = Field(default_factory=lambda: ["*"])
    builtins: dict[str, BuiltinSupport] = Field(default_factory=dict)
    custom_ops: list[str] = Field(default_factory=list)
    scratch: ScratchModel = "none"
    alias_inplace: bool = False
    arena_alignment: int = Field(16, ge=1)
    build: str | None = None
    note: str | None = None
    sources: dict[str, str] = Field(default_factory=dict)
    vela: VelaConfig | None = None
    npu: dict[str, NpuSupport] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_classes(self) -> Runtime:
        for table in ("weights", "activations"):
            for key, bits in getattr(self, table).items():
                if key != "default" and key not in OP_CLASSES:
                    raise ValueError(f"{table}: unknown op class '{key}' (known: {', '.join(OP_CLASSES)})")
                bad = [b for b in bits if b not in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)]
                if bad:
                    raise ValueError(f"{table}.{key}: unsupported bit-width {bad[0]}")
            if "default" not in getattr(self, table):
                raise ValueError(f"{table}: needs a 'default' entry")
        for op in self.ops:
            if op != "*" and op not in OP_CLASSES:
                raise ValueError(f"ops: unknown op class '{op}'")
        for key, pairs in self.pairs.items():
            if key not in OP_CLASSES:
                raise ValueError(f"pairs: unknown op class '{key}'")
            bad = [p for p in pairs if not re.match(r"^w\d+a\d+$", p)]
            if bad:
                raise ValueError(f"pairs.{key}: '{bad[0]}' is not a width pair like w8a8")
        for name, b in self.builtins.items():
            if b.source is not None and b.source not in self.sources:
                raise ValueError(f"builtins.{name}.source: '{b.source}' is not a key of sources")
        for gen, n in self.npu.items():
            bad = [p for p in n.pairs if not re.match(r"^w\d+a\d+$", p)]
            if bad:
                raise ValueError(f"npu.{gen}.pairs: '{bad[0]}' is not a width pair like w8a8")
            if n.source is not None and n.source not in self.sources:
                raise ValueError(f"npu.{gen}.source: '{n.source}' is not a key of sources")
        if self.vela is not None and self.npu and self.vela.generation not in self.npu:
            raise ValueError(f"vela.accelerator: {self.vela.accelerator} is an Ethos-{self.vela.generation.upper()}, "
                             f"which npu does not describe ({', '.join(self.npu)})")
        return self

    def supports_op(self, op_class: str) -> bool:
        """Whether the class runs at all; identity-like ops always do (converters drop them)."""
        return op_class == "identity" or "*" in self.ops or op_class in self.ops

    def pair_allowed(self, op_class: str, w: int, a: int) -> bool:
        """Whether the class's kernels take weights at ``w`` bits with activations at ``a`` bits together."""
        return op_class not in self.pairs or f"w{w}a{a}" in self.pairs[op_class]

    def npu_pairs(self) -> set[tuple[int, int]]:
        """The (weight, activation) widths this runtime's NPU runs (empty: no NPU described)."""
        if self.vela is None or self.vela.generation not in self.npu:
            return set()
        return {(int(p[1:].split("a")[0]), int(p.split("a")[1])) for p in self.npu[self.vela.generation].pairs}

    def builtin(self, name: str) -> BuiltinSupport | None:
        """The kernel support of a TFLite builtin; None when the runtime does not register it (or has no table:
        see :attr:`has_builtins`)."""
        return self.builtins.get(name, self.builtins.get("*"))

    @property
    def has_builtins(self) -> bool:
        return bool(self.builtins)

    def source_of(self, key: str | None) -> str | None:
        return self.sources.get(key) if key else None

    def weight_bits(self, op_class: str) -> list[int]:
        return self.weights.get(op_class, self.weights["default"])

    def activation_bits(self, op_class: str) -> list[int]:
        return self.activations.get(op_class, self.activations["default"])


class MLPerfTiny(_Strict):
    """MLPerf Tiny closed-division reference latencies (ms); ``system`` names the board actually measured."""

    system: str
    version: str
    ic_ms: float | None = None
    vww_ms: float | None = None
    kws_ms: float | None = None
    ad_ms: float | None = None
    proxy: bool = False


class DeviceProfile(_Strict):
    """Everything tap-edge needs to decide whether a model fits a device."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    name: str
    vendor: str
    kind: Literal["mcu", "npu", "phone", "edge-linux"]
    soc: str
    cores: list[Core] = Field(min_length=1)
    memories: list[MemoryRegion] = Field(min_length=1)
    reserved: list[Reservation] = Field(default_factory=list)
    runtimes: list[Runtime] = Field(min_length=1)
    mlperf_tiny: list[MLPerfTiny] = Field(default_factory=list)
    sources: dict[str, str] = Field(min_length=1)
    confidence: dict[str, Confidence] = Field(default_factory=dict)
    notes: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _families(cls, data: Any) -> Any:
        """Expand ``runtimes[].family`` with the shared tables of ``_runtimes.yaml`` (profile fields win)."""
        if not isinstance(data, dict) or not isinstance(data.get("runtimes"), list):
            return data
        families = runtime_families()
        out = []
        for i, rt in enumerate(data["runtimes"]):
            if isinstance(rt, dict) and rt.get("family") is not None:
                name = rt["family"]
                if name not in families:
                    raise ValueError(f"runtimes.{i}.family: unknown runtime family '{name}' "
                                     f"(known: {', '.join(sorted(families))})")
                fam = families[name]
                rt = {**fam, **rt, "sources": {**fam.get("sources", {}), **rt.get("sources", {})}}
            out.append(rt)
        return {**data, "runtimes": out}

    @model_validator(mode="after")
    def _consistent(self) -> DeviceProfile:
        names = [m.name for m in self.memories]
        if len(set(names)) != len(names):
            raise ValueError("memories: region names must be unique")
        for r in self.reserved:
            if r.region not in names:
                raise ValueError(f"reserved: region '{r.region}' is not one of the memories ({', '.join(names)})")
        for m in self.memories:
            taken = sum(r.bytes for r in self.reserved if r.region == m.name)
            if taken > m.size:
                raise ValueError(f"reserved: {taken} bytes reserved in region '{m.name}', which has {m.size}")
        if not any("arena" in m.holds for m in self.memories):
            raise ValueError("memories: no region holds the arena")
        if not any("weights" in m.holds for m in self.memories):
            raise ValueError("memories: no region holds the weights")
        defaults = [rt.name for rt in self.runtimes if rt.default]
        if len(defaults) > 1:
            raise ValueError(f"runtimes: more than one default ({', '.join(defaults)})")
        rt_names = [rt.name for rt in self.runtimes]
        if len(set(rt_names)) != len(rt_names):
            raise ValueError("runtimes: names must be unique")
        fields = set(type(self).model_fields)
        for key in self.confidence:
            if key.split(".")[0] not in fields:
                raise ValueError(f"confidence: '{key}' is not a field of the profile")
        return self._vela_cache_sizes()

    def _vela_cache_sizes(self) -> DeviceProfile:
        """Runtimes with an Ethos-U whose memory mode leaves ``arena_cache_size`` unsaid get it from this device:
        the free bytes of the arena region less the runtime's ``tflm_reserve`` (see :mod:`tap_edge.devices.vela`)."""
        if not any(rt.vela is not None and rt.vela.arena_cache_size is None for rt in self.runtimes):
            return self
        region = self.arena_region()
        out = []
        for rt in self.runtimes:
            v = rt.vela
            if v is not None and v.arena_cache_size is None:
                size = self.free_bytes(region) - v.tflm_reserve
                if size <= 0:
                    raise ValueError(f"runtimes.{rt.name}.vela: {region.name} has {self.free_bytes(region)} free "
                                     f"bytes, less than tflm_reserve {v.tflm_reserve}")
                note = (f"{region.name} free bytes ({self.free_bytes(region)}) less tflm_reserve ({v.tflm_reserve})"
                        if v.arena_in_sram or v.port_memory("cache") == "Sram" else None)
                if note is not None:
                    v = v.model_copy(update={"memory": {**v.memory, "arena_cache_size": size},
                                             "arena_cache_note": note})
                    rt = rt.model_copy(update={"vela": v})
            out.append(rt)
        return self.model_copy(update={"runtimes": out})

    # ---- derived budgets -------------------------------------------------------------------------------
    def runtime(self, name: str | None = None) -> Runtime:
        if name is None:
            return next((rt for rt in self.runtimes if rt.default), self.runtimes[0])
        for rt in self.runtimes:
            if rt.name == name:
                return rt
        raise UserError(f"device '{self.id}' has no runtime '{name}'",
                        f"choose one of: {', '.join(rt.name for rt in self.runtimes)}")

    def free_bytes(self, region: MemoryRegion) -> int:
        """Region size minus the platform's reservations in it."""
        return region.size - sum(r.bytes for r in self.reserved if r.region == region.name)

    def arena_region(self) -> MemoryRegion:
        """The largest usable contiguous region that may hold the activation arena."""
        return max((m for m in self.memories if "arena" in m.holds), key=self.free_bytes)

    def weights_region(self) -> MemoryRegion:
        """The largest usable region that may hold the weights (XIP flash on MCUs, DRAM on phones)."""
        return max((m for m in self.memories if "weights" in m.holds), key=self.free_bytes)


class _ProfileFile(BaseModel):
    model_config = ConfigDict(extra="allow")


def _format_validation_error(path: Path | str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; see device_profiles/README.md for the fields)"
    elif first["type"] == "missing":
        msg = "required field is missing"
    more = f" (+{len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"{path}: field '{loc}': {msg}{more}"


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and validate one profile YAML; every failure is a one-line ``ProfileError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: device profile file not found", "check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read device profile ({e.__class__.__name__})") from None
    return parse_profile(text, str(path))


def parse_profile(text: str, origin: str = "<profile>") -> DeviceProfile:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ProfileError(f"{origin}: broken YAML{where}: {problem}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{origin}: a device profile must be a YAML mapping, got {type(data).__name__}")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(_format_validation_error(origin, e)) from None
    except UserError as e:  # a size string that does not parse
        raise ProfileError(f"{origin}: {e}") from None


# ---- runtime families ------------------------------------------------------------------------------------
#: The shared runtime tables (not a device: ``_`` keeps it out of the profile registry).
FAMILIES_FILE = "_runtimes.yaml"
_FAMILY_ONLY = ("extends", "description")


@cache
def runtime_families() -> dict[str, dict[str, Any]]:
    """Family name -> the runtime fields it gives (``extends`` resolved), from ``device_profiles/_runtimes.yaml``.

    Every family is validated as a :class:`Runtime`; a bad table is one ProfileError naming the family and
    field."""
    path = _bundled_dir() / FAMILIES_FILE
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    table = raw.get("families", {}) if isinstance(raw, dict) else {}
    resolved: dict[str, dict[str, Any]] = {}

    def resolve(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
        if name in resolved:
            return resolved[name]
        if name not in table or name in seen:
            raise ProfileError(f"{path}: family '{seen[-1] if seen else name}' extends unknown or circular "
                               f"family '{name}'")
        spec = dict(table[name])
        base = resolve(spec["extends"], (*seen, name)) if spec.get("extends") else {}
        fields = {**base, **{k: v for k, v in spec.items() if k not in _FAMILY_ONLY}}
        fields["sources"] = {**base.get("sources", {}), **spec.get("sources", {})}
        fields["family"] = name
        try:
            Runtime.model_validate({"name": name, **fields})
        except ValidationError as e:
            raise ProfileError(_format_validation_error(f"{path} (family {name})", e)) from None
        resolved[name] = fields
        return fields

    for name in table:
        resolve(name)
    return resolved


# ---- the registry of bundled profiles -----------------------------------------------------------------
_DEVICES: Registry[DeviceProfile] = Registry("device")


def _bundled_dir() -> Path:
    return Path(str(importlib.resources.files("tap_edge.device_profiles")))


@cache
def _load_bundled() -> None:
    for f in sorted(_bundled_dir().glob("*.yaml")):
        if f.name.startswith("_"):
            continue
        prof = load_profile(f)
        if prof.id != f.stem:
            raise ProfileError(f"{f}: field 'id': '{prof.id}' must equal the file name '{f.stem}'")
        _DEVICES.add(prof.id, prof, replace=True)


def register_device(profile: DeviceProfile) -> DeviceProfile:
    """Add a profile (e.g. a board file of your own) to the registry for this process."""
    _load_bundled()
    return _DEVICES.add(profile.id, profile, replace=True)


def list_devices(pattern: str = "*") -> list[str]:
    _load_bundled()
    return _DEVICES.list(pattern)


def get_device(name_or_path: str) -> DeviceProfile:
    """A bundled profile by id, or a YAML file by path (anything ending in .yaml/.yml or containing '/')."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        return load_profile(name_or_path)
    _load_bundled()
    return _DEVICES.get(name_or_path)


def device_list(profiles: list[DeviceProfile]) -> DeviceList:
    """The :class:`~tap_edge.documents.DeviceList` of ``tap-edge devices --json``."""
    entries = []
    for p in profiles:
        a, w = p.arena_region(), p.weights_region()
        entries.append(DeviceEntry(id=p.id, name=p.name, kind=p.kind, vendor=p.vendor, runtime=p.runtime().name,
                                   arena_region=a.name, arena_bytes=p.free_bytes(a), weights_region=w.name,
                                   weights_bytes=p.free_bytes(w)))
    return DeviceList(devices=entries)
