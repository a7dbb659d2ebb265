"""glTF/GLB, PLY and OBJ scenes written here, loaded back as spaces and rendered."""

import numpy as np
import pytest
import trimesh
import yaml
from PIL import Image

from tst.errors import TSTError
from tst.envs.labelmap import load_label_map
from tst.envs.loaders import load_mesh
from tst.envs.mesh_space import MeshSpace
from tst.taxonomy import INDOOR

from conftest import camera_looking_up


def write_label_map(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def textured_quad(colour_blocks: np.ndarray, name: str) -> trimesh.Trimesh:
    """A 2x2 m quad in the local xy plane at z = 0, facing -z, UV (0, 0) at (-1, -1)."""
    vertices = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float)
    faces = np.array([[0, 2, 1], [0, 3, 2]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    texture = Image.fromarray(colour_blocks.repeat(16, 0).repeat(16, 1))
    material = trimesh.visual.material.PBRMaterial(name=name, baseColorTexture=texture)
    return trimesh.Trimesh(vertices, faces, visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
                           process=False)


def test_gltf_multi_node_scene_keeps_transforms_textures_and_labels(tmp_path):
    blocks = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], np.uint8)
    scene = trimesh.Scene()
    # glTF is y-up: a node 3 m along +y in the file ends up 3 m up (z) in TST's z-up world.
    ceiling = textured_quad(blocks, "CeilingPaint")
    ceiling.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))  # horizontal in glTF (y-up)
    scene.add_geometry(ceiling, node_name="Ceiling_01", geom_name="ceiling_quad",
                       transform=trimesh.transformations.translation_matrix([0, 3, 0]))
    chair = trimesh.creation.box((0.4, 0.4, 0.4))
    chair.visual = trimesh.visual.ColorVisuals(chair, face_colors=[120, 60, 30, 255])
    scene.add_geometry(chair, node_name="Chair.001", geom_name="chair_box",
                       transform=trimesh.transformations.translation_matrix([0, 1.5, 0]))
    scene.add_geometry(chair.copy(), node_name="Chair.002", geom_name="chair_box2",
                       transform=trimesh.transformations.translation_matrix([5, 1.5, 0]))
    path = tmp_path / "room.glb"
    scene.export(path)
    labels = load_label_map(write_label_map(tmp_path / "labels.yaml", {"match": {"chair*": "chair", "*ceiling*": "ceiling"}}))
    mesh = load_mesh(path, labels)
    assert set(np.unique(mesh.face_class)) == {INDOOR.id("chair"), INDOOR.id("ceiling")}
    chair_faces = mesh.face_class == INDOOR.id("chair")
    assert len(np.unique(mesh.face_instance[chair_faces])) == 2  # one instance per node
    centres = sorted(mesh.vertices[mesh.faces[chair_faces & (mesh.face_instance == i)]].reshape(-1, 3).mean(0).tolist()
                     for i in np.unique(mesh.face_instance[chair_faces]))
    assert np.allclose(centres, [[0, 0, 1.5], [5, 0, 1.5]], atol=1e-5)  # glTF y-up 1.5 m -> z 1.5 m
    space = MeshSpace("room", mesh, INDOOR)
    # Look up at the ceiling quad (z = 3) from below the first chair's top, at the ceiling's centre.
    frame = space.render(camera_looking_up(64, 64, hfov=90, position=(0.0, 0.0, 2.0)))
    assert np.abs(frame["depth"][32, 32] - 1.0) < 1e-4
    assert frame["semantic"][32, 32] == INDOOR.id("ceiling")
    seen = {tuple(frame["rgb"][r, c] > 100) for r, c in ((16, 16), (16, 48), (48, 16), (48, 48))}
    assert len(seen) == 4  # four differently coloured texture blocks are visible


