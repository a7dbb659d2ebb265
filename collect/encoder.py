"""Deriving and encoding frames beside the worker that renders them.

A collection worker with a core to spare (fewer workers than cores) hands each rendered frame to a helper
that derives its modalities (edges, boxes, caption) and encodes them while the worker renders the next
frame; results come back in submission order. The helper is a process of its own where the worker may
start one (the collecting process itself, or a benchmark's): open3d's ray cast and the Python of boxes and
captions hold the GIL, so a helper *thread* contended with the renderer (one worker on 2 cores, 128 px,
three paired `tst bench collect` runs: 0.63-0.74x the frames/s of rendering alone with a thread,
0.76-0.93x with a process). A pool
worker (a daemonic process, which may not start one) and a collection of a modality registered at run time
(which a new process would not know) keep the helper thread.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from tst.errors import TSTError
from tst.frame import Frame
from tst.taxonomy import Taxonomy

from tst.collect.plan import PlannedFrame

if TYPE_CHECKING:
    from tst.envs.base import TestSpace

    from tst.collect.worker import Settings

Members = dict[str, tuple[str, bytes]]  # modality -> (shard member name, encoded bytes) of one frame


@dataclass(frozen=True)
class SpaceFacts:
    """What deriving one frame reads from its space, picklable (a space holds a renderer): the space's
    name and taxonomy, its instance -> material names, and the kind of room the camera stands in."""

    name: str
    taxonomy: Taxonomy
    instance_materials: dict[int, str]
    region: str | None

    @classmethod
    def of(cls, space: TestSpace, planned: PlannedFrame) -> SpaceFacts:
        return cls(space.name, space.taxonomy, space.instance_materials(), space.region_at(planned.camera.position))


def _encode_frame(planned: PlannedFrame, frame: Frame, facts: SpaceFacts, settings: Settings) -> Members:
    from tst.collect.worker import encode_frame

    return encode_frame(planned, frame, facts, settings)


class ThreadEncoder:
    """The helper as a thread of this process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tst-encode")
        self.pending: deque[Future] = deque()

    def submit(self, planned: PlannedFrame, frame: Frame, facts: SpaceFacts) -> None:
        self.pending.append(self.pool.submit(_encode_frame, planned, frame, facts, self.settings))

    def result(self) -> Members:
        return self.pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _serve(jobs, results, settings: Settings, parent: int) -> None:
    """The helper process: encode each job as it comes; (True, members) or (False, error line) back."""
    from tst.collect.executors import die_with_parent

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle: it closes this process
    while (job := jobs.get()) is not None:
        try:
            results.put((True, _encode_frame(*job, settings)))
        except Exception as error:  # reported to the worker, which raises it there
            results.put((False, f"{type(error).__name__}: {error}"))


class ProcessEncoder:
    """The helper as a spawned process (see the module docstring). At most `ahead` + 1 frames wait in its
    queue, so a fast renderer cannot fill memory with frames."""

    POLL_SECONDS = 0.5  # how often a worker waiting for a result checks that the helper is alive

    def __init__(self, settings: Settings):
        context = multiprocessing.get_context("spawn")  # open3d and OpenMP threads do not survive fork
        self.settings = settings
        self.jobs, self.results = context.Queue(settings.encode_ahead + 1), context.Queue()
        self.process = context.Process(target=_serve, args=(self.jobs, self.results, settings, os.getpid()),
                                       name="tst-encode", daemon=True)
        self.process.start()
        self.waiting = 0

    def submit(self, planned: PlannedFrame, frame: Frame, facts: SpaceFacts) -> None:
        self.jobs.put((planned, frame, facts))
        self.waiting += 1

    def result(self) -> Members:
        while True:
            try:
                ok, value = self.results.get(timeout=self.POLL_SECONDS)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    raise TSTError(f"collect: the encoding process died (exit code {self.process.exitcode})") from None
        self.waiting -= 1
        if not ok:
            raise TSTError(f"collect: encoding a frame failed: {value}")
        return value

    def close(self) -> None:
        """Stop the helper: at once when frames are still in it (a shard that failed or was interrupted),
        else after it has taken the stop sign."""
        if self.process.is_alive() and self.waiting == 0:
            self.jobs.put(None)
            self.process.join(timeout=self.POLL_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        # Frames still buffered for a dead helper would block the queue's feeder thread, and this close, forever.
        self.jobs.cancel_join_thread()
        for channel in (self.jobs, self.results):
            channel.close()


def helper_kind(settings: Settings) -> Callable[[Settings], ThreadEncoder | ProcessEncoder]:
    """ProcessEncoder where this process may start one and the new process would know every modality of
    `settings` (a modality registered at run time exists in this process only), else ThreadEncoder."""
    from tst.modalities import BUILT_IN

    known = set(settings.modalities) <= BUILT_IN
    return ProcessEncoder if known and not multiprocessing.current_process().daemon else ThreadEncoder
