"""MeshBuilder: assembles labeled, UV-mapped primitives (boxes, cylinders, spheres) into one mesh.

Large faces are tessellated into grids of at most `max_edge` metres so the triangle density is even,
like a scanned mesh, and no triangle is long and thin.
"""

from __future__ import annotations

import math

import numpy as np

from tst.taxonomy import Taxonomy

from tst.envs.mesh import LabeledMesh, Material


def placement(x: float, y: float, yaw: float = 0.0, z: float = 0.0) -> np.ndarray:
    """(4, 4) transform: rotate by `yaw` radians about +z, then translate to (x, y, z) metres."""
    c, s = math.cos(yaw), math.sin(yaw)
    transform = np.eye(4)
    transform[:2, :2] = [[c, -s], [s, c]]
    transform[:3, 3] = (x, y, z)
    return transform


class MeshBuilder:
    """Collects primitives; `build()` returns one LabeledMesh.

    Each primitive gets a class name (looked up in `taxonomy`), an instance id and a material.
    Coordinates are metres in a local frame given by a (4, 4) transform (identity = world).
    UVs are metres divided by the material's `uv_scale` (the texture repeats every uv_scale metres).
    """

    def __init__(self, taxonomy: Taxonomy, max_edge: float = 0.1, segments: int = 16):
        self.taxonomy = taxonomy
        self.max_edge = float(max_edge)
        self.segments = int(segments)
        self.materials: list[Material] = []
        self._material_ids: dict[str, int] = {}
        self._uv_scales: list[float] = []
        self._vertices: list[np.ndarray] = []
        self._faces: list[np.ndarray] = []
        self._uvs: list[np.ndarray] = []
        self._labels: list[tuple[int, int, int, int]] = []  # (face count, class, instance, material)
        self._vertex_count = 0
        self._next_instance = 1

    def new_instance(self) -> int:
        instance = self._next_instance
        self._next_instance += 1
        return instance

    @property
    def instance_count(self) -> int:
        return self._next_instance - 1

    def material(self, material: Material, uv_scale: float = 1.0) -> int:
        """Register `material` (once per name) and return its index."""
        if material.name not in self._material_ids:
            self._material_ids[material.name] = len(self.materials)
            self.materials.append(material)
            self._uv_scales.append(float(uv_scale))
        return self._material_ids[material.name]

    def _add(self, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, transform: np.ndarray,
             class_name: str, instance: int, material: int) -> None:
        """vertices (V, 3) local; faces (F, 3); uvs (V, 2) in metres (scaled by the material here)."""
        world = vertices @ transform[:3, :3].T + transform[:3, 3]
        self._vertices.append(world.astype(np.float32))
        self._faces.append(faces + self._vertex_count)
        self._uvs.append((uvs[faces] / self._uv_scales[material]).astype(np.float32))
        self._labels.append((len(faces), self.taxonomy.id(class_name), instance, material))
        self._vertex_count += len(vertices)

    def _grid(self, corner: np.ndarray, edge_u: np.ndarray, edge_v: np.ndarray) -> tuple[np.ndarray, ...]:
        """A parallelogram corner + [0,1]·edge_u + [0,1]·edge_v as a grid; normal = edge_u x edge_v."""
        nu = max(1, math.ceil(np.linalg.norm(edge_u) / self.max_edge))
        nv = max(1, math.ceil(np.linalg.norm(edge_v) / self.max_edge))
        s, t = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
        s, t = s.ravel(), t.ravel()
        vertices = corner + s[:, None] * edge_u + t[:, None] * edge_v
        uvs = np.stack([s * np.linalg.norm(edge_u), t * np.linalg.norm(edge_v)], axis=1)
        index = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
        a, b, c, d = index[:-1, :-1].ravel(), index[1:, :-1].ravel(), index[1:, 1:].ravel(), index[:-1, 1:].ravel()
        faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
        return vertices, faces, uvs

    def quad(self, corner, edge_u, edge_v, class_name: str, instance: int, material: int,
             transform: np.ndarray = np.eye(4)) -> None:
        """One tessellated parallelogram; its front side is edge_u x edge_v."""
        vertices, faces, uvs = self._grid(np.asarray(corner, float), np.asarray(edge_u, float),
                                          np.asarray(edge_v, float))
        self._add(vertices, faces, uvs, transform, class_name, instance, material)

    def box(self, lo, hi, class_name: str, instance: int, material: int,
            transform: np.ndarray = np.eye(4), skip: tuple[str, ...] = ()) -> None:
        """An axis-aligned box lo..hi (local metres), faces pointing out. skip: sides to leave out
        ("-x", "+x", "-y", "+y", "-z", "+z"), e.g. the hidden bottom of furniture."""
        (x0, y0, z0), (x1, y1, z1) = np.asarray(lo, float), np.asarray(hi, float)
        dx, dy, dz = np.array([x1 - x0, 0, 0]), np.array([0, y1 - y0, 0]), np.array([0, 0, z1 - z0])
        sides = {
            "-x": ((x0, y1, z0), -dy, dz), "+x": ((x1, y0, z0), dy, dz),
            "-y": ((x0, y0, z0), dx, dz), "+y": ((x1, y1, z0), -dx, dz),
            "-z": ((x0, y1, z0), dx, -dy), "+z": ((x0, y0, z1), dx, dy),
        }
        parts = [self._grid(np.array(c, float), u, v) for name, (c, u, v) in sides.items() if name not in skip]
        offsets = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
        vertices = np.concatenate([p[0] for p in parts])
        faces = np.concatenate([p[1] + o for p, o in zip(parts, offsets)])
        uvs = np.concatenate([p[2] for p in parts])
        self._add(vertices, faces, uvs, transform, class_name, instance, material)

    def revolve(self, profile: list[tuple[float, float]], class_name: str, instance: int, material: int,
                transform: np.ndarray = np.eye(4), cap_top: bool = True, cap_bottom: bool = True) -> None:
        """A surface of revolution about local +z through (radius, z) profile points (bottom to top),
        with flat caps. A cylinder is [(r, 0), (r, h)]; a lamp shade [(r1, 0), (r2, h)]."""
        segments = self.segments
        angles = np.linspace(0, 2 * math.pi, segments + 1)  # seam vertex repeated for UVs
        rings = []
        for radius, z in profile:
            rings.append(np.stack([radius * np.cos(angles), radius * np.sin(angles), np.full_like(angles, z)], 1))
        vertices = np.concatenate(rings)
        lengths = np.concatenate([[0], np.cumsum(np.hypot(np.diff([p[0] for p in profile]),
                                                        np.diff([p[1] for p in profile])))])
        max_radius = max(p[0] for p in profile)
        uvs = np.concatenate([np.stack([angles * max_radius, np.full_like(angles, l)], 1) for l in lengths])
        width = segments + 1
        faces = []
        for ring in range(len(profile) - 1):
            a = ring * width + np.arange(segments)
            b, c, d = a + 1, a + width + 1, a + width
            faces += [np.stack([a, b, c], 1), np.stack([a, c, d], 1)]
        for cap, (radius, z), ring, up in ((cap_bottom, profile[0], 0, False),
                                           (cap_top, profile[-1], len(profile) - 1, True)):
            if not cap or radius <= 0:
                continue
            centre = len(vertices)
            vertices = np.concatenate([vertices, [[0, 0, z]]])
            uvs = np.concatenate([uvs, [[0, 0]]])
            a = ring * width + np.arange(segments)
            hub = np.full(segments, centre)
            fan = np.stack([hub, a, a + 1], 1) if up else np.stack([hub, a + 1, a], 1)
            faces.append(fan)
        self._add(vertices, np.concatenate(faces), uvs, transform, class_name, instance, material)

    def cylinder(self, radius: float, height: float, class_name: str, instance: int, material: int,
                 transform: np.ndarray = np.eye(4)) -> None:
        """A closed cylinder standing on the local origin, axis +z; the side is split every max_edge."""
        steps = max(1, math.ceil(height / self.max_edge))
        profile = [(radius, height * k / steps) for k in range(steps + 1)]
        self.revolve(profile, class_name, instance, material, transform)

    def sphere(self, radius: float, class_name: str, instance: int, material: int,
               transform: np.ndarray = np.eye(4), squash: float = 1.0) -> None:
        """A sphere (an ellipsoid when squash != 1 scales z) centred on the local origin."""
        rings = max(4, self.segments // 2)
        polar = np.linspace(math.pi, 0, rings + 1)
        profile = [(radius * math.sin(p), squash * radius * math.cos(p)) for p in polar]
        self.revolve(profile, class_name, instance, material, transform, cap_top=False, cap_bottom=False)

    def build(self) -> LabeledMesh:
        counts = [n for n, _, _, _ in self._labels]
        return LabeledMesh(
            vertices=np.concatenate(self._vertices),
            faces=np.concatenate(self._faces),
            face_class=np.repeat([c for _, c, _, _ in self._labels], counts),
            face_instance=np.repeat([i for _, _, i, _ in self._labels], counts),
            face_material=np.repeat([m for _, _, _, m in self._labels], counts),
            materials=list(self.materials),
            corner_uvs=np.concatenate(self._uvs),
        )
