"""Procedural apartments: deterministic per seed, different across seeds, one shared taxonomy."""

import numpy as np
import pytest

from tst.camera import Camera, intrinsics_from_fov, pose_from_yaw_pitch
from tst.errors import TSTError
from tst.envs.procedural.apartment import ProceduralSpace, generate
from tst.taxonomy import INDOOR


@pytest.fixture(scope="module")
def apartments():
    return {seed: generate(seed) for seed in (0, 1, 2)}


def test_same_seed_same_apartment(apartments):
    again = generate(1)
    first = apartments[1].mesh
    for name in ("vertices", "faces", "face_class", "face_instance", "face_material", "corner_uvs"):
        assert np.array_equal(getattr(first, name), getattr(again.mesh, name)), name
    for a, b in zip(first.materials, again.mesh.materials):
        assert a.name == b.name and np.array_equal(a.texture, b.texture)


def test_seeds_differ_in_layout_furniture_and_materials(apartments):
    a, b = apartments[0], apartments[1]
    assert a.mesh.num_faces != b.mesh.num_faces or not np.array_equal(a.mesh.vertices, b.mesh.vertices)
    assert [r.rect for r in a.rooms] != [r.rect for r in b.rooms]
    assert sorted(a.mesh.instance_classes().values()) != sorted(b.mesh.instance_classes().values())
    wall_a = next(m for m in a.mesh.materials if m.name == "paint_0").texture
    wall_b = next(m for m in b.mesh.materials if m.name == "paint_0").texture
    assert not np.array_equal(wall_a, wall_b)


def test_taxonomy_is_shared_and_uses_scannetpp_names(apartments):
    assert all(a.taxonomy == INDOOR for a in apartments.values())
    for name in ("wall", "floor", "ceiling", "door", "window", "bed", "sofa", "chair", "table", "toilet", "sink",
                 "refrigerator", "tv", "plant", "book", "bookshelf", "cabinet"):
        assert name in INDOOR.names
    assert not INDOOR.is_thing(INDOOR.id("wall")) and INDOOR.is_thing(INDOOR.id("bed"))


def test_size_and_contents(apartments):
    for apartment in apartments.values():
        stats = apartment.stats()
        assert 100_000 <= stats["triangles"] <= 1_000_000
        assert 20 <= stats["object_instances"] <= 80
        assert {"living room", "bathroom", "kitchen", "bedroom"} <= set(stats["rooms"])
        classes = {INDOOR.name(c) for c in apartment.mesh.instance_classes().values()}
        assert {"wall", "floor", "ceiling", "door", "baseboard", "window", "toilet", "bed", "sofa"} <= classes


def test_every_room_is_reachable_through_doors(apartments):
    for apartment in apartments.values():
        doors = sum(1 for r in apartment.rooms for s in r.sides for o in s.openings if o.kind == "door" and o.shared)
        assert doors // 2 >= len(apartment.rooms) - 1  # a spanning tree, each shared door seen from both sides


def test_sample_positions_are_free_and_above_the_floor():
    space = ProceduralSpace(2)
    points = space.sample_positions(60, np.random.default_rng(0), height_range=(0.5, 1.8), min_clearance=0.3)
    assert points.shape == (60, 3)
    assert (points[:, 2] >= 0.5 - 1e-6).all() and (points[:, 2] <= 1.8 + 1e-6).all()  # the floor is z = 0
    import open3d as o3d
    clearance = space.renderer.scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()
    assert clearance.min() >= 0.3 - 1e-4
    inner = [room.inner for room in space.rooms]
    assert all(any(r.x0 <= x <= r.x1 and r.y0 <= y <= r.y1 for r in inner) for x, y, _ in points)
    again = space.sample_positions(60, np.random.default_rng(0), height_range=(0.5, 1.8), min_clearance=0.3)
    assert np.array_equal(points, again)


def test_rendered_view_sees_the_apartment():
    space = ProceduralSpace(0)
    position = space.sample_positions(1, np.random.default_rng(3), (1.2, 1.4))[0]
    camera = Camera(intrinsics_from_fov(48, 48, 90), 48, 48, pose_from_yaw_pitch(position, 0.3, -0.2))
    frame = space.render(camera)
    assert set(frame.modalities) == {"rgb", "depth", "normals", "semantic", "instance"}
    assert (frame["depth"] > 0).mean() > 0.95  # indoors: nearly every ray hits something
    assert frame["depth"].max() < 15
    assert len(np.unique(frame["semantic"])) >= 2
    assert frame["rgb"].std() > 5  # shading and textures: not flat
    norms = np.linalg.norm(frame["normals"], axis=-1)
    assert np.allclose(norms[frame["depth"] > 0], 1, atol=1e-4)
    v, u = np.mgrid[0:48, 0:48] + 0.5
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(camera.K).T
    facing = (frame["normals"] * rays).sum(-1)
    assert (facing[frame["depth"] > 0] <= 1e-6).all()  # every normal faces the camera


@pytest.mark.parametrize("seed", ["3", 2.5, True])
def test_non_integer_seed_is_refused(seed):
    with pytest.raises(TSTError, match="space.seed"):
        generate(seed)
