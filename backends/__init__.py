"""Backends: turn a model + a bit assignment into a runnable artifact, and run it to measure it.

A backend is a :class:`Backend` subclass registered under the entry-point group ``tap_edge.backends``
(``pyproject.toml``: ``onnxruntime = "tap_edge.backends.onnxruntime_backend:OnnxRuntimeBackend"``);
third-party packages add their own the same way. Each backend file has one shape: a docstring, its options
dataclass (a :class:`BackendOptions`, checked in ``__post_init__``), one :class:`Backend` subclass declaring

- ``name``, the device ``runtimes`` it serves (shell patterns over profile runtime names, e.g. ``tflm-*``) and
  the device ``kinds``;
- ``modules``: the Python modules it needs, and ``extra``: the pip extra that installs them. ``available()``
  only looks the modules up (nothing heavy is imported); ``require()`` raises one line naming the extra;
- ``plan_rules(runtime)``: the widths a plan may choose so that the backend builds it as planned for that
  runtime (:class:`~tap_edge.plan.rules.PlanRules`: width pairs per op class, one activation width or not);
  ``tap-edge plan`` makes them constraints (:func:`plan_target` picks the backend for a device) and
  ``build()`` refuses exactly what they forbid;
- ``build()``: writes the artifact and returns a :class:`Build` (its weight bytes, what only it knows);
  ``outputs()``: runs the artifact on inputs. :meth:`Backend.compile` does the rest once for every backend:
  the prediction (:mod:`tap_edge.backends.manifest`), the agreement with the reference model
  (:mod:`tap_edge.backends.reference`) and the :class:`~tap_edge.documents.Manifest` beside the artifact;
- ``child_measure()``: runs *inside the measurement child process* (:mod:`tap_edge.backends.measure`) and
  returns latency samples and the runtime's own memory figures. The verdict on them is
  :mod:`tap_edge.backends.verdict`.

:func:`compile_model` is the library call behind ``tap-edge compile``. Heavy dependencies (torch,
onnxruntime.quantization, litert-torch, tflite-micro, tvm) are imported inside functions: the measurement child
imports this package and must not load torch before its import baseline.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tap_edge.backends.inputs import InputRequest
from tap_edge.backends.manifest import graph_path, manifest_bits, prediction, read_manifest, write_manifest
from tap_edge.backends.reference import (
    Samples,
    agreement,
    calibration_error,
    exporting,
    fake_quant_model,
    needs_calibration,
    reference_outputs,
    sample_inputs,
    weight_quantized_module,
)
from tap_edge.core.errors import UserError
from tap_edge.core.registry import Registry
from tap_edge.devices import DeviceProfile, Runtime, get_device
from tap_edge.documents import (
    Agreement,
    ArtifactWeights,
    BackendEntry,
    BackendList,
    InputSpec,
    Manifest,
    Prediction,
    PTQSettings,
)
from tap_edge.fit.bits import BitAssignment
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.models import IN_MEMORY, LoadedModel, load_graph
from tap_edge.graph.shapes import InputShapes, model_inputs
from tap_edge.plan.rules import ALL_CHOICES, PlanRules

__all__ = [
    "Artifact", "Backend", "BackendOptions", "BackendUnavailable", "Build", "backend_for_artifact",
    "backend_for_runtime", "backend_list", "broken_backends", "compile_model", "get_backend", "list_backends",
    "plan_target", "read_manifest",
]

ENTRY_POINT_GROUP = "tap_edge.backends"
#: The backends ``pyproject.toml`` declares; named when the installed package metadata lacks them.
FIRST_PARTY = ("onnxruntime", "tflite", "tvm", "vela")
#: Entry points into this package are our own code: imported directly, a broken one fails loudly.
_OWN_MODULES = "tap_edge.backends."
#: Calibration samples :meth:`Backend.compile` reads when it is given none (``tap-edge compile``'s default).
DEFAULT_SAMPLES = 16


class BackendUnavailable(UserError):
    """The backend's optional dependency is not installed."""


@dataclass
class BackendOptions:
    """A backend's own compile settings (torchao-style config: defaults, checked in ``__post_init__``).

    Each field is also a generic ``tap-edge compile`` flag (``tune_trials`` is ``--tune-trials``);
    ``FLAG_HELP`` says, per field, what the flag does and what a backend without it lacks, for the one-line
    error when such a flag is given to another backend."""

    FLAG_HELP: ClassVar[dict[str, tuple[str, str]]] = {}

    @classmethod
    def flags(cls) -> list[str]:
        return [flag_name(f.name) for f in fields(cls)]


