"""The manifest beside every compiled artifact (``<artifact>.manifest.json``, a :class:`~tap_edge.documents.Manifest`)
and the prediction it carries.

``measure`` reads the manifest to know what the artifact should use (the prediction) and how it was made (the
widths, the inputs, the backend's own facts); the verdict compares the measurement with it.
"""

from __future__ import annotations

from pathlib import Path

from tap_edge.devices import Runtime
from tap_edge.documents import ArenaSettings, FlashFigures, Manifest, ManifestBits, Prediction, Widths
from tap_edge.fit.bits import BitAssignment
from tap_edge.fit.footprint import flash_breakdown, plan_arena_for
from tap_edge.graph.graph import ModelGraph
from tap_edge.graph.models import IN_MEMORY, LoadedModel

#: The runtime the prediction assumes when no device is given: TFLite Micro's reference kernels on the host, as
#: the tflite_micro interpreter runs them (16-byte alignment, no aliasing, the reference kernels' scratch: an int4
#: filter unpacked into the arena; PAD ops and the persistent tail; see ``tap_edge.fit.memory.runtime_view``).
HOST_REFERENCE_RUNTIME = Runtime(name="tflm-host", weights={"default": [4, 8]}, activations={"default": [8, 16]},
                                 scratch="tflm")


def artifact_stem(model: LoadedModel, bits: BitAssignment) -> str:
    """The file stem of a compiled artifact: the model spec made file-safe, then the widths' label."""
    name = Path(model.spec).stem if model.path is not None else Path(model.spec.removeprefix(IN_MEMORY)).name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "model"
    return f"{safe}-{bits.label()}"


def graph_path(artifact: Path) -> Path:
    """Where the graph of a model given as a Python object is saved beside its artifact (its spec cannot load
    it again: ``measure`` reads the graph from there)."""
    return artifact.with_name(artifact.name + ".graph.json")


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".manifest.json")


def write_manifest(manifest: Manifest, artifact: Path) -> Path:
    """Write ``manifest`` beside ``artifact`` (atomically); returns the manifest's path."""
    return manifest.write(manifest_path(artifact))


def read_manifest(artifact: Path) -> Manifest | None:
    """The manifest beside ``artifact``; None when there is none (an artifact tap-edge did not compile). A
    manifest of another version or with bad fields is a one-line error naming the file."""
    p = manifest_path(Path(artifact))
    return Manifest.read(p) if p.exists() else None


def manifest_bits(bits: BitAssignment) -> ManifestBits:
    return ManifestBits(default=Widths(w=bits.default_w, a=bits.default_a),
                        layers={k: Widths(w=v.w, a=v.a) for k, v in bits.layers.items()}, label=bits.label())


def bits_of(manifest: Manifest) -> BitAssignment:
    """The :class:`BitAssignment` an artifact was compiled at."""
    return BitAssignment.from_plan(manifest.bits.model_dump(), f"{manifest.artifact} manifest")


def module_bits(bits: BitAssignment, module: str | None) -> tuple[int, int]:
    """(weight bits, activation bits) planned for the PyTorch module ``module``."""
    if module and module in bits.layers:
        lb = bits.layers[module]
        return lb.w, lb.a
    return bits.default_w, bits.default_a


def prediction(graph: ModelGraph, bits: BitAssignment, runtime: Runtime | None) -> Prediction:
    """tap-edge's prediction for ``graph`` at ``bits`` with a runtime's arena settings
    (:data:`HOST_REFERENCE_RUNTIME` when no runtime is given)."""
    runtime = runtime or HOST_REFERENCE_RUNTIME
    arena = plan_arena_for(graph, bits, runtime)
    vela = arena.vela  # an Ethos-U runtime: Vela's plan (tap_edge.fit.ethos_u), flash as the optimised model
    flash = flash_breakdown(graph, bits, runtime.code_bytes, runtime=runtime if vela is not None else None)
    return Prediction(
        flash=FlashFigures(**flash.to_dict()),
        arena_bytes=arena.arena_bytes,
        arena_head_bytes=arena.head_bytes,
        arena_persistent_bytes=arena.persistent_bytes,
        peak_live_bytes=arena.peak_live_bytes,
        peak_op=arena.peak_op,
        arena_settings=ArenaSettings(alignment=runtime.arena_alignment, alias_inplace=runtime.alias_inplace,
                                     scratch=runtime.scratch, runtime=runtime.name),
        prediction_by=arena.model or None,
        vela=vela.to_doc() if vela is not None else None,
    )
