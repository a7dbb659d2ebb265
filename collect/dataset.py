"""Reading a collected dataset back for training: map-style and streaming torch datasets.

Decoded samples are dicts of tensors (documented units):
  rgb      float32 (3, H, W) in [0, 1]          depth    float32 (1, H, W) metres, 0 = no hit
  normals  float32 (3, H, W) unit, camera frame edges    float32 (1, H, W) 0 or 1
  semantic int64 (H, W) class ids, 0 unlabeled   instance int64 (H, W), 0 none
  boxes    float32 (N, 4) x0, y0, x1, y1 pixels (x1, y1 exclusive); box_classes, box_instances int64 (N,)
  caption  str                                   camera   dict: K float32 (3, 3), pose float32 (4, 4), meta
  key      str
"""

from __future__ import annotations

import math
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from tst.errors import TSTError
from tst.modalities import MODALITIES, codec_table, get, pixel_maps
from tst.workspace import read_manifest

from tst.collect.captions import mirrored

class CorruptSample(TSTError):
    """A sample whose bytes are intact in the tar but do not decode (a corrupt PNG or JSON member)."""


def shard_path(root: str | Path, split: str, modality: str, shard: int) -> Path:
    """<root>/<split>/<modality>/shard-NNNNNN.tar: where collect writes, and the reader reads, one shard."""
    return Path(root) / split / modality / f"shard-{shard:06d}.tar"


def collected_dataset(cfg) -> Path:
    """The collected dataset a stage reads: cfg.data_dir, or <workspace_dir>/<space>/data; a one-line
    error when no dataset is there."""
    from tst.envs.registry import space_name
    from tst.workspace import artifact_dir

    root = Path(str(cfg.data_dir)) if cfg.get("data_dir") else artifact_dir(cfg.workspace_dir, space_name(cfg.space), "data")
    if not (root / "manifest.json").is_file():
        raise TSTError(f"{root}: no collected dataset there (no manifest.json); run tst collect for this space "
                       "first or point data_dir at one")
    return root


def to_tensors(values: dict) -> dict:
    """Decoded numpy/python values of one sample -> tensors in the units of the module docstring, as
    each modality's registry entry converts them; the camera gets its K and pose as tensors."""
    out: dict = {}
    for name, value in values.items():
        if name in MODALITIES:
            out |= MODALITIES[name].to_tensors(value)
        elif name == "camera":
            out[name] = {**value, "K": torch.tensor(value["K"], dtype=torch.float32),
                         "pose": torch.tensor(value["world_from_camera"], dtype=torch.float32)}
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class CropView:
    """A crop box (pixels of a frame_height x frame_width frame) and whether the crop is flipped."""

    top: int
    left: int
    height: int
    width: int
    flipped: bool
    frame_height: int
    frame_width: int

    def sample_grid(self, cells: int) -> torch.Tensor:
        """(cells, cells, 2) normalized (x, y) frame coordinates in [-1, 1] (grid_sample's convention, corners
        at pixel edges) of the centres of a cells x cells grid over the crop, mirrored when flipped."""
        centres = (torch.arange(cells, dtype=torch.float32) + 0.5) / cells
        xs = (self.left + centres * self.width) / self.frame_width * 2 - 1
        ys = (self.top + centres * self.height) / self.frame_height * 2 - 1
        if self.flipped:
            xs = xs.flip(0)
        return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


