"""Agent trajectories: an agent walks between navigable positions with fixed forward steps and turns
(habitat / AI2-THOR style), giving video-like sequences of consecutive frames."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from tst.camera import Camera, intrinsics_from_fov, pose_from_yaw_pitch
from tst.errors import TSTError
from tst.envs.base import TestSpace


@dataclass(frozen=True)
class WalkSettings:
    """step_m / turn_deg: the agent's actions. camera_height: metres above the floor. radius: the
    agent's clearance to geometry (metres). pitch_deg: fixed camera pitch. frames_per_path: frames
    before the agent starts a new path elsewhere. cell: navigation grid resolution (metres)."""

    step_m: float = 0.25
    turn_deg: float = 10.0
    camera_height: float = 1.25
    radius: float = 0.2
    pitch_deg: float = -10.0
    frames_per_path: int = 40
    cell: float = 0.2
    hfov_deg: float = 75.0


class NavGrid:
    """Navigable floor cells of a space: a floor below, and `radius` of clearance from knee height up
    to the camera. Keeps the largest connected region; shortest paths over 8-connected cells."""

    def __init__(self, space: TestSpace, settings: WalkSettings, blocked: np.ndarray | None = None,
                 blocked_distance: float = 0.0):
        self.space, self.cell = space, settings.cell
        (x0, y0, _), (x1, y1, _) = space.bounds
        xs, ys = np.arange(x0 + self.cell / 2, x1, self.cell), np.arange(y0 + self.cell / 2, y1, self.cell)
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        xy = np.stack([gx.ravel(), gy.ravel()], 1)
        floor = space.floor_heights(xy)
        ok = ~np.isnan(floor)
        for height in (0.35, 0.8, settings.camera_height):
            points = np.concatenate([xy, (np.nan_to_num(floor) + height)[:, None]], 1)
            ok &= space.clearance(points) >= settings.radius
        if blocked is not None and len(blocked):  # keep away from another split's cameras
            ok &= cKDTree(blocked[:, :2]).query(xy)[0] >= blocked_distance
        labels, count = ndimage.label(ok.reshape(gx.shape), structure=np.ones((3, 3)))
        if count == 0:
            far = (f" at least {blocked_distance} m from the other split's cameras (collect.eval_min_distance)"
                   if blocked is not None and len(blocked) else "")
            raise TSTError(f"{space.name}: no navigable floor with {settings.radius} m clearance{far} for agent walks")
        largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
        self.free = labels == largest
        self.xy, self.floor = xy.reshape(*gx.shape, 2), floor.reshape(gx.shape)
        self.cells = np.argwhere(self.free)
        self._graph = self._adjacency()

    def _adjacency(self) -> sparse.csr_matrix:
        index = -np.ones(self.free.shape, int)
        index[self.free] = np.arange(len(self.cells))
        rows, cols, weights = [], [], []
        for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1)):
            a = self.cells
            b = a + (di, dj)
            inside = (b[:, 0] >= 0) & (b[:, 0] < self.free.shape[0]) & (b[:, 1] >= 0) & (b[:, 1] < self.free.shape[1])
            a, b = a[inside], b[inside]
            both = self.free[b[:, 0], b[:, 1]]
            if di and dj:  # no corner cutting past obstacles
                both &= self.free[a[:, 0] + di, a[:, 1]] & self.free[a[:, 0], a[:, 1] + dj]
            rows += list(index[a[both, 0], a[both, 1]])
            cols += list(index[b[both, 0], b[both, 1]])
            weights += [math.hypot(di, dj) * self.cell] * int(both.sum())
        n = len(self.cells)
        return sparse.coo_matrix((weights, (rows, cols)), shape=(n, n)).tocsr()

    def position(self, cell_index: int) -> np.ndarray:
        """(x, y, floor z) of a navigable cell's centre."""
        i, j = self.cells[cell_index]
        return np.array([*self.xy[i, j], self.floor[i, j]])

    def nearest(self, xy: np.ndarray) -> int:
        centres = self.xy[self.cells[:, 0], self.cells[:, 1]]
        return int(np.argmin(np.linalg.norm(centres - xy[:2], axis=1)))

    def path(self, start: int, goal: int) -> list[int]:
        """Cell indices of a shortest path from `start` to `goal` (both included)."""
        _, predecessors = dijkstra(self._graph, directed=False, indices=start, return_predecessors=True)
        if goal != start and predecessors[goal] < 0:
            return []
        route = [goal]
        while route[-1] != start:
            route.append(int(predecessors[route[-1]]))
        return route[::-1]


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _follow(poses: list, here: np.ndarray, heading: float, route: np.ndarray, space: TestSpace,
            settings: WalkSettings, turn: float) -> tuple[np.ndarray, float]:
    """Walk along `route` (K, 3 cell centres): aim at the first point at least one step ahead, turn
    by `turn` until facing it within half a turn, else step `step_m` forward. Appends (position,
    heading) per action; stops early if a step would leave the agent's clearance."""
    progress = 0
    while progress < len(route) - 1 or np.linalg.norm(route[-1][:2] - here[:2]) > settings.step_m:
        distances = np.linalg.norm(route[progress:, :2] - here[:2], axis=1)
        ahead = np.nonzero(distances >= settings.step_m)[0]
        if len(ahead) == 0:
            break
        progress += int(ahead[0])
        target = route[progress]
        difference = _wrap(math.atan2(target[1] - here[1], target[0] - here[0]) - heading)
        if abs(difference) > turn / 2:
            heading += math.copysign(turn, difference)
        else:
            step = np.array([here[0] + settings.step_m * math.cos(heading),
                             here[1] + settings.step_m * math.sin(heading), target[2]])
            eye = step + [0.0, 0.0, settings.camera_height]
            if space.clearance(eye[None])[0] < settings.radius / 2:
                break
            here = step
        poses.append((here, heading))
    return here, heading


