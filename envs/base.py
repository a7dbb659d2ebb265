"""The TestSpace API every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from tst.camera import Camera
from tst.errors import TSTError
from tst.frame import Frame
from tst.modalities import RENDERED
from tst.taxonomy import Taxonomy


def checked_height_range(height_range: tuple[float, float]) -> tuple[float, float]:
    """(low, high) metres above the floor; a one-line error unless 0 <= low <= high."""
    low, high = float(height_range[0]), float(height_range[1])
    if not 0 <= low <= high:
        raise TSTError(f"height_range: expected 0 <= low <= high metres, got [{low}, {high}]")
    return low, high


class TestSpace(ABC):
    """One environment an agent lives in.

    name: identifies the space in the workspace (e.g. "procedural-3").
    taxonomy: its class list. bounds: (2, 3) axis-aligned min/max corners, metres, z-up.
    """

    __test__ = False  # not a pytest test class despite the name

    name: str
    taxonomy: Taxonomy
    bounds: np.ndarray

    @abstractmethod
    def sample_positions(self, n: int, rng: np.random.Generator,
                         height_range: tuple[float, float] = (0.5, 1.8),
                         min_clearance: float = 0.3) -> np.ndarray:
        """(n, 3) camera positions in free space: above a floor, `height_range` metres above it,
        at least `min_clearance` metres from any geometry, never inside an object."""

    @abstractmethod
    def render(self, camera: Camera, modalities: tuple[str, ...] = RENDERED) -> Frame:
        """Render `modalities` seen by `camera` into a Frame."""

    def clearance(self, points: np.ndarray) -> np.ndarray:
        """(N,) metres from each of `points` (N, 3) to the nearest geometry (for navigation)."""
        raise NotImplementedError(f"{type(self).__name__} has no clearance query")

    def floor_heights(self, xy: np.ndarray) -> np.ndarray:
        """(N,) z of the walkable surface under each (x, y) of `xy` (N, 2), NaN where there is none."""
        raise NotImplementedError(f"{type(self).__name__} has no floor query")

    def region_at(self, point: np.ndarray) -> str | None:
        """The kind of room `point` (3,) is in ("kitchen", ...), when the space knows it."""
        return None

    def scene_cameras(self) -> list[tuple[str, Camera]]:
        """(name, Camera) of the space's own recorded cameras (e.g. a scan's DSLR poses); [] when it has none."""
        return []

    def scene_image(self, name: str) -> np.ndarray | None:
        """The real (H, W, 3) uint8 RGB image of scene camera `name`, pinhole (undistorted) and matching that
        camera's size and intrinsics, or None when the space has no such image."""
        return None

    def instance_materials(self) -> dict[int, str]:
        """instance id -> the name of its dominant material, when the space knows it."""
        return {}

    def close(self) -> None:
        """Release simulator or renderer resources."""

    def __enter__(self) -> TestSpace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
