"""Omnidata-style view sampling: Poisson-disc positions in free space, each camera aimed at a point
of interest on an object, with a little roll; and the view-quality rule every sampled camera (views and
walks) must pass: no view that faces a nearby wall or shows little but one class."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from tst.camera import Camera, intrinsics_from_fov, pose_from_yaw_pitch
from tst.errors import TSTError
from tst.envs.base import TestSpace

PROBE = (32, 24)  # pixels of the low-resolution probe that aims and checks each view


@dataclass(frozen=True)
class ViewSettings:
    """height_range: metres above the floor. min_clearance: metres to any geometry. spacing: Poisson
    radius between cameras (metres; shrunk when the space is too small). pitch_deg: (min, max), positive
    looks up. roll_deg: max |roll|. min_view_depth: a view's median depth must exceed this (metres).
    hfov_deg: horizontal field of view. max_class_share: the largest share of a view's pixels one class
    may cover."""

    height_range: tuple[float, float] = (0.5, 1.8)
    min_clearance: float = 0.3
    spacing: float = 0.4
    pitch_deg: tuple[float, float] = (-35.0, 20.0)
    roll_deg: float = 5.0
    min_view_depth: float = 1.0
    hfov_deg: float = 75.0
    max_class_share: float = 0.9


def poisson_positions(space: TestSpace, n: int, rng: np.random.Generator, settings: ViewSettings,
                      avoid: np.ndarray | None = None, avoid_distance: float = 0.0,
                      near: np.ndarray | None = None, near_distance: float = 0.0) -> np.ndarray:
    """(n, 3) free positions at least `spacing` apart (dart throwing; the spacing shrinks by 20 % when
    darts stop landing), at least `avoid_distance` from every point of `avoid` (M, 3) and, when `near`
    (K, 3) is given, within `near_distance` (horizontally) of one of its points."""
    avoid_tree = cKDTree(avoid) if avoid is not None and len(avoid) else None
    near_tree = cKDTree(near[:, :2]) if near is not None and len(near) else None
    accepted: list[np.ndarray] = []
    spacing = settings.spacing
    misses = 0
    while len(accepted) < n:
        candidates = space.sample_positions(max(32, n), rng, settings.height_range, settings.min_clearance)
        if avoid_tree is not None:
            candidates = candidates[avoid_tree.query(candidates)[0] >= avoid_distance]
        if near_tree is not None:
            candidates = candidates[near_tree.query(candidates[:, :2])[0] <= near_distance]
        landed = 0
        for point in candidates:
            if accepted and np.min(np.linalg.norm(np.asarray(accepted) - point, axis=1)) < spacing:
                continue
            accepted.append(point)
            landed += 1
            if len(accepted) == n:
                break
        misses = misses + 1 if landed == 0 else 0
        if misses >= 3:
            spacing *= 0.8
            misses = 0
            if spacing < 1e-3:
                raise TSTError(f"{space.name}: cannot place {n} cameras at least {avoid_distance} m from the "
                               "other split; lower collect.eval_min_distance or the frame counts")
    return np.asarray(accepted)


def _probe(space: TestSpace, position: np.ndarray, yaw: float, pitch: float, roll: float,
           hfov_deg: float) -> dict[str, np.ndarray]:
    return probe_pose(space, pose_from_yaw_pitch(position, yaw, pitch, roll), hfov_deg)


def probe_pose(space: TestSpace, pose: np.ndarray, hfov_deg: float) -> dict[str, np.ndarray]:
    """Depth (H, W) metres and semantic (H, W) ids of a PROBE-sized render from a (4, 4) camera pose."""
    camera = Camera(intrinsics_from_fov(*PROBE, hfov_deg), *PROBE, pose)
    return space.render(camera, ("depth", "semantic")).modalities


def informative(probe: dict[str, np.ndarray], settings: ViewSettings) -> bool:
    """The view-quality rule: most of the view hits geometry, its median depth is at least
    min_view_depth (not a wall in the face), and no class covers more than max_class_share of it."""
    depth, semantic = probe["depth"], probe["semantic"]
    valid = depth > 0
    if valid.mean() <= 0.5 or np.median(depth[valid]) < settings.min_view_depth:
        return False
    return np.bincount(semantic.ravel().astype(np.int64)).max() <= settings.max_class_share * semantic.size


def aim(space: TestSpace, position: np.ndarray, rng: np.random.Generator, settings: ViewSettings,
        thing_ids: np.ndarray, attempts: int = 12) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) radians for a camera at `position` that looks at an object surface seen in
    a probe, pitch within limits, and passes the view-quality rule (`informative`); None if no attempt
    works."""
    low, high = (math.radians(p) for p in settings.pitch_deg)
    focal = (PROBE[0] / 2) / math.tan(math.radians(settings.hfov_deg) / 2)
    for _ in range(attempts):
        yaw = rng.uniform(0, 2 * math.pi)
        probe = _probe(space, position, yaw, 0.0, 0.0, settings.hfov_deg)
        objects = np.argwhere(np.isin(probe["semantic"], thing_ids) & (probe["depth"] > 0))
        pitch = rng.uniform(low, high)
        if len(objects):  # turn towards a random object pixel of the probe
            row, col = objects[rng.integers(len(objects))] + 0.5
            yaw -= math.atan2(col - PROBE[0] / 2, focal)
            pitch = float(np.clip(-math.atan2(row - PROBE[1] / 2, focal), low, high))
        roll = math.radians(rng.uniform(-settings.roll_deg, settings.roll_deg))
        if informative(_probe(space, position, yaw, pitch, roll, settings.hfov_deg), settings):
            return yaw, pitch, roll
    return None


def sample_views(space: TestSpace, n: int, size: int, rng: np.random.Generator, settings: ViewSettings,
                 avoid: np.ndarray | None = None, avoid_distance: float = 0.0,
                 near: np.ndarray | None = None, near_distance: float = 0.0) -> list[Camera]:
    """`n` cameras of `size` x `size` pixels (see the module docstring; `avoid` and `near` as in
    poisson_positions)."""
    K = intrinsics_from_fov(size, size, settings.hfov_deg)
    thing_ids = np.asarray(space.taxonomy.thing_ids)
    cameras: list[Camera] = []
    for _ in range(20):
        positions = poisson_positions(space, n - len(cameras), rng, settings, avoid, avoid_distance, near,
                                      near_distance)
        for position in positions:
            angles = aim(space, position, rng, settings, thing_ids)
            if angles is not None:
                cameras.append(Camera(K, size, size, pose_from_yaw_pitch(position, *angles)))
        if len(cameras) == n:
            return cameras
    raise TSTError(f"{space.name}: found only {len(cameras)} of {n} views that see something beyond "
                   f"{settings.min_view_depth} m with no class over {settings.max_class_share:.0%} of the view "
                   "(collect.views.min_view_depth, collect.views.max_class_share)")
