"""Vet and run untrusted proxy programs (LLM-written sensitivity proxies).

A proxy program is Python source that defines ``def proxy(layer: dict, bits: list[int]) -> list[float]``:
given one layer's statistics (``LayerStats.to_program_input()``) and the candidate weight widths, it returns
one non-negative cost per width (lower cost = better for that width; the allocator minimises the sum).

Bounds first: :func:`parse_program` is the only way this module (and the search, which shows programs in
prompts and repairs them) turns program text into a syntax tree. It bounds the text (length, NUL bytes, bracket
nesting, unary-operator chains: measured by a linear scan, before any ``ast`` call), catches the parser's
``RecursionError`` / ``MemoryError``, and bounds the tree (depth and node count, walked without recursion), so
code that handles a parsed program (``ast.unparse`` included) cannot recurse past Python's limit.

Two layers of defence:

1. :func:`vet_source` - static vetting of the AST against an allowlist: arithmetic, comparisons, loops,
   functions, comprehensions, ``numpy`` (as ``np``) and ``math``; imports only of ``numpy``/``math``; no
   dunder names or attributes, no private (``_x``) attributes, no attribute assignment, no classes,
   generators, ``with``, ``global``, ``try/finally``; no ``open``/``exec``/``eval``/``compile``/``globals``/
   ``getattr``/... by name; no attributes that lead to file I/O or to other modules (``np.load``,
   ``arr.tofile``, ``np.f2py``, ``x.format``...). Violations raise :class:`SandboxRejection` with a reason.
2. :func:`run_proxy_program` - the runtime layer, which holds on its own (the tests run it with vetting
   skipped). A fresh ``python -I`` child (the *supervisor*) reads its job from the parent, imports numpy with
   ``ctypes`` made unimportable (its raw-memory functions are not audited), and forks the *program process*,
   which is the only process that ever holds program code. The program process keeps four descriptors (0 and
   1 ``/dev/null``, 2 and 3 pipes to the supervisor), drops root to ``nobody`` (where the system lets it),
   sets ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE=0``, ``RLIMIT_NPROC=0``, ``RLIMIT_NOFILE=4`` and
   ``RLIMIT_CORE=0``, deletes the few unaudited functions that act on other processes or the machine
   (``pidfd_open``, ``setpriority``, ``setsid``, ``_imp.create_builtin``...), then installs an audit hook
   whose decision is a closure over immutable state: the program's own code object may be executed and
   numpy/math imported; every other event (``open``, sockets, ``os.fork``, ``subprocess``, ``os.kill``, frames
   and code objects, adding hooks...) is refused. Nothing in that process can switch the hook off, and
   nothing there is secret: the supervisor's answer channel to the parent is closed in it, so a program that
   writes raw bytes to every descriptor reaches only ``/dev/null`` and its own result pipe, whose content the
   supervisor treats as the program's claim (a fixed binary format, exact length, checked again: finite,
   non-negative, one value per layer and width). The supervisor enforces the wall-clock limit, reads the
   program process's exit status and CPU time, and writes the one answer the parent reads; the parent bounds
   its size and nesting before ``json.loads`` and checks the costs once more.

Nothing outlives the parent: the supervisor gets SIGTERM when the parent dies (``PR_SET_PDEATHSIG`` on Linux)
and also watches its stdin, which the parent holds open (end of file = the parent is gone, on every system);
either way it kills the program process first. The parent kills the supervisor's process group at the end.

Every rejection carries a one-line reason (:func:`one_line`), which the evolution loop records and shows to the
LLM.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_SOURCE_CHARS = 40_000
MAX_BRACKET_DEPTH = 50  # (, [ and { open at once, anywhere in the text
MAX_UNARY_CHAIN = 50  # unary operators in a row (each one is a level of the parser's recursion)
MAX_TREE_DEPTH = 100  # syntax-tree levels: ast.unparse and the compiler stay far from Python's limit
MAX_TREE_NODES = 20_000
MAX_REASON_CHARS = 300
MAX_OUTPUT_BYTES = 1 << 20  # the program's result: costs are a few hundred numbers
ENTRY_POINT = "proxy"
ALLOWED_IMPORTS = ("numpy", "numpy.linalg", "numpy.fft", "math")
MODULE_ALIASES = ("np", "numpy", "math")


class SandboxRejection(Exception):
    """A program refused by vetting or by the sandbox; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        m = re.search(r"\(line (\d+)\)", reason)
        self.line: int | None = int(m.group(1)) if m else None


@dataclass
class SandboxResult:
    """Outcome of one run: ``costs[i][j]`` is the cost of layer i at width bits[j] when ``ok``."""

    ok: bool
    costs: list[list[float]] | None
    reason: str | None
    seconds: float
    stage: str = "run"  # "vet" | "run" | "output" | "ok"
    stderr_tail: str = field(default="", repr=False)
    line: int | None = None  # the program line the error points at, when known
    cpu_seconds: float = 0.0  # CPU time of the program process
    run_seconds: float = 0.0  # wall-clock time of the program process (the limits count these two)


# ---------------------------------------------------------------------------------------------------------
# static vetting

