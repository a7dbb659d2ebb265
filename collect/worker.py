"""Rendering one shard: render the planned frames, derive edges / boxes / captions, encode every
modality and write one tar per modality, each under a temporary name renamed when complete."""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from tst.errors import TSTError
from tst.envs.base import TestSpace
from tst.envs.registry import make_space
from tst.frame import Frame
from tst.modalities import MODALITIES, RENDERED, codec_table
from tst.taxonomy import Taxonomy

from tst.collect.captions import make_caption, visible_objects
from tst.collect.dataset import shard_path
from tst.collect.derive import instance_boxes
from tst.collect.encoder import Members, ProcessEncoder, SpaceFacts, ThreadEncoder, helper_kind
from tst.collect.plan import PlannedFrame, square_image

_SPACES: dict[str, TestSpace] = {}  # per-process cache: space config (JSON) -> built space
_HELPER: list[ThreadEncoder | ProcessEncoder] = []  # per-process: the encoding helper, kept across shards


@dataclass
class Unit:
    """One shard's worth of work."""

    split: str
    shard: int
    frames: list[PlannedFrame]


@dataclass(frozen=True)
class Settings:
    """What every worker needs to know besides the unit."""

    out: str
    spaces: list[dict]
    modalities: list[str]
    rgb_format: str
    edges: tuple[float, float]
    min_box_pixels: int
    seed: int
    render_threads: int
    real_rgb: bool = True  # use the space's real image of a scene camera as rgb when it has one
    taxonomy: dict | None = None  # the test space's taxonomy (Taxonomy.to_dict()): every frame's labels use it
    class_maps: tuple = ()  # per space index: Plan.class_maps (None: the space already uses that taxonomy)
    encode_ahead: int = 0  # > 0: a helper (collect/encoder.py) encodes while the next frame renders, this many frames behind


def stored_modalities(modalities: list[str]) -> list[str]:
    """Every collection also stores the camera of each frame."""
    return list(modalities) + ["camera"]


def unit_complete(settings: Settings, split: str, shard: int) -> bool:
    """A shard is complete when every modality's tar exists under its final name."""
    return all(shard_path(settings.out, split, m, shard).exists() for m in stored_modalities(settings.modalities))


def _space(settings: Settings, index: int) -> TestSpace:
    config = dict(settings.spaces[index], nthreads=settings.render_threads)
    key = repr(sorted(config.items()))
    if key not in _SPACES:
        _SPACES[key] = make_space(OmegaConf.create(config))
    return _SPACES[key]


def derive(frame: Frame, space: SpaceFacts, planned: PlannedFrame, settings: Settings) -> dict:
    """All requested modalities of one frame, as python/numpy values ready to encode."""
    m = dict(frame.modalities)
    taxonomy = space.taxonomy
    mapping = settings.class_maps[planned.space] if planned.space < len(settings.class_maps) else None
    if mapping is not None:  # a transfer space with its own class list: relabel into the test space's
        m["semantic"] = np.asarray(mapping["lookup"], dtype=m["semantic"].dtype)[m["semantic"]]
        taxonomy = Taxonomy.from_dict(settings.taxonomy)
    for name in settings.modalities:  # modalities computed from the rendered ones (edges from rgb)
        if MODALITIES[name].derive is not None:
            m[name] = MODALITIES[name].derive(m, settings)
    boxes = instance_boxes(m["semantic"], m["instance"], taxonomy, settings.min_box_pixels)
    m["boxes"] = [list(b) for b in boxes]
    if "caption" in settings.modalities:
        # A per-frame generator: the caption does not depend on which worker renders the frame.
        rng = np.random.default_rng([settings.seed, zlib.crc32(planned.key.encode())])
        objects = visible_objects(m["rgb"], m["depth"], boxes, taxonomy, m["instance"], space.instance_materials)
        m["caption"] = make_caption(objects, space.region, rng)
    m["camera"] = {**planned.camera.to_dict(), "space": space.name, "split": planned.split,
                   "path_id": planned.path_id, "step": planned.step}
    if planned.source is not None:
        m["camera"]["source"] = planned.source
    return m


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """Write a tar atomically: a temporary name in the same folder, then a rename. Fixed mtimes make
    the bytes depend only on the content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise TSTError(f"{path.parent}: cannot write shard ({error.strerror or error})") from None


def _render_frame(space: TestSpace, planned: PlannedFrame, needed: tuple[str, ...], settings: Settings) -> Frame:
    """Render the planned camera; for a scene camera with a real image (and `real_rgb`), that image,
    squared like the camera, replaces the rendered rgb (depth, normals, labels stay rendered)."""
    frame = space.render(planned.camera, needed)
    if settings.real_rgb and planned.source is not None:
        image = space.scene_image(planned.source)
        if image is not None:
            frame = Frame(frame.camera, {**frame.modalities, "rgb": square_image(image, planned.camera.width)},
                          frame.meta)
    return frame


def encode_frame(planned: PlannedFrame, frame: Frame, space: SpaceFacts, settings: Settings) -> Members:
    """One rendered frame's shard members: modality -> (member name, encoded bytes)."""
    values = derive(frame, space, planned, settings)
    coders = codec_table(settings.rgb_format)
    return {modality: (f"{planned.key}.{coders[modality].extension}", coders[modality].encode(values[modality]))
            for modality in stored_modalities(settings.modalities)}


def _helper(settings: Settings) -> ThreadEncoder | ProcessEncoder:
    """This process's encoding helper, started once and kept for every later shard whose settings encode
    alike (where shards are written and how rays are cast do not matter to it)."""
    if _HELPER and replace(_HELPER[0].settings, out="", render_threads=0) != replace(settings, out="", render_threads=0):
        close_helper()
    if not _HELPER:
        _HELPER.append(helper_kind(settings)(settings))
    return _HELPER[0]


def close_helper() -> None:
    """Stop this process's encoding helper, if it has one (the next shard that needs one starts it again)."""
    while _HELPER:
        _HELPER.pop().close()


def render_unit(unit: Unit, settings: Settings) -> int:
    """Render, derive, encode and write one shard; returns the number of frames written.

    With `settings.encode_ahead` a helper (collect/encoder.py) derives and encodes each frame while this
    process renders the next, at most encode_ahead frames behind."""
    needed = tuple(m for m in RENDERED if m in settings.modalities or m in ("rgb", "semantic", "instance", "depth"))
    members: dict[str, list[tuple[str, bytes]]] = {m: [] for m in stored_modalities(settings.modalities)}

    def add(frame_members: Members) -> None:
        for modality, member in frame_members.items():
            members[modality].append(member)

    if not settings.encode_ahead:
        for planned in unit.frames:
            space = _space(settings, planned.space)
            add(encode_frame(planned, _render_frame(space, planned, needed, settings), SpaceFacts.of(space, planned),
                             settings))
    else:
        helper, waiting = _helper(settings), 0
        try:
            for planned in unit.frames:
                space = _space(settings, planned.space)
                helper.submit(planned, _render_frame(space, planned, needed, settings), SpaceFacts.of(space, planned))
                waiting += 1
                if waiting > settings.encode_ahead:
                    add(helper.result())
                    waiting -= 1
            for _ in range(waiting):
                add(helper.result())
        except BaseException:
            close_helper()  # frames of this shard may still be in it
            raise
    for modality, items in members.items():
        write_tar(shard_path(settings.out, unit.split, modality, unit.shard), items)
    return len(unit.frames)


def close_spaces() -> None:
    """Close this process's spaces and its encoding helper."""
    close_helper()
    for space in _SPACES.values():
        space.close()
    _SPACES.clear()
