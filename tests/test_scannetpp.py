"""ScanNet++ as a space: a tiny release written in the real layout (no real data), loaded and rendered."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import trimesh
from omegaconf import OmegaConf
from scipy.spatial.transform import Rotation

from tst.camera import Camera, look_at
from tst.errors import TSTError

from tst.envs.scannetpp import (build, dslr_cameras, iphone_cameras, nerfstudio_cameras,
                                read_iphone_depth, undistort_image)

SCENE = "0a1b2c3d4e"
TOP100 = ["wall", "floor", "ceiling", "table", "chair", "book"]
THINGS = ["table", "chair", "book"]
TABLE_CENTRE = np.array([1.0, 0.0, 0.375])
TABLE_OBJECT_ID = 3
K = np.array([[300.0, 0.0, 160.0], [0.0, 310.0, 118.0], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 320, 240


def _quad(corners: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array(corners, float), np.array([[0, 1, 2], [0, 2, 3]])


def _write_release(root: Path) -> Path:
    """A 4 x 4 x 2.5 m box room (floor, walls, ceiling as separate quads) with a 1 x 0.6 x 0.75 m table."""
    parts = [  # (vertices, faces, segment ids for the part's vertices, colour)
        (*_quad([[-2, -2, 0], [2, -2, 0], [2, 2, 0], [-2, 2, 0]]), 1000, (90, 90, 90)),        # floor
        (*_quad([[-2, -2, 2.5], [-2, 2, 2.5], [2, 2, 2.5], [2, -2, 2.5]]), 1001, (250, 250, 250)),  # ceiling
        (*_quad([[2, -2, 0], [2, -2, 2.5], [2, 2, 2.5], [2, 2, 0]]), 1002, (200, 200, 180)),      # walls
        (*_quad([[-2, -2, 0], [-2, 2, 0], [-2, 2, 2.5], [-2, -2, 2.5]]), 1002, (200, 200, 180)),
        (*_quad([[-2, 2, 0], [2, 2, 0], [2, 2, 2.5], [-2, 2, 2.5]]), 1003, (200, 200, 180)),
        (*_quad([[-2, -2, 0], [-2, -2, 2.5], [2, -2, 2.5], [2, -2, 0]]), 1004, (200, 200, 180)),
    ]
    table = trimesh.creation.box(extents=(1.0, 0.6, 0.75))
    table.apply_translation(TABLE_CENTRE)
    parts.append((np.asarray(table.vertices), np.asarray(table.faces), 5007, (220, 30, 30)))
    vertices, faces, segments, colors = [], [], [], []
    offset = 0
    for part_vertices, part_faces, segment, color in parts:
        vertices.append(part_vertices)
        faces.append(part_faces + offset)
        # two segments per part (ids unrelated to vertex ids): the table spans 5007 and 5008
        ids = np.full(len(part_vertices), segment)
        if segment == 5007:
            ids[len(ids) // 2:] = 5008
        segments.append(ids)
        colors.append(np.tile(np.array(color + (255,), np.uint8), (len(part_vertices), 1)))
        offset += len(part_vertices)
    mesh = trimesh.Trimesh(np.concatenate(vertices), np.concatenate(faces),
                           vertex_colors=np.concatenate(colors), process=False)
    scans = root / "data" / SCENE / "scans"
    scans.mkdir(parents=True)
    mesh.export(scans / "mesh_aligned_0.05.ply")
    (scans / "segments.json").write_text(json.dumps(
        {"sceneId": SCENE, "segIndices": np.concatenate(segments).tolist()}))
    groups = [
        {"id": 0, "objectId": 0, "label": "floor", "segments": [1000]},
        {"id": 1, "objectId": 1, "label": "ceiling", "segments": [1001]},
        {"id": 2, "objectId": 2, "label": "walls", "segments": [1002, 1003, 1004]},
        {"id": 3, "objectId": TABLE_OBJECT_ID, "label": "table", "segments": [5007, 5008]},
        {"id": 4, "objectId": 4, "label": "mystery", "segments": []},
        {"id": 5, "objectId": 5, "label": "bottle cap", "segments": []},
    ]
    (scans / "segments_anno.json").write_text(json.dumps({"sceneId": SCENE, "segGroups": groups}))
    bench = root / "metadata" / "semantic_benchmark"
    bench.mkdir(parents=True)
    (bench / "top100.txt").write_text("\n".join(TOP100) + "\n")
    (bench / "top100_instance.txt").write_text("\n".join(THINGS) + "\n")
    (bench / "map_benchmark.csv").write_text(
        "class,count,semantic_map_to,instance_map_to\nwalls,12,wall,\ntable,40,,\nbottle cap,3,None,None\n")
    return root


def _camera_pose() -> np.ndarray:
    return look_at(np.array([-1.5, 0.3, 1.4]), TABLE_CENTRE)


def _write_cameras(scene: Path, pose: np.ndarray) -> None:
    """The same camera in dslr/colmap (world-to-camera) and dslr/nerfstudio (as the toolkit converts it)."""
    w2c = np.linalg.inv(pose)
    qx, qy, qz, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
    tx, ty, tz = w2c[:3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    for device in ("dslr", "iphone"):
        colmap = scene / device / "colmap"
        colmap.mkdir(parents=True)
        (colmap / "cameras.txt").write_text(
            "# Camera list with one line of data per camera:\n"
            f"1 OPENCV_FISHEYE {WIDTH} {HEIGHT} {fx} {fy} {cx} {cy} 0.01 -0.002 0.0 0.0\n")
        (colmap / "images.txt").write_text(
            "# Image list with two lines of data per image:\n"
            f"7 {qw} {qx} {qy} {qz} {tx} {ty} {tz} 1 DSC00007.JPG\n"
            "\n"  # an image with no 2D points has an empty second line
            f"8 1 0 0 0 0 0 0 1 DSC00008.JPG\n"
            "10.0 20.0 -1\n")
    c2w = np.linalg.inv(w2c)  # toolkit common/utils/nerfstudio.py convert_frames
    c2w[0:3, 1:3] *= -1
    c2w = c2w[np.array([1, 0, 2, 3]), :]
    c2w[2, :] *= -1
    transforms = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": WIDTH, "h": HEIGHT, "k1": 0.01,
                  "k2": -0.002, "k3": 0.0, "k4": 0.0, "camera_model": "OPENCV_FISHEYE",
                  "frames": [{"file_path": "DSC00007.JPG", "transform_matrix": c2w.tolist()}],
                  "test_frames": []}
    (scene / "dslr" / "nerfstudio").mkdir(parents=True)
    (scene / "dslr" / "nerfstudio" / "transforms.json").write_text(json.dumps(transforms))


def _project(camera: Camera, point: np.ndarray) -> np.ndarray:
    local = np.linalg.inv(camera.world_from_camera) @ np.append(point, 1.0)
    assert local[2] > 0
    return (camera.K @ local[:3])[:2] / local[2]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = _write_release(tmp_path_factory.mktemp("scannetpp"))
    _write_cameras(root / "data" / SCENE, _camera_pose())
    return root


@pytest.fixture(scope="module")
def space(release):
    return build(OmegaConf.create({"backend": "scannetpp", "root": str(release), "scene": SCENE, "nthreads": 1}))


def test_labels_taxonomy_and_unmapped(space):
    names = space.taxonomy.names
    assert names[0] == "unlabeled" and names[1:] == TOP100
    taxonomy = space.taxonomy
    assert taxonomy.is_thing(taxonomy.id("table")) and not taxonomy.is_thing(taxonomy.id("wall"))
    classes = {space.taxonomy.name(int(c)) for c in np.unique(space.mesh.face_class)}
    assert classes == {"floor", "ceiling", "wall", "table"}  # "walls" went through map_benchmark.csv
    table = space.mesh.face_class == space.taxonomy.id("table")
    assert table.sum() == 12
    assert set(np.unique(space.mesh.face_instance[table]).tolist()) == {TABLE_OBJECT_ID + 1}
    assert not space.mesh.face_instance[~table].any()  # stuff has no instance
    assert space.unmapped_labels == {"mystery": 1, "bottle cap": 1}
    assert space.mesh.vertex_colors is not None and space.name == f"scannetpp-{SCENE}"


def test_render_sees_the_table(space, release):
    (name, camera), = nerfstudio_cameras(release / "data" / SCENE / "dslr" / "nerfstudio" / "transforms.json")
    assert name == "DSC00007.JPG"
    frame = space.render(camera)
    u, v = np.round(_project(camera, TABLE_CENTRE)).astype(int)
    table = space.taxonomy.id("table")
    assert frame["semantic"][v, u] == table
    assert frame["instance"][v, u] == TABLE_OBJECT_ID + 1
    assert frame["depth"][v, u] > 0
    r, g, b = frame["rgb"][v, u].astype(int)
    assert r > g + 50 and r > b + 50  # the table's red vertex colour
    assert (frame["semantic"] == table).mean() > 0.02
    assert frame["semantic"][HEIGHT - 2, WIDTH // 2] == space.taxonomy.id("floor")


@pytest.mark.parametrize("source", ["nerfstudio", "colmap"])
def test_cameras_reproject_known_point(release, source):
    point = np.array([0.7, -0.2, 0.9])
    pose = _camera_pose()
    local = np.linalg.inv(pose) @ np.append(point, 1.0)
    expected = np.array([K[0, 0] * local[0] / local[2] + K[0, 2], K[1, 1] * local[1] / local[2] + K[1, 2]])
    cameras = dslr_cameras(release, SCENE, source)
    name, camera = cameras[0]
    assert name == "DSC00007.JPG" and (camera.width, camera.height) == (WIDTH, HEIGHT)
    np.testing.assert_allclose(camera.K, K)
    np.testing.assert_allclose(_project(camera, point), expected, atol=1e-6)
    np.testing.assert_allclose(camera.world_from_camera, pose, atol=1e-9)
    if source == "colmap":
        assert [n for n, _ in cameras] == ["DSC00007.JPG", "DSC00008.JPG"]
        np.testing.assert_allclose(cameras[1][1].world_from_camera, np.eye(4))
        assert [n for n, _ in iphone_cameras(release, SCENE)] == ["DSC00007.JPG", "DSC00008.JPG"]


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def test_iphone_depth_global_stream(tmp_path):
    depth = np.random.default_rng(0).uniform(0.0, 5.0, (3, 192, 256)).astype(np.float32)
    path = tmp_path / "depth.bin"
    path.write_bytes(_raw_deflate(depth.tobytes()))
    np.testing.assert_array_equal(read_iphone_depth(path), depth)


def test_iphone_depth_per_frame_records(tmp_path):
    lz4_block = pytest.importorskip("lz4.block")
    rng = np.random.default_rng(1)
    millimetres = rng.integers(0, 6000, (192, 256)).astype(np.uint16)
    metres = rng.uniform(0.0, 5.0, (192, 256)).astype(np.float32)
    records = [lz4_block.compress(millimetres.tobytes(), store_size=False), _raw_deflate(metres.tobytes())]
    path = tmp_path / "depth.bin"
    path.write_bytes(b"".join(len(r).to_bytes(4, "little") + r for r in records))
    depth = read_iphone_depth(path)
    assert depth.shape == (2, 192, 256) and depth.dtype == np.float32
    np.testing.assert_allclose(depth[0], millimetres / 1000.0, atol=1e-6)
    np.testing.assert_array_equal(depth[1], metres)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TSTError, match="frame 1 claims"):
        read_iphone_depth(path)


def test_undistort_fisheye_keeps_size():
    image = np.random.default_rng(2).integers(0, 255, (60, 80, 3)).astype(np.uint8)
    K_small = np.array([[60.0, 0, 40], [0, 60.0, 30], [0, 0, 1]])
    out, new_K = undistort_image(image, K_small, "OPENCV_FISHEYE", np.array([0.01, -0.002, 0.0, 0.0]))
    assert out.shape == image.shape and new_K[0, 2] == 40 and new_K[1, 2] == 30


def test_missing_data_is_a_one_line_error(release, tmp_path):
    cases = [
        ({"root": str(tmp_path / "nowhere"), "scene": SCENE}, "nowhere"),
        ({"root": str(release), "scene": "ffffffffff"}, "ffffffffff"),
        ({"root": "???", "scene": SCENE}, "space.root"),
        ({"root": str(release)}, "space.scene"),
    ]
    for cfg, needle in cases:
        with pytest.raises(TSTError) as error:
            build(OmegaConf.create({"backend": "scannetpp", "nthreads": 1, **cfg}))
        message = str(error.value)
        assert needle in message and "kaldir.vc.in.tum.de/scannetpp" in message and "\n" not in message
    copy = tmp_path / "copy"
    _write_release(copy)
    (copy / "data" / SCENE / "scans" / "segments.json").unlink()
    with pytest.raises(TSTError, match=r"segments\.json does not exist.*kaldir"):
        build(OmegaConf.create({"root": str(copy), "scene": SCENE}))
    with pytest.raises(TSTError, match=r"transforms\.json does not exist"):
        dslr_cameras(copy, SCENE)


def test_overlapping_groups_smallest_wins(tmp_path):
    root = _write_release(tmp_path / "overlap")
    anno_path = root / "data" / SCENE / "scans" / "segments_anno.json"
    anno = json.loads(anno_path.read_text())
    anno["segGroups"].append({"id": 9, "objectId": 0, "label": "book", "segments": [5008]})  # half the table
    anno_path.write_text(json.dumps(anno))
    space = build(OmegaConf.create({"root": str(root), "scene": SCENE, "nthreads": 1}))
    book, table = space.taxonomy.id("book"), space.taxonomy.id("table")
    assert (space.mesh.face_class == book).sum() > 0 and (space.mesh.face_class == table).sum() > 0
    assert (space.mesh.face_class == book).sum() + (space.mesh.face_class == table).sum() == 12
    assert set(space.mesh.face_instance[space.mesh.face_class == book].tolist()) == {1}  # objectId 0 -> 1


def test_dslr_image_undistorted(release, tmp_path):
    import cv2

    from tst.envs.scannetpp import dslr_image

    images = release / "data" / SCENE / "dslr" / "resized_images"
    images.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(images / "DSC00007.JPG"), np.full((HEIGHT, WIDTH, 3), (30, 30, 220), np.uint8))  # BGR red
    rgb, camera = dslr_image(release, SCENE, "DSC00007.JPG")
    assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb[HEIGHT // 2, WIDTH // 2, 0] > 180
    assert camera.K[0, 2] == WIDTH / 2 and camera.K[1, 2] == HEIGHT / 2
    np.testing.assert_allclose(camera.world_from_camera, _camera_pose(), atol=1e-9)
    with pytest.raises(TSTError, match="no frame"):
        dslr_image(release, SCENE, "DSC99999.JPG")


def test_config_file_defaults_ask_for_root():
    config = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "space" / "scannetpp.yaml")
    assert config.backend == "scannetpp" and config.nthreads == 0
    with pytest.raises(TSTError, match=r"space\.root: missing.*kaldir"):
        build(config)
