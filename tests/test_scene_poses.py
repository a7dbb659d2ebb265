"""collect.poses=scene: a ScanNet++ scene's own DSLR cameras as poses, its real images as rgb."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from tst.camera import Camera, look_at
from tst.orchestration.cli import main
from tst.collect.dataset import FrameDataset
from tst.collect.plan import PlannedFrame, square_camera, square_image
from tst.envs.scannetpp import build, undistort_image

from test_scannetpp import HEIGHT, K, SCENE, TABLE_CENTRE, WIDTH, _write_cameras, _write_release

POSITIONS = [(-1.5, -1.5, 1.4), (1.6, -1.5, 1.3), (1.5, 1.6, 1.5), (-1.4, 1.5, 1.2)]
NAMES = [f"DSC{i:05d}.JPG" for i in range(1, len(POSITIONS) + 1)]
DISTORTION = [0.01, -0.002, 0.0, 0.0]
SIZE = 32


def _transforms_frame(name: str, pose: np.ndarray) -> dict:
    c2w = pose.copy()  # as the toolkit's common/utils/nerfstudio.py converts COLMAP's camera-to-world
    c2w[0:3, 1:3] *= -1
    c2w = c2w[np.array([1, 0, 2, 3]), :]
    c2w[2, :] *= -1
    return {"file_path": name, "transform_matrix": c2w.tolist()}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = _write_release(tmp_path_factory.mktemp("scene-poses"))
    scene = root / "data" / SCENE
    _write_cameras(scene, look_at(np.array(POSITIONS[0]), TABLE_CENTRE))
    transforms = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": WIDTH, "h": HEIGHT,
                  "k1": DISTORTION[0], "k2": DISTORTION[1], "k3": 0.0, "k4": 0.0, "camera_model": "OPENCV_FISHEYE",
                  "frames": [_transforms_frame(name, look_at(np.array(position), TABLE_CENTRE))
                             for name, position in zip(NAMES, POSITIONS)],
                  "test_frames": []}
    (scene / "dslr" / "nerfstudio" / "transforms.json").write_text(json.dumps(transforms))
    images = scene / "dslr" / "resized_images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in NAMES[:-1]:  # the last camera has no image: its rgb stays rendered
        cv2.imwrite(str(images / name), rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    return root


def _expected_rgb(release: Path, name: str) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(release / "data" / SCENE / "dslr" / "resized_images" / name)),
                         cv2.COLOR_BGR2RGB)
    image, _ = undistort_image(image, K, "OPENCV_FISHEYE", np.array(DISTORTION))
    return square_image(image, SIZE)


def test_square_camera_matches_square_image():
    camera = Camera(K, WIDTH, HEIGHT, np.eye(4))
    square = square_camera(camera, SIZE)
    scale = SIZE / HEIGHT
    np.testing.assert_allclose(square.K, [[K[0, 0] * scale, 0, (K[0, 2] - 40) * scale],
                                          [0, K[1, 1] * scale, K[1, 2] * scale], [0, 0, 1]])
    assert (square.width, square.height) == (SIZE, SIZE)
    assert square_image(np.zeros((HEIGHT, WIDTH, 3), np.uint8), SIZE).shape == (SIZE, SIZE, 3)
    old = {"key": "eval_0000000", "split": "eval", "space": 0, "camera": camera.to_dict(), "path_id": -1, "step": 0}
    assert PlannedFrame.from_dict(old).source is None  # plan.json files without "source" still load


def test_collect_from_scene_cameras(release, tmp_path):
    out = tmp_path / "data"
    assert main(["collect", f"workspace_dir={tmp_path / 'ws'}", "space=scannetpp", f"space.root={release}",
                 f"space.scene={SCENE}", "space.nthreads=1", "collect.poses=scene", "collect.frames.pretrain=2",
                 "collect.frames.eval=1", "collect.frames.transfer=0", "collect.splits=[pretrain,eval]",
                 f"collect.size={SIZE}", "collect.workers=1", "collect.sheet_samples=1", "tracking.enabled=false",
                 f"data_dir={out}", "collect.modalities=[rgb,depth,semantic,instance]"]) == 0
    space = build(OmegaConf.create({"backend": "scannetpp", "root": str(release), "scene": SCENE, "nthreads": 1}))
    cameras = dict(space.scene_cameras())
    assert sorted(cameras) == NAMES
    seen = []
    for split in ("eval", "pretrain"):
        data = FrameDataset(out, split, ["rgb", "depth", "semantic"])
        assert len(data) == {"eval": 1, "pretrain": 2}[split]
        for i in range(len(data)):
            values = data.values(i)
            name = values["camera"]["source"]
            seen.append(name)
            expected = square_camera(cameras[name], SIZE)
            stored = Camera.from_dict(values["camera"])
            np.testing.assert_allclose(stored.K, expected.K)
            np.testing.assert_allclose(stored.world_from_camera, expected.world_from_camera)
            rendered = space.render(expected, ("rgb", "semantic"))
            np.testing.assert_array_equal(values["semantic"], rendered["semantic"])
            assert (values["semantic"] == space.taxonomy.id("table")).any()
            if name == NAMES[-1]:
                np.testing.assert_array_equal(values["rgb"], rendered["rgb"])
            else:
                np.testing.assert_array_equal(values["rgb"], _expected_rgb(release, name))
    assert len(set(seen)) == 3 and set(seen) <= set(NAMES)


def test_scene_poses_need_scene_cameras(tmp_path, capsys):
    code = main(["collect", f"workspace_dir={tmp_path}", "collect.poses=scene", "collect.frames.pretrain=2",
                 "collect.frames.eval=1", "collect.frames.transfer=0", "collect.splits=[pretrain,eval]",
                 "collect.size=16", "collect.workers=1", "tracking.enabled=false"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code != 0 and len(err) == 1 and "has no cameras of its own" in err[0] and "procedural-0" in err[0], err
