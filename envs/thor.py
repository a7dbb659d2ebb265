"""AI2-THOR / ProcTHOR as a test space (`space=thor space.scene=FloorPlan201` or `space.house=<house.json>`).

The simulator is driven through a thin layer (`ThorSpace`); everything else is pure functions that are
tested without Unity: the pose conversion and the event -> Frame conversion.

Coordinate conventions
----------------------
Unity (THOR) is y-up and left-handed, metres. Our world is z-up and right-handed, metres. We map

    world (x, y, z) = unity (x, z, y)          (swapping two axes flips handedness; the map is its own inverse)

THOR's agent camera has three degrees of freedom besides its position:
  * yaw = rotation.y, degrees, about Unity +y; yaw 0 looks along Unity +z, yaw 90 along Unity +x. In our
    world the forward direction is (sin yaw, cos yaw, 0), i.e. our yaw (radians about +z from +x, as in
    `tst.camera.pose_from_yaw_pitch`) is 90 deg - yaw.
  * horizon = cameraHorizon, degrees, positive looks DOWN; our pitch (positive looks up) is -horizon.
    THOR accepts horizons within -30..60 for the standing default agent.
  * no roll.
THOR's `fieldOfView` is Unity's `Camera.fieldOfView` (the agent script assigns it directly), which is the
VERTICAL field of view in degrees; our intrinsics must have square pixels and a centred principal point.
The camera sits a fixed height above the agent's position (`metadata["cameraPosition"].y -
metadata["agent"]["position"].y`, read at start-up), so a camera height is not free: `sample_positions`
returns THOR's reachable grid at that height and `render` refuses other heights.

Event conversion (attribute names and dtypes as in ai2thor 5.0.0 `ai2thor/server.py`, `Event`):
  * frame: (H, W, 3) uint8 RGB  -> rgb.
  * depth_frame: (H, W) float32 metres (DepthFormat.Meters, the Controller default), z-depth (the
    shader writes COMPUTE_DEPTH_01, linear eye depth / far plane)  -> depth; non-finite or <= 0 -> 0.
  * normals_frame: (H, W, 3) uint8, view-space normal encoded as n * 0.5 + 0.5 (Unity view space: x right,
    y up, camera looking along -z)  -> normals in the OpenCV camera frame (x, -y, -z), renormalised.
  * instance_segmentation_frame: (H, W, 3) uint8 colours; color_to_object_id: {(r, g, b) tuple of ints:
    objectId or structure name}; metadata["objects"]: [{objectId, objectType, ...}]  -> semantic (our
    INDOOR taxonomy via THOR_TO_INDOOR on objectType) and instance (ids stable per objectId per space).
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from tst.camera import Camera, pose_from_yaw_pitch
from tst.errors import TSTError
from tst.frame import Frame
from tst.modalities import RENDERED
from tst.taxonomy import INDOOR, Taxonomy

from tst.envs.base import TestSpace
from tst.envs.registry import space_name

INSTALL_HINT = "pip install -e '.[thor]'; it downloads a Unity build on first use and needs Vulkan or an X server"
HORIZON_RANGE = (-30.0, 60.0)  # degrees THOR accepts for the standing default agent
# Height of THOR's default agent position above its floor (the capsule centre; iTHOR reachable positions
# have y ~= 0.90 over floors at y = 0). Used only to check `height_range`; approximate.
AGENT_ABOVE_FLOOR = 0.9
POSE_TOLERANCE = 1e-4  # of rotation entries, when checking that a camera has no roll
HEIGHT_TOLERANCE = 0.05  # metres a requested camera height may differ from THOR's fixed one

# THOR objectType (and structure names) -> class name in tst.taxonomy.INDOOR. Keys are matched
# case-insensitively; types not listed here are rendered as `unlabeled` and counted.
THOR_TO_INDOOR: dict[str, str] = {
    # structure
    "Floor": "floor", "Wall": "wall", "Ceiling": "ceiling", "Window": "window",
    "Doorway": "door", "Doorframe": "doorframe", "Door": "door",
    "room": "floor",  # ProcTHOR names floor polygons "room|<id>" (structure, no objectType)
    # furniture and objects
    "Sofa": "sofa", "ArmChair": "armchair", "Chair": "chair", "Bed": "bed", "Pillow": "pillow",
    "DiningTable": "table", "CoffeeTable": "table", "SideTable": "table", "Desk": "desk",
    "Cabinet": "cabinet", "Dresser": "cabinet", "Drawer": "cabinet", "CounterTop": "kitchen counter",
    "ShelvingUnit": "bookshelf", "Book": "book", "DeskLamp": "table lamp", "FloorLamp": "floor lamp",
    "Television": "tv", "HousePlant": "plant", "Toilet": "toilet", "Sink": "sink", "SinkBasin": "sink",
    "Bathtub": "bathtub", "BathtubBasin": "bathtub", "Fridge": "refrigerator", "Microwave": "microwave",
    "GarbageCan": "trash can", "Painting": "picture", "Poster": "picture", "Towel": "towel",
    "HandTowel": "towel", "Curtains": "curtain", "ShowerCurtain": "curtain",
}
_TYPE_KEYS = {key.lower(): name for key, name in THOR_TO_INDOOR.items()}


# ---------------------------------------------------------------------------------------------- poses

def unity_to_world(points: np.ndarray) -> np.ndarray:
    """(..., 3) Unity (x, y-up, z) -> our z-up world (x, z, y). Its own inverse."""
    points = np.asarray(points, dtype=np.float64)
    return points[..., [0, 2, 1]]


world_to_unity = unity_to_world


def thor_view_from_camera(camera: Camera) -> dict[str, float]:
    """THOR camera placement for our `camera`: Unity camera position (x, y, z), yaw (rotation.y) and
    horizon, degrees. One-line TSTError for a camera THOR cannot reproduce (roll, pitch outside the
    horizon range)."""
    R = camera.rotation
    forward = R[:, 2]
    pitch = math.asin(max(-1.0, min(1.0, forward[2])))
    horizon = -math.degrees(pitch)
    low, high = HORIZON_RANGE
    if not low - 1e-6 <= horizon <= high + 1e-6:
        raise TSTError(f"thor camera: pitch {-horizon:.1f} deg is outside THOR's range "
                       f"{-high:.0f}..{-low:.0f} deg (horizon {low:.0f}..{high:.0f}, positive looks down)")
    horizon = min(max(horizon, low), high)
    our_yaw = math.atan2(forward[1], forward[0])
    expected = pose_from_yaw_pitch(camera.position, our_yaw, pitch)[:3, :3]
    if not np.allclose(R, expected, atol=POSE_TOLERANCE):
        raise TSTError("thor camera: THOR cameras cannot roll (the image x axis must stay horizontal)")
    yaw = (90.0 - math.degrees(our_yaw)) % 360.0
    x, y, z = world_to_unity(camera.position)
    return {"x": float(x), "y": float(y), "z": float(z), "yaw": yaw, "horizon": horizon}


def camera_pose_from_thor(x: float, y: float, z: float, yaw: float, horizon: float) -> np.ndarray:
    """(4, 4) world-from-camera pose (OpenCV axes, z-up world) of a THOR camera at Unity (x, y, z) with
    rotation.y = `yaw` and cameraHorizon = `horizon` (degrees)."""
    return pose_from_yaw_pitch(unity_to_world([x, y, z]), math.radians(90.0 - yaw), -math.radians(horizon))


def vertical_fov(camera: Camera) -> float:
    """THOR's fieldOfView (vertical, degrees) for `camera`; TSTError unless pixels are square and the
    principal point is the image centre (THOR renders only such cameras)."""
    K = camera.K
    if abs(K[0, 0] - K[1, 1]) > 1e-6 * K[0, 0] or abs(K[0, 1]) > 1e-9:
        raise TSTError(f"thor camera: THOR renders square pixels only (got fx={K[0, 0]}, fy={K[1, 1]}, "
                       f"skew={K[0, 1]})")
    if abs(K[0, 2] - camera.width / 2) > 0.5 or abs(K[1, 2] - camera.height / 2) > 0.5:
        raise TSTError(f"thor camera: THOR needs the principal point at the image centre "
                       f"({camera.width / 2}, {camera.height / 2}), got ({K[0, 2]}, {K[1, 2]})")
    return math.degrees(2.0 * math.atan(camera.height / 2.0 / K[1, 1]))


def teleport_args(camera: Camera, camera_above_agent: float) -> dict[str, Any]:
    """Keyword arguments of `controller.step("TeleportFull", ...)` placing THOR's camera at `camera`
    (the agent stands `camera_above_agent` metres below its camera)."""
    view = thor_view_from_camera(camera)
    return {"x": view["x"], "y": view["y"] - camera_above_agent, "z": view["z"],
            "rotation": {"x": 0.0, "y": view["yaw"], "z": 0.0}, "horizon": view["horizon"], "standing": True}


def camera_from_teleport(args: dict[str, Any], camera_above_agent: float, K: np.ndarray,
                         width: int, height: int) -> Camera:
    """The Camera THOR renders after `TeleportFull(**args)` (inverse of `teleport_args`)."""
    pose = camera_pose_from_thor(args["x"], args["y"] + camera_above_agent, args["z"],
                                 args["rotation"]["y"], args["horizon"])
    return Camera(K, width, height, pose)


# ------------------------------------------------------------------------------------------ events

def class_name_for(object_id: str, object_types: dict[str, str]) -> str | None:
    """Our class name for a THOR objectId (or structure name such as "Floor", "wall|2|..."), None when
    its type is not in THOR_TO_INDOOR."""
    object_type = object_types.get(object_id) or object_id.split("|")[0]
    return _TYPE_KEYS.get(object_type.lower())


def object_type_of(object_id: str, object_types: dict[str, str]) -> str:
    return object_types.get(object_id) or object_id.split("|")[0]


def _colour_codes(colours: np.ndarray) -> np.ndarray:
    colours = colours.astype(np.uint32)
    return (colours[..., 0] << 16) | (colours[..., 1] << 8) | colours[..., 2]


def segment_event(instance_frame: np.ndarray, color_to_object_id: dict, objects: list[dict],
                  taxonomy: Taxonomy, instance_ids: dict[str, int],
                  unknown: Counter | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(semantic, instance) uint16 (H, W) maps from THOR's colour-coded instance frame.

    instance_ids: objectId -> our instance id; ids for objects seen for the first time are added
    (so they stay stable across frames of one space). unknown: counts, per THOR type, the objects
    rendered as `unlabeled` in this frame.
    """
    frame = np.asarray(instance_frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise TSTError(f"thor event: instance_segmentation_frame must be (H, W, 3), got {frame.shape}")
    object_types = {o["objectId"]: o.get("objectType", "") for o in objects}
    codes = _colour_codes(frame[..., :3])
    present, inverse = np.unique(codes.ravel(), return_inverse=True)
    by_code = {}
    for colour, object_id in color_to_object_id.items():
        r, g, b = (int(c) for c in tuple(colour)[:3])
        by_code[(r << 16) | (g << 8) | b] = str(object_id)
    semantic_lut = np.zeros(len(present), np.uint16)
    instance_lut = np.zeros(len(present), np.uint16)
    for index, code in enumerate(present.tolist()):
        object_id = by_code.get(code)
        if object_id is None:
            continue
        name = class_name_for(object_id, object_types)
        if name is None or name not in taxonomy.names:
            if unknown is not None:
                unknown[object_type_of(object_id, object_types)] += 1
            continue
        semantic_lut[index] = taxonomy.id(name)
        if object_id not in instance_ids:
            instance_ids[object_id] = len(instance_ids) + 1
        if instance_ids[object_id] >= 2**16:
            raise TSTError("thor: more than 65535 instances in one space")
        instance_lut[index] = instance_ids[object_id]
    shape = codes.shape
    return semantic_lut[inverse].reshape(shape), instance_lut[inverse].reshape(shape)


def depth_from_event(depth_frame: np.ndarray) -> np.ndarray:
    """(H, W) float32 metres z-depth, 0 where nothing was hit (non-finite or non-positive)."""
    depth = np.array(depth_frame, dtype=np.float32, copy=True).reshape(np.shape(depth_frame)[:2])
    depth[~np.isfinite(depth) | (depth <= 0)] = 0.0
    return depth


def normals_from_event(normals_frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 unit normals in the OpenCV camera frame from THOR's uint8 view-space encoding."""
    encoded = np.asarray(normals_frame)[..., :3].astype(np.float32)
    unity_view = encoded / 127.5 - 1.0
    normals = unity_view * np.array([1.0, -1.0, -1.0], np.float32)
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    return np.where(norm > 1e-3, normals / np.maximum(norm, 1e-3), 0.0).astype(np.float32)


def frame_from_event(event: Any, camera: Camera, modalities: tuple[str, ...] = RENDERED,
                     taxonomy: Taxonomy = INDOOR, instance_ids: dict[str, int] | None = None,
                     unknown: Counter | None = None, meta: dict | None = None) -> Frame:
    """A Frame of `modalities` from an ai2thor Event (attributes frame, depth_frame, normals_frame,
    instance_segmentation_frame, color_to_object_id, metadata["objects"])."""
    instance_ids = {} if instance_ids is None else instance_ids
    out: dict[str, np.ndarray] = {}
    shape = (camera.height, camera.width)

    def need(attribute: str) -> np.ndarray:
        value = getattr(event, attribute, None)
        if value is None:
            raise TSTError(f"thor event: {attribute} is missing (was the controller started with it enabled?)")
        if tuple(np.shape(value)[:2]) != shape:
            raise TSTError(f"thor event: {attribute} is {np.shape(value)[:2]}, the camera is {shape}")
        return value

    if "rgb" in modalities:
        out["rgb"] = np.ascontiguousarray(np.asarray(need("frame"))[..., :3], dtype=np.uint8)
    if "depth" in modalities:
        out["depth"] = depth_from_event(need("depth_frame"))
    if "normals" in modalities:
        out["normals"] = normals_from_event(need("normals_frame"))
    if "semantic" in modalities or "instance" in modalities:
        frame_unknown: Counter = Counter()
        semantic, instance = segment_event(need("instance_segmentation_frame"),
                                           getattr(event, "color_to_object_id", {}) or {},
                                           event.metadata.get("objects", []) or [], taxonomy, instance_ids,
                                           frame_unknown)
        if unknown is not None:
            unknown.update(frame_unknown)
        if "semantic" in modalities:
            out["semantic"] = semantic
        if "instance" in modalities:
            out["instance"] = instance
        meta = dict(meta or {}) | {"unlabeled_thor_types": dict(frame_unknown)}
    missing = [m for m in modalities if m not in out]
    if missing:
        raise TSTError(f"thor: cannot render {', '.join(missing)} (THOR gives rgb, depth, normals, semantic, "
                       "instance)")
    return Frame(camera, out, dict(meta or {}))


# ------------------------------------------------------------------------------------------- space

class ThorSpace(TestSpace):
    """An AI2-THOR scene or ProcTHOR house. `controller`: a started ai2thor Controller (or anything with
    its `step(action, **args) -> Event` and `last_event`)."""

    def __init__(self, name: str, controller: Any, taxonomy: Taxonomy = INDOOR):
        self.name = name
        self.taxonomy = taxonomy
        self.controller = controller
        self.instance_ids: dict[str, int] = {}
        self.unknown_types: Counter = Counter()
        event = controller.last_event if getattr(controller, "last_event", None) is not None \
            else self._step("Pass")
        metadata = event.metadata
        try:
            camera_y = float(metadata["cameraPosition"]["y"])
            agent_y = float(metadata["agent"]["position"]["y"])
        except (KeyError, TypeError):
            raise TSTError("thor: the start-up event has no cameraPosition/agent position metadata") from None
        self.camera_above_agent = camera_y - agent_y
        reachable = self._step("GetReachablePositions").metadata.get("actionReturn") or []
        if not reachable:
            raise TSTError(f"thor {name}: GetReachablePositions returned no positions")
        self.reachable = np.array([[p["x"], p["y"], p["z"]] for p in reachable], dtype=np.float64)  # Unity
        self.agent_y = float(np.median(self.reachable[:, 1]))
        self.camera_y = self.agent_y + self.camera_above_agent
        self.bounds = self._bounds(metadata)
        self._state: tuple[int, int, float] | None = None
        for o in sorted(metadata.get("objects", []) or [], key=lambda o: o["objectId"]):
            if class_name_for(o["objectId"], {o["objectId"]: o.get("objectType", "")}) is not None:
                self.instance_ids.setdefault(o["objectId"], len(self.instance_ids) + 1)

    def _step(self, action: str, **args: Any) -> Any:
        event = self.controller.step(action=action, **args)
        if not event.metadata.get("lastActionSuccess", True):
            message = (str(event.metadata.get("errorMessage") or "").strip().splitlines() or ["failed"])[0]
            raise TSTError(f"thor {self.name}: {action} failed: {message}")
        return event

    def _bounds(self, metadata: dict) -> np.ndarray:
        corners = (metadata.get("sceneBounds") or {}).get("cornerPoints")
        if corners:
            points = unity_to_world(np.array(corners, dtype=np.float64))
        else:
            grid = self.reachable.copy()
            points = unity_to_world(np.concatenate([grid - [0, AGENT_ABOVE_FLOOR, 0],
                                                    grid + [0, self.camera_above_agent + 0.5, 0]]))
        return np.stack([points.min(axis=0), points.max(axis=0)])

    def sample_positions(self, n: int, rng: np.random.Generator,
                         height_range: tuple[float, float] = (0.5, 1.8),
                         min_clearance: float = 0.3) -> np.ndarray:
        """THOR's reachable grid (agent-capsule clearance, not `min_clearance`) at its fixed camera height;
        TSTError when that height (above the floor, approximately) is outside `height_range`."""
        height = self.camera_above_agent + AGENT_ABOVE_FLOOR
        if not height_range[0] <= height <= height_range[1]:
            raise TSTError(f"thor: the camera is fixed {height:.2f} m above the floor, outside height_range "
                           f"{tuple(height_range)}")
        grid = self.reachable.copy()
        grid[:, 1] = self.camera_y
        picks = rng.choice(len(grid), size=n, replace=n > len(grid))
        return unity_to_world(grid[picks])

    def render(self, camera: Camera, modalities: tuple[str, ...] = RENDERED) -> Frame:
        fov = vertical_fov(camera)
        args = teleport_args(camera, self.camera_above_agent)
        if abs(args["y"] - self.agent_y) > HEIGHT_TOLERANCE:
            raise TSTError(f"thor camera: height {camera.position[2]:.2f} m; THOR's camera stands at "
                           f"{self.camera_y:.2f} m here")
        args["y"] = self.agent_y
        state = (camera.width, camera.height, round(fov, 4))
        if self._state is None or self._state[:2] != state[:2]:
            self._step("ChangeResolution", x=camera.width, y=camera.height)
        if self._state is None or self._state[2] != state[2]:
            self._step("ChangeFOV", fieldOfView=fov)
        self._state = state
        event = self._step("TeleportFull", **args)
        return frame_from_event(event, camera, tuple(modalities), self.taxonomy, self.instance_ids,
                                self.unknown_types, {"space": self.name})

    def region_at(self, point: np.ndarray) -> str | None:
        return None

    def close(self) -> None:
        controller, self.controller = self.controller, None
        if controller is not None and hasattr(controller, "stop"):
            controller.stop()


def build(cfg: DictConfig) -> TestSpace:
    """The ThorSpace a `space: thor` config describes (scene name or ProcTHOR house JSON)."""
    if importlib.util.find_spec("ai2thor") is None:
        raise TSTError(f"space backend 'thor' needs ai2thor: {INSTALL_HINT}")
    house = cfg.get("house")
    if house not in (None, ""):
        path = Path(str(house))
        try:
            scene: Any = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise TSTError(f"space.house: cannot read ProcTHOR house JSON {path}: {error}") from None
    else:
        scene = str(cfg.get("scene") or "FloorPlan201")
    kwargs: dict[str, Any] = dict(scene=scene, width=int(cfg.get("width", 300)), height=int(cfg.get("height", 300)),
                                  fieldOfView=float(cfg.get("field_of_view", 90.0)), renderDepthImage=True,
                                  renderInstanceSegmentation=True, renderSemanticSegmentation=True,
                                  renderNormalsImage=True, gridSize=float(cfg.get("grid_size", 0.25)))
    try:
        from ai2thor.controller import Controller

        if cfg.get("platform"):
            import ai2thor.platform

            kwargs["platform"] = getattr(ai2thor.platform, str(cfg.platform))
        controller = Controller(**kwargs)
    except TSTError:
        raise
    except Exception as error:  # the build download, Unity start or display all fail here
        cause = (str(error).strip().splitlines() or [""])[0][:200]
        raise TSTError(f"space backend 'thor': the AI2-THOR controller could not start "
                       f"({type(error).__name__}: {cause}); {INSTALL_HINT}") from None
    try:
        return ThorSpace(space_name(cfg), controller)
    except BaseException:
        controller.stop()
        raise
