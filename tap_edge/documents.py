"""Every JSON a command writes, one versioned class each (the documents between the steps of the data path).

| document | schema | written by |
|---|---|---|
| :class:`CheckReport` | ``tap-edge/check-report`` | ``tap-edge check --json`` |
| :class:`Plan` | ``tap-edge/plan`` | ``tap-edge plan`` (``plan.json``) |
| :class:`EvalResult` | ``tap-edge/eval`` | ``tap-edge eval --json`` / ``--out`` |
| :class:`Manifest` | ``tap-edge/artifact`` | ``tap-edge compile`` (``<artifact>.manifest.json``) |
| :class:`MeasureReport` | ``tap-edge/measure-report`` | ``tap-edge measure --json`` |
| :class:`RunSummary` | ``tap-edge/evolve-summary`` | ``tap-edge evolve --json`` / ``--report`` |
| :class:`DeviceList` | ``tap-edge/device-list`` | ``tap-edge devices --json`` |
| :class:`BackendList` | ``tap-edge/backend-list`` | ``tap-edge backends --json`` |

Each class is a pydantic model (validation and JSON Schema come from one declaration); on disk a document is
``{"schema": ..., "version": ..., **fields}``. Producers fill the classes, the report reads them, and
``tap_edge/schemas/<name>.schema.json`` is generated from them (``python -m tap_edge.documents`` rewrites the
files; a test checks they are current; ``python -m tap_edge.documents FILE...`` validates written documents).
Reading a document of another schema or version gives one line.

Import rule: this module imports only ``tap_edge.core``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tap_edge.core.errors import UserError
from tap_edge.core.registry import Registry
from tap_edge.core.serialize import json_default
from tap_edge.core.units import pct

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
Verdict = Literal["FITS", "OOM", "UNSUPPORTED"]
MeasuredVerdict = Literal["FITS", "OOM", "UNSUPPORTED", "UNKNOWN", "MEASURED"]


class DocumentError(UserError):
    """A file that is not the document it should be (wrong schema, other version, bad fields)."""


class Part(BaseModel):
    """A typed piece of a document: unknown keys are an error (so producers and readers cannot drift)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Document(Part):
    """Base of every document: ``SCHEMA`` and ``VERSION`` are written first, checked when read."""

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = ""  # short name (report sections, messages)
    WRITTEN_BY: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, "version": self.VERSION, **self.model_dump(mode="json")}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=json_default)

    @classmethod
    def from_dict(cls, data: Any, source: str = "document") -> Any:
        """The document in ``data`` (a parsed JSON object); one-line :class:`DocumentError` otherwise."""
        hint = f"pass a {cls.KIND} document written by {cls.WRITTEN_BY}"
        if not isinstance(data, dict):
            raise DocumentError(f"{source}: expected a JSON object, got {type(data).__name__}", hint)
        if data.get("schema") != cls.SCHEMA:
            got = f"schema {data['schema']!r}" if "schema" in data else "no 'schema' key"
            raise DocumentError(f"{source}: not a {cls.SCHEMA} document ({got})", hint)
        if data.get("version") != cls.VERSION:
            raise DocumentError(f"{source}: {cls.SCHEMA} version {data.get('version')!r}; this tap-edge reads "
                                f"version {cls.VERSION}", f"re-run {cls.WRITTEN_BY} with this tap-edge")
        body = {k: v for k, v in data.items() if k not in ("schema", "version")}
        try:
            return cls.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "(top level)"
            raise DocumentError(f"{source}: {cls.SCHEMA} field '{where}': {first['msg']}"
                                f"{f' (+{e.error_count() - 1} more)' if e.error_count() > 1 else ''}",
                                hint) from None

    @classmethod
    def read(cls, path: str | Path) -> Any:
        return cls.from_dict(read_json(path), str(path))

    def write(self, path: str | Path) -> Path:
        """Write atomically (a temporary file, then a rename): an older file is never half overwritten."""
        return write_json(self.to_dict(), path)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of the document as written on disk (schema and version included)."""
        body = cls.model_json_schema()
        props = {"schema": {"const": cls.SCHEMA}, "version": {"const": cls.VERSION}, **body.get("properties", {})}
        out: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": cls.SCHEMA,
                               "title": body.get("title", cls.__name__),
                               "description": (cls.__doc__ or "").strip().splitlines()[0],
                               "type": "object", "properties": props,
                               "required": ["schema", "version", *body.get("required", [])],
                               "additionalProperties": False}
        if "$defs" in body:
            out["$defs"] = body["$defs"]
        return out


DOCUMENTS: Registry[type[Document]] = Registry("document schema")


def register_document(cls: type[Document]) -> type[Document]:
    DOCUMENTS.add(cls.SCHEMA, cls)
    return cls


def read_json(path: str | Path, hint: str = "pass a JSON file written by tap-edge") -> Any:
    """Parse a JSON file; every problem is one line naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: no such file", hint) from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, not a JSON file", hint) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read it ({e.__class__.__name__})", hint) from None
    if not text.strip():
        raise UserError(f"{p}: the file is empty", hint)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", hint) from None
    except RecursionError:
        raise UserError(f"{p}: JSON nested too deeply to read", hint) from None


