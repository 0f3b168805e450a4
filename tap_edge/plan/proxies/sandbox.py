"""Vet and run untrusted proxy programs (LLM-written sensitivity proxies).

A proxy program is Python source that defines ``def proxy(layer: dict, bits: list[int]) -> list[float]``:
given one layer's statistics (``LayerStats.to_program_input()``) and the candidate weight widths, it returns
one non-negative cost per width (lower cost = better for that width; the allocator minimises the sum).

Two layers of defence:

1. :func:`vet_source` - static vetting of the AST against an allowlist: arithmetic, comparisons, loops,
   functions, comprehensions, ``numpy`` (as ``np``) and ``math``; imports only of ``numpy``/``math``; no
   dunder names or attributes, no private (``_x``) attributes, no attribute assignment, no classes,
   generators, ``with``, ``global``, ``try/finally``; no ``open``/``exec``/``eval``/``compile``/``globals``/
   ``getattr``/... by name; no attributes that lead to file I/O or to other modules (``np.load``,
   ``arr.tofile``, ``np.f2py``, ``x.format``...). Violations raise :class:`SandboxRejection` with a reason.
2. :func:`run_proxy_program` - execution in a fresh ``python -I`` child process that reads its input as a
   pickle on stdin and answers with JSON on stdout (the parent never unpickles child data). Before the
   program runs the child sets ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE=0`` (no file writes),
   ``RLIMIT_NPROC=0`` (no forks for non-root users), ``RLIMIT_NOFILE`` at the descriptors already open
   (no new file or socket), ``RLIMIT_CORE=0``, installs restricted builtins and an audit hook
   (``sys.addaudithook``) that refuses every event except the program's own ``exec`` and imports of
   ``numpy``/``math`` (so ``open``, sockets, ``subprocess``, ``os.system``, ``os.fork``, ``ctypes`` are
   refused even if an escape were found). The parent kills the whole process group at the wall-clock limit
   and checks the output again: finite, non-negative, one value per layer and width, bounded size.

Every rejection carries a one-line reason, which the evolution loop records and shows to the LLM.
"""

from __future__ import annotations

import ast
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
from dataclasses import dataclass, field
from typing import Any

MAX_SOURCE_CHARS = 40_000
MAX_OUTPUT_BYTES = 8 << 20
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


