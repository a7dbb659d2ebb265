"""habitat-sim scenes as test spaces (`space=habitat space.scene=<.glb, .ply or scene id> ...`).

habitat-sim is a conda package (not on PyPI); when it is missing, `build` says how to install it. Everything
that does not need the simulator is a pure function here, tested without it: pose conversion, intrinsics,
observation dict -> Frame, semantic ids -> taxonomy, normals from depth.

Frames (habitat-sim conventions, see its "Coordinate Frame Tutorial" and ReplicaInstanceMeshData.cpp):
- habitat world is y-up (gravity -Y), metres; ours is z-up. A point (x, y, z) of ours is (x, z, -y) in
  habitat: HABITAT_FROM_TST below, a -90 degree rotation about x (the rotation habitat-sim applies to
  Replica's z-up meshes). Its inverse maps back.
- habitat cameras look down -Z with +Y up and +X right (OpenGL); ours (OpenCV) look down +Z with +Y down.
  The two camera frames differ by GL_FROM_CV = diag(1, -1, -1).
  So habitat's world-from-camera rotation is HABITAT_FROM_TST @ R_cv @ GL_FROM_CV, its position
  HABITAT_FROM_TST @ p.
- Sensors: COLOR gives (H, W, 4) uint8 RGBA, DEPTH (H, W) float32 metres of planar z-depth (0 where nothing
  is hit), SEMANTIC (H, W) uint32 semantic object ids (`obj.semantic_id`, for Replica the PLY object_id).
  Each CameraSensorSpec is a pinhole with square pixels, the principal point at the image centre and `hfov`
  in degrees; other intrinsics are refused.
- Labels: `sim.semantic_scene.objects[i]` has `id` (a string such as "_3", or "<level>_<region>_<object>"),
  `semantic_id` (the sensor's value, in recent habitat-sim) and `category` (None or an object whose
  `name()` is the class name). The taxonomy is `unlabeled` + the scene's category names in order of first
  appearance; instance = semantic id + 1 (0 = nothing hit).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Iterable

import numpy as np
from omegaconf import DictConfig
from scipy.spatial.transform import Rotation

from tst.camera import Camera
from tst.errors import TSTError
from tst.frame import Frame
from tst.modalities import RENDERED
from tst.taxonomy import UNLABELED, SemanticClass, Taxonomy

from tst.envs.base import TestSpace, checked_height_range
from tst.envs.registry import space_name

COLOR, DEPTH, SEMANTIC = "color_sensor", "depth_sensor", "semantic_sensor"
INSTALL = "conda install habitat-sim -c conda-forge -c aihabitat"
HABITAT_FROM_TST = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
GL_FROM_CV = np.diag([1.0, -1.0, -1.0])
# Category names counted as stuff (no boxes); everything else is a thing.
STUFF = frozenset({"wall", "floor", "ceiling", "window", "beam", "stair", "stairs", "rug", "blinds", "pipe",
                   "vent", "column", "railing"})
_UNDEFINED = frozenset({"", UNLABELED, "undefined", "unknown", "void", "misc"})


# --- poses ------------------------------------------------------------------------------------------------

def to_habitat_point(points: np.ndarray) -> np.ndarray:
    """(..., 3) z-up points of ours -> habitat's y-up world."""
    return np.asarray(points, float) @ HABITAT_FROM_TST.T


def from_habitat_point(points: np.ndarray) -> np.ndarray:
    """(..., 3) habitat y-up points -> our z-up world."""
    return np.asarray(points, float) @ HABITAT_FROM_TST


