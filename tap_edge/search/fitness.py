"""Fitness of a proxy program on search tasks (design.md, "TAP fitness of a proxy").

For each search task (model, 16 calibration samples, budget): run the program in the sandbox on every
layer's statistics, allocate bit-widths with its costs under the task's flash budget
(:func:`tap_edge.plan.allocate.allocate`, exact ILP), apply weight-only PTQ with those widths, and measure
quality on the task's evaluation split = top-1 agreement with the float model. Add ``alpha`` (0.1) x the
Spearman correlation between the program's per-layer scores (cost at the reference width minus cost at the
widest width) and each layer's measured quantization damage (KL of the output to the float model when only
that layer is quantized at the reference width). The fitness is the mean over tasks; a program that fails
in any task has no fitness and a recorded reason.

Search tasks are deliberately separate from what results are reported on (the paper searched on CIFAR-10
and transferred to ImageNet): small networks trained here on scikit-learn's bundled 8x8 digits, never the
sample photos or EfficientNet-Lite0. Everything that does not depend on the candidate (trained model, data
splits, per-layer statistics, per-layer quantized weights at every width, the damage, float outputs) is
computed once and cached on disk (``$XDG_CACHE_HOME/tap-edge/evolve``), so one candidate costs a sandbox run,
an ILP and one forward pass over the evaluation split per task.

Task names: ``lite1-photos``, ``lite2-photos`` (EfficientNet-Lite1 / Lite2 with their real ImageNet weights on
real photos, quality from the mean KL to the float model: :mod:`tap_edge.search.photo_tasks`), ``digits-cnn``
(4-layer CNN, 8x8 input), ``digits-resnet8`` (the bundled MLPerf Tiny ResNet-8 on digits upscaled to 32x32),
``synthetic`` (numpy only, instant; for tests). A task spec is ``NAME`` or ``NAME@BITS`` (the flash budget of
uniform BITS-bit weights, default 3).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tap_edge.core.errors import UserError
from tap_edge.plan.proxies.sandbox import SandboxResult, one_line, run_proxy_program
from tap_edge.search.tasks import (
    REF_BITS,
    SEARCH_BITS,
    SearchTask,
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

DEFAULT_ALPHA = 0.1
DEFAULT_TASKS = ("digits-cnn@3", "digits-resnet8@3")
TASK_VERSION = "3"  # bump when the cached task contents change (3: initial weights seeded)


# ---------------------------------------------------------------------------------------------------------
# synthetic task (numpy only)

class SyntheticTask:
    """A toy network: layer i's damage at width b is ``s_i * qerror_i(b)`` with a hidden sensitivity ``s_i``;
    its gradient statistic carries ``s_i`` (noisily). Allocation is an exact knapsack over parameter bits."""

    def __init__(self, spec: TaskSpec, n_layers: int = 8) -> None:
        self.spec = spec
        self.bits = list(SEARCH_BITS)
        rng = np.random.default_rng(1000 + spec.seed)
        self.sens = np.exp(rng.uniform(-2.0, 2.0, n_layers))
        self.params = (rng.integers(2, 12, n_layers) * 16).astype(int)
        self.layers: list[dict] = []
        n = 16
        for i in range(n_layers):
            w = rng.standard_normal((int(self.params[i]) // 16, 16)).astype(np.float32)
            g = (w * math.sqrt(self.sens[i]) * (1 + 0.3 * rng.standard_normal(w.shape)) / n).astype(np.float32)
            fisher = (g.astype(float) ** 2 * n * (1 + 0.2 * rng.random(w.shape))).astype(np.float32)
            qscale = np.stack([np.abs(w).max(1) / (2 ** (b - 1) - 1) for b in self.bits]).astype(np.float32)
            dq = [np.clip(np.round(w / qscale[j][:, None]), -(2 ** (b - 1) - 1), 2 ** (b - 1) - 1)
                  * qscale[j][:, None] - w for j, b in enumerate(self.bits)]
            qerr = np.array([float((d.astype(float) ** 2).sum()) for d in dq])
            x = rng.standard_normal((n, w.shape[1])).astype(np.float32)
            y = x @ w.T
            layer = {  # the keys of tap_edge.plan.stats.LAYERSTATS_API, plus qerror, depth and act_in
                "name": f"layer{i}", "op_class": "fc", "index": i, "num_layers": n_layers,
                "position": i / max(1, n_layers - 1), "weight": w, "grad": g, "fisher": fisher,
                "bits": list(self.bits), "qscale": qscale, "qerr": qerr,
                "qerr_fisher": np.array([float((fisher * d ** 2).sum()) for d in dq]),
                "qerr_grad": np.array([float((g * d).sum()) for d in dq]),
                "params": int(self.params[i]), "macs": int(self.params[i]), "in_channels": int(w.shape[1]),
                "out_channels": int(w.shape[0]), "groups": 1, "kernel": [1, 1], "stride": [1, 1],
                "in_numel": int(w.shape[1]), "out_numel": int(w.shape[0]), "out_gram": (y @ y.T).astype(np.float64),
                "n_samples": n, "act_in": x, "qerror": qerr / float((w.astype(float) ** 2).sum()),
                "depth": i / max(1, n_layers - 1),
                "qerr_hessian": np.array([float(((x @ d.T) ** 2).sum()) / n for d in dq]),
                "out_sq": float((y.astype(float) ** 2).sum()) / n, "hessian_trace": float(fisher.sum()),
                "param_share": float(self.params[i] / self.params.sum()),
                "mac_share": float(self.params[i] / self.params.sum())}
            for pre, t in (("in", x), ("out", y)):
                a = np.abs(t)
                layer.update({f"{pre}_min": float(t.min()), f"{pre}_max": float(t.max()),
                              f"{pre}_mean": float(t.mean()), f"{pre}_std": float(t.std()),
                              f"{pre}_absmax": float(a.max()), f"{pre}_p999": float(np.percentile(a, 99.9)),
                              f"{pre}_zero_frac": float((t == 0).mean()),
                              f"{pre}_kurtosis": float(((t - t.mean()) ** 4).mean() / max(t.std() ** 4, 1e-30))})
            self.layers.append(layer)
        self.damage = np.array([self.sens[i] * self.layers[i]["qerror"] for i in range(n_layers)])
        self.api = layerstats_api()
        lo = self.bits.index(max(b for b in self.bits if b <= spec.budget_bits))
        self.scale = float(self.damage[:, lo].sum())  # uniform allocation scores exp(-1)

    def program_layers(self) -> list[dict]:
        return self.layers

    def _allocate(self, c: np.ndarray) -> list[int]:
        units = (self.params // 16).astype(int)
        budget = int(self.spec.budget_bits * units.sum())
        inf = float("inf")
        best = np.full(budget + 1, inf)
        best[0] = 0.0
        choice: list[np.ndarray] = []
        for i in range(len(units)):
            nxt = np.full(budget + 1, inf)
            arg = np.zeros(budget + 1, dtype=int)
            for j, b in enumerate(self.bits):
                w = units[i] * b
                if w > budget:
                    continue
                cand = np.full(budget + 1, inf)
                cand[w:] = best[:budget + 1 - w] + c[i, j]
                better = cand < nxt
                nxt[better], arg[better] = cand[better], j
            choice.append(arg)
            best = nxt
        end = int(np.argmin(best))
        pick = [0] * len(units)
        for i in range(len(units) - 1, -1, -1):
            j = int(choice[i][end])
            pick[i] = j
            end -= units[i] * self.bits[j]
        return pick

    def score(self, costs: list[list[float]], alpha: float) -> TaskScore:
        t0 = time.perf_counter()
        c = np.asarray(costs, dtype=float)
        pick = self._allocate(c)
        total = float(sum(self.damage[i, j] for i, j in enumerate(pick)))
        quality = math.exp(-total / self.scale)
        ref = self.bits.index(REF_BITS)
        rho = spearman(layer_scores(costs, self.bits), self.damage[:, ref])
        avg = float(sum(self.params[i] * self.bits[j] for i, j in enumerate(pick)) / self.params.sum())
        return TaskScore(self.spec.key(), quality, rho, quality + alpha * rho, None, avg,
                         {f"layer{i}": self.bits[j] for i, j in enumerate(pick)}, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------------
# PyTorch tasks on scikit-learn digits

def _digits(size: int, channels: int, seed: int) -> dict[str, Any]:
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).repeat(1, channels, 1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    tr, cal, ev = perm[:1100], perm[1100:1116], perm[1116:]
    return {"x_train": x[tr], "y_train": y[tr], "x_calib": x[cal], "x_eval": x[ev], "y_eval": y[ev]}


def _digits_cnn() -> Any:
    """The 8x8 digits CNN (a small conv net, ~14 k weights)."""
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, 1, 1)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(16, 32, 3, 2, 1)
            self.relu2 = nn.ReLU()
            self.conv3 = nn.Conv2d(32, 32, 3, 1, 1)
            self.relu3 = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(32, 10)

        def forward(self, x: Any) -> Any:
            x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
            return self.fc(self.flatten(self.pool(self.relu3(self.conv3(x)))))

    return DigitsCNN()


def _resnet8() -> Any:
    """The bundled MLPerf Tiny ResNet-8 (32x32x3 input)."""
    from tap_edge.graph.zoo import ResNet8

    return ResNet8()


@dataclass(frozen=True)
class DigitsNetwork:
    """The network of a digits search task: how to build it, its input (digits upscaled to ``size`` x
    ``size``, repeated over ``channels``) and how long it trains."""

    build: Callable[[], Any]
    size: int
    channels: int
    epochs: int


DIGITS_NETWORKS = {"digits-cnn": DigitsNetwork(_digits_cnn, 8, 1, 25),
                   "digits-resnet8": DigitsNetwork(_resnet8, 32, 3, 6)}


def quantized_weight(w: Any, bits: int) -> Any:
    """``w`` after the PTQ weight quantizer (:mod:`tap_edge.quantize.ptq`: per output channel, symmetric,
    MSE-searched clipping; per-channel, so BatchNorm folding does not change it)."""
    from tap_edge.quantize.ptq import quantize_weight, weight_scales

    return quantize_weight(w.detach().float(), weight_scales(w, bits)[0], bits)


class TorchTask:
    """A trained small network, its data splits and every candidate-independent quantity (cached)."""

    def __init__(self, spec: TaskSpec, cache_dir: Path | None = None) -> None:
        import torch

        self.spec = spec
        self.network = DIGITS_NETWORKS[spec.name]
        self.bits = list(SEARCH_BITS)
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root()
        torch.set_num_threads(1)
        self._load_or_build()

    # -- building
    def _cache_file(self) -> Path:
        # the layer dicts are tap_edge.plan.stats LayerStats: its API text is part of the key
        stamp = f"{self.spec.name}|{self.spec.seed}|{TASK_VERSION}|{self.bits}|{layerstats_api()}"
        h = hashlib.sha256(stamp.encode()).hexdigest()[:12]
        return self.cache_dir / f"{self.spec.name}-{h}.pt"

    def _train(self, model: Any, data: dict[str, Any]) -> float:
        import torch

        torch.manual_seed(self.spec.seed)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        x, y = data["x_train"], data["y_train"]
        model.train()
        for _ in range(self.network.epochs):
            perm = torch.randperm(len(y))
            for i in range(0, len(y), 64):
                idx = perm[i:i + 64]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            return float((model(data["x_eval"]).argmax(1) == data["y_eval"]).float().mean())

    def _load_or_build(self) -> None:
        self._setup(load_or_build(self._cache_file(), self._build))

    def _build(self) -> dict[str, Any]:
        import torch

        from tap_edge.graph.models import LoadedModel, Preprocess, load_graph
        from tap_edge.plan.stats import compute_layer_stats

        size, ch = self.network.size, self.network.channels
        data = _digits(size, ch, self.spec.seed)
        torch.manual_seed(self.spec.seed)  # the initial weights too: the task is the same in every process
        model = self.network.build()
        float_top1 = self._train(model, data)
        lm = LoadedModel(f"evolve:{self.spec.name}", "torch", model,
                         preprocess=Preprocess((ch, size, size), size, (0.0,) * ch, (1.0,) * ch))
        graph = load_graph(lm)
        qops = graph.quantizable_ops()
        modules = dict(model.named_modules())
        names = [op.name for op in qops]
        fqns = [op.module or op.name for op in qops]
        quant = {n: {b: quantized_weight(modules[f].weight.detach(), b) for b in self.bits}
                 for n, f in zip(names, fqns, strict=True)}
        with torch.no_grad():
            float_logits = model(data["x_eval"])
        layers = [s.to_program_input() for s in compute_layer_stats(model, graph, data["x_calib"],
                                                                      bits=tuple(self.bits))]
        # damage: KL(float || model with only this layer at REF_BITS) on the evaluation split
        damage = []
        for n, f in zip(names, fqns, strict=True):
            mod = modules[f]
            keep = mod.weight.data.clone()
            mod.weight.data = quant[n][REF_BITS].clone()
            with torch.no_grad():
                logits = model(data["x_eval"])
            mod.weight.data = keep
            damage.append(kl_divergence(float_logits, logits))
        return {"state_dict": model.state_dict(), "data": {k: v for k, v in data.items() if k != "x_train"
                                                           and k != "y_train"},
                "graph": graph.to_dict(), "names": names, "fqns": fqns, "quant": quant,
                "float_logits": float_logits, "float_top1": float_top1, "layers": layers,
                "damage": np.asarray(damage), "version": TASK_VERSION, "api": layerstats_api()}

    def _setup(self, blob: dict[str, Any]) -> None:
        from tap_edge.graph.graph import ModelGraph

        self.model = self.network.build()
        self.model.load_state_dict(blob["state_dict"])
        self.model.eval()
        self.modules = dict(self.model.named_modules())
        self.data = blob["data"]
        self.graph = ModelGraph.from_dict(blob["graph"])
        self.names, self.fqns = blob["names"], blob["fqns"]
        self.quant = blob["quant"]
        self.float_logits = blob["float_logits"]
        self.float_pred = self.float_logits.argmax(1)
        self.float_top1 = blob["float_top1"]
        self.layers = blob["layers"]
        self.api = blob["api"]
        self.damage = np.asarray(blob["damage"])
        self.runtime, self.budgets, self.flash = flash_budget(self.graph, self.bits, self.spec.budget_bits)
        self.params = {n: int(self.modules[f].weight.numel()) for n, f in zip(self.names, self.fqns, strict=True)}

    # -- scoring
    def program_layers(self) -> list[dict]:
        return self.layers

    def score(self, costs: list[list[float]], alpha: float) -> TaskScore:
        import torch

        from tap_edge.plan.allocate import allocate

        t0 = time.perf_counter()
        table = {n: {(b, 8): float(c) for b, c in zip(self.bits, row, strict=True)}
                 for n, row in zip(self.names, costs, strict=True)}
        al = allocate(self.graph, table, self.runtime, self.budgets, check_arena=False)
        chosen: dict[str, int] = {}
        saved = {}
        for n, f in zip(self.names, self.fqns, strict=True):
            b = int(al.layers[f]["w"]) if f in al.layers else int(al.layers[n]["w"])
            chosen[n] = b
            mod = self.modules[f]
            saved[f] = mod.weight.data
            mod.weight.data = self.quant[n][b]
        try:
            with torch.no_grad():
                logits = self.model(self.data["x_eval"])
        finally:
            for f, w in saved.items():
                self.modules[f].weight.data = w
        pred = logits.argmax(1)
        agree = float((pred == self.float_pred).float().mean())
        top1 = float((pred == self.data["y_eval"]).float().mean())
        rho = spearman(layer_scores(costs, self.bits), self.damage)
        avg = sum(self.params[n] * b for n, b in chosen.items()) / sum(self.params.values())
        return TaskScore(self.spec.key(), agree, rho, agree + alpha * rho, top1, float(avg), chosen,
                         time.perf_counter() - t0)


def _synthetic_task(spec: TaskSpec, cache_dir: Path | None) -> SearchTask:
    return SyntheticTask(spec)  # built in a moment from its seed: nothing to cache


def _photo_task(spec: TaskSpec, cache_dir: Path | None) -> SearchTask:
    from tap_edge.search.photo_tasks import PhotoTask  # imports this module: loaded on first use

    return PhotoTask(spec, cache_dir)


#: Photo task names (:data:`tap_edge.search.photo_tasks.PHOTO_NETWORKS`; listed here so that the registry
#: needs no torch import).
PHOTO_TASKS = ("lite1-photos", "lite2-photos")


#: The search tasks by name (``--task NAME[@BITS]``): each builds (or loads from ``cache_dir``) its task.
TASK_BUILDERS: dict[str, Callable[[TaskSpec, Path | None], SearchTask]] = {
    "synthetic": _synthetic_task, **{name: TorchTask for name in DIGITS_NETWORKS},
    **{name: _photo_task for name in PHOTO_TASKS}}


def build_task(spec: TaskSpec, cache_dir: Path | None = None) -> SearchTask:
    """Construct (or load from cache) a search task."""
    return task_builder(spec.name)(spec, cache_dir)


def task_builder(name: str) -> Callable[[TaskSpec, Path | None], SearchTask]:
    """The builder of the search task ``name``, or a one-line error listing the known ones."""
    try:
        return TASK_BUILDERS[name]
    except KeyError:
        raise UserError(f"unknown search task '{name}'", f"known: {', '.join(TASK_BUILDERS)}") from None


# ---------------------------------------------------------------------------------------------------------
# evaluating one candidate (runs in a worker process or thread)

_WORKER: dict[str, Any] = {}


@dataclass
class Limits:
    cpu_seconds: float = 10.0
    memory_mb: int = 1024
    wall_seconds: float = 20.0


_BUILT: dict[tuple[tuple[TaskSpec, ...], str | None], list[SearchTask]] = {}


def worker_tasks(specs: list[TaskSpec] | tuple[TaskSpec, ...], cache_dir: str | None) -> list[SearchTask]:
    """The search tasks of ``specs``, built once per process (process-pool and Ray workers; a long-lived Ray
    worker may serve runs with different tasks, hence the key)."""
    key = (tuple(specs), cache_dir)
    if key not in _BUILT:
        _BUILT[key] = [build_task(s, Path(cache_dir) if cache_dir else None) for s in specs]
    return _BUILT[key]


def init_worker(specs: list[TaskSpec], cache_dir: str | None) -> None:
    """Process-pool initializer: build every task once per worker."""
    _WORKER["tasks"] = worker_tasks(specs, cache_dir)


def evaluate_program(code: str, alpha: float, limits: Limits, tasks: list[SearchTask] | None = None,
                     repair: bool = False, fit_constants: bool = False) -> dict[str, Any]:
    """Fitness of one program: ``{"ok": True, "fitness", "tasks": [...]}`` or ``{"ok": False, "reason"}``.

    With ``repair``, failing statements are first deleted on the first task (:mod:`tap_edge.search.repair`:
    its reruns share one run's limits, and its last, working run counts for the first task); the result then
    carries ``repaired_code`` and the removed statements in ``repairs``. With ``fit_constants``, the (repaired)
    program's float literals are then tuned for rank agreement with the tasks' damage
    (:mod:`tap_edge.search.constants`); the result carries ``constants`` (original and tuned values, objective
    before and after) and, when they improved it, ``tuned_code``, whose fitness it is. Reasons are one line."""
    t0 = time.perf_counter()
    tasks = tasks if tasks is not None else _WORKER["tasks"]
    extra: dict[str, Any] = {}
    done: dict[int, SandboxResult] = {}
    if repair and tasks:
        from tap_edge.search.repair import repair_program

        first = tasks[0]
        fixed, steps, why, last = repair_program(code, first.program_layers(), first.bits,
                                                 cpu_seconds=limits.cpu_seconds, memory_mb=limits.memory_mb,
                                                 wall_seconds=limits.wall_seconds)
        if steps:
            extra["repairs"] = steps
        if fixed is None:
            after = f" (after deleting {len(steps)} failing statement(s))" if steps else ""
            return {"ok": False, "stage": "run", "reason": one_line(f"{first.spec.key()}: {why}{after}"), **extra,
                    "seconds": round(time.perf_counter() - t0, 3)}
        if fixed != code:
            extra["repaired_code"] = fixed
            code = fixed
        if last is not None and last.ok:
            done[0] = last
    if fit_constants and tasks:
        from tap_edge.search.constants import fit_constants as fit

        found = fit(code, list(tasks), cpu_seconds=limits.cpu_seconds, memory_mb=limits.memory_mb,
                    wall_seconds=limits.wall_seconds)
        if found is not None:
            extra["constants"] = found.to_dict()
            if found.code is not None:
                extra["tuned_code"] = found.code
                code = found.code
                done = {}  # the first task's repair run was of the untuned program
    scores: list[TaskScore] = []
    sandbox_s = 0.0
    by_layers: dict[int, SandboxResult] = {}  # tasks of one network at several budgets share its program inputs
    for i, task in enumerate(tasks):
        key = id(task.program_layers())
        res = done.get(i) or by_layers.get(key) or run_proxy_program(
            code, task.program_layers(), task.bits, cpu_seconds=limits.cpu_seconds, memory_mb=limits.memory_mb,
            wall_seconds=limits.wall_seconds)
        if key not in by_layers:
            sandbox_s += res.seconds
        by_layers[key] = res
        if not res.ok:
            return {"ok": False, "stage": res.stage, "reason": one_line(f"{task.spec.key()}: {res.reason}"), **extra,
                    "seconds": round(time.perf_counter() - t0, 3)}
        try:
            scores.append(task.score(res.costs or [], alpha))
        except UserError as e:  # e.g. an infeasible allocation: this candidate's failure, not the run's
            why = one_line(f"{task.spec.key()}: {e.__class__.__name__}: {e}")
            return {"ok": False, "stage": "score", "reason": why, **extra,
                    "seconds": round(time.perf_counter() - t0, 3)}
    fitness = float(np.mean([s.fitness for s in scores]))
    return {"ok": True, "fitness": round(fitness, 6), "tasks": [asdict(s) for s in scores], **extra,
            "sandbox_seconds": round(sandbox_s, 3), "seconds": round(time.perf_counter() - t0, 3)}


def describe_tasks(tasks: list[SearchTask]) -> list[dict[str, Any]]:
    """What the run records about its tasks (float accuracy, budget, layer count)."""
    out = []
    for t in tasks:
        d: dict[str, Any] = {"task": t.spec.key(), "layers": len(t.program_layers()), "bits": t.bits}
        if isinstance(t, TorchTask):
            d.update(float_top1=round(t.float_top1, 4), flash_budget_bytes=t.flash,
                     eval_samples=int(len(t.data["y_eval"])), calib_samples=int(len(t.data["x_calib"])))
        elif hasattr(t, "describe"):
            d.update(t.describe())
        out.append(d)
    return json.loads(json.dumps(out, default=str))
