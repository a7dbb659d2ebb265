"""Labeled triangle meshes: geometry, per-face labels and materials, the input of the mesh renderer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tst.errors import TSTError


@dataclass
class Material:
    """Surface appearance.

    color: (3,) float in [0, 1], sRGB-encoded (as displayed), multiplied with the texture or used alone.
    texture: (H, W, 3) uint8 image tiled over the face UVs (UV (0, 0) = the image's bottom-left), or None.
    vertex_colors: take the colour from the mesh's per-vertex colours instead (scans).
    """

    name: str
    color: tuple[float, float, float] = (0.8, 0.8, 0.8)
    texture: np.ndarray | None = None
    vertex_colors: bool = False


@dataclass
class LabeledMesh:
    """A triangle mesh with per-face labels, in world coordinates (z-up, metres).

    vertices: (V, 3) float32. faces: (F, 3) int32 vertex indices.
    face_class: (F,) uint16 taxonomy ids (0 = unlabeled). face_instance: (F,) uint32 (0 = none).
    face_material: (F,) int32 index into `materials`.
    corner_uvs: (F, 3, 2) float32 texture coordinates per face corner, or None.
    vertex_colors: (V, 3) uint8, or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_class: np.ndarray
    face_instance: np.ndarray
    face_material: np.ndarray
    materials: list[Material] = field(default_factory=list)
    corner_uvs: np.ndarray | None = None
    vertex_colors: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int32)
        self.face_class = np.ascontiguousarray(self.face_class, dtype=np.uint16)
        self.face_instance = np.ascontiguousarray(self.face_instance, dtype=np.uint32)
        self.face_material = np.ascontiguousarray(self.face_material, dtype=np.int32)
        if not self.materials:
            self.materials = [Material("default")]
        if self.corner_uvs is not None:
            self.corner_uvs = np.ascontiguousarray(self.corner_uvs, dtype=np.float32)
        if self.vertex_colors is not None:
            self.vertex_colors = np.ascontiguousarray(self.vertex_colors, dtype=np.uint8)

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    def validate(self, source: str) -> None:
        """Raise a one-line TSTError naming `source` when the mesh is empty or inconsistent."""
        if self.num_faces == 0 or len(self.vertices) == 0:
            raise TSTError(f"{source}: the mesh has no triangles; expected a non-empty triangle mesh")
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise TSTError(f"{source}: vertices must be (V, 3), got {self.vertices.shape}")
        if not np.all(np.isfinite(self.vertices)):
            raise TSTError(f"{source}: vertex coordinates contain NaN or inf")
        if self.faces.min() < 0 or self.faces.max() >= len(self.vertices):
            raise TSTError(f"{source}: face vertex indices out of range 0..{len(self.vertices) - 1}")
        per_face = {"face_class": self.face_class, "face_instance": self.face_instance,
                    "face_material": self.face_material}
        for name, values in per_face.items():
            if len(values) != self.num_faces:
                raise TSTError(f"{source}: {name} has {len(values)} entries, expected one per face ({self.num_faces})")
        if self.face_material.max() >= len(self.materials) or self.face_material.min() < 0:
            raise TSTError(f"{source}: face_material indexes a material that does not exist")
        if self.corner_uvs is not None and self.corner_uvs.shape != (self.num_faces, 3, 2):
            raise TSTError(f"{source}: corner_uvs must be (F, 3, 2), got {self.corner_uvs.shape}")
        if self.vertex_colors is not None and self.vertex_colors.shape != (len(self.vertices), 3):
            raise TSTError(f"{source}: vertex_colors must be (V, 3), got {self.vertex_colors.shape}")

    def bounds(self) -> np.ndarray:
        """(2, 3) axis-aligned min and max corners in metres."""
        return np.stack([self.vertices.min(axis=0), self.vertices.max(axis=0)])

    def instance_classes(self) -> dict[int, int]:
        """instance id -> class id (the class most of the instance's faces carry)."""
        result: dict[int, int] = {}
        labeled = self.face_instance > 0
        pairs, counts = np.unique(
            np.stack([self.face_instance[labeled], self.face_class[labeled]], axis=1), axis=0, return_counts=True
        )
        best: dict[int, int] = {}
        for (instance, class_id), count in zip(pairs.tolist(), counts.tolist()):
            if count > best.get(instance, -1):
                best[instance], result[instance] = count, class_id
        return result


def concatenate(meshes: list[LabeledMesh]) -> LabeledMesh:
    """One mesh holding all `meshes`; materials are appended, indices shifted."""
    if not meshes:
        raise TSTError("concatenate: no meshes given")
    vertex_offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    material_offsets = np.cumsum([0] + [len(m.materials) for m in meshes[:-1]])
    any_uvs = any(m.corner_uvs is not None for m in meshes)
    any_colors = any(m.vertex_colors is not None for m in meshes)
    return LabeledMesh(
        vertices=np.concatenate([m.vertices for m in meshes]),
        faces=np.concatenate([m.faces + offset for m, offset in zip(meshes, vertex_offsets)]),
        face_class=np.concatenate([m.face_class for m in meshes]),
        face_instance=np.concatenate([m.face_instance for m in meshes]),
        face_material=np.concatenate([m.face_material + offset for m, offset in zip(meshes, material_offsets)]),
        materials=[material for m in meshes for material in m.materials],
        corner_uvs=np.concatenate([
            m.corner_uvs if m.corner_uvs is not None else np.zeros((m.num_faces, 3, 2), np.float32)
            for m in meshes
        ]) if any_uvs else None,
        vertex_colors=np.concatenate([
            m.vertex_colors if m.vertex_colors is not None else np.full((len(m.vertices), 3), 200, np.uint8)
            for m in meshes
        ]) if any_colors else None,
    )
