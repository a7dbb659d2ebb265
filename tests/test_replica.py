"""Replica scenes: a tiny scene written in the exact on-disk formats, loaded, rendered and checked."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from omegaconf import OmegaConf

from tst.camera import Camera, intrinsics_from_fov, look_at
from tst.errors import TSTError
from tst.envs.mesh_space import MeshSpace
from tst.envs.replica import build, load_replica, read_quad_ply

# Object ids of the fixture: 0 floor, 1 ceiling, 2 walls, 3 the table (a box), 4 a box of undefined class (-1),
# 5 a box of class -2.
FLOOR, CEILING, WALLS, TABLE, UNDEFINED, UNDEFINED2 = range(6)
CLASSES = [{"id": 0, "name": "undefined"}, {"id": 1, "name": "floor"}, {"id": 2, "name": "ceiling"},
           {"id": 3, "name": "wall"}, {"id": 7, "name": "table"}, {"id": 9, "name": "chair"}]
ID_TO_LABEL = [1, 2, 3, 7, -1, -2]


def _box_quads(lo, hi, inward: bool) -> tuple[np.ndarray, list[list[int]]]:
    """8 corners of an axis-aligned box and its 6 quads, counter-clockwise seen from outside (or inside)."""
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    corners = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
                        [x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]], float)
    quads = [[0, 3, 2, 1], [4, 5, 6, 7],  # bottom (normal -z), top (+z)
             [0, 1, 5, 4], [2, 3, 7, 6],  # front (-y), back (+y)
             [1, 2, 6, 5], [3, 0, 4, 7]]  # right (+x), left (-x)
    if inward:
        quads = [q[::-1] for q in quads]
    return corners, quads


def write_replica_scene(root, scene: str = "room_0", object_id_type: str = "int") -> None:
    """A 6 x 6 x 3 m room (floor, ceiling, walls as separate objects), a table box in the middle and two
    boxes of undefined class, as Replica's habitat/mesh_semantic.ply and info_semantic.json."""
    vertices, quads, object_ids = [], [], []

    def add(corners, box_quads, ids):
        base = sum(len(v) for v in vertices)
        vertices.append(corners)
        for quad, object_id in zip(box_quads, ids):
            quads.append([base + i for i in quad])
            object_ids.append(object_id)

    room, room_quads = _box_quads((-3, -3, 0), (3, 3, 3), inward=True)
    add(room, room_quads, [FLOOR, CEILING, WALLS, WALLS, WALLS, WALLS])
    for lo, hi, object_id in [((-0.5, -0.5, 0), (0.5, 0.5, 0.8), TABLE),
                              ((-2.5, 1.5, 0), (-1.5, 2.5, 1.0), UNDEFINED),
                              ((1.5, 1.5, 0), (2.5, 2.5, 1.0), UNDEFINED2)]:
        corners, box_quads = _box_quads(lo, hi, inward=False)
        add(corners, box_quads, [object_id] * 6)
    xyz = np.concatenate(vertices)

    fmt = {"int": "i", "ushort": "H"}[object_id_type]
    header = "\n".join([
        "ply", "format binary_little_endian 1.0", f"element vertex {len(xyz)}",
        "property float x", "property float y", "property float z",
        "property float nx", "property float ny", "property float nz",
        "property uchar red", "property uchar green", "property uchar blue",
        f"element face {len(quads)}", "property list uchar int vertex_indices",
        f"property {object_id_type} object_id", "end_header",
    ]) + "\n"
    body = bytearray()
    for x, y, z in xyz:
        body += struct.pack("<6f3B", x, y, z, 0.0, 0.0, 1.0, 200, 100, 50)
    for quad, object_id in zip(quads, object_ids):
        body += struct.pack(f"<B4i{fmt}", 4, *quad, object_id)
    habitat = root / scene / "habitat"
    habitat.mkdir(parents=True)
    (habitat / "mesh_semantic.ply").write_bytes(header.encode("ascii") + bytes(body))
    objects = [{"id": i, "class_id": c, "class_name": next((k["name"] for k in CLASSES if k["id"] == c), ""),
                "oriented_bbox": {"abb": {"center": [0, 0, 0], "sizes": [1, 1, 1]},
                                  "orientation": {"rotation": [0, 0, 0, 1], "translation": [0, 0, 0]}}}
               for i, c in enumerate(ID_TO_LABEL)]
    (habitat / "info_semantic.json").write_text(json.dumps(
        {"classes": CLASSES, "objects": objects, "id_to_label": ID_TO_LABEL}))


def _camera(target, position=(0.0, -2.5, 1.5), size=(64, 48)) -> Camera:
    pose = look_at(np.array(position, float), np.array(target, float))
    return Camera(intrinsics_from_fov(size[0], size[1], 50.0), size[0], size[1], pose)


@pytest.mark.parametrize("object_id_type", ["int", "ushort"])
def test_reader_reads_quads_and_object_ids(tmp_path, object_id_type):
    write_replica_scene(tmp_path, object_id_type=object_id_type)
    ply = read_quad_ply(tmp_path / "room_0" / "habitat" / "mesh_semantic.ply")
    assert ply["quads"].shape == (24, 4)
    assert len(ply["vertex"]) == 32
    assert ply["face"]["object_id"].tolist() == [0, 1, 2, 2, 2, 2] + [3] * 6 + [4] * 6 + [5] * 6
    assert ply["vertex"]["red"][0] == 200 and ply["vertex"]["blue"][0] == 50


