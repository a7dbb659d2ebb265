"""ScanNet++ scenes as test spaces: the laser-scan mesh with benchmark labels, plus its cameras and iPhone depth.

Release layout read here (as the official toolkit github.com/scannetpp/scannetpp names it in
`common/scene_release.py`):

    <root>/metadata/semantic_benchmark/top100.txt            benchmark classes, one per line
    <root>/metadata/semantic_benchmark/top100_instance.txt   the instance ("thing") subset of them
    <root>/metadata/semantic_benchmark/map_benchmark.csv     raw label -> benchmark class (optional)
    <root>/data/<scene>/scans/mesh_aligned_0.05.ply          mesh, vertex colours, z-up metres
    <root>/data/<scene>/scans/segments.json                  {"segIndices": segment id per vertex}
    <root>/data/<scene>/scans/segments_anno.json             {"segGroups": [{id, objectId, label, segments, obb}]}
    <root>/data/<scene>/dslr/nerfstudio/transforms.json      DSLR cameras (nerfstudio convention)
    <root>/data/<scene>/dslr/colmap/{cameras,images}.txt     DSLR cameras (COLMAP, world-to-camera)
    <root>/data/<scene>/iphone/colmap/{cameras,images}.txt   iPhone cameras (COLMAP)
    <root>/data/<scene>/iphone/depth.bin                     iPhone depth, 256x192 per frame

Labels follow the toolkit's `semantic/transforms/mesh.py`: a vertex belongs to a segment group when its
SEGMENT id (segIndices[v]) is in the group's `segments`; a vertex in several groups keeps the smallest
group (fewest vertices). A face takes the group most of its 3 vertices carry (its first vertex's on a
three-way tie). Instance ids are `objectId + 1` (so 0 stays "none"; objectId can be 0), and only groups
whose class is in top100_instance.txt get one, as in the toolkit's instance benchmark; stuff (wall,
floor, ...) has instance 0.
"""

from __future__ import annotations

import csv
import functools
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
from omegaconf import DictConfig
from scipy.spatial.transform import Rotation

from tst.camera import Camera
from tst.errors import TSTError
from tst.taxonomy import SemanticClass, Taxonomy

from tst.envs.mesh import LabeledMesh, Material
from tst.envs.registry import space_name

GET_DATA = ("ScanNet++ is not downloadable without an approved application at "
            "https://kaldir.vc.in.tum.de/scannetpp (then use its download script)")
IPHONE_DEPTH_SHAPE = (192, 256)  # height, width of iPhone depth frames
MESH_FILE = "scans/mesh_aligned_0.05.ply"
# nerfstudio's applied_transform for COLMAP data: world (x, y, z) -> (y, x, -z); it is its own inverse.
NERFSTUDIO_WORLD = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], dtype=np.float64)
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips camera y and z axes (right-multiplied)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise TSTError(f"{what}: {path} does not exist; expected a ScanNet++ release there. {GET_DATA}")
    return path


def _read_json(path: Path, what: str) -> dict:
    _require(path, what)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TSTError(f"{what}: cannot read {path} as JSON ({str(error).splitlines()[0]})") from None


def scene_dir(root: str | Path, scene: str) -> Path:
    """<root>/data/<scene>, checked to exist."""
    root = _require(Path(root), "space.root")
    _require(root / "data", "space.root")
    return _require(root / "data" / str(scene), "space.scene")


# --------------------------------------------------------------------------- classes


def _read_names(path: Path) -> list[str]:
    _require(path, "ScanNet++ class list")
    names = [line.strip() for line in path.read_text().splitlines()]
    return [n for n in names if n]


def load_taxonomy(root: str | Path) -> Taxonomy:
    """The benchmark taxonomy: top100.txt in order (id 0 = unlabeled), thing = listed in top100_instance.txt."""
    folder = Path(root) / "metadata" / "semantic_benchmark"
    names = _read_names(folder / "top100.txt")
    things = set(_read_names(folder / "top100_instance.txt"))
    if not names:
        raise TSTError(f"{folder / 'top100.txt'}: no class names; expected one benchmark class per line")
    return Taxonomy([SemanticClass(n, n in things) for n in names])


