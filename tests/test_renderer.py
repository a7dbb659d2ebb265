"""Renderer exactness on analytic scenes built here."""

import numpy as np
import pytest

from tst.camera import Camera, intrinsics_from_fov, look_at
from tst.errors import TSTError
from tst.envs.mesh import LabeledMesh, Material, concatenate
from tst.envs.raycast import AMBIENT, BACKGROUND_RGB, LIGHT_DIRECTIONS, LIGHT_STRENGTHS, MeshRenderer

from conftest import camera_looking_up, quad_mesh


def shade_for(normal_world: np.ndarray) -> float:
    """The renderer's lighting factor for a surface with this (camera-facing) world normal."""
    return AMBIENT + sum(s * max(0.0, float(normal_world @ d)) for d, s in zip(LIGHT_DIRECTIONS, LIGHT_STRENGTHS))


@pytest.mark.parametrize("distance", [0.5, 2.0, 7.25])
def test_plane_depth_and_normals(distance):
    renderer = MeshRenderer(quad_mesh(distance, half=100.0))
    out = renderer.render(camera_looking_up(hfov=90))
    assert np.abs(out["depth"] - distance).max() < 1e-4  # z-depth, not ray length
    assert np.allclose(out["normals"], [0, 0, -1], atol=1e-5)
    assert (out["semantic"] == 1).all() and (out["instance"] == 1).all()


@pytest.mark.parametrize("class_id, instance", [(65535, 70000), (7, 2**32 - 1)])
def test_labels_at_the_ends_of_their_ranges_survive_the_packed_face_records(class_id, instance):
    """The shading kernel reads class and material from one packed int32 and the instance id from its bits:
    the largest class, a uint32 instance id and a material past the first survive the round trip."""
    colours = [Material(f"m{k}", (0.1 * k, 0.5, 0.5)) for k in range(3)]
    mesh = quad_mesh(2.0, half=100.0, class_id=class_id, instance=instance)
    mesh = LabeledMesh(mesh.vertices, mesh.faces, mesh.face_class, mesh.face_instance, [2, 2], colours,
                       corner_uvs=mesh.corner_uvs)
    out = MeshRenderer(mesh).render(camera_looking_up(hfov=90))
    assert (out["semantic"] == class_id).all() and (out["instance"] == instance).all()
    expected = MeshRenderer(quad_mesh(2.0, half=100.0, material=colours[2])).render(camera_looking_up(hfov=90))["rgb"]
    assert np.array_equal(out["rgb"], expected)


def test_plane_seen_obliquely_gives_z_depth_and_camera_frame_normals():
    # A floor at z = 0 seen by a camera at height 1.5 m pitched 30 degrees down.
    floor = LabeledMesh(np.array([[-50, -50, 0], [50, -50, 0], [50, 50, 0], [-50, 50, 0]], float),
                        np.array([[0, 1, 2], [0, 2, 3]]), [2, 2], [1, 1], [0, 0])
    pose = look_at(np.array([0.0, 0.0, 1.5]), np.array([1.0, 0.0, 1.5 - np.tan(np.radians(30))]))
    camera = Camera(intrinsics_from_fov(32, 32, 60), 32, 32, pose)
    out = MeshRenderer(floor).render(camera, ("depth", "normals"))
    v, u = np.mgrid[0:32, 0:32] + 0.5
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(camera.K).T  # camera frame, z = 1
    world = rays @ camera.rotation.T
    hit = world[..., 2] < -0.1  # rays that meet the floor well inside its 50 m extent
    expected = np.where(hit, 1.5 / np.maximum(-world[..., 2], 1e-9), 0.0)  # floor intersection, z-depth
    assert np.abs(out["depth"][hit] - expected[hit]).max() < 1e-4
    up_in_camera = camera.rotation.T @ np.array([0, 0, 1.0])
    assert np.allclose(out["normals"][hit], up_in_camera, atol=1e-5)


def test_box_fills_exactly_its_projected_pixels():
    # Camera at the origin looking along +z; a box of class 5 whose front face is the square
    # x, y in [-0.5, 0.5] at z = 2. With f = 32 px (hfov 90 at 64 px) it projects to pixels
    # u in [32 - 8, 32 + 8): exactly the pixel centres 24.5 .. 39.5.
    from tst.envs.procedural.builder import MeshBuilder
    from tst.taxonomy import INDOOR

    builder = MeshBuilder(INDOOR, max_edge=0.3)
    builder.box((-0.5, -0.5, 2.0), (0.5, 0.5, 3.0), "chair", builder.new_instance(),
                builder.material(Material("m")))
    backdrop = quad_mesh(10.0, half=100.0, class_id=INDOOR.id("wall"), instance=9)
    renderer = MeshRenderer(concatenate([builder.build(), backdrop]))
    out = renderer.render(camera_looking_up(64, 64, hfov=90))
    expected = np.zeros((64, 64), bool)
    expected[24:40, 24:40] = True
    assert np.array_equal(out["semantic"] == INDOOR.id("chair"), expected)
    assert np.array_equal(out["instance"] == 1, expected)
    assert (out["semantic"][~expected] == INDOOR.id("wall")).all()
    assert np.abs(out["depth"][expected] - 2.0).max() < 1e-4