def habitat_pose(world_from_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Our (4, 4) OpenCV world-from-camera pose -> habitat (position (3,), rotation (3, 3)) of a camera
    looking down -Z with +Y up, in habitat's y-up world."""
    pose = np.asarray(world_from_camera, float)
    return HABITAT_FROM_TST @ pose[:3, 3], HABITAT_FROM_TST @ pose[:3, :3] @ GL_FROM_CV


def tst_pose(position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Inverse of `habitat_pose`: habitat camera position and rotation -> our (4, 4) OpenCV pose."""
    pose = np.eye(4)
    pose[:3, :3] = HABITAT_FROM_TST.T @ np.asarray(rotation, float) @ GL_FROM_CV
    pose[:3, 3] = HABITAT_FROM_TST.T @ np.asarray(position, float)
    return pose


def quat_coeffs(rotation: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion [x, y, z, w] (habitat_sim.utils.common.quat_from_coeffs order) of a rotation,
    sign chosen with w >= 0."""
    q = Rotation.from_matrix(np.asarray(rotation, float)).as_quat()  # scipy's order is [x, y, z, w] too
    return -q if q[3] < 0 else q


def rotation_from_quat(coeffs: Iterable[float]) -> np.ndarray:
    """(3, 3) rotation of a quaternion [x, y, z, w] (normalized first)."""
    return Rotation.from_quat(np.asarray(list(coeffs), float)).as_matrix()


def hfov_degrees(camera: Camera) -> float:
    """The horizontal field of view habitat's pinhole sensor needs for `camera`; a one-line error when the
    camera is not one (non-square pixels or an off-centre principal point)."""
    K = camera.K
    if not math.isclose(K[0, 0], K[1, 1], rel_tol=1e-3):
        raise TSTError(f"habitat camera: needs square pixels (fx == fy), got fx={K[0, 0]:.3f}, fy={K[1, 1]:.3f}")
    if abs(K[0, 2] - camera.width / 2) > 0.5 or abs(K[1, 2] - camera.height / 2) > 0.5:
        raise TSTError(f"habitat camera: needs the principal point at the image centre "
                       f"({camera.width / 2}, {camera.height / 2}), got ({K[0, 2]}, {K[1, 2]})")
    return math.degrees(2.0 * math.atan(camera.width / (2.0 * K[0, 0])))


# --- labels -----------------------------------------------------------------------------------------------

def _semantic_id(obj: Any) -> int | None:
    """The sensor value of a habitat SemanticObject: `semantic_id`, else the number ending its `id` ("_3")."""
    value = getattr(obj, "semantic_id", None)
    if value is not None:
        return int(value)
    try:
        return int(str(obj.id).rsplit("_", 1)[-1])
    except (AttributeError, ValueError):
        return None


def _category_name(obj: Any) -> str | None:
    category = getattr(obj, "category", None)
    if category is None:
        return None
    name = category.name() if callable(getattr(category, "name", None)) else getattr(category, "name", None)
    name = str(name).strip() if name is not None else ""
    return None if name.lower() in _UNDEFINED else name


def semantic_labels(semantic_scene: Any) -> tuple[Taxonomy, np.ndarray]:
    """A scene's taxonomy and a lookup table semantic id -> class id (uint16, 0 = unlabeled), from
    habitat's `sim.semantic_scene` (or any object with `.objects` shaped like it; None entries allowed)."""
    names: list[str] = []
    pairs: list[tuple[int, str]] = []
    for obj in list(getattr(semantic_scene, "objects", None) or []):
        if obj is None:
            continue
        semantic_id, name = _semantic_id(obj), _category_name(obj)
        if semantic_id is None or semantic_id < 0 or name is None:
            continue
        if name not in names:
            names.append(name)
        pairs.append((semantic_id, name))
    taxonomy = Taxonomy([SemanticClass(name, name.lower() not in STUFF) for name in names])
    lut = np.zeros(max([i for i, _ in pairs], default=-1) + 1, np.uint16)
    for semantic_id, name in pairs:
        lut[semantic_id] = taxonomy.id(name)
    return taxonomy, lut


def normals_from_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 unit normals in the OpenCV camera frame, facing the camera, from z-depth by central
    differences of the back-projected points; 0 where the pixel or a neighbour has no depth."""
    depth = np.asarray(depth, np.float32)
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    points = np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], axis=-1)
    valid = depth > 0
    du = np.zeros_like(points)
    dv = np.zeros_like(points)
    du[:, 1:-1] = points[:, 2:] - points[:, :-2]
    dv[1:-1, :] = points[2:, :] - points[:-2, :]
    ok = np.zeros_like(valid)
    ok[1:-1, 1:-1] = (valid[1:-1, 1:-1] & valid[1:-1, 2:] & valid[1:-1, :-2] & valid[2:, 1:-1] & valid[:-2, 1:-1])
    normals = np.cross(dv, du)  # (down x right) points back towards the camera for a facing surface
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    ok &= length[..., 0] > 0
    normals = np.where(ok[..., None], normals / np.where(length > 0, length, 1.0), 0.0)
    away = np.sum(normals * points, axis=-1) > 0
    normals[away] *= -1
    return normals.astype(np.float32)


def frame_from_observations(observations: dict[str, np.ndarray], camera: Camera, class_lut: np.ndarray,
                            modalities: tuple[str, ...] = RENDERED, meta: dict | None = None) -> Frame:
    """habitat's observation dict (COLOR, DEPTH, SEMANTIC keys) -> a Frame in our units and taxonomy."""
    shape = (camera.height, camera.width)
    out: dict[str, np.ndarray] = {}
    depth = None
    if DEPTH in observations:
        depth = np.asarray(observations[DEPTH], np.float32).reshape(shape)
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
    if "rgb" in modalities:
        if COLOR not in observations:
            raise TSTError(f"habitat observations: no '{COLOR}' for rgb")
        color = np.asarray(observations[COLOR])
        if color.dtype != np.uint8 or color.shape[:2] != shape or color.shape[2] not in (3, 4):
            raise TSTError(f"habitat observations: '{COLOR}' must be ({shape[0]}, {shape[1]}, 4) uint8, "
                           f"got {color.shape} {color.dtype}")
        out["rgb"] = np.ascontiguousarray(color[..., :3])
    if {"depth", "normals", "semantic", "instance"} & set(modalities) and depth is None:
        raise TSTError(f"habitat observations: no '{DEPTH}'")
    if "depth" in modalities:
        out["depth"] = depth
    if "normals" in modalities:
        out["normals"] = normals_from_depth(depth, camera.K)
    if {"semantic", "instance"} & set(modalities):
        if SEMANTIC not in observations:
            raise TSTError(f"habitat observations: no '{SEMANTIC}' for semantic/instance")
        ids = np.asarray(observations[SEMANTIC]).reshape(shape).astype(np.int64)
        hit = depth > 0
        known = hit & (ids >= 0) & (ids < len(class_lut))
        if "semantic" in modalities:
            semantic = np.zeros(shape, np.uint16)
            semantic[known] = class_lut[ids[known]]
            out["semantic"] = semantic
        if "instance" in modalities:
            instance = np.zeros(shape, np.uint16)
            fits = hit & (ids >= 0) & (ids + 1 <= np.iinfo(np.uint16).max)
            instance[fits] = (ids[fits] + 1).astype(np.uint16)
            out["instance"] = instance
    return Frame(camera, out, dict(meta or {}))


# --- the simulator ----------------------------------------------------------------------------------------

def habitat_available() -> bool:
    return importlib.util.find_spec("habitat_sim") is not None


def _require_habitat() -> None:
    if not habitat_available():
        raise TSTError(f"space backend 'habitat' needs habitat-sim, a conda package (not on PyPI): {INSTALL}")


class HabitatSpace(TestSpace):
    """A habitat-sim scene. scene: a .glb/.ply path or a scene id of `dataset_config` (a
    .scene_dataset_config.json). width/height/hfov: the initial sensors (cameras of other sizes or fields
    of view reconfigure them)."""

    def __init__(self, scene: str, dataset_config: str | None = None, name: str | None = None,
                 width: int = 256, height: int = 256, hfov: float = 90.0, gpu_device_id: int = 0):
        _require_habitat()
        import habitat_sim

        self._hs = habitat_sim
        self.scene = scene
        self.dataset_config = dataset_config
        self.gpu_device_id = gpu_device_id
        self.name = name or f"habitat-{str(scene).rsplit('/', 1)[-1].split('.')[0]}"
        self._sensors = (int(width), int(height), float(hfov))
        self.sim = habitat_sim.Simulator(self._config(*self._sensors))
        self.sim.initialize_agent(0)
        self.taxonomy, self.class_lut = semantic_labels(self.sim.semantic_scene)
        lower, upper = (np.asarray(b, float) for b in self.sim.pathfinder.get_bounds())
        corners = from_habitat_point(np.stack([lower, upper]))
        self.bounds = np.stack([corners.min(axis=0), corners.max(axis=0)])

    def _config(self, width: int, height: int, hfov: float):
        hs = self._hs
        backend = hs.SimulatorConfiguration()
        backend.scene_id = str(self.scene)
        if self.dataset_config:
            backend.scene_dataset_config_file = str(self.dataset_config)
        backend.gpu_device_id = int(self.gpu_device_id)
        backend.enable_physics = False
        specs = []
        for uuid, kind in ((COLOR, hs.SensorType.COLOR), (DEPTH, hs.SensorType.DEPTH),
                           (SEMANTIC, hs.SensorType.SEMANTIC)):
            spec = hs.CameraSensorSpec()
            spec.uuid, spec.sensor_type = uuid, kind
            spec.sensor_subtype = hs.SensorSubType.PINHOLE
            spec.resolution = [height, width]
            spec.position = [0.0, 0.0, 0.0]  # the sensor sits at the agent; render() moves the agent
            spec.hfov = hfov
            specs.append(spec)
        agent = hs.agent.AgentConfiguration()
        agent.sensor_specifications = specs
        return hs.Configuration(backend, [agent])

    def _ensure_sensors(self, camera: Camera) -> None:
        wanted = (camera.width, camera.height, round(hfov_degrees(camera), 4))
        if wanted != (self._sensors[0], self._sensors[1], round(self._sensors[2], 4)):
            self._sensors = (camera.width, camera.height, wanted[2])
            self.sim.reconfigure(self._config(*self._sensors))
            self.sim.initialize_agent(0)

    def render(self, camera: Camera, modalities: tuple[str, ...] = RENDERED) -> Frame:
        from habitat_sim.utils.common import quat_from_coeffs

        self._ensure_sensors(camera)
        position, rotation = habitat_pose(camera.world_from_camera)
        state = self._hs.AgentState()
        state.position = position.astype(np.float32)
        state.rotation = quat_from_coeffs(quat_coeffs(rotation))
        self.sim.get_agent(0).set_state(state, reset_sensors=True)
        observations = self.sim.get_sensor_observations()
        return frame_from_observations(observations, camera, self.class_lut, tuple(modalities),
                                       {"space": self.name})

    def sample_positions(self, n: int, rng: np.random.Generator,
                         height_range: tuple[float, float] = (0.5, 1.8),
                         min_clearance: float = 0.3) -> np.ndarray:
        low, high = checked_height_range(height_range)
        pathfinder = self.sim.pathfinder
        pathfinder.seed(int(rng.integers(2**31 - 1)))
        found = []
        for _ in range(200 * max(n, 1)):
            if len(found) == n:
                break
            point = np.asarray(pathfinder.get_random_navigable_point(), float)
            if not np.all(np.isfinite(point)):
                continue
            if pathfinder.distance_to_closest_obstacle(point, 2.0 * min_clearance + 0.1) < min_clearance:
                continue
            found.append(from_habitat_point(point) + [0.0, 0.0, rng.uniform(low, high)])
        if len(found) < n:
            raise TSTError(f"{self.name}: found only {len(found)} of {n} navigable positions with "
                           f"{min_clearance} m clearance")
        return np.array(found).reshape(n, 3)

    def shortest_path(self, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, float]:
        """Navmesh shortest path between two z-up points: (N, 3) z-up way points and its length in metres
        (an empty path and inf when there is none)."""
        path = self._hs.ShortestPath()
        path.requested_start = to_habitat_point(start).astype(np.float32)
        path.requested_end = to_habitat_point(end).astype(np.float32)
        if not self.sim.pathfinder.find_path(path):
            return np.zeros((0, 3)), math.inf
        points = np.array([np.asarray(p, float) for p in path.points]).reshape(-1, 3)
        return from_habitat_point(points), float(path.geodesic_distance)

    def clearance(self, points: np.ndarray) -> np.ndarray:
        """Distance to the nearest navmesh obstacle (the navmesh's notion of clearance, searched up to 2 m)."""
        return np.array([self.sim.pathfinder.distance_to_closest_obstacle(to_habitat_point(p), 2.0)
                         for p in np.asarray(points, float)])

    def close(self) -> None:
        sim = getattr(self, "sim", None)
        if sim is not None:
            sim.close()
            self.sim = None


def build(cfg: DictConfig) -> TestSpace:
    """`space=habitat space.scene=<scene> [space.dataset_config=...]` -> a HabitatSpace."""
    _require_habitat()
    scene = cfg.get("scene")
    if scene in (None, "", "???"):
        raise TSTError("space.scene: missing; expected a .glb/.ply scene or a scene id of space.dataset_config")
    return HabitatSpace(str(scene), cfg.get("dataset_config") or None, space_name(cfg),
                        int(cfg.get("width", 256)), int(cfg.get("height", 256)), float(cfg.get("hfov", 90.0)),
                        int(cfg.get("gpu_device_id", 0)))