def load_benchmark_map(root: str | Path) -> dict[str, str | None]:
    """raw label -> benchmark class (None = explicitly dropped) from map_benchmark.csv; {} when absent.

    Columns (toolkit `semantic/prep/map_semantic.py`): class, count, semantic_map_to, instance_map_to.
    An empty semantic_map_to keeps the label as it is, "None" drops it, anything else renames it.
    """
    path = Path(root) / "metadata" / "semantic_benchmark" / "map_benchmark.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "class" not in columns or "semantic_map_to" not in columns:
            raise TSTError(f"{path}: expected columns 'class' and 'semantic_map_to', found {columns}")
        mapping: dict[str, str | None] = {}
        for row in reader:
            raw = (row["class"] or "").strip()
            target = (row["semantic_map_to"] or "").strip()
            if raw:
                mapping[raw] = None if target == "None" else (target or raw)
    return mapping


def benchmark_class(label: str, taxonomy: Taxonomy, mapping: dict[str, str | None]) -> int:
    """Taxonomy id of a raw annotation label (0 when it maps to no benchmark class)."""
    target = mapping[label] if label in mapping else label
    if target is None or target not in taxonomy.names:
        return 0
    return taxonomy.id(target)


# --------------------------------------------------------------------------- mesh and labels


def load_scene_mesh(root: str | Path, scene: str,
                    taxonomy: Taxonomy | None = None) -> tuple[LabeledMesh, dict[str, int]]:
    """The scene's mesh with benchmark labels, and {raw label: annotated objects left unlabeled}."""
    import trimesh

    directory = scene_dir(root, scene)
    taxonomy = taxonomy or load_taxonomy(root)
    mapping = load_benchmark_map(root)
    mesh_path = _require(directory / MESH_FILE, "ScanNet++ mesh")
    try:
        scan = trimesh.load(str(mesh_path), force="mesh", process=False)
    except Exception as error:  # trimesh raises many types for malformed files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TSTError(f"ScanNet++ mesh: cannot read {mesh_path} as PLY ({reason})") from None
    vertices = np.asarray(scan.vertices, np.float32)
    faces = np.asarray(scan.faces, np.int64)
    colors = None
    if isinstance(scan.visual, trimesh.visual.ColorVisuals) and scan.visual.kind == "vertex":
        colors = np.asarray(scan.visual.vertex_colors)[:, :3]

    segments_path = directory / "scans" / "segments.json"
    seg_indices = np.asarray(_read_json(segments_path, "ScanNet++ segments").get("segIndices", []), np.int64)
    if len(seg_indices) != len(vertices):
        raise TSTError(f"{segments_path}: segIndices has {len(seg_indices)} entries, expected one per mesh "
                       f"vertex ({len(vertices)})")
    anno_path = directory / "scans" / "segments_anno.json"
    groups = _read_json(anno_path, "ScanNet++ annotation").get("segGroups")
    if not isinstance(groups, list):
        raise TSTError(f"{anno_path}: expected a 'segGroups' list")

    # Compact segment ids, then a group per segment: the smallest group containing it wins.
    unique_segments, vertex_segment = np.unique(seg_indices, return_inverse=True)
    segment_sizes = np.bincount(vertex_segment, minlength=len(unique_segments))
    group_class = np.zeros(len(groups) + 1, np.int64)  # index 0 = no group
    group_instance = np.zeros(len(groups) + 1, np.int64)
    group_segments, group_sizes = [], []
    unmapped: Counter[str] = Counter()
    for index, group in enumerate(groups, start=1):
        label = str(group.get("label", ""))
        class_id = benchmark_class(label, taxonomy, mapping)
        if class_id == 0:
            unmapped[label] += 1
        group_class[index] = class_id
        if class_id and taxonomy.is_thing(class_id):
            group_instance[index] = int(group.get("objectId", group.get("id", index - 1))) + 1
        ids = np.asarray(group.get("segments", []), np.int64)
        positions = np.clip(np.searchsorted(unique_segments, ids), 0, len(unique_segments) - 1)
        positions = positions[unique_segments[positions] == ids] if len(ids) else positions
        group_segments.append(np.unique(positions))
        group_sizes.append(int(segment_sizes[group_segments[-1]].sum()))
    segment_group = np.zeros(len(unique_segments), np.int64)
    for index in sorted(range(len(groups)), key=lambda i: -group_sizes[i]):  # largest first, smallest last
        if group_class[index + 1]:
            segment_group[group_segments[index]] = index + 1
    vertex_group = segment_group[vertex_segment]

    corner = vertex_group[faces]  # (F, 3) group per face corner; majority vote
    face_group = np.where(corner[:, 1] == corner[:, 2], corner[:, 1], corner[:, 0])
    face_group = np.where(corner[:, 0] == corner[:, 1], corner[:, 0], face_group)
    face_group = np.where(corner[:, 0] == corner[:, 2], corner[:, 0], face_group)
    material = Material("scan", (1.0, 1.0, 1.0), vertex_colors=colors is not None)
    mesh = LabeledMesh(vertices, faces, group_class[face_group], group_instance[face_group],
                       np.zeros(len(faces), np.int32), [material], vertex_colors=colors)
    mesh.validate(str(mesh_path))
    return mesh, dict(unmapped)


