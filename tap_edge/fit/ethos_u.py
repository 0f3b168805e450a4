"""Ethos-U memory the way Vela plans it: what ``check``, ``plan`` and the manifests predict for runtimes with an
Ethos-U NPU (a device profile runtime with a ``vela`` section, :class:`tap_edge.devices.vela.VelaConfig`).

On those devices the memory truth is Vela's plan, not TFLite Micro's CPU arena: Vela moves the ops the NPU runs
into ``ethos-u`` custom ops, encodes (and compresses) their weights with its own weight encoder into one read-only
tensor, and plans every feature map -- also those of the ops left to the CPU -- into one scratch tensor, which it
places in TFLite Micro's arena (``OfflineMemoryAllocation``). Its Performance schedule then spends the arena cache
size on weight buffers and fewer cascades. What a device needs:

- SRAM (the arena region): Vela's "Total SRAM used" (the scratch tensor, or the fast cache ``scratch_fast`` in a
  Dedicated_Sram memory mode), plus, when the arena is in SRAM, what TFLite Micro keeps beside it (its persistent
  tail for the Vela model's tensors and ops, and the kernel scratch of the ops left to the Cortex-M:
  :mod:`tap_edge.fit.tflm` and :func:`tap_edge.fit.memory.scratch_bytes` on the Vela model's own graph);
- flash (the weights region): the Vela-optimised ``.tflite`` (read-only tensor, command streams, the CPU ops'
  constants, the flatbuffer), which TFLite Micro keeps whole; in a Dedicated_Sram mode the DRAM also holds the arena.

How it is predicted (:attr:`VelaFigures.by`): with Vela installed (the ``vela`` extra), by Vela itself, run in a
child process on the model's ``.tflite`` (a ``.tflite`` model: the file; a PyTorch / ONNX graph: the stand-in of
:mod:`tap_edge.fit.tflite_writer` with the model's own int8 weights when its spec loads, else seeded weights);
without Vela, by tap-edge's rules model of Vela (:func:`rules_figures`: every feature map whole, live as the graph
runs, 16-byte aligned, a converter's PAD folded into the conv it feeds as Vela does; Performance adds the weight
buffer of the op running when its weights are small beside its feature maps, capped by the arena cache size; raw
int8 weights with Vela's 10-byte bias-and-scale per channel; ops outside the NPU's table on the CPU). Results are
cached per graph, widths and settings (``~/.cache/tap-edge/vela``; ``TAP_EDGE_NO_CACHE``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.core import flags
from tap_edge.core.errors import UserError
from tap_edge.core.paths import cache_dir
from tap_edge.core.units import align
from tap_edge.devices import Runtime
from tap_edge.devices.vela import VelaConfig, ini_text
from tap_edge.documents import CpuFallback, VelaPlan
from tap_edge.fit.bits import BitAssignment, tensor_bits
from tap_edge.graph.graph import ModelGraph, Op

#: The Python module of the ``vela`` extra (ethos-u-vela) and its distribution.
VELA_MODULE, VELA_DIST = "ethosu.vela", "ethos-u-vela"
#: Seconds one Vela compile may take before it is killed.
VELA_TIMEOUT = 600.0
#: Vela's bias-and-scale bytes per output channel in the weight stream (40-bit bias + 32-bit scale + shift).
BIAS_SCALE_BYTES = 10
#: Rules-model flatbuffer figures, fitted on Vela 5.2.0 outputs of the bundled models: command stream bytes
#: per NPU op, the optimised file's structure (fixed, per tensor).
COMMAND_BYTES_PER_OP, FILE_FIXED_BYTES, FILE_TENSOR_BYTES = 120, 1200, 100
#: Vela's custom operator in an optimised model.
_CUSTOM = "ethos-u"
#: Bumped when the stand-in writer or the figures change: cached predictions of older code are not reused.
CACHE_VERSION = 5


def is_ethos_u(runtime: Any) -> bool:
    """Whether ``runtime`` drives an Ethos-U whose memory Vela plans (its profile states a ``vela`` section)."""
    return getattr(runtime, "vela", None) is not None


def vela_installed() -> bool:
    try:
        return importlib.util.find_spec(VELA_MODULE) is not None
    except (ImportError, ValueError):
        return False


def vela_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(VELA_DIST)
    except PackageNotFoundError:
        return None


@dataclass
class CpuOp:
    """An operator Vela left to the CPU: its builtin, the tensor it writes and Vela's reason (when it said)."""

    op: str
    tensor: str
    reason: str | None = None


