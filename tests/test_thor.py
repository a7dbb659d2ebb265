"""AI2-THOR backend: event conversion and pose conversion without Unity (fake events mirror
ai2thor 5.0.0 `ai2thor.server.Event`: frame (H,W,3) uint8, depth_frame (H,W) float32 metres,
normals_frame (H,W,3) uint8, instance_segmentation_frame (H,W,3) uint8, color_to_object_id
{(r,g,b) tuple: objectId}, metadata dict)."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter

import numpy as np
import pytest
from omegaconf import OmegaConf

from tst.camera import Camera, intrinsics_from_fov, pose_from_yaw_pitch
from tst.errors import TSTError
from tst.taxonomy import INDOOR

from tst.envs import thor

H, W = 6, 8
SOFA_ID = "Sofa|+01.23|+00.00|-02.34"
VASE_ID = "Vase|-00.50|+00.80|+01.00"
SOFA, VASE, FLOOR = (10, 20, 30), (40, 50, 60), (70, 80, 90)


class FakeEvent:
    """The attributes of ai2thor.server.Event that the backend reads."""

    def __init__(self, metadata: dict, height: int = H, width: int = W):
        self.metadata = metadata
        self.screen_height, self.screen_width = height, width
        self.frame = np.zeros((height, width, 3), np.uint8)
        self.depth_frame = np.full((height, width), 2.5, np.float32)
        self.normals_frame = np.full((height, width, 3), 128, np.uint8)
        self.instance_segmentation_frame = np.zeros((height, width, 3), np.uint8)
        self.color_to_object_id: dict[tuple, str] = {}


def scene_event(height: int = H, width: int = W) -> FakeEvent:
    event = FakeEvent({"objects": [{"objectId": SOFA_ID, "objectType": "Sofa", "visible": True},
                                   {"objectId": VASE_ID, "objectType": "Vase", "visible": True}],
                       "lastActionSuccess": True}, height, width)
    seg = event.instance_segmentation_frame
    seg[:] = FLOOR
    seg[:3, :4] = SOFA
    seg[3:, 6:] = VASE
    event.color_to_object_id = {SOFA: SOFA_ID, VASE: VASE_ID, FLOOR: "Floor", (1, 2, 3): "Bed|1|2|3"}
    event.frame[..., 0] = 200
    event.depth_frame[0, 0] = np.inf
    # Unity view-space normal (0, 1, 0) (facing up in the image) encoded as n * 0.5 + 0.5
    event.normals_frame[:] = (128, 255, 128)
    return event


def camera(yaw_deg: float = 30.0, pitch_deg: float = -20.0, position=(1.0, 2.0, 1.5),
           width: int = W, height: int = H) -> Camera:
    pose = pose_from_yaw_pitch(np.array(position, float), math.radians(yaw_deg), math.radians(pitch_deg))
    return Camera(intrinsics_from_fov(width, height, 90.0), width, height, pose)


def test_event_to_frame_labels_depth_normals():
    unknown: Counter = Counter()
    ids: dict[str, int] = {}
    frame = thor.frame_from_event(scene_event(), camera(), instance_ids=ids, unknown=unknown)
    semantic, instance = frame["semantic"], frame["instance"]
    assert semantic.dtype == np.uint16 and instance.dtype == np.uint16 and semantic.shape == (H, W)
    assert (semantic[:3, :4] == INDOOR.id("sofa")).all()
    assert len(np.unique(instance[:3, :4])) == 1 and instance[0, 0] == ids[SOFA_ID] > 0
    assert (semantic[3:, 6:] == 0).all() and (instance[3:, 6:] == 0).all()  # Vase: unknown type
    assert unknown == Counter({"Vase": 1}) and frame.meta["unlabeled_thor_types"] == {"Vase": 1}
    assert semantic[5, 0] == INDOOR.id("floor") and instance[5, 0] not in (0, ids[SOFA_ID])
    assert frame["rgb"].dtype == np.uint8 and (frame["rgb"][..., 0] == 200).all()
    depth = frame["depth"]
    assert depth.dtype == np.float32 and depth[0, 0] == 0 and np.allclose(depth.ravel()[1:], 2.5)
    normals = frame["normals"]
    assert normals.dtype == np.float32 and np.allclose(normals[0, 0], [0, -1, 0], atol=0.01)
    # ids are stable across frames of one space
    again = thor.frame_from_event(scene_event(), camera(), instance_ids=ids)
    assert np.array_equal(again["instance"], instance)


def test_missing_modality_and_shape_errors():
    event = scene_event()
    event.normals_frame = None
    with pytest.raises(TSTError, match="normals_frame is missing"):
        thor.frame_from_event(event, camera())
    with pytest.raises(TSTError, match="the camera is"):
        thor.frame_from_event(scene_event(), camera(width=W * 2, height=H * 2))
    with pytest.raises(TSTError, match="cannot render"):
        thor.frame_from_event(scene_event(), camera(), modalities=("rgb", "caption"))


def test_mapping_targets_exist_in_taxonomy():
    assert set(thor.THOR_TO_INDOOR.values()) <= set(INDOOR.names)
    for thor_type, ours in [("Sofa", "sofa"), ("DiningTable", "table"), ("Bed", "bed"),
                            ("Fridge", "refrigerator"), ("Television", "tv"), ("Wall", "wall")]:
        assert thor.class_name_for(f"{thor_type}|1|2|3", {f"{thor_type}|1|2|3": thor_type}) == ours
    assert thor.class_name_for("wall|2|0.00|0.00|4.00|0.00", {}) == "wall"  # ProcTHOR structure id


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (30, -20), (135, 25), (-100, -59), (270, 30)])
def test_pose_round_trip(yaw, pitch):
    cam = camera(yaw, pitch)
    args = thor.teleport_args(cam, camera_above_agent=0.675)
    assert set(args) == {"x", "y", "z", "rotation", "horizon", "standing"}
    assert -30 <= args["horizon"] <= 60 and args["rotation"]["x"] == args["rotation"]["z"] == 0
    assert math.isclose(args["horizon"], -pitch, abs_tol=1e-9)
    back = thor.camera_from_teleport(args, 0.675, cam.K, cam.width, cam.height)
    assert np.allclose(back.world_from_camera, cam.world_from_camera, atol=1e-9)


def _unity_rotation(yaw: float, horizon: float) -> np.ndarray:
    """Unity's rotation for Euler (horizon, yaw, 0): R = Ry(yaw) Rx(horizon) (left-handed, degrees)."""
    a, b = math.radians(yaw), math.radians(horizon)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return ry @ rx