@dataclass
class RandomResizedCropFlip:
    """One random crop (area fraction `scale`, aspect `ratio`) resized to `size` px and a horizontal
    flip with probability `flip`, applied identically to every modality of a sample: rgb and normals
    bilinear, depth, edges and labels nearest (each modality's `resample`), then its `reorient` (normals'
    x negated under the flip); boxes shifted, scaled, clipped (empty ones dropped); a caption's left and
    right swapped under the flip; the camera intrinsics follow."""

    size: int
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5

    def crop_box(self, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        area = height * width
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*self.scale, generator=generator))
            aspect = math.exp(float(torch.empty(1).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]),
                                                            generator=generator)))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        return 0, 0, height, width

    def draw(self, height: int, width: int, generator: torch.Generator) -> CropView:
        """The random view of a (height, width) frame: a crop box, then whether it is flipped."""
        top, left, h, w = self.crop_box(height, width, generator)
        return CropView(top, left, h, w, float(torch.rand(1, generator=generator)) < self.flip, height, width)

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        generator = generator or torch.default_generator
        height, width = sample[pixel_maps(sample)[0]].shape[-2:]
        return self.apply(sample, self.draw(height, width, generator))

    def apply(self, sample: dict, view: CropView) -> dict:
        """`sample` seen through `view` (see the class docstring)."""
        maps = pixel_maps(sample)
        top, left, h, w, flip = view.top, view.left, view.height, view.width, view.flipped
        out = dict(sample)
        for name in maps:
            x = sample[name][..., top:top + h, left:left + w]
            batched = x[None].float() if x.dim() == 3 else x[None, None].float()
            mode = MODALITIES[name].resample
            resized = F.interpolate(batched, size=(self.size, self.size), mode=mode,
                                    **({"align_corners": False, "antialias": True} if mode == "bilinear" else {}))
            resized = resized[0] if x.dim() == 3 else resized[0, 0]
            if flip:
                resized = resized.flip(-1)
            if MODALITIES[name].reorient is not None:
                resized = MODALITIES[name].reorient(resized, flip)
            out[name] = resized.to(sample[name].dtype)
        sx, sy = self.size / w, self.size / h
        if "boxes" in sample and len(sample["boxes"]):
            b = sample["boxes"].clone()
            b[:, [0, 2]] = ((b[:, [0, 2]] - left) * sx).clamp(0, self.size)
            b[:, [1, 3]] = ((b[:, [1, 3]] - top) * sy).clamp(0, self.size)
            if flip:
                b[:, [0, 2]] = self.size - b[:, [2, 0]]
            keep = (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)
            out["boxes"] = b[keep]
            out["box_classes"] = sample["box_classes"][keep]
            out["box_instances"] = sample["box_instances"][keep]
        if flip and "caption" in sample:
            out["caption"] = mirrored(sample["caption"])
        if "camera" in sample:
            K = sample["camera"]["K"].clone()
            K[0] = K[0] * sx
            K[1] = K[1] * sy
            K[0, 2] = (sample["camera"]["K"][0, 2] - left) * sx
            K[1, 2] = (sample["camera"]["K"][1, 2] - top) * sy
            if flip:
                K[0, 2] = self.size - K[0, 2]
            out["camera"] = {**sample["camera"], "K": K, "flipped": flip}
        return out


def collate(samples: list[dict]) -> dict:
    """Stack equally shaped tensors; keep boxes, captions, cameras and keys as lists."""
    batch: dict = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if isinstance(values[0], torch.Tensor) and name not in ("boxes", "box_classes", "box_instances"):
            batch[name] = torch.stack(values)
        else:
            batch[name] = values
    return batch


