"""Pinhole cameras in the OpenCV convention (x right, y down, z forward); world is z-up, metres."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tst.errors import TSTError


@dataclass(frozen=True)
class Camera:
    """A pinhole camera.

    K: (3, 3) intrinsics in pixels. width, height: image size in pixels.
    world_from_camera: (4, 4) pose; its columns 0..2 are the camera's x (right), y (down),
    z (forward) axes in world coordinates and column 3 is the optical centre in metres.
    """

    K: np.ndarray
    width: int
    height: int
    world_from_camera: np.ndarray

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64)
        pose = np.asarray(self.world_from_camera, dtype=np.float64)
        if K.shape != (3, 3):
            raise TSTError(f"camera K: expected a 3x3 matrix, got shape {K.shape}")
        if pose.shape != (4, 4):
            raise TSTError(f"camera pose: expected a 4x4 matrix, got shape {pose.shape}")
        if not (np.all(np.isfinite(K)) and np.all(np.isfinite(pose))):
            raise TSTError("camera: intrinsics and pose must be finite (found NaN or inf)")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise TSTError(f"camera focal length: expected fx, fy > 0, got fx={K[0, 0]}, fy={K[1, 1]}")
        for name, value in (("width", self.width), ("height", self.height)):
            if int(value) != value or value <= 0:
                raise TSTError(f"camera {name}: expected a positive integer number of pixels, got {value}")
        rotation = pose[:3, :3]
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4):
            raise TSTError("camera pose: the rotation part is not orthonormal")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "world_from_camera", pose)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @property
    def position(self) -> np.ndarray:
        """Optical centre in world coordinates, (3,) metres."""
        return self.world_from_camera[:3, 3]

    @property
    def rotation(self) -> np.ndarray:
        """World-from-camera rotation, (3, 3)."""
        return self.world_from_camera[:3, :3]

    def to_dict(self) -> dict:
        return {
            "K": self.K.tolist(),
            "width": self.width,
            "height": self.height,
            "world_from_camera": self.world_from_camera.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Camera:
        return cls(np.array(data["K"]), data["width"], data["height"], np.array(data["world_from_camera"]))


def intrinsics_from_fov(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """(3, 3) pinhole intrinsics with square pixels and the principal point at the image centre."""
    if not 0 < hfov_deg < 180:
        raise TSTError(f"field of view: expected 0 < hfov < 180 degrees, got {hfov_deg}")
    focal = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def pose_from_yaw_pitch(position: np.ndarray, yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """(4, 4) world-from-camera pose of a camera at `position` (metres).

    yaw: radians about world +z, 0 looks along +x. pitch: radians, positive looks up.
    roll: radians about the viewing direction.
    """
    forward = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.cross(forward, right)
    if roll:
        c, s = math.cos(roll), math.sin(roll)
        right, down = c * right + s * down, -s * right + c * down
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
    return pose


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """(4, 4) world-from-camera pose at `position` looking at `target` (metres), image-up along `up`."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    norm = np.linalg.norm(forward)
    if norm == 0:
        raise TSTError("look_at: position and target coincide")
    forward /= norm
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:  # looking straight along `up`: any right axis will do
        right = np.cross(forward, np.array([1.0, 0.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
    return pose