def walk(grid: NavGrid, n: int, size: int, rng: np.random.Generator, settings: WalkSettings,
         first_path_id: int = 0, keep: Callable[[np.ndarray], bool] | None = None) -> list[tuple[Camera, int, int]]:
    """`n` frames (camera, path id, step) of an agent that walks shortest paths between random
    navigable cells, turning `turn_deg` or stepping `step_m` per frame; a new path (a new random
    start) every `frames_per_path` steps. `keep(pose)` (a (4, 4) camera pose) drops the steps whose view
    fails it (the view-quality rule), so a path's steps may have gaps."""
    if len(grid.cells) < 3:
        raise TSTError(f"{grid.space.name}: too little navigable floor for agent walks")
    K = intrinsics_from_fov(size, size, settings.hfov_deg)
    turn, pitch = math.radians(settings.turn_deg), math.radians(settings.pitch_deg)
    frames: list[tuple[Camera, int, int]] = []
    path_id = first_path_id
    fruitless = 0  # paths in a row that gave no frame
    while len(frames) < n:
        if fruitless >= 50:
            raise TSTError(f"{grid.space.name}: agent walks found only {len(frames)} of {n} views that pass the "
                           "view-quality rule (collect.views.min_view_depth, collect.views.max_class_share)")
        here = grid.position(int(rng.integers(len(grid.cells))))
        heading = turn * int(rng.integers(round(2 * math.pi / turn)))
        poses: list[tuple[np.ndarray, float]] = []
        for _ in range(100):  # routes; a blocked start may yield nothing, then a new start is drawn
            if len(poses) >= settings.frames_per_path:
                break
            route = grid.path(grid.nearest(here), int(rng.integers(len(grid.cells))))
            if len(route) < 2:
                continue
            route_points = np.array([grid.position(cell) for cell in route])
            here, heading = _follow(poses, here, heading, route_points, grid.space, settings, turn)
        before = len(frames)
        for step, (position, yaw) in enumerate(poses[:settings.frames_per_path]):
            pose = pose_from_yaw_pitch(position + [0.0, 0.0, settings.camera_height], yaw, pitch)
            if len(frames) < n and (keep is None or keep(pose)):
                frames.append((Camera(K, size, size, pose), path_id, step))
        fruitless = 0 if len(frames) > before else fruitless + 1
        path_id += 1
    return frames
