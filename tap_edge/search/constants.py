"""Constant fitting: tune a program's numeric literals against a cheap objective before its full fitness.

A weak LLM writes the form of a proxy; the numbers in it are guesses. After a program is written (and repaired),
its float literals inside functions (the last :data:`MAX_CONSTANTS` in source order; ints, which are indices,
widths and loop counts, and 0.0 are left alone) are tuned to maximise the rank agreement of its per-layer
scores with the measured per-layer damage the search tasks cache (the Spearman term of the fitness; mean over
the tasks' networks). The full fitness (allocation, PTQ, quality on the evaluation split) is then paid once, on
the tuned program.

The optimiser is a batched (1 + lambda) evolution strategy in log space: each round perturbs every constant of
the best vector so far by ``exp(sigma z)``, ``z ~ N(0, 1)`` (sign kept), evaluates :data:`PER_ROUND` vectors
at once, keeps a vector only if it strictly improves the objective (so a tie keeps the original numbers) and
shrinks ``sigma``. Batched, because every evaluation runs the program in the sandbox: one sandbox run carries
all of a round's vectors (the program's own ``proxy`` is renamed and called once per vector from a generated
wrapper whose constants are a module-level list), so a round costs one sandbox start and one transfer of the
layer statistics per network, where scipy's Nelder-Mead would need one run per evaluation, sequentially
(~100 runs for 8 constants). The generated program is vetted like any other and runs in the same locked-down
child process: constant fitting adds no way out of the sandbox.
"""

from __future__ import annotations

import ast
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tap_edge.plan.proxies.sandbox import ENTRY_POINT, SandboxRejection, one_line, parse_program, run_proxy_program
from tap_edge.search.tasks import REF_BITS, layer_scores, spearman

MAX_CONSTANTS = 8
ROUNDS = 4
PER_ROUND = 12
SIGMA0 = 0.7
SIGMA_DECAY = 0.6
#: What the wrapper returns for a vector whose run failed (finite and non-negative: the sandbox accepts it).
FAILED_COST = 1.25e300
_VECTOR = "tap_fit_constants"
_INNER = "tap_fit_original_proxy"
_VARIANTS = "tap_fit_variants"


@dataclass
class ConstantFit:
    """What constant fitting did to one program (recorded in the run's log)."""

    original: list[float]
    tuned: list[float]
    objective_before: float
    objective_after: float
    evaluations: int
    sandbox_runs: int
    seconds: float
    improved: bool
    code: str | None = None  # the tuned program (None when nothing improved)
    reason: str | None = None  # why fitting stopped early, if it did
    lines: list[int] = field(default_factory=list)  # source line of each constant

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("code")
        return d


def _in_function_constants(tree: ast.Module) -> list[ast.Constant]:
    """The tunable literals: floats other than 0.0 inside a function body, not in a subscript, in source order."""
    found: list[ast.Constant] = []
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            skip.update(id(n) for n in ast.walk(node.slice))
        elif isinstance(node, ast.JoinedStr):
            skip.update(id(n) for n in ast.walk(node))
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Constant) and type(node.value) is float and node.value != 0.0 \
                    and math.isfinite(node.value) and id(node) not in skip:
                found.append(node)
    found.sort(key=lambda n: (n.lineno, n.col_offset))
    return found[-MAX_CONSTANTS:]  # the last ones: an LLM's edits of a parent come at the end


def parametrize(code: str) -> tuple[str, list[float], list[int]] | None:
    """``(batched program, original constants, their lines)``, or None when the program has no tunable
    literal (or uses the wrapper's names). The batched program evaluates every vector of ``tap_fit_variants``
    (filled in by :func:`batched_source`) on each layer, its ``bits`` argument being the widths repeated once per
    vector."""
    tree = parse_program(code)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    if names & {_VECTOR, _INNER, _VARIANTS}:
        return None
    consts = _in_function_constants(tree)
    if not consts:
        return None
    values = [float(c.value) for c in consts]
    lines = [int(c.lineno) for c in consts]
    index = {id(c): i for i, c in enumerate(consts)}

    class Swap(ast.NodeTransformer):
        def visit_Constant(self, node: ast.Constant) -> ast.AST:
            i = index.get(id(node))
            if i is None:
                return node
            return ast.copy_location(ast.Subscript(ast.Name(_VECTOR, ast.Load()), ast.Constant(i), ast.Load()), node)

        def visit_Name(self, node: ast.Name) -> ast.AST:
            return ast.copy_location(ast.Name(_INNER, node.ctx), node) if node.id == ENTRY_POINT else node

        def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
            self.generic_visit(node)
            if node.name == ENTRY_POINT:
                node.name = _INNER
            return node

    body = ast.unparse(ast.fix_missing_locations(Swap().visit(tree)))
    wrapper = f"""

import math as tap_fit_math

{_VECTOR} = {values!r}
{_VARIANTS} = []


def {ENTRY_POINT}(layer, bits):
    n = len(bits) // max(1, len({_VARIANTS}))
    out = []
    for vec in {_VARIANTS}:
        {_VECTOR}[:] = vec
        try:
            vals = [float(v) for v in {_INNER}(layer, list(bits[:n]))]
            ok = len(vals) == n and all(tap_fit_math.isfinite(v) and v >= 0 for v in vals)
        except Exception:
            ok = False
        out.extend(vals if ok else [{FAILED_COST!r}] * n)
    return out
"""
    return body + wrapper, values, lines