# --------------------------------------------------------------------------- cameras


def _pose_from_colmap(qvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """(4, 4) world_from_camera of a COLMAP image (its qvec/tvec are world-to-camera, OpenCV axes)."""
    w, x, y, z = np.asarray(qvec, float)
    rotation = Rotation.from_quat([x, y, z, w]).as_matrix()  # COLMAP stores [w, x, y, z]; scipy takes [x, y, z, w]
    pose = np.eye(4)
    pose[:3, :3] = rotation.T
    pose[:3, 3] = -rotation.T @ np.asarray(tvec, float)
    return pose


# COLMAP model name -> how its params start: "f" = (f, cx, cy, ...), "fxfy" = (fx, fy, cx, cy, ...)
_COLMAP_FOCAL = {"SIMPLE_PINHOLE": "f", "SIMPLE_RADIAL": "f", "RADIAL": "f", "SIMPLE_RADIAL_FISHEYE": "f",
                 "RADIAL_FISHEYE": "f", "PINHOLE": "fxfy", "OPENCV": "fxfy", "OPENCV_FISHEYE": "fxfy",
                 "FULL_OPENCV": "fxfy", "FOV": "fxfy", "THIN_PRISM_FISHEYE": "fxfy"}


def read_colmap_cameras(path: str | Path) -> dict[int, dict]:
    """cameras.txt -> {camera id: {model, width, height, K (3, 3), distortion (params after the intrinsics)}}."""
    path = _require(Path(path), "COLMAP cameras")
    cameras = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            camera_id, model, width, height = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = np.array([float(p) for p in parts[4:]])
        except (IndexError, ValueError):
            raise TSTError(f"{path}:{number}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'") from None
        if model not in _COLMAP_FOCAL:
            raise TSTError(f"{path}:{number}: unknown camera model {model}; expected one of {', '.join(_COLMAP_FOCAL)}")
        if _COLMAP_FOCAL[model] == "f":
            fx = fy = params[0]
            cx, cy, rest = params[1], params[2], params[3:]
        else:
            fx, fy, cx, cy, rest = params[0], params[1], params[2], params[3], params[4:]
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        cameras[camera_id] = {"model": model, "width": width, "height": height, "K": K, "distortion": rest}
    return cameras


def colmap_cameras(colmap_dir: str | Path) -> list[tuple[str, Camera]]:
    """(image name, Camera) for every image of a COLMAP text model (cameras.txt + images.txt).

    images.txt: per image a line `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME` (world-to-camera) then a
    line of 2D points (possibly empty). The Camera holds the pinhole part (fx, fy, cx, cy) of the model;
    distorted models (OPENCV_FISHEYE for raw DSLR images) need `undistort_image` for exact pixels.
    """
    return [(name, camera) for name, camera, _ in _colmap_images(colmap_dir)]


def _colmap_images(colmap_dir: str | Path) -> list[tuple[str, Camera, dict]]:
    """(image name, Camera, its read_colmap_cameras entry) for every image of a COLMAP text model."""
    colmap_dir = Path(colmap_dir)
    intrinsics = read_colmap_cameras(colmap_dir / "cameras.txt")
    path = _require(colmap_dir / "images.txt", "COLMAP images")
    lines = path.read_text().splitlines()
    result = []
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        number += 1
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            qvec = np.array([float(v) for v in parts[1:5]])
            tvec = np.array([float(v) for v in parts[5:8]])
            camera_id, name = int(parts[8]), " ".join(parts[9:])
        except (IndexError, ValueError):
            raise TSTError(f"{path}:{number}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'") from None
        if camera_id not in intrinsics:
            raise TSTError(f"{path}:{number}: camera {camera_id} is not in {colmap_dir / 'cameras.txt'}")
        number += 1  # the 2D points line that follows every image line
        camera = intrinsics[camera_id]
        result.append((name, Camera(camera["K"], camera["width"], camera["height"], _pose_from_colmap(qvec, tvec)),
                       camera))
    return result


def nerfstudio_intrinsics(data: dict, frame: dict | None = None) -> dict:
    """{model, width, height, K, distortion} of a transforms.json (a frame's own keys override the top level)."""
    frame = frame or {}

    def get(key: str, default: float | None = None) -> float:
        value = frame.get(key, data.get(key, default))
        if value is None:
            raise TSTError(f"transforms.json: missing '{key}'")
        return float(value)

    model = str(frame.get("camera_model", data.get("camera_model", "PINHOLE")))
    K = np.array([[get("fl_x"), 0.0, get("cx")], [0.0, get("fl_y"), get("cy")], [0.0, 0.0, 1.0]])
    keys = ("k1", "k2", "k3", "k4") if model == "OPENCV_FISHEYE" else ("k1", "k2", "p1", "p2")
    distortion = np.array([get(k, 0.0) for k in keys]) if model != "PINHOLE" else np.zeros(0)
    return {"model": model, "width": int(get("w")), "height": int(get("h")), "K": K, "distortion": distortion}


def nerfstudio_cameras(path: str | Path, include_test: bool = True) -> list[tuple[str, Camera]]:
    """(file_path, Camera) for `frames` (and `test_frames`) of a nerfstudio transforms.json.

    ScanNet++ writes transform_matrix as camera-to-world with OpenGL camera axes (x right, y up, z back)
    in nerfstudio's permuted world: the toolkit's `common/utils/nerfstudio.py` takes COLMAP's c2w, negates
    columns 1-2, swaps rows 0 and 1 and negates row 2. We undo that: world_from_camera =
    A^-1 @ T @ diag(1, -1, -1, 1), A = `applied_transform` when the file has it, else that permutation.
    """
    return [(name, camera) for name, camera, _ in _nerfstudio_frames(path, include_test)]


def _nerfstudio_frames(path: str | Path, include_test: bool = True) -> list[tuple[str, Camera, dict]]:
    """(file_path, Camera, its nerfstudio_intrinsics) for the frames of a transforms.json."""
    path = Path(path)
    data = _read_json(path, "nerfstudio transforms")
    applied = np.eye(4)
    if "applied_transform" in data:
        applied[:3, :] = np.asarray(data["applied_transform"], float)[:3, :4]
    else:
        applied = NERFSTUDIO_WORLD
    world_from_ns = np.linalg.inv(applied)
    frames = list(data.get("frames", [])) + (list(data.get("test_frames", [])) if include_test else [])
    result = []
    for frame in frames:
        intrinsics = nerfstudio_intrinsics(data, frame)
        matrix = np.eye(4)
        matrix[:3, :] = np.asarray(frame["transform_matrix"], float)[:3, :4]
        pose = world_from_ns @ matrix @ OPENGL_TO_OPENCV
        result.append((str(frame["file_path"]),
                       Camera(intrinsics["K"], intrinsics["width"], intrinsics["height"], pose), intrinsics))
    return result


def device_cameras(root: str | Path, scene: str, device: str, source: str) -> list[tuple[str, Camera]]:
    """The scene's cameras of `device` (dslr | iphone) from <device>/nerfstudio/transforms.json
    ("nerfstudio") or <device>/colmap ("colmap")."""
    directory = scene_dir(root, scene) / device
    if source == "nerfstudio":
        return nerfstudio_cameras(directory / "nerfstudio" / "transforms.json")
    if source == "colmap":
        return colmap_cameras(directory / "colmap")
    raise TSTError(f"{device} cameras: source must be 'nerfstudio' or 'colmap', got {source!r}")


def dslr_cameras(root: str | Path, scene: str, source: str = "nerfstudio") -> list[tuple[str, Camera]]:
    return device_cameras(root, scene, "dslr", source)


def iphone_cameras(root: str | Path, scene: str, source: str = "colmap") -> list[tuple[str, Camera]]:
    return device_cameras(root, scene, "iphone", source)


# --------------------------------------------------------------------------- iPhone depth


def _inflate(data: bytes) -> bytes | None:
    """Raw-deflate (zlib wbits=-15, as the toolkit writes) `data` entirely, or None when it is not that."""
    try:
        inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
        out = inflater.decompress(data) + inflater.flush()
    except zlib.error:
        return None
    return out if inflater.eof and not inflater.unused_data else None


def iter_iphone_depth(path: str | Path, shape: tuple[int, int] = IPHONE_DEPTH_SHAPE) -> Iterator[np.ndarray]:
    """Depth frames (H, W) float32 metres from an iPhone depth.bin, in both encodings the toolkit
    (`iphone/prepare_iphone_data.py`, extract_depth) reads:

    (a) the whole file one raw-deflate stream (zlib, wbits=-15) of float32 metres, frames back to back;
    (b) per-frame records: a 4-byte little-endian byte count, then that many bytes of one frame,
        lz4-block-compressed uint16 millimetres or raw-deflate float32 metres.
    """
    path = _require(Path(path), "iPhone depth")
    height, width = shape
    data = path.read_bytes()
    whole = _inflate(data)
    if whole is not None and len(whole) % (height * width * 4) == 0 and whole:
        depth = np.frombuffer(whole, dtype="<f4").reshape(-1, height, width)
        yield from (frame.astype(np.float32) for frame in depth)
        return
    offset, index = 0, 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise TSTError(f"{path}: truncated record header at byte {offset}; expected a 4-byte length")
        size = int.from_bytes(data[offset:offset + 4], "little")
        record = data[offset + 4:offset + 4 + size]
        if len(record) != size:
            raise TSTError(f"{path}: frame {index} claims {size} bytes but only {len(record)} remain")
        offset += 4 + size
        yield _decode_depth_record(record, shape, f"{path}: frame {index}")
        index += 1


def _decode_depth_record(record: bytes, shape: tuple[int, int], where: str) -> np.ndarray:
    height, width = shape
    lz4_error = None
    try:
        import lz4.block

        raw = lz4.block.decompress(record, uncompressed_size=height * width * 2)
        if len(raw) == height * width * 2:
            return np.frombuffer(raw, dtype="<u2").reshape(height, width).astype(np.float32) / 1000.0
    except ImportError:
        lz4_error = "the lz4 package is not installed (pip install lz4)"
    except Exception:  # lz4 raises LZ4BlockError for data that is not lz4
        pass
    raw = _inflate(record)
    if raw is not None and len(raw) == height * width * 4:
        return np.frombuffer(raw, dtype="<f4").reshape(height, width).astype(np.float32)
    hint = f"; {lz4_error}" if lz4_error else ""
    raise TSTError(f"{where}: not an lz4 uint16 or zlib float32 {width}x{height} depth frame{hint}")


def read_iphone_depth(path: str | Path, shape: tuple[int, int] = IPHONE_DEPTH_SHAPE) -> np.ndarray:
    """All frames of an iPhone depth.bin as (N, H, W) float32 metres (0 = no depth)."""
    frames = list(iter_iphone_depth(path, shape))
    return np.stack(frames) if frames else np.zeros((0, *shape), np.float32)


# --------------------------------------------------------------------------- DSLR images


def pinhole_intrinsics(K: np.ndarray, model: str, distortion: np.ndarray, width: int, height: int) -> np.ndarray:
    """(3, 3) intrinsics of the pinhole copy `undistort_image` makes of a `model` image of that size."""
    import cv2

    K = np.asarray(K, np.float64)
    if model in ("PINHOLE", "OPENCV"):
        return K.copy()
    if model == "OPENCV_FISHEYE":
        new_K = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(
            K, np.asarray(distortion, np.float64), (width, height), np.eye(3), balance=0.0)
        new_K[0, 2], new_K[1, 2] = width / 2.0, height / 2.0
        return new_K
    raise TSTError(f"undistort_image: camera model {model} is not supported; expected PINHOLE, OPENCV or "
                   "OPENCV_FISHEYE")


def undistort_image(image: np.ndarray, K: np.ndarray, model: str,
                    distortion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A pinhole copy of a distorted image and its intrinsics (same size).

    OPENCV_FISHEYE follows the toolkit's `dslr/undistort.py` (balance 0, principal point at the centre);
    OPENCV keeps K. PINHOLE images come back unchanged.
    """
    import cv2

    height, width = image.shape[:2]
    K = np.asarray(K, np.float64)
    distortion = np.asarray(distortion, np.float64)
    if model == "PINHOLE":
        return image, K
    new_K = pinhole_intrinsics(K, model, distortion, width, height)
    if model == "OPENCV_FISHEYE":
        map1, map2 = cv2.fisheye.initUndistortRectifyMap(K, distortion, np.eye(3), new_K, (width, height),
                                                         cv2.CV_32FC1)
    else:
        map1, map2 = cv2.initUndistortRectifyMap(K, distortion, np.eye(3), new_K, (width, height), cv2.CV_32FC1)
    out = cv2.remap(image, map1, map2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out, new_K


def dslr_image(root: str | Path, scene: str, name: str, folder: str = "resized_images",
               undistort: bool = True) -> tuple[np.ndarray, Camera]:
    """A real DSLR image (H, W, 3) uint8 RGB and its Camera, from dslr/<folder>/<name> with the pose and
    intrinsics of dslr/nerfstudio/transforms.json (which describe resized_images). With `undistort`, a
    fisheye (OPENCV_FISHEYE) image is resampled to a pinhole copy whose K the returned Camera carries.
    """
    import cv2

    directory = scene_dir(root, scene) / "dslr"
    transforms_path = directory / "nerfstudio" / "transforms.json"
    data = _read_json(transforms_path, "nerfstudio transforms")
    cameras = dict(nerfstudio_cameras(transforms_path))
    if name not in cameras:
        raise TSTError(f"{transforms_path}: no frame with file_path {name!r}")
    path = _require(directory / folder / name, "DSLR image")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise TSTError(f"DSLR image: cannot decode {path}; expected a JPEG or PNG")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    frame = next(f for f in list(data.get("frames", [])) + list(data.get("test_frames", []))
                 if str(f["file_path"]) == name)
    intrinsics = nerfstudio_intrinsics(data, frame)
    if image.shape[:2] != (intrinsics["height"], intrinsics["width"]):
        raise TSTError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, transforms.json says "
                       f"{intrinsics['width']}x{intrinsics['height']}")
    camera = cameras[name]
    if undistort and intrinsics["model"] != "PINHOLE":
        image, new_K = undistort_image(image, intrinsics["K"], intrinsics["model"], intrinsics["distortion"])
        camera = Camera(new_K, camera.width, camera.height, camera.world_from_camera)
    return image, camera


# --------------------------------------------------------------------------- the space

CAMERA_DEVICES = {"dslr": ("nerfstudio", "resized_images"), "iphone": ("colmap", "rgb")}  # default source, images


@functools.cache
def _scannetpp_space_class():
    from tst.envs.mesh_space import MeshSpace

    class ScannetppSpace(MeshSpace):
        """A ScanNet++ scene whose own DSLR or iPhone cameras (`scene_cameras`) and real images
        (`scene_image`, undistorted pinhole copies) are available to collect (`collect.poses=scene`)."""

        def __init__(self, *args, root: Path, scene: str, device: str, source: str, **kwargs):
            super().__init__(*args, **kwargs)
            self.root, self.scene, self.device, self.camera_source = root, scene, device, source
            self._cameras: dict[str, tuple[Camera, dict]] | None = None

        def _load_cameras(self) -> dict[str, tuple[Camera, dict]]:
            """name -> (pinhole Camera of the undistorted image, original intrinsics), read once."""
            if self._cameras is None:
                directory = scene_dir(self.root, self.scene) / self.device
                if self.camera_source == "nerfstudio":
                    frames = _nerfstudio_frames(directory / "nerfstudio" / "transforms.json")
                else:
                    frames = _colmap_images(directory / "colmap")
                cameras = {}
                for name, camera, intrinsics in frames:
                    model, distortion = intrinsics["model"], np.asarray(intrinsics["distortion"])
                    if model not in ("PINHOLE", "OPENCV", "OPENCV_FISHEYE") and not np.any(distortion):
                        model = "PINHOLE"
                    intrinsics = dict(intrinsics, model=model)
                    K = pinhole_intrinsics(camera.K, model, distortion, camera.width, camera.height)
                    cameras[name] = (Camera(K, camera.width, camera.height, camera.world_from_camera), intrinsics)
                self._cameras = cameras
            return self._cameras

        def scene_cameras(self) -> list[tuple[str, Camera]]:
            return [(name, camera) for name, (camera, _) in self._load_cameras().items()]

        def scene_image(self, name: str) -> np.ndarray | None:
            import cv2

            camera, intrinsics = self._load_cameras()[name]
            directory = scene_dir(self.root, self.scene) / self.device
            path = next((p for p in (directory / CAMERA_DEVICES[self.device][1] / name, directory / name)
                         if p.is_file()), None)
            if path is None:
                return None
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise TSTError(f"{self.device} image: cannot decode {path}; expected a JPEG or PNG")
            if image.shape[:2] != (camera.height, camera.width):
                raise TSTError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, its camera says "
                               f"{camera.width}x{camera.height}")
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            image, _ = undistort_image(image, intrinsics["K"], intrinsics["model"], intrinsics["distortion"])
            return image

    return ScannetppSpace


def build(cfg: DictConfig):
    """`space=scannetpp space.root=<release root> space.scene=<scene id>`: the scene as a MeshSpace.

    `space.cameras` (dslr | iphone, default dslr) and `space.camera_source` (nerfstudio | colmap; default
    nerfstudio for the DSLR, colmap for the iPhone) pick the scene's own cameras for `collect.poses=scene`.

    The space carries `unmapped_labels` ({raw label: annotated objects left unlabeled}) and `source_files`.
    """
    for key, hint in (("root", "the ScanNet++ release root (holding data/ and metadata/)"),
                      ("scene", "a scene id such as 0a5c013435")):
        if cfg.get(key) in (None, "", "???"):
            raise TSTError(f"space.{key}: missing; expected {hint} (space.{key}=...). {GET_DATA}")
    root, scene = Path(str(cfg.root)), str(cfg.scene)
    device = str(cfg.get("cameras") or "dslr")
    if device not in CAMERA_DEVICES:
        raise TSTError(f"space.cameras: expected one of {', '.join(CAMERA_DEVICES)}, got {device!r}")
    source = str(cfg.get("camera_source") or CAMERA_DEVICES[device][0])
    if source not in ("nerfstudio", "colmap"):
        raise TSTError(f"space.camera_source: expected nerfstudio or colmap, got {source!r}")
    scene_dir(root, scene)  # one-line error naming the missing folder first
    taxonomy = load_taxonomy(root)
    mesh, unmapped = load_scene_mesh(root, scene, taxonomy)
    if unmapped:
        from rich.console import Console

        total = sum(unmapped.values())
        top = ", ".join(f"{label} ({count})" for label, count in Counter(unmapped).most_common(8))
        Console(stderr=True, soft_wrap=True).print(
            f"scannetpp {scene}: {total} annotated objects with {len(unmapped)} labels outside the benchmark "
            f"classes are unlabeled: {top}", markup=False, highlight=False)
    space = _scannetpp_space_class()(space_name(cfg), mesh, taxonomy,
                                     int(cfg.get("nthreads", 0)), root=root, scene=scene, device=device, source=source)
    directory = root / "data" / scene
    space.source_files = {"mesh": directory / MESH_FILE, "segments": directory / "scans" / "segments.json",
                          "annotation": directory / "scans" / "segments_anno.json",
                          "classes": root / "metadata" / "semantic_benchmark" / "top100.txt"}
    space.unmapped_labels = unmapped
    return space
