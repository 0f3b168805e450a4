"""The sandbox's runtime layer on its own: vetting is skipped (``_run_unvetted``) and each program attacks the
runtime layer with what Python gives a program that has escaped its namespace (every class through
``object.__subclasses__``, a module's ``__globals__``, the real builtins, ``sys.modules``). Each attack must be
contained: no escape, no side effect (a canary file and its folder stay as they were, a listening socket gets no
connection, no process is left), the parent gets a result with a one-line reason and does not crash.

All programs run concurrently in a module-scoped fixture; the limits are small (1 s CPU, 3 s wall, 256 MB).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest

from tap_edge.plan.proxies.sandbox import SandboxResult, _run_unvetted

LIMITS = {"cpu_seconds": 1, "memory_mb": 256, "wall_seconds": 3}
BITS = [2, 4, 8]
ROOT = os.geteuid() == 0

#: The escape every attack starts from: the globals of the os module (through a class os defines), and with
#: them sys and the real builtins, which replace the program's restricted ones. Vetting refuses all of this; the
#: runtime layer must hold anyway.
ESCAPE = (
    "def _os():\n"
    "    for c in ().__class__.__base__.__subclasses__():\n"
    "        if c.__name__ == '_wrap_close':\n"
    "            return c.__init__.__globals__\n"
    "    raise LookupError('no escape found')\n"
    "def _builtins():\n"
    "    return _os()['__builtins__']\n"
    "def _sys():\n"
    "    return _os()['sys']\n"
    "def _module(name):\n"
    "    return _sys().modules[name]\n"
    "def _switch_everything_on(space, seen):\n"
    "    # set every flag-like value reachable from a namespace (e.g. a 'trusted' switch of an audit hook)\n"
    "    if any(s is space for s in seen):\n"
    "        return\n"
    "    seen.append(space)\n"
    "    for k in list(space):\n"
    "        v = space[k]\n"
    "        if v is False:\n"
    "            space[k] = True\n"
    "        elif v.__class__ is dict:\n"
    "            _switch_everything_on(v, seen)\n"
    "_RUNNER_GLOBALS = __builtins__['__import__'].__globals__  # the sandbox's own import function\n"
    "def _runner_globals():\n"
    "    return _RUNNER_GLOBALS\n"
    "__builtins__.update(_os()['__builtins__'])  # every real builtin, the real __import__ included\n"
)


def _attack(body: str) -> str:
    return ESCAPE + "def proxy(layer, bits):\n" + "".join(f"    {ln}\n" for ln in body.strip("\n").splitlines()) + \
        "    return [1.0] * len(bits)\n"


# id -> (program, regular expression the reason must match: what stopped the attack)
ATTACKS: dict[str, tuple[str, str]] = {
    # the state that decides "trusted": reachable runner globals, switched on, then a side effect
    "runner_globals_then_mkdir": (_attack(
        "_switch_everything_on(_runner_globals(), [])\n"
        "_os()['mkdir']('{D}/pwned_dir')"), r"os\.mkdir refused"),
    "runner_globals_then_open": (_attack(
        "_switch_everything_on(_runner_globals(), [])\n"
        "g = _os()\n"
        "g['close'](0)\n"
        "g['open']('{D}/pwned', g['O_WRONLY'] | g['O_CREAT'])"), r"open refused"),
    "runner_globals_then_fork": (_attack(
        "_switch_everything_on(_runner_globals(), [])\n"
        "g = _os()\n"
        "if g['fork']() == 0:\n"
        "    g['setsid']()\n"
        "    _module('time').sleep(60)"), r"os\.fork refused"),
    "runner_globals_then_connect": (_attack(
        "_switch_everything_on(_runner_globals(), [])\n"
        "_os()['close'](0)\n"
        "s = _builtins()['__import__']('socket').create_connection(('127.0.0.1', {P}))"), r"import refused"),
    "every_module_switched_on_then_mkdir": (_attack(
        "for m in list(_sys().modules.values()):\n"
        "    d = getattr(m, '__dict__', None)\n"
        "    if d.__class__ is dict:\n"
        "        _switch_everything_on(d, [])\n"
        "_os()['mkdir']('{D}/pwned_dir')"), r"os\.mkdir refused"),
    # frames
    "sys_getframe": (_attack("f = _sys()._getframe(0)\nf.f_back.f_globals['x'] = 1"), r"sys\._getframe refused"),
    "generator_frame_f_back": (_attack("g = (x for x in [1])\nf = g.gi_frame"), r"object\.__getattr__ refused"),
    "traceback_frame": (_attack(
        "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    f = e.__traceback__.tb_frame.f_back"),
        r"object\.__getattr__ refused"),
    "code_object": (_attack("c = proxy.__code__"), r"object\.__getattr__ refused"),
    "current_frames": (_attack("_sys()._current_frames()"), r"refused"),
    "settrace": (_attack("_sys().settrace(lambda *a: None)"), r"sys\.settrace refused"),
    # (a refused sys.addaudithook returns quietly without adding the hook; hooks can only refuse more anyway)
    "add_audit_hook_then_mkdir": (_attack("_sys().addaudithook(lambda *a: None)\n_os()['mkdir']('{D}/pwned_dir')"),
                                  r"os\.mkdir refused"),
    "gc_objects": (_attack("_module('gc').get_objects()"), r"gc\.get_objects refused"),
    "compile_and_exec": (_attack("_builtins()['exec']('import os')"), r"refused"),
    # raw descriptors: the answer can only be the program's own result, and is checked
    "forge_on_every_fd_then_fail": (_attack(
        "w = _os()['write']\n"
        "for fd in range(51):\n"
        "    for blob in (b'C' + bytes(72), b'{\"ok\": true, \"costs\": [[0.0, 0.0, 0.0]]}'):\n"
        "        try:\n"
        "            w(fd, blob)\n"
        "        except OSError:\n"
        "            pass\n"
        "raise ValueError('the real outcome')"), r"result channel"),
    "forge_json_answer_then_exit": (_attack(
        "g = _os()\n"
        "for fd in range(51):\n"
        "    try:\n"
        "        g['write'](fd, b'{\"ok\": true, \"stage\": \"ok\", \"costs\": [[0.0, 0.0, 0.0]]}')\n"
        "    except OSError:\n"
        "        pass\n"
        "g['_exit'](0)"), r"unreadable result"),
    "bracket_bomb_on_every_fd": (_attack(
        "g = _os()\n"
        "for fd in range(51):\n"
        "    try:\n"
        "        g['write'](fd, b'[' * 200000)\n"
        "    except OSError:\n"
        "        pass\n"
        "g['_exit'](0)"), r"unreadable result"),
    "huge_result": (_attack("_os()['write'](3, b'C' + bytes(4 << 20))"), r"output larger than"),
    "close_every_fd": (_attack(
        "for fd in range(51):\n"
        "    try:\n"
        "        _os()['close'](fd)\n"
        "    except OSError:\n"
        "        pass"), r"without a result"),
    "exit_without_answer": (_attack("_os()['_exit'](0)"), r"without a result"),
    # processes
    "fork_posix": (_attack("_module('posix').fork()"), r"os\.fork refused"),
    "posix_spawn": (_attack("_os()['posix_spawn']('/bin/sh', ['sh', '-c', 'touch {D}/pwned'], {{}})"),
                    r"os\.posix_spawn refused"),
    "os_system": (_attack("_os()['system']('touch {D}/pwned')"), r"os\.system refused"),
    "subprocess_import": (_attack("_builtins()['__import__']('subprocess')"), r"import refused"),
    "posixsubprocess_import": (_attack("_builtins()['__import__']('_posixsubprocess')"), r"import refused"),
    "kill_supervisor": (_attack("g = _os()\ng['kill'](g['getppid'](), 9)"), r"os\.kill refused"),
    "pidfd_kill_supervisor": (_attack("g = _os()\ng['close'](0)\nfd = g['pidfd_open'](g['getppid']())"),
                              r"KeyError: 'pidfd_open'"),
    "renice_supervisor": (_attack("g = _os()\ng['setpriority'](g['PRIO_PROCESS'], g['getppid'](), 19)"),
                          r"KeyError: 'setpriority'"),
    "fresh_posix_module": (_attack(
        "spec = _module('importlib.machinery').ModuleSpec('posix', None, origin='built-in')\n"
        "_module('_imp').create_builtin(spec)"), r"no attribute 'create_builtin'"),
    "leave_process_group": (_attack("_os()['setsid']()"), r"KeyError: 'setsid'"),
    "back_to_root": (_attack("_os()['setuid'](0)"), r"KeyError: 'setuid'"),
    "raise_limits": (_attack("r = _module('resource')\nr.setrlimit(r.RLIMIT_CPU, (100, 100))"),
                     r"resource\.setrlimit refused"),
    # sockets and files outside
    "socket_import": (_attack("_builtins()['__import__']('socket')"), r"import refused"),
    "socket_extension": (_attack(
        "spec = _module('importlib.util').find_spec('_socket')\n"
        "_module('_imp').create_dynamic(spec)"), r"create_dynamic|refused"),
    "open_canary": (_attack("_builtins()['open']('{C}', 'w')"), r"open refused"),
    "remove_canary": (_attack("_os()['remove']('{C}')"), r"os\.remove refused"),
    "rename_canary": (_attack("_os()['rename']('{C}', '{D}/moved')"), r"os\.rename refused"),
    "truncate_canary": (_attack("_os()['truncate']('{C}', 0)"), r"os\.truncate refused"),
    "utime_canary": (_attack("_os()['utime']('{C}', (0, 0))"), r"os\.utime refused"),
    "chmod_canary": (_attack("_os()['chmod']('{C}', 0)"), r"os\.chmod refused"),
    "symlink_outside": (_attack("_os()['symlink']('{C}', '{D}/link')"), r"os\.symlink refused"),
    "list_outside": (_attack("_os()['listdir']('{D}')"), r"os\.listdir refused"),
    "proc_mem": (_attack("_os()['open']('/proc/self/mem', 2)"), r"open refused"),
    # ctypes: never loaded, so neither importable nor among the classes
    "ctypes_import": (_attack("import ctypes"), r"ctypes|import refused"),
    "ctypes_classes": (_attack(
        "names = set()\n"
        "todo = [().__class__.__base__]\n"
        "while todo:\n"
        "    c = todo.pop()\n"
        "    if c.__name__ not in names:\n"
        "        names.add(c.__name__)\n"
        "        todo.extend(type.__subclasses__(c))\n"
        "found = names & {'CDLL', 'CFuncPtr', '_SimpleCData', 'PyCFuncPtrType', 'Structure'}\n"
        "raise LookupError('ctypes classes: ' + str(sorted(found)))"), r"ctypes classes: \[\]"),
    "ctypes_extension": (_attack(
        "spec = _module('importlib.util').find_spec('_ctypes')\n"
        "_module('_imp').create_dynamic(spec)"), r"create_dynamic|refused|ctypes"),
    # resources
    "ignore_sigxcpu_and_spin": (_attack(
        "s = _module('signal')\n"
        "s.signal(s.SIGXCPU, s.SIG_IGN)\n"
        "while True:\n"
        "    pass"), r"limit exceeded"),
    "threads_spin": (_attack(
        "t = _module('_thread')\n"
        "def spin():\n"
        "    while True:\n"
        "        pass\n"
        "for i in range(4):\n"
        "    t.start_new_thread(spin, ())\n"
        "while True:\n"
        "    pass"), r"limit exceeded|can't start new thread"),
    "sleep_forever": (_attack(
        "g = _os()\n"
        "g['write'](2, ('PID=%d\\n' % g['getpid']()).encode())\n"
        "_module('time').sleep(3600)"), r"wall-clock limit exceeded"),
    "deep_c_recursion": (_attack(
        "_sys().setrecursionlimit(10 ** 7)\n"
        "f = lambda n: f(n + 1) + 1\n"
        "f(0)"), r"SIGSEGV|RecursionError|memory|signal|limit exceeded"),
    "patch_the_checks": (_attack(
        "_module('math').isfinite = lambda x: True\n"
        "return [float('nan')] * len(bits)"), r"not finite"),
    "who_am_i": (_attack("g = _os()\nraise ValueError('euid=%d' % g['geteuid']())"),
                 r"euid=65534" if ROOT else r"euid=\d+"),
}


@pytest.fixture(scope="module")
def listener() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("runtime-canary")
    os.chmod(d, 0o777)  # even a program running as nobody would be allowed to write here
    p = d / "canary.txt"
    p.write_text("canary")
    os.chmod(p, 0o666)
    return p


def _layers() -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"name": f"conv{i}", "weight": rng.standard_normal((4, 3)).astype(np.float32), "params": 12}
            for i in range(3)]


@pytest.fixture(scope="module")
def results(canary: Path, listener: socket.socket) -> dict[str, SandboxResult]:
    port = listener.getsockname()[1]

    def fill(src: str) -> str:
        return src.replace("{C}", str(canary)).replace("{D}", str(canary.parent)).replace("{P}", str(port)) \
            .replace("{{", "{").replace("}}", "}")

    stat = canary.stat()
    with ThreadPoolExecutor(max_workers=4) as ex:
        futs = {k: ex.submit(_run_unvetted, fill(src), _layers(), BITS, **LIMITS) for k, (src, _) in ATTACKS.items()}
        out = {k: f.result() for k, f in futs.items()}
    # no side effect: the canary is untouched, nothing appeared beside it, nobody connected
    assert canary.read_text() == "canary"
    assert canary.stat().st_mtime_ns == stat.st_mtime_ns and (canary.stat().st_mode & 0o777) == 0o666
    assert sorted(os.listdir(canary.parent)) == ["canary.txt"]
    listener.settimeout(0.0)
    with pytest.raises(BlockingIOError):
        listener.accept()
    return out


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_runtime_layer_alone_contains(name: str, results: dict[str, SandboxResult]) -> None:
    r = results[name]
    assert not r.ok and r.costs is None, r
    assert r.reason and "\n" not in r.reason and len(r.reason) <= 300, r
    assert re.search(ATTACKS[name][1], r.reason), r
    assert r.run_seconds <= LIMITS["wall_seconds"] + 1.0, r


def test_a_sleeping_program_leaves_no_process(results: dict[str, SandboxResult]) -> None:
    m = re.search(r"PID=(\d+)", results["sleep_forever"].stderr_tail)
    assert m, results["sleep_forever"].stderr_tail
    deadline = time.monotonic() + 5
    while psutil.pid_exists(int(m.group(1))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(int(m.group(1)))


def test_a_valid_program_still_runs_unvetted() -> None:
    src = ("def proxy(layer, bits):\n    w = np.asarray(layer['weight'])\n"
           "    return [float(np.abs(w).max()) * 2.0 ** -b for b in bits]\n")
    r = _run_unvetted(src, _layers(), BITS, **LIMITS)
    assert r.ok, r
    w = _layers()[0]["weight"]
    assert r.costs is not None and r.costs[0] == pytest.approx([float(np.abs(w).max()) * 2.0 ** -b for b in BITS])
    assert 0 < r.cpu_seconds <= r.run_seconds + 0.1


def test_costs_the_program_writes_itself_are_only_its_claim() -> None:
    """A program can put its own costs on its result pipe instead of returning them (the channel to the parent
    is closed in its process); they are checked like returned costs and count only as its answer."""
    src = ESCAPE + (
        "def proxy(layer, bits):\n"
        "    g = _os()\n"
        "    g['write'](3, b'C' + b'\\x00\\x00\\x00\\x00\\x00\\x00\\xf8\\x7f' * 9)\n"  # NaN costs, exact length
        "    g['_exit'](0)\n")
    r = _run_unvetted(src, _layers(), BITS, **LIMITS)
    assert not r.ok and "not finite" in (r.reason or ""), r
