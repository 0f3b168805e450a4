# NOTE: core modules import nothing of tap_edge except tap_edge.core.
"""Many small tensor jobs on one worker thread per core, each worker at one OpenMP thread (PyTorch's intra-op
threads make small ops slower, not faster: they spin). torch is imported when the helpers are called."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def run_tasks(tasks: list[tuple[str, Callable[[], None]]], spent: dict[str, float] | None = None,
              workers: int | None = None) -> None:
    """Run ``tasks`` in order on one worker thread per core, each worker with one OpenMP thread (a per-thread
    setting); the first error is re-raised here. ``spent`` accumulates the seconds per task kind."""
    import torch

    todo: queue.SimpleQueue[tuple[str, Callable[[], None]]] = queue.SimpleQueue()
    for t in tasks:
        todo.put(t)
    errors: list[BaseException] = []
    spent = spent if spent is not None else {}

    def worker() -> None:
        torch.set_num_threads(1)
        while not errors:
            try:
                kind, fn = todo.get_nowait()
            except queue.Empty:
                return
            ts = time.perf_counter()
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
                return
            spent[kind] = spent.get(kind, 0.0) + time.perf_counter() - ts

    n = max(1, min(workers or torch.get_num_threads(), len(tasks)))
    threads = [threading.Thread(target=worker, name=f"tap-edge-worker-{w}", daemon=True) for w in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


@contextmanager
def worker_threads() -> Iterator[int]:
    """Yield the number of workers for :func:`run_tasks` (the caller's torch thread count) and keep the
    caller's own thread at one OpenMP thread meanwhile (its leftover small ops then cannot spin either)."""
    import torch

    workers = max(1, torch.get_num_threads())
    torch.set_num_threads(1)
    try:
        yield workers
    finally:
        torch.set_num_threads(workers)
