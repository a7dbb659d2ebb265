"""Replica scenes as test spaces, rendered by the mesh ray caster.

A Replica scene `<root>/<scene>/habitat/` holds (formats as in facebookresearch/Replica-Dataset's README and
habitat-sim's `ReplicaInstanceMeshData::loadPLY` and `SemanticScene::buildReplicaHouse`):

- `mesh_semantic.ply`: binary little-endian PLY, vertices `x y z nx ny nz red green blue` (float32 x6, uchar
  x3), QUAD faces `vertex_indices` (a list of 4) each with one integer `object_id`. World is z-up (habitat-sim
  rotates it by -Z gravity -> -Y), metres. A quad [a, b, c, d] becomes triangles [a, b, c] and [a, c, d] (the
  split habitat-sim uses).
- `info_semantic.json`: `classes` [{id, name}], `objects` [{id, class_id, class_name, oriented_bbox, ...}]
  and `id_to_label` (a list indexed by object id giving the class id; -1 and -2 mean undefined).

Labels: face class = `id_to_label[object_id]` (objects[].class_id when the file has no `id_to_label`); an
undefined (negative) or unknown class, or an object id beyond the table, is `unlabeled` (0) and has no
instance. Instance = object id + 1, so that 0 stays "none" while Replica's object 0 stays an instance.

Taxonomy: `unlabeled` then Replica's classes in id order, named exactly as the file names them (classes that
share a name share an id; a class named `undefined` or `unlabeled` is folded into 0). Stuff (no boxes) are
the classes `tst.taxonomy.is_stuff_name` says are, as for a label map's classes; every other class is a thing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from tst.errors import TSTError
from tst.taxonomy import UNLABELED, SemanticClass, Taxonomy, is_stuff_name

from tst.envs.mesh import LabeledMesh, Material
from tst.envs.registry import space_name

UNDEFINED_NAMES = frozenset({UNLABELED, "undefined", ""})

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _ply_type(name: str, source: str) -> str:
    try:
        return _PLY_TYPES[name]
    except KeyError:
        raise TSTError(f"{source}: unknown PLY property type '{name}'") from None


def read_quad_ply(path: Path) -> dict[str, np.ndarray]:
    """Read a binary Replica semantic PLY: vertex properties and quad faces with per-face properties.

    Returns {"vertex": structured array of the vertex properties, "quads": (F, 4) int64, "face": structured
    array of the per-face scalar properties (object_id)}.

    Why our own reader: trimesh triangulates quads on load and does not reliably keep per-face properties
    such as `object_id` aligned with the resulting triangles, and open3d drops face properties altogether.
    Replica's layout is fixed (one element `vertex` of scalars, one element `face` with a list of exactly 4
    indices followed by scalars), so one numpy structured dtype per element reads it in a single pass. The
    scalar types come from the header, so `int` or `ushort` object ids both read.
    """
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TSTError(f"{source}: cannot read ({error.strerror})") from None
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise TSTError(f"{source}: not a PLY file (expected a 'ply' header ending in 'end_header')")
    body_start = data.index(b"\n", end) + 1
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    elements: list[tuple[str, int, list[tuple]]] = []
    byte_order = None
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if words[1] not in ("binary_little_endian", "binary_big_endian"):
                raise TSTError(f"{source}: PLY format '{words[1]}' is not supported; Replica's mesh_semantic.ply "
                               "is binary_little_endian")
            byte_order = "<" if words[1] == "binary_little_endian" else ">"
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if words[1] == "list":
                elements[-1][2].append(("list", words[4], _ply_type(words[2], source), _ply_type(words[3], source)))
            else:
                elements[-1][2].append(("scalar", words[2], _ply_type(words[1], source)))
    if byte_order is None:
        raise TSTError(f"{source}: PLY header has no 'format' line")
    names = [e[0] for e in elements]
    if "vertex" not in names or "face" not in names:
        raise TSTError(f"{source}: expected PLY elements 'vertex' and 'face', found {names}")

    offset = body_start
    result: dict[str, np.ndarray] = {}
    for name, count, props in elements:
        lists = [p for p in props if p[0] == "list"]
        if name == "face":
            if len(lists) != 1 or lists[0][1] not in ("vertex_indices", "vertex_index"):
                raise TSTError(f"{source}: expected one list property 'vertex_indices' on faces")
            fields = []
            for prop in props:
                if prop[0] == "list":
                    fields += [("_count", byte_order + prop[2]), ("_indices", byte_order + prop[3], (4,))]
                else:
                    fields.append((prop[1], byte_order + prop[2]))
        elif lists:
            raise TSTError(f"{source}: element '{name}' has list properties; only 'face' may have one")
        else:
            fields = [(prop[1], byte_order + prop[2]) for prop in props]
        dtype = np.dtype(fields)
        size = dtype.itemsize * count
        if offset + size > len(data):
            raise TSTError(f"{source}: file is truncated (element '{name}' needs {size} bytes at byte {offset})")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        offset += size
        if name == "face":
            if count and not np.all(array["_count"] == 4):
                bad = int(array["_count"][array["_count"] != 4][0])
                raise TSTError(f"{source}: found a face with {bad} vertices; Replica semantic meshes have quad "
                               "faces only (4 indices each)")
            result["quads"] = array["_indices"].astype(np.int64)
            result["face"] = array  # per-face scalars by name (plus the list's _count and _indices)
        elif name == "vertex":
            result["vertex"] = array
    return result


def replica_taxonomy(info: dict, source: str) -> tuple[Taxonomy, dict[int, int]]:
    """The taxonomy of a scene's `classes` and the map Replica class id -> taxonomy id."""
    classes = info.get("classes")
    if not isinstance(classes, list):
        raise TSTError(f"{source}: expected a 'classes' list of {{id, name}}")
    entries: list[SemanticClass] = []
    index: dict[str, int] = {}
    class_ids: dict[int, int] = {}
    for entry in sorted(classes, key=lambda c: int(c["id"])):
        name = str(entry["name"])
        if name.lower() in UNDEFINED_NAMES:
            class_ids[int(entry["id"])] = 0
            continue
        if name not in index:
            entries.append(SemanticClass(name, not is_stuff_name(name)))
            index[name] = len(entries)  # id 0 is unlabeled
        class_ids[int(entry["id"])] = index[name]
    return Taxonomy(entries), class_ids