class CollectedData:
    """A dataset directory written by `tst collect`: its manifest and shard lists.

    The shards are read with the standard library's tarfile, not webdataset: FrameDataset needs random
    access by byte offset (evaluation subsets, label fractions), which webdataset's streaming pipelines do
    not offer, and one reader for both datasets keeps one set of corrupt-shard errors; the stream's
    rank/worker split is the four lines of `ShardStream._my_shards`. (Shards stay webdataset-readable:
    tests/test_collect.py reads them with it.)"""

    def __init__(self, root: str | Path, split: str, modalities: list[str] | None = None,
                 manifest: dict | None = None):
        """`manifest`: the dataset's manifest when it is not on disk yet (collect reads its own shards back
        for the contact sheets before it lands the manifest, which it writes once, last)."""
        self.root = Path(root)
        self.manifest = manifest if manifest is not None else read_manifest(self.root)
        if self.manifest.get("stage") != "collect":
            raise TSTError(f"{self.root}: not a dataset written by tst collect (stage {self.manifest.get('stage')!r})")
        splits = self.manifest["outputs"]["splits"]
        if split not in splits:
            raise TSTError(f"{self.root}: no split '{split}'; it holds {', '.join(splits) or 'none'}")
        stored = self.manifest["outputs"]["modalities"]
        modalities = list(modalities or [m for m in stored if m != "camera"])
        for name in modalities:
            get(name)
            if name not in stored:
                raise TSTError(f"{self.root}: modality '{name}' was not collected; it holds {', '.join(stored)}")
        self.split = split
        self.modalities = modalities + ["camera"]
        self.shards = splits[split]["shards"]  # [{"index": k, "frames": n}]
        self.coders = codec_table(self.manifest["outputs"]["rgb_format"])
        self.length = sum(s["frames"] for s in self.shards)

    def shard_file(self, modality: str, index: int) -> Path:
        return shard_path(self.root, self.split, modality, index)

    def read_shard(self, index: int) -> Iterator[tuple[str, dict]]:
        """(key, {modality: bytes}) for each sample of shard `index`, reading all modality tars in step."""
        opened = [(m, tarfile.open(self.shard_file(m, index), "r")) for m in self.modalities]
        try:
            iterators = [(m, iter(tar)) for m, tar in opened]
            while True:
                entries = [(m, next(it, None)) for m, it in iterators]
                if all(e is None for _, e in entries):
                    return
                if any(e is None for _, e in entries):
                    raise ValueError("modality shards hold different numbers of samples")
                keys = {e.name.split(".", 1)[0] for _, e in entries}
                if len(keys) != 1:
                    raise ValueError(f"sample keys differ across modalities: {sorted(keys)}")
                raw = {m: dict(opened)[m].extractfile(e).read() for m, e in entries}
                yield keys.pop(), raw
        finally:
            for _, tar in opened:
                tar.close()

    def decode_values(self, shard: int, key: str, raw: dict[str, bytes]) -> dict:
        """Sample `key` of shard `shard` decoded to numpy / python values; a member that does not decode
        is a one-line CorruptSample naming the shard file, the key and the modality."""
        values = {}
        for modality, data in raw.items():
            try:
                values[modality] = self.coders[modality].decode(data)
                to_tensors({modality: values[modality]})  # a value of the wrong shape or type fails here too
            except Exception as error:  # cv2.error, json / unicode errors, ValueError, KeyError, ...
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
                raise CorruptSample(f"{self.shard_file(modality, shard)}: sample '{key}' ({modality}) does not decode "
                                    f"({reason}); re-collect the dataset, or set data.skip_corrupt=true to skip "
                                    "such samples") from None
        return values

    def decode(self, shard: int, key: str, raw: dict[str, bytes]) -> dict:
        """Sample `key` of shard `shard` as tensors (module docstring); CorruptSample if it does not decode."""
        sample = to_tensors(self.decode_values(shard, key, raw))
        sample["key"] = key
        return sample


def _corrupt(data: CollectedData, index: int, error: Exception, skip: bool) -> None:
    message = f"{shard_path(data.root, data.split, '*', index)}: corrupt or truncated ({error})"
    if not skip:
        raise TSTError(message) from None
    warnings.warn(f"skipping {message}", stacklevel=3)


