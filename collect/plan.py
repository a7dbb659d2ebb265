"""The collection plan: every frame's space, camera, split, path and step, decided before rendering.

Planning is deterministic for a seed and cheap (low-resolution probes only), and the plan is saved, so
a resumed collection renders exactly the frames the interrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from scipy.spatial import cKDTree

from tst.camera import Camera
from tst.errors import TSTError, rekeyed
from tst.envs.base import TestSpace
from tst.taxonomy import map_by_name

from tst.collect.trajectories import NavGrid, WalkSettings, walk
from tst.collect.view_sampling import ViewSettings, informative, probe_pose, sample_views

console = Console(stderr=True)
SPLITS = ("pretrain", "eval", "transfer")
VIEW_PATH = -1  # path id of frames from independent views


@dataclass
class PlannedFrame:
    key: str
    split: str
    space: int  # index into Plan.spaces
    camera: Camera
    path_id: int
    step: int
    source: str | None = None  # the space's own camera (scene_cameras name) this frame is, if any

    def to_dict(self) -> dict:
        return {"key": self.key, "split": self.split, "space": self.space, "camera": self.camera.to_dict(),
                "path_id": self.path_id, "step": self.step, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> PlannedFrame:
        return cls(d["key"], d["split"], d["space"], Camera.from_dict(d["camera"]), d["path_id"], d["step"],
                   d.get("source"))


def square_crop(width: int, height: int) -> tuple[int, int, int]:
    """(x0, y0, side) of the centred square crop of a width x height image."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def square_camera(camera: Camera, size: int) -> Camera:
    """`camera` centre-cropped to a square and scaled to size x size pixels (pixel centres at i + 0.5)."""
    x0, y0, side = square_crop(camera.width, camera.height)
    scale = size / side
    K = camera.K.copy()
    K[0, 0], K[1, 1] = K[0, 0] * scale, K[1, 1] * scale
    K[0, 2], K[1, 2] = (K[0, 2] - x0) * scale, (K[1, 2] - y0) * scale
    return Camera(K, size, size, camera.world_from_camera)


def square_image(image: np.ndarray, size: int) -> np.ndarray:
    """`image` centre-cropped to a square and resized (area averaging) to size x size, as `square_camera`."""
    import cv2

    x0, y0, side = square_crop(image.shape[1], image.shape[0])
    crop = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])
    return crop if side == size else cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