_ALLOWED_NODES: tuple[type, ...] = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.AugAssign, ast.AnnAssign,
    ast.For, ast.While, ast.If, ast.Break, ast.Continue, ast.Pass, ast.Expr, ast.Assert, ast.Raise,
    ast.Try, ast.ExceptHandler,
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp, ast.Call, ast.keyword, ast.Constant, ast.Name,
    ast.Attribute, ast.Subscript, ast.Slice, ast.Starred, ast.List, ast.Tuple, ast.Dict, ast.Set,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.Lambda, ast.NamedExpr,
    ast.JoinedStr, ast.FormattedValue, ast.Import, ast.ImportFrom, ast.alias,
    ast.Load, ast.Store, ast.Del,
    ast.boolop, ast.operator, ast.unaryop, ast.cmpop,
)

_NODE_REASONS: dict[type, str] = {
    ast.ClassDef: "class definitions are not allowed",
    ast.AsyncFunctionDef: "async functions are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "generators (yield) are not allowed",
    ast.YieldFrom: "generators (yield from) are not allowed",
    ast.Global: "global statements are not allowed",
    ast.Nonlocal: "nonlocal statements are not allowed",
    ast.With: "with statements are not allowed",
    ast.AsyncWith: "async with is not allowed",
    ast.AsyncFor: "async for is not allowed",
    ast.Delete: "del is not allowed",
    ast.Match: "match statements are not allowed",
    ast.TryStar: "try/except* is not allowed",
}

#: Names that may not appear at all (builtins that reach the interpreter, files or modules).
FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "globals", "locals", "getattr", "setattr", "delattr", "hasattr",
    "vars", "dir", "input", "breakpoint", "help", "exit", "quit", "memoryview", "type", "object", "super",
    "classmethod", "staticmethod", "property", "id", "format", "issubclass", "callable", "bytearray",
    "os", "sys", "subprocess", "socket", "builtins", "importlib", "ctypes", "pickle", "marshal", "shutil",
    "pathlib", "io", "codecs", "signal", "threading", "multiprocessing", "resource", "gc", "inspect",
    "BaseException", "SystemExit", "KeyboardInterrupt", "GeneratorExit", "copyreg", "weakref", "posix",
})

_STDLIB_OK_ATTRS = frozenset({"copy", "random", "math", "array"})
#: Attribute names that lead to files, processes, other modules or interpreter internals.
FORBIDDEN_ATTRS = frozenset({
    # string formatting can read attributes: "{0.__class__}".format(x)
    "format", "format_map", "mro",
    # numpy file I/O and escape hatches
    "load", "loads", "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile",
    "fromregex", "tofile", "dump", "dumps", "memmap", "open_memmap", "DataSource", "lib", "core", "ctypes",
    "ctypeslib", "f2py", "testing", "distutils", "ma", "rec", "typing", "char", "strings", "polyutils",
    "mtrand", "bit_generator", "extbuild", "show_config", "show_runtime", "info", "source", "lookfor",
    "get_include", "seterrcall", "setbufsize", "frompyfunc", "vectorize", "piecewise", "apply_along_axis",
    "apply_over_axes", "fromstring", "frombuffer", "ndarray", "recarray", "dtypes", "exceptions",
    "byte_bounds", "mu", "ntypes", "overrides", "mixins", "npyio", "stride_tricks", "introspect",
    # frames, code objects and generators
    "gi_frame", "gi_code", "gi_yieldfrom", "gi_running", "gi_suspended", "cr_frame", "cr_code", "cr_await",
    "ag_frame", "ag_code", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "f_trace", "tb_frame",
    "tb_next", "func_globals", "func_code", "im_func", "im_self", "co_code", "co_consts", "co_names",
    "register", "builtins", "modules",
}) | (frozenset(sys.stdlib_module_names) - _STDLIB_OK_ATTRS)


def _is_dunder(name: str) -> bool:
    return "__" in name


def _where(node: ast.AST) -> str:
    return f" (line {getattr(node, 'lineno', '?')})"