class ShardStream(IterableDataset):
    """Streams a split shard by shard. Shards are divided across DDP ranks and DataLoader workers, so
    every sample is seen once per epoch; `set_epoch` reshuffles the shard order (same on every rank)."""

    def __init__(self, root: str | Path, split: str, modalities: list[str] | None = None, transform=None,
                 shuffle: bool = False, seed: int = 0, skip_corrupt: bool = False):
        self.data = CollectedData(root, split, modalities)
        self.transform, self.shuffle, self.seed, self.skip_corrupt = transform, shuffle, seed, skip_corrupt
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list[int]:
        indices = [s["index"] for s in self.data.shards]
        if self.shuffle:
            indices = list(np.random.default_rng([self.seed, self.epoch]).permutation(indices))
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return indices[rank * workers + worker::world * workers]

    def __iter__(self):
        for index in self._my_shards():
            try:
                samples = list(self.data.read_shard(index))
            except (tarfile.TarError, OSError, EOFError, ValueError) as error:
                _corrupt(self.data, index, error, self.skip_corrupt)
                continue
            for key, raw in samples:
                try:
                    sample = self.data.decode(index, key, raw)
                except CorruptSample as error:
                    if not self.skip_corrupt:
                        raise
                    warnings.warn(f"skipping {error}", stacklevel=2)
                    continue
                yield self.transform(sample) if self.transform else sample


class FrameDataset(Dataset):
    """Random access to a split (for evaluation): indexes the shards once, then reads each sample's
    members at their byte offsets.

    Samples are decoded only when read (decoding every sample at index time would cost a full pass), so
    a sample whose member does not decode is found in __getitem__: a one-line CorruptSample naming the
    shard file, key and modality, or with `skip_corrupt` the next decodable sample (cyclically) is
    returned in its place, with one warning per corrupt sample. `len` stays the indexed count."""

    def __init__(self, root: str | Path, split: str, modalities: list[str] | None = None, transform=None,
                 skip_corrupt: bool = False, manifest: dict | None = None):
        self.data = CollectedData(root, split, modalities, manifest)
        self.transform, self.skip_corrupt = transform, skip_corrupt
        self.warned: set[str] = set()
        self.index: list[tuple[str, dict[str, tuple[int, int, int]]]] = []  # key -> modality -> (shard, offset, size)
        for shard in self.data.shards:
            try:
                self.index += self._index_shard(shard["index"])
            except (tarfile.TarError, OSError, EOFError, ValueError) as error:
                _corrupt(self.data, shard["index"], error, skip_corrupt)

    def _index_shard(self, index: int) -> list:
        members: dict[str, dict[str, tuple[int, int, int]]] = {}
        for modality in self.data.modalities:
            with tarfile.open(self.data.shard_file(modality, index), "r") as tar:
                for info in tar:
                    members.setdefault(info.name.split(".", 1)[0], {})[modality] = (index, info.offset_data, info.size)
        incomplete = [k for k, v in members.items() if len(v) != len(self.data.modalities)]
        if incomplete:
            raise ValueError(f"samples missing from some modalities: {incomplete[:3]}")
        return list(members.items())

    def __len__(self) -> int:
        return len(self.index)

    def _raw(self, i: int) -> tuple[int, str, dict[str, bytes]]:
        key, where = self.index[i]
        raw = {}
        for modality, (shard, offset, size) in where.items():
            with open(self.data.shard_file(modality, shard), "rb") as handle:
                handle.seek(offset)
                raw[modality] = handle.read(size)
        return shard, key, raw

    def _decodable(self, i: int, decode):
        """decode(shard, key, raw) of sample `i`, or with skip_corrupt of the next decodable sample."""
        i = range(len(self))[i]  # negative indices, and IndexError past the end
        for step in range(len(self)):
            try:
                return decode(*self._raw((i + step) % len(self)))
            except CorruptSample as error:
                if not self.skip_corrupt:
                    raise
                key = self.index[(i + step) % len(self)][0]
                if key not in self.warned:
                    self.warned.add(key)
                    warnings.warn(f"substituting the next sample for {error}", stacklevel=3)
        raise TSTError(f"{self.data.root}: no sample of split '{self.data.split}' decodes; re-collect the dataset")

    def values(self, i: int) -> dict:
        """Sample `i` decoded to numpy / python values (the codecs' units), not tensors."""
        return self._decodable(i, self.data.decode_values)

    def __getitem__(self, i: int) -> dict:
        sample = self._decodable(i, self.data.decode)
        return self.transform(sample) if self.transform else sample
