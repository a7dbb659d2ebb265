"""Where shards are rendered: this process, a pool of local worker processes, or a Ray cluster.

Every executor has one method, `run(units, settings)`, yielding each finished unit's frame count as it
completes; each worker process builds and caches its own spaces (its own renderer).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from typing import Iterator, Protocol

from tst.errors import TSTError

from tst.collect.worker import Settings, Unit, close_spaces, render_unit


class Executor(Protocol):
    def run(self, units: list[Unit], settings: Settings) -> Iterator[int]: ...


class InProcessExecutor:
    """Renders in the calling process (workers=1): simplest to debug."""

    def run(self, units: list[Unit], settings: Settings) -> Iterator[int]:
        try:
            for unit in units:
                yield render_unit(unit, settings)
        finally:
            close_spaces()


def die_with_parent(parent: int) -> None:
    """Pool initializer (and the encoding process's first step): a worker is killed when the process that
    started it dies, even by SIGKILL, so no orphan keeps writing shards into a dataset that a resumed run
    is completing. Linux's PR_SET_PDEATHSIG does this; elsewhere orphans finish their current shard."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _render_in_worker(job: tuple[Unit, Settings]) -> int:
    return render_unit(*job)


class LocalExecutor:
    """A pool of `workers` spawned processes on this machine."""

    def __init__(self, workers: int):
        self.workers = workers

    def run(self, units: list[Unit], settings: Settings) -> Iterator[int]:
        context = multiprocessing.get_context("spawn")  # open3d and OpenMP threads do not survive fork
        with context.Pool(self.workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            yield from pool.imap_unordered(_render_in_worker, [(unit, settings) for unit in units])


class RayExecutor:
    """Ray tasks, one per shard, on whatever cluster `ray.init(address)` joins ("auto" = an existing
    cluster, None = a local one). Shards go to `out`, which must be storage every node can write."""

    def __init__(self, address: str | None, workers: int):
        try:
            import ray
        except ImportError:
            raise TSTError("collect.executor=ray needs Ray: pip install 'test-space-training[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                     log_to_driver=False)

    def run(self, units: list[Unit], settings: Settings) -> Iterator[int]:
        remote = self.ray.remote(num_cpus=1)(render_unit)
        pending = [remote.remote(unit, settings) for unit in units]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])


def make_executor(kind: str, workers: int, ray_address: str | None) -> Executor:
    if kind == "local":
        return InProcessExecutor() if workers == 1 else LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(ray_address, workers)
    raise TSTError(f"collect.executor: expected local or ray, got {kind!r}")