@dataclass
class VelaFigures:
    """One Vela plan, as Vela reported it or as the rules model predicts it (``by``: ``vela`` or ``rules``; ``what``
    says what Vela ran on). Bytes; ``sram_bytes`` is Vela's "Total SRAM used", ``flash_bytes`` the constants
    in the ``const`` memory (its "Off-chip Flash used", or "DRAM used" less the arena), ``file_bytes`` the
    optimised ``.tflite``; cycles at ``clock_hz`` (Vela's estimate)."""

    by: str
    what: str
    accelerator: str
    system_config: str
    memory_mode: str
    optimise: str
    arena_cache_size: int | None
    sram_bytes: int
    dram_bytes: int
    flash_bytes: int
    file_bytes: int
    read_only_bytes: int
    command_stream_bytes: int
    scratch_bytes: int
    scratch_fast_bytes: int
    npu_ops: int
    cpu_ops: list[CpuOp] = field(default_factory=list)
    encoded_weights_bytes: int | None = None
    original_weights_bytes: int | None = None
    npu_cycles: int | None = None
    total_cycles: int | None = None
    clock_hz: float = 0.0
    tflm_tail_bytes: int = 0
    cpu_scratch_bytes: int = 0
    arena_in_sram: bool = True
    vela_version: str | None = None

    @property
    def ms(self) -> float | None:
        """Vela's estimate of one inference in milliseconds at ``clock_hz`` (all cycles, NPU and memory)."""
        if self.total_cycles is None or not self.clock_hz:
            return None
        return 1e3 * self.total_cycles / self.clock_hz

    @property
    def tflm_bytes(self) -> int:
        """What TFLite Micro keeps in its arena beside Vela's plan: persistent tail and CPU kernel scratch."""
        return self.tflm_tail_bytes + self.cpu_scratch_bytes

    @property
    def sram_need(self) -> int:
        """The arena region's share: Vela's SRAM, and TFLite Micro's own bytes when its arena is in SRAM."""
        return self.sram_bytes + (self.tflm_bytes if self.arena_in_sram else 0)

    @property
    def dram_arena_bytes(self) -> int:
        """The arena when Vela puts it off-chip (Dedicated_Sram): the scratch tensor and TFLite Micro's bytes."""
        return 0 if self.arena_in_sram else self.scratch_bytes + self.tflm_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_doc(self) -> VelaPlan:
        """The :class:`~tap_edge.documents.VelaPlan` documents carry."""
        d = asdict(self)
        d["cpu_ops"] = [CpuFallback(**c) for c in d["cpu_ops"]]
        return VelaPlan(**d, npu_ms=round(self.ms, 4) if self.ms is not None else None, sram_need_bytes=self.sram_need)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VelaFigures:
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in d.items() if k in names}
        kept["cpu_ops"] = [CpuOp(**c) for c in d.get("cpu_ops", [])]
        return cls(**kept)


# ---- running Vela ----------------------------------------------------------------------------------------------
class VelaError(UserError):
    """Vela failed on a model (its own last words in the message)."""


def vela_command(tflite: Path, ini: Path, config: VelaConfig, out_dir: Path, optimise: str | None = None) -> list[str]:
    """The ``vela`` command line for one compile (Vela's CLI, run as ``python -m ethosu.vela``)."""
    cmd = [sys.executable, "-m", VELA_MODULE, str(tflite), "--config", str(ini), "--accelerator-config",
           config.accelerator, "--system-config", config.system_config, "--memory-mode", config.memory_mode,
           "--optimise", optimise or config.optimise, "--output-dir", str(out_dir), "--show-cpu-operations"]
    if config.arena_cache_size is not None:
        cmd += ["--arena-cache-size", str(config.arena_cache_size)]
    return cmd


