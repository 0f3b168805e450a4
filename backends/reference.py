"""What a compiled artifact is calibrated on, checked on and compared with.

- :func:`sample_inputs`: model inputs through :func:`tap_edge.plan.calib.load_images` with the model's own
  preprocessing, the loader ``plan`` and ``eval`` use, so ``compile`` calibrates and checks on the very tensors
  they see; or seeded Gaussian noise when asked for (``"noise"``: ``--calib noise``) or when nothing needs
  real data (float activations: the inputs only check the artifact against its reference). No folder is
  ever taken silently: :func:`needs_calibration` tells ``compile`` when to refuse a missing ``--calib``.
  :class:`Samples` keeps where the inputs came from, for the manifest.
- :func:`fake_quant_model`: the plan's PTQ (:func:`tap_edge.quantize.ptq.ptq` with the rounding and settings
  the plan records, :class:`~tap_edge.documents.PTQSettings`) on the calibration inputs, run once per compile;
  :func:`reference_outputs`: its outputs, the reference an artifact must reproduce;
  :func:`weight_quantized_module`: the module the backends export (the same model with float activations: its
  weights are the fake-quant integers times the grid scales of ``tap_edge_ptq.weight_scales``, the activation
  ranges the runtime is to use are in ``tap_edge_ptq.input_qparams``). :func:`exporting` makes the compile's
  fake-quant model the one :func:`weight_quantized_module` returns, so every backend of a compile (and TVM's
  ONNX graph inside it) exports that one PTQ result.
- :func:`agreement`: top-1 agreement, cosine and the largest difference of two batches of logits.

The measurement child imports this module (for :func:`agreement`) and must not load torch before its import
baseline: the calibration loader, PTQ and torch are imported inside the functions that use them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.core.errors import UserError
from tap_edge.documents import InputSource, PTQSettings
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.models import LoadedModel

#: The ``calib`` value that asks for seeded Gaussian noise (``tap-edge compile --calib noise``).
NOISE = "noise"
#: Batch size of the reference model's forward passes.
REFERENCE_BATCH = 32


@dataclass(frozen=True)
class Samples:
    """Model inputs ``[N, C, H, W]`` (float32) and where they came from."""

    array: np.ndarray
    source: InputSource

    def __len__(self) -> int:
        return len(self.array)

    def head(self, n: int) -> Samples:
        """The first ``n`` samples (all of them when there are fewer)."""
        a = self.array[:n]
        return Samples(a, self.source.model_copy(update={"samples": len(a)}))

    @classmethod
    def of(cls, data: Samples | np.ndarray) -> Samples:
        """``data`` as :class:`Samples` (an array a Python caller passed is recorded as such)."""
        if isinstance(data, Samples):
            return data
        arr = np.ascontiguousarray(data, dtype=np.float32)
        return cls(arr, InputSource(kind="array", samples=len(arr)))


def needs_calibration(graph: ModelGraph, bits: BitAssignment) -> bool:
    """Whether ``bits`` quantizes some activation to an integer width (its range must be calibrated on data
    that looks like the model's input)."""
    from tap_edge.fit.bits import tensor_bits

    return any(w < 32 for w in tensor_bits(graph, bits).values())


def calibration_error(model: LoadedModel, bits: BitAssignment) -> UserError:
    """The one line for integer activations without calibration data."""
    return UserError(f"{model.spec} at {bits.label()}: integer activations need calibration data",
                     "pass --calib DIR (images or .npy/.pt tensors, read as plan --calib reads them) or --calib noise "
                     "(seeded Gaussian noise; the manifest records it)")


def sample_inputs(model: LoadedModel, n: int, folder: Path | str | None = None, seed: int = 0) -> Samples:
    """Up to ``n`` inputs shaped like the model's (fewer when the folder has fewer): read from ``folder``
    (images or tensors, exactly as ``plan --calib`` and ``eval --data`` read them), or seeded Gaussian noise for
    ``folder`` None or :data:`NOISE` (the source says which)."""
    from tap_edge.plan.calib import load_images

    if folder is not None and str(folder) != NOISE:
        tensor, _ = load_images(folder, model.preprocess, limit=n)
        return Samples(tensor.numpy(), InputSource(kind="folder", folder=str(folder), samples=len(tensor)))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, *model.preprocess.input_size)).astype(np.float32)
    return Samples(noise, InputSource(kind="gaussian noise", samples=n, seed=seed))


