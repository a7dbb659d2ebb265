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

def read_quad_ply(path: Path) -> dict[str, np.ndarray]:
    """Read a Replica semantic PLY with plyfile: vertex properties and quad faces with per-face properties.

    Returns {"vertex": structured array of the vertex properties, "quads": (F, 4) int64, "face": structured
    array of the per-face properties (object_id, ...)}.

    plyfile is told that every face lists exactly 4 indices (`known_list_len`), so it reads the body as
    one fixed numpy dtype in a single pass instead of a Python object per face; a face of another size then
    makes the read fail, reported as a non-quad face. (trimesh triangulates quads on load without keeping
    per-face properties aligned, and open3d drops face properties, so neither fits.)
    """
    import plyfile

    source = str(path)
    quad = {"face": {"vertex_indices": 4, "vertex_index": 4}}  # the list's name in Replica, and a variant
    try:
        ply = plyfile.PlyData.read(path, known_list_len=quad)
    except OSError as error:
        raise TSTError(f"{source}: cannot read ({error.strerror})") from None
    except plyfile.PlyHeaderParseError as error:
        raise TSTError(f"{source}: not a PLY file ({error.message})") from None
    except plyfile.PlyElementParseError as error:
        if error.prop is not None and error.prop.name in quad["face"]:
            raise TSTError(f"{source}: found a face that is not a quad (row {error.row}); Replica semantic meshes "
                           "have quad faces only (4 indices each)") from None
        raise TSTError(f"{source}: file is truncated or malformed (element '{error.element.name}': "
                       f"{error.message})") from None
    except ValueError as error:  # plyfile's fixed-length fast path reads past the end of a short body
        raise TSTError(f"{source}: file is truncated ({error})") from None
    if ply.text:
        raise TSTError(f"{source}: PLY format 'ascii' is not supported; Replica's mesh_semantic.ply is "
                       "binary_little_endian")
    names = [element.name for element in ply.elements]
    if "vertex" not in names or "face" not in names:
        raise TSTError(f"{source}: expected PLY elements 'vertex' and 'face', found {names}")
    for element in ply.elements:
        lists = [p.name for p in element.properties if isinstance(p, plyfile.PlyListProperty)]
        if element.name == "face" and (len(lists) != 1 or lists[0] not in quad["face"]):
            raise TSTError(f"{source}: expected one list property 'vertex_indices' on faces")
        if element.name != "face" and lists:
            raise TSTError(f"{source}: element '{element.name}' has list properties; only 'face' may have one")
    face = ply["face"].data
    indices = next(p.name for p in ply["face"].properties if isinstance(p, plyfile.PlyListProperty))
    return {"vertex": ply["vertex"].data, "quads": np.asarray(face[indices], dtype=np.int64).reshape(-1, 4),
            "face": face}


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