@dataclass
class VelaRun:
    """One Vela compile: its optimised model, summary CSV and console output (``stdout``)."""

    output: Path
    summary: Path | None
    stdout: str
    command: list[str]


def run_vela(tflite: Path, config: VelaConfig, out_dir: Path, *, optimise: str | None = None,
             timeout: float = VELA_TIMEOUT) -> VelaRun:
    """Compile ``tflite`` with Vela into ``out_dir`` (the ``.ini`` written there from ``config``) in a child process;
    a failure, a crash or ``timeout`` is one :class:`VelaError` line with Vela's last words."""
    if not vela_installed():
        raise UserError("Vela is not installed (the ethos-u-vela package)", "pip install 'tap-edge[vela]'")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob(f"{tflite.stem}_summary_*.csv"), out_dir / f"{tflite.stem}_vela.tflite"]:
        old.unlink(missing_ok=True)  # a summary of an earlier compile must not be read as this one's
    ini = out_dir / f"{tflite.stem}.vela.ini"
    ini.write_text(ini_text(config, f"tap-edge: {config.accelerator}, {config.source or 'device profile'}"))
    cmd = vela_command(tflite, ini, config, out_dir, optimise)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=out_dir)
    except subprocess.TimeoutExpired:
        raise VelaError(f"Vela took more than {timeout:.0f} s on {tflite.name} and was stopped",
                        "raise --timeout, or try a smaller model") from None
    output = out_dir / f"{tflite.stem}_vela.tflite"
    if proc.returncode != 0 or not output.exists():
        last = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()
                and not ln.startswith(("Warning: Consider", "Traceback", "  File"))]
        raise VelaError(f"Vela failed on {tflite.name} (exit {proc.returncode}): {' | '.join(last[-2:])[:400]}",
                        "check the model and the Vela settings (tap-edge devices show DEVICE lists them)")
    summaries = sorted(out_dir.glob(f"{tflite.stem}_summary_*.csv"))
    return VelaRun(output, summaries[-1] if summaries else None, proc.stdout, cmd)


