"""Benchmark of the foundation: front-ends, predicted footprints at w8a8, and `tap-edge check --all` wall time.

The ONNX rows are exports of untrained architectures: the exporter folds identity BatchNorms and drops zero biases,
so their parameter counts can sit slightly below the PyTorch rows (with trained weights they are equal; see
tests/test_frontends.py). Second table: predicted int8 weight bytes against the int8 weight initializers of a real
int8 export
(ONNX Runtime static QDQ quantization, per-channel int8 weights) of the same model.

    .venv/bin/python tools/bench_check.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from tap_edge.fit.bits import BitAssignment
from tap_edge.fit.memory import flash_breakdown, plan_arena
from tap_edge.graph.frontends.onnx_frontend import load_onnx_graph
from tap_edge.graph.models import load_graph, load_model
from tap_edge.graph.samples import wakeword_tflite

W8A8 = BitAssignment.parse("w8a8")
TAP = str(Path(sys.executable).with_name("tap-edge"))


def export_onnx(spec: str, out: Path) -> Path:
    lm = load_model(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lm.module, torch.zeros(lm.input_shape), str(out), dynamo=True, verbose=False)
    return out


def check_wall(spec: str, cached: bool) -> float:
    env = dict(os.environ)
    if not cached:
        env["TAP_EDGE_NO_CACHE"] = "1"
    else:
        subprocess.run([TAP, "check", spec, "--all", "-q"], env=env, capture_output=True)  # warm the cache
    t = time.perf_counter()
    subprocess.run([TAP, "check", spec, "--all", "-q"], env=env, capture_output=True)
    return time.perf_counter() - t


def int8_weight_bytes(onnx_path: Path, shape: list[int]) -> int:
    """Bytes of the int8 weight initializers in an ORT static QDQ export (per-channel int8 weights)."""
    import logging

    import onnx

    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" notes
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            name = onnx.load(str(onnx_path)).graph.input[0].name
            rng = np.random.default_rng(0)
            self.batches = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)])

        def get_next(self):  # noqa: ANN201 - ORT's interface
            return next(self.batches, None)

    q = onnx_path.with_suffix(".int8.onnx")
    quantize_static(str(onnx_path), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
    m = onnx.load(str(q))
    consumers = {i: n for n in m.graph.node for i in n.input}
    total = 0
    for init in m.graph.initializer:
        dq = consumers.get(init.name)
        if (init.data_type == onnx.TensorProto.INT8 and dq is not None and dq.op_type == "DequantizeLinear"
                and dq.input[0] == init.name):  # the quantized tensor itself, not its zero points
            user = consumers.get(dq.output[0])
            if user is not None and user.op_type in ("Conv", "Gemm", "MatMul"):
                total += int(np.prod(init.dims))
    return total


def main() -> None:
    con = Console(width=160)
    tmp = Path(tempfile.mkdtemp())
    rows = []
    specs = ["efficientnet_lite0", "timm:mobilenetv2_100", "timm:resnet18", "resnet8", "ds_cnn"]
    for spec in specs:
        g = load_graph(spec)
        rows.append((spec, "torch", g, check_wall(spec, False), check_wall(spec, True)))
    onnx_files = {}
    for spec in ("efficientnet_lite0", "resnet8"):
        p = export_onnx(spec, tmp / f"{spec}.onnx")
        onnx_files[spec] = p
        rows.append((p.name, "onnx", load_onnx_graph(p), check_wall(str(p), False), None))
    tfl = wakeword_tflite()
    rows.append((tfl.name + " (pymicro-wakeword)", "tflite", load_graph(str(tfl)), check_wall(str(tfl), False), None))

    t = Table(title="tap-edge check: front-ends, predicted footprint at w8a8 (native for .tflite), wall time")
    for col in ("model", "front-end", "ops", "params", "MACs (M)", "flash (bytes)", "peak SRAM (bytes)",
                "check --all, cold (s)", "cached graph (s)"):
        t.add_column(col, justify="left" if col in ("model", "front-end") else "right")
    for name, fe, g, cold, warm in rows:
        bits = BitAssignment.parse("native") if fe == "tflite" else W8A8
        t.add_row(name, fe, str(len(g.ops)), f"{g.params:,}", f"{g.macs / 1e6:.1f}",
                  f"{flash_breakdown(g, bits).model_bytes:,}", f"{plan_arena(g, bits).arena_bytes:,}",
                  f"{cold:.2f}", "-" if warm is None else f"{warm:.2f}")
    con.print(t)

    t2 = Table(title="predicted int8 weight bytes vs an ONNX Runtime per-channel int8 QDQ export")
    for col in ("model", "predicted weights (bytes)", "int8 export weights (bytes)", "error %"):
        t2.add_column(col, justify="right")
    for spec, p in onnx_files.items():
        lm = load_model(spec)
        pred = flash_breakdown(load_graph(spec), W8A8).weights_bytes
        actual = int8_weight_bytes(p, lm.input_shape)
        t2.add_row(spec, f"{pred:,}", f"{actual:,}", f"{100 * (pred - actual) / actual:+.2f}")
    con.print(t2)


if __name__ == "__main__":
    main()
