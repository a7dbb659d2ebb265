"""`tst run` on a user's own space: a multi-node glTF with its own class list, and ScanNet++ and Replica
scenes in their formats, with procedural apartments as transfer spaces."""

import json

import numpy as np
import pytest
import torch
import trimesh
from omegaconf import OmegaConf
from PIL import Image

from test_collect import view_quality
from test_replica import write_replica_scene
from test_scannetpp import SCENE, _camera_pose, _write_cameras, _write_release
from tst.orchestration.cli import main
from tst.collect.dataset import FrameDataset
from tst.config import load, override_value
from tst.taxonomy import INDOOR, SemanticClass, Taxonomy, map_by_name

ROOM_LABELS = """classes: [Wall, floor, sofa, lamp]
match:
  'couch*': sofa
  'floor*': floor
  'room*': Wall
  'lamp*': lamp
"""


def write_room(folder, z_up: bool = False):
    """A 6 x 5 x 2.6 m glTF room (y-up, as glTF is; or z-up, as some tools export): walls, a textured
    floor (a checkerboard), two sofas of three nodes each and a lamp, all separate nodes."""
    room = trimesh.creation.box((6.0, 2.6, 5.0))
    room.invert()
    room.apply_translation([0, 1.3, 0])
    floor = trimesh.creation.box((6.0, 0.02, 5.0))
    floor.apply_translation([0, 0.01, 0])
    checker = np.kron((np.indices((8, 8)).sum(0) % 2)[..., None] * np.array([150, 90, 40]) + 60,
                      np.ones((8, 8, 1))).astype(np.uint8)  # 64 x 64 px, brown and dark squares
    uv = floor.vertices[:, [0, 2]] / [6.0, 5.0] + 0.5
    floor.visual = trimesh.visual.TextureVisuals(uv=uv, material=trimesh.visual.material.PBRMaterial(
        name="floor_checker", baseColorTexture=Image.fromarray(checker)))
    scene = trimesh.Scene()
    scene.add_geometry(room, node_name="Room_walls", geom_name="walls")
    scene.add_geometry(floor, node_name="Floor", geom_name="floor")
    for i, (x, z) in enumerate([(1.5, 1.0), (-1.5, -1.2)]):
        for j, dx in enumerate((0.0, 0.6, -0.6)):
            part = trimesh.creation.box((0.6, 0.9, 0.8))
            part.apply_translation([x + dx, 0.45, z])
            scene.add_geometry(part, node_name=f"Couch{i}_part{j}", geom_name=f"couch{i}{j}")
    lamp = trimesh.creation.cylinder(0.15, 1.5)
    lamp.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    lamp.apply_translation([2.5, 0.75, -2.0])
    scene.add_geometry(lamp, node_name="Lamp", geom_name="lamp")
    if z_up:  # baked into the vertices (every node's transform is the identity), as such exports are
        for geometry in scene.geometry.values():
            geometry.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    scene.export(folder / "room.glb")
    (folder / "labels.yaml").write_text(ROOM_LABELS)
    return folder / "room.glb", folder / "labels.yaml"


def _run(capsys, *args):
    code = main(["run", "experiment=smoke", *args])
    return code, capsys.readouterr().err