def flag_name(option: str) -> str:
    """The CLI flag of an option field: ``tune_trials`` -> ``--tune-trials``."""
    return "--" + option.replace("_", "-")


@dataclass
class Build:
    """What a backend's :meth:`Backend.build` made: the artifact and what only the backend can say about it.

    ``reference``: outputs on the first check inputs and their label, when the artifact is compared with
    something else than the PTQ fake-quant model (TVM: ONNX Runtime on the same graph)."""

    artifact: Path
    weights: ArtifactWeights
    input: InputSpec | None = None
    other_predictions: dict[str, Prediction] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    reference: tuple[np.ndarray, str] | None = None


@dataclass(frozen=True)
class Artifact:
    """A compiled artifact and the manifest written beside it."""

    path: Path
    manifest: Manifest


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
    options_class: ClassVar[type[BackendOptions]] = BackendOptions
    #: what runs the artifact for the agreement when it is not the backend's own runtime (recorded)
    agreement_runtime: ClassVar[str | None] = None

    # ---- dependencies ----------------------------------------------------------------------------------
    def missing(self, measure: bool = False) -> list[str]:
        out = []
        mods = self.measure_modules if measure and self.measure_modules is not None else self.modules
        for m in mods:
            try:
                if importlib.util.find_spec(m) is None:
                    out.append(m)
            except (ImportError, ValueError):  # a parent package that is not installed
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

    def require_pytorch(self, model: LoadedModel, bits: BitAssignment) -> None:
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

    def serves(self, device: DeviceProfile) -> bool:
        return any(self.serves_runtime(rt.name) for rt in device.runtimes)

    def pick_runtime(self, device: DeviceProfile) -> Runtime:
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

    # ---- what it builds ------------------------------------------------------------------------------------
    def plan_rules(self, runtime: Runtime | None) -> PlanRules:
        """The widths a plan may choose so that this backend builds it as planned for ``runtime`` (None: no
        device, the backend alone). A backend that says nothing of its own builds whatever the runtime's
        tables allow, chosen per layer."""
        if runtime is None:
            return PlanRules.of("any", self.name, {"default": ALL_CHOICES})
        return PlanRules.from_runtime(runtime, self.name)

    def check_buildable(self, graph: ModelGraph, bits: BitAssignment, device: DeviceProfile | None) -> None:
        """Refuse, in one line, widths :meth:`plan_rules` forbids for the device's runtime: the same rules the
        planner kept, so a plan made for that device always passes."""
        runtime = self.pick_runtime(device) if device is not None else None
        rules = self.plan_rules(runtime)
        problems = rules.violations(graph, bits)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            target = f"device '{device.id}'" if device is not None else "this backend"
            raise UserError(f"{problems[0]}{more}",
                            f"make the plan for {target} with this backend (tap-edge plan -d "
                            f"{device.id if device is not None else 'DEVICE'} --backend {self.name}): plans keep "
                            f"to {rules.builder()}")

    # ---- options -----------------------------------------------------------------------------------------
    def options_from_flags(self, **flags: Any) -> BackendOptions:
        """This backend's options from the generic compile flags (``None``: not given). A flag it does not
        take is a one-line error naming the backend it belongs to."""
        given = {k: v for k, v in flags.items() if v is not None}
        own = {f.name for f in fields(self.options_class)}
        for option in given:
            if option not in own:
                raise _foreign_flag(option, self.name)
        return self.options_class(**given)

    def check_options(self, options: BackendOptions | None) -> BackendOptions:
        if options is None:
            return self.options_class()
        if not isinstance(options, self.options_class):
            raise UserError(f"backend '{self.name}' takes {self.options_class.__name__}, "
                            f"not {type(options).__name__}")
        return options

    # ---- work ------------------------------------------------------------------------------------------
    def compile(
        self,
        model: LoadedModel,
        graph: ModelGraph,
        bits: BitAssignment,
        out_dir: Path,
        *,
        device: DeviceProfile | None = None,
        calib: Samples | np.ndarray | None = None,
        check: Samples | np.ndarray | None = None,
        options: BackendOptions | None = None,
        ptq: PTQSettings | None = None,
    ) -> Artifact:
        """Build the artifact into ``out_dir`` and write its manifest: the prediction with the device
        runtime's arena settings (TFLite Micro's host reference without a device), the agreement of the
        artifact's outputs with the reference on ``check`` (default: ``calib``) and where both came from.
        ``calib`` (None) is seeded noise, allowed only when no activation is integer
        (:func:`~tap_edge.backends.reference.needs_calibration`). ``ptq``: the PTQ the plan records (None:
        round-to-nearest), run once on all of ``calib``; the artifact stores that fake-quant model's integers and
        scales and is compared with it."""
        opts = self.check_options(options)
        self.require()
        self.require_pytorch(model, bits)
        runtime = self.pick_runtime(device) if device is not None else None
        if calib is None and needs_calibration(graph, bits):
            raise calibration_error(model, bits)
        cal = Samples.of(calib) if calib is not None else sample_inputs(model, DEFAULT_SAMPLES)
        chk = Samples.of(check) if check is not None else cal
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out_dir}: is a file, not a folder for the artifact", "give --out-dir a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        settings = (ptq or PTQSettings()).model_copy(update={"samples": len(cal)})
        fake_quant = fake_quant_model(model, graph, bits, cal.array, settings)
        ptq_s = time.perf_counter() - t0
        with exporting(fake_quant):
            built = self.build(model, graph, bits, out_dir, calib=cal.array, check=chk.array, options=opts,
                               device=device)
        compile_s = time.perf_counter() - t0
        if built.reference is not None:
            ref, label = built.reference
            chk = chk.head(len(ref))
        else:
            ref, label = reference_outputs(fake_quant, chk.array), reference_label(bits)
        got = self.outputs(built.artifact, chk.array)
        manifest = Manifest(
            artifact=built.artifact.name,
            artifact_bytes=built.artifact.stat().st_size,
            created=time.strftime("%Y-%m-%dT%H:%M:%S"),
            backend=self.name,
            model=model.spec,
            bits=manifest_bits(bits),
            device=device.id if device is not None else None,
            runtime=runtime.name if runtime is not None else None,
            input=built.input or InputSpec(name="input", shape=model.input_shape),
            inputs=model_inputs(graph),
            compile_s=round(compile_s, 3),
            ptq=None if is_float(bits) else settings,
            ptq_s=None if is_float(bits) else round(ptq_s, 3),
            prediction=prediction(graph, bits, runtime),
            other_predictions=built.other_predictions,
            weights=built.weights,
            agreement=Agreement(reference=label, runtime=self.agreement_runtime, **agreement(ref, got)),
            calibration=cal.source,
            check_inputs=chk.source,
            backend_facts=built.facts,
        )
        write_manifest(manifest, built.artifact)
        if model.spec.startswith(IN_MEMORY):  # measure cannot load the graph from the spec: keep it
            graph.save(graph_path(built.artifact))
        return Artifact(built.artifact, manifest)

    def build(self, model: LoadedModel, graph: ModelGraph, bits: BitAssignment, out_dir: Path, *,
              calib: np.ndarray, check: np.ndarray, options: BackendOptions,
              device: DeviceProfile | None) -> Build:  # pragma: no cover
        """Write the artifact into ``out_dir`` (``calib``: calibration inputs; ``check``: the inputs the
        agreement runs on, for a backend that computes its own reference; ``device``: a cross-compile target,
        for a backend that has one)."""
        raise NotImplementedError

    def outputs(self, artifact: Path, xs: np.ndarray) -> np.ndarray:  # pragma: no cover
        """The artifact's first output on each of ``xs`` (float, batch 1 as compiled), run here."""
        raise NotImplementedError

    def export_module(self, model: LoadedModel, graph: ModelGraph, bits: BitAssignment,
                      calib: np.ndarray) -> tuple[Any, bool]:
        """(the module to export, whether its weights are already on the plan's grid): float plans export
        the model as it is; the others its weight-quantized copy
        (:func:`~tap_edge.backends.reference.weight_quantized_module`)."""
        if is_float(bits):
            return model.module.eval(), False
        return weight_quantized_module(model, graph, bits, calib), True

    def summary_lines(self, manifest: Manifest) -> list[str]:
        """Lines ``tap-edge compile`` prints about this backend's own facts (e.g. TVM's tuning)."""
        return []

    def child_measure(
        self,
        artifact: Path,
        manifest: Manifest | None,
        *,
        runs: int,
        warmup: int,
        threads: int,
        baseline: Callable[[], None],
        feed: InputRequest,
        timeout: float,
    ) -> dict[str, Any]:  # pragma: no cover - abstract
        """Runs in the child. Import the runtime, call ``baseline()`` (records the import-only peak RSS), load
        the artifact, warm up, time ``runs`` runs; return ``{"times_ms": [...], ...runtime figures}``.
        ``manifest`` is None for an artifact tap-edge did not compile; ``feed``: the input shapes and values
        the user gave (:mod:`tap_edge.backends.inputs`); ``timeout``: the seconds the child has in all."""
        raise NotImplementedError