def test_ply_with_vertex_colours_and_face_attributes(tmp_path):
    box = trimesh.creation.box((2.0, 2.0, 2.0))
    box.visual = trimesh.visual.ColorVisuals(box, vertex_colors=np.tile([[10, 200, 30, 255]], (8, 1)))
    box.face_attributes["label"] = np.array([1] * 6 + [2] * 6, np.int32)
    box.face_attributes["object_id"] = np.array([7] * 6 + [8] * 6, np.int32)
    path = tmp_path / "scan.ply"
    path.write_bytes(trimesh.exchange.ply.export_ply(box, encoding="binary"))
    labels = load_label_map(write_label_map(tmp_path / "labels.yaml", {
        "classes": ["wall", "sofa"], "face_class": "label", "face_instance": "object_id"}))
    mesh = load_mesh(path, labels)
    assert labels.taxonomy.names == ["unlabeled", "wall", "sofa"]
    assert sorted(np.unique(mesh.face_class)) == [1, 2]
    assert sorted(np.unique(mesh.face_instance)) == [7, 8]
    assert mesh.vertex_colors is not None and (mesh.vertex_colors == [10, 200, 30]).all()
    frame = MeshSpace("scan", mesh, labels.taxonomy).render(camera_looking_up(16, 16, hfov=60))
    assert np.abs(frame["depth"] - 1.0).max() < 1e-4  # inside the box: its top face 1 m above
    assert frame["rgb"][..., 1].min() > frame["rgb"][..., 0].max()  # green vertex colours


def test_obj_round_trip(tmp_path):
    quad = textured_quad(np.array([[[200, 50, 50]]], np.uint8), "Rug")
    quad.apply_translation([0, 0, 2.0])
    path = tmp_path / "rug.obj"
    quad.export(path)
    labels = load_label_map(write_label_map(tmp_path / "labels.yaml", {"match": {"rug*": "floor"}}))
    mesh = load_mesh(path, labels)  # OBJ: z-up unless told otherwise
    assert (mesh.face_class == INDOOR.id("floor")).all()
    frame = MeshSpace("rug", mesh, INDOOR).render(camera_looking_up(16, 16, hfov=40))  # sees only the rug
    assert np.abs(frame["depth"] - 2.0).max() < 1e-4
    assert (frame["rgb"][..., 0] > frame["rgb"][..., 1]).all()  # the red texture


def test_unmatched_parts_are_unlabeled(tmp_path):
    path = tmp_path / "thing.ply"
    path.write_bytes(trimesh.exchange.ply.export_ply(trimesh.creation.box()))
    mesh = load_mesh(path, load_label_map(None))
    assert (mesh.face_class == 0).all() and (mesh.face_instance == 0).all()


def test_label_map_naming_an_unknown_class(tmp_path):
    path = write_label_map(tmp_path / "labels.yaml", {"match": {"Sofa*": "sofaa"}})
    with pytest.raises(TSTError, match=r"labels.yaml: match 'Sofa\*': class 'sofaa' is not in the taxonomy"):
        load_label_map(path)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"ply\nthis is not a ply file\x00\x01", "cannot read"),
    (b"ply\nformat ascii 1.0\nelement vertex 0\nelement face 0\nend_header\n", "no triangles|cannot read"),
])
def test_bad_mesh_files(tmp_path, content, message):
    path = tmp_path / "scene.ply"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TSTError, match=message):
        load_mesh(path, load_label_map(None))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scene.fbx"
    path.write_bytes(b"x")
    with pytest.raises(TSTError, match="unsupported extension"):
        load_mesh(path, load_label_map(None))


def furniture_scene(path):
    """A glTF with a sofa of three touching nodes, two chairs 3 m apart, and a cabinet whose two meshes are
    unnamed children ("Object_1", "Object_2", as Sketchfab-style exports name them) of a node `Cabinet`."""
    scene = trimesh.Scene()
    for j, dx in enumerate((0.0, 0.6, -0.6)):
        scene.add_geometry(trimesh.creation.box((0.6, 0.9, 0.8)), node_name=f"Sofa_part{j}", geom_name=f"sofa{j}",
                           transform=trimesh.transformations.translation_matrix([dx, 0.45, 0]))
    for k, x in enumerate((3.0, 6.0)):
        scene.add_geometry(trimesh.creation.box((0.4, 0.8, 0.4)), node_name=f"Chair.00{k}", geom_name=f"chair{k}",
                           transform=trimesh.transformations.translation_matrix([x, 0.4, 0]))
    scene.graph.update(frame_to="Cabinet", frame_from=scene.graph.base_frame,
                       matrix=trimesh.transformations.translation_matrix([0, 0, 3.0]))
    for k, y in enumerate((0.4, 1.2)):
        scene.add_geometry(trimesh.creation.box((1.0, 0.8, 0.5)), node_name=f"Object_{k + 1}", geom_name=f"object{k}",
                           parent_node_name="Cabinet", transform=trimesh.transformations.translation_matrix([0, y, 0]))
    scene.export(path)
    return path


