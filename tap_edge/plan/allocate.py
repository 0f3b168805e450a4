"""Allocation: pick per-layer weight/activation bit-widths that minimise the summed sensitivity cost under the
device's flash, peak-SRAM and supported-bit-width constraints, exactly, with an integer program.

Formulation (``scipy.optimize.milp`` / HiGHS):

- One binary ``x[l, c]`` per layer ``l`` and allowed choice ``c = (w, a)``; ``sum_c x[l, c] = 1``. A *layer*
  is a plan key: ``Op.module or Op.name`` (ops sharing a module are one layer and get one choice). Allowed
  choices are those in ``costs`` that the runtime supports for the op class (``Runtime.weight_bits`` /
  ``activation_bits``) and that the ops inheriting the layer's activation width support too.
- Objective: ``sum cost[l, c] x[l, c]``.
- Flash: ``sum flash[l, c] x[l, c] + fixed <= budget`` with ``flash[l, c]`` from
  :func:`memory.op_weight_bytes` (packed weights + per-channel scales + int32 bias, scales as the runtime's
  file format stores them) and ``fixed`` = float constants of non-quantizable ops + the runtime's code bytes +
  a .tflite's flatbuffer structure for runtimes that run one (counted at integer widths; a float choice that
  changes it is caught by the exact check after the solve): the same total as
  ``memory.flash_breakdown(..., runtime=...).total_bytes`` and ``tap-edge check``.
- SRAM: for every execution step, the live activation bytes (tensor lifetimes from ``graph.lifetimes()``,
  sizes aligned to ``runtime.arena_alignment``, kernel scratch from :func:`memory.scratch_bytes`) <= budget.
  A tensor's width follows :func:`tap_edge.fit.bits.tensor_bits`: its producer's planned width, or the max of its
  inputs' widths for ops without a plan entry (add, pool, reshape, ...). Sizes are linear in "width >= level"
  indicators: for one source layer the indicator is a sum of that layer's binaries; for a max over several
  layers it is an auxiliary variable bounded from below (tensor bytes grow with width) or from above (scratch
  shrinks with width, e.g. CMSIS-NN im2col is not used by 16x8 kernels), which is exact because the solver
  can always move it to the true max. When weights and arena share one memory (phones, Linux boards) the
  constraint is ``live + flash <= budget``, as ``check.py`` subtracts the flash total from that region.
- Ethos-U runtimes (a profile ``vela`` section): SRAM and flash are Vela's plan (:mod:`tap_edge.fit.ethos_u`): with
  one activation width the SRAM row is the SRAM Vela plans at each width with compile's settings (``z[a]`` terms),
  flash the optimised model (a constant: Vela takes 8-bit weights only); the exact check is the same model.
- Build rules (:class:`~tap_edge.plan.rules.PlanRules`, from the backend that builds the plan): a layer's
  choices are also limited to the (w, a) pairs the rules allow for its op class, and ``pins`` fix a layer's
  weight (and activation) width. ``one_activation_width``: binaries ``z[a]``, ``sum_a z[a] = 1`` and, for
  every layer and width, ``sum_{c: a_c = a} x[l, c] = z[a]``: all layers share one activation width, and the
  tensors that would take the default width take it too (``z`` is their width source).
- Optional: BOPs ``sum MACs x w x a`` (``a`` = the layer's chosen activation width, i.e. its kernel mode:
  int8 or 16x8) and latency (see :func:`cycles_per_mac`).

Live bytes are a lower bound on the greedy arena (``memory.plan_arena``), which fragmentation can exceed.
After each solve the plan is checked with ``memory.plan_arena`` / ``memory.flash_breakdown``. An arena over
budget first adds a cut excluding that plan's activation pattern (the arena depends on activation widths
only, so the cut is exact and the result stays optimal under the arena budget) on small models; after
``MAX_CUTS`` cuts, or when patterns are too many for cuts to help, the live-bytes budget of the steps whose
buffers the greedy layout puts above the budget is tightened by the overshoot instead (then the plan is
optimal for the tightened program; the true optimum may be a little better). A plan whose arena fits the
device but not a runtime of the rules' ``also_fits`` (the kernels the backend measures with) tightens the
SRAM budget by that overshoot (``also_sram``). Every repair is listed in ``Allocation.tightenings``. If
that leads nowhere, the smallest-SRAM plan within the other budgets is returned (status ``"feasible"``) if
it fits; otherwise :class:`InfeasibleBudget` names the binding constraint and the smallest achievable flash
and SRAM.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from tap_edge.core.console import native_stdout_to_stderr
from tap_edge.core.errors import UserError
from tap_edge.core.units import align, fmt_bytes
from tap_edge.devices import Runtime
from tap_edge.fit import ethos_u
from tap_edge.fit.bits import ACT_BITS, WEIGHT_BITS, BitAssignment, LayerBits
from tap_edge.fit.ethos_u import is_ethos_u
from tap_edge.fit.footprint import flash_breakdown, plan_arena_for
from tap_edge.fit.latency import ELEMENTWISE_CYCLES, cycles_per_mac
from tap_edge.fit.memory import (
    SCALE_BYTES,
    TFLITE_SCALE_BYTES,
    ArenaPlan,
    FlashBreakdown,
    flatbuffer_bytes,
    is_tflite_format,
    op_weight_bytes,
    runtime_memory,
    scratch_bytes,
)
from tap_edge.graph.graph import INPLACE_CLASSES, ModelGraph, Op
from tap_edge.plan.budgets import Budgets
from tap_edge.plan.rules import PlanRules

#: A user's fixed widths for a layer: (weight bits, activation bits or None for "any").
Pins = dict[str, tuple[int, int | None]]

Choice = tuple[int, int]
#: The allocator's input: cost per quantizable op per (weight width, activation width); lower is better.
CostTable = dict[str, dict[Choice, float]]

#: Re-solves allowed when the greedy arena (or a rounding of the solver's binaries) overshoots a budget.
MAX_TIGHTENINGS = 8
#: Activation-pattern cuts tried first when the greedy arena overshoots (exact, see _solve_budgets).
MAX_CUTS = 12
#: Solver time after which no more cuts are added (cuts are weak on large models: tightening takes over).
CUT_SECONDS = 0.1
#: Cuts are tried only when there are at most this many activation patterns (one cut excludes one pattern).
MAX_CUT_PATTERNS = 2**16


# ---- results ----------------------------------------------------------------------------------------------
class InfeasibleBudget(UserError):
    """No bit assignment meets the budgets. ``binding`` names the constraint(s) that cannot be met;
    ``min_flash_bytes`` / ``min_sram_bytes`` are the smallest achievable flash total and arena (for a shared
    region: arena + flash) with the runtime's bit-widths; ``floor_bits`` is the plan with that smallest arena
    (what a suggestion shows the peak of)."""

    def __init__(self, message: str, hint: str = "", *, binding: str = "", min_flash_bytes: int = 0,
                 min_sram_bytes: int = 0, min_peak_live_bytes: int = 0,
                 floor_bits: BitAssignment | None = None) -> None:
        super().__init__(message, hint)
        self.binding = binding
        self.min_flash_bytes = min_flash_bytes
        self.min_sram_bytes = min_sram_bytes
        self.min_peak_live_bytes = min_peak_live_bytes
        self.floor_bits = floor_bits


@dataclass
class Allocation:
    """A solved plan. ``layers`` is BitAssignment-compatible (``{key: {"w", "a"}}`` in execution order); the
    predicted figures are recomputed with ``memory.flash_breakdown`` / ``memory.plan_arena`` on the result.

    ``status``: "optimal" (proved optimal for the final program), "feasible" (fits, optimality not proved:
    arena fragmentation forced the smallest-SRAM fallback, or a time limit), "infeasible".
    ``tightenings``: per re-solve, the overshoot that caused it: ``arena_cut`` (activation pattern excluded,
    still exact), ``sram`` / ``flash`` / ``bops`` / ``latency`` (that budget tightened by the amount).
    """

    status: str
    layers: dict[str, dict[str, int]]
    objective: float
    flash_bytes: int
    weights_bytes: int
    model_bytes: int  # flash without the runtime's code: weights, scales, biases, float constants
    arena_bytes: int
    peak_live_bytes: int
    peak_op: str
    solver_seconds: float
    iterations: int
    default_a: int = 8
    layer_costs: dict[str, float] = field(default_factory=dict)
    layer_ops: dict[str, list[str]] = field(default_factory=dict)
    bops: int = 0
    latency_ms: float | None = None
    budgets: Budgets | None = None
    tightenings: list[dict[str, float]] = field(default_factory=list)
    n_variables: int = 0
    n_constraints: int = 0
    seconds: float = 0.0  # wall time of allocate(): build + solves + checks

    def bits(self) -> BitAssignment:
        """The plan as a BitAssignment (default w8 and ``default_a`` for anything not listed)."""
        layers = {k: LayerBits(v["w"], v["a"]) for k, v in self.layers.items()}
        return BitAssignment(8, self.default_a, layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["budgets"] = self.budgets.to_dict() if self.budgets else None
        return d


# ---- the program ------------------------------------------------------------------------------------------
@dataclass
class _Layer:
    key: str
    ops: list[Op]
    choices: list[Choice]
    cost: np.ndarray
    flash: np.ndarray
    bops: np.ndarray
    cycles: np.ndarray
    offset: int = 0


@dataclass
class _Evaluation:
    pick: list[int]
    bits: BitAssignment
    flash: FlashBreakdown
    arena: ArenaPlan
    bops: int
    latency_ms: float | None
    also_arena_bytes: int = 0  # the largest arena under the rules' also_fits runtimes


#: A tensor's width source: (layers whose chosen activation width it takes the max of, constant floor or 0).
Source = tuple[frozenset[int], int]


class _Program:
    """The integer program for one (graph, costs, runtime, default_a, rules, pins); solved for many budgets."""

    def __init__(self, graph: ModelGraph, costs: CostTable, runtime: Runtime, default_a: int = 8,
                 rules: PlanRules | None = None, pins: Pins | None = None) -> None:
        # plan the graph the runtime executes (e.g. with a converter's PAD ops); its persistent arena
        # allocations are a constant share of every step's live bytes, the other kernels' scratch a constant
        # of their step, and its planning needs at least ``floor`` bytes of arena (memory.runtime_memory)
        mem = runtime_memory(graph, runtime)
        view, self.persistent, self.floor = mem.graph, mem.persistent_bytes, mem.planning_bytes
        self.other_scratch = mem.other_scratch
        self.graph, self.runtime, self.default_a = view, runtime, default_a
        self.source = graph  # the flash model reads the graph as given, as check does
        self.scale = TFLITE_SCALE_BYTES if is_tflite_format(runtime) else SCALE_BYTES
        self.rules, self.pins = rules, dict(pins or {})
        self.shared = bool(rules and rules.one_activation_width)
        self._layers(costs)
        self._check_pins(graph)
        self._sources()
        self._restrict_inherited()
        self._shared_widths()
        self._place()
        self._live_matrix()
        self.live_const = self.live_const + self.persistent
        if is_ethos_u(runtime):
            self._vela_rows()

    def _vela_rows(self) -> None:
        """An Ethos-U runtime's memory is Vela's plan (:mod:`tap_edge.fit.ethos_u`), not the live tensors: with one
        activation width, SRAM is what Vela plans at each width with the settings compile uses (the profile's
        schedule and arena cache size: a plan under an SRAM budget is then built within it, which Vela's Size
        schedule, smaller, would not promise) as one term of ``z[a]``, every step alike; flash is the optimised
        model, one constant (Vela takes 8-bit weights only). Without one activation width the per-step live bytes
        stay (whole feature maps: an upper bound of Vela's cascaded plan)."""
        rt, steps = self.runtime, self.live.shape[0]
        widths = self.widths or [self.shared_width([0] * len(self.layers)) if self.layers else self.default_a]
        if self.shared:
            sram = {a: ethos_u.predict(self.source, BitAssignment(8, a), rt).sram_need
                    for a in widths}
            row = np.zeros(self.nvar)
            const = 0.0
            if self.nz:
                for j, a in enumerate(self.widths):
                    row[self.nx + j] = sram[a]
            else:
                const = float(sram[widths[0]])
            self.live = sp.csr_matrix(np.tile(row, (steps, 1)))
            self.live_const = np.full(steps, const)
            self.persistent = self.floor = 0
        flash = ethos_u.predict(self.source, BitAssignment(8, widths[0]), rt)
        for lay in self.layers:
            lay.flash = np.zeros(len(lay.choices))
        self.flash_row = self._row("flash")
        self.flash_fixed = flash.file_bytes

    # -- layers and choices
    def _layers(self, costs: CostTable) -> None:
        g, rt = self.graph, self.runtime
        qops = g.quantizable_ops()
        missing = [op.name for op in qops if op.name not in costs]
        if missing:
            raise UserError(f"no costs for {len(missing)} quantizable layer(s), e.g. '{missing[0]}'",
                            "costs must map every quantizable op name (Op.name) to {(w, a): cost}")
        unknown = sorted(set(costs) - {op.name for op in qops})
        if unknown:
            raise UserError(f"costs name {len(unknown)} op(s) that are not quantizable layers of "
                            f"{g.name}, e.g. '{unknown[0]}'", "were the costs computed for another model?")
        groups: dict[str, list[Op]] = {}
        for op in qops:
            groups.setdefault(op.module or op.name, []).append(op)
        self.keys = list(groups)
        index = {k: i for i, k in enumerate(self.keys)}

        def entry(op: Op) -> int | None:  # BitAssignment._entry: op name first, then module
            if op.name in index:
                return index[op.name]
            return index[op.module] if op.module and op.module in index else None

        self.entry = [entry(op) for op in g.ops]
        for op, e in zip(g.ops, self.entry, strict=True):
            if op.quantizable and (e is None or self.keys[e] != (op.module or op.name)):
                raise UserError(f"plan key '{op.module or op.name}' of op '{op.name}' is ambiguous",
                                "module and op names of the graph collide; rename the module")
        self.layers: list[_Layer] = []
        for key, ops in groups.items():
            allowed: set[Choice] | None = None
            for op in ops:
                ws = set(rt.weight_bits(op.op_class)) & set(WEIGHT_BITS)
                acts = set(rt.activation_bits(op.op_class)) & set(ACT_BITS)
                built = self.rules.allowed_for(op) if self.rules else None
                ok = set()
                for ch, v in costs[op.name].items():
                    w, a = int(ch[0]), int(ch[1])
                    if v is None or (isinstance(v, float) and math.isnan(v)):
                        raise UserError(f"cost of {op.name} at w{w}a{a} is not a number",
                                        "check the proxy: every cost must be finite (or inf to forbid)")
                    if (w in ws and a in acts and rt.pair_allowed(op.op_class, w, a) and math.isfinite(float(v))
                            and (built is None or (w, a) in built)):
                        ok.add((w, a))
                allowed = ok if allowed is None else allowed & ok
            choices = sorted(allowed or set())
            if not choices:
                op = ops[0]
                built_note = (f"; {self.rules.builder()} builds {self.rules.describe(self.rules.built_class(op))}"
                              if self.rules else "")
                raise UserError(f"layer '{key}' ({op.op_class}) has no cost for any bit-width "
                                f"{rt.name} supports "
                                f"(weights {rt.weight_bits(op.op_class)}, activations "
                                f"{rt.activation_bits(op.op_class)}{built_note})",
                                "give costs for those widths")
            if key in self.pins:
                choices = self._pinned(key, ops[0], choices)
            self.layers.append(self._make_layer(key, ops, choices, costs))

    def _pinned(self, key: str, op: Op, choices: list[Choice]) -> list[Choice]:
        """The choices of a pinned layer: its fixed weight (and activation) width, if the layer can take it."""
        w, a = self.pins[key]
        kept = [c for c in choices if c[0] == w and (a is None or c[1] == a)]
        if not kept:
            asked = f"w{w}" + (f"a{a}" if a is not None else "")
            can = ", ".join(f"w{cw}a{ca}" for cw, ca in choices)
            raise UserError(f"layer '{key}' ({op.op_class}) is pinned at {asked}, which "
                            f"{self.rules.builder() if self.rules else self.runtime.name} cannot build for it",
                            f"pin one of the widths it can take: {can}")
        return kept

    def _check_pins(self, graph: ModelGraph) -> None:
        """Every pinned layer must be a layer of the model: one line with the close matches otherwise."""
        import difflib

        unknown = [k for k in self.pins if k not in self.keys]
        if unknown:
            close = difflib.get_close_matches(unknown[0], self.keys, n=4, cutoff=0.5)
            hint = (f"close matches: {', '.join(close)}" if close
                    else f"its layers are e.g. {', '.join(self.keys[:4])}")
            raise UserError(f"pinned layer '{unknown[0]}' is not a layer of {graph.name}", hint)

    def _make_layer(self, key: str, ops: list[Op], choices: list[Choice], costs: CostTable) -> _Layer:
        cost = np.array([sum(float(costs[op.name][_find(costs[op.name], c)]) for op in ops) for c in choices])
        flash = np.array([sum(sum(op_weight_bytes(op, w, self.scale)) for op in ops) for w, _ in choices],
                         dtype=float)
        bops = np.array([sum(op.macs * w * a for op in ops) for w, a in choices], dtype=float)
        cycles = np.array([sum(op.macs * cycles_per_mac(w, a) for op in ops) for w, a in choices])
        return _Layer(key, ops, choices, cost, flash, bops, cycles)

    # -- activation widths as sources
    def _sources(self) -> None:
        """Mirror of ``bits.tensor_bits``: each tensor's width = max(const, chosen a of each source layer)."""
        g, da = self.graph, self.default_a
        none: frozenset[int] = frozenset()
        # with one activation width, the default width is the shared one: its binaries are source len(layers)
        dflt: Source = (frozenset({len(self.layers)}), 0) if self.shared and self.layers else (none, da)
        src: dict[str, Source] = {}
        no_layers = not self.layers
        for name in g.inputs:
            first = next((i for i, o in enumerate(g.ops) if name in o.inputs), None)
            e = self.entry[first] if first is not None else None
            src[name] = (frozenset({e}), 0) if e is not None else dflt
        self.op_src: list[Source] = []
        for i, op in enumerate(g.ops):
            e = self.entry[i]
            if e is not None:
                s: Source = (frozenset({e}), 0)
            elif op.quantizable or no_layers or not op.inputs:
                s = dflt
            else:
                parts = [src.get(t, dflt) for t in op.inputs]
                s = (frozenset().union(*(p[0] for p in parts)), max(p[1] for p in parts))
            self.op_src.append(s)
            for t in op.outputs:
                src[t] = s
        for name in g.tensors:
            src.setdefault(name, dflt)
        self.src = src

    def _restrict_inherited(self) -> None:
        """Ops that inherit a layer's activation width must support it: drop the layer's choices whose width
        the inheriting op's runtime kernels cannot run (exact for one source; for a max over several sources
        widths above the op's largest supported width are dropped)."""
        drop: dict[int, set[int]] = {}
        n = len(self.layers)
        for i, op in enumerate(self.graph.ops):
            srcs, const = self.op_src[i]
            if self.entry[i] is not None or not srcs or not op.outputs:
                continue
            acts = set(self.runtime.activation_bits(op.op_class))
            for li in srcs:
                widths = {a for lay in self.layers for _, a in lay.choices} if li == n else \
                    {a for _, a in self.layers[li].choices}
                for a in widths:
                    width = max(a, const)
                    if width > max(acts) or ((len(srcs) == 1 or self.shared) and width not in acts):
                        drop.setdefault(li, set()).add(a)
        if n in drop:  # the shared width itself: no layer may take it
            drop = {li: drop.get(li, set()) | drop[n] for li in range(n)}
        for li, acts_out in drop.items():
            lay = self.layers[li]
            keep = [j for j, (_, a) in enumerate(lay.choices) if a not in acts_out]
            if not keep:
                raise UserError(f"layer '{lay.key}': no activation width that both it and the ops after it "
                                f"support on {self.runtime.name}", "choose another runtime")
            lay.choices = [lay.choices[j] for j in keep]
            for attr in ("cost", "flash", "bops", "cycles"):
                setattr(lay, attr, getattr(lay, attr)[keep])

    def _shared_widths(self) -> None:
        """With one activation width: the widths every layer can take (``self.widths``), and each layer's
        choices cut to them; one line naming a layer that shares none."""
        self.widths: list[int] = []
        if not self.shared or not self.layers:
            return
        common = set.intersection(*({a for _, a in lay.choices} for lay in self.layers))
        if not common:
            lay = min(self.layers, key=lambda x: len({a for _, a in x.choices}))
            others = sorted({a for x in self.layers for _, a in x.choices} - {a for _, a in lay.choices})
            raise UserError(f"{self.rules.builder() if self.rules else self.runtime.name} quantizes every "
                            f"activation at one width, but no width suits every layer: '{lay.key}' takes only "
                            f"{sorted({a for _, a in lay.choices})}, others need {others}",
                            "pin fewer layers, or pin them at one activation width")
        for lay in self.layers:
            keep = [j for j, (_, a) in enumerate(lay.choices) if a in common]
            lay.choices = [lay.choices[j] for j in keep]
            for attr in ("cost", "flash", "bops", "cycles"):
                setattr(lay, attr, getattr(lay, attr)[keep])
        self.widths = sorted(common)

    def _place(self) -> None:
        off = 0
        for lay in self.layers:
            lay.offset = off
            off += len(lay.choices)
        self.nx = off
        self.nz = len(self.widths) if len(self.widths) > 1 else 0  # z[a]: the shared activation width
        self.levels = sorted({a for lay in self.layers for _, a in lay.choices}
                             | {c for _, c in self.src.values() if c} | {8})
        # h[k][l]: columns of layer l's choices with a >= levels[k]; h[k][len(layers)]: the shared width's
        self.h = [[np.array([lay.offset + j for j, (_, a) in enumerate(lay.choices) if a >= lev], dtype=int)
                   for lay in self.layers] for lev in self.levels]
        for k, lev in enumerate(self.levels):
            if self.nz:
                self.h[k].append(np.array([self.nx + j for j, a in enumerate(self.widths) if a >= lev], dtype=int))
            else:  # one width (or none shared): a constant indicator, as a column-free term
                self.h[k].append(np.zeros(0, dtype=int))
        self.aux: dict[tuple[frozenset[int], int, str], int] = {}
        self.aux_rows: list[tuple[np.ndarray, np.ndarray, float]] = []  # (cols, vals, ub) rows <= ub

    def _indicator(self, srcs: frozenset[int], const: int, k: int, coef: float,
                   cols: list[np.ndarray], vals: list[np.ndarray]) -> float:
        """Add ``coef x [width >= levels[k]]`` to a row; returns its constant part."""
        if coef == 0:
            return 0.0
        if const >= self.levels[k]:
            return coef
        if not srcs:
            return 0.0
        n = len(self.layers)
        if n in srcs and not self.nz:  # the shared width is fixed: a constant
            if self.widths and self.widths[0] >= self.levels[k]:
                return coef
            srcs = srcs - {n}
            if not srcs:
                return 0.0
        if len(srcs) == 1:
            c = self.h[k][next(iter(srcs))]
            cols.append(c)
            vals.append(np.full(len(c), coef))
            return 0.0
        kind = "up" if coef > 0 else "down"
        key = (srcs, k, kind)
        if key not in self.aux:
            v = self.nx + self.nz + len(self.aux)
            self.aux[key] = v
            if kind == "up":  # u >= h_s for every source: u >= max
                for s in srcs:
                    c = self.h[k][s]
                    self.aux_rows.append((np.append(c, v), np.append(np.ones(len(c)), -1.0), 0.0))
            else:  # v <= sum_s h_s (and v <= 1 by bounds): v <= OR
                c = np.concatenate([self.h[k][s] for s in srcs])
                self.aux_rows.append((np.append(c, v), np.append(-np.ones(len(c)), 1.0), 0.0))
        cols.append(np.array([self.aux[key]]))
        vals.append(np.array([coef]))
        return 0.0

    def _step_expr(self, src: Source, sizes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        """``sizes[k]`` = bytes at width levels[k], as a linear expression of the indicators."""
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        const = float(sizes[0])
        for k in range(1, len(self.levels)):
            const += self._indicator(src[0], src[1], k, float(sizes[k] - sizes[k - 1]), cols, vals)
        return cols, vals, const

    def _live_matrix(self) -> None:
        """Live bytes per step = Alive (steps x buffers) @ buffer sizes + scratch, mirroring plan_arena."""
        g, rt = self.graph, self.runtime
        al = rt.arena_alignment
        life = g.lifetimes()
        cons = g.consumers()
        alias_of: dict[str, str] = {}
        if rt.alias_inplace:  # only where widths are equal whatever the choice: ops that inherit
            for i, op in enumerate(g.ops):
                if (op.op_class in INPLACE_CLASSES and len(op.inputs) == 1 and len(op.outputs) == 1
                        and self.entry[i] is None and op.inputs[0] not in g.inputs
                        and len(cons.get(op.inputs[0], [])) == 1 and op.inputs[0] in g.tensors):
                    root = op.inputs[0]
                    while root in alias_of:
                        root = alias_of[root]
                    alias_of[op.outputs[0]] = root
        spans: dict[str, list[int]] = {}
        for name in g.tensors:
            if name not in alias_of:
                spans[name] = list(life[name])
        for name, root in alias_of.items():
            first, last = life[name]
            spans[root] = [min(spans[root][0], first), max(spans[root][1], last)]
        steps = max(len(g.ops), 1)
        rows_r: list[np.ndarray] = []
        rows_c: list[np.ndarray] = []
        rows_v: list[np.ndarray] = []
        const = np.zeros(steps)
        for name, (first, last) in spans.items():
            t = g.tensors[name]
            sizes = [align(t.nbytes(lev), al) for lev in self.levels]
            cols, vals, c0 = self._step_expr(self.src[name], sizes)
            span = np.arange(first, min(last, steps - 1) + 1)
            const[span] += c0
            for c, v in zip(cols, vals, strict=True):
                rows_r.append(np.repeat(span, len(c)))
                rows_c.append(np.tile(c, len(span)))
                rows_v.append(np.tile(v, len(span)))
        for i, sizes in self.other_scratch.items():  # MEAN sums, TRANSPOSE_CONV accumulators, ...
            if i < steps:
                const[i] += sum(align(b, al) for b in sizes)
        none: frozenset[int] = frozenset()
        for i, op in enumerate(g.ops):
            if rt.scratch == "none" or not op.weight_shape:
                continue
            e = self.entry[i]
            if e is not None:  # its own choice decides: the kernel's widths (w, a), e.g. an unpacked int4 filter
                lay = self.layers[e]
                sizes = [align(scratch_bytes(op, g, rt.scratch, a, w), al) for w, a in lay.choices]
                if any(sizes):
                    rows_r.append(np.full(len(sizes), i))
                    rows_c.append(lay.offset + np.arange(len(sizes)))
                    rows_v.append(np.array(sizes, dtype=float))
                continue
            parts = [self.src[t] if t in g.tensors else (none, 8) for t in op.outputs] or [(none, 8)]
            src = (frozenset().union(*(p[0] for p in parts)), max(p[1] for p in parts))
            sizes = [align(scratch_bytes(op, g, rt.scratch, lev), al) for lev in self.levels]
            if not any(sizes):
                continue
            cols, vals, c0 = self._step_expr(src, sizes)
            const[i] += c0
            for c, v in zip(cols, vals, strict=True):
                rows_r.append(np.full(len(c), i))
                rows_c.append(c)
                rows_v.append(v)
        # layers whose scratch changes with their weight width (activation-pattern cuts must keep them apart)
        self.weight_scratch = {lay.key for lay in self.layers if rt.scratch != "none" and any(
            len({scratch_bytes(op, g, rt.scratch, a, w) for w, a in lay.choices if a == a0}) > 1
            for op in lay.ops for a0 in {a for _, a in lay.choices})}
        self.nvar = self.nx + self.nz + len(self.aux)
        self.live = sp.csr_matrix((_cat(rows_v, float), (_cat(rows_r, int), _cat(rows_c, int))),
                                  shape=(steps, self.nvar))
        self.live.sum_duplicates()
        self.live_const = const
        # fixed rows: one choice per layer; aux definitions
        er = _cat([np.full(len(lay.choices), i) for i, lay in enumerate(self.layers)], int)
        self.eq = sp.csr_matrix((np.ones(self.nx), (er, np.arange(self.nx))),
                                shape=(len(self.layers), self.nvar))
        ar, ac, av = [], [], []
        for r, (c, v, _) in enumerate(self.aux_rows):
            ar.append(np.full(len(c), r))
            ac.append(c)
            av.append(v)
        self.auxm = sp.csr_matrix((_cat(av, float), (_cat(ar, int), _cat(ac, int))),
                                  shape=(len(self.aux_rows), self.nvar))
        self._link_rows()
        self.flash_row = self._row("flash")
        self.flash_fixed = sum(sum(op_weight_bytes(op, 32, self.scale)) for op in g.ops
                               if op.params and not op.quantizable)
        if is_tflite_format(rt):
            self.flash_fixed += flatbuffer_bytes(self.source, BitAssignment(8, 8))
        self.bops_row = self._row("bops")
        self.cycles_row = self._row("cycles")
        self.cycles_fixed = sum(ELEMENTWISE_CYCLES * max(op.macs, sum(g.tensors[t].numel for t in op.outputs
                                                                      if t in g.tensors))
                                for op in g.ops if not op.quantizable)

    def _link_rows(self) -> None:
        """One activation width: ``sum_a z[a] = 1`` and ``sum_{c: a_c = a} x[l, c] = z[a]`` per layer and
        width (``self.link`` rows equal ``self.link_rhs``)."""
        rows, cols, vals, rhs = [], [], [], []
        if self.nz:
            rows.append(np.zeros(self.nz, dtype=int))
            cols.append(self.nx + np.arange(self.nz))
            vals.append(np.ones(self.nz))
            rhs.append(1.0)
            for lay in self.layers:
                for j, a in enumerate(self.widths):
                    r = len(rhs)
                    mine = [lay.offset + i for i, (_, ai) in enumerate(lay.choices) if ai == a]
                    rows.append(np.full(len(mine) + 1, r))
                    cols.append(np.array([*mine, self.nx + j]))
                    vals.append(np.array([1.0] * len(mine) + [-1.0]))
                    rhs.append(0.0)
        self.link = sp.csr_matrix((_cat(vals, float), (_cat(rows, int), _cat(cols, int))),
                                  shape=(len(rhs), self.nvar))
        self.link_rhs = np.array(rhs)

    def n_patterns(self) -> int:
        """How many activation patterns the program has (one per shared width with one activation width)."""
        if self.shared:
            return max(len(self.widths), 1)
        return math.prod(len({a for _, a in lay.choices}) for lay in self.layers)

    def shared_width(self, pick: list[int]) -> int:
        """The activation width every tensor without a layer of its own takes in ``pick``."""
        if self.shared and self.layers:
            return self.layers[0].choices[pick[0]][1]
        return self.default_a

    def _row(self, attr: str) -> np.ndarray:
        r = np.zeros(self.nvar)
        for lay in self.layers:
            r[lay.offset:lay.offset + len(lay.choices)] = getattr(lay, attr)
        return r

    # -- solving
    @property
    def n_constraints(self) -> int:
        return self.eq.shape[0] + self.auxm.shape[0] + self.link.shape[0] + self.live.shape[0] + 1

    def solve(self, objective: str, budgets: Budgets | None, slack: dict[str, Any],
              time_limit: float = 60.0, cuts: list[np.ndarray] | None = None,
              ) -> tuple[list[int] | None, str, float, int]:
        """Minimise ``objective`` ("cost", or "sram": the peak of the live-bytes rows) under ``budgets`` minus
        ``slack`` (the "sram" entry may be per step); each cut (columns) excludes an activation pattern:
        ``sum x[cols] <= layers - 1``.
        Returns (choice index per layer or None, status, seconds, number of constraints)."""
        b = budgets or Budgets(None, None)
        extra = 1 if objective == "sram" else 0
        n = self.nvar + extra

        def widen(m: sp.spmatrix) -> sp.csr_matrix:
            return sp.hstack([m, sp.csr_matrix((m.shape[0], extra))], format="csr") if extra else m

        blocks = [widen(self.eq), widen(self.auxm), widen(self.link)]
        lbs = [np.ones(self.eq.shape[0]), np.full(self.auxm.shape[0], -np.inf), self.link_rhs]
        ubs = [np.ones(self.eq.shape[0]), np.zeros(self.auxm.shape[0]), self.link_rhs]

        def add_row(row: np.ndarray, ub: float) -> None:
            blocks.append(sp.csr_matrix(np.append(row, np.zeros(extra))[None, :]))
            lbs.append(np.array([-np.inf]))
            ubs.append(np.array([ub]))

        for cols in cuts or []:
            row = np.zeros(self.nvar)
            row[cols] = 1.0
            add_row(row, len(self.layers) - 1)
        fixed_flash = self.flash_fixed + self.runtime.code_bytes
        if b.flash_bytes is not None:
            add_row(self.flash_row, b.flash_bytes - fixed_flash - slack.get("flash", 0.0))
        if objective == "sram" or b.sram_bytes is not None:
            live = self.live
            lconst = self.live_const
            if b.shared_region:
                live = live + sp.csr_matrix(np.tile(self.flash_row, (live.shape[0], 1)))
                lconst = lconst + fixed_flash
            if objective == "sram":
                live = sp.hstack([live, sp.csr_matrix(-np.ones((live.shape[0], 1)))], format="csr")
                ub = -lconst
            else:
                ub = b.sram_bytes - lconst - slack.get("sram", 0.0)
            blocks.append(live)
            lbs.append(np.full(live.shape[0], -np.inf))
            ubs.append(ub)
            if self.floor:  # the runtime's planning needs this much arena whatever the widths
                row = self.flash_row.copy() if b.shared_region else np.zeros(self.nvar)
                ub = -self.floor - (fixed_flash if b.shared_region else 0.0)
                if objective == "sram":  # t >= floor (+ flash on a shared region)
                    blocks.append(sp.csr_matrix(np.append(row, -1.0)[None, :]))
                    lbs.append(np.array([-np.inf]))
                    ubs.append(np.array([ub]))
                else:
                    add_row(row, b.sram_bytes + ub - slack.get("sram", 0.0))
        if b.bops is not None:
            add_row(self.bops_row, b.bops - slack.get("bops", 0.0))
        if b.latency_ms is not None:
            if not b.clock_hz:
                raise UserError("a latency budget needs the device clock", "set Budgets.clock_hz")
            scale = 1e3 / b.clock_hz
            add_row(self.cycles_row * scale,
                    b.latency_ms - self.cycles_fixed * scale - slack.get("latency", 0.0))
        a = sp.vstack(blocks, format="csr")
        c = np.zeros(n)
        if objective == "sram":
            c[-1] = 1.0
        else:
            c[:self.nx] = self._scaled_costs()
        integrality = np.zeros(n)
        integrality[:self.nx + self.nz] = 1
        ub_vars = np.ones(n)
        if extra:
            ub_vars[-1] = np.inf
        t0 = time.perf_counter()
        with native_stdout_to_stderr():  # HiGHS prints a stray debug line to stdout (see the function)
            res = milp(c, integrality=integrality, bounds=Bounds(np.zeros(n), ub_vars),
                       constraints=LinearConstraint(a, np.concatenate(lbs), np.concatenate(ubs)),
                       options={"mip_rel_gap": 1e-9, "time_limit": time_limit, "presolve": False})
        secs = time.perf_counter() - t0
        if res.x is None:
            if res.status != 2:  # not proved infeasible: time or iteration limit, numerical trouble
                raise UserError(f"the allocation solver stopped without a plan: {res.message}",
                                "raise the time limit or report the model and budgets as a bug")
            return None, "infeasible", secs, a.shape[0]
        x = res.x
        pick = [int(np.argmax(x[lay.offset:lay.offset + len(lay.choices)])) for lay in self.layers]
        return pick, ("optimal" if res.status == 0 else "feasible"), secs, a.shape[0]

    def _scaled_costs(self) -> np.ndarray:
        """Costs shifted by each layer's minimum (a constant) and scaled to [0, 1]: HiGHS's absolute gap
        then means the same for any cost scale."""
        if not self.layers:
            return np.zeros(0)
        c = np.concatenate([lay.cost - lay.cost.min() for lay in self.layers])
        top = c.max()
        return c / top if top > 0 else c

    # -- checking a solution exactly
    def evaluate(self, pick: list[int], clock_hz: int | None = None) -> _Evaluation:
        rt = self.runtime
        layers = {lay.key: LayerBits(*lay.choices[j]) for lay, j in zip(self.layers, pick, strict=True)}
        bits = BitAssignment(8, self.shared_width(pick), layers)
        fb = flash_breakdown(self.source, bits, rt.code_bytes, runtime=rt)
        # an Ethos-U: Vela's plan with compile's settings (the program's rows)
        arena = (ethos_u.arena_plan(self.source, bits, rt) if is_ethos_u(rt)
                 else plan_arena_for(self.graph, bits, rt))
        bops = int(sum(lay.bops[j] for lay, j in zip(self.layers, pick, strict=True)))
        lat = None
        if clock_hz:
            cyc = self.cycles_fixed + sum(lay.cycles[j] for lay, j in zip(self.layers, pick, strict=True))
            lat = cyc * 1e3 / clock_hz
        also = max((plan_arena_for(self.source, bits, r).arena_bytes for r in self.rules.also_fits), default=0) \
            if self.rules else 0
        return _Evaluation(pick, bits, fb, arena, bops, lat, also)

    def live_bytes(self, pick: list[int]) -> np.ndarray:
        """Live bytes per step the program predicts for ``pick`` (aux indicators at their true values)."""
        x = np.zeros(self.nvar)
        for lay, j in zip(self.layers, pick, strict=True):
            x[lay.offset + j] = 1.0
        if self.nz:
            x[self.nx + self.widths.index(self.shared_width(pick))] = 1.0
        for (srcs, k, _kind), v in self.aux.items():
            x[v] = float(max(x[self.h[k][s]].sum() for s in srcs) > 0.5)
        return self.live @ x + self.live_const

    def activation_pattern(self, pick: list[int]) -> np.ndarray:
        """Columns of every choice with the same activation widths as ``pick``: the arena depends on the
        activation widths only, so all of them share its arena."""
        cols = []
        for lay, j in zip(self.layers, pick, strict=True):
            w, a = lay.choices[j]
            by_weight = lay.key in self.weight_scratch  # its scratch follows its weight width too
            cols.extend(lay.offset + i for i, (wi, ai) in enumerate(lay.choices)
                        if ai == a and (not by_weight or wi == w))
        return np.array(cols, dtype=int)

    def cost_of(self, pick: list[int]) -> float:
        return float(sum(lay.cost[j] for lay, j in zip(self.layers, pick, strict=True)))


def _find(table: dict[Choice, float], choice: Choice) -> Choice:
    """The key of ``table`` equal to ``choice`` (keys may be lists/tuples of ints or numpy ints)."""
    if choice in table:
        return choice
    return next(k for k in table if (int(k[0]), int(k[1])) == choice)


def _cat(xs: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate COO pieces (empty list -> empty array)."""
    return np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype)


def _overshoot(ev: _Evaluation, b: Budgets, check_arena: bool) -> dict[str, float]:
    """By how much the exact figures of a solution exceed each budget (only positive entries)."""
    over: dict[str, float] = {}
    if b.flash_bytes is not None and ev.flash.total_bytes > b.flash_bytes:
        over["flash"] = ev.flash.total_bytes - b.flash_bytes
    if b.sram_bytes is not None:
        used = ev.arena.arena_bytes if check_arena else ev.arena.peak_live_bytes
        limit = b.sram_bytes - (ev.flash.total_bytes if b.shared_region else 0)
        if used > limit:
            over["sram"] = used - limit
        elif check_arena and ev.also_arena_bytes > limit:  # fits the device, not the kernels it is measured on
            over["also_sram"] = ev.also_arena_bytes - limit
    if b.bops is not None and ev.bops > b.bops:
        over["bops"] = ev.bops - b.bops
    if b.latency_ms is not None and ev.latency_ms is not None and ev.latency_ms > b.latency_ms:
        over["latency"] = ev.latency_ms - b.latency_ms + 1e-9
    return over


def _allocation(prog: _Program, ev: _Evaluation, status: str, budgets: Budgets, secs: float, iters: int,
                tightenings: list[dict[str, float]], n_cons: int, t_start: float) -> Allocation:
    layers: dict[str, dict[str, int]] = {}
    costs: dict[str, float] = {}
    ops: dict[str, list[str]] = {}
    for lay, j in zip(prog.layers, ev.pick, strict=True):
        w, a = lay.choices[j]
        layers[lay.key] = {"w": w, "a": a}
        costs[lay.key] = float(lay.cost[j])
        ops[lay.key] = [op.name for op in lay.ops]
    return Allocation(
        status=status, layers=layers, objective=prog.cost_of(ev.pick), flash_bytes=ev.flash.total_bytes,
        weights_bytes=ev.flash.weights_bytes, model_bytes=ev.flash.model_bytes,
        arena_bytes=ev.arena.arena_bytes,
        peak_live_bytes=ev.arena.peak_live_bytes, peak_op=ev.arena.peak_op, solver_seconds=secs,
        iterations=iters, default_a=prog.shared_width(ev.pick), layer_costs=costs, layer_ops=ops, bops=ev.bops,
        latency_ms=ev.latency_ms, budgets=budgets, tightenings=tightenings, n_variables=prog.nvar,
        n_constraints=n_cons, seconds=time.perf_counter() - t_start)


def _step_overshoot(arena: ArenaPlan, limit: float) -> np.ndarray:
    """Per step, how far the buffers live at that step reach above ``limit`` in the greedy layout."""
    over = np.zeros(len(arena.live_bytes_per_step))
    for b in arena.buffers:
        end = b.offset + b.size
        if end > limit:
            span = slice(b.first, min(b.last, len(over) - 1) + 1)
            over[span] = np.maximum(over[span], end - limit)
    return over


def _solve_budgets(prog: _Program, budgets: Budgets, *, check_arena: bool, max_tightenings: int,
                   max_cuts: int, time_limit: float, t_start: float) -> Allocation:
    """Solve, check the plan exactly, repair, re-solve.

    A greedy arena over the budget while the live bytes fit first gets an exact cut (that activation pattern
    is excluded: the arena depends on activation widths only), while cuts stay cheap and can matter
    (``max_cuts``, ``CUT_SECONDS``, ``MAX_CUT_PATTERNS``); then the live-bytes budget of the steps whose
    buffers the greedy layout places above the budget is tightened by how far they reach over it.
    Overshoots from rounding the solver's binaries tighten that budget. If nothing converges, the
    smallest-SRAM plan within the other budgets."""
    slack: dict[str, Any] = {}
    tightenings: list[dict[str, float]] = []
    cuts: list[np.ndarray] = []
    secs = cut_secs = 0.0
    n_cons = solves = n_tight = 0
    few_patterns = prog.n_patterns() <= MAX_CUT_PATTERNS
    while True:
        pick, status, s, n_cons = prog.solve("cost", budgets, slack, time_limit, cuts)
        secs += s
        cut_secs += s if cuts else 0.0
        solves += 1
        if pick is None:
            if solves == 1:
                raise _diagnose(prog, budgets, check_arena)
            break
        ev = prog.evaluate(pick, budgets.clock_hz)
        over = _overshoot(ev, budgets, check_arena)
        if not over:
            return _allocation(prog, ev, status, budgets, secs, solves, tightenings, n_cons, t_start)
        limit = ev.arena.arena_bytes - over.get("sram", 0.0)
        arena_only = "sram" in over and check_arena and ev.arena.peak_live_bytes <= limit
        if arena_only and len(cuts) < max_cuts and cut_secs < CUT_SECONDS and few_patterns:
            cuts.append(prog.activation_pattern(pick))
            over["arena_cut"] = over.pop("sram")
        else:
            if n_tight >= max_tightenings:
                break
            n_tight += 1
            if arena_only:
                slack["sram"] = slack.get("sram", 0.0) + _step_overshoot(ev.arena, limit)
                over.pop("sram")
                over["sram_steps"] = over.get("sram_steps", 0.0) + ev.arena.arena_bytes - limit
        tightenings.append(over)
        for k, v in over.items():
            if k not in ("arena_cut", "sram_steps"):
                key = "sram" if k == "also_sram" else k  # the measured kernels' arena: the SRAM budget tightens
                slack[key] = slack.get(key, 0.0) + v
    # Repairs did not converge: the smallest-SRAM plan within the other budgets, if it fits.
    other = replace(budgets, sram_bytes=None)
    pick, _, s, _ = prog.solve("sram", other, {k: v for k, v in slack.items() if k != "sram"}, time_limit,
                               cuts)
    secs += s
    solves += 1
    if pick is not None:
        ev = prog.evaluate(pick, budgets.clock_hz)
        if not _overshoot(ev, budgets, check_arena):
            return _allocation(prog, ev, "feasible", budgets, secs, solves, tightenings, n_cons, t_start)
    raise _diagnose(prog, budgets, check_arena, arena_layout=True)


def _diagnose(prog: _Program, budgets: Budgets, check_arena: bool,
              arena_layout: bool = False) -> InfeasibleBudget:
    """Build the InfeasibleBudget error: which budget binds and the smallest achievable figures."""
    fixed = prog.flash_fixed + prog.runtime.code_bytes
    min_flash = int(fixed + sum(lay.flash.min() for lay in prog.layers))
    pick, _, _, _ = prog.solve("sram", None, {})
    ev = prog.evaluate(pick, budgets.clock_hz) if pick is not None else None
    min_arena = ev.arena.arena_bytes if ev else 0
    min_live = ev.arena.peak_live_bytes if ev else 0
    shared_flash = ev.flash.total_bytes if ev and budgets.shared_region else 0
    sram_measure = (min_arena if check_arena else min_live) + shared_flash
    sram_name = "arena + flash (shared region)" if budgets.shared_region else "SRAM (arena)"
    binding: list[str] = []
    parts: list[str] = []
    if budgets.flash_bytes is not None:
        if min_flash > budgets.flash_bytes:
            binding.append("flash")
        parts.append(f"flash budget {_b(budgets.flash_bytes)}, smallest achievable {_b(min_flash)}")
    else:
        parts.append(f"smallest achievable flash {_b(min_flash)}")
    if budgets.sram_bytes is not None:
        if sram_measure > budgets.sram_bytes:
            binding.append("SRAM")
        parts.append(f"{sram_name} budget {_b(budgets.sram_bytes)}, smallest achievable {_b(sram_measure)} "
                     f"(peak live {_b(min_live)})")
        also = ev.also_arena_bytes + shared_flash if ev and check_arena else 0
        if also > budgets.sram_bytes and prog.rules is not None:  # the kernels it is measured with need more
            names = ", ".join(r.name for r in prog.rules.also_fits)
            parts.append(f"on the kernels it is measured with ({names}) that plan needs {_b(also)}")
            if "SRAM" not in binding:
                binding.append(f"SRAM (measured kernels: {names})")
    else:
        parts.append(f"smallest achievable {sram_name} {_b(sram_measure)}")
    if budgets.bops is not None:
        min_bops = int(sum(lay.bops.min() for lay in prog.layers))
        if min_bops > budgets.bops:
            binding.append("BOPs")
        parts.append(f"BOPs budget {budgets.bops:.3g}, smallest achievable {min_bops:.3g}")
    if budgets.latency_ms is not None and budgets.clock_hz:
        min_lat = (prog.cycles_fixed + sum(lay.cycles.min() for lay in prog.layers)) * 1e3 / budgets.clock_hz
        if min_lat > budgets.latency_ms:
            binding.append("latency")
        parts.append(f"latency budget {budgets.latency_ms:g} ms, "
                     f"smallest achievable {min_lat:.3g} ms (model)")
    if not binding:
        if arena_layout:
            binding.append("SRAM (arena layout: the greedy arena exceeds the live bytes)")
        else:
            binding.append("the budgets together (each alone can be met)")
            if budgets.flash_bytes is not None and budgets.sram_bytes is not None:
                pick2, _, _, _ = prog.solve("sram", Budgets(budgets.flash_bytes, None,
                                                            shared_region=budgets.shared_region), {})
                if pick2 is not None:
                    e2 = prog.evaluate(pick2)
                    m2 = (e2.arena.arena_bytes if check_arena else e2.arena.peak_live_bytes) + (
                        e2.flash.total_bytes if budgets.shared_region else 0)
                    parts.append(f"within the flash budget the smallest {sram_name} is {_b(m2)}")
    msg = f"no bit assignment meets the budgets (binding: {', '.join(binding)}): " + "; ".join(parts)
    hint = "raise the binding budget"
    return InfeasibleBudget(msg, hint, binding=", ".join(binding), min_flash_bytes=min_flash,
                            min_sram_bytes=sram_measure, min_peak_live_bytes=min_live,
                            floor_bits=ev.bits if ev else None)


def _b(n: float) -> str:
    return f"{fmt_bytes(n)} ({int(n)} B)"


# ---- public API -------------------------------------------------------------------------------------------
def allocate(graph: ModelGraph, costs: CostTable, runtime: Runtime, budgets: Budgets, *, default_a: int = 8,
             rules: PlanRules | None = None, pins: Pins | None = None,
             check_arena: bool = True, max_tightenings: int = MAX_TIGHTENINGS, max_cuts: int = MAX_CUTS,
             time_limit: float = 60.0) -> Allocation:
    """Minimise the summed per-layer cost under ``budgets`` (see the module docstring for the program).

    ``costs[op_name][(w, a)]`` for every quantizable op; choices the runtime does not support, or ``rules``
    (the building backend's) do not allow, are dropped; ``pins`` (plan key -> (w, a or None)) fix layers.
    ``check_arena=False`` bounds the peak live bytes instead of the greedy arena (no re-solves for
    fragmentation); ``max_cuts`` / ``max_tightenings`` bound the re-solves when the arena overshoots.
    Raises :class:`InfeasibleBudget` when nothing fits.
    """
    t0 = time.perf_counter()
    prog = _Program(graph, costs, runtime, default_a, rules, pins)
    return _solve_budgets(prog, budgets, check_arena=check_arena, max_tightenings=max_tightenings,
                          max_cuts=max_cuts, time_limit=time_limit, t_start=t0)


def pareto_sweep(graph: ModelGraph, costs: CostTable, runtime: Runtime, flash_budgets: Iterable[int],
                 sram_bytes: int | None, *, default_a: int = 8, base: Budgets | None = None,
                 rules: PlanRules | None = None, pins: Pins | None = None,
                 check_arena: bool = True) -> list[Allocation]:
    """``--sweep``: allocate at each flash budget (one program, re-solved), skip infeasible points and keep
    the non-dominated (flash, objective) plans, smallest flash first. ``base`` supplies the other budgets;
    ``rules`` and ``pins`` as for :func:`allocate`."""
    prog = _Program(graph, costs, runtime, default_a, rules, pins)
    template = base or Budgets(None, sram_bytes)
    found: list[Allocation] = []
    for fb in sorted(set(int(f) for f in flash_budgets)):
        t0 = time.perf_counter()
        try:
            found.append(_solve_budgets(prog, replace(template, flash_bytes=fb, sram_bytes=sram_bytes),
                                        check_arena=check_arena, max_tightenings=MAX_TIGHTENINGS,
                                        max_cuts=MAX_CUTS, time_limit=60.0, t_start=t0))
        except InfeasibleBudget:
            continue
    front: list[Allocation] = []
    for al in sorted(found, key=lambda a: (a.flash_bytes, a.objective)):
        if not front or al.objective < front[-1].objective - 1e-12 * max(1.0, abs(front[-1].objective)):
            front.append(al)
    return front