def object_classes(info: dict, num_objects: int, class_ids: dict[int, int], source: str) -> np.ndarray:
    """(num_objects,) taxonomy id of each Replica object id (0 where undefined or unknown)."""
    lut = np.zeros(num_objects, np.uint16)
    if "id_to_label" in info:
        labels = info["id_to_label"]
        if not isinstance(labels, list):
            raise TSTError(f"{source}: 'id_to_label' must be a list of class ids indexed by object id")
        for object_id, label in enumerate(labels[:num_objects]):
            lut[object_id] = class_ids.get(int(label), 0)
    else:
        for obj in info.get("objects", []):
            if 0 <= int(obj["id"]) < num_objects:
                lut[int(obj["id"])] = class_ids.get(int(obj.get("class_id", -1)), 0)
    return lut


def scene_files(root: str | Path, scene: str) -> tuple[Path, Path]:
    """The semantic mesh and info file of `scene` under `root`; a one-line error when either is missing."""
    habitat = Path(root) / scene / "habitat"
    files = (habitat / "mesh_semantic.ply", habitat / "info_semantic.json")
    for path in files:
        if not path.is_file():
            raise TSTError(f"replica scene '{scene}': {path} does not exist; expected <root>/<scene>/habitat/"
                           "mesh_semantic.ply and info_semantic.json (space.root=..., space.scene=...)")
    return files


def load_replica(root: str | Path, scene: str) -> tuple[LabeledMesh, Taxonomy]:
    """The labeled triangle mesh (z-up, metres, vertex colours) and taxonomy of a Replica scene."""
    ply_path, info_path = scene_files(root, scene)
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as error:
        raise TSTError(f"{info_path}: not readable JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(info, dict):
        raise TSTError(f"{info_path}: expected an object with 'classes', 'objects' and 'id_to_label'")
    taxonomy, class_ids = replica_taxonomy(info, str(info_path))
    ply = read_quad_ply(ply_path)
    vertex = ply["vertex"]
    missing = [p for p in ("x", "y", "z", "red", "green", "blue") if p not in vertex.dtype.names]
    if missing:
        raise TSTError(f"{ply_path}: vertices lack {missing}; expected x y z nx ny nz red green blue")
    if "object_id" not in ply["face"].dtype.names:
        raise TSTError(f"{ply_path}: faces have no 'object_id' property")
    quads = ply["quads"]
    object_ids = ply["face"]["object_id"].astype(np.int64)
    if len(quads) and (quads.min() < 0 or quads.max() >= len(vertex)):
        raise TSTError(f"{ply_path}: face vertex indices out of range 0..{len(vertex) - 1}")

    lut_size = max(int(object_ids.max(initial=-1)) + 1, 1)
    lut = object_classes(info, lut_size, class_ids, str(info_path))
    valid = object_ids >= 0
    quad_class = np.where(valid, lut[np.clip(object_ids, 0, None)], 0).astype(np.uint16)
    quad_instance = np.where(quad_class > 0, object_ids + 1, 0).astype(np.uint32)

    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]], axis=1).reshape(-1, 3)
    mesh = LabeledMesh(
        vertices=np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1),
        faces=faces,
        face_class=np.repeat(quad_class, 2),
        face_instance=np.repeat(quad_instance, 2),
        face_material=np.zeros(len(faces), np.int32),
        materials=[Material("replica", vertex_colors=True)],
        vertex_colors=np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1),
    )
    return mesh, taxonomy


def build(cfg: DictConfig):
    """`space=replica space.root=<Replica root> space.scene=room_0` -> a MeshSpace."""
    from tst.envs.mesh_space import MeshSpace

    root = cfg.get("root")
    if root in (None, "", "???"):
        raise TSTError("space.root: missing; expected the Replica dataset folder holding <scene>/habitat/ "
                       "(space.root=...)")
    scene = str(cfg.get("scene") or "room_0")
    mesh, taxonomy = load_replica(str(root), scene)
    space = MeshSpace(space_name(cfg), mesh, taxonomy, int(cfg.get("nthreads", 0)))
    ply_path, info_path = scene_files(str(root), scene)
    space.source_files = {"mesh": ply_path, "labels": info_path}
    return space
