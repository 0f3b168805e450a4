"""Backends: turn a model + a bit assignment into a runnable artifact, and run it to measure it.

A backend is a :class:`Backend` subclass registered under the entry-point group ``tap_edge.backends``
(``pyproject.toml``: ``onnxruntime = "tap_edge.backends.onnxruntime_backend:OnnxRuntimeBackend"``);
third-party packages add their own the same way. Each backend declares

- ``name``, the device ``runtimes`` it serves (shell patterns over profile runtime names, e.g. ``tflm-*``) and
  the device ``kinds``;
- ``modules``: the Python modules it needs, and ``extra``: the pip extra that installs them. ``available()``
  only looks the modules up (nothing heavy is imported); ``require()`` raises one line naming the extra;
- ``compile()``: writes the artifact plus a manifest ``<artifact>.manifest.json`` with the prediction it must
  be compared with (flash and arena from :mod:`tap_edge.fit.memory`), the artifact's real weight bytes and the
  agreement of its outputs with the reference model;
- ``child_measure()``: runs *inside the measurement child process* (see :mod:`tap_edge.backends.measure`) and returns
  latency samples and the runtime's own memory figures.

Heavy dependencies (onnxruntime.quantization, litert-torch, tflite-micro, tvm) are imported inside methods.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tap_edge.core.errors import UserError
from tap_edge.core.serialize import json_default

MANIFEST_SCHEMA = "tap-edge/artifact"
MANIFEST_VERSION = 1
ENTRY_POINT_GROUP = "tap_edge.backends"

#: First-party backends, used when the installed package metadata predates the entry-point table
#: (an editable install made before ``pyproject.toml`` declared them).
_BUILTIN = {
    "onnxruntime": "tap_edge.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tflite": "tap_edge.backends.tflite_backend:TFLiteBackend",
    "tvm": "tap_edge.backends.tvm_backend:TVMBackend",
}


class BackendUnavailable(UserError):
    """The backend's optional dependency is not installed."""


class Backend:
    """Base class; see the module docstring."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    runtimes: ClassVar[tuple[str, ...]] = ()
    kinds: ClassVar[tuple[str, ...]] = ()
    modules: ClassVar[tuple[str, ...]] = ()
    #: modules needed to measure an artifact (default: ``modules``)
    measure_modules: ClassVar[tuple[str, ...] | None] = None
    extra: ClassVar[str | None] = None
    suffix: ClassVar[str] = ""

    # ---- dependencies ----------------------------------------------------------------------------------
    def missing(self, measure: bool = False) -> list[str]:
        out = []
        mods = self.measure_modules if measure and self.measure_modules is not None else self.modules
        for m in mods:
            try:
                if importlib.util.find_spec(m) is None:
                    out.append(m)
            except (ImportError, ValueError):
                out.append(m)
        return out

    def available(self) -> bool:
        return not self.missing()

    def install_hint(self) -> str:
        return f"pip install 'tap-edge[{self.extra}]'" if self.extra else "see the backend's documentation"

    def require(self, measure: bool = False) -> None:
        miss = self.missing(measure)
        if miss:
            raise BackendUnavailable(
                f"backend '{self.name}' needs {', '.join(miss)}, which is not installed", self.install_hint()
            )

    def require_pytorch(self, model: Any, bits: Any) -> None:
        """Backends here compile PyTorch models at explicit widths: say so in one line otherwise."""
        if model.module is None:
            raise UserError(f"{model.spec}: the {self.name} backend compiles PyTorch models",
                            "pass a bundled model, timm:NAME or package.module:factory")
        if bits.native:
            raise UserError("--bits native means the model's stored dtypes; a PyTorch model has none",
                            "pass --bits w8a8 or a --plan")

    # ---- what it serves --------------------------------------------------------------------------------
    def serves_runtime(self, runtime: str) -> bool:
        return any(fnmatch.fnmatch(runtime, p) for p in self.runtimes)

    def serves(self, device: Any) -> bool:
        return any(self.serves_runtime(rt.name) for rt in device.runtimes)

    def pick_runtime(self, device: Any) -> Any:
        """The device runtime this backend stands for (the default runtime when it matches)."""
        default = device.runtime()
        if self.serves_runtime(default.name):
            return default
        for rt in device.runtimes:
            if self.serves_runtime(rt.name):
                return rt
        raise UserError(
            f"backend '{self.name}' does not serve device '{device.id}' "
            f"(its runtimes: {', '.join(r.name for r in device.runtimes)})",
            f"{self.name} serves runtimes {', '.join(self.runtimes)}; pick another --backend",
        )

    # ---- work ------------------------------------------------------------------------------------------
    def compile(
        self,
        model: Any,
        graph: Any,
        bits: Any,
        out_dir: Path,
        *,
        device: Any = None,
        calib: np.ndarray | None = None,
        check: np.ndarray | None = None,
    ) -> Path:  # pragma: no cover
        """Write the artifact and its manifest into ``out_dir``; ``calib``: calibration inputs, ``check``:
        inputs on which the artifact's outputs are compared with the reference model (default ``calib``)."""
        raise NotImplementedError

    def child_measure(
        self,
        artifact: Path,
        manifest: dict[str, Any],
        *,
        runs: int,
        warmup: int,
        baseline: Callable[[], None],
    ) -> dict[str, Any]:  # pragma: no cover - abstract
        """Runs in the child. Import the runtime, call ``baseline()`` (records the import-only peak RSS), load
        the artifact, warm up, time ``runs`` runs; return ``{"times_ms": [...], ...runtime figures}``."""
        raise NotImplementedError


