"""Scene photos: undistortion to a pinhole camera, and the DSLR image of a camera."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tst.camera import Camera
from tst.errors import TSTError

from tst.envs.scannetpp.cameras import nerfstudio_cameras, nerfstudio_intrinsics
from tst.envs.scannetpp.files import read_release_json, require_file, scene_dir


def pinhole_intrinsics(K: np.ndarray, model: str, distortion: np.ndarray, width: int, height: int) -> np.ndarray:
    """(3, 3) intrinsics of the pinhole copy `undistort_image` makes of a `model` image of that size."""
    import cv2

    K = np.asarray(K, np.float64)
    if model in ("PINHOLE", "OPENCV"):
        return K.copy()
    if model == "OPENCV_FISHEYE":
        new_K = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(
            K, np.asarray(distortion, np.float64), (width, height), np.eye(3), balance=0.0)
        new_K[0, 2], new_K[1, 2] = width / 2.0, height / 2.0
        return new_K
    raise TSTError(f"undistort_image: camera model {model} is not supported; expected PINHOLE, OPENCV or "
                   "OPENCV_FISHEYE")


def undistort_image(image: np.ndarray, K: np.ndarray, model: str,
                    distortion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A pinhole copy of a distorted image and its intrinsics (same size).

    OPENCV_FISHEYE follows the toolkit's `dslr/undistort.py` (balance 0, principal point at the centre);
    OPENCV keeps K. PINHOLE images come back unchanged.
    """
    import cv2

    height, width = image.shape[:2]
    K = np.asarray(K, np.float64)
    distortion = np.asarray(distortion, np.float64)
    if model == "PINHOLE":
        return image, K
    new_K = pinhole_intrinsics(K, model, distortion, width, height)
    if model == "OPENCV_FISHEYE":
        map1, map2 = cv2.fisheye.initUndistortRectifyMap(K, distortion, np.eye(3), new_K, (width, height),
                                                         cv2.CV_32FC1)
    else:
        map1, map2 = cv2.initUndistortRectifyMap(K, distortion, np.eye(3), new_K, (width, height), cv2.CV_32FC1)
    out = cv2.remap(image, map1, map2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out, new_K


def dslr_image(root: str | Path, scene: str, name: str, folder: str = "resized_images",
               undistort: bool = True) -> tuple[np.ndarray, Camera]:
    """A real DSLR image (H, W, 3) uint8 RGB and its Camera, from dslr/<folder>/<name> with the pose and
    intrinsics of dslr/nerfstudio/transforms.json (which describe resized_images). With `undistort`, a
    fisheye (OPENCV_FISHEYE) image is resampled to a pinhole copy whose K the returned Camera carries.
    """
    import cv2

    directory = scene_dir(root, scene) / "dslr"
    transforms_path = directory / "nerfstudio" / "transforms.json"
    data = read_release_json(transforms_path, "nerfstudio transforms")
    cameras = dict(nerfstudio_cameras(transforms_path))
    if name not in cameras:
        raise TSTError(f"{transforms_path}: no frame with file_path {name!r}")
    path = require_file(directory / folder / name, "DSLR image")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise TSTError(f"DSLR image: cannot decode {path}; expected a JPEG or PNG")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    frame = next(f for f in list(data.get("frames", [])) + list(data.get("test_frames", []))
                 if str(f["file_path"]) == name)
    intrinsics = nerfstudio_intrinsics(data, frame)
    if image.shape[:2] != (intrinsics["height"], intrinsics["width"]):
        raise TSTError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, transforms.json says "
                       f"{intrinsics['width']}x{intrinsics['height']}")
    camera = cameras[name]
    if undistort and intrinsics["model"] != "PINHOLE":
        image, new_K = undistort_image(image, intrinsics["K"], intrinsics["model"], intrinsics["distortion"])
        camera = Camera(new_K, camera.width, camera.height, camera.world_from_camera)
    return image, camera


# --------------------------------------------------------------------------- the space