def is_float(bits: BitAssignment) -> bool:
    """No integer width anywhere: weights 16/32 bits and activations 32 bits, no per-layer entries."""
    return bits.default_w >= 16 and bits.default_a >= 32 and not bits.layers


def reference_label(bits: BitAssignment) -> str:
    return "float" if is_float(bits) else "fake-quant"


# ---- registry --------------------------------------------------------------------------------------------
_found: list[tuple[Registry[Backend], dict[str, str]]] = []


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load(ep: importlib.metadata.EntryPoint) -> Backend:
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{ep.value} is not a tap_edge.backends.Backend subclass")
    if cls.name != ep.name:
        raise TypeError(f"{ep.value} is named '{cls.name}', its entry point '{ep.name}'")
    return cls()


def _discover() -> tuple[Registry[Backend], dict[str, str]]:
    """The registry of loaded backends and the reasons the others failed (both cached)."""
    if _found:
        return _found[0]
    registry: Registry[Backend] = Registry("backend")
    broken: dict[str, str] = {}
    for ep in _entry_points():
        if ep.name in registry or ep.name in broken:
            continue  # the same name from a second installation: the first one wins
        if ep.value.startswith(_OWN_MODULES):
            registry.add(ep.name, _load(ep))
            continue
        try:
            registry.add(ep.name, _load(ep))
        except Exception as e:  # noqa: BLE001 - a broken third-party plug-in must not take the CLI down
            broken[ep.name] = f"{e.__class__.__name__}: {str(e)[:200]}"
    for name in FIRST_PARTY:
        if name not in registry:
            broken[name] = f"entry point '{name}' is missing from the installed package metadata"
    _found.append((registry, broken))
    return registry, broken


