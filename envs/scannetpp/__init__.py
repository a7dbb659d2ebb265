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

from tst.envs.scannetpp.cameras import (colmap_cameras, device_cameras, dslr_cameras, iphone_cameras,
                                       nerfstudio_cameras, nerfstudio_intrinsics, read_colmap_cameras)
from tst.envs.scannetpp.depth import IPHONE_DEPTH_SHAPE, iter_iphone_depth, read_iphone_depth
from tst.envs.scannetpp.files import GET_DATA, MESH_FILE, scene_dir
from tst.envs.scannetpp.images import dslr_image, pinhole_intrinsics, undistort_image
from tst.envs.scannetpp.labels import benchmark_class, load_benchmark_map, load_taxonomy
from tst.envs.scannetpp.mesh import load_scene_mesh
from tst.envs.scannetpp.space import CAMERA_DEVICES, build

__all__ = ["CAMERA_DEVICES", "GET_DATA", "IPHONE_DEPTH_SHAPE", "MESH_FILE", "benchmark_class", "build", "colmap_cameras",
           "device_cameras", "dslr_cameras", "dslr_image", "iphone_cameras", "iter_iphone_depth", "load_benchmark_map",
           "load_scene_mesh", "load_taxonomy", "nerfstudio_cameras", "nerfstudio_intrinsics", "pinhole_intrinsics",
           "read_colmap_cameras", "read_iphone_depth", "scene_dir", "undistort_image"]
