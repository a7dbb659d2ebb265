"""Quick look-around cameras for previews: free positions, each turned towards open space."""

from __future__ import annotations

import math

import numpy as np

from tst.camera import Camera, intrinsics_from_fov, pose_from_yaw_pitch
from tst.errors import TSTError

from tst.envs.base import TestSpace

PROBE_SIZE = (24, 18)  # pixels of the low-resolution depth probe used to pick a heading
HEADINGS = 12


def preview_cameras(space: TestSpace, n: int, size: int, rng: np.random.Generator, hfov_deg: float = 90.0,
                    height_range: tuple[float, float] = (1.0, 1.6)) -> list[Camera]:
    """`n` square cameras of `size` pixels at free positions; each looks along whichever of 12
    headings sees the most open space (median probe depth, one of the best three at random), pitched
    slightly down."""
    if int(n) != n or n <= 0:
        raise TSTError(f"views: expected a positive integer number of views, got {n}")
    if int(size) != size or size <= 0:
        raise TSTError(f"size: expected a positive integer number of pixels, got {size}")
    positions = space.sample_positions(int(n), rng, height_range)
    probe_K = intrinsics_from_fov(*PROBE_SIZE, hfov_deg)
    K = intrinsics_from_fov(int(size), int(size), hfov_deg)
    cameras = []
    for position in positions:
        pitch = math.radians(rng.uniform(-20, 0))
        yaws = rng.uniform(0, 2 * math.pi) + np.arange(HEADINGS) * 2 * math.pi / HEADINGS
        openness = []
        for yaw in yaws:
            probe = Camera(probe_K, *PROBE_SIZE, pose_from_yaw_pitch(position, yaw, pitch))
            depth = space.render(probe, ("depth",))["depth"]
            openness.append(np.median(depth))
        yaw = yaws[rng.choice(np.argsort(openness)[-3:])]
        cameras.append(Camera(K, int(size), int(size), pose_from_yaw_pitch(position, yaw, pitch)))
    return cameras
