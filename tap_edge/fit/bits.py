"""Bit assignments: uniform strings such as ``w8a8`` / ``w4a16`` / ``fp32`` or a per-layer plan file.

A plan maps PyTorch module names (or graph op names) to weight and activation widths, torchao-style
(FQN -> config). Weight widths 2..8 are integers; 16 and 32 mean float16 / float32 storage. Activation widths
8 and 16 are integers, 32 float.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tap_edge.core.errors import UserError
from tap_edge.documents import read_json
from tap_edge.graph.graph import ModelGraph, Op

WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
ACT_BITS = (8, 16, 32)
_SPEC = re.compile(r"^w(\d+)a(\d+)$")


@dataclass
class LayerBits:
    w: int
    a: int


@dataclass
class BitAssignment:
    """Default widths plus per-layer overrides keyed by op name or module name."""

    default_w: int = 8
    default_a: int = 8
    layers: dict[str, LayerBits] = field(default_factory=dict)
    native: bool = False  # use the dtypes stored in the model (e.g. an int8 .tflite) instead

    @classmethod
    def parse(cls, spec: str) -> BitAssignment:
        s = spec.strip().lower()
        if not s:
            raise UserError("empty bit-width", "write wNaM such as w8a8, w4a8, w8a16, or fp32 / fp16 / native")
        if s == "native":
            return cls(native=True)
        if s in ("fp32", "float32", "float"):
            return cls(32, 32)
        if s in ("fp16", "float16"):
            return cls(16, 16)
        m = _SPEC.match(s)
        if not m:
            raise UserError(f"cannot read bit-width '{spec}'",
                            "write wNaM such as w8a8, w4a8, w8a16, or fp32 / fp16 / native")
        w, a = int(m.group(1)), int(m.group(2))
        if w not in WEIGHT_BITS:
            raise UserError(f"impossible weight width {w} in '{spec}'",
                            f"weights take {', '.join(map(str, WEIGHT_BITS))} bits")
        if a not in ACT_BITS:
            raise UserError(f"impossible activation width {a} in '{spec}'",
                            f"activations take {', '.join(map(str, ACT_BITS))} bits")
        return cls(w, a)

    @classmethod
    def from_plan(cls, data: dict[str, Any], origin: str = "plan") -> BitAssignment:
        try:
            default = data.get("default", {"w": 8, "a": 8})
            layers = {k: LayerBits(int(v["w"]), int(v["a"])) for k, v in data["layers"].items()}
            out = cls(int(default["w"]), int(default["a"]), layers)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{origin}: not a tap-edge plan ({e.__class__.__name__}: {e})",
                            "a plan has 'layers': {module: {'w': bits, 'a': bits}}; "
                            "make one with tap-edge plan") from None
        for name, lb in out.layers.items():
            if lb.w not in WEIGHT_BITS or lb.a not in ACT_BITS:
                raise UserError(f"{origin}: layer '{name}' has impossible widths w{lb.w}a{lb.a}")
        return out

    @classmethod
    def load(cls, path: str | Path) -> BitAssignment:
        p = Path(path)
        data = read_json(p, "pass a plan.json written by tap-edge plan")
        if not isinstance(data, dict):
            raise UserError(f"{p}: unreadable plan (expected a JSON object)")
        return cls.from_plan(data, str(p))

    def to_dict(self) -> dict[str, Any]:
        return {"default": {"w": self.default_w, "a": self.default_a},
                "layers": {k: asdict(v) for k, v in self.layers.items()}}

    def label(self) -> str:
        if self.native:
            return "native"
        if self.layers:
            return "plan"
        return "fp32" if self.default_w == 32 and self.default_a == 32 else f"w{self.default_w}a{self.default_a}"

    # ---- lookups --------------------------------------------------------------------------------------
    def _entry(self, op: Op) -> LayerBits | None:
        return self.layers.get(op.name) or (self.layers.get(op.module) if op.module else None)

    def weight_bits(self, op: Op) -> int:
        if self.native:
            from tap_edge.graph.graph import DTYPE_BITS
            return DTYPE_BITS.get(op.weight_dtype, 32)
        e = self._entry(op)
        return e.w if e else self.default_w

    def act_bits(self, op: Op) -> int | None:
        """Output activation width of ``op`` (None: inherit from its inputs)."""
        if self.native:
            return None
        e = self._entry(op)
        if e:
            return e.a
        return self.default_a if op.quantizable or not self.layers else None

    def check_names(self, graph: ModelGraph) -> None:
        known = {o.name for o in graph.ops} | {o.module for o in graph.ops if o.module}
        unknown = [k for k in self.layers if k not in known]
        if unknown:
            raise UserError(f"plan names {len(unknown)} layer(s) the model does not have, e.g. '{unknown[0]}'",
                            "was the plan made for another model?")


def tensor_bits(graph: ModelGraph, bits: BitAssignment) -> dict[str, int]:
    """Width of every activation tensor: a producer's planned width, else the max of its inputs' widths.

    Graph inputs take the width of their first consumer (the model input is quantized on entry)."""
    from tap_edge.graph.graph import DTYPE_BITS

    out: dict[str, int] = {}
    if bits.native:
        return {n: DTYPE_BITS.get(t.dtype, 32) for n, t in graph.tensors.items()}
    for name in graph.inputs:
        first = next((o for o in graph.ops if name in o.inputs), None)
        a = bits.act_bits(first) if first is not None else None
        out[name] = a if a is not None else bits.default_a
    for op in graph.ops:
        a = bits.act_bits(op)
        if a is None:
            a = max((out.get(t, bits.default_a) for t in op.inputs), default=bits.default_a)
        for t in op.outputs:
            out[t] = a
    for name in graph.tensors:
        out.setdefault(name, bits.default_a)
    return out
