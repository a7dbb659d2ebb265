"""Reading glTF/GLB, PLY and OBJ scenes into LabeledMeshes (trimesh does the parsing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from tst.errors import TSTError

from tst.envs.labelmap import LabelMap
from tst.envs.mesh import LabeledMesh, Material, concatenate

FORMATS = {".glb": "glTF", ".gltf": "glTF", ".ply": "PLY", ".obj": "OBJ"}
Y_UP_TO_Z_UP = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def _material(visual: object, name: str) -> tuple[Material, np.ndarray | None, np.ndarray | None]:
    """(material, per-vertex uv (V, 2) or None, per-vertex colours (V, 3) uint8 or None) of a trimesh visual."""
    if isinstance(visual, trimesh.visual.TextureVisuals) and visual.material is not None:
        mat = visual.material
        texture = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        factor = getattr(mat, "baseColorFactor", None)
        if factor is None:
            factor = getattr(mat, "diffuse", None)
        color = (np.asarray(factor, float)[:3] / 255.0) if factor is not None else np.ones(3)
        uv = visual.uv if texture is not None and visual.uv is not None else None
        image = np.asarray(texture.convert("RGB")) if uv is not None else None
        return Material(mat.name or name, tuple(color), image), uv, None
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
        return Material(name, (1.0, 1.0, 1.0), vertex_colors=True), None, visual.vertex_colors[:, :3]
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "face":
        colour = visual.face_colors[:, :3].mean(axis=0) / 255.0
        return Material(name, tuple(colour)), None, None
    return Material(name), None, None


def _ply_face_property(mesh: trimesh.Trimesh, name: str, path: Path) -> np.ndarray:
    faces = mesh.metadata.get("_ply_raw", {}).get("face", {}).get("data")
    if faces is None or name not in (faces.dtype.names or ()):
        available = [n for n in (faces.dtype.names or ()) if n != "vertex_indices"] if faces is not None else []
        raise TSTError(f"{path}: no face property '{name}' (the label map asks for it); found {available or 'none'}")
    return np.asarray(faces[name]).astype(np.int64)


def _part(geometry: trimesh.Trimesh, transform: np.ndarray, node: str, geometry_name: str, labels: LabelMap,
          instance: int, path: Path) -> LabeledMesh:
    material, uv, vertex_colors = _material(geometry.visual, geometry_name)
    vertices = trimesh.transform_points(np.asarray(geometry.vertices, float), transform)
    faces = np.asarray(geometry.faces)
    n = len(faces)
    class_id = labels.class_for(node, geometry_name, material.name)
    face_class = np.full(n, class_id, np.int64)
    face_instance = np.full(n, instance if class_id else 0, np.int64)
    if labels.face_class:
        ids = _ply_face_property(geometry, labels.face_class, path)
        if labels.face_class_ids is not None:
            lookup = np.vectorize(lambda i: labels.face_class_ids.get(int(i), 0))
            ids = lookup(ids) if len(ids) else ids
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= len(labels.taxonomy):
            raise TSTError(f"{path}: face property '{labels.face_class}' has ids outside 0..{len(labels.taxonomy) - 1}")
        face_class = np.where(ids > 0, ids, face_class)
    if labels.face_instance:
        face_instance = np.maximum(_ply_face_property(geometry, labels.face_instance, path), 0)
    return LabeledMesh(vertices, faces, face_class, face_instance, np.zeros(n, np.int32), [material],
                       corner_uvs=np.asarray(uv, np.float32)[faces] if uv is not None else None,
                       vertex_colors=vertex_colors)


def _check_patterns_match(labels: LabelMap, names: list[tuple[str, str, str]], path: Path) -> None:
    """Refuse a label map whose `match` patterns match no part of the scene at `path` (names: node, mesh
    and material name per part): every part would be unlabeled, almost certainly by mistake."""
    if not labels.patterns or any(labels.class_for(*part) for part in names):
        return
    seen = sorted({name for part in names for name in part if name})
    shown = ", ".join(seen[:8]) + (f" (and {len(seen) - 8} more)" if len(seen) > 8 else "")
    raise TSTError(f"{labels.source or 'space.labels'}: no part of {path.name} matches any 'match' pattern "
                   f"({', '.join(p for p, _ in labels.patterns)}); part names seen: {shown}")


def load_mesh(path: str | Path, labels: LabelMap, up_axis: str = "auto") -> LabeledMesh:
    """Read a glTF/GLB, PLY or OBJ scene: every node with its transform, materials and textures,
    classes from the label map, one instance per node (or per-face instance attributes).

    up_axis: "auto" (y for glTF, as its spec says; z otherwise), "y" or "z"; y-up scenes are turned z-up.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise TSTError(f"space.path: {path} has an unsupported extension; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise TSTError(f"space.path: {path} does not exist; expected a {FORMATS[suffix]} mesh file")
    if path.stat().st_size == 0:
        raise TSTError(f"space.path: {path} is empty; expected a {FORMATS[suffix]} mesh file")
    if up_axis not in ("auto", "y", "z"):
        raise TSTError(f"space.up_axis: expected auto, y or z, got {up_axis!r}")
    try:
        scene = trimesh.load(str(path), force="scene", process=False)
    except Exception as error:  # trimesh raises many types for malformed files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TSTError(f"space.path: cannot read {path} as {FORMATS[suffix]} ({reason})") from None
    up = ("y" if FORMATS[suffix] == "glTF" else "z") if up_axis == "auto" else up_axis
    root = Y_UP_TO_Z_UP if up == "y" else np.eye(4)
    parts, names = [], []  # names: (node, mesh, material) of each part
    for instance, node in enumerate(scene.graph.nodes_geometry, start=1):
        transform, geometry_name = scene.graph[node]
        geometry = scene.geometry[geometry_name]
        if not isinstance(geometry, trimesh.Trimesh) or len(geometry.faces) == 0:
            continue
        part = _part(geometry, root @ transform, str(node), str(geometry_name), labels, instance, path)
        parts.append(part)
        names.append((str(node), str(geometry_name), part.materials[0].name))
    if not parts:
        raise TSTError(f"space.path: {path} holds no triangles; expected a non-empty triangle mesh")
    _check_patterns_match(labels, names, path)
    mesh = concatenate(parts)
    mesh.validate(str(path))
    return mesh