def test_taxonomy_and_labels(tmp_path):
    write_replica_scene(tmp_path)
    mesh, taxonomy = load_replica(tmp_path, "room_0")
    assert taxonomy.names == ["unlabeled", "floor", "ceiling", "wall", "table", "chair"]
    assert not taxonomy.is_thing(taxonomy.id("wall")) and taxonomy.is_thing(taxonomy.id("table"))
    assert mesh.num_faces == 48  # two triangles per quad
    assert mesh.vertex_colors is not None and mesh.vertex_colors[0].tolist() == [200, 100, 50]
    table = slice(12, 24)  # triangles of the table's quads
    assert set(mesh.face_class[table].tolist()) == {taxonomy.id("table")}
    assert set(mesh.face_instance[table].tolist()) == {TABLE + 1}
    assert set(mesh.face_class[24:].tolist()) == {0}  # id_to_label -1 and -2: unlabeled ...
    assert set(mesh.face_instance[24:].tolist()) == {0}  # ... and no instance
    assert mesh.instance_classes() == {FLOOR + 1: 1, CEILING + 1: 2, WALLS + 1: 3, TABLE + 1: 4}


def test_render_shows_the_object_with_its_class_and_instance(tmp_path):
    write_replica_scene(tmp_path)
    space = build(OmegaConf.create({"backend": "replica", "root": str(tmp_path), "scene": "room_0",
                                    "name": None, "nthreads": 1}))
    assert isinstance(space, MeshSpace) and space.name == "replica-room_0"
    assert space.source_files["mesh"].name == "mesh_semantic.ply"
    np.testing.assert_allclose(space.bounds, [[-3, -3, 0], [3, 3, 3]])
    frame = space.render(_camera((0.0, 0.0, 0.4)))
    h, w = 48, 64
    centre = (slice(h // 2 - 2, h // 2 + 3), slice(w // 2 - 2, w // 2 + 3))
    table = space.taxonomy.id("table")
    assert np.all(frame["semantic"][centre] == table)
    assert np.all(frame["instance"][centre] == TABLE + 1)
    assert np.all(frame["depth"][centre] > 1.5) and np.all(frame["depth"][centre] < 2.5)
    rgb = frame["rgb"][centre].reshape(-1, 3).astype(int)
    assert np.all(rgb[:, 0] > rgb[:, 2])  # vertex colour (200, 100, 50), shaded
    assert (frame["semantic"] == space.taxonomy.id("wall")).any()
    assert (frame["semantic"] == space.taxonomy.id("floor")).any()

    undefined = space.render(_camera((-2.0, 2.0, 0.5), position=(-2.0, 0.0, 1.2)))
    centre_ids = undefined["semantic"][centre]
    assert np.all(centre_ids == 0) and np.all(undefined["instance"][centre] == 0)
    assert np.all(undefined["depth"][centre] > 0)  # geometry is there, only unlabeled

    points = space.sample_positions(8, np.random.default_rng(0))
    assert points.shape == (8, 3) and np.all(np.abs(points[:, :2]) < 3)


def test_missing_files_give_one_line_errors(tmp_path):
    with pytest.raises(TSTError, match="mesh_semantic.ply does not exist") as error:
        load_replica(tmp_path, "room_0")
    assert "\n" not in str(error.value)
    write_replica_scene(tmp_path)
    (tmp_path / "room_0" / "habitat" / "info_semantic.json").unlink()
    with pytest.raises(TSTError, match="info_semantic.json does not exist") as error:
        load_replica(tmp_path, "room_0")
    assert "\n" not in str(error.value)
    with pytest.raises(TSTError, match="space.root: missing"):
        build(OmegaConf.create({"root": "???", "scene": "room_0"}))


def test_non_quad_and_ascii_files_are_rejected(tmp_path):
    path = tmp_path / "tri.ply"
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
              "property float z\nelement face 1\nproperty list uchar int vertex_indices\nproperty int object_id\n"
              "end_header\n")
    body = struct.pack("<9f", 0, 0, 0, 1, 0, 0, 0, 1, 0) + struct.pack("<B3ii", 3, 0, 1, 2, 0)
    path.write_bytes(header.encode() + body + b"\0" * 8)
    with pytest.raises(TSTError, match="not a quad"):
        read_quad_ply(path)
    path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nelement face 0\nend_header\n")
    with pytest.raises(TSTError, match="ascii"):
        read_quad_ply(path)


def test_stuff_and_things_as_a_label_map_gives_them(tmp_path):
    """The same class names get the same thing/stuff flags from the Replica reader and a label map."""
    from tst.envs.labelmap import load_label_map
    from tst.envs.replica import replica_taxonomy

    names = ["wall", "baseboard", "window-frame", "Window_Frame", "rug", "chair", "door", "Sofa"]
    replica, _ = replica_taxonomy({"classes": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}, "info")
    (tmp_path / "labels.yaml").write_text("classes: [" + ", ".join(names) + "]\n")
    label_map = load_label_map(tmp_path / "labels.yaml").taxonomy
    flags = [replica.is_thing(replica.id(n)) for n in names]
    assert flags == [label_map.is_thing(label_map.id(n)) for n in names]
    assert flags == [False, False, False, False, False, True, True, True]
