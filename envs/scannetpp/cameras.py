"""A scene's own cameras: COLMAP text models and nerfstudio transforms, as TST Cameras (OpenCV axes, world z-up)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from tst.camera import Camera
from tst.errors import TSTError

from tst.envs.scannetpp.files import read_release_json, require_file, scene_dir

# nerfstudio's applied_transform for COLMAP data: world (x, y, z) -> (y, x, -z); it is its own inverse.
NERFSTUDIO_WORLD = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], dtype=np.float64)
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips camera y and z axes (right-multiplied)


def _pose_from_colmap(qvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """(4, 4) world_from_camera of a COLMAP image (its qvec/tvec are world-to-camera, OpenCV axes)."""
    w, x, y, z = np.asarray(qvec, float)
    rotation = Rotation.from_quat([x, y, z, w]).as_matrix()  # COLMAP stores [w, x, y, z]; scipy takes [x, y, z, w]
    pose = np.eye(4)
    pose[:3, :3] = rotation.T
    pose[:3, 3] = -rotation.T @ np.asarray(tvec, float)
    return pose


# COLMAP model name -> how its params start: "f" = (f, cx, cy, ...), "fxfy" = (fx, fy, cx, cy, ...)
_COLMAP_FOCAL = {"SIMPLE_PINHOLE": "f", "SIMPLE_RADIAL": "f", "RADIAL": "f", "SIMPLE_RADIAL_FISHEYE": "f",
                 "RADIAL_FISHEYE": "f", "PINHOLE": "fxfy", "OPENCV": "fxfy", "OPENCV_FISHEYE": "fxfy",
                 "FULL_OPENCV": "fxfy", "FOV": "fxfy", "THIN_PRISM_FISHEYE": "fxfy"}


def read_colmap_cameras(path: str | Path) -> dict[int, dict]:
    """cameras.txt -> {camera id: {model, width, height, K (3, 3), distortion (params after the intrinsics)}}."""
    path = require_file(Path(path), "COLMAP cameras")
    cameras = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            camera_id, model, width, height = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = np.array([float(p) for p in parts[4:]])
        except (IndexError, ValueError):
            raise TSTError(f"{path}:{number}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'") from None
        if model not in _COLMAP_FOCAL:
            raise TSTError(f"{path}:{number}: unknown camera model {model}; expected one of {', '.join(_COLMAP_FOCAL)}")
        if _COLMAP_FOCAL[model] == "f":
            fx = fy = params[0]
            cx, cy, rest = params[1], params[2], params[3:]
        else:
            fx, fy, cx, cy, rest = params[0], params[1], params[2], params[3], params[4:]
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        cameras[camera_id] = {"model": model, "width": width, "height": height, "K": K, "distortion": rest}
    return cameras


def colmap_cameras(colmap_dir: str | Path) -> list[tuple[str, Camera]]:
    """(image name, Camera) for every image of a COLMAP text model (cameras.txt + images.txt).

    images.txt: per image a line `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME` (world-to-camera) then a
    line of 2D points (possibly empty). The Camera holds the pinhole part (fx, fy, cx, cy) of the model;
    distorted models (OPENCV_FISHEYE for raw DSLR images) need `undistort_image` for exact pixels.
    """
    return [(name, camera) for name, camera, _ in colmap_images(colmap_dir)]


def colmap_images(colmap_dir: str | Path) -> list[tuple[str, Camera, dict]]:
    """(image name, Camera, its read_colmap_cameras entry) for every image of a COLMAP text model."""
    colmap_dir = Path(colmap_dir)
    intrinsics = read_colmap_cameras(colmap_dir / "cameras.txt")
    path = require_file(colmap_dir / "images.txt", "COLMAP images")
    lines = path.read_text().splitlines()
    result = []
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        number += 1
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            qvec = np.array([float(v) for v in parts[1:5]])
            tvec = np.array([float(v) for v in parts[5:8]])
            camera_id, name = int(parts[8]), " ".join(parts[9:])
        except (IndexError, ValueError):
            raise TSTError(f"{path}:{number}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'") from None
        if camera_id not in intrinsics:
            raise TSTError(f"{path}:{number}: camera {camera_id} is not in {colmap_dir / 'cameras.txt'}")
        number += 1  # the 2D points line that follows every image line
        camera = intrinsics[camera_id]
        result.append((name, Camera(camera["K"], camera["width"], camera["height"], _pose_from_colmap(qvec, tvec)),
                       camera))
    return result


def nerfstudio_intrinsics(data: dict, frame: dict | None = None) -> dict:
    """{model, width, height, K, distortion} of a transforms.json (a frame's own keys override the top level)."""
    frame = frame or {}

    def get(key: str, default: float | None = None) -> float:
        value = frame.get(key, data.get(key, default))
        if value is None:
            raise TSTError(f"transforms.json: missing '{key}'")
        return float(value)

    model = str(frame.get("camera_model", data.get("camera_model", "PINHOLE")))
    K = np.array([[get("fl_x"), 0.0, get("cx")], [0.0, get("fl_y"), get("cy")], [0.0, 0.0, 1.0]])
    keys = ("k1", "k2", "k3", "k4") if model == "OPENCV_FISHEYE" else ("k1", "k2", "p1", "p2")
    distortion = np.array([get(k, 0.0) for k in keys]) if model != "PINHOLE" else np.zeros(0)
    return {"model": model, "width": int(get("w")), "height": int(get("h")), "K": K, "distortion": distortion}


def nerfstudio_cameras(path: str | Path, include_test: bool = True) -> list[tuple[str, Camera]]:
    """(file_path, Camera) for `frames` (and `test_frames`) of a nerfstudio transforms.json.

    ScanNet++ writes transform_matrix as camera-to-world with OpenGL camera axes (x right, y up, z back)
    in nerfstudio's permuted world: the toolkit's `common/utils/nerfstudio.py` takes COLMAP's c2w, negates
    columns 1-2, swaps rows 0 and 1 and negates row 2. We undo that: world_from_camera =
    A^-1 @ T @ diag(1, -1, -1, 1), A = `applied_transform` when the file has it, else that permutation.
    """
    return [(name, camera) for name, camera, _ in nerfstudio_frames(path, include_test)]


def nerfstudio_frames(path: str | Path, include_test: bool = True) -> list[tuple[str, Camera, dict]]:
    """(file_path, Camera, its nerfstudio_intrinsics) for the frames of a transforms.json."""
    path = Path(path)
    data = read_release_json(path, "nerfstudio transforms")
    applied = np.eye(4)
    if "applied_transform" in data:
        applied[:3, :] = np.asarray(data["applied_transform"], float)[:3, :4]
    else:
        applied = NERFSTUDIO_WORLD
    world_from_ns = np.linalg.inv(applied)
    frames = list(data.get("frames", [])) + (list(data.get("test_frames", [])) if include_test else [])
    result = []
    for frame in frames:
        intrinsics = nerfstudio_intrinsics(data, frame)
        matrix = np.eye(4)
        matrix[:3, :] = np.asarray(frame["transform_matrix"], float)[:3, :4]
        pose = world_from_ns @ matrix @ OPENGL_TO_OPENCV
        result.append((str(frame["file_path"]),
                       Camera(intrinsics["K"], intrinsics["width"], intrinsics["height"], pose), intrinsics))
    return result


def device_cameras(root: str | Path, scene: str, device: str, source: str) -> list[tuple[str, Camera]]:
    """The scene's cameras of `device` (dslr | iphone) from <device>/nerfstudio/transforms.json
    ("nerfstudio") or <device>/colmap ("colmap")."""
    directory = scene_dir(root, scene) / device
    if source == "nerfstudio":
        return nerfstudio_cameras(directory / "nerfstudio" / "transforms.json")
    if source == "colmap":
        return colmap_cameras(directory / "colmap")
    raise TSTError(f"{device} cameras: source must be 'nerfstudio' or 'colmap', got {source!r}")


def dslr_cameras(root: str | Path, scene: str, source: str = "nerfstudio") -> list[tuple[str, Camera]]:
    return device_cameras(root, scene, "dslr", source)


def iphone_cameras(root: str | Path, scene: str, source: str = "colmap") -> list[tuple[str, Camera]]:
    return device_cameras(root, scene, "iphone", source)


# --------------------------------------------------------------------------- iPhone depth
