"""Reading glTF/GLB, PLY and OBJ scenes into LabeledMeshes (trimesh does the parsing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from tst.errors import TSTError

from tst.envs.instances import connected_instances
from tst.envs.labelmap import LabelMap
from tst.envs.mesh import LabeledMesh, Material, concatenate

FORMATS = {".glb": "glTF", ".gltf": "glTF", ".ply": "PLY", ".obj": "OBJ"}
Y_UP_TO_Z_UP = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in 0..1 to linear light (IEC 61966-2-1): two lines, not worth a dependency."""
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """Linear light in 0..1 to sRGB-encoded values (the inverse of srgb_to_linear)."""
    values = np.clip(values, 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * values ** (1 / 2.4) - 0.055)


def _gltf_albedo(factor: np.ndarray, texture: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(flat colour (3,) in 0..1, texture (H, W, 3) uint8 or None) to render, both sRGB-encoded as the
    renderer's albedo is, from a glTF material: its baseColorFactor (3,) is linear and multiplies the
    sRGB-decoded baseColorTexture (glTF 2.0, "metallic-roughness material")."""
    if texture is None:
        return linear_to_srgb(factor), None
    if np.allclose(factor, 1.0):
        return np.ones(3), texture
    linear = srgb_to_linear(texture.astype(np.float64) / 255.0) * factor
    return np.ones(3), np.round(linear_to_srgb(linear) * 255.0).astype(np.uint8)


def _material(visual: object, name: str, gltf: bool) -> tuple[Material, np.ndarray | None, np.ndarray | None]:
    """(material, per-vertex uv (V, 2) or None, per-vertex colours (V, 3) uint8 or None) of a trimesh
    visual. `gltf`: the colours follow glTF's encoding (linear factors and vertex colours, sRGB textures)
    and are converted to the sRGB albedo the renderer shades; other formats' colours are used as stored."""
    if isinstance(visual, trimesh.visual.TextureVisuals) and visual.material is not None:
        mat = visual.material
        texture = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        factor = getattr(mat, "baseColorFactor", None)
        if factor is None:
            factor = getattr(mat, "diffuse", None)
        color = (np.asarray(factor, float)[:3] / 255.0) if factor is not None else np.ones(3)
        uv = visual.uv if texture is not None and visual.uv is not None else None
        image = np.asarray(texture.convert("RGB")) if uv is not None else None
        if gltf:
            color, image = _gltf_albedo(color, image)
        return Material(mat.name or name, tuple(float(c) for c in color), image), uv, None
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
        colours = visual.vertex_colors[:, :3]
        if gltf:  # COLOR_0 is linear
            colours = np.round(linear_to_srgb(colours / 255.0) * 255.0).astype(np.uint8)
        return Material(name, (1.0, 1.0, 1.0), vertex_colors=True), None, colours
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


def _part(geometry: trimesh.Trimesh, transform: np.ndarray, node: str, geometry_name: str, ancestors: list[str],
          labels: LabelMap, instance: int, path: Path) -> LabeledMesh:
    """One node's mesh in world coordinates with its labels. `ancestors`: its parent nodes' names,
    nearest first; the first that matches a pattern gives the class when the node's own names do not."""
    material, uv, vertex_colors = _material(geometry.visual, geometry_name, FORMATS[path.suffix.lower()] == "glTF")
    vertices = trimesh.transform_points(np.asarray(geometry.vertices, float), transform)
    faces = np.asarray(geometry.faces)
    n = len(faces)
    class_id = labels.class_for(node, geometry_name, material.name)
    for ancestor in ancestors:
        class_id = class_id or labels.class_for(ancestor)
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


def _ancestors(node: str, parents: dict[str, str], root: str) -> list[str]:
    """The names of `node`'s parent nodes, nearest first, below the scene's root frame."""
    chain = []
    while (node := parents.get(node)) is not None and node != root and node not in chain:
        chain.append(node)
    return chain


def _group_instances(parts: list[LabeledMesh], gap: float) -> None:
    """Renumber the parts' instances in place: same-class parts within `gap` metres are one object
    (tst.envs.instances.connected_instances). Each part here carries one class (from the label map)."""
    bounds = np.stack([np.stack([p.vertices.min(axis=0), p.vertices.max(axis=0)]) for p in parts])
    classes = np.array([int(p.face_class.max()) if int(p.face_instance.max()) else 0 for p in parts])
    for part, instance in zip(parts, connected_instances(bounds, classes, gap)):
        part.face_instance[part.face_instance > 0] = instance


def _check_patterns_match(labels: LabelMap, names: list[tuple[str, ...]], path: Path) -> None:
    """Refuse a label map whose `match` patterns match no part of the scene at `path` (names: node, mesh
    and material name of each part, then its ancestors'): every part would be unlabeled, almost certainly
    by mistake."""
    if not labels.patterns or any(labels.class_for(*part) for part in names):
        return
    seen = sorted({name for part in names for name in part if name})
    shown = ", ".join(seen[:8]) + (f" (and {len(seen) - 8} more)" if len(seen) > 8 else "")
    raise TSTError(f"{labels.source or 'space.labels'}: no part of {path.name} matches any 'match' pattern "
                   f"({', '.join(p for p, _ in labels.patterns)}); part names seen: {shown}")


def load_mesh(path: str | Path, labels: LabelMap, up_axis: str = "auto") -> LabeledMesh:
    """Read a glTF/GLB, PLY or OBJ scene: every node with its transform, materials and textures,
    classes from the label map (a node's own names, else its ancestors'), instances grouped as the label
    map says (touching same-class nodes by default; or per node; or per-face instance attributes).

    up_axis: "auto" (y for glTF, as its spec says; z otherwise), "y" or "z"; y-up scenes are turned z-up.
    """
    path = Path(path)
    if path.is_dir():
        raise TSTError(f"space.path: {path} is a folder; expected a glTF/GLB, PLY or OBJ mesh file")
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
    parents = scene.graph.transforms.parents
    parts, names = [], []  # names: (node, mesh, material, *ancestors) of each part
    for instance, node in enumerate(scene.graph.nodes_geometry, start=1):
        transform, geometry_name = scene.graph[node]
        geometry = scene.geometry[geometry_name]
        if not isinstance(geometry, trimesh.Trimesh) or len(geometry.faces) == 0:
            continue
        ancestors = [str(a) for a in _ancestors(node, parents, scene.graph.base_frame)]
        part = _part(geometry, root @ transform, str(node), str(geometry_name), ancestors, labels, instance, path)
        parts.append(part)
        names.append((str(node), str(geometry_name), part.materials[0].name, *ancestors))
    if not parts:
        raise TSTError(f"space.path: {path} holds no triangles; expected a non-empty triangle mesh")
    _check_patterns_match(labels, names, path)
    if labels.instances == "connected" and not labels.face_instance and not labels.face_class:
        _group_instances(parts, labels.instance_gap)
    mesh = concatenate(parts)
    mesh.validate(str(path))
    return mesh