def test_nodes_of_one_object_are_one_instance(tmp_path):
    path = furniture_scene(tmp_path / "furniture.glb")
    rules = {"match": {"sofa*": "sofa", "chair*": "chair", "cabinet*": "cabinet"}}
    mesh = load_mesh(path, load_label_map(write_label_map(tmp_path / "labels.yaml", rules)))

    def instances(name):
        return np.unique(mesh.face_instance[mesh.face_class == INDOOR.id(name)])

    assert len(instances("sofa")) == 1 and len(instances("chair")) == 2
    # The cabinet's unnamed children take its class from their parent node, and are one cabinet.
    assert (mesh.face_class > 0).all() and len(instances("cabinet")) == 1
    assert mesh.vertices[mesh.faces[mesh.face_class == INDOOR.id("cabinet")]][..., 1].mean() == pytest.approx(-3.0)
    assert len(set(instances("sofa")) | set(instances("chair")) | set(instances("cabinet"))) == 4
    # `instances: node` keeps one instance per node.
    per_node = load_mesh(path, load_label_map(write_label_map(tmp_path / "nodes.yaml", rules | {"instances": "node"})))
    assert len(np.unique(per_node.face_instance[per_node.face_class == INDOOR.id("sofa")])) == 3


@pytest.mark.parametrize("rules, message", [
    ({"instances": "group"}, "instances: expected connected or node, got 'group'"),
    ({"instance_gap": "far"}, "instance_gap: expected a distance in metres between 0 and 10, got 'far'"),
    ({"instance_gap": -1}, "instance_gap: expected a distance in metres"),
])
def test_bad_instance_rules(tmp_path, rules, message):
    with pytest.raises(TSTError, match=message):
        load_label_map(write_label_map(tmp_path / "labels.yaml", rules))


def test_gltf_colours_are_decoded_as_the_spec_says(tmp_path):
    """glTF base colour factors and vertex colours are linear, textures sRGB: a flat navy factor
    (19, 25, 41)/255 renders as the navy it means, sRGB (77, 88, 112), not as stored; a texture with no
    factor is used as it is; a grey texture under a 0.5 factor is halved in linear light."""
    scene = trimesh.Scene()
    flat = trimesh.creation.box((1, 1, 1))
    flat.visual = trimesh.visual.TextureVisuals(
        material=trimesh.visual.material.PBRMaterial(name="navy", baseColorFactor=[19, 25, 41, 255]))
    scene.add_geometry(flat, node_name="Wall")
    grey = np.full((2, 2, 3), 128, np.uint8)
    scene.add_geometry(textured_quad(grey, "plain"), node_name="Plain")
    halved = textured_quad(grey, "halved")
    halved.visual.material.baseColorFactor = [128, 128, 128, 255]
    scene.add_geometry(halved, node_name="Halved")
    path = tmp_path / "colours.glb"
    scene.export(path)
    mesh = load_mesh(path, load_label_map(None))
    by_name = {m.name: m for m in mesh.materials}
    assert np.allclose(np.array(by_name["navy"].color) * 255, [77.2, 88.2, 111.6], atol=0.5)
    assert by_name["plain"].color == (1.0, 1.0, 1.0) and (by_name["plain"].texture == 128).all()
    # 128 -> 0.2159 linear, x 0.502 -> 0.1084, -> sRGB 0.3629 -> 92.5, rounded to 93
    assert by_name["halved"].color == (1.0, 1.0, 1.0) and (by_name["halved"].texture == 93).all()
    space = MeshSpace("colours", mesh, INDOOR)
    frame = space.render(camera_looking_up(32, 32, hfov=60, position=(0.0, 0.0, -2.0)))
    centre = frame["rgb"][16, 16].astype(float)
    # Shading scales all channels alike: red/blue is the sRGB navy's 0.69, not the stored factor's 0.46.
    assert centre[0] / centre[2] == pytest.approx(77.2 / 111.6, abs=0.03)