def vet_source(source: str) -> None:
    """Statically check an untrusted proxy program; raise :class:`SandboxRejection` with a reason if refused.

    Also checks the contract: a top-level ``def proxy(layer, bits)`` taking two positional arguments;
    top-level statements are limited to imports, function definitions, assignments and a docstring.
    """
    if not isinstance(source, str) or not source.strip():
        raise SandboxRejection("empty program")
    if len(source) > MAX_SOURCE_CHARS:
        raise SandboxRejection(f"program too long ({len(source)} characters > {MAX_SOURCE_CHARS})")
    if "\x00" in source:
        raise SandboxRejection("program contains a NUL byte")
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as e:
        raise SandboxRejection(f"syntax error: {e.msg} (line {e.lineno})") from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise SandboxRejection(f"cannot parse: {e.__class__.__name__}") from None

    for stmt in tree.body:
        ok = isinstance(stmt, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.Assign | ast.AnnAssign) or (
            isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
        if not ok:
            raise SandboxRejection(f"top-level {stmt.__class__.__name__} statement not allowed"
                                   f"{_where(stmt)}: only imports, function definitions and assignments")

    n_nodes = 0
    for node in ast.walk(tree):
        n_nodes += 1
        if n_nodes > 20_000:
            raise SandboxRejection("program too large (more than 20000 syntax nodes)")
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
# execution in a child process

#: The child's program (run with ``python -I -c``): read a pickle from stdin, lock down, run, answer JSON.
_RUNNER = r'''
import os
os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
import json, math, pickle, resource, sys, warnings
import numpy, numpy.linalg, numpy.fft, numpy.random, numpy._core._methods

_out_fd = os.dup(1)
_write, _exit, _isfinite, _asarray = os.write, os._exit, math.isfinite, numpy.asarray

def _answer(obj):
    data = json.dumps(obj).encode()
    view = memoryview(data)
    while view:
        n = _write(_out_fd, view)
        view = view[n:]
    _exit(0)

def _fail(stage, reason, line=None):
    if line:
        reason = "%s (line %d)" % (reason, line)
    _answer({"ok": False, "stage": stage, "reason": str(reason)[:400], "line": line})

payload = pickle.load(sys.stdin.buffer)
source, layers, bits, lim = payload["source"], payload["layers"], payload["bits"], payload["limits"]
try:
    code = compile(source, "<proxy>", "exec")
except BaseException as e:
    _fail("run", "compile error: %s: %s" % (e.__class__.__name__, e))

devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)
os.dup2(devnull, 0)
os.close(devnull)
warnings.simplefilter("ignore")
numpy.seterr(all="ignore")
sys.setrecursionlimit(400)

_ALLOWED_MODULES = ("numpy", "math")
_loaded = {"numpy": numpy, "np": numpy, "math": math, "numpy.linalg": numpy.linalg, "numpy.fft": numpy.fft}

_real_import = __import__
_BAD_PARTS = frozenset(("testing", "f2py", "ctypeslib", "distutils", "npyio", "format", "ma", "lib"))

def _import(name, globals=None, locals=None, fromlist=(), level=0):
    # C code (numpy's lazy imports) imports through the builtins of the running frame: let numpy.* through
    if not level and name not in _loaded and name.startswith("numpy.") and not (
            _BAD_PARTS & set(name.split("."))):
        return _real_import(name, globals, locals, fromlist, level)
    if level or name not in _loaded:
        raise ImportError("sandbox: import of %r is not allowed" % name)
    if fromlist or "." not in name:
        return _loaded[name]
    return _loaded[name.split(".")[0]]

def _print(*a, **k):
    return None

import builtins as _b
_names = ("abs all any bool dict divmod enumerate filter float frozenset int isinstance iter len list map "
          "max min next pow range reversed round set slice sorted str sum tuple zip complex chr ord repr "
          "Exception ArithmeticError AssertionError FloatingPointError IndexError KeyError LookupError "
          "NotImplementedError OverflowError RuntimeError StopIteration TypeError ValueError "
          "ZeroDivisionError RecursionError MemoryError").split()
safe_builtins = {n: getattr(_b, n) for n in _names}
safe_builtins.update({"__import__": _import, "print": _print, "True": True, "False": False, "None": None})
del _b

_state = {"exec": 0, "trusted": False}

def _audit(event, args):
    if _state["trusted"]:  # the runner reading a traceback after the program stopped for good
        return
    if event == "exec":
        _state["exec"] += 1
        if _state["exec"] == 1:
            return
    elif event == "import":
        mod = args[0]
        if mod in _ALLOWED_MODULES or mod.startswith("numpy."):
            return
    raise RuntimeError("sandbox: %s refused" % event)

def _limits():
    cpu = max(1, int(math.ceil(lim["cpu_seconds"])))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = int(lim["memory_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (ValueError, OSError):
        pass
    fds = [int(f) for f in os.listdir("/proc/self/fd")] if os.path.isdir("/proc/self/fd") else [_out_fd]
    nofile = max(fds) + 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

try:
    _limits()
except BaseException as e:
    _fail("run", "cannot set resource limits: %s" % e)

def _line_of(exc):
    """Line of the program where ``exc`` was raised (deepest frame of <proxy>); the program never runs again."""
    _state["trusted"] = True
    line = None
    try:
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<proxy>":
                line = tb.tb_lineno
            tb = tb.tb_next
    except BaseException:
        pass
    return line

sys.addaudithook(_audit)
del os, resource, pickle, payload
ns = {"__builtins__": safe_builtins, "__name__": "proxy_program", "np": numpy, "math": math}
try:
    exec(code, ns)
except BaseException as e:
    _fail("run", "error at import time: %s: %s" % (e.__class__.__name__, e), _line_of(e))
fn = ns.get("proxy")
if not callable(fn):
    _fail("run", "the program defines no function 'proxy(layer, bits)'")
costs = []
nb = len(bits)
try:
    for i, layer in enumerate(layers):
        r = fn(layer, list(bits))
        try:
            a = _asarray(r, dtype=float)
        except BaseException as e:
            _fail("output", "layer %d: result is not a list of numbers (%s)" % (i, e.__class__.__name__))
        if a.ndim != 1 or a.shape[0] != nb:
            _fail("output", "layer %d: expected %d costs (one per width), got shape %s"
                  % (i, nb, tuple(a.shape)))
        row = [float(x) for x in a.tolist()]
        for j, x in enumerate(row):
            if not _isfinite(x):
                _fail("output", "layer %d width %s: cost is not finite (%r)" % (i, bits[j], x))
            if x < 0:
                _fail("output", "layer %d width %s: cost is negative (%r)" % (i, bits[j], x))
        costs.append(row)
except BaseException as e:
    _fail("run", "%s: %s" % (e.__class__.__name__, e), _line_of(e))
_answer({"ok": True, "costs": costs})
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


def _communicate(proc: subprocess.Popen, data: bytes, deadline: float) -> tuple[bytes, bytes, str | None]:
    """Feed stdin, read bounded stdout/stderr until exit or deadline; returns (out, err, problem)."""
    out, err = bytearray(), bytearray()
    assert proc.stdin and proc.stdout and proc.stderr
    to_write = memoryview(data)
    os.set_blocking(proc.stdin.fileno(), False)
    readers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    writers = [proc.stdin.fileno()] if to_write else []
    if not to_write:
        proc.stdin.close()
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
                proc.stdin.close()
        for fd in r:
            chunk = os.read(fd, 65536)
            if not chunk:
                del readers[fd]
                continue
            buf = readers[fd]
            if fd == proc.stdout.fileno():
                buf += chunk
                if len(buf) > MAX_OUTPUT_BYTES:
                    return bytes(out), bytes(err), "size"
            elif len(buf) < 20_000:
                buf += chunk
    if not proc.stdin.closed:
        proc.stdin.close()
    return bytes(out), bytes(err), None


def _signal_reason(rc: int, cpu_seconds: float, memory_mb: int) -> str:
    sig = -rc
    if sig in (signal.SIGXCPU, signal.SIGKILL):
        return f"CPU time limit exceeded ({cpu_seconds:g} s)"
    if sig == signal.SIGSEGV:
        return "crashed with a segmentation fault (SIGSEGV)"
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = str(sig)
    return f"killed by signal {name} (memory limit {memory_mb} MB?)" if sig == signal.SIGABRT else \
        f"killed by signal {name}"


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
                return f"layer {i}: invalid cost {x!r}"
    return None


def run_proxy_program(source: str, layers: list[dict], bits: list[int], *, cpu_seconds: float = 10,
                      memory_mb: int = 1024, wall_seconds: float = 20) -> SandboxResult:
    """Vet ``source`` and run its ``proxy(layer, bits)`` on every layer in a locked-down child process.

    ``layers`` are plain dicts of numpy arrays / numbers / strings (pickled to the child). Returns a
    :class:`SandboxResult`; never raises for a bad program (the reason says what went wrong).
    """
    t0 = time.perf_counter()
    try:
        vet_source(source)
    except SandboxRejection as e:
        return SandboxResult(False, None, f"rejected: {e.reason}", round(time.perf_counter() - t0, 4), "vet",
                             line=e.line)
    return _run_unvetted(source, layers, bits, cpu_seconds=cpu_seconds, memory_mb=memory_mb,
                         wall_seconds=wall_seconds, t0=t0)


def _run_unvetted(source: str, layers: list[dict], bits: list[int], *, cpu_seconds: float, memory_mb: int,
                  wall_seconds: float, t0: float | None = None) -> SandboxResult:
    """Run without static vetting (tests use it to check the runtime layer alone)."""
    t0 = time.perf_counter() if t0 is None else t0

    def done(ok: bool, costs: list[list[float]] | None, reason: str | None, stage: str,
             tail: str = "") -> SandboxResult:
        return SandboxResult(ok, costs, reason, round(time.perf_counter() - t0, 4), stage, tail)

    bits = [int(b) for b in bits]
    payload = pickle.dumps({"source": source, "layers": layers, "bits": bits,
                            "limits": {"cpu_seconds": cpu_seconds, "memory_mb": memory_mb}},
                           protocol=pickle.HIGHEST_PROTOCOL)
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    proc = subprocess.Popen([sys.executable, "-I", "-c", _RUNNER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/",
                            start_new_session=True, close_fds=True)
    try:
        out, err, problem = _communicate(proc, payload, time.monotonic() + wall_seconds)
        if problem:
            _kill_group(proc)
        try:
            rc = proc.wait(timeout=max(1.0, wall_seconds))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = proc.wait()
            problem = problem or "wall"
    finally:
        _kill_group(proc)  # nothing of the child's group may outlive the run
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f and not f.closed:
                f.close()
    tail = err.decode(errors="replace")[-2000:]
    if problem == "wall":
        return done(False, None, f"wall-clock limit exceeded ({wall_seconds:g} s)", "run", tail)
    if problem == "size":
        return done(False, None, f"output larger than {MAX_OUTPUT_BYTES >> 20} MB", "output", tail)
    try:
        msg = json.loads(out.decode()) if out else None
    except (ValueError, UnicodeDecodeError):
        msg = None
    if not isinstance(msg, dict):
        if rc and rc < 0:
            return done(False, None, _signal_reason(rc, cpu_seconds, memory_mb), "run", tail)
        last = tail.strip().splitlines()[-1][:300] if tail.strip() else "no output"
        if "MemoryError" in tail:
            return done(False, None, f"memory limit exceeded ({memory_mb} MB)", "run", tail)
        return done(False, None, f"child process failed (exit {rc}): {last}", "run", tail)
    if not msg.get("ok"):
        reason = str(msg.get("reason") or "unknown failure")
        if reason.startswith("MemoryError"):
            reason = f"memory limit exceeded ({memory_mb} MB): {reason}"
        res = done(False, None, reason, str(msg.get("stage") or "run"), tail)
        line = msg.get("line")
        res.line = line if isinstance(line, int) and not isinstance(line, bool) else None
        return res
    costs = msg.get("costs")
    problem = check_costs(costs, len(layers), len(bits))
    if problem:
        return done(False, None, problem, "output", tail)
    return done(True, costs, None, "ok", tail)