def write_json(data: Any, path: str | Path) -> Path:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=json_default) + "\n")
        tmp.replace(p)
    except OSError as e:
        raise UserError(f"{p}: cannot write ({e.strerror or e.__class__.__name__})", "pick a writable path") from None
    return p


def document_from_dict(data: Any, source: str = "document") -> Document:
    """Any document, dispatched on its ``schema`` key."""
    names = ", ".join(DOCUMENTS.list())
    hint = f"pass JSON written by a tap-edge command (schemas: {names})"
    if not isinstance(data, dict):
        raise DocumentError(f"{source}: expected a JSON object with a 'schema' key, got {type(data).__name__}",
                            hint)
    schema = data.get("schema")
    if not isinstance(schema, str) or schema not in DOCUMENTS:
        got = f"schema {schema!r}" if "schema" in data else "no 'schema' key"
        raise DocumentError(f"{source}: not a tap-edge document ({got})", hint)
    return DOCUMENTS.get(schema).from_dict(data, source)


def read_document(path: str | Path) -> Document:
    return document_from_dict(read_json(path), str(path))


# ---- check ------------------------------------------------------------------------------------------------
class InputInfo(Part):
    """One model input as it was planned: the concrete shape, and where it came from (``model``: the file
    fixes every dim; ``user``: ``--input-shape``; ``assumed batch 1``: only a batch dim was open;
    ``preprocess``: a PyTorch model's own preprocessing). ``declared``: the file's shape, open dims as their
    symbol, ``?`` or -1."""

    name: str
    shape: list[int]
    dtype: str = "float32"
    source: Literal["model", "user", "assumed batch 1", "preprocess"]
    declared: list[int | str] | None = None
    note: str | None = Field(None, description="e.g. that TFLite Micro cannot resize the input")


class UnknownOp(Part):
    op: str
    op_type: str


class ModelSummary(Part):
    name: str
    frontend: Literal["torch", "onnx", "tflite"]
    ops: int = Field(ge=0)
    params: int = Field(ge=0)
    macs: int = Field(ge=0)
    unknown_ops: list[UnknownOp] = Field(default_factory=list)
    inputs: list[InputInfo] = Field(default_factory=list, description="the input shapes the figures are for")
    unresolved_shapes: list[str] = Field(default_factory=list, description="tensors whose size shape inference "
                                         "left open at these inputs (each open dim planned at 1)")


class LiveTensor(Part):
    tensor: str
    bytes: int


class UnsupportedOp(Part):
    op: str
    problem: str


class CpuFallback(Part):
    """An operator Vela leaves to the CPU: its TFLite builtin, the tensor it writes and Vela's reason."""

    op: str
    tensor: str
    reason: str | None = None


class VelaPlan(Part):
    """What Vela plans for a model on one Ethos-U (or what tap-edge predicts it plans: ``by`` is ``vela`` when Vela
    ran, ``rules`` for tap-edge's model of it; ``what`` says on what it ran). Bytes; ``sram_bytes`` is Vela's "Total
    SRAM used", ``flash_bytes`` its constants ("Off-chip Flash used"), ``file_bytes`` the optimised .tflite;
    ``sram_need_bytes`` adds what TFLite Micro keeps beside Vela's arena when that is in SRAM; ``npu_ms`` is Vela's
    cycle estimate at ``clock_hz``."""

    by: Literal["vela", "rules"]
    what: str
    accelerator: str
    system_config: str
    memory_mode: str
    optimise: str
    arena_cache_size: int | None = None
    sram_bytes: int = Field(ge=0)
    dram_bytes: int = Field(0, ge=0)
    flash_bytes: int = Field(ge=0)
    file_bytes: int = Field(ge=0)
    read_only_bytes: int = Field(ge=0)
    command_stream_bytes: int = Field(0, ge=0)
    scratch_bytes: int = Field(0, ge=0)
    scratch_fast_bytes: int = Field(0, ge=0)
    npu_ops: int = Field(0, ge=0, description="ethos-u custom ops (NPU blocks) in the optimised model")
    cpu_ops: list[CpuFallback] = Field(default_factory=list)
    encoded_weights_bytes: int | None = None
    original_weights_bytes: int | None = None
    npu_cycles: int | None = None
    total_cycles: int | None = None
    clock_hz: float = 0.0
    npu_ms: float | None = Field(None, description="Vela's estimate: total cycles at clock_hz")
    tflm_tail_bytes: int = Field(0, ge=0)
    cpu_scratch_bytes: int = Field(0, ge=0)
    sram_need_bytes: int = Field(0, ge=0)
    arena_in_sram: bool = True
    vela_version: str | None = None


class Widths(Part):
    w: int
    a: int


class LayerChange(Part):
    """One layer a suggested widths plan changes."""

    layer: str
    op_class: str
    params: int
    before: Widths
    after: Widths


class WidthsSuggestion(Part):
    """A widths plan that fits the device: one solve of the exact allocation program under the device's flash
    and arena limits with a data-free objective (``objective`` says what it minimises). ``default`` and
    ``layers`` are a plan (``tap-edge check --plan`` and ``compile --plan`` read a file with them)."""

    objective: str
    cost: float = Field(description="the objective's value for this plan")
    backend: str | None = Field(None, description="the backend whose build rules the plan keeps")
    flash_bytes: int = Field(ge=0)
    arena_bytes: int = Field(ge=0)
    sram_used_bytes: int = Field(description="arena, plus the flash total when weights and arena share a region", ge=0)
    default: Widths
    layers: dict[str, Widths]
    changed: list[LayerChange] = Field(default_factory=list)
    plan_file: str | None = Field(None, description="where the plan was written (check --suggest-plans)")