def one_line(text: object, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` as one printable line of at most ``limit`` characters: control characters, line breaks and
    unpaired surrogates become spaces, runs of spaces one space, and a longer text is cut with "...". Reasons
    are program- and LLM-controlled text; this is what a prompt, a summary or a terminal gets of them."""
    raw = text if isinstance(text, str) else str(text)
    raw = raw[:limit * 4]  # bounded work, whatever the input
    flat = "".join(ch if ch.isprintable() else " " for ch in raw)
    flat = " ".join(flat.split())
    return flat if len(flat) <= limit else flat[:max(0, limit - 3)].rstrip() + "..."


_UNARY_RUN = re.compile(rf"(?:(?:[-+~]|\bnot\b)\s*){{{MAX_UNARY_CHAIN + 1}}}")


def text_shape_problem(source: str, max_chars: int = MAX_SOURCE_CHARS) -> str | None:
    """Why ``source`` is too big to parse safely (length, NUL byte, bracket nesting, a chain of unary
    operators), or None. A linear scan of the text: nothing here recurses, whatever the input."""
    if len(source) > max_chars:
        return f"program too long ({len(source)} characters > {max_chars})"
    if "\x00" in source:
        return "program contains a NUL byte"
    depth = 0
    for ch in source:
        if ch in "([{":
            depth += 1
            if depth > MAX_BRACKET_DEPTH:
                return f"brackets nested too deeply (more than {MAX_BRACKET_DEPTH} levels)"
        elif ch in ")]}":
            depth = max(0, depth - 1)
    if _UNARY_RUN.search(source):
        return f"more than {MAX_UNARY_CHAIN} unary operators in a row"
    return None


def tree_shape_problem(tree: ast.AST) -> str | None:
    """Why ``tree`` is too deep or too large for code that walks it recursively (``ast.unparse``, the
    compiler), or None; walked with an explicit stack."""
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_TREE_NODES:
            return f"program too large (more than {MAX_TREE_NODES} syntax nodes)"
        if depth > MAX_TREE_DEPTH:
            return f"expression nested too deeply (more than {MAX_TREE_DEPTH} syntax levels)"
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return None


def parse_program(source: str, max_chars: int = MAX_SOURCE_CHARS) -> ast.Module:
    """The syntax tree of ``source``, bounded: :func:`text_shape_problem` before the parser runs, the parser's
    ``RecursionError`` / ``MemoryError`` caught, :func:`tree_shape_problem` after. Raises
    :class:`SandboxRejection` with a one-line reason (a syntax error names its line)."""
    if not isinstance(source, str):
        raise SandboxRejection("the program is not text")
    problem = text_shape_problem(source, max_chars)
    if problem:
        raise SandboxRejection(problem)
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as e:
        raise SandboxRejection(f"syntax error: {one_line(e.msg, 120)} (line {e.lineno})") from None
    except (RecursionError, MemoryError, ValueError, OverflowError) as e:
        raise SandboxRejection(f"cannot parse: {e.__class__.__name__}") from None
    problem = tree_shape_problem(tree)
    if problem:
        raise SandboxRejection(problem)
    return tree


def vet_source(source: str) -> None:
    """Statically check an untrusted proxy program; raise :class:`SandboxRejection` with a reason if refused.

    Also checks the contract: a top-level ``def proxy(layer, bits)`` taking two positional arguments;
    top-level statements are limited to imports, function definitions, assignments and a docstring.
    """
    if not isinstance(source, str) or not source.strip():
        raise SandboxRejection("empty program")
    tree = parse_program(source)

    for stmt in tree.body:
        ok = isinstance(stmt, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.Assign | ast.AnnAssign) or (
            isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
        if not ok:
            raise SandboxRejection(f"top-level {stmt.__class__.__name__} statement not allowed"
                                   f"{_where(stmt)}: only imports, function definitions and assignments")

    for node in ast.walk(tree):
        _vet_node(node)

    procs = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == ENTRY_POINT]
    if not procs:
        raise SandboxRejection(f"no top-level function 'def {ENTRY_POINT}(layer, bits)'")
    fn = procs[-1]
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    n_required = len(positional) - len(a.defaults)
    kw_required = sum(d is None for d in a.kw_defaults)
    if (len(positional) < 2 and a.vararg is None) or n_required > 2 or kw_required:
        raise SandboxRejection(f"'{ENTRY_POINT}' must take exactly two arguments (layer, bits){_where(fn)}")


def _vet_node(node: ast.AST) -> None:
    if isinstance(node, ast.Try) and node.finalbody:
        raise SandboxRejection(f"try/finally is not allowed{_where(node)}")
    if not isinstance(node, _ALLOWED_NODES):
        reason = _NODE_REASONS.get(type(node), f"syntax '{node.__class__.__name__}' is not allowed")
        raise SandboxRejection(reason + _where(node))
    if isinstance(node, ast.Name):
        if _is_dunder(node.id):
            raise SandboxRejection(f"dunder name '{node.id}' is not allowed{_where(node)}")
        if node.id in FORBIDDEN_NAMES:
            raise SandboxRejection(f"name '{node.id}' is not allowed{_where(node)}")
        if node.id in MODULE_ALIASES and not isinstance(node.ctx, ast.Load):
            raise SandboxRejection(f"cannot rebind module name '{node.id}'{_where(node)}")
    elif isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            raise SandboxRejection(f"private or dunder attribute '.{node.attr}' is not allowed{_where(node)}")
        if node.attr in FORBIDDEN_ATTRS:
            raise SandboxRejection(f"attribute '.{node.attr}' is not allowed{_where(node)}")
        if not isinstance(node.ctx, ast.Load):
            raise SandboxRejection(f"assigning attributes ('.{node.attr} = ...') is not allowed"
                                   f"{_where(node)}")
    elif isinstance(node, ast.Import):
        for al in node.names:
            if al.name not in ALLOWED_IMPORTS:
                raise SandboxRejection(f"import of '{al.name}' is not allowed (only numpy and math)"
                                       f"{_where(node)}")
            _vet_alias(al, node)
    elif isinstance(node, ast.ImportFrom):
        if node.level or node.module not in ALLOWED_IMPORTS:
            raise SandboxRejection(f"import from '{node.module}' is not allowed (only numpy and math)"
                                   f"{_where(node)}")
        for al in node.names:
            if al.name == "*":
                raise SandboxRejection(f"'from {node.module} import *' is not allowed{_where(node)}")
            if al.name.startswith("_") or al.name in FORBIDDEN_ATTRS or al.name in FORBIDDEN_NAMES:
                raise SandboxRejection(f"importing '{al.name}' from {node.module} is not allowed"
                                       f"{_where(node)}")
            _vet_alias(al, node)
    elif isinstance(node, ast.FunctionDef | ast.Lambda):
        if isinstance(node, ast.FunctionDef):
            if node.decorator_list:
                raise SandboxRejection(f"decorators are not allowed{_where(node)}")
            if _is_dunder(node.name) or node.name in FORBIDDEN_NAMES:
                raise SandboxRejection(f"function name '{node.name}' is not allowed{_where(node)}")
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs,
                    *([args.vararg] if args.vararg else []), *([args.kwarg] if args.kwarg else [])]:
            if _is_dunder(arg.arg) or arg.arg in FORBIDDEN_NAMES:
                raise SandboxRejection(f"argument name '{arg.arg}' is not allowed{_where(node)}")
    elif isinstance(node, ast.ExceptHandler):
        if node.name and (_is_dunder(node.name) or node.name in FORBIDDEN_NAMES):
            raise SandboxRejection(f"exception name '{node.name}' is not allowed{_where(node)}")
    elif isinstance(node, ast.keyword):
        if node.arg and _is_dunder(node.arg):
            raise SandboxRejection(f"keyword '{node.arg}' is not allowed{_where(node)}")
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, str | bytes) and len(node.value) > 10_000:
            raise SandboxRejection(f"string constant too long{_where(node)}")


def _vet_alias(al: ast.alias, node: ast.AST) -> None:
    name = al.asname or al.name
    if _is_dunder(name) or name in FORBIDDEN_NAMES:
        raise SandboxRejection(f"import alias '{name}' is not allowed{_where(node)}")


# ---------------------------------------------------------------------------------------------------------
# execution: a supervisor child and the program process it forks

#: The supervisor (run as ``python -I -c _RUNNER``): read the job, import numpy without ctypes, fork the program
#: process, watch it, answer the parent. Only the program process (``_program_process``) runs program code.
_RUNNER = r'''
import os, sys
sys.modules["ctypes"] = sys.modules["_ctypes"] = None  # never loaded: its raw-memory calls are not audited
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
import gc, json, math, pickle, resource, select, signal, time, warnings
import numpy, numpy.linalg, numpy.fft, numpy.random, numpy._core._methods

_PROGRAM = {"pid": 0}  # the supervisor's own state; the program process gets a copy that decides nothing


def _kill_program():
    if _PROGRAM["pid"]:
        try:
            os.kill(_PROGRAM["pid"], signal.SIGKILL)
        except OSError:
            pass


def _parent_gone(signum=None, frame=None):
    _kill_program()
    os._exit(1)


def _read_exact(fd, n):
    parts = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            _parent_gone()
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


signal.signal(signal.SIGTERM, _parent_gone)  # PR_SET_PDEATHSIG (set by the parent) sends it
JOB = pickle.loads(_read_exact(0, int.from_bytes(_read_exact(0, 8), "big")))
SOURCE, LAYERS, BITS, LIMITS = JOB["source"], JOB["layers"], JOB["bits"], JOB["limits"]
N_LINES = SOURCE.count("\n") + 1
MAX_RESULT = int(JOB["max_result"])
NOBODY = 65534
LINE_OFFSET = 10_000_000  # program lines are compiled this far down: a traceback entry above it is the program's

#: Unaudited functions that act beyond the program's own process (on other processes or the machine: the audited
#: ones, os.kill, os.fork, os.system..., are refused by the hook); deleted from every loaded module in the program
#: process, and so are _imp's ways to build a fresh copy of a builtin module.
_DANGEROUS = {
    "posix": ("pidfd_open", "setpriority", "sched_setaffinity", "sched_setparam", "sched_setscheduler", "setpgid",
              "setpgrp", "setsid", "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid",
              "setresgid", "setgroups", "initgroups", "chroot", "sync", "register_at_fork", "unshare", "setns",
              "openpty", "login_tty", "tcsetpgrp"),
    "_signal": ("pidfd_send_signal",),
    "time": ("clock_settime", "clock_settime_ns"),
    "_imp": ("create_builtin", "exec_builtin", "create_dynamic", "exec_dynamic", "init_frozen",
             "get_frozen_object"),
}


def _strip_dangerous():
    targets = []
    for modname, names in _DANGEROUS.items():
        mod = sys.modules.get(modname)
        for name in names:
            fn = getattr(mod, name, None)
            if fn is not None:
                targets.append(fn)
    for mod in list(sys.modules.values()):
        space = getattr(mod, "__dict__", None)
        if type(space) is not dict:
            continue
        for key, value in list(space.items()):
            if any(value is fn for fn in targets):
                del space[key]


def _make_hook(program_code):
    """The audit hook of the program process: a closure over the program's code object and constants. It
    keeps no state and reads nothing the program can change, so nothing can switch it off."""
    modules = frozenset(("numpy", "math"))

    def hook(event, args):
        if type(event) is str and type(args) is tuple:
            if event == "exec":
                if len(args) == 1 and args[0] is program_code:
                    return
            elif event == "import":  # an import statement (args[1] is None); never a loader's file
                name = args[0] if args else None
                if len(args) > 1 and args[1] is None and type(name) is str and (
                        name in modules or name.startswith("numpy.")):
                    return
            raise RuntimeError("sandbox: " + event + " refused")
        raise RuntimeError("sandbox: refused")

    return hook


def _send(kind, body=b""):
    """The program process's one message to the supervisor, then exit."""
    view = memoryview(kind + body)
    while view:
        view = view[os.write(3, view):]
    os._exit(0)


def _send_error(stage, reason, line=None, memory=False):
    head = "%s\n%d\n%d\n" % (stage, line or 0, 1 if memory else 0)
    _send(b"E", head.encode() + str(reason)[:2000].encode("utf-8", "replace"))


def _line_of(exc):
    """Line of the program where ``exc`` was raised: the deepest traceback entry at a program line (the
    program is compiled LINE_OFFSET lines down, so no frame object is needed: the hook refuses them)."""
    line = None
    try:
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_lineno > LINE_OFFSET:
                line = tb.tb_lineno - LINE_OFFSET
            tb = tb.tb_next
    except BaseException:
        pass
    return line


def _error(stage, prefix, exc):
    name = exc.__class__.__name__
    try:
        text = str(exc)
    except BaseException:
        text = "(unprintable)"
    reason = "%s%s: %s" % (prefix, name, text[:1000])
    return stage, reason, _line_of(exc), isinstance(exc, MemoryError)


_REAL_IMPORT = __import__
_BAD_PARTS = frozenset(("testing", "f2py", "ctypeslib", "distutils", "npyio", "format", "ma", "lib"))


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    loaded = {"numpy": numpy, "np": numpy, "math": math, "numpy.linalg": numpy.linalg, "numpy.fft": numpy.fft}
    # C code (numpy's lazy imports) imports through the builtins of the running frame: let numpy.* through
    # (what is not loaded yet meets the audit hook)
    if not level and type(name) is str and name not in loaded and name.startswith("numpy.") and not (
            _BAD_PARTS & set(name.split("."))):
        return _REAL_IMPORT(name, globals, locals, fromlist, level)
    if level or name not in loaded:
        raise ImportError("sandbox: import of %r is not allowed" % name)
    if fromlist or "." not in name:
        return loaded[name]
    return loaded[name.split(".")[0]]


def _print(*args, **kwargs):
    return None


def _builtins():
    import builtins
    names = ("abs all any bool dict divmod enumerate filter float frozenset int isinstance iter len list map "
             "max min next pow range reversed round set slice sorted str sum tuple zip complex chr ord repr "
             "Exception ArithmeticError AssertionError FloatingPointError IndexError KeyError LookupError "
             "NotImplementedError OverflowError RuntimeError StopIteration TypeError ValueError "
             "ZeroDivisionError RecursionError MemoryError").split()
    safe = {n: getattr(builtins, n) for n in names}
    safe.update({"__import__": _import, "print": _print, "True": True, "False": False, "None": None})
    return safe


def _run(code):
    """Run the program on every layer: ("C", costs as float64 bytes) or ("E", stage, reason, line, memory)."""
    ns = {"__builtins__": _builtins(), "__name__": "proxy_program", "np": numpy, "math": math}
    try:
        try:
            exec(code, ns)
        except BaseException as e:
            return ("E",) + _error("run", "error at import time: ", e)
        fn = ns.get("proxy")
        if not callable(fn):
            return ("E", "run", "the program defines no function 'proxy(layer, bits)'", None, False)
        nb = len(BITS)
        out = numpy.zeros((len(LAYERS), nb))
        for i, layer in enumerate(LAYERS):
            try:
                r = fn(layer, list(BITS))
            except BaseException as e:
                return ("E",) + _error("run", "", e)
            try:
                a = numpy.asarray(r, dtype=float)
            except BaseException as e:
                return ("E", "output", "layer %d: result is not a list of numbers (%s)" % (i, e.__class__.__name__),
                        None, isinstance(e, MemoryError))
            if a.ndim != 1 or a.shape[0] != nb:
                return ("E", "output", "layer %d: expected %d costs (one per width), got shape %s"
                        % (i, nb, tuple(a.shape)), None, False)
            for j in range(nb):
                x = float(a[j])
                if not math.isfinite(x):
                    return ("E", "output", "layer %d width %s: cost is not finite (%r)" % (i, BITS[j], x), None,
                            False)
                if x < 0:
                    return ("E", "output", "layer %d width %s: cost is negative (%r)" % (i, BITS[j], x), None,
                            False)
                out[i, j] = x
        return ("C", out.tobytes())
    except BaseException as e:
        return ("E",) + _error("run", "", e)
    finally:
        ns.clear()


def _program_process(result_w, err_w, close):
    """The forked program process: descriptors, privileges, limits, hook; then the program; never returns."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    for fd in close:
        os.close(fd)
    os.dup2(err_w, 2)
    os.dup2(result_w, 3)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.closerange(4, 1 << 16)  # only 0-3 are left: nothing of the supervisor's (its answer pipe included)
    try:
        import ast
        tree = ast.parse(SOURCE, "<proxy>")
        ast.increment_lineno(tree, LINE_OFFSET)
        code = compile(tree, "<proxy>", "exec")
    except BaseException as e:
        stage, reason, line, memory = _error("run", "compile error: ", e)
        if isinstance(e, SyntaxError) and isinstance(e.lineno, int):
            line = e.lineno - LINE_OFFSET if e.lineno > LINE_OFFSET else e.lineno
        _send_error(stage, reason, line, memory)
    if os.geteuid() == 0:  # root ignores RLIMIT_NPROC and may act on any process: become nobody
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except OSError as e:  # e.g. a user namespace without that id: the hook and the limits still hold
            os.write(2, ("sandbox: could not drop root (%s)\n" % e).encode())
    try:
        cpu = max(1, int(math.ceil(LIMITS["cpu_seconds"])))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        mem = int(LIMITS["memory_mb"]) << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (4, 4))
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        except (ValueError, OSError):
            pass
    except BaseException as e:
        _send_error("run", "cannot lock the sandbox down: %s: %s" % (e.__class__.__name__, e))
    warnings.simplefilter("ignore")
    numpy.seterr(all="ignore")
    sys.setrecursionlimit(400)
    _strip_dangerous()
    sys.addaudithook(_make_hook(code))
    result = _run(code)
    gc.collect()
    if result[0] == "C":
        _send(b"C", result[1])
    _send_error(*result[1:])


def _watch(pid, result_r, err_r, started):
    """Read the program process's result and stderr (bounded) until it ends or the wall-clock limit; also end
    when the parent is gone (our stdin at end of file). Returns (problem, result, stderr tail, status, rusage)."""
    deadline = started + float(LIMITS["wall_seconds"])
    result, tail = bytearray(), bytearray()
    readers = {result_r: result, err_r: tail}
    problem = None
    while readers and problem is None:
        left = deadline - time.monotonic()
        if left <= 0:
            problem = "wall"
            break
        ready, _, _ = select.select([*readers, 0], [], [], left)
        for fd in ready:
            if fd == 0:
                if not os.read(0, 4096):
                    _parent_gone()
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                del readers[fd]
            elif fd == result_r:
                result += chunk
                if len(result) > MAX_RESULT:
                    problem = "size"
            else:
                tail += chunk
                del tail[:-4000]
    while problem is None:  # the pipes are closed: wait for the exit, within the deadline
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            _PROGRAM["pid"] = 0
            return None, bytes(result), bytes(tail), status, usage
        if time.monotonic() >= deadline:
            problem = "wall"
            break
        ready, _, _ = select.select([0], [], [], 0.01)
        if ready and not os.read(0, 4096):
            _parent_gone()
    _kill_program()
    _, status, usage = os.wait4(pid, 0)
    _PROGRAM["pid"] = 0
    return problem, bytes(result), bytes(tail), status, usage


def _verdict(problem, result, tail, status, usage, seconds):
    """The supervisor's answer from what the program process did; nothing it wrote is taken on trust."""
    cpu_used = usage.ru_utime + usage.ru_stime
    out = {"ok": False, "stage": "run", "reason": None, "line": None, "cpu_seconds": round(cpu_used, 4),
           "run_seconds": round(seconds, 4), "stderr": tail.decode("utf-8", "replace")[-2000:]}
    memory_mb = int(LIMITS["memory_mb"])
    memory_reason = "memory limit exceeded (%d MB)" % memory_mb
    last = tail.decode("utf-8", "replace").strip().splitlines()
    last = last[-1][:300] if last else ""
    if problem == "wall":
        out["reason"] = "wall-clock limit exceeded (%g s)" % float(LIMITS["wall_seconds"])
        return out
    if problem == "size":
        out.update(stage="output", reason="output larger than %d kB" % (MAX_RESULT >> 10))
        return out
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        cpu_limit = max(1, math.ceil(float(LIMITS["cpu_seconds"])))
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= cpu_limit - 0.05):
            out["reason"] = "CPU time limit exceeded (%g s)" % float(LIMITS["cpu_seconds"])
        elif b"MemoryError" in tail:
            out["reason"] = memory_reason
        elif sig == signal.SIGSEGV:
            out["reason"] = "crashed with a segmentation fault (SIGSEGV)"
        else:
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            out["reason"] = "killed by signal %s" % name
        return out
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    if not result:
        out["reason"] = memory_reason if b"MemoryError" in tail else (
            "the program process ended (exit %d) without a result%s" % (code, ": " + last if last else ""))
        return out
    kind, body = result[:1], result[1:]
    n_values = len(LAYERS) * len(BITS)
    if kind == b"C" and code == 0:
        if len(body) != 8 * n_values:
            out.update(stage="output", reason="the program wrote to the sandbox's result channel (%d bytes where "
                                              "%d costs were due)" % (len(body), n_values))
            return out
        costs = numpy.frombuffer(body, dtype=numpy.float64).reshape(len(LAYERS), len(BITS))
        if not numpy.isfinite(costs).all() or (costs < 0).any():
            out.update(stage="output", reason="costs are not finite and non-negative")
            return out
        out.update(ok=True, stage="ok", costs=costs.tolist())
        return out
    if kind == b"E" and code == 0:
        parts = body.split(b"\n", 3)
        if len(parts) == 4 and parts[0] in (b"run", b"output") and parts[1].isdigit() and parts[2] in (b"0", b"1"):
            line = int(parts[1])
            reason = parts[3].decode("utf-8", "replace")[:1000]
            if parts[2] == b"1" and not reason.startswith("memory limit"):
                reason = "%s: %s" % (memory_reason, reason)
            out.update(stage=parts[0].decode(), reason=reason, line=line if 1 <= line <= N_LINES else None)
            return out
    out["reason"] = "unreadable result from the program process (exit %d)" % code
    return out


def _answer(obj):
    data = json.dumps(obj).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
    os._exit(0)


def _main():
    result_r, result_w = os.pipe()
    err_r, err_w = os.pipe()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # no parent-death signal between fork and pid
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _program_process(result_w, err_w, (result_r, err_r))
        finally:
            os._exit(70)
    _PROGRAM["pid"] = pid
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.close(result_w)
    os.close(err_w)
    problem, result, tail, status, usage = _watch(pid, result_r, err_r, started)
    _answer(_verdict(problem, result, tail, status, usage, time.monotonic() - started))


_main()
'''


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


_PRCTL: list[Any] = []  # libc's prctl, resolved once (Linux)
PR_SET_PDEATHSIG = 1


def _libc_prctl() -> Any:
    """libc's ``prctl`` on Linux (resolved once, here in the parent), else None."""
    if not _PRCTL:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                fn = None
        _PRCTL.append(fn)
    return _PRCTL[0]


def parent_death_preexec(sig: int = signal.SIGTERM) -> Callable[[], Any] | None:
    """A ``preexec_fn`` that makes the new child get ``sig`` when the thread that started it dies
    (``PR_SET_PDEATHSIG``, kept across ``exec``), or None off Linux. A ``functools.partial`` of the libc call:
    no Python code runs between ``fork`` and ``exec``."""
    prctl = _libc_prctl()
    return functools.partial(prctl, PR_SET_PDEATHSIG, int(sig)) if prctl is not None else None


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` ends, even by ``kill -9`` (pool workers call it first): on
    Linux ``PR_SET_PDEATHSIG`` with SIGKILL; elsewhere (no ``prctl``) a daemon thread that watches the parent
    with psutil (PID reuse is caught by its start time). Ends at once when the parent is already gone."""
    prctl = _libc_prctl()
    if prctl is not None and prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL)) == 0:
        if os.getppid() != parent_pid:  # it died before the call
            os._exit(1)
        return
    import threading

    import psutil

    try:
        parent = psutil.Process(parent_pid)
    except psutil.Error:
        os._exit(1)

    def watch() -> None:
        while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="tap-edge-parent-watch", daemon=True).start()


_JSON_SPECIAL = re.compile(rb'[\[\]{}"\\]')


def json_nesting(data: bytes, limit: int) -> int:
    """How deeply ``data`` (JSON text) nests arrays and objects, counting up to ``limit + 1``: a scan of its
    brackets, quotes and escapes (linear, no recursion), so a reader can refuse e.g. 200,000 '[' before
    ``json.loads`` recurses into them."""
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # the position of a character a backslash escapes
    for m in _JSON_SPECIAL.finditer(data):
        pos = m.start()
        if pos == escaped_at:
            continue
        ch = data[pos]
        if in_string:
            if ch == 0x5C:  # backslash
                escaped_at = pos + 1
            elif ch == 0x22:  # quote
                in_string = False
        elif ch == 0x22:
            in_string = True
        elif ch in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        else:  # ] }
            depth -= 1
    return deepest


def _communicate(proc: subprocess.Popen, data: bytes, deadline: float, max_out: int
                 ) -> tuple[bytes, bytes, str | None]:
    """Feed stdin (and keep it open: its end of file tells the supervisor the parent is gone), read bounded
    stdout / stderr until the supervisor exits or the deadline; returns (out, err, problem)."""
    out, err = bytearray(), bytearray()
    assert proc.stdin and proc.stdout and proc.stderr
    to_write = memoryview(data)
    os.set_blocking(proc.stdin.fileno(), False)
    readers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    writers = [proc.stdin.fileno()]
    while readers:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), bytes(err), "wall"
        r, w, _ = select.select(list(readers), writers, [], min(left, 0.5))
        for fd in w:
            try:
                n = os.write(fd, to_write[:65536])
                to_write = to_write[n:]
            except (BrokenPipeError, OSError):
                to_write = to_write[:0]
            if not to_write:
                writers = []
        for fd in r:
            chunk = os.read(fd, 65536)
            if not chunk:
                del readers[fd]
                continue
            buf = readers[fd]
            if fd == proc.stdout.fileno():
                buf += chunk
                if len(buf) > max_out:
                    return bytes(out), bytes(err), "size"
            else:
                buf += chunk
                del buf[:-20_000]
    return bytes(out), bytes(err), None


def check_costs(costs: Any, n_layers: int, n_bits: int) -> str | None:
    """Return why ``costs`` breaks the output contract, or None when it is a finite non-negative matrix."""
    if not isinstance(costs, list) or len(costs) != n_layers:
        got = len(costs) if isinstance(costs, list) else type(costs).__name__
        return f"expected costs for {n_layers} layers, got {got}"
    for i, row in enumerate(costs):
        if not isinstance(row, list) or len(row) != n_bits:
            return f"layer {i}: expected {n_bits} costs"
        for x in row:
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x < 0:
                return f"layer {i}: invalid cost {one_line(repr(x), 40)}"
    return None


def run_proxy_program(source: str, layers: list[dict], bits: list[int], *, cpu_seconds: float = 10,
                      memory_mb: int = 1024, wall_seconds: float = 20) -> SandboxResult:
    """Vet ``source`` and run its ``proxy(layer, bits)`` on every layer in a locked-down child process.

    ``layers`` are plain dicts of numpy arrays / numbers / strings (pickled to the child). The limits apply to
    the program process (CPU time, memory, wall-clock time from its start). Returns a :class:`SandboxResult`;
    never raises for a bad program (the reason says what went wrong).
    """
    t0 = time.perf_counter()
    try:
        vet_source(source)
    except SandboxRejection as e:
        return SandboxResult(False, None, one_line(f"rejected: {e.reason}"), round(time.perf_counter() - t0, 4),
                             "vet", line=e.line)
    return _run_unvetted(source, layers, bits, cpu_seconds=cpu_seconds, memory_mb=memory_mb,
                         wall_seconds=wall_seconds, t0=t0)


#: Time the supervisor may take beyond the program's wall-clock limit (interpreter and numpy start-up on a
#: loaded machine) before the parent gives up on it.
STARTUP_GRACE_SECONDS = 15.0


def _run_unvetted(source: str, layers: list[dict], bits: list[int], *, cpu_seconds: float, memory_mb: int,
                  wall_seconds: float, t0: float | None = None) -> SandboxResult:
    """Run without static vetting (the tests use it to check the runtime layer alone)."""
    t0 = time.perf_counter() if t0 is None else t0

    def done(ok: bool, costs: list[list[float]] | None, reason: str | None, stage: str, tail: str = "",
             line: int | None = None, cpu: float = 0.0, run: float = 0.0) -> SandboxResult:
        return SandboxResult(ok, costs, one_line(reason) if reason is not None else None,
                             round(time.perf_counter() - t0, 4), stage, tail, line, cpu, run)

    bits = [int(b) for b in bits]
    job = pickle.dumps({"source": source, "layers": layers, "bits": bits, "max_result": MAX_OUTPUT_BYTES,
                        "limits": {"cpu_seconds": float(cpu_seconds), "memory_mb": int(memory_mb),
                                   "wall_seconds": float(wall_seconds)}}, protocol=pickle.HIGHEST_PROTOCOL)
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    proc = subprocess.Popen([sys.executable, "-I", "-c", _RUNNER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/",
                            start_new_session=True, close_fds=True, preexec_fn=parent_death_preexec())
    # the supervisor's answer: the costs as JSON numbers plus a few short fields
    max_answer = 64_000 + 32 * len(layers) * max(1, len(bits))
    try:
        out, err, problem = _communicate(proc, len(job).to_bytes(8, "big") + job,
                                         time.monotonic() + wall_seconds + STARTUP_GRACE_SECONDS, max_answer)
        if problem:
            try:
                proc.send_signal(signal.SIGTERM)  # the supervisor kills the program process first
                proc.wait(timeout=1.0)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            rc = proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            problem = problem or "wall"
            rc = None
    finally:
        _kill_group(proc)  # nothing of the child's group may outlive the run
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f and not f.closed:
                f.close()
    tail = err.decode(errors="replace")[-2000:]
    if problem == "wall":
        return done(False, None, f"the sandbox did not answer within {wall_seconds + STARTUP_GRACE_SECONDS:g} s",
                    "run", tail)
    if problem == "size":
        return done(False, None, "the sandbox's answer is too large", "output", tail)
    msg: Any = None
    if out and json_nesting(out, 3) <= 3:
        try:
            msg = json.loads(out.decode("utf-8"))
        except (ValueError, RecursionError):
            msg = None
    if not isinstance(msg, dict):
        last = tail.strip().splitlines()[-1] if tail.strip() else "no answer"
        return done(False, None, f"the sandbox failed (exit {rc}): {last}", "run", tail)
    if isinstance(msg.get("stderr"), str) and msg["stderr"]:
        tail = (msg["stderr"] + "\n" + tail)[-4000:]  # the program process's stderr, then the supervisor's
    cpu, run = msg.get("cpu_seconds"), msg.get("run_seconds")
    cpu = float(cpu) if isinstance(cpu, int | float) and not isinstance(cpu, bool) else 0.0
    run = float(run) if isinstance(run, int | float) and not isinstance(run, bool) else 0.0
    if msg.get("ok") is not True:
        line = msg.get("line")
        stage = msg.get("stage") if msg.get("stage") in ("run", "output") else "run"
        return done(False, None, str(msg.get("reason") or "unknown failure"), stage, tail,
                    line if isinstance(line, int) and not isinstance(line, bool) and line > 0 else None, cpu, run)
    costs = msg.get("costs")
    problem = check_costs(costs, len(layers), len(bits))
    if problem:
        return done(False, None, problem, "output", tail, cpu=cpu, run=run)
    return done(True, costs, None, "ok", tail, cpu=cpu, run=run)