def _summary(path: Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[0] if rows else {}


def _kib(row: dict[str, str], key: str) -> int:
    """A summary figure in bytes (Vela writes KiB with five decimals: exact for its 16-byte multiples)."""
    try:
        return round(float(row.get(key) or 0) * 1024)
    except ValueError:
        return 0


def _int(row: dict[str, str], key: str) -> int | None:
    try:
        return int(float(row[key])) if row.get(key) not in (None, "") else None
    except ValueError:
        return None


def cpu_reasons(stdout: str) -> dict[str, str]:
    """Vela's reason per CPU op output tensor, from its console ("Warning (supported operators) operator: OP, ofm:
    'NAME'" followed by "Reason: ...")."""
    out: dict[str, str] = {}
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if "(supported operators) operator:" in line and "ofm:" in line:
            name = line.split("ofm:", 1)[1].strip().strip("'\"")
            reasons = []
            for nxt in lines[i + 1:i + 4]:
                if nxt.strip().startswith("Reason:"):
                    reasons.append(nxt.strip().removeprefix("Reason:").strip())
                elif reasons or not nxt.strip():
                    break
            out[name] = "; ".join(reasons) or "Vela placed it on the CPU"
    return out


def read_vela_model(path: Path) -> dict[str, Any]:
    """What a Vela-optimised ``.tflite`` holds: the scratch tensors (the arena and the fast cache), the read-only
    tensor, the command streams, the NPU blocks and the operators left to the CPU (builtin, output tensor)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    data = path.read_bytes()
    try:
        model = schema.Model.GetRootAs(data, 0)
        sg = model.Subgraphs(0)
    except Exception as e:  # noqa: BLE001 - any parse failure of a foreign file is one line
        raise UserError(f"{path}: not a .tflite file ({type(e).__name__})") from None
    sizes: dict[str, int] = {"scratch": 0, "scratch_fast": 0, "read_only": 0, "command_stream": 0}
    seen: set[int] = set()
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        name = (t.Name() or b"").decode(errors="replace")
        n = int(np.prod(t.ShapeAsNumpy())) if t.ShapeLength() else 0
        if name in ("scratch", "scratch_fast"):
            sizes[name] = max(sizes[name], n)
        elif name == "read_only" and t.Buffer() not in seen:
            seen.add(t.Buffer())
            sizes["read_only"] += n
        elif name == "ethos_u_command_stream":
            sizes["command_stream"] += n
    npu, cpu = 0, []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        custom = (code.CustomCode() or b"").decode(errors="replace")
        if custom == _CUSTOM:
            npu += 1
            continue
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        out = sg.Tensors(op.Outputs(0)).Name().decode(errors="replace") if op.OutputsLength() else ""
        cpu.append({"op": custom or names.get(builtin, str(builtin)), "tensor": out})
    return {**sizes, "npu_blocks": npu, "cpu_ops": cpu, "file_bytes": len(data)}


def tflm_overhead(path: Path, scratch_model: str = "cmsis-nn-mve") -> tuple[int, int]:
    """(TFLite Micro's persistent tail, the largest CPU kernel scratch) for a Vela-optimised model: its own graph
    planned with :mod:`tap_edge.fit.tflm`, the CPU ops' scratch with the kernel library ``scratch_model``
    (:func:`tap_edge.fit.memory.scratch_bytes`)."""
    from tap_edge.fit.memory import scratch_bytes
    from tap_edge.fit.tflm import tflm_arena
    from tap_edge.graph.frontends.tflite_frontend import load_tflite_graph

    graph = load_tflite_graph(path)
    bits = BitAssignment.parse("native")
    tb = tensor_bits(graph, bits)
    arena, _ = tflm_arena(graph, bits, tb)
    cpu = [scratch_bytes(op, graph, scratch_model, max((tb.get(t, 8) for t in op.outputs), default=8),
                         bits.weight_bits(op) if op.weight_shape else None)
           for op in graph.ops if op.op_class != "custom"]
    return arena.tail_bytes, max(cpu, default=0)


def figures_of(run_output: Path, config: VelaConfig | None, *, summary: Path | None = None, stdout: str = "",
               what: str = "", runtime: Runtime | None = None, optimise: str | None = None,
               scratch_model: str | None = None) -> VelaFigures:
    """:class:`VelaFigures` of a Vela output: its optimised model, and the summary CSV and console output of the
    compile when there are (a foreign ``_vela.tflite`` has no cycle estimate, and without ``config`` its memory
    areas are read from the file: the fast scratch as SRAM when there is one, else the scratch)."""
    model = read_vela_model(run_output)
    row = _summary(summary)
    reasons = cpu_reasons(stdout)
    library = scratch_model or (runtime.scratch if runtime is not None else "cmsis-nn-mve")
    tail, cpu_scratch = tflm_overhead(run_output, library)
    sram = _kib(row, "sram_memory_used") if row else model["scratch_fast"] or model["scratch"]
    dram = _kib(row, "dram_memory_used")
    const = config.port_memory("const") if config is not None else "OffChipFlash"
    key = {"Sram": "sram_memory_used", "Dram": "dram_memory_used", "OnChipFlash": "on_chip_flash_memory_used",
           "OffChipFlash": "off_chip_flash_memory_used"}[const]
    flash = _kib(row, key) if row and const != "Dram" else model["read_only"]
    arena_in_sram = config.arena_in_sram if config is not None else not model["scratch_fast"]
    return VelaFigures(
        by="vela", what=what, accelerator=config.accelerator if config else "?",
        system_config=config.system_config if config else "?", memory_mode=config.memory_mode if config else "?",
        optimise=optimise or (config.optimise if config else "?"),
        arena_cache_size=config.arena_cache_size if config else None, sram_bytes=sram, dram_bytes=dram,
        flash_bytes=flash,
        file_bytes=model["file_bytes"], read_only_bytes=model["read_only"],
        command_stream_bytes=model["command_stream"], scratch_bytes=model["scratch"],
        scratch_fast_bytes=model["scratch_fast"], npu_ops=model["npu_blocks"],
        cpu_ops=[CpuOp(c["op"], c["tensor"], reasons.get(c["tensor"])) for c in model["cpu_ops"]],
        encoded_weights_bytes=_int(row, "total_npu_encoded_weights"),
        original_weights_bytes=_int(row, "total_original_weights"), npu_cycles=_int(row, "cycles_npu"),
        total_cycles=_int(row, "cycles_total"), clock_hz=config.clock_hz if config else 0.0, tflm_tail_bytes=tail,
        cpu_scratch_bytes=cpu_scratch, arena_in_sram=arena_in_sram, vela_version=vela_version())


# ---- predicting ------------------------------------------------------------------------------------------------
_MEMO: dict[str, VelaFigures] = {}


def predict(graph: ModelGraph, bits: BitAssignment, runtime: Runtime, *, optimise: str | None = None,
            weights: dict[str, np.ndarray] | None = None, timeout: float = VELA_TIMEOUT) -> VelaFigures:
    """Vela's plan of ``graph`` at ``bits`` on ``runtime`` (see the module docstring): Vela's own when it is installed
    and the graph can be written as a ``.tflite``, else the rules model. Cached."""
    config = runtime.vela
    assert config is not None, "predict() needs a runtime with a vela section"
    opt = optimise or config.optimise
    installed = vela_installed()
    key = _key(graph, bits, config, opt, installed, weights is not None)
    if key in _MEMO:
        return _MEMO[key]
    path = None if flags.no_cache() else cache_dir("vela") / f"{key}.json"
    if path is not None and path.exists():
        try:
            _MEMO[key] = VelaFigures.from_dict(json.loads(path.read_text()))
            return _MEMO[key]
        except (OSError, ValueError, TypeError, KeyError):
            pass  # a damaged entry is made again
    figures = _vela_figures(graph, bits, runtime, opt, weights, timeout) if installed else None
    if figures is None:
        figures = rules_figures(graph, bits, runtime, opt)
    _MEMO[key] = figures
    if path is not None and figures.by == "vela":  # the rules model is cheap: only Vela's runs are kept
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(figures.to_dict()))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: no cache
    return figures


def _key(graph: ModelGraph, bits: BitAssignment, config: VelaConfig, optimise: str, installed: bool,
         own_weights: bool) -> str:
    source = graph.meta.get("path") if graph.frontend == "tflite" else None
    if source and Path(source).exists():  # a file: its bytes say it all
        what: Any = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    else:
        what = graph.to_dict()
    stamp = json.dumps({"graph": what, "bits": bits.label(),
                        "layers": {k: [v.w, v.a] for k, v in bits.layers.items()}, "config": config.model_dump(),
                        "optimise": optimise, "vela": vela_version() if installed else None,
                        "weights": own_weights, "v": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(stamp.encode()).hexdigest()[:24]


def _vela_figures(graph: ModelGraph, bits: BitAssignment, runtime: Runtime, optimise: str,
                  weights: dict[str, np.ndarray] | None, timeout: float) -> VelaFigures | None:
    """Vela run on the model's file (a .tflite at its own widths) or on the stand-in; None when neither can be had
    (an op the stand-in writer does not write)."""
    from tap_edge.fit.tflite_writer import NotWritable, standin_tflite

    config = runtime.vela
    assert config is not None
    source = graph.meta.get("path")
    with tempfile.TemporaryDirectory(prefix="tap-edge-vela-") as tmp:
        if graph.frontend == "tflite":
            if not bits.native or not source or not Path(source).exists():
                return None
            tflite, what = Path(source), f"the model file {Path(source).name}"
        else:
            own = weights if weights is not None else model_weights(graph)
            try:
                data = standin_tflite(graph, bits, own)
            except NotWritable as e:
                _note(f"Vela prediction falls back to the rules model: the stand-in .tflite cannot hold {e}")
                return None
            tflite = Path(tmp, "model.tflite")
            tflite.write_bytes(data)
            what = ("a stand-in .tflite written from the graph with the model's int8 weights" if own else
                    "a stand-in .tflite written from the graph with seeded int8 weights (the model's own weights "
                    "would compress differently)")
        try:
            run = run_vela(tflite, config, Path(tmp, "out"), optimise=optimise, timeout=timeout)
        except VelaError as e:
            _note(f"Vela prediction falls back to the rules model: {e.message}")
            return None
        return figures_of(run.output, config, summary=run.summary, stdout=run.stdout, what=what, runtime=runtime,
                          optimise=optimise)


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


_WEIGHTS: dict[tuple[str, str], dict[str, np.ndarray] | None] = {}


def model_weights(graph: ModelGraph) -> dict[str, np.ndarray] | None:
    """:func:`_model_weights`, once per model spec and graph in a process (check asks for every Ethos-U device)."""
    key = (graph.name, hashlib.sha256(json.dumps([op.name for op in graph.ops]).encode()).hexdigest())
    if key not in _WEIGHTS:
        _WEIGHTS[key] = _model_weights(graph)
    return _WEIGHTS[key]


def _model_weights(graph: ModelGraph) -> dict[str, np.ndarray] | None:
    """The int8 weights of a PyTorch or ONNX graph's model, per op, quantized as the TFLite path does (per output
    channel, symmetric, round to nearest): loaded again from the graph's spec, or read from the ONNX file's
    initializers (None when neither loads, e.g. a model given as a Python object)."""
    if graph.frontend == "onnx":
        return onnx_int8_weights(graph)
    if graph.frontend != "torch":
        return None
    from tap_edge.graph.models import IN_MEMORY, load_model

    if graph.name.startswith(IN_MEMORY):
        return None
    try:
        lm = load_model(graph.name)
    except UserError:
        return None
    if lm.module is None:
        return None
    return int8_weights(lm.module, graph)


def int8_weights(module: Any, graph: ModelGraph) -> dict[str, np.ndarray]:
    """Per-channel symmetric int8 weights of ``module``'s layers, keyed by the graph's op names."""
    mods = dict(module.named_modules())
    out: dict[str, np.ndarray] = {}
    for op in graph.quantizable_ops():
        m = mods.get(op.module or "")
        weight = getattr(m, "weight", None)
        if weight is None or list(weight.shape) != list(op.weight_shape or []):
            continue
        out[op.name] = _per_channel_int8(weight.detach().float().cpu().numpy())
    return out


def onnx_int8_weights(graph: ModelGraph) -> dict[str, np.ndarray] | None:
    """Per-channel symmetric int8 weights of an ONNX graph's layers, from the initializer each node takes as its
    weight (a MatMul's ``[in, out]`` transposed to the graph's ``[out, in]``); layers whose weight is computed
    (e.g. a DequantizeLinear of a QDQ file) are left out. None when the file does not load."""
    import onnx
    from onnx import numpy_helper

    path = graph.meta.get("path")
    try:
        model = onnx.load(str(path))
    except Exception:  # noqa: BLE001 - a file that does not load gives seeded stand-in weights, said in the note
        return None
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out: dict[str, np.ndarray] = {}
    for op in graph.quantizable_ops():
        node = nodes.get(op.name)
        if node is None or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        shape = list(op.weight_shape or [])
        if list(w.shape) != shape and w.ndim == 2 and list(w.T.shape) == shape:
            w = w.T
        if list(w.shape) == shape:
            out[op.name] = _per_channel_int8(w)
    return out or None


def _per_channel_int8(weight: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output channel (dimension 0), round to nearest; an all-zero channel keeps scale 1."""
    w = weight.reshape(weight.shape[0], -1)
    scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8).reshape(weight.shape)


