"""The habitat-sim backend's pure parts, without habitat-sim: observation dicts -> Frames, labels through a
fake semantic scene, pose conversion; the real simulator only where habitat_sim imports."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from tst.camera import Camera, intrinsics_from_fov, look_at, pose_from_yaw_pitch
from tst.errors import TSTError
from tst.envs import habitat
from tst.envs.habitat import (
    COLOR, DEPTH, SEMANTIC, frame_from_observations, from_habitat_point, habitat_pose, hfov_degrees,
    normals_from_depth, quat_coeffs, rotation_from_quat, semantic_labels, to_habitat_point, tst_pose,
)

HAS_HABITAT = importlib.util.find_spec("habitat_sim") is not None


# A fake `sim.semantic_scene` of plain objects with habitat's attribute names.
class Category:
    def __init__(self, name: str):
        self._name = name

    def name(self, mapping: str = "") -> str:
        return self._name


class SemanticObject:
    def __init__(self, object_id: str, category: Category | None, semantic_id: int | None = None):
        self.id = object_id
        self.category = category
        if semantic_id is not None:
            self.semantic_id = semantic_id


class SemanticScene:
    def __init__(self, objects):
        self.objects = objects
        self.categories = sorted({o.category for o in objects if o and o.category}, key=id)


def fake_scene() -> SemanticScene:
    wall, chair, undefined = Category("wall"), Category("chair"), Category("undefined")
    return SemanticScene([
        SemanticObject("_0", wall),             # Replica style: id "_<n>", no semantic_id
        None,                                   # Replica leaves holes in its object list
        SemanticObject("_2", chair),
        SemanticObject("_3", undefined),        # an undefined class -> unlabeled
        SemanticObject("0_1_4", None, 4),       # no category -> unlabeled
        SemanticObject("1_2_9", chair, 7),      # HM3D style: semantic_id differs from the id's number
    ])


def _camera(width=8, height=6, hfov=90.0, pose=None) -> Camera:
    return Camera(intrinsics_from_fov(width, height, hfov), width, height, np.eye(4) if pose is None else pose)


def _observations(h=6, w=8):
    color = np.zeros((h, w, 4), np.uint8)
    color[..., 0], color[..., 1], color[..., 2], color[..., 3] = 10, 20, 30, 255
    depth = np.full((h, w), 2.0, np.float32)
    depth[0, 0] = 0.0  # nothing hit
    semantic = np.zeros((h, w), np.uint32)
    semantic[:, :2] = 2      # chair
    semantic[:, 2:4] = 3     # undefined
    semantic[:, 4:6] = 7     # chair again, another instance
    semantic[:, 6] = 4       # no category
    semantic[:, 7] = 500     # an id the scene does not know
    return {COLOR: color, DEPTH: depth, SEMANTIC: semantic}


def test_semantic_labels_map_ids_to_categories():
    taxonomy, lut = semantic_labels(fake_scene())
    assert taxonomy.names == ["unlabeled", "wall", "chair"]
    assert not taxonomy.is_thing(1) and taxonomy.is_thing(2)
    assert lut.dtype == np.uint16 and lut.tolist() == [1, 0, 2, 0, 0, 0, 0, 2]
    empty_taxonomy, empty_lut = semantic_labels(SemanticScene([]))
    assert empty_taxonomy.names == ["unlabeled"] and len(empty_lut) == 0


def test_frame_from_observations_has_our_units_and_labels():
    _, lut = semantic_labels(fake_scene())
    camera = _camera()
    frame = frame_from_observations(_observations(), camera, lut, meta={"space": "habitat-x"})
    assert frame.meta == {"space": "habitat-x"} and frame.camera is camera
    rgb = frame["rgb"]
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8 and rgb[1, 1].tolist() == [10, 20, 30]
    depth = frame["depth"]
    assert depth.dtype == np.float32 and depth[0, 0] == 0 and depth[3, 3] == 2.0
    semantic, instance = frame["semantic"], frame["instance"]
    assert semantic.dtype == np.uint16 and instance.dtype == np.uint16
    assert semantic[2, 0] == 2 and semantic[2, 4] == 2           # chairs
    assert semantic[2, 2] == 0 and semantic[2, 6] == 0 and semantic[2, 7] == 0  # undefined / none / unknown
    assert instance[2, 0] == 3 and instance[2, 4] == 8 and instance[2, 2] == 4  # semantic id + 1
    assert semantic[0, 0] == 0 and instance[0, 0] == 0          # no hit: nothing
    normals = frame["normals"]
    assert normals.shape == (6, 8, 3) and normals.dtype == np.float32
    np.testing.assert_allclose(normals[2, 3], [0, 0, -1], atol=1e-6)  # a wall facing the camera
    only = frame_from_observations(_observations(), camera, lut, modalities=("rgb", "depth"))
    assert set(only.modalities) == {"rgb", "depth"}


def test_bad_observations_give_one_line_errors():
    _, lut = semantic_labels(fake_scene())
    observations = _observations()
    observations[COLOR] = observations[COLOR].astype(np.float32)
    with pytest.raises(TSTError, match="uint8"):
        frame_from_observations(observations, _camera(), lut)
    with pytest.raises(TSTError, match=SEMANTIC):
        frame_from_observations({k: v for k, v in _observations().items() if k != SEMANTIC}, _camera(), lut)


def test_normals_from_a_tilted_plane():
    # Plane z = 2 + 0.5 x in the camera frame: its normal, facing the camera, is (0.5, 0, -1) normalised.
    width, height = 32, 24
    K = intrinsics_from_fov(width, height, 60.0)
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    rx = (u - K[0, 2]) / K[0, 0]
    depth = (2.0 / (1.0 - 0.5 * rx)).astype(np.float32)  # z = 2 + 0.5 * (rx * z)
    normals = normals_from_depth(depth, K)
    expected = np.array([0.5, 0.0, -1.0]) / math.sqrt(1.25)
    np.testing.assert_allclose(normals[5:-5, 5:-5].reshape(-1, 3), np.tile(expected, ((height - 10) * (width - 10), 1)),
                               atol=1e-3)
    assert np.all(normals[0] == 0) and np.all(normals[:, -1] == 0)  # borders: no neighbours


def test_pose_conversion_round_trip_and_axes():
    pose = pose_from_yaw_pitch(np.array([1.0, 2.0, 1.5]), yaw=0.7, pitch=-0.2, roll=0.1)
    position, rotation = habitat_pose(pose)
    np.testing.assert_allclose(tst_pose(position, rotation), pose, atol=1e-12)
    np.testing.assert_allclose(position, [1.0, 1.5, -2.0])  # (x, z, -y): height is habitat's +Y
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) > 0
    # A level camera looking along our +x: habitat's camera -Z is world +x, its +Y is world up (+Y).
    position, rotation = habitat_pose(look_at(np.zeros(3), np.array([1.0, 0.0, 0.0])))
    np.testing.assert_allclose(-rotation[:, 2], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(rotation[:, 1], [0, 1, 0], atol=1e-12)
    points = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(from_habitat_point(to_habitat_point(points)), points)
    np.testing.assert_allclose(to_habitat_point([0, 0, 1]), [0, 1, 0])  # our up is habitat's up


def test_quaternions_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pose = pose_from_yaw_pitch(np.zeros(3), *rng.uniform(-math.pi, math.pi, 3))
        _, rotation = habitat_pose(pose)
        coeffs = quat_coeffs(rotation)
        assert coeffs.shape == (4,) and math.isclose(np.linalg.norm(coeffs), 1.0)
        np.testing.assert_allclose(rotation_from_quat(coeffs), rotation, atol=1e-9)
    np.testing.assert_allclose(quat_coeffs(np.eye(3)), [0, 0, 0, 1])  # [x, y, z, w]


def test_hfov_and_non_pinhole_cameras():
    assert math.isclose(hfov_degrees(_camera(64, 48, 75.0)), 75.0)
    K = intrinsics_from_fov(64, 48, 75.0)
    K[1, 1] *= 1.2
    with pytest.raises(TSTError, match="square pixels"):
        hfov_degrees(Camera(K, 64, 48, np.eye(4)))
    K = intrinsics_from_fov(64, 48, 75.0)
    K[0, 2] += 3
    with pytest.raises(TSTError, match="principal point"):
        hfov_degrees(Camera(K, 64, 48, np.eye(4)))


@pytest.mark.skipif(HAS_HABITAT, reason="habitat_sim is installed here")
def test_not_installed_error_says_how_to_install():
    with pytest.raises(TSTError) as error:
        habitat.build(OmegaConf.create({"backend": "habitat", "scene": "x.glb"}))
    message = str(error.value)
    assert "\n" not in message and "conda" in message
    assert "conda install habitat-sim -c conda-forge -c aihabitat" in message


@pytest.mark.skipif(not HAS_HABITAT, reason="habitat_sim is a conda package, not installed here")
def test_real_simulator_renders_a_frame():  # pragma: no cover - needs habitat-sim and a scene
    import os

    scene = os.environ.get("TST_HABITAT_SCENE")
    if not scene:
        pytest.skip("set TST_HABITAT_SCENE to a .glb scene to run the real simulator")
    space = habitat.build(OmegaConf.create({"backend": "habitat", "scene": scene, "width": 64, "height": 48,
                                            "hfov": 90}))
    with space:
        point = space.sample_positions(1, np.random.default_rng(0))[0]
        frame = space.render(Camera(intrinsics_from_fov(64, 48, 90.0), 64, 48,
                                    pose_from_yaw_pitch(point, 0.0)))
        assert frame["rgb"].shape == (48, 64, 3) and frame["depth"].dtype == np.float32
