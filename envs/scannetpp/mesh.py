"""The laser-scan mesh with per-face benchmark classes and instances (the toolkit's segment-group rule)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from tst.errors import TSTError
from tst.taxonomy import Taxonomy

from tst.envs.mesh import LabeledMesh, Material
from tst.envs.scannetpp.files import MESH_FILE, read_release_json, require_file, scene_dir
from tst.envs.scannetpp.labels import benchmark_class, load_benchmark_map, load_taxonomy


def load_scene_mesh(root: str | Path, scene: str,
                    taxonomy: Taxonomy | None = None) -> tuple[LabeledMesh, dict[str, int]]:
    """The scene's mesh with benchmark labels, and {raw label: annotated objects left unlabeled}."""
    import trimesh

    directory = scene_dir(root, scene)
    taxonomy = taxonomy or load_taxonomy(root)
    mapping = load_benchmark_map(root)
    mesh_path = require_file(directory / MESH_FILE, "ScanNet++ mesh")
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
    seg_indices = np.asarray(read_release_json(segments_path, "ScanNet++ segments").get("segIndices", []), np.int64)
    if len(seg_indices) != len(vertices):
        raise TSTError(f"{segments_path}: segIndices has {len(seg_indices)} entries, expected one per mesh "
                       f"vertex ({len(vertices)})")
    anno_path = directory / "scans" / "segments_anno.json"
    groups = read_release_json(anno_path, "ScanNet++ annotation").get("segGroups")
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
