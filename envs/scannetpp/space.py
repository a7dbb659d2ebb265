"""`space=scannetpp`: a scene as a MeshSpace with its cameras as a pose source."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from tst.camera import Camera
from tst.errors import TSTError

from tst.envs.registry import space_name
from tst.envs.scannetpp.cameras import colmap_images, nerfstudio_frames
from tst.envs.scannetpp.files import GET_DATA, MESH_FILE, scene_dir
from tst.envs.scannetpp.images import pinhole_intrinsics, undistort_image
from tst.envs.scannetpp.labels import load_taxonomy
from tst.envs.scannetpp.mesh import load_scene_mesh

CAMERA_DEVICES = {"dslr": ("nerfstudio", "resized_images"), "iphone": ("colmap", "rgb")}  # default source, images


@functools.cache
def _scannetpp_space_class():
    from tst.envs.mesh_space import MeshSpace

    class ScannetppSpace(MeshSpace):
        """A ScanNet++ scene whose own DSLR or iPhone cameras (`scene_cameras`) and real images
        (`scene_image`, undistorted pinhole copies) are available to collect (`collect.poses=scene`)."""

        def __init__(self, *args, root: Path, scene: str, device: str, source: str, **kwargs):
            super().__init__(*args, **kwargs)
            self.root, self.scene, self.device, self.camera_source = root, scene, device, source
            self._cameras: dict[str, tuple[Camera, dict]] | None = None

        def _load_cameras(self) -> dict[str, tuple[Camera, dict]]:
            """name -> (pinhole Camera of the undistorted image, original intrinsics), read once."""
            if self._cameras is None:
                directory = scene_dir(self.root, self.scene) / self.device
                if self.camera_source == "nerfstudio":
                    frames = nerfstudio_frames(directory / "nerfstudio" / "transforms.json")
                else:
                    frames = colmap_images(directory / "colmap")
                cameras = {}
                for name, camera, intrinsics in frames:
                    model, distortion = intrinsics["model"], np.asarray(intrinsics["distortion"])
                    if model not in ("PINHOLE", "OPENCV", "OPENCV_FISHEYE") and not np.any(distortion):
                        model = "PINHOLE"
                    intrinsics = dict(intrinsics, model=model)
                    K = pinhole_intrinsics(camera.K, model, distortion, camera.width, camera.height)
                    cameras[name] = (Camera(K, camera.width, camera.height, camera.world_from_camera), intrinsics)
                self._cameras = cameras
            return self._cameras

        def scene_cameras(self) -> list[tuple[str, Camera]]:
            return [(name, camera) for name, (camera, _) in self._load_cameras().items()]

        def scene_image(self, name: str) -> np.ndarray | None:
            import cv2

            camera, intrinsics = self._load_cameras()[name]
            directory = scene_dir(self.root, self.scene) / self.device
            path = next((p for p in (directory / CAMERA_DEVICES[self.device][1] / name, directory / name)
                         if p.is_file()), None)
            if path is None:
                return None
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise TSTError(f"{self.device} image: cannot decode {path}; expected a JPEG or PNG")
            if image.shape[:2] != (camera.height, camera.width):
                raise TSTError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, its camera says "
                               f"{camera.width}x{camera.height}")
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            image, _ = undistort_image(image, intrinsics["K"], intrinsics["model"], intrinsics["distortion"])
            return image

    return ScannetppSpace


def build(cfg: DictConfig):
    """`space=scannetpp space.root=<release root> space.scene=<scene id>`: the scene as a MeshSpace.

    `space.cameras` (dslr | iphone, default dslr) and `space.camera_source` (nerfstudio | colmap; default
    nerfstudio for the DSLR, colmap for the iPhone) pick the scene's own cameras for `collect.poses=scene`.

    The space carries `unmapped_labels` ({raw label: annotated objects left unlabeled}) and `source_files`.
    """
    for key, hint in (("root", "the ScanNet++ release root (holding data/ and metadata/)"),
                      ("scene", "a scene id such as 0a5c013435")):
        if cfg.get(key) in (None, "", "???"):
            raise TSTError(f"space.{key}: missing; expected {hint} (space.{key}=...). {GET_DATA}")
    root, scene = Path(str(cfg.root)), str(cfg.scene)
    device = str(cfg.get("cameras") or "dslr")
    if device not in CAMERA_DEVICES:
        raise TSTError(f"space.cameras: expected one of {', '.join(CAMERA_DEVICES)}, got {device!r}")
    source = str(cfg.get("camera_source") or CAMERA_DEVICES[device][0])
    if source not in ("nerfstudio", "colmap"):
        raise TSTError(f"space.camera_source: expected nerfstudio or colmap, got {source!r}")
    scene_dir(root, scene)  # one-line error naming the missing folder first
    taxonomy = load_taxonomy(root)
    mesh, unmapped = load_scene_mesh(root, scene, taxonomy)
    if unmapped:
        from rich.console import Console

        total = sum(unmapped.values())
        top = ", ".join(f"{label} ({count})" for label, count in Counter(unmapped).most_common(8))
        Console(stderr=True, soft_wrap=True).print(
            f"scannetpp {scene}: {total} annotated objects with {len(unmapped)} labels outside the benchmark "
            f"classes are unlabeled: {top}", markup=False, highlight=False)
    space = _scannetpp_space_class()(space_name(cfg), mesh, taxonomy,
                                     int(cfg.get("nthreads", 0)), root=root, scene=scene, device=device, source=source)
    directory = root / "data" / scene
    space.source_files = {"mesh": directory / MESH_FILE, "segments": directory / "scans" / "segments.json",
                          "annotation": directory / "scans" / "segments_anno.json",
                          "classes": root / "metadata" / "semantic_benchmark" / "top100.txt"}
    space.unmapped_labels = unmapped
    return space