# ---- the rules model (no Vela) ---------------------------------------------------------------------------------
def npu_places(op: Op, graph: ModelGraph, bits: BitAssignment, runtime: Runtime, tbits: dict[str, int]) -> str | None:
    """Why the rules model leaves ``op`` to the CPU (its builtins are not in the NPU generation's table, or its
    widths are not ones the NPU runs), or None when the NPU runs it."""
    from tap_edge.fit.tflm import lowered_builtins

    config = runtime.vela
    assert config is not None
    support = runtime.npu.get(config.generation)
    if op.op_class in ("identity", "reshape"):
        return None
    widths = [tbits.get(t, 8) for t in op.outputs] or [8]
    if max(widths) >= 32:
        return "float feature maps (Vela places integer ops only)"
    if op.weight_shape and (bits.weight_bits(op), max(widths)) not in runtime.npu_pairs():
        return f"w{bits.weight_bits(op)}a{max(widths)} is not a width pair the Ethos-{config.generation.upper()} runs"
    if support is None or not support.builtins:
        return None
    missing = [b for b in lowered_builtins(op, graph) if b not in support.builtins]
    return f"{', '.join(missing)} is not in Vela's Ethos-{config.generation.upper()} table" if missing else None


def rules_figures(graph: ModelGraph, bits: BitAssignment, runtime: Runtime, optimise: str | None = None
                  ) -> VelaFigures:
    """tap-edge's model of Vela's plan (no Vela run; see the module docstring)."""
    from tap_edge.fit.memory import plan_arena

    config = runtime.vela
    assert config is not None
    opt = optimise or config.optimise
    view = graph  # the converter's PADs are not added (memory.runtime_view): Vela folds them into the conv they feed
    tb = tensor_bits(view, bits)
    arena = plan_arena(view, bits, alignment=16, alias_inplace=True, scratch={})
    cpu: list[CpuOp] = []
    encoded: dict[int, int] = {}
    buffers: dict[int, int] = {}
    for i, op in enumerate(view.ops):
        why = npu_places(op, view, bits, runtime, tb)
        if why is not None:
            cpu.append(CpuOp(op.op_type, op.outputs[0] if op.outputs else "", f"rules model: {why}"))
            continue
        weights, channels = _npu_weights(op, view)
        if weights:
            encoded[i] = align(weights * (bits.weight_bits(op) if op.weight_shape else 8) // 8
                               + BIAS_SCALE_BYTES * channels, 16)
            fmaps = sum(view.tensors[t].nbytes(tb.get(t, 8)) for t in (*op.inputs[:1], *op.outputs)
                        if t in view.tensors)
            if encoded[i] <= 2 * fmaps:  # weights that are small beside the op's feature maps are buffered in SRAM
                buffers[i] = encoded[i]
    sram = arena.arena_bytes
    cap = config.arena_cache_size
    if opt == "Performance":
        buffered = max((live + buffers.get(i, 0) for i, live in enumerate(arena.live_bytes_per_step)), default=sram)
        sram = max(sram, min(buffered, cap if cap is not None else buffered))
    if not config.arena_in_sram and cap is not None:  # Dedicated_Sram: SRAM is a cache of at most that size
        sram = min(sram, cap)
    read_only = sum(encoded.values())
    npu_ops = len(view.ops) - len(cpu)
    cpu_const = sum(op.params for op in view.ops if any(c.tensor in op.outputs for c in cpu))
    command = COMMAND_BYTES_PER_OP * npu_ops
    n_tensors = len(view.inputs) + len(view.outputs) + 3 + 2 * len(cpu)
    file_bytes = read_only + command + 4 * cpu_const + FILE_FIXED_BYTES + FILE_TENSOR_BYTES * n_tensors
    scratch = arena.arena_bytes
    why = "Vela not installed" if not vela_installed() else "Vela could not run on the graph"
    return VelaFigures(
        by="rules", what=f"tap-edge's rules model of Vela ({why})",
        accelerator=config.accelerator, system_config=config.system_config, memory_mode=config.memory_mode,
        optimise=opt, arena_cache_size=config.arena_cache_size,
        sram_bytes=sram if config.arena_in_sram or config.port_memory("cache") == "Sram" else 0,
        dram_bytes=0 if config.arena_in_sram else scratch + read_only,
        flash_bytes=read_only, file_bytes=file_bytes, read_only_bytes=read_only, command_stream_bytes=command,
        scratch_bytes=scratch, scratch_fast_bytes=0 if config.arena_in_sram else sram, npu_ops=npu_ops, cpu_ops=cpu,
        encoded_weights_bytes=read_only, clock_hz=config.clock_hz, tflm_tail_bytes=_rules_tail(view, cpu),
        arena_in_sram=config.arena_in_sram)