def reload_backends() -> None:
    """Forget the loaded backends; the next lookup reads the entry points again (e.g. after an install)."""
    _found.clear()


def list_backends(pattern: str = "*") -> list[str]:
    """Names of the backends that loaded, filtered with shell wildcards (``list_backends("onnx*")``)."""
    return _discover()[0].list(pattern)


def broken_backends() -> dict[str, str]:
    """Backends whose plug-in failed to load, with the reason."""
    return dict(_discover()[1])


def get_backend(name: str) -> Backend:
    """The backend ``name``; an unknown name is a one-line error suggesting close matches."""
    registry, broken = _discover()
    if name in broken:
        raise UserError(f"backend '{name}' failed to load ({broken[name]})",
                        "re-install tap-edge (pip install -e .)" if name in FIRST_PARTY
                        else "fix or uninstall the package that provides it")
    return registry.get(name)


def backend_for_artifact(path: Path) -> Backend:
    """The backend whose artifacts end like ``path`` (the longest suffix wins: ``_vela.tflite`` before ``.tflite``)."""
    registry, _ = _discover()
    backends = [registry.get(n) for n in registry]
    matches = [b for b in backends if b.suffix and path.name.endswith(b.suffix)]
    if matches:
        return max(matches, key=lambda b: len(b.suffix))
    raise UserError(
        f"{path}: no backend reads '{path.suffix}' files",
        "pass an artifact written by tap-edge compile (.onnx, .tflite, .so)",
    )


def backend_list(pattern: str = "*") -> BackendList:
    """The :class:`~tap_edge.documents.BackendList` of ``tap-edge backends``: every backend, whether its
    dependencies are installed, and the plug-ins that failed to load."""
    rows = []
    for name in list_backends(pattern):
        b = get_backend(name)
        miss = b.missing()
        rows.append(BackendEntry(name=name, available=not miss, missing=miss, install=b.install_hint() if miss else "",
                                 runtimes=list(b.runtimes), kinds=list(b.kinds), artifact=b.suffix,
                                 description=b.description, options=b.options_class.flags()))
    for name, reason in sorted(broken_backends().items()):
        if fnmatch.fnmatch(name, pattern):
            rows.append(BackendEntry(name=name, available=False, broken=reason))
    return BackendList(backends=rows)


