"""Where fitness evaluations run: a local process pool (default), threads (tests), or Ray tasks (the ray extra:
``pip install 'tap-edge[ray]'``, a local instance or a cluster).

Every executor takes a :class:`Workload` and offers the two calls the loop makes: :meth:`~Executor.evaluate`
(one program's fitness, a ``concurrent.futures.Future``) and :meth:`~Executor.shutdown`; ``info`` says what was
used and where (recorded in ``run.json``). :data:`EXECUTORS` names them and builds them.

The process pool's workers die with the process that started them, ``kill -9`` included
(:func:`~tap_edge.plan.proxies.sandbox.die_with_parent`: a parent-death signal on Linux, a psutil watch
elsewhere), and each sandbox child of theirs dies with them, so nothing of a killed run keeps running.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from tap_edge.core.errors import UserError
from tap_edge.plan.proxies.sandbox import die_with_parent
from tap_edge.search.fitness import Limits, SearchTask, TaskSpec, evaluate_program, init_worker, worker_tasks

RAY_INSTALL = "pip install 'tap-edge[ray]'"
RAY_HINT = "start one with `ray start --head`, or fix --ray-address / RAY_ADDRESS"
RAY_AUTH_HINT = ("is it a Ray head node (GCS port) of the same Ray version? with token authentication (Ray's "
                 "default) set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token")


@dataclass(frozen=True)
class Workload:
    """What an executor evaluates on: the search tasks built in this process (threads use them), how a worker
    process builds them again (``specs``, ``cache_dir``), how many evaluations run at once, and for Ray the
    cluster address (None: auto if RAY_ADDRESS is set, else a local instance)."""

    tasks: list[SearchTask]
    specs: tuple[TaskSpec, ...]
    cache_dir: str | None
    workers: int
    ray_address: str | None = None


class Executor(Protocol):
    info: dict[str, Any]

    def evaluate(self, code: str, alpha: float, limits: Limits, repair: bool, fit_constants: bool = False
                 ) -> Future: ...

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...


class _PoolExecutor:
    """A ``concurrent.futures`` pool running :func:`evaluate_program` on ``tasks`` (None: the tasks the pool's
    initializer built in each worker process)."""

    def __init__(self, pool: ProcessPoolExecutor | ThreadPoolExecutor, tasks: list[SearchTask] | None) -> None:
        self._pool = pool
        self._tasks = tasks
        self.info: dict[str, Any] = {}

    def evaluate(self, code: str, alpha: float, limits: Limits, repair: bool, fit_constants: bool = False
                 ) -> Future:
        return self._pool.submit(evaluate_program, code, alpha, limits, self._tasks, repair, fit_constants)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def worker_torch_threads(workers: int) -> int:
    """PyTorch threads for each of ``workers`` pool processes: the cores this process may use, shared out (a
    spawned worker would take every core, so two workers' forward passes on two cores ran four threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def pool_worker_init(parent_pid: int, specs: list[TaskSpec], cache_dir: str | None, torch_threads: int) -> None:
    """Process-pool initializer: die with the parent first (``kill -9`` of the run included), set the worker's
    PyTorch threads (:func:`worker_torch_threads`), then build every search task once (:func:`init_worker`)."""
    die_with_parent(parent_pid)
    if any(s.name != "synthetic" for s in specs):  # the synthetic task is numpy only: no torch to load
        import torch

        torch.set_num_threads(torch_threads)
    init_worker(specs, cache_dir)


def process_executor(work: Workload) -> Executor:
    """A pool of ``spawn``-ed processes that die with this one; each builds the search tasks once."""
    import multiprocessing as mp

    workers = max(1, work.workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=pool_worker_init,
                               initargs=(os.getpid(), list(work.specs), work.cache_dir, worker_torch_threads(workers)))
    return _PoolExecutor(pool, None)


def thread_executor(work: Workload) -> Executor:
    """Threads of this process on its own tasks (tests; the sandbox still runs each program in a child)."""
    return _PoolExecutor(ThreadPoolExecutor(max_workers=max(1, work.workers)), work.tasks)


# ---------------------------------------------------------------------------------------------------------
# Ray (optional extra)

def _ray_evaluate(code: str, alpha: float, limits: Limits, repair: bool, specs: tuple[TaskSpec, ...],
                  cache_dir: str | None, fit_constants: bool = False) -> dict[str, Any]:
    """One Ray task: the search tasks are built once per Ray worker process (:func:`worker_tasks`, as the
    process pool's initializer does), then the same :func:`evaluate_program`, whose sandbox runs the program
    in a limited child process."""
    return evaluate_program(code, alpha, limits, worker_tasks(specs, cache_dir), repair, fit_constants)


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray, which is not installed", RAY_INSTALL) from None
    return ray


def probe_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at ``address``: ``ray.init`` would retry for minutes."""
    import socket

    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"Ray address '{address}' is not HOST:PORT", "give the head node's GCS address, e.g. "
                                                                    "10.0.0.5:6379, or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"cannot reach the Ray cluster at {address} ({e.strerror or e})", RAY_HINT) from None


def resolve_ray_address(requested: str | None) -> str | None:
    """What to pass to ``ray.init(address=...)``, or None to start a local instance. ``requested`` None means
    ``auto`` when RAY_ADDRESS is set, else local; ``auto`` means RAY_ADDRESS, else the last ``ray start`` on
    this machine. The cluster is probed first, so an unreachable one is a one-line error, not a long hang.
    ``auto`` is passed on as such: Ray then also picks up a local cluster's authentication token."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    address = requested or ("auto" if env else "local")
    if address == "local" or (address == "auto" and env == "local"):
        return None
    if address != "auto":
        probe_ray_address(address)
        return address
    if env and env != "auto":
        probe_ray_address(env)
        return address
    import_ray()
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die
    except ImportError:  # a Ray without this helper: ray.init looks the cluster up itself
        return address
    try:
        found = canonicalize_bootstrap_address_or_die("auto")
    except (ConnectionError, ValueError) as e:
        raise UserError(f"--ray-address auto: no running Ray cluster found ({str(e).splitlines()[0]})",
                        RAY_HINT) from None
    probe_ray_address(found)
    return address


def join_ray_cluster(target: str) -> None:
    """``ray.init`` on a cluster. Ray's core logs each failed attempt of its ~20 s connect window straight to
    file descriptor 2; those lines are caught, and on failure the last one is the reason given (e.g. a missing
    authentication token), so the error stays one line. On success they are passed on."""
    import logging
    import re
    import sys
    import tempfile

    ray = import_ray()
    with tempfile.TemporaryFile() as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            ray.init(address=target, logging_level=logging.ERROR, log_to_driver=False)
            failure: Exception | None = None
        except Exception as e:  # Ray raises many kinds here (ConnectionError, RayError, ValueError, ...)
            failure = e
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode(errors="replace")
    if failure is None:
        sys.stderr.write(text)
        return
    reasons = re.findall(r"\] \S+:\d+: (.+)", text) or [str(failure).strip().split("\n")[0]]
    raise UserError(f"cannot join the Ray cluster at {target}: {reasons[-1].strip()}", RAY_AUTH_HINT)


def check_ray(address: str | None) -> None:
    """Ray installed and its cluster reachable and willing (joined once, then left), else a one-line error;
    called before a run directory is created or a local LLM server started."""
    ray = import_ray()
    target = resolve_ray_address(address)
    if target is not None and not ray.is_initialized():
        join_ray_cluster(target)
        ray.shutdown()


class RayExecutor:
    """Fitness evaluations as Ray tasks: :meth:`evaluate` returns a ``concurrent.futures.Future``
    (``ObjectRef.future()``). Connects to a cluster, or starts a local instance with ``workers`` CPUs; shuts
    down only what it started (a Ray session opened before it is left alone). ``info`` describes the cluster
    for ``run.json``."""

    def __init__(self, work: Workload) -> None:
        import logging

        ray = import_ray()
        self._ray = ray
        self._owns = not ray.is_initialized()
        target = resolve_ray_address(work.ray_address) if self._owns else None
        if self._owns and target is not None:
            join_ray_cluster(target)
        elif self._owns:
            try:
                ray.init(num_cpus=max(1, work.workers), include_dashboard=False, object_store_memory=256 << 20,
                         logging_level=logging.ERROR, log_to_driver=False)
            except Exception as e:  # Ray raises many kinds here (RuntimeError, RayError, ValueError, ...)
                raise UserError(f"cannot start a local Ray instance: {str(e).strip().splitlines()[0]}",
                                "see /tmp/ray/session_latest/logs") from None
        self._remote = ray.remote(_ray_evaluate)
        self._specs = tuple(work.specs)
        self._cache_dir = work.cache_dir
        self._pending: list[tuple[Any, Future]] = []
        try:
            resources = ray.cluster_resources()
            self.info: dict[str, Any] = {
                "ray_version": ray.__version__, "ray_address": ray.get_runtime_context().gcs_address,
                "ray_started_here": self._owns and target is None,
                "ray_nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                "ray_resources": {k: v for k, v in sorted(resources.items()) if not k.startswith("node:")}}
        except BaseException:
            self.shutdown(wait=False)
            raise

    def evaluate(self, code: str, alpha: float, limits: Limits, repair: bool, fit_constants: bool = False
                 ) -> Future:
        """Submit one program's fitness evaluation (the references are kept until done, so none is freed)."""
        self._pending = [(r, f) for r, f in self._pending if not f.done()]
        ref = self._remote.remote(code, alpha, limits, repair, self._specs, self._cache_dir, fit_constants)
        fut = ref.future()
        self._pending.append((ref, fut))
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Cancel (or wait for) what is still running, then stop the Ray session this executor opened."""
        from concurrent.futures import wait as wait_all

        ray = self._ray
        if cancel_futures:
            for ref, fut in self._pending:
                if not fut.done():
                    try:
                        ray.cancel(ref)
                    except Exception:  # already finished, or the cluster is gone
                        pass
        elif wait:
            wait_all([f for _, f in self._pending])
        self._pending = []
        if self._owns and ray.is_initialized():
            ray.shutdown()


#: The executors by name (``--executor``), each built from a :class:`Workload`; the first is the default.
EXECUTORS: dict[str, Callable[[Workload], Executor]] = {
    "process": process_executor, "thread": thread_executor, "ray": RayExecutor}


def check_executor(name: str) -> None:
    """One-line error for a name that is not in :data:`EXECUTORS`."""
    if name not in EXECUTORS:
        raise UserError(f"unknown --executor '{name}'", f"use one of {', '.join(EXECUTORS)}")


def open_executor(name: str, work: Workload) -> Executor:
    """Start the executor ``name`` on ``work``; ``info`` gains its name and width, as ``run.json`` records."""
    check_executor(name)
    executor = EXECUTORS[name](work)
    executor.info = {"executor": name, "workers": max(1, work.workers), **executor.info}
    return executor