def _npu_weights(op: Op, graph: ModelGraph) -> tuple[int, int]:
    """(weight bytes at 8 bits, output channels) Vela encodes for ``op`` on the NPU: the layer's own, or for a
    global average pool the depthwise kernel Vela lowers MEAN to (one weight per input position and channel, all
    equal: its encoder packs such a run into about a sixteenth)."""
    if op.weight_shape and not op.attrs.get("shared_weight"):
        return op.stored_weight_params, op.out_channels
    if op.op_class == "global_pool" and op.inputs and op.inputs[0] in graph.tensors:
        shape = graph.tensors[op.inputs[0]].shape
        if len(shape) == 4:
            c = shape[3] if graph.meta.get("layout") == "NHWC" else shape[1]
            return math.prod(shape) // max(shape[0], 1) // 16, c
    return 0, 0


def _rules_tail(graph: ModelGraph, cpu: list[CpuOp]) -> int:
    """TFLite Micro's tail for the Vela model the rules model predicts: its fixed part, the model's inputs and
    outputs, three tensors and a node per NPU block, the CPU ops' own state."""
    from tap_edge.fit import tflm

    cpu_tensors = {c.tensor for c in cpu}
    cpu_ops = [op for op in graph.ops if any(t in cpu_tensors for t in op.outputs)]
    blocks = len(cpu_ops) + 1
    io = len(graph.inputs) + len(graph.outputs)
    tail = (tflm.FIXED_BYTES + (tflm.IO_TENSOR_BYTES + tflm.IO_QUANT_BYTES) * io + 2 * 16
            + (tflm.EVAL_TENSOR_BYTES * 3 + tflm.NODE_BYTES) * blocks)
    for op in cpu_ops:
        builtin = op.op_type if graph.frontend == "tflite" else ""
        tail += tflm.NODE_BYTES + tflm.EVAL_TENSOR_BYTES * 2 + sum(align(x, 16) for x in tflm.OP_DATA.get(builtin, ()))
    return tail


