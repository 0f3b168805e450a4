"""The Python API end to end: check -> plan -> eval -> compile -> measure, on an in-memory ``nn.Module`` and on
the ONNX file exported from it; every step returns its typed document (tap_edge.documents).

    .venv/bin/python tools/api_example.py                      # sample photos of ../shared/data/imagenet-sample
    .venv/bin/python tools/api_example.py --data my_photos/    # any folder of images or .npy tensors
    .venv/bin/python tools/api_example.py --out build/api      # where plan, artifacts and documents go

Without a photo folder (none given, none beside the checkout) it writes 48 seeded ``.npy`` input tensors and
says so: the numbers are then about noise, the calls are the same. CI runs it (tests/test_api_example.py).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import tap_edge
from tap_edge.documents import CheckReport, EvalResult, Manifest, MeasureReport, Plan

DEVICE, RUNTIME, BACKEND = "raspberry-pi-5", "onnxruntime", "onnxruntime"  # seconds per step on 2 cores
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


class TinyNet(nn.Module):
    """A small image classifier: conv-BN-ReLU stem, a residual block, global pooling and a Linear head."""

    tap_edge_preprocess = {"input_size": [3, 32, 32], "resize": 36}  # ImageNet mean/std, resize 36, crop 32

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1))
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x.mean((2, 3)))


def tensors_folder(folder: Path, n: int = 48) -> Path:
    """``n`` seeded input tensors [3, 32, 32] as .npy files (read as already-preprocessed model input)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(folder / f"x{i:03d}.npy", rng.standard_normal((3, 32, 32)).astype(np.float32))
    return folder


def run(model: object, name: str, data: Path, out: Path) -> dict[str, object]:
    """The five steps on ``model`` (a module, a spec string or a file path); returns the documents."""
    report: CheckReport = tap_edge.check(model, DEVICE, bits="w8a8")
    plan: Plan = tap_edge.make_plan(tap_edge.PlanRequest(
        model=model, device=DEVICE, runtime=RUNTIME, calib=data, calib_samples=16, act_bits=[8],
        budgets=tap_edge.BudgetSpec(flash_like_bits=5)))
    plan_path = plan.write(out / f"{name}.plan.json")
    result: EvalResult = tap_edge.evaluate_plan(tap_edge.EvalRequest(model=model, data=data, plan=plan_path,
                                                                     limit=32))
    artifact = tap_edge.compile(model, BACKEND, tap_edge.BitAssignment.load(plan_path), out / name,
                                device=DEVICE, calib_dir=data)
    manifest: Manifest = artifact.manifest
    measured: MeasureReport = tap_edge.measure(artifact.path, device=DEVICE, runs=5, warmup=1)
    verdict = report.devices[0].verdict
    print(f"{name}: check {verdict}; plan {len(plan.layers)} layers, flash {plan.predicted.flash_bytes} B, "
          f"arena {plan.predicted.arena_bytes} B; eval agreement {100 * result.agreement:.1f}%; "
          f"{artifact.path.name} {manifest.artifact_bytes} B (agreement {100 * manifest.agreement.top1_agreement:.0f}%)"
          f"; measure {measured.verdict}")
    return {"check": report, "plan": plan, "eval": result, "manifest": manifest, "measure": measured}


def main(argv: list[str] | None = None) -> dict[str, dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="images or .npy tensors (default: the sample photos)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tap-edge-api-"))
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or (SAMPLE if SAMPLE.is_dir() else None)
    if data is None:
        data = tensors_folder(out / "tensors")
        print(f"no photo folder: {data} holds 48 seeded .npy tensors (figures about noise)")

    torch.manual_seed(0)
    module = TinyNet().eval()
    docs = {"module": run(module, "tinynet", data, out)}

    onnx_path = out / "tinynet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, 32, 32),), str(onnx_path), dynamo=True, verbose=False)
    tap_edge.set_preprocess(onnx_path, TinyNet.tap_edge_preprocess)  # how images become its input
    docs["onnx"] = run(str(onnx_path), "tinynet-onnx", data, out)
    same = {k: (v.w, v.a) for k, v in docs["module"]["plan"].layers.items()} == \
        {k: (v.w, v.a) for k, v in docs["onnx"]["plan"].layers.items()}
    print(f"module and ONNX file planned alike: {same}; documents under {out}")
    return docs


if __name__ == "__main__":
    main()