def test_textured_quad_returns_its_texture_colours():
    blocks = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], np.uint8)
    texture = blocks.repeat(16, axis=0).repeat(16, axis=1)  # 32x32 texels, four flat blocks
    material = Material("checker", (1.0, 1.0, 1.0), texture)
    # The quad spans x, y in [-1, 1] at z = 1, exactly the 90-degree view; UV (0, 0) at (-1, -1).
    renderer = MeshRenderer(quad_mesh(1.0, half=1.0, material=material))
    out = renderer.render(camera_looking_up(64, 64, hfov=90))
    shade = shade_for(np.array([0.0, 0.0, -1.0]))
    # Image rows run along world +y, which is texture v: image row 0 is v = 0, the texture's bottom.
    centres = {(16, 16): blocks[1, 0], (16, 48): blocks[1, 1], (48, 16): blocks[0, 0], (48, 48): blocks[0, 1]}
    for (row, col), colour in centres.items():
        expected = np.minimum(255, colour * shade)
        assert np.abs(out["rgb"][row, col].astype(float) - expected).max() <= 1.0, (row, col)


def test_vertex_colours_are_interpolated():
    mesh = quad_mesh(1.0, half=1.0, material=Material("scan", vertex_colors=True))
    mesh.vertex_colors = np.array([[200, 100, 50]] * 4, np.uint8)
    out = MeshRenderer(mesh).render(camera_looking_up(16, 16, hfov=90))
    expected = np.minimum(255, np.array([200, 100, 50]) * shade_for(np.array([0.0, 0.0, -1.0])))
    assert np.abs(out["rgb"].reshape(-1, 3) - expected).max() <= 1.0


def test_rays_that_hit_nothing():
    renderer = MeshRenderer(quad_mesh(1.0, half=0.1))
    out = renderer.render(camera_looking_up(32, 32, hfov=90))
    miss = out["depth"] == 0
    assert miss[0, 0] and not miss[16, 16]
    assert (out["semantic"][miss] == 0).all() and (out["instance"][miss] == 0).all()
    assert (out["normals"][miss] == 0).all()
    assert (out["rgb"][miss] == BACKGROUND_RGB.astype(np.uint8)).all()


def test_render_subset_and_unknown_modality():
    renderer = MeshRenderer(quad_mesh(1.0))
    assert set(renderer.render(camera_looking_up(), ("depth",))) == {"depth"}
    with pytest.raises(TSTError, match="edges"):
        renderer.render(camera_looking_up(), ("edges",))


@pytest.mark.parametrize("change, message", [
    (lambda K, pose: (K, np.where(np.eye(4) == 1, np.nan, pose)), "NaN"),
    (lambda K, pose: (np.diag([0.0, 10.0, 1.0]), pose), "focal"),
    (lambda K, pose: (np.diag([-5.0, 10.0, 1.0]), pose), "focal"),
])
def test_bad_cameras_are_refused(change, message):
    K, pose = change(np.diag([10.0, 10.0, 1.0]), np.eye(4))
    with pytest.raises(TSTError, match=message):
        Camera(K, 16, 16, pose)


@pytest.mark.parametrize("width", [0, -3, 2.5])
def test_bad_image_sizes_are_refused(width):
    with pytest.raises(TSTError, match="width"):
        Camera(np.diag([10.0, 10.0, 1.0]), width, 16, np.eye(4))


def test_empty_mesh_is_refused():
    empty = LabeledMesh(np.zeros((0, 3)), np.zeros((0, 3), int), [], [], [])
    with pytest.raises(TSTError, match="no triangles"):
        MeshRenderer(empty)


def test_prefetch_hint_compiles_for_any_c_array_and_changes_nothing():
    """envs/prefetch.py: the shading kernel's cache hint compiles for the arrays it is used on (int32 face
    records, a uint8 texture atlas), leaves every value alone, and refuses a non-contiguous array."""
    import numba
    import numba.core.errors

    from tst.envs.prefetch import prefetch

    @numba.njit
    def summed(array, rows):
        total = 0
        for row in rows:
            prefetch(array, row * array.shape[1])
            total += array[row, 0]
        return total

    records = np.arange(40, dtype=np.int32).reshape(5, 8)
    assert summed(records, np.array([4, 0, 2])) == 32 + 0 + 16
    atlas = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4 * 4 * 3)
    assert summed(atlas, np.array([1])) == 48
    with pytest.raises(numba.core.errors.TypingError):
        summed(records[:, ::2], np.array([1]))