class ResolutionSuggestion(Part):
    """The largest input resolution (spatial dims scaled together) at which the arena floor fits."""

    input: str
    shape: list[int] = Field(description="the shape the verdict is for")
    fits_shape: list[int] | None = Field(None, description="largest shape that fits; None: even the smallest fails")
    arena_bytes: int | None = Field(None, description="arena floor at fits_shape", ge=0)
    method: Literal["reloaded", "scaled"] = Field(
        description="reloaded: the model was loaded again at that shape; scaled: activation bytes scaled by the "
                    "input area (the model cannot be loaded at another shape)")
    widths: WidthsSuggestion | None = Field(None, description="the cheapest widths plan at fits_shape (reloaded)")


class QuantizationFloor(Part):
    """Quantization cannot fit the model on this runtime: the smallest flash and arena any widths plan it
    builds can reach, where the arena peaks, and what input resolution would fit."""

    binding: list[Literal["flash", "SRAM"]]
    activation_bits: int = Field(description="the runtime's narrowest activation width")
    weight_bits: int = Field(description="the narrowest weight width it builds")
    flash_floor_bytes: int = Field(ge=0)
    flash_limit_bytes: int = Field(ge=0)
    arena_floor_bytes: int = Field(description="smallest arena (plus flash on a shared region) of any plan", ge=0)
    sram_limit_bytes: int
    peak_op: str
    live_at_peak: list[LiveTensor] = Field(default_factory=list)
    resolution: ResolutionSuggestion | None = None


class ProfileSuggestion(Part):
    """The nearest bundled profile on which the model fits at the widths asked for."""

    device: str
    device_name: str
    runtime: str
    flash_bytes: int = Field(ge=0)
    flash_limit_bytes: int = Field(ge=0)
    peak_sram_bytes: int = Field(ge=0)
    sram_limit_bytes: int
    why: str = Field(description="what makes it near: same vendor / SoC family / core")


class FitSuggestions(Part):
    """What would make a failing device fit (``tap-edge check --suggest``), each computed, not guessed."""

    widths: WidthsSuggestion | None = None
    floor: QuantizationFloor | None = None
    profile: ProfileSuggestion | None = None
    notes: list[str] = Field(default_factory=list, description="why a kind of change cannot help")
    seconds: float = 0.0


class DeviceVerdict(Part):
    """One device's verdict. Margins = limit - used (negative: over); the percentages are None when the
    limit is not positive (nothing left for the arena, e.g. weights fill a shared region)."""

    device: str
    device_name: str
    runtime: str
    verdict: Verdict
    problems: list[str]
    flash_bytes: int = Field(description="weights + scales + biases + float constants + runtime code", ge=0)
    flash_limit_bytes: int = Field(ge=0)
    flash_region: str
    peak_sram_bytes: int = Field(description="planned arena size (greedy by size, as TFLite Micro)", ge=0)
    sram_limit_bytes: int = Field(description="largest usable contiguous region after reservations, less the flash "
                                  "total when weights and arena share it (negative: the weights alone overflow it)")
    sram_region: str
    peak_op: str = Field(description="op at the step with the most live activation bytes")
    peak_step: int
    flash: dict[str, int] = Field(default_factory=dict)
    live_at_peak: list[LiveTensor] = Field(default_factory=list)
    unsupported: list[UnsupportedOp] = Field(default_factory=list)
    flash_margin_bytes: int = 0
    sram_margin_bytes: int = 0
    flash_margin_pct: float | None = None
    sram_margin_pct: float | None = None
    suggestions: FitSuggestions | None = Field(None, description="what would make it fit (check --suggest)")
    prediction_by: str | None = Field(None, description="how the memory was predicted when not by tap-edge's own "
                                      "planner (Ethos-U: Vela on the model or a stand-in, or tap-edge's Vela rules)")
    vela: VelaPlan | None = Field(None, description="Vela's plan on an Ethos-U runtime (SRAM, flash, CPU fallbacks)")

    @model_validator(mode="before")
    @classmethod
    def _margins(cls, data: Any) -> Any:
        if isinstance(data, dict) and "flash_margin_bytes" not in data:
            data = dict(data)
            fm = data["flash_limit_bytes"] - data["flash_bytes"]
            sm = data["sram_limit_bytes"] - data["peak_sram_bytes"]
            data.update(flash_margin_bytes=fm, sram_margin_bytes=sm,
                        flash_margin_pct=pct(fm, data["flash_limit_bytes"]),
                        sram_margin_pct=pct(sm, data["sram_limit_bytes"]))
        return data


class MemoryTimeline(Part):
    ops: list[str] = Field(default_factory=list)
    live_bytes: list[int] = Field(default_factory=list)


@register_document
class CheckReport(Document):
    """Will the model fit: one verdict per device (``tap-edge check --json``). Sizes in bytes."""

    SCHEMA: ClassVar[str] = "tap-edge/check-report"
    KIND: ClassVar[str] = "check"
    WRITTEN_BY: ClassVar[str] = "tap-edge check --json"

    model: ModelSummary
    bits: str = Field(description="w8a8, w4a8, fp32, native or plan")
    all_fit: bool
    seconds: float | None = None
    devices: list[DeviceVerdict]
    memory_timeline: MemoryTimeline = Field(default_factory=MemoryTimeline)