def ptq_config(bits: BitAssignment, settings: PTQSettings | None) -> Any:
    """The :class:`~tap_edge.quantize.ptq.PTQConfig` of ``settings`` (None: round-to-nearest, the defaults)."""
    from tap_edge.quantize.ptq import PTQConfig

    given = settings.model_dump(exclude={"samples"}) if settings is not None else {}
    return PTQConfig.from_dict({**given, "bits": bits})


def fake_quant_model(model: LoadedModel, graph: ModelGraph, bits: BitAssignment, calib: np.ndarray,
                     settings: PTQSettings | None = None) -> Any:
    """The PTQ fake-quant model of ``model`` at ``bits`` with ``settings`` (the plan's rounding, bias correction,
    clipping and activation calibration), calibrated on ``calib``: what ``eval`` scores and what every artifact
    stores (BatchNorm folded, weights on their grid, ``tap_edge_ptq`` saying how)."""
    import torch

    from tap_edge.quantize.ptq import ptq

    fq = ptq(model.module, ptq_config(bits, settings), torch.from_numpy(np.ascontiguousarray(calib)), graph).eval()
    fq.tap_edge_key = _key(model, bits)  # type: ignore[assignment]
    return fq


def _key(model: LoadedModel, bits: BitAssignment) -> tuple[int, str]:
    import json

    return id(model.module), json.dumps(bits.to_dict(), sort_keys=True)


_EXPORTING: ContextVar[Any] = ContextVar("tap_edge_exporting", default=None)


@contextmanager
def exporting(fake_quant: Any) -> Iterator[None]:
    """Within the block, :func:`weight_quantized_module` of the same model and widths returns ``fake_quant``'s
    weights (one PTQ run per compile, whichever backend or nested backend exports it)."""
    token = _EXPORTING.set(fake_quant)
    try:
        yield
    finally:
        _EXPORTING.reset(token)


def reference_outputs(fake_quant: Any, xs: np.ndarray) -> np.ndarray:
    """Outputs of the fake-quant model (:func:`fake_quant_model`) on ``xs``, in batches."""
    import torch

    with torch.no_grad():
        outs = [fake_quant(torch.from_numpy(xs[i:i + REFERENCE_BATCH])).numpy()
                for i in range(0, len(xs), REFERENCE_BATCH)]
    return np.concatenate(outs)


def weight_quantized_module(model: LoadedModel, graph: ModelGraph, bits: BitAssignment,
                            calib: np.ndarray) -> Any:
    """The module to export: the compile's fake-quant model (:func:`exporting`; else a round-to-nearest one made
    on ``calib``) with float activations (:func:`tap_edge.quantize.ptq.weights_only`). Its weights are exactly
    the fake-quant ones, on per-channel grids whose scales ``tap_edge_ptq.weight_scales`` gives: an exporter
    stores ``round(w / s)`` with those scales, never a re-quantization with scales of its own."""
    from tap_edge.quantize.ptq import weights_only

    fq = _EXPORTING.get()
    if fq is None or getattr(fq, "tap_edge_key", None) != _key(model, bits):
        fq = fake_quant_model(model, graph, bits, calib)
    return weights_only(fq).eval()


def agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement, mean cosine similarity and the largest absolute difference of two batches of logits."""
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    got = got.reshape(len(got), -1).astype(np.float64)
    top1 = float(np.mean(ref.argmax(1) == got.argmax(1))) if len(ref) else 0.0
    num = (ref * got).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12
    return {
        "n": int(len(ref)),
        "top1_agreement": round(top1, 4),
        "cosine": round(float(np.mean(num / den)) if len(ref) else 0.0, 5),
        "max_abs_diff": float(np.abs(ref - got).max()) if ref.size else 0.0,
    }
