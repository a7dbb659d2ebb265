"""Observations for the agent loop, rendered in a separate process so that rendering the next one
overlaps inference on the current one (the renderer's numba kernels hold the GIL, so a thread would not).

The render process builds the space once, plans the agent's path (the collect stage's walks on a
navigation grid kept `avoid_distance` metres away from every pretraining camera, so the agent never
retraces pretraining paths), and on request renders a step: the observation (uint8 RGB, depth) and its
truth (semantic map, boxes of the visible things, a caption) derived as the collect stage derives them.
For online TST it also renders the sensor modalities pretraining reads (normals, edges from the RGB) and
the camera, in the values the collect stage stores.
"""

from __future__ import annotations

import multiprocessing
import time
import zlib
from dataclasses import dataclass

import numpy as np
from omegaconf import OmegaConf

from tst.errors import TSTError
from tst.modalities import MODALITIES, RENDERED

STEP_MODALITIES = ("rgb", "depth", "semantic", "instance")  # rendered at every step


@dataclass
class PathSettings:
    """What the render process needs: the space config, frames (size px, hfov), the walk settings of the
    collect config, pretraining camera positions (N, 3) to avoid, and the seed of the path."""

    space: dict
    size: int
    walks: dict
    hfov_deg: float
    steps: int
    seed: int
    avoid: np.ndarray | None
    avoid_distance: float
    min_box_pixels: int
    sensors: tuple[str, ...] = ()  # online TST: sensor modalities stored per step (Observation.sensors)
    edges: tuple[float, float] = (100.0, 200.0)  # Canny thresholds of the edges modality (collect.edges)


@dataclass
class Observation:
    """A rendered step. rgb (S, S, 3) uint8, depth (S, S) float32 metres; truth: semantic (S, S) int64,
    boxes (N, 4) float32 pixels, box_classes (N,) int64, caption str; render_s: seconds spent rendering
    and deriving it; position (3,) metres; sensors: PathSettings.sensors' values as collect stores them,
    plus "camera" (its dict), when online TST asked for them."""

    step: int
    rgb: np.ndarray
    depth: np.ndarray
    semantic: np.ndarray
    boxes: np.ndarray
    box_classes: np.ndarray
    caption: str
    render_s: float
    position: np.ndarray
    sensors: dict | None = None


def _plan(space, settings: PathSettings) -> list:
    from tst.collect.trajectories import NavGrid, WalkSettings, walk

    walks = WalkSettings(**{k: v for k, v in settings.walks.items() if k in WalkSettings.__dataclass_fields__},
                         hfov_deg=settings.hfov_deg)
    grid = NavGrid(space, walks, settings.avoid, settings.avoid_distance)
    rng = np.random.default_rng([settings.seed, 7])
    return [camera for camera, _, _ in walk(grid, settings.steps, settings.size, rng, walks, 50_000)]


def render_step(space, camera, step: int, settings: PathSettings) -> Observation:
    from tst.collect.captions import make_caption, visible_objects
    from tst.collect.derive import instance_boxes

    start = time.perf_counter()
    frame = space.render(camera, tuple(dict.fromkeys(STEP_MODALITIES + tuple(m for m in settings.sensors
                                                                         if m in RENDERED))))
    rgb, depth, semantic, instance = (frame[m] for m in STEP_MODALITIES)
    boxes = instance_boxes(semantic, instance, space.taxonomy, settings.min_box_pixels)
    objects = visible_objects(rgb, depth, boxes, space.taxonomy, instance, space.instance_materials())
    rng = np.random.default_rng([settings.seed, zlib.crc32(f"deploy_{step:07d}".encode())])
    caption = make_caption(objects, space.region_at(camera.position), rng)
    box_array = np.array([b[2:6] for b in boxes], np.float32).reshape(-1, 4)
    classes = np.array([b[0] for b in boxes], np.int64)
    sensors = None
    if settings.sensors:
        sensors = {m: frame[m] if m in RENDERED else MODALITIES[m].derive(frame.modalities, settings)
                   for m in settings.sensors}
        sensors["camera"] = {**camera.to_dict(), "space": space.name, "split": "pretrain", "path_id": 0, "step": step}
    return Observation(step, rgb, depth, semantic.astype(np.int64), box_array, classes, caption,
                       time.perf_counter() - start, np.asarray(camera.position), sensors)


def _serve(settings: PathSettings, requests, replies) -> None:
    """The render process: build, plan, then answer step requests until None arrives."""
    from tst.envs.registry import make_space

    try:
        space = make_space(OmegaConf.create(dict(settings.space, nthreads=1)))
        cameras = _plan(space, settings)
        replies.put(("ready", space.taxonomy.to_dict()))
        while (step := requests.get()) is not None:
            replies.put(("frame", render_step(space, cameras[step], step, settings)))
        space.close()
    except Exception as error:  # reported to the parent, which raises it as one line
        replies.put(("error", f"{type(error).__name__}: {error}"))


class RenderProcess:
    """A spawned process rendering path steps on request: submit(step), then get() -> Observation."""

    def __init__(self, settings: PathSettings, timeout_s: float = 600.0):
        context = multiprocessing.get_context("spawn")
        self.requests, self.replies = context.Queue(), context.Queue()
        self.process = context.Process(target=_serve, args=(settings, self.requests, self.replies), daemon=True)
        self.timeout_s = timeout_s
        self.process.start()
        self.taxonomy = self._reply("ready")

    def _reply(self, kind: str):
        got, value = self.replies.get(timeout=self.timeout_s)
        if got == "error":
            raise TSTError(f"render process: {value}")
        if got != kind:
            raise TSTError(f"render process: expected {kind}, got {got}")
        return value

    def submit(self, step: int) -> None:
        self.requests.put(step)

    def get(self) -> Observation:
        return self._reply("frame")

    def close(self) -> None:
        if self.process.is_alive():
            self.requests.put(None)
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()

    def __enter__(self) -> "RenderProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