# ---- plan -------------------------------------------------------------------------------------------------
class PlanLayer(Part):
    w: int
    a: int
    op: str
    op_class: str = ""
    params: int = 0
    cost: float = 0.0
    ops: list[str] | None = None


class PlanBudgets(Part):
    flash_bytes: int | None = Field(None, ge=0)
    sram_bytes: int | None = Field(None, ge=0)
    bops: int | None = None
    latency_ms: float | None = None
    shared_region: bool = False


class PlanPrediction(Part):
    flash_bytes: int = Field(description="flash total as tap-edge check counts it: model_bytes + runtime code", ge=0)
    model_bytes: int = Field(description="the model's own flash: packed weights, scales, biases, float constants", ge=0)
    weights_bytes: int = Field(ge=0)
    arena_bytes: int = Field(ge=0)
    peak_live_bytes: int = Field(ge=0)
    peak_op: str
    bops: int = 0
    latency_ms: float | None = None


class SolverReport(Part):
    status: str
    seconds: float
    objective: float
    iterations: int
    variables: int
    constraints: int
    tightenings: list[dict[str, float]] = Field(default_factory=list)


class Calibration(Part):
    folder: str
    samples: int


class PlanRulesInfo(Part):
    """What the plan could choose: per op class (``default``: the others) the (w, a) pairs the backend builds
    and the runtime runs, and whether every layer shares one activation width."""

    backend: str | None = None
    runtime: str
    choices: dict[str, list[Widths]]
    one_activation_width: bool = False
    reasons: list[str] = Field(default_factory=list, description="the facts behind the rules, with sources")
    kernel_class: dict[str, str] = Field(default_factory=dict, description="ops the build runs as another kernel "
                                         "class (e.g. conv:1-channel -> dwconv), whose choices they take")
    also_fits: list[str] = Field(default_factory=list, description="runtimes whose arena model the plan fits too "
                                 "(the kernels the backend's measurement runs)")


class Pin(Part):
    """A layer's widths fixed by the user (``a`` None: only the weight width is fixed)."""

    w: int
    a: int | None = None


class PTQSettings(Part):
    """How the weights were rounded and the activations calibrated (``tap_edge.quantize.ptq.PTQConfig`` without
    its widths, plus the calibration sample count): ``eval`` and ``compile`` of a plan repeat it."""

    rounding: Literal["nearest", "gptq", "adaround"] = "nearest"
    samples: int = Field(16, ge=1, description="calibration samples of the PTQ step")
    bias_correction: bool = False
    float_target: bool = True
    percdamp: float = 0.01
    act_order: bool = True
    iters: int = 400
    clip: Literal["mse", "output", "max"] = Field(
        "mse", description="weight clipping: searched on the weight error (mse), on the layer's output error "
        "(output: gptq / adaround only) or none (max)")
    act_calib: str = "minmax"
    act_percentile: float = 99.99
    fold_bn: bool = True
    quantize_output: bool = True
    quantize_joins: bool = True
    quantize_bias: bool = True
    calib_batch_size: int = 32


class SweepPoint(Part):
    flash_bytes: int = Field(ge=0)
    model_bytes: int = Field(ge=0)
    objective: float
    arena_bytes: int = Field(ge=0)
    layers: dict[str, Widths]


@register_document
class Plan(Document):
    """Per-layer weight and activation widths that fit a device, with the predicted footprint (``plan.json``).

    ``layers`` maps module names to widths (torchao's FQN-to-config idea); ``tap-edge check --plan``,
    ``eval --plan`` and ``compile --plan`` read it."""

    SCHEMA: ClassVar[str] = "tap-edge/plan"
    KIND: ClassVar[str] = "plan"
    WRITTEN_BY: ClassVar[str] = "tap-edge plan"

    plan_id: str = Field(description="a hash of the model and the widths: eval and compile results name it")
    model: str
    inputs: list[InputInfo] = Field(default_factory=list, description="the input shapes the plan is for")
    device: str
    runtime: str
    proxy: str
    default: Widths
    layers: dict[str, PlanLayer]
    budgets: PlanBudgets
    predicted: PlanPrediction
    solver: SolverReport
    timing: dict[str, float] = Field(default_factory=dict)
    proxy_scores: dict[str, float] = Field(default_factory=dict,
                                           description="per layer: the proxy's cost at w4a8 (or the nearest)")
    calibration: Calibration | None = None
    sweep: list[SweepPoint] = Field(default_factory=list)
    backend: str | None = Field(None, description="the backend whose build rules the plan keeps (None: no backend "
                                                  "builds for the runtime; its tables alone)")
    rules: PlanRulesInfo | None = None
    pins: dict[str, Pin] = Field(default_factory=dict, description="layers whose widths the user fixed")
    ptq: PTQSettings | None = Field(None, description="the PTQ the plan is meant for (None: round-to-nearest)")