def test_run_on_a_gltf_with_its_own_taxonomy(tmp_path, capsys):
    glb, labels = write_room(tmp_path)
    code, err = _run(capsys, "space=mesh", f"space.path={glb}", f"space.labels={labels}",
                     f"workspace_dir={tmp_path / 'ws'}", "tracking.enabled=false")
    assert code == 0, err
    data = tmp_path / "ws" / "room" / "data"
    outputs = json.loads((data / "manifest.json").read_text())["outputs"]
    assert [c["name"] for c in outputs["taxonomy"]["classes"]] == ["unlabeled", "Wall", "floor", "sofa", "lamp"]
    assert [c["thing"] for c in outputs["taxonomy"]["classes"]][1:3] == [False, False]  # `Wall` is the stuff class
    mapping = outputs["class_maps"]["procedural-1"]
    assert mapping["shared"] == ["wall", "floor", "sofa"] and "bed" in mapping["dropped"]
    # The transfer frames (a procedural apartment) carry the room's ids: wall 1, floor 2, sofa 3, never above 4.
    transfer = FrameDataset(data, "transfer", ["semantic"])
    ids = np.unique(np.concatenate([transfer[i]["semantic"].numpy().ravel() for i in range(len(transfer))]))
    assert set(ids) <= {0, 1, 2, 3} and {1, 2} <= set(ids)
    assert "3 of 38 classes map onto room's taxonomy by name" in " ".join(err.split())
    # The two sofas of three nodes each are two instances, and captions count two at most.
    frames = FrameDataset(data, "pretrain", ["rgb", "semantic", "instance", "caption"])
    sofas, captions, floor = set(), [], []
    for index in range(len(frames)):
        frame = frames[index]
        sofas |= set(frame["instance"][frame["semantic"] == 3].unique().tolist())
        captions.append(frame["caption"])
        floor.append(frame["rgb"].permute(1, 2, 0)[frame["semantic"] == 2].float())
    floor = torch.cat(floor)  # (pixels, 3) in [0, 1]: the checkerboard's brown and grey squares both show
    brown, grey = floor[:, 0] - floor[:, 2] > 0.15, (floor[:, 0] - floor[:, 2]).abs() < 0.03
    assert brown.float().mean() > 0.1 and grey.float().mean() > 0.1, (brown.float().mean(), grey.float().mean())
    assert 1 <= len(sofas) <= 2, sofas
    assert not any(word in caption for caption in captions for word in ("three sofas", "four sofas", "six sofas"))
    nearest, share = view_quality(data)  # no frame of any split faces a blank wall
    assert nearest >= 0.9 and share <= 0.95
    assert (tmp_path / "ws" / "room" / "report" / "results.md").is_file()  # read from the run folders


@pytest.mark.parametrize("kind", ["scannetpp", "replica"])
def test_run_on_scannetpp_and_replica_scenes(kind, tmp_path, capsys):
    if kind == "scannetpp":
        root = _write_release(tmp_path / "release")
        _write_cameras(root / "data" / SCENE, _camera_pose())
        space, name = ["space=scannetpp", f"space.root={root}", f"space.scene={SCENE}"], f"scannetpp-{SCENE}"
    else:
        write_replica_scene(tmp_path / "replica")
        space, name = ["space=replica", f"space.root={tmp_path / 'replica'}"], "replica-room_0"
    code, err = _run(capsys, *space, f"workspace_dir={tmp_path / 'ws'}", "experiment.objectives=[mae]",
                     "experiment.backbones=[mae,scratch]", "experiment.deploy_backbone=mae")
    assert code == 0, err
    outputs = json.loads((tmp_path / "ws" / name / "data" / "manifest.json").read_text())["outputs"]
    assert {"wall", "floor"} <= set(outputs["class_maps"]["procedural-1"]["shared"])
    assert "| mae |" in (tmp_path / "ws" / name / "report" / "results.md").read_text()


def test_too_little_overlap_is_refused_naming_the_classes(tmp_path, capsys):
    glb, labels = write_room(tmp_path)
    labels.write_text(ROOM_LABELS.replace("[Wall, floor, sofa, lamp]", "[Wall, floor, couch, lamp]")
                      .replace("'couch*': sofa", "'couch*': couch"))
    code = main(["collect", "space=mesh", f"space.path={glb}", f"space.labels={labels}",
                 f"workspace_dir={tmp_path / 'ws'}", "tracking.enabled=false", "collect.frames.pretrain=4",
                 "collect.frames.eval=2", "collect.frames.transfer=2", "collect.size=32", "collect.transfer_spaces=[1]"])
    err = " ".join(capsys.readouterr().err.split())
    assert code != 0
    assert ("collect.transfer_spaces: space procedural-1 shares 2 class name(s) with room (wall, floor); expected "
            "at least 3 (collect.min_shared_classes). room has: Wall, floor, couch, lamp") in err
    assert not (tmp_path / "ws" / "room").exists()  # nothing left that blocks the corrected command