# ---- registry --------------------------------------------------------------------------------------------
_cache: dict[str, Backend] = {}
_errors: dict[str, str] = {}


def _load(spec: str) -> Backend:
    mod_name, _, attr = spec.partition(":")
    cls = getattr(importlib.import_module(mod_name), attr)
    inst = cls()
    if not isinstance(inst, Backend):
        raise TypeError(f"{spec} is not a tap_edge.backends.Backend")
    return inst


def _discover() -> dict[str, Backend]:
    if _cache:
        return _cache
    specs: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        specs[ep.name] = ep.value
    for name, spec in _BUILTIN.items():
        specs.setdefault(name, spec)
    for name, spec in specs.items():
        try:
            _cache[name] = _load(spec)
        except Exception as e:  # a broken plug-in must not take the CLI down
            _errors[name] = f"{e.__class__.__name__}: {e}"
    return _cache


def list_backends() -> list[str]:
    return sorted(_discover())


def broken_backends() -> dict[str, str]:
    _discover()
    return dict(_errors)


def get_backend(name: str) -> Backend:
    b = _discover()
    if name in b:
        return b[name]
    if name in _errors:
        raise UserError(f"backend '{name}' failed to load ({_errors[name]})")
    raise UserError(f"unknown backend '{name}'", f"choose one of: {', '.join(sorted(b))}")


def backend_for_artifact(path: Path) -> Backend:
    for b in _discover().values():
        if b.suffix and path.name.endswith(b.suffix):
            return b
    raise UserError(
        f"{path}: no backend reads '{path.suffix}' files",
        "pass an artifact written by tap-edge compile (.onnx, .tflite, .so)",
    )