# ---- eval -------------------------------------------------------------------------------------------------
@register_document
class EvalResult(Document):
    """A quantized model scored against its float self: agreement, mean KL and (with labels) top-1."""

    SCHEMA: ClassVar[str] = "tap-edge/eval"
    KIND: ClassVar[str] = "eval"
    WRITTEN_BY: ClassVar[str] = "tap-edge eval --json"

    model: str
    inputs: list[InputInfo] = Field(default_factory=list, description="the input shapes it was scored at")
    bits: str
    plan: str | None = Field(None, description="the plan file as given")
    plan_id: str | None = Field(None, description="Plan.plan_id of that plan")
    n_images: int
    calib_samples: int
    model_bytes: int = Field(description="the model's flash at these widths (no runtime code)", ge=0)
    ptq_s: float
    agreement: float = Field(description="top-1 agreement with the float model")
    kl: float = Field(description="mean KL divergence from the float model's output distribution")
    top1: float | None = None
    float_top1: float | None = None
    top1_note: str | None = Field(None, description="why top-1 is not scored although a labels file was found "
                                                    "(its classes are not the model's)")
    ptq: PTQSettings | None = Field(None, description="the rounding and calibration used (samples = calib_samples)")
    seconds: float | None = Field(None, description="wall time of the whole evaluation")


# ---- compile ----------------------------------------------------------------------------------------------
class ArenaSettings(Part):
    alignment: int
    alias_inplace: bool
    scratch: str
    runtime: str


class FlashFigures(Part):
    """Predicted flash bytes (``tap_edge.fit.memory.flash_breakdown``): ``model_bytes`` = weights + scales +
    biases + float constants, the figure compared with the artifact's constant bytes; ``total_bytes`` adds the
    runtime's code."""

    weights_bytes: int = Field(ge=0)
    scales_bytes: int = Field(ge=0)
    bias_bytes: int = Field(ge=0)
    float_bytes: int = Field(ge=0)
    runtime_bytes: int = Field(ge=0)
    model_bytes: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    format_bytes: int = Field(0, ge=0, description="the model file's own structure when counted (a .tflite's "
                              "flatbuffer; an Ethos-U: Vela's optimised model less its read-only tensor)")


class Prediction(Part):
    """tap-edge's prediction for an artifact: flash breakdown and the planned arena (head = planned
    activation buffers, persistent = the runtime's tail; ``arena_bytes`` = both)."""

    flash: FlashFigures
    arena_bytes: int = Field(ge=0)
    arena_head_bytes: int = Field(ge=0)
    arena_persistent_bytes: int = Field(ge=0)
    peak_live_bytes: int = Field(ge=0)
    peak_op: str
    arena_settings: ArenaSettings
    prediction_by: str | None = Field(None, description="how it was predicted when not by tap-edge's own planner")
    vela: VelaPlan | None = Field(None, description="the Vela plan behind it, on an Ethos-U runtime")


class InputSpec(Part):
    name: str | None = None
    shape: list[int]
    dtype: str = "float32"
    layout: str | None = None


class InputSource(Part):
    """Where a batch of inputs came from: a folder (read with ``tap_edge.plan.calib.load_images``, the loader
    of ``plan`` and ``eval``), seeded Gaussian noise (models whose input is no image, e.g. DS-CNN's MFCC
    patch) or an array a Python caller passed."""

    kind: Literal["folder", "gaussian noise", "array"]
    samples: int = Field(ge=0)
    folder: str | None = None
    seed: int | None = None


class ManifestBits(Part):
    default: Widths
    layers: dict[str, Widths] = Field(default_factory=dict)
    label: str = Field(description="w8a8, w4a8, fp32 or plan")


class ArtifactWeights(Part):
    """Constant bytes read from the artifact. ``planned_form_bytes`` counts what the flash model predicts
    (weights, per-channel scales, biases, float constants); ``stored_bytes`` is everything stored (zero points,
    bias scales, containers wider than the planned width); ``by_role`` the breakdown the backend reads."""

    planned_form_bytes: int = Field(ge=0)
    stored_bytes: int = Field(ge=0)
    by_role: dict[str, int] = Field(default_factory=dict)
    note: str | None = None


class Agreement(Part):
    """The artifact's outputs beside a reference's on the same inputs: top-1 agreement, mean cosine
    similarity and the largest absolute difference of the logits."""

    reference: str = Field(description="e.g. fake-quant (the PTQ model of tap_edge.quantize.ptq)")
    runtime: str | None = Field(None, description="what ran the artifact, when it is not the backend's own runtime")
    n: int
    top1_agreement: float
    cosine: float
    max_abs_diff: float | None = None


@register_document
class Manifest(Document):
    """What ``compile`` built: the artifact, the widths, the prediction to compare with, the artifact's real
    weight bytes, its agreement with the reference model and where its inputs came from
    (``<artifact>.manifest.json``, beside the artifact). ``backend_facts``: what only that backend knows."""

    SCHEMA: ClassVar[str] = "tap-edge/artifact"
    KIND: ClassVar[str] = "manifest"
    WRITTEN_BY: ClassVar[str] = "tap-edge compile"

    artifact: str = Field(description="file name of the artifact (beside this manifest)")
    artifact_bytes: int = Field(ge=0)
    created: str
    backend: str
    model: str
    bits: ManifestBits
    device: str | None = None
    runtime: str | None = Field(None, description="the device runtime whose settings shape the prediction")
    input: InputSpec
    inputs: list[InputInfo] = Field(default_factory=list,
                                    description="the model's inputs as planned (model layout; input: the artifact's)")
    compile_s: float
    ptq: PTQSettings | None = Field(None, description="the PTQ whose integers and scales the artifact stores (the "
                                    "plan's; samples = calibration samples); None: a float build")
    ptq_s: float | None = Field(None, description="seconds of that PTQ (part of compile_s)")
    prediction: Prediction
    other_predictions: dict[str, Prediction] = Field(
        default_factory=dict, description="e.g. tflm_host (TFLite Micro's reference kernels on the host), "
        "artifact_graph (planned on the artifact's own graph)")
    weights: ArtifactWeights
    agreement: Agreement | None = None
    calibration: InputSource
    check_inputs: InputSource
    backend_facts: dict[str, Any] = Field(default_factory=dict,
                                          description="backend-specific facts (opset, layers, tuning, ...)")