@pytest.mark.parametrize("spaces, message", [
    ("[{backend:mesh}]", "collect.transfer_spaces[0]: mesh spaces need path (e.g. {backend: mesh, path: ...})"),
    ("[{seed:2}]", "collect.transfer_spaces[0]: no 'backend'; expected a procedural seed (e.g. 1) or a space config"),
    ("[{backend:nowhere}]", "collect.transfer_spaces[0].backend: unknown backend 'nowhere'; expected one of"),
    ("[1.5]", "collect.transfer_spaces[0]: expected a procedural seed (e.g. 1) or a space config"),
    ("[0]", "collect.transfer_spaces[0]: seed 0 is the test space itself"),
    ("[{backend:mesh,path:/no/such/room.glb}]", "collect.transfer_spaces[0].path: /no/such/room.glb does not exist"),
    ("[{backend:mesh,path:/no/such/room.glb,labels:/no/such/labels.yaml}]",
     "collect.transfer_spaces[0].labels: /no/such/labels.yaml does not exist; expected a YAML or JSON label map"),
])
def test_bad_transfer_spaces_are_one_line_errors(spaces, message, tmp_path, capsys):
    code = main(["collect", f"workspace_dir={tmp_path}", "tracking.enabled=false", f"collect.transfer_spaces={spaces}",
                 "collect.frames.pretrain=2", "collect.frames.eval=2", "collect.frames.transfer=2", "collect.size=32"])
    assert code != 0 and message in " ".join(capsys.readouterr().err.split())


def test_partial_transfer_space_is_merged_with_its_backend_defaults(tmp_path, capsys):
    code = main(["collect", f"workspace_dir={tmp_path}", "tracking.enabled=false", "space.max_edge=0.3",
                 "collect.transfer_spaces=[{backend:procedural,seed:2}]", "collect.frames.pretrain=2",
                 "collect.frames.eval=2", "collect.frames.transfer=2", "collect.size=32", "collect.workers=1"])
    assert code == 0, capsys.readouterr().err
    plan = json.loads((tmp_path / "procedural-0" / "data" / "plan.json").read_text())["plan"]
    transfer = plan["spaces"][1]
    assert transfer["seed"] == 2 and transfer["max_edge"] == 0.1  # the backend's default, not the test space's
    assert plan["class_maps"] == [None, None]  # same taxonomy: nothing to map


def test_map_by_name_ignores_case_and_separators():
    source = Taxonomy([SemanticClass("Kitchen_Cabinet", True), SemanticClass("WALL", False),
                       SemanticClass("spaceship", True)])
    mapping = map_by_name(source, INDOOR)
    assert mapping.lookup == (0, INDOOR.id("kitchen cabinet"), INDOOR.id("wall"), 0)
    assert mapping.shared == ("Kitchen_Cabinet", "WALL") and mapping.dropped == ("spaceship",)


@pytest.mark.parametrize("value", [None, True, 3, 0.25, "it's a/b c.glb", [1, None, "x"], {"backend": "mesh",
                                                                                           "path": "/a b.glb"}])
def test_override_values_compose_back_to_themselves(value):
    cfg = load("collect", [f"+probe={override_value(value)}"])
    assert OmegaConf.to_container(cfg)["probe"] == value


def test_z_up_gltf_is_refused_with_the_up_axis_to_set(tmp_path, capsys):
    glb, labels = write_room(tmp_path, z_up=True)
    render = ["spaces", "render", "space=mesh", f"space.path={glb}", f"space.labels={labels}", "views=2", "size=32",
              f"workspace_dir={tmp_path / 'ws'}", "tracking.enabled=false"]
    assert main(render) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert "most of the area labeled floor stands vertical" in err and "set space.up_axis=z (or y)" in err
    assert main(render + ["space.up_axis=z"]) == 0, capsys.readouterr().err
