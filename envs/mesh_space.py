"""A TestSpace backed by a labeled triangle mesh and the ray-casting renderer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d

from tst.camera import Camera
from tst.errors import TSTError
from tst.frame import Frame
from tst.modalities import RENDERED
from tst.taxonomy import Taxonomy

from tst.envs.base import TestSpace, checked_height_range
from tst.envs.mesh import LabeledMesh
from tst.envs.raycast import INVALID_ID, MeshRenderer

FLOOR_CLASS = "floor"
CEILING_CLASS = "ceiling"
UP_FACING = 0.7  # cos of the steepest slope still counted as floor when a mesh has no floor labels


class MeshSpace(TestSpace):
    """Any labeled mesh as a test space.

    mesh: the scene (world z-up, metres). taxonomy: the meaning of mesh.face_class.
    nthreads: ray-casting threads per frame (0 = all cores).
    """

    def __init__(self, name: str, mesh: LabeledMesh, taxonomy: Taxonomy, nthreads: int = 0):
        mesh.validate(name)
        if int(mesh.face_class.max()) >= len(taxonomy):
            raise TSTError(f"{name}: face class id {int(mesh.face_class.max())} is outside the taxonomy "
                           f"(ids 0..{len(taxonomy) - 1})")
        self.name = name
        self.mesh = mesh
        self.taxonomy = taxonomy
        self.bounds = mesh.bounds()
        self.renderer = MeshRenderer(mesh, nthreads=nthreads)
        self._walkable = self._walkable_faces()
        self.source_files: dict[str, Path] = {}  # files the space was read from (for manifests)
        self._instance_materials: dict[int, str] | None = None

    @property
    def num_triangles(self) -> int:
        return self.mesh.num_faces

    def _walkable_faces(self) -> np.ndarray:
        """(F,) bool: faces a camera may stand above — labeled floor, else any up-facing face. A labeled
        floor whose area is mostly vertical means the file was read with the wrong up axis: refused."""
        up = self.renderer.face_normals[:, 2] > UP_FACING
        if FLOOR_CLASS in self.taxonomy.names:
            floor = self.mesh.face_class == self.taxonomy.id(FLOOR_CLASS)
            if floor.any():
                corners = self.mesh.vertices[self.mesh.faces[floor]].astype(np.float64)  # (n, 3, 3) metres
                area = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]),
                                            axis=1)
                level = np.abs(self.renderer.face_normals[floor, 2]) > UP_FACING
                if area[level].sum() < 0.5 * area.sum():
                    raise TSTError(f"{self.name}: most of the area labeled {FLOOR_CLASS} stands vertical, so the "
                                   "scene is stored with another up axis than it was read with; set "
                                   "space.up_axis=z (or y)")
                return floor & up
        return up

    def render(self, camera: Camera, modalities: tuple[str, ...] = RENDERED) -> Frame:
        return Frame(camera, self.renderer.render(camera, tuple(modalities)), {"space": self.name})

    def _cast(self, origins: np.ndarray, directions: np.ndarray) -> dict[str, np.ndarray]:
        rays = np.concatenate([origins, directions], axis=1).astype(np.float32)
        hits = self.renderer.scene.cast_rays(o3d.core.Tensor(rays), nthreads=self.renderer.nthreads)
        return {k: hits[k].numpy() for k in ("t_hit", "primitive_ids")}

    def clearance(self, points: np.ndarray) -> np.ndarray:
        return self.renderer.scene.compute_distance(o3d.core.Tensor(np.asarray(points, np.float32))).numpy()

    def instance_materials(self) -> dict[int, str]:
        """instance id -> name of the material covering most of its faces (computed once)."""
        if self._instance_materials is None:
            mesh = self.mesh
            labeled = mesh.face_instance > 0
            materials = len(mesh.materials)
            keys = mesh.face_instance[labeled].astype(np.int64) * materials + mesh.face_material[labeled]
            pairs, counts = np.unique(keys, return_counts=True)
            best: dict[int, tuple[int, str]] = {}
            for key, count in zip(pairs.tolist(), counts.tolist()):
                instance, material = divmod(key, materials)
                if count > best.get(instance, (-1, ""))[0]:
                    best[instance] = (count, mesh.materials[material].name)
            self._instance_materials = {instance: name for instance, (_, name) in best.items()}
        return self._instance_materials

    def floor_heights(self, xy: np.ndarray) -> np.ndarray:
        """(N,) z of the highest walkable surface under each (x, y), NaN where there is none."""
        top = np.full((len(xy), 1), self.bounds[1, 2] + 1.0, dtype=np.float32)
        origins = np.concatenate([xy.astype(np.float32), top], axis=1)
        down = np.tile(np.array([[0, 0, -1]], np.float32), (len(xy), 1))
        rays = np.concatenate([origins, down], axis=1)
        hits = self.renderer.scene.list_intersections(o3d.core.Tensor(rays))
        ray_ids = hits["ray_ids"].numpy()
        t_hit = hits["t_hit"].numpy()
        faces = hits["primitive_ids"].numpy()
        heights = np.full(len(xy), np.nan)
        walkable = self._walkable[faces]
        z = top[ray_ids, 0] - t_hit
        for ray, height in zip(ray_ids[walkable], z[walkable]):  # loop over hits, a few per ray
            if np.isnan(heights[ray]) or height > heights[ray]:
                heights[ray] = height
        return heights

    def _front_facing_hit(self, points: np.ndarray, direction: tuple[float, float, float],
                          miss_ok: bool) -> np.ndarray:
        """(N,) bool: the first surface hit from each point along `direction` faces the point and
        is not a ceiling (or nothing is hit, when `miss_ok`).

        A point inside a closed object first hits the inside of that object (a back face); a point
        above the building looks down onto the outside of a ceiling.
        """
        directions = np.tile(np.asarray(direction, np.float32), (len(points), 1))
        hits = self._cast(points, directions)
        hit = hits["primitive_ids"] != INVALID_ID
        facing = ~hit if miss_ok else np.zeros(len(points), dtype=bool)
        faces = hits["primitive_ids"][hit]
        facing[hit] = (self.renderer.face_normals[faces] @ directions[0]) < 0
        if direction[2] < 0 and CEILING_CLASS in self.taxonomy.names:
            facing[hit] &= self.mesh.face_class[faces] != self.taxonomy.id(CEILING_CLASS)
        return facing

    def sample_positions(self, n: int, rng: np.random.Generator,
                         height_range: tuple[float, float] = (0.5, 1.8),
                         min_clearance: float = 0.3) -> np.ndarray:
        low, high = checked_height_range(height_range)
        found: list[np.ndarray] = []
        total = 0
        for _ in range(50):
            batch = max(64, 4 * (n - total))
            xy = rng.uniform(self.bounds[0, :2], self.bounds[1, :2], size=(batch, 2))
            floor = self.floor_heights(xy)
            ok = ~np.isnan(floor)
            points = np.concatenate([xy, (np.nan_to_num(floor) + rng.uniform(low, high, batch))[:, None]], axis=1)
            points = points[ok].astype(np.float32)
            if len(points) == 0:
                continue
            keep = self.clearance(points) >= min_clearance
            keep &= self._front_facing_hit(points, (0, 0, -1), miss_ok=False)
            keep &= self._front_facing_hit(points, (0, 0, 1), miss_ok=True)
            found.append(points[keep])
            total += int(keep.sum())
            if total >= n:
                return np.concatenate(found)[:n].astype(np.float64)
        raise TSTError(f"{self.name}: found only {total} of {n} free positions with height_range "
                       f"[{low}, {high}] m and clearance {min_clearance} m; expected a space with free floor area")