# ---- measure ----------------------------------------------------------------------------------------------
class LatencyStats(Part):
    runs: int = 0
    median_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None


class MeasuredMemory(Part):
    """The measurement child's memory: peak RSS (``VmHWM``), ``wait4``'s maxrss (a cross-check), the peak
    after importing the runtime, and the difference (what the model costs in that runtime on this host)."""

    peak_rss_bytes: int | None = Field(None, ge=0)
    wait4_maxrss_bytes: int | None = Field(None, ge=0)
    import_baseline_bytes: int | None = Field(None, ge=0)
    model_rss_bytes: int | None = Field(None, ge=0)


class MeasuredArena(Part):
    """An arena the runtime itself reports (TFLite Micro: ``print_allocations``, total = head + tail) and the
    smallest arena it builds and runs with (``min_bytes``: what a user must give it; the figure compared with
    the prediction). The search probes each size in a child process: a probe that crashes is a failing size."""

    total_bytes: int = Field(ge=0)
    head_bytes: int | None = Field(None, ge=0)
    tail_bytes: int | None = Field(None, ge=0)
    min_constructing_bytes: int | None = Field(None, description="smallest arena size that constructs", ge=0)
    min_bytes: int | None = Field(None, description="smallest arena size that constructs and invokes", ge=0)
    probes: int | None = Field(None, description="sizes the search tried")
    crashed_probes: int | None = Field(None, description="sizes at which the runtime crashed (counted as failing)")
    measured_by: str


class FedInput(Part):
    """One input as the measurement fed it: its shape and dtype, as declared (open dims as symbols, ``?`` or
    -1) and how its data was made (seeded, over its quantized range, or given with ``--input``)."""

    name: str
    shape: list[int]
    dtype: str
    declared: str
    data: str


class RuntimeFailure(Part):
    """A runtime that could not build or run the model, in its own words (the lines it printed); that
    runtime's figures are missing, the others' are kept."""

    runtime: str
    stage: str = Field(description="build, allocate, invoke, or a crash")
    reason: str


class CrossCheck(Part):
    """A second runtime's outputs beside the first's on the same inputs (TFLite Micro vs LiteRT)."""

    between: str
    n: int
    top1_agreement: float
    cosine: float
    max_abs_diff: float
    output_dtype: str | None = None
    outputs: int | None = Field(None, description="outputs compared (max_abs_diff over all; the rest on the first)")
    latency: LatencyStats | None = Field(None, description="latency of the second runtime (host)")


class Comparison(Part):
    """A predicted figure beside its measurement. ``memory`` says which memory it is about; ``headline``
    marks the one comparison per memory that stands for it in a summary; ``gated``: beyond the tolerance
    it is a flag (figures measured another way, e.g. a host RSS, are shown but not gated)."""

    figure: str
    memory: Literal["flash", "sram"]
    predicted_bytes: int = Field(ge=0)
    measured_bytes: int = Field(ge=0)
    error_pct: float | None = Field(description="(measured - predicted) / predicted in %; None if predicted is 0")
    measured_by: str
    headline: bool = False
    gated: bool = True


class Limits(Part):
    flash_bytes: int = Field(ge=0)
    flash_region: str
    sram_bytes: int = Field(ge=0)
    sram_region: str
    shared: bool = Field(False, description="one memory holds weights and arena: the SRAM limit is net of flash")


class MeasuredUse(Part):
    flash_bytes: int = Field(description="the artifact's constant bytes + the runtime's code", ge=0)
    sram_bytes: int | None = Field(None, ge=0)
    sram_measured_by: str | None = None