# ---- manifests -------------------------------------------------------------------------------------------
def artifact_stem(model: Any, bits: Any) -> str:
    """The file stem of a compiled artifact: the model spec made file-safe, then the widths' label."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(model.spec).name)[:60] or "model"
    return f"{safe}-{bits.label()}"


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".manifest.json")


def write_manifest(artifact: Path, data: dict[str, Any]) -> Path:
    p = manifest_path(artifact)
    full = {
        "schema": MANIFEST_SCHEMA,
        "version": MANIFEST_VERSION,
        "artifact": artifact.name,
        "artifact_bytes": artifact.stat().st_size if artifact.exists() else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **data,
    }
    p.write_text(json.dumps(full, indent=2, default=json_default))
    return p


def read_manifest(artifact: Path) -> dict[str, Any]:
    p = manifest_path(artifact)
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(
            f"{p}: unreadable manifest ({e.__class__.__name__})", "re-run tap-edge compile"
        ) from None
    return data if isinstance(data, dict) else {}


# ---- helpers shared by backends ----------------------------------------------------------------------------
def module_bits(bits: Any, module: str | None) -> tuple[int, int]:
    """(weight bits, activation bits) planned for the PyTorch module ``module``."""
    if module and module in bits.layers:
        lb = bits.layers[module]
        return lb.w, lb.a
    return bits.default_w, bits.default_a


def prediction(graph: Any, bits: Any, runtime: Any | None) -> dict[str, Any]:
    """tap-edge's prediction for ``graph`` at ``bits`` with a runtime's arena settings (TFLite Micro's host
    reference kernels when no runtime is given: 16-byte alignment, no aliasing, no scratch, PAD ops and the
    persistent tail, see ``tap_edge.fit.memory.runtime_view``)."""
    from tap_edge.devices import Runtime
    from tap_edge.fit.memory import flash_breakdown, plan_arena_for

    if runtime is None:
        runtime = Runtime(name="tflm-host", weights={"default": [4, 8]}, activations={"default": [8, 16]})
    arena = plan_arena_for(graph, bits, runtime)
    flash = flash_breakdown(graph, bits, runtime.code_bytes)
    return {
        "flash": flash.to_dict(),
        "arena_bytes": arena.arena_bytes,
        "arena_head_bytes": arena.head_bytes,
        "arena_persistent_bytes": arena.persistent_bytes,
        "peak_live_bytes": arena.peak_live_bytes,
        "peak_op": arena.peak_op,
        "arena_settings": {
            "alignment": runtime.arena_alignment,
            "alias_inplace": runtime.alias_inplace,
            "scratch": runtime.scratch,
            "runtime": runtime.name,
        },
    }


def sample_inputs(model: Any, n: int, calib_dir: Path | None = None, seed: int = 0) -> np.ndarray:
    """Up to ``n`` float32 inputs shaped like the model's (stacked on axis 0; fewer if the folder has fewer).

    Images come from ``calib_dir`` (or the shared ImageNet sample when the model takes 3-channel images)
    with the model's own preprocessing; other inputs (e.g. DS-CNN's MFCC patch) are seeded Gaussian noise."""
    pre = model.preprocess
    shape = tuple(pre.input_size)
    if shape[0] == 3:
        photos = _photo_dir(calib_dir)
        if photos is not None:
            imgs = _load_photos(photos, n, pre)
            if len(imgs):
                return imgs
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32)


def _photo_dir(calib_dir: Path | None) -> Path | None:
    if calib_dir is not None:
        return calib_dir
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "shared" / "data" / "imagenet-sample"
        if cand.is_dir():
            return cand
    return None


def _load_photos(folder: Path, n: int, pre: Any) -> np.ndarray:
    try:  # the calibration loader of tap_edge, when present
        from tap_edge.plan import calib  # type: ignore[attr-defined]

        loader = getattr(calib, "load_images", None)
        if loader is not None:
            arr = loader(folder, n=n, preprocess=pre)
            arr = np.asarray(arr, dtype=np.float32)
            if arr.ndim == 4 and arr.shape[0] >= n:
                return arr[:n]
    except Exception:  # noqa: BLE001 - fall back to the simple loader below
        pass
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    c, h, w = pre.input_size
    out = []
    for f in files:
        im = Image.open(f).convert("RGB")
        s = pre.resize / min(im.size)
        im = im.resize((max(w, round(im.size[0] * s)), max(h, round(im.size[1] * s))), Image.BILINEAR)
        left, top = (im.size[0] - w) // 2, (im.size[1] - h) // 2
        a = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.float32) / pre.scale
        a = (a - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        out.append(a.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32) if out else np.zeros((0, c, h, w), np.float32)


def reference_outputs(
    model: Any, bits: Any, xs: np.ndarray, calib: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """Outputs on ``xs`` of the PTQ fake-quant model (``tap_edge.quantize.ptq``, calibrated on ``calib``) when
    available, else of the float model."""
    import torch

    ref, label = model.module, "float"
    try:
        from tap_edge import quantize  # type: ignore[attr-defined]

        fq = getattr(quantize, "fake_quant_model", None) or getattr(quantize, "quantize_model", None)
        if fq is not None and not bits.native:
            cal = torch.from_numpy(calib if calib is not None else xs[: min(len(xs), 16)])
            ref, label = fq(model.module, bits, cal), "fake-quant"
            if isinstance(ref, tuple):
                ref = ref[0]
    except Exception:  # noqa: BLE001 - the float model is the fallback reference
        ref, label = model.module, "float"
    with torch.no_grad():
        outs = [ref(torch.from_numpy(xs[i : i + 32])).detach().numpy() for i in range(0, len(xs), 32)]
    return np.concatenate(outs), label


def weight_quantized_module(model: Any, bits: Any, calib: np.ndarray) -> tuple[Any, bool]:
    """The module to export: BatchNorm folded and weights already on the plan's grid with tap-edge's
    MSE-searched per-channel clipping (``tap_edge.quantize.ptq`` with float activations), so the backend's own
    symmetric narrow-range weight quantizer reproduces the fake-quant model's weights exactly. Falls back to
    the float module (and ``False``) when ``tap_edge.quantize.ptq`` is not available."""
    from tap_edge.fit.bits import BitAssignment, LayerBits

    try:
        import torch

        from tap_edge.quantize.ptq import quantize_model
    except ImportError:
        return model.module, False
    wonly = BitAssignment(bits.default_w, 32, {k: LayerBits(v.w, 32) for k, v in bits.layers.items()})
    try:
        cal = torch.from_numpy(calib[: min(len(calib), 16)])
        return quantize_model(model.module, wonly, cal).eval(), True
    except Exception:  # noqa: BLE001 - a model the PTQ pass cannot handle is exported as it is
        return model.module, False


def agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement and mean cosine similarity of two batches of logits."""
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    got = got.reshape(len(got), -1).astype(np.float64)
    top1 = float(np.mean(ref.argmax(1) == got.argmax(1))) if len(ref) else 0.0
    num = (ref * got).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12
    return {
        "n": int(len(ref)),
        "top1_agreement": round(top1, 4),
        "cosine": round(float(np.mean(num / den)), 5),
    }