def _foreign_flag(option: str, backend: str) -> UserError:
    """The error for a compile flag ``backend`` does not take, naming the backend whose option it is."""
    flag = flag_name(option)
    for other in list_backends():
        help_ = get_backend(other).options_class.FLAG_HELP.get(option)
        if help_ is not None:
            does, lacks = help_
            return UserError(f"{flag} {does}; backend '{backend}' {lacks}", f"pass --backend {other}, or drop {flag}")
    return UserError(f"{flag}: no backend takes this option", f"drop {flag}")


def backend_for_runtime(runtime: str) -> Backend | None:
    """The backend that builds for the device runtime ``runtime`` (its ``runtimes`` patterns match), if any: the
    one whose matching pattern names the runtime most closely (most literal characters: ``tflm-ethos-u*``
    before ``tflm*`` for ``tflm-ethos-u``), first-party backends first among equals."""
    names = [n for n in FIRST_PARTY if n in list_backends()] + [n for n in list_backends() if n not in FIRST_PARTY]
    serving = [get_backend(n) for n in names if get_backend(n).serves_runtime(runtime)]
    if not serving:
        return None
    return max(serving, key=lambda b: max(len(p.replace("*", "").replace("?", "")) for p in b.runtimes
                                          if fnmatch.fnmatch(runtime, p)))


def plan_target(device: DeviceProfile, runtime: str | None = None, backend: str | None = None,
                ) -> tuple[Runtime, PlanRules]:
    """The runtime a plan for ``device`` is made for and the rules of the backend that will build it there:
    ``backend`` when given (its runtime on the device, or ``runtime`` if it builds for that one), else the
    backend that serves the runtime (``runtime`` or the device's default). No backend serves it: the
    runtime's own tables (``rules.backend`` is None). The rules are narrowed to the runtime's tables."""
    if backend is not None:
        b = get_backend(backend)
        rt = device.runtime(runtime) if runtime is not None else b.pick_runtime(device)
        if runtime is not None and not b.serves_runtime(rt.name):
            raise UserError(f"backend '{b.name}' does not build for runtime '{rt.name}' of device '{device.id}' "
                            f"(it builds for {', '.join(b.runtimes)})",
                            "drop the runtime to use the backend's own, or drop the backend to follow the runtime")
        return rt, b.plan_rules(rt).within(rt)
    rt = device.runtime(runtime)
    b = backend_for_runtime(rt.name)
    return rt, (b.plan_rules(rt).within(rt) if b is not None else PlanRules.from_runtime(rt))


# ---- the library call behind `tap-edge compile` ----------------------------------------------------------------
def compile_model(
    model: Any,
    backend: str | Backend,
    bits: BitAssignment,
    out_dir: Path,
    *,
    device: str | DeviceProfile | None = None,
    calib_dir: Path | str | None = None,
    samples: int = DEFAULT_SAMPLES,
    check_samples: int = DEFAULT_SAMPLES,
    options: BackendOptions | None = None,
    input_shapes: InputShapes | None = None,
    ptq: PTQSettings | None = None,
) -> Artifact:
    """Compile ``model`` (a spec, a file path: an ``.onnx`` file is converted, :mod:`tap_edge.graph.convert`; a
    LoadedModel or an ``nn.Module``) at ``bits`` with ``backend`` into ``out_dir``: the backend, its
    dependencies and the device are checked before the model is loaded; ``max(samples, check_samples)``
    inputs are read once (:func:`~tap_edge.backends.reference.sample_inputs`: ``calib_dir``, a folder or
    ``"noise"``; required when an activation is integer, else noise), the first ``samples`` calibrate and
    the first ``check_samples`` check the agreement. ``input_shapes``: the shape a spec is traced at
    (``--input-shape``; the preprocessing follows). ``ptq``: the PTQ of the plan (:attr:`Plan.ptq`; None:
    round-to-nearest), run on the ``samples`` calibration inputs."""
    b = get_backend(backend) if isinstance(backend, str) else backend
    opts = b.check_options(options)
    b.require()
    profile = get_device(device) if isinstance(device, str) else device
    if profile is not None:
        b.pick_runtime(profile)
    from tap_edge.graph.convert import as_pytorch

    lm = as_pytorch(model, input_shapes, "compile")  # an ONNX file is converted; a .tflite is refused
    graph = load_graph(lm)
    bits.check_names(graph)
    if calib_dir is None and needs_calibration(graph, bits):
        raise calibration_error(lm, bits)
    xs = sample_inputs(lm, max(samples, check_samples), calib_dir)
    return b.compile(lm, graph, bits, out_dir, device=profile, calib=xs.head(samples), check=xs.head(check_samples),
                     options=opts, ptq=ptq)