@register_document
class MeasureReport(Document):
    """A compiled artifact (or any .tflite / .onnx) run in a child process: latency, the runtime's memory
    figures, each beside its prediction with the error, and the verdict on a device (prediction and
    measurement must both fit). ``prediction_from``: ``manifest`` (tap-edge compiled it) or ``file`` (made
    from the file itself: its graph at its stored widths)."""

    SCHEMA: ClassVar[str] = "tap-edge/measure-report"
    KIND: ClassVar[str] = "measure"
    WRITTEN_BY: ClassVar[str] = "tap-edge measure --json"

    artifact: str
    backend: str
    model: str | None = None
    bits: str | None = None
    runtime: str | None = Field(None, description="the runtime that ran the artifact, with its version")
    threads: int | None = None
    latency: LatencyStats
    artifact_bytes: int = Field(ge=0)
    prediction_from: Literal["manifest", "file"] | None = Field(
        None, description="manifest: tap-edge compiled it; file: predicted from the file; None: no prediction")
    prediction_error: str | None = Field(None, description="why there is no prediction")
    inputs: list[FedInput] = Field(default_factory=list, description="what every input was fed")
    memory: MeasuredMemory = Field(default_factory=MeasuredMemory)
    arena: MeasuredArena | None = None
    cross_check: CrossCheck | None = None
    runtime_failures: list[RuntimeFailure] = Field(default_factory=list)
    runtime_figures: dict[str, Any] = Field(default_factory=dict, description="the runtime's own figures, as read")
    agreement: Agreement | None = Field(None, description="the manifest's agreement with the reference")
    comparisons: list[Comparison] = Field(default_factory=list)
    flags: list[Comparison] = Field(default_factory=list, description="gated comparisons beyond the tolerance")
    tolerance_pct: float = 5.0
    device: str | None = None
    runtime_name: str | None = Field(None, description="the device runtime the verdict was made for")
    verdict: MeasuredVerdict = "MEASURED"
    problems: list[str] = Field(default_factory=list)
    limits: Limits | None = None
    measured_use: MeasuredUse | None = None
    predicted_fits: bool | None = None
    measured_fits: bool | None = None
    vela: VelaPlan | None = Field(None, description="Vela's own figures for a Vela-compiled artifact: SRAM, flash, "
                                  "CPU fallbacks and what they cost TFLite Micro, the NPU time (Vela's estimate)")

    def headline(self, memory: Literal["flash", "sram"]) -> Comparison | None:
        """The comparison that stands for ``memory`` in a summary (None when it was not measured)."""
        return next((c for c in self.comparisons if c.memory == memory and c.headline), None)


# ---- search -----------------------------------------------------------------------------------------------
SearchTemplate = Literal["init", "mutation", "crossover", "seed"]


class LLMSettings(Part):
    """Where and how a run asked its LLM (``tap_edge.search.llm.LLMConfig``)."""

    base_url: str
    model: str
    temperature: float
    max_tokens: int
    timeout: float
    max_retries: int
    backoff: float
    max_backoff: float
    extra_body: dict[str, Any] | None = Field(
        None, description="sent verbatim with every request (server-specific); a GBNF grammar shows as <GBNF>")
    api_key_env: str


class SandboxLimits(Part):
    """Limits of one proxy-program run in the sandbox."""

    cpu_seconds: float
    memory_mb: int
    wall_seconds: float


class DPOSettings(Part):
    """Hyper-parameters of the DPO template controller."""

    beta: float
    lr: float
    steps: int
    floor: float


class ExecutorInfo(Part):
    """Where the fitness evaluations ran in the last session (the ``ray_*`` fields with ``--executor ray``)."""

    executor: str
    workers: int
    ray_version: str | None = None
    ray_address: str | None = None
    ray_started_here: bool | None = None
    ray_nodes: int | None = None
    ray_resources: dict[str, float] | None = None


class RunSettings(Part):
    """Everything that defines a run (``tap_edge.search.runlog.EvolveSettings``, saved in ``run.json``)."""

    population: int
    generations: int
    tasks: list[str]
    alpha: float
    seed: int
    seed_builtins: bool
    tournament: int
    workers: int
    executor: str
    ray_address: str | None
    executor_info: ExecutorInfo | None
    grammar: str
    repair: bool
    fit_constants: bool = False
    templates_dir: str | None
    llm: LLMSettings
    local_llm: bool = False
    limits: SandboxLimits
    dpo: DPOSettings
    max_errors_in_prompt: int
    max_consecutive_llm_failures: int
    cache_dir: str | None


class SearchTaskInfo(Part):
    """One search task as the run recorded it (float accuracy and budget for the digits and photo tasks; the
    network and photo folder for the photo tasks)."""

    task: str
    layers: int
    bits: list[int]
    float_top1: float | None = None
    flash_budget_bytes: int | None = Field(None, ge=0)
    eval_samples: int | None = None
    calib_samples: int | None = None
    model: str | None = None
    photos: str | None = None


class GenerationSummary(Part):
    """One generation: its children, fitness figures, and the template probabilities before and after the DPO
    update (``n_pairs`` preference pairs)."""

    generation: int
    children: int
    valid: int
    invalid_rate: float
    best_child_fitness: float | None
    median_child_fitness: float | None
    best_fitness: float | None
    best_id: str | None
    median_population_fitness: float | None
    templates_used: dict[str, int]
    probs_before: dict[str, float]
    probs_after: dict[str, float]
    n_pairs: int


class LineageStep(Part):
    """One program in the chain of edits that made the best one (``edit``: the LLM's edit of the next step)."""

    id: str
    template: SearchTemplate | None
    seed: str | None
    fitness: float | None
    edit: str | None
    reasoning: str | None


class RepairStep(Part):
    """A statement the repair step deleted from a program, and the sandbox error that pointed at it."""

    line: int | None
    error: str | None
    removed: str


class TaskFitness(Part):
    """One task's part of a program's fitness: ``quality`` (digits: top-1 agreement with the float model; photo
    tasks: exp(-mean KL to the float model), with the agreement and the KL beside it) + alpha x ``spearman``;
    the widths it was given and their parameter-weighted mean."""

    task: str
    quality: float
    spearman: float
    fitness: float
    top1: float | None
    avg_bits: float | None
    bits: dict[str, int] | None
    seconds: float
    agreement: float | None = None
    kl: float | None = None