def test_known_point_projects_like_a_unity_camera():
    """Project a Unity point with Unity's own camera model (vertical FOV, y up, looking along local +z)
    and with our Camera built from the same THOR placement: same pixel."""
    width, height, vfov = 320, 240, 60.0
    yaw, horizon, cam_u = 57.0, 20.0, np.array([1.5, 1.575, -0.75])
    point_u = np.array([2.4, 0.7, 0.9])
    local = _unity_rotation(yaw, horizon).T @ (point_u - cam_u)  # x right, y up, z forward
    f = (height / 2) / math.tan(math.radians(vfov) / 2)
    expected = np.array([width / 2 + f * local[0] / local[2], height / 2 - f * local[1] / local[2]])

    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    pose = thor.camera_pose_from_thor(*cam_u, yaw, horizon)
    cam = Camera(K, width, height, pose)
    assert math.isclose(thor.vertical_fov(cam), vfov)
    p_cam = cam.rotation.T @ (thor.unity_to_world(point_u) - cam.position)
    pixel = (K @ p_cam)[:2] / p_cam[2]
    assert local[2] > 0 and np.allclose(pixel, expected, atol=1e-6)
    # depth (z along the optical axis) agrees too
    assert math.isclose(p_cam[2], local[2])


def test_pitch_outside_horizon_range_and_roll_error():
    with pytest.raises(TSTError, match="outside THOR's range"):
        thor.teleport_args(camera(pitch_deg=-65), 0.675)  # horizon 65 > 60
    with pytest.raises(TSTError, match="outside THOR's range"):
        thor.teleport_args(camera(pitch_deg=35), 0.675)  # horizon -35 < -30
    pose = pose_from_yaw_pitch(np.zeros(3), 0.3, 0.1, roll=0.2)
    rolled = Camera(intrinsics_from_fov(W, H, 90.0), W, H, pose)
    with pytest.raises(TSTError, match="cannot roll"):
        thor.teleport_args(rolled, 0.675)
    K = intrinsics_from_fov(W, H, 90.0)
    K[0, 2] += 2
    with pytest.raises(TSTError, match="principal point"):
        thor.vertical_fov(Camera(K, W, H, np.eye(4)))