def batched_source(template: str, vectors: list[list[float]]) -> str:
    """The batched program of :func:`parametrize` with ``vectors`` to evaluate."""
    return template.replace(f"{_VARIANTS} = []", f"{_VARIANTS} = {[[float(v) for v in vec] for vec in vectors]!r}", 1)


def substitute(code: str, values: list[float]) -> str:
    """``code`` with its tunable literals (:func:`parametrize`'s order) replaced by ``values`` in the text itself
    (comments and layout stay)."""
    consts = _in_function_constants(parse_program(code))
    lines = code.splitlines(keepends=True)
    spans = sorted(((c.lineno, c.col_offset, c.end_lineno, c.end_col_offset, v)
                    for c, v in zip(consts, values, strict=True)), reverse=True)
    for line, col, end_line, end_col, v in spans:
        if end_line != line:
            continue  # a literal split over lines cannot be written back in place: keep it
        text = lines[line - 1].encode()  # ast offsets count UTF-8 bytes
        lines[line - 1] = (text[:col] + repr(float(v)).encode() + text[end_col:]).decode()
    return "".join(lines)


def layer_damage(task: Any) -> np.ndarray:
    """A task's measured per-layer damage at the reference width (1-D)."""
    d = np.asarray(task.damage, dtype=float)
    return d[:, task.bits.index(REF_BITS)] if d.ndim == 2 else d


def fit_constants(code: str, tasks: list[Any], *, cpu_seconds: float, memory_mb: int, wall_seconds: float,
                  rounds: int = ROUNDS, per_round: int = PER_ROUND, seed: int = 0) -> ConstantFit | None:
    """Tune ``code``'s literals for rank agreement with the tasks' damage (module docstring); None when it has
    none. The result's ``code`` is the tuned program when the objective improved."""
    t0 = time.perf_counter()
    try:
        made = parametrize(code)
    except SandboxRejection:
        return None
    if made is None:
        return None
    template, original, lines = made
    networks: dict[int, Any] = {}
    for t in tasks:  # tasks of one network at several budgets share their program inputs and damage
        networks.setdefault(id(t.program_layers()), t)
    runs = evaluations = 0

    def objective(vectors: list[list[float]]) -> tuple[list[float], str | None]:
        nonlocal runs, evaluations
        per_vec = np.zeros(len(vectors))
        src = batched_source(template, vectors)
        for task in networks.values():
            nb = len(task.bits)
            res = run_proxy_program(src, task.program_layers(), list(task.bits) * len(vectors),
                                    cpu_seconds=cpu_seconds * len(vectors), memory_mb=memory_mb,
                                    wall_seconds=wall_seconds * len(vectors))
            runs += 1
            if not res.ok or res.costs is None:
                return [-math.inf] * len(vectors), res.reason
            costs = np.asarray(res.costs, dtype=float)
            damage = layer_damage(task)
            for k in range(len(vectors)):
                block = costs[:, k * nb:(k + 1) * nb]
                if np.any(block >= FAILED_COST):
                    per_vec[k] = -math.inf
                else:
                    per_vec[k] += spearman(layer_scores(block.tolist(), task.bits), damage) / len(networks)
        evaluations += len(vectors)
        return per_vec.tolist(), None

    rng = np.random.default_rng(seed)
    best = list(original)
    first, why = objective([best])
    f0 = f_best = first[0]
    sigma = SIGMA0
    for _ in range(rounds if why is None and math.isfinite(f0) else 0):
        z = rng.standard_normal((per_round, len(best)))
        vectors = [[float(b * math.exp(sigma * zi)) for b, zi in zip(best, row, strict=True)] for row in z]
        scores, why = objective(vectors)
        if why is not None:
            break
        k = int(np.argmax(scores))
        if scores[k] > f_best + 1e-9:
            f_best, best = scores[k], vectors[k]
        sigma *= SIGMA_DECAY
    improved = f_best > f0 + 1e-9
    return ConstantFit(original, [round(v, 6) for v in best] if improved else list(original), round(f0, 6),
                       round(f_best, 6), evaluations, runs, round(time.perf_counter() - t0, 3), improved,
                       substitute(code, [round(v, 6) for v in best]) if improved else None,
                       one_line(why) if why else None, lines)