class ConstantFitInfo(Part):
    """What constant fitting did to a program: its float literals before and after, the rank-agreement
    objective before and after, and its cost."""

    original: list[float]
    tuned: list[float]
    objective_before: float
    objective_after: float
    evaluations: int
    sandbox_runs: int
    seconds: float
    improved: bool
    reason: str | None = None
    lines: list[int] = Field(default_factory=list)


class BestProgram(Part):
    """The best valid program of the run, with its provenance."""

    id: str
    fitness: float
    template: SearchTemplate | None
    parents: list[str] | None
    seed: str | None
    reasoning: str | None
    code: str | None
    repairs: list[RepairStep] | None
    tasks: list[TaskFitness] | None
    lineage: list[LineageStep]
    constants: ConstantFitInfo | None = None


class LLMUsage(Part):
    """The LLM replies of a run: how many, their tokens and their seconds."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@register_document
class RunSummary(Document):
    """A TAP search run summarised from its run directory: settings, fitness and template probabilities per
    generation, the best program with its lineage, LLM usage and why candidates were invalid."""

    SCHEMA: ClassVar[str] = "tap-edge/evolve-summary"
    KIND: ClassVar[str] = "evolve"
    WRITTEN_BY: ClassVar[str] = "tap-edge evolve --json"

    run_dir: str
    created: str | None
    settings: RunSettings
    tasks: list[SearchTaskInfo] | None = Field(description="None until the run has started")
    generations: list[GenerationSummary]
    best: BestProgram | None
    candidates: int
    evaluated: int
    valid: int
    invalid_reasons: dict[str, int] = Field(description="'stage: reason' -> count, most frequent first")
    llm_usage: LLMUsage
    wall_seconds: float = Field(description="from the first to the last logged step, over every session")
    finished: bool
    session_seconds: float | None = Field(
        None, description="wall seconds of the last session that ended the run (None: unfinished, or a run "
                          "written before this was recorded)")


# ---- listings ---------------------------------------------------------------------------------------------
class DeviceEntry(Part):
    id: str
    name: str
    kind: str
    vendor: str
    runtime: str
    arena_region: str
    arena_bytes: int = Field(ge=0)
    weights_region: str
    weights_bytes: int = Field(ge=0)


@register_document
class DeviceList(Document):
    """The device profiles (``tap-edge devices --json``)."""

    SCHEMA: ClassVar[str] = "tap-edge/device-list"
    KIND: ClassVar[str] = "devices"
    WRITTEN_BY: ClassVar[str] = "tap-edge devices --json"

    devices: list[DeviceEntry]


class BackendEntry(Part):
    name: str
    available: bool
    broken: str | None = Field(None, description="why the plug-in failed to load (then nothing else is known)")
    missing: list[str] = Field(default_factory=list)
    install: str = ""
    runtimes: list[str] = Field(default_factory=list)
    kinds: list[str] = Field(default_factory=list)
    artifact: str = ""
    description: str = ""
    options: list[str] = Field(default_factory=list, description="the compile flags this backend takes")


@register_document
class BackendList(Document):
    """The compile/measure backends and whether their dependencies are installed (``tap-edge backends --json``)."""

    SCHEMA: ClassVar[str] = "tap-edge/backend-list"
    KIND: ClassVar[str] = "backends"
    WRITTEN_BY: ClassVar[str] = "tap-edge backends --json"

    backends: list[BackendEntry]


# ---- schema files -----------------------------------------------------------------------------------------
def schema_file(cls: type[Document]) -> Path:
    return SCHEMA_DIR / f"{cls.SCHEMA.split('/', 1)[1]}.schema.json"


def schema_text(cls: type[Document]) -> str:
    return json.dumps(cls.json_schema(), indent=2) + "\n"


def write_schemas() -> list[Path]:
    """Rewrite ``tap_edge/schemas/*.schema.json`` from the classes (run after changing a document)."""
    out = []
    for name in DOCUMENTS.list():
        cls = DOCUMENTS.get(name)
        p = schema_file(cls)
        p.write_text(schema_text(cls))
        out.append(p)
    return out


def validate_files(paths: list[str]) -> int:
    """Check each JSON file against the shipped schema of its document (``jsonschema``, a test extra) and
    read it back as its class; one line per file, and the count of failures."""
    import jsonschema

    bad = 0
    for path in paths:
        try:
            data = read_json(path)
            doc = document_from_dict(data, path)
            jsonschema.validate(data, json.loads(schema_file(type(doc)).read_text()))
            sys.stdout.write(f"ok    {path}: {doc.SCHEMA} v{doc.VERSION}\n")
        except (UserError, jsonschema.ValidationError) as e:
            bad += 1
            sys.stdout.write(f"FAIL  {path}: {str(e).splitlines()[0]}\n")
    return bad


if __name__ == "__main__":
    # python -m tap_edge.documents            rewrite tap_edge/schemas/ from the classes
    # python -m tap_edge.documents FILE...    validate documents against the shipped schemas
    if len(sys.argv) > 1:
        sys.exit(1 if validate_files(sys.argv[1:]) else 0)
    for written in write_schemas():
        sys.stdout.write(f"{written}\n")
