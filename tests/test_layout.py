"""The layout's rules, kept by tests: one folder per step, the import order stated in ``tap_edge/__init__.py``,
no hedged imports of the project's own code, and a lean ``tap-edge check`` of ONNX and TFLite files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The data path, lowest first: a module may import its own step and the steps before it.
ORDER = ["core", "documents", "graph", "devices", "fit", "quantize", "plan", "backends"]
#: Steps beside the path and what they may import.
ALLOWED = {
    "report": {"core", "documents", "report"},
    "search": set(ORDER[: ORDER.index("plan") + 1]) | {"search"},
    "cli": set(ORDER) | {"report", "search", "cli", "face"},
    "face": {"core"},  # tap_edge/__init__.py: __version__ and the lazy verbs (imported on first use)
}


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (``backends/`` installs as ``tap_edge.backends``)."""
    out = {}
    for base, pkg in ((ROOT / "tap_edge", "tap_edge"), (ROOT / "backends", "tap_edge.backends")):
        for f in base.rglob("*.py"):
            if "programs" in f.parts or "seeds" in f.parts:
                continue  # sandboxed proxy programs: numpy only, checked by the sandbox's own tests
            rel = f.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def _step(module: str) -> str:
    parts = module.split(".")
    return "face" if len(parts) == 1 else parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of tap_edge in ``path``, at any depth (function-level ones count)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("tap_edge")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tap_edge"):
            out.append((node.lineno, node.module))
    return out


MODULES = _modules()


def test_every_module_belongs_to_a_step() -> None:
    steps = {_step(m) for m in MODULES}
    assert steps <= set(ORDER) | set(ALLOWED), steps - set(ORDER) - set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_import_order(module: str) -> None:
    step = _step(module)
    allowed = (ALLOWED.get(step) or set(ORDER[: ORDER.index(step) + 1])) | {"face"}  # the face: __version__
    bad = [f"line {line}: {target}" for line, target in _imports(MODULES[module])
           if _step(target) not in allowed]
    assert not bad, f"{module} ({step}) imports against the order: {bad}"


def _module_of(target: str) -> str | None:
    """The package module an import names (``from tap_edge.fit import memory`` names ``tap_edge.fit``; the
    longest known prefix is the module imported)."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return None


def test_no_import_cycles_between_modules() -> None:
    """Within a step too (the order test allows a step to import itself): no module reaches itself through
    imports at any depth. Package ``__init__`` modules are left out (they gather their step's names)."""
    inits = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    graph = {m: {t for _, imp in _imports(p) if (t := _module_of(imp)) and t != m and t not in inits}
             for m, p in MODULES.items() if m not in inits}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_nothing_imports_the_cli() -> None:
    bad = [f"{m}: {t}" for m, p in MODULES.items() if _step(m) != "cli"
           for _, t in _imports(p) if _step(t) == "cli"]
    assert not bad


def test_core_files_state_their_rule() -> None:
    for m, p in MODULES.items():
        if _step(m) == "core" and not p.name == "__init__.py":
            assert p.read_text().startswith("# NOTE: core modules import nothing of tap_edge except tap_edge.core"), m


def _hedged(path: Path) -> list[int]:
    """Lines where an import of tap_edge sits inside a ``try`` that has an ``except``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Try) and node.handlers:
            for inner in (n for stmt in node.body for n in ast.walk(stmt)):
                mod = getattr(inner, "module", None) if isinstance(inner, ast.ImportFrom) else None
                names = [a.name for a in inner.names] if isinstance(inner, ast.Import) else []
                if (mod or "").startswith("tap_edge") or any(n.startswith("tap_edge") for n in names):
                    lines.append(inner.lineno)
    return lines


def test_no_hedged_imports_of_our_own_code() -> None:
    bad = {m: _hedged(p) for m, p in MODULES.items() if _hedged(p)}
    assert not bad, f"try/except around tap_edge imports: {bad}"


def _onnx_file(path: Path) -> Path:
    """A small conv + relu + global pool + gemm ONNX model written with onnx.helper (no torch)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "lean", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, fc])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _tflite_file() -> Path:
    pytest.importorskip("pymicro_wakeword")
    from tap_edge.graph.samples import wakeword_tflite

    return wakeword_tflite()


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_check_of_a_file_loads_no_torch(kind: str, tmp_path: Path) -> None:
    model = _onnx_file(tmp_path / "m.onnx") if kind == "onnx" else _tflite_file()
    code = ("import sys\nfrom tap_edge import cli\n"
            "try:\n    cli.main(['check', sys.argv[1], '-d', 'stm32h743', '--json', '-q'])\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'LEAN', rc, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("LEAN"), r.stderr[-2000:]
    assert last.split()[1] in ("0", "1"), r.stderr[-2000:]


def test_import_tap_edge_is_lean_and_exposes_the_verbs() -> None:
    code = ("import sys, tap_edge\nnames = sorted(tap_edge.__all__)\n"
            "print('TORCH' if 'torch' in sys.modules else 'LEAN')\nprint(' '.join(names))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lean, names = r.stdout.splitlines()
    assert lean == "LEAN"
    assert {"check", "make_plan", "evaluate_plan", "ptq", "compile", "measure", "list_devices", "list_models",
            "list_proxies", "list_backends", "get_backend"} <= set(names.split())
    import tap_edge

    for name in tap_edge.__all__:
        assert getattr(tap_edge, name) is not None
