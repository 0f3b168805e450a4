"""Plan rules: the (weight, activation) widths a backend really builds for one runtime, as constraints a plan keeps.

A device profile's runtime table says what the runtime's kernels run; the backend that builds the artifact may
store less (the TFLite path quantizes every activation at one width, has no int4 depthwise or fully-connected;
TVM widens weights below 8 bits). :class:`PlanRules` holds the intersection: per op class, the width pairs
that reach the device as planned, and whether all layers must share one activation width. The allocator makes
them constraints of its integer program (``tap_edge.plan.allocate``); ``Backend.plan_rules(runtime)`` (in
``tap_edge.backends``) says them per backend, and the backend's build refuses exactly what they forbid
(:meth:`PlanRules.violations`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tap_edge.devices import Runtime
from tap_edge.documents import PlanRulesInfo, Widths
from tap_edge.fit.bits import ACT_BITS, WEIGHT_BITS, BitAssignment
from tap_edge.graph.graph import ModelGraph, Op

Choice = tuple[int, int]
#: Every (weight, activation) pair a plan can name.
ALL_CHOICES: frozenset[Choice] = frozenset((w, a) for w in WEIGHT_BITS for a in ACT_BITS)
#: A convolution with one input channel per output (one input channel, or grouped down to one): converters may
#: build it as a depthwise kernel (the TFLite converter does).
ONE_CHANNEL_CONV = "conv:1-channel"


def op_kind(op: Op) -> str:
    """The op's class, refined where a converter may build it as another kernel (:data:`ONE_CHANNEL_CONV`)."""
    ws = op.weight_shape or []
    if op.op_class == "conv" and len(ws) >= 2 and ws[1] == 1:
        return ONE_CHANNEL_CONV
    return op.op_class


