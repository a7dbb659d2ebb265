"""Config loading, the modality registry, taxonomies, manifests and atomic writes."""

import json

import numpy as np
import pytest

from tst import config
from tst.camera import Camera, intrinsics_from_fov, pose_from_yaw_pitch
from tst.errors import TSTError
from tst.modalities import MODALITIES, RENDERED, by_tier, get
from tst.taxonomy import INDOOR, SemanticClass, Taxonomy
from tst.workspace import fingerprint, read_manifest, staged_directory, write_manifest


def test_config_load_resolves_overrides_like_the_cli():
    cfg = config.load("spaces", ["space=procedural", "space.seed=7", "views=2"])
    assert cfg.space.backend == "procedural" and cfg.space.seed == 7 and cfg.views == 2
    assert cfg.workspace_dir == "./tst-runs" and cfg.tracking.enabled is True
    assert config.groups()["space"] == ["habitat", "mesh", "procedural", "replica", "scannetpp", "thor"]
    assert (config.config_root() / "space" / "procedural.yaml").is_file()


def test_config_errors_are_one_line():
    with pytest.raises(TSTError, match="unknown space 'x'"):
        config.load("spaces", ["space=x"])
    with pytest.raises(TSTError, match="no config for stage"):
        config.load("nostage", [])


def test_modality_registry():
    assert set(RENDERED) <= set(MODALITIES)
    assert by_tier("sensor") == ["rgb", "depth", "normals", "edges"]
    assert set(by_tier("label")) == {"semantic", "instance", "boxes", "caption"}
    assert get("depth").unit.startswith("metres")
    with pytest.raises(TSTError, match="unknown modality 'heat'"):
        get("heat")
    image = get("depth").picture(np.array([[0.0, 1.0], [2.0, 3.0]], np.float32), None)
    assert image.shape == (2, 2, 3) and (image[0, 0] == 0).all()


def test_taxonomy():
    assert INDOOR.names[0] == "unlabeled" and INDOOR.id("wall") == 1
    assert INDOOR.thing_ids and all(INDOOR.is_thing(i) for i in INDOOR.thing_ids)
    assert Taxonomy.from_dict(INDOOR.to_dict()) == INDOOR
    other = Taxonomy([SemanticClass("wall", False), SemanticClass("chair", True)])
    assert other.fingerprint() != INDOOR.fingerprint()
    with pytest.raises(TSTError, match="duplicate"):
        Taxonomy([SemanticClass("a", True), SemanticClass("a", True)])


def test_camera_round_trip_and_pose_convention():
    pose = pose_from_yaw_pitch(np.array([1.0, 2.0, 1.5]), yaw=0.0, pitch=0.0)
    assert np.allclose(pose[:3, 2], [1, 0, 0])  # forward along +x
    assert np.allclose(pose[:3, 1], [0, 0, -1])  # image down = world down
    camera = Camera(intrinsics_from_fov(64, 48, 90), 64, 48, pose)
    assert Camera.from_dict(json.loads(json.dumps(camera.to_dict()))).to_dict() == camera.to_dict()


def test_staged_directory_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "ws" / "run"
    with pytest.raises(RuntimeError):
        with staged_directory(final) as tmp:
            (tmp / "half.png").write_bytes(b"x")
            raise RuntimeError("killed")
    assert not final.exists() and list((tmp_path / "ws").iterdir()) == []
    with staged_directory(final) as tmp:
        write_manifest(tmp, "test", {"a": 1}, {}, {"n": 1})
    assert read_manifest(final)["outputs"] == {"n": 1}
    with pytest.raises(TSTError, match="already exists"):
        with staged_directory(final):
            pass


def test_fingerprints_follow_content(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"one")
    first = fingerprint(a)
    a.write_bytes(b"two")
    assert fingerprint(a) != first
    with pytest.raises(TSTError, match="no such file"):
        fingerprint(tmp_path / "missing")
    with pytest.raises(TSTError, match="missing"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("space, name", [
    ({"backend": "procedural", "seed": 3}, "procedural-3"),
    ({"backend": "mesh", "path": "/scenes/flat.glb"}, "flat"),
    ({"backend": "scannetpp", "root": "/r", "scene": "0a5c013435"}, "scannetpp-0a5c013435"),
    ({"backend": "replica", "root": "/r", "scene": "room_0"}, "replica-room_0"),
    ({"backend": "habitat", "scene": "/data/van-gogh-room.glb"}, "habitat-van-gogh-room"),
    ({"backend": "thor", "scene": "FloorPlan201", "house": None}, "FloorPlan201"),
    ({"backend": "replica", "scene": "room_0", "name": "mine"}, "mine"),
])
def test_space_names_come_from_the_config_alone(space, name):
    from omegaconf import OmegaConf

    from tst.envs.registry import space_name

    assert space_name(OmegaConf.create(space)) == name


def test_outputs_get_the_permissions_of_any_new_file(tmp_path):
    """Atomic writes and staged run folders go through tempfile (0600 / 0700) but end as the umask says."""
    import os
    import stat

    from tst.workspace import atomic_write_json, staged_directory

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with staged_directory(tmp_path / "run") as staged:
            (staged / "inner.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755


def test_a_class_keeps_its_colour_across_taxonomies():
    from tst.visualize import class_palette, label_image

    room = class_palette(["unlabeled", "Wall", "floor", "sofa"])
    apartment = class_palette(INDOOR.names)
    assert (room[0] == 0).all()
    for name in ("Wall", "floor", "sofa"):
        assert (room[["unlabeled", "Wall", "floor", "sofa"].index(name)] == apartment[INDOOR.id(name.lower())]).all()
    assert len({tuple(c) for c in apartment[1:]}) > 0.9 * (len(INDOOR) - 1)  # nearly all distinct
    image = label_image(np.array([[0, 3]]), palette=room)
    assert (image[0, 1] == room[3]).all() and (image[0, 0] == 0).all()