# ---- the memory model's faces ----------------------------------------------------------------------------------
def arena_plan(graph: ModelGraph, bits: BitAssignment, runtime: Runtime, *, optimise: str | None = None) -> Any:
    """An :class:`~tap_edge.fit.memory.ArenaPlan` whose ``arena_bytes`` is the SRAM an Ethos-U device needs
    (:attr:`VelaFigures.sram_need`), its live bytes per step the feature maps Vela keeps whole (the rules
    model's timeline: where the pressure is), ``model`` how it was predicted."""
    from tap_edge.fit.memory import plan_arena

    figures = predict(graph, bits, runtime, optimise=optimise)
    plan = plan_arena(graph, bits, alignment=16, alias_inplace=True, scratch={})  # no PAD tensors, as rules_figures
    plan.head_bytes = figures.sram_bytes
    plan.persistent_bytes = figures.tflm_bytes if figures.arena_in_sram else 0
    plan.arena_bytes = figures.sram_need
    plan.model = prediction_note(figures)
    plan.vela = figures
    return plan


def flash_figures(graph: ModelGraph, bits: BitAssignment, runtime: Runtime, runtime_bytes: int) -> Any:
    """A :class:`~tap_edge.fit.memory.FlashBreakdown` of the Vela-optimised model: the read-only tensor (encoded
    weights, biases and scales) as ``weights_bytes``, the rest of the file (command streams, the CPU ops'
    constants, the flatbuffer) as ``format_bytes``; ``model_bytes`` is the file."""
    from tap_edge.fit.memory import FlashBreakdown

    f = predict(graph, bits, runtime)
    return FlashBreakdown(f.read_only_bytes, 0, 0, 0, runtime_bytes, max(f.file_bytes - f.read_only_bytes, 0))


def prediction_note(f: VelaFigures) -> str:
    """How a prediction was made, for ``prediction_by`` fields: ``vela 5.2.0 (ethos-u55-128, Shared_Sram,
    Performance) on ...``, or the rules model."""
    settings = f"{f.accelerator}, {f.system_config}, {f.memory_mode}, {f.optimise}"
    if f.by == "vela":
        return f"vela {f.vela_version or '?'} ({settings}) on {f.what}"
    return f"{f.what} ({settings})"