@dataclass(frozen=True)
class PlanRules:
    """What a plan may choose per layer on one runtime, built by one backend.

    ``choices`` maps an op class (``"default"``: every other class) to the (w, a) pairs allowed;
    ``one_activation_width``: every layer takes the same activation width (the model's tensors then all have
    it). ``kernel_class`` maps an :func:`op_kind` to the class of the kernel the build runs it as (the TFLite
    converter makes a one-input-channel conv a DEPTHWISE_CONV_2D, whose rules it then follows). ``backend`` is
    None when no tap-edge backend builds for the runtime (the runtime's table alone); ``reasons`` are the facts
    behind the rules, with their sources. ``also_fits``: runtimes whose memory model the plan's arena must fit
    too, besides the device's (the kernels the backend's measurement runs, e.g. TFLite Micro's reference
    kernels on the host, which unpack int4 filters where CMSIS-NN reads them packed)."""

    runtime: str
    choices: Mapping[str, frozenset[Choice]]
    backend: str | None = None
    one_activation_width: bool = False
    reasons: tuple[str, ...] = field(default=())
    kernel_class: Mapping[str, str] = field(default_factory=dict)
    also_fits: tuple[Runtime, ...] = ()

    def __post_init__(self) -> None:
        if "default" not in self.choices:
            raise ValueError("PlanRules.choices needs a 'default' entry")

    @classmethod
    def from_runtime(cls, runtime: Runtime, backend: str | None = None) -> PlanRules:
        """Every pair the runtime's weight and activation tables allow, chosen freely per layer."""
        keys = {"default", *runtime.weights, *runtime.activations, *runtime.pairs}
        return cls(runtime=runtime.name, backend=backend,
                   choices={k: _table_pairs(runtime, k) for k in sorted(keys)},
                   reasons=(f"{runtime.name}: the device profile's weight and activation tables",))

    @classmethod
    def of(cls, runtime: str, backend: str, choices: Mapping[str, Iterable[Choice]], *,
           one_activation_width: bool = False, reasons: Iterable[str] = (),
           kernel_class: Mapping[str, str] | None = None, also_fits: Iterable[Runtime] = ()) -> PlanRules:
        """Rules from plain pairs (a backend's own statement, before the runtime's table narrows it)."""
        return cls(runtime=runtime, backend=backend, choices={k: frozenset(v) for k, v in choices.items()},
                   one_activation_width=one_activation_width, reasons=tuple(reasons),
                   kernel_class=dict(kernel_class or {}), also_fits=tuple(also_fits))

    def allowed(self, op_class: str) -> frozenset[Choice]:
        return self.choices.get(op_class, self.choices["default"])

    def built_class(self, op: Op) -> str:
        """The class of the kernel the build runs ``op`` as (its own class unless :attr:`kernel_class` says)."""
        return self.kernel_class.get(op_kind(op), op.op_class)

    def allowed_for(self, op: Op) -> frozenset[Choice]:
        """The pairs ``op`` may take: those of the kernel class it is built as."""
        return self.allowed(self.built_class(op))

    def within(self, runtime: Runtime) -> PlanRules:
        """These rules narrowed to what ``runtime``'s tables allow (the plan must both build and run)."""
        keys = {"default", *self.choices, *runtime.weights, *runtime.activations, *runtime.pairs}
        narrowed = {k: self.allowed(k) & _table_pairs(runtime, k) for k in sorted(keys)}
        table = f"{runtime.name}: the device profile's weight and activation tables"
        reasons = self.reasons if table in self.reasons else (*self.reasons, table)
        return PlanRules(runtime=runtime.name, choices=narrowed, backend=self.backend,
                         one_activation_width=self.one_activation_width, reasons=reasons,
                         kernel_class=self.kernel_class, also_fits=self.also_fits)

    def narrowed(self, *, weight_bits: Iterable[int] | None = None, act_bits: Iterable[int] | None = None) -> PlanRules:
        """Only the weight / activation widths given (a request's ``--act-bits``)."""
        ws = set(weight_bits) if weight_bits is not None else None
        acts = set(act_bits) if act_bits is not None else None
        choices = {k: frozenset(c for c in v if (ws is None or c[0] in ws) and (acts is None or c[1] in acts))
                   for k, v in self.choices.items()}
        return PlanRules(runtime=self.runtime, choices=choices, backend=self.backend,
                         one_activation_width=self.one_activation_width, reasons=self.reasons,
                         kernel_class=self.kernel_class, also_fits=self.also_fits)

    def activation_widths(self) -> list[int]:
        return sorted({a for v in self.choices.values() for _, a in v})

    def describe(self, op_class: str) -> str:
        """``w4a8, w8a8`` (the pairs allowed for ``op_class``)."""
        pairs = sorted(self.allowed(op_class))
        return ", ".join(f"w{w}a{a}" for w, a in pairs) or "nothing"

    def builder(self) -> str:
        """Who the rules come from, for messages: ``the tflite backend on tflm-cmsis-nn``."""
        return f"the {self.backend} backend on {self.runtime}" if self.backend else f"{self.runtime}"

    def violations(self, graph: ModelGraph, bits: BitAssignment) -> list[str]:
        """Why ``bits`` would not build under these rules: one sentence per layer (first few) and one for mixed
        activation widths; empty when it builds. Native widths (a stored model's dtypes) are not checked."""
        if bits.native:
            return []
        out: list[str] = []
        acts: dict[int, str] = {}
        seen: set[str] = set()
        for op in graph.quantizable_ops():
            key = op.module or op.name
            if key in seen:
                continue
            seen.add(key)
            w, a = bits.weight_bits(op), bits.act_bits(op)
            a = bits.default_a if a is None else a
            acts.setdefault(a, key)
            built = self.built_class(op)
            if (w, a) not in self.allowed_for(op):
                as_ = f" (built as {built})" if built != op.op_class else ""
                out.append(f"layer '{key}' ({op.op_class}{as_}) at w{w}a{a}: {self.builder()} builds "
                           f"{self.describe(built)} on {built}")
        if self.one_activation_width and len(acts) > 1:
            shown = ", ".join(f"{a}-bit ('{k}')" for a, k in sorted(acts.items()))
            out.append(f"{self.builder()} quantizes every activation at one width; this plan has {shown}")
        return out

    def to_info(self) -> PlanRulesInfo:
        return PlanRulesInfo(backend=self.backend, runtime=self.runtime,
                             choices={k: [Widths(w=w, a=a) for w, a in sorted(v)] for k, v in self.choices.items()},
                             one_activation_width=self.one_activation_width, reasons=list(self.reasons),
                             kernel_class=dict(self.kernel_class), also_fits=[r.name for r in self.also_fits])


def _table_pairs(runtime: Runtime, op_class: str) -> frozenset[Choice]:
    """The pairs the runtime's tables allow for ``op_class``: its weight x activation widths, as far as its
    kernels take them together (``Runtime.pairs``)."""
    return frozenset((w, a) for w in runtime.weight_bits(op_class) for a in runtime.activation_bits(op_class)
                     if (w, a) in ALL_CHOICES and runtime.pair_allowed(op_class, w, a))