@dataclass
class Plan:
    """spaces: space configs (index 0 = the test space). frames: split -> planned frames.
    eval_min_distance: the actual smallest distance (metres) between an eval and a pretrain camera.
    class_maps: per space, how its classes map onto the test space's taxonomy by name
    (`ClassMapping.to_dict()`), or None where the taxonomies are equal (always for the test space)."""

    spaces: list[dict]
    space_names: list[str]
    frames: dict[str, list[PlannedFrame]]
    eval_min_distance: float | None
    class_maps: list[dict | None] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"spaces": self.spaces, "space_names": self.space_names, "eval_min_distance": self.eval_min_distance,
                "class_maps": self.class_maps,
                "frames": {split: [f.to_dict() for f in frames] for split, frames in self.frames.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        frames = {split: [PlannedFrame.from_dict(f) for f in fs] for split, fs in d["frames"].items()}
        class_maps = d.get("class_maps") or [None] * len(d["spaces"])  # plans written before class maps
        return cls(d["spaces"], d["space_names"], frames, d["eval_min_distance"], class_maps)


def view_settings(cfg: DictConfig) -> ViewSettings:
    v = cfg.views
    return ViewSettings(tuple(v.height_range), v.min_clearance, v.spacing, tuple(v.pitch_deg), v.roll_deg,
                        v.min_view_depth, cfg.hfov_deg, v.max_class_share)


def walk_settings(cfg: DictConfig) -> WalkSettings:
    w = cfg.walks
    return WalkSettings(w.step_m, w.turn_deg, w.camera_height, w.radius, w.pitch_deg, w.frames_per_path,
                        w.cell, cfg.hfov_deg)


def frame_counts(cfg: DictConfig) -> dict[str, int]:
    counts = {}
    for split in SPLITS:
        value = cfg.frames.get(split, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TSTError(f"collect.frames.{split}: expected a non-negative integer, got {value!r}")
        counts[split] = value
    if sum(counts[s] for s in cfg.splits) == 0:
        raise TSTError("collect.frames: every requested split has 0 frames; expected at least one frame")
    return counts


def _split_frames(space: TestSpace, space_index: int, split: str, n: int, cfg: DictConfig, rng: np.random.Generator,
                  avoid: np.ndarray | None, first_path_id: int) -> list[tuple[Camera, int, int, int]]:
    """(camera, space index, path id, step) for `n` frames of one split in one space, mixing agent walks
    and views. The views stay within `views.near_walks` metres of the split's walks when it has walks,
    so a held-out split occupies a few corridors of the space rather than all of it."""
    if n == 0:
        return []
    mix = cfg.mix[split]
    n_views = int(round(n * float(mix.views) / max(float(mix.views) + float(mix.walks), 1e-9)))
    distance = float(cfg.eval_min_distance) if avoid is not None else 0.0
    frames = []
    if n - n_views:
        grid = NavGrid(space, walk_settings(cfg), avoid, distance)
        settings = view_settings(cfg)

        def keep(pose: np.ndarray) -> bool:  # walks pass the same view-quality rule as views
            return informative(probe_pose(space, pose, settings.hfov_deg), settings)
        frames += [(camera, space_index, path, step) for camera, path, step in
                   walk(grid, n - n_views, cfg.size, rng, walk_settings(cfg), first_path_id, keep)]
    near = np.array([c.position for c, *_ in frames]) if frames and split == "eval" else None
    if n_views:
        frames = [(camera, space_index, VIEW_PATH, 0) for camera in
                  sample_views(space, n_views, cfg.size, rng, view_settings(cfg), avoid, distance, near,
                               float(cfg.views.near_walks))] + frames
    return frames


def _scene_frames(space: TestSpace, counts: dict[str, int], cfg: DictConfig,
                  rng) -> dict[str, list[tuple[Camera, int, int, int, str]]]:
    """Eval and pretrain frames from the test space's own cameras: `frames.eval` of them picked at random,
    then up to `frames.pretrain` of the rest that are at least `eval_min_distance` from every eval camera."""
    cameras = space.scene_cameras()
    if not cameras:
        raise TSTError(f"collect.poses=scene: space {space.name} has no cameras of its own; "
                       "use collect.poses=sampled")
    indices = np.arange(len(cameras))
    n_eval = min(counts["eval"], len(cameras))
    eval_indices = np.sort(rng("eval").choice(indices, n_eval, replace=False)) if n_eval else indices[:0]
    rest = np.setdiff1d(indices, eval_indices)
    if n_eval and len(rest):
        eval_positions = np.array([cameras[i][1].position for i in eval_indices])
        positions = np.array([cameras[i][1].position for i in rest])
        rest = rest[cKDTree(eval_positions).query(positions)[0] >= float(cfg.eval_min_distance)]
    n_pretrain = min(counts["pretrain"], len(rest))
    pretrain_indices = np.sort(rng("pretrain").choice(rest, n_pretrain, replace=False)) if n_pretrain else rest[:0]
    return {split: [(square_camera(cameras[i][1], int(cfg.size)), 0, VIEW_PATH, 0, cameras[i][0]) for i in chosen]
            for split, chosen in (("eval", eval_indices), ("pretrain", pretrain_indices))}


def class_map(space: TestSpace, test_space: TestSpace, min_shared: int) -> dict | None:
    """How a transfer space's classes map onto the test space's taxonomy (one dataset, one taxonomy):
    None when the taxonomies are equal, else `ClassMapping.to_dict()`, reported on the console. Refused
    when fewer than `min_shared` classes share a name."""
    if space.taxonomy == test_space.taxonomy:
        return None
    mapping = map_by_name(space.taxonomy, test_space.taxonomy)
    if len(mapping.shared) < min_shared:
        raise TSTError(f"collect.transfer_spaces: space {space.name} shares {len(mapping.shared)} class name(s) with "
                       f"{test_space.name} ({', '.join(mapping.shared) or 'none'}); expected at least {min_shared} "
                       f"(collect.min_shared_classes). {test_space.name} has: {', '.join(test_space.taxonomy.names[1:])}")
    dropped = ", ".join(mapping.dropped[:8]) + (" ..." if len(mapping.dropped) > 8 else "")
    console.print(f"transfer space {space.name}: {len(mapping.shared)} of {len(space.taxonomy) - 1} classes map onto "
                  f"{test_space.name}'s taxonomy by name" + (f"; unlabeled: {dropped}" if dropped else ""))
    return mapping.to_dict()


def make_plan(cfg: DictConfig, test_space_cfg: dict, test_space: TestSpace, transfer_space_cfgs: list[dict],
              build_space) -> Plan:
    """Plan eval first, then pretrain at least `eval_min_distance` from every eval camera, then the
    transfer split spread evenly over the transfer spaces. With `poses: scene` the eval and pretrain cameras
    are the test space's own (`scene_cameras`), squared to `size`; transfer is sampled as always.
    cfg: the `collect` config node; `build_space(space cfg dict) -> TestSpace`."""
    counts = frame_counts(cfg)
    spaces = [test_space_cfg] + transfer_space_cfgs
    names = [test_space.name]
    class_maps: list[dict | None] = [None]
    planned: dict[str, list] = {}
    rng = lambda split, index=0: np.random.default_rng([int(cfg.seed), SPLITS.index(split), index])  # noqa: E731
    poses = str(cfg.get("poses", "sampled"))
    if poses == "scene":
        planned.update(_scene_frames(test_space, counts, cfg, rng))
    elif poses == "sampled":
        planned["eval"] = _split_frames(test_space, 0, "eval", counts["eval"], cfg, rng("eval"), None, 0)
        eval_positions = np.array([c.position for c, *_ in planned["eval"]]) if planned["eval"] else None
        planned["pretrain"] = _split_frames(test_space, 0, "pretrain", counts["pretrain"], cfg, rng("pretrain"),
                                            eval_positions, 10_000)
    else:
        raise TSTError(f"collect.poses: expected 'sampled' or 'scene', got {poses!r}")
    eval_positions = np.array([c.position for c, *_ in planned["eval"]]) if planned["eval"] else None
    planned["transfer"] = []
    if counts["transfer"]:
        if not transfer_space_cfgs:
            raise TSTError("collect.transfer_spaces: empty, but collect.frames.transfer > 0; name other spaces")
        shares = np.array_split(np.arange(counts["transfer"]), len(transfer_space_cfgs))
        for index, (space_cfg, share) in enumerate(zip(transfer_space_cfgs, shares), start=1):
            try:
                space = build_space(space_cfg)
            except TSTError as error:
                raise rekeyed(error, "space.", f"collect.transfer_spaces[{index - 1}].") from None
            with space:
                names.append(space.name)
                class_maps.append(class_map(space, test_space, int(cfg.get("min_shared_classes", 3))))
                planned["transfer"] += _split_frames(space, index, "transfer", len(share), cfg, rng("transfer", index),
                                                     None, 20_000 + 1000 * index)
    minimum = None
    if planned["eval"] and planned["pretrain"]:
        pretrain_positions = np.array([c.position for c, *_ in planned["pretrain"]])
        minimum = float(cKDTree(pretrain_positions).query(eval_positions)[0].min())
    frames = {split: [PlannedFrame(f"{split}_{i:07d}", split, s, c, p, t, *source)
                      for i, (c, s, p, t, *source) in enumerate(items)]
              for split, items in planned.items()}
    return Plan(spaces, names, frames, minimum, class_maps)


PLAN_EXPECTED = "the camera plan written by tst collect (delete it, or the dataset folder, and re-run tst collect)"


def read_plan(path) -> tuple[object, Plan]:
    """(identity, Plan) from a collect output's plan.json; a one-line TSTError naming the file when it is
    missing, not valid JSON, or not a plan (no identity, missing fields)."""
    from tst.workspace import read_json

    stored = read_json(path, PLAN_EXPECTED)
    if not isinstance(stored, dict) or "identity" not in stored or not isinstance(stored.get("plan"), dict):
        raise TSTError(f"{path}: no 'identity' and 'plan' objects; expected {PLAN_EXPECTED}")
    try:
        return stored["identity"], Plan.from_dict(stored["plan"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise TSTError(f"{path}: malformed plan ({type(error).__name__}: {error}); expected {PLAN_EXPECTED}") from None