class FakeController:
    """Mimics Controller.step / last_event for a tiny scene (Unity coordinates)."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.last_event = FakeEvent({"cameraPosition": {"x": 0, "y": 1.576, "z": 0},
                                     "agent": {"position": {"x": 0, "y": 0.901, "z": 0}},
                                     "objects": [{"objectId": SOFA_ID, "objectType": "Sofa"}],
                                     "lastActionSuccess": True})
        self.stopped = False

    def step(self, action=None, **args):
        self.calls.append((action, args))
        if action == "GetReachablePositions":
            grid = [{"x": x, "y": 0.901, "z": z} for x in (0.0, 0.25, 0.5) for z in (0.0, 0.25)]
            return FakeEvent({"actionReturn": grid, "lastActionSuccess": True})
        if action == "TeleportFull" and args["x"] > 10:
            return FakeEvent({"lastActionSuccess": False, "errorMessage": "not a valid position"})
        return scene_event()

    def stop(self):
        self.stopped = True


def test_space_with_fake_controller():
    controller = FakeController()
    space = thor.ThorSpace("FloorPlan201", controller)
    assert space.instance_ids == {SOFA_ID: 1} and math.isclose(space.camera_above_agent, 0.675)
    positions = space.sample_positions(4, np.random.default_rng(0))
    assert positions.shape == (4, 3) and np.allclose(positions[:, 2], 1.576)
    assert np.all(positions >= space.bounds[0] - 1e-9) and np.all(positions <= space.bounds[1] + 1e-9)
    cam = camera(40, -10, positions[0])
    frame = space.render(cam)
    assert frame["instance"][0, 0] == 1 and frame.meta["space"] == "FloorPlan201"
    action, args = controller.calls[-1]
    assert action == "TeleportFull" and math.isclose(args["y"], 0.901) and args["standing"] is True
    assert [c[0] for c in controller.calls[-3:-1]] == ["ChangeResolution", "ChangeFOV"]
    space.render(cam)
    assert controller.calls[-2][0] == "TeleportFull"  # size and FOV unchanged: no extra steps
    with pytest.raises(TSTError, match="THOR's camera stands at"):
        space.render(camera(40, -10, positions[0] + [0, 0, 0.5]))
    with pytest.raises(TSTError, match="TeleportFull failed: not a valid position"):
        space.render(camera(40, -10, [11.0, 0.0, 1.576]))
    with pytest.raises(TSTError, match="height_range"):
        space.sample_positions(2, np.random.default_rng(0), height_range=(0.2, 1.0))
    space.close()
    assert controller.stopped


def test_build_without_ai2thor(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ai2thor" else real(name, *a))
    with pytest.raises(TSTError, match=r"pip install -e '\.\[thor\]'"):
        thor.build(OmegaConf.create({"backend": "thor", "scene": "FloorPlan201"}))


def test_build_reports_controller_start_failure(monkeypatch, tmp_path):
    import sys
    import types

    class Broken:
        def __init__(self, **kwargs):
            raise RuntimeError("could not download build\nmore detail")

    package = types.ModuleType("ai2thor")
    package.__path__ = []
    module = types.ModuleType("ai2thor.controller")
    module.Controller = Broken
    monkeypatch.setitem(sys.modules, "ai2thor", package)
    monkeypatch.setitem(sys.modules, "ai2thor.controller", module)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "ai2thor" else real(name, *a))
    with pytest.raises(TSTError, match="could not start .RuntimeError: could not download build.") as info:
        thor.build(OmegaConf.create({"backend": "thor", "scene": "FloorPlan201"}))
    assert "\n" not in str(info.value)
    with pytest.raises(TSTError, match="space.house"):
        thor.build(OmegaConf.create({"backend": "thor", "house": str(tmp_path / "missing.json")}))


@pytest.mark.skipif(importlib.util.find_spec("ai2thor") is None, reason="ai2thor is not installed")
def test_real_controller_if_it_can_start():
    try:
        space = thor.build(OmegaConf.create({"backend": "thor", "scene": "FloorPlan201"}))
    except TSTError as error:
        pytest.skip(f"no AI2-THOR controller here: {error}")
    with space:
        position = space.sample_positions(1, np.random.default_rng(0))[0]
        frame = space.render(camera(0, 0, position, 64, 48))
        assert frame["rgb"].shape == (48, 64, 3) and frame["depth"].max() > 0
