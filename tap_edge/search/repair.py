"""Repair by deletion: drop the statements of an LLM-written program that fail, keep the ones that work.

Small LLMs write programs in which most lines are fine and one or two are broken (an undefined name, a
wrong call). After the sandbox reports the failing line (a vetting rejection or a runtime error), the
innermost statement covering that line is removed (an emptied block gets ``pass``) and the program is run
again, up to ``max_steps`` times. The repaired program is vetted and run like any other; every removed
statement is recorded with the error that removed it, so a repaired candidate's provenance stays visible.
Output errors (wrong shape, NaN) carry no line and end the repair: deleting lines cannot fix them safely.

The reruns share one budget: together they may use the CPU and wall-clock time of one program run (the
sandbox's limits), so a program cannot use its limits up to ``max_steps + 1`` times over. Trees come from
:func:`~tap_edge.plan.proxies.sandbox.parse_program` (bounded); code that does not parse within the bounds
loses its raw lines instead.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from tap_edge.plan.proxies.sandbox import SandboxRejection, SandboxResult, parse_program, run_proxy_program

#: Below this much CPU or wall-clock time left, the repair stops (a run needs at least this to start a program).
MIN_RUN_SECONDS = 0.2


def _stmt_lists(node: ast.AST) -> list[list[ast.stmt]]:
    out = []
    for name in ("body", "orelse", "finalbody"):
        v = getattr(node, name, None)
        if isinstance(v, list) and v and isinstance(v[0], ast.stmt):
            out.append(v)
    for h in getattr(node, "handlers", []) or []:
        out.append(h.body)
    return out


def drop_statement(code: str, line: int) -> tuple[str, str] | None:
    """Remove the innermost statement that covers ``line``; returns (new code, removed text) or None.

    The ``def proxy`` line itself is never removed. Code that does not parse (or is too big or too deep to
    parse safely) loses the raw line (and the lines indented under it)."""
    lines = code.splitlines()
    if not 1 <= line <= len(lines):
        return None
    try:
        tree = parse_program(code)
    except SandboxRejection:
        text = lines[line - 1]
        if text.lstrip().startswith("def proxy"):
            return None
        indent = len(text) - len(text.lstrip())
        end = line
        while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        removed = "\n".join(lines[line - 1:end])
        return "\n".join(lines[:line - 1] + lines[end:]) + "\n", removed
    container: list[ast.stmt] | None = None
    target: ast.stmt | None = None
    stack: list[list[ast.stmt]] = [tree.body]
    while stack:
        body = stack.pop()
        for st in body:
            end = getattr(st, "end_lineno", st.lineno) or st.lineno
            if st.lineno <= line <= end:
                inner = _stmt_lists(st)
                covered = [b for b in inner if any(s.lineno <= line <= (s.end_lineno or s.lineno) for s in b)]
                if covered:
                    stack.extend(covered)
                    if isinstance(st, ast.FunctionDef) and st.lineno == line:
                        return None
                    break
                if isinstance(st, ast.FunctionDef) and st.name == "proxy":
                    return None
                container, target = body, st
                break
    if container is None or target is None:
        return None
    try:
        removed = ast.get_source_segment(code, target) or ast.unparse(target)
        container.remove(target)
        if not container:
            container.append(ast.Pass())
        return ast.unparse(tree) + "\n", removed
    except (RecursionError, MemoryError, ValueError):  # bounded trees unparse; this is the last guard
        return None


def repair_program(code: str, layers: list[dict], bits: list[int], *, cpu_seconds: float = 10,
                   memory_mb: int = 1024, wall_seconds: float = 20, max_steps: int = 12
                   ) -> tuple[str | None, list[dict[str, Any]], str | None, SandboxResult | None]:
    """(working code or None, removed statements with their errors, last failure reason, the last run). The
    runs share ``cpu_seconds`` and ``wall_seconds`` (each gets what the ones before it left)."""
    steps: list[dict[str, Any]] = []
    cur = code
    reason: str | None = None
    cpu_left, wall_left = float(cpu_seconds), float(wall_seconds)
    res: SandboxResult | None = None
    for _ in range(max_steps + 1):
        if steps and min(cpu_left, wall_left) < MIN_RUN_SECONDS:
            return None, steps, f"{reason} (the repair's time budget of {cpu_seconds:g} s CPU, " \
                                f"{wall_seconds:g} s wall is used up)", res
        res = run_proxy_program(cur, layers, bits, cpu_seconds=max(MIN_RUN_SECONDS, cpu_left),
                                memory_mb=memory_mb, wall_seconds=max(MIN_RUN_SECONDS, wall_left))
        cpu_left -= max(res.cpu_seconds, 0.0)
        wall_left -= max(res.run_seconds, 0.0)
        if res.ok:
            return cur, steps, None, res
        reason = res.reason
        line = res.line
        m = re.search(r"expected an indented block after .* on line (\d+)", reason or "")
        if m:  # the error points below an emptied block header: drop the header
            line = int(m.group(1))
        if line is None or len(steps) >= max_steps:
            return None, steps, reason, res
        dropped = drop_statement(cur, line)
        if dropped is None or dropped[0] == cur:
            return None, steps, reason, res
        cur = dropped[0]
        steps.append({"line": res.line, "error": res.reason, "removed": dropped[1][:300]})
    return None, steps, reason, res
