"""The transfer stage's data: the eval split of the test space's dataset, the transfer split (labels from
other spaces, from the same dataset or another one), their taxonomies reconciled, a label fraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Subset

from tst.errors import TSTError
from tst.taxonomy import Taxonomy, map_by_name
from tst.workspace import read_manifest

from tst.collect.dataset import FrameDataset, RandomResizedCropFlip, collected_dataset
from tst.transfer.photometric import ColourJitter


def split_taxonomy(root: Path, split: str) -> Taxonomy:
    """The taxonomy of a dataset whose `split` exists and is non-empty."""
    outputs = read_manifest(root)["outputs"]
    if outputs["splits"].get(split, {}).get("frames", 0) == 0:
        raise TSTError(f"{root}: the {split} split is empty; collect it (collect.frames.{split})")
    return Taxonomy.from_dict(outputs["taxonomy"])


def class_mapping(source: Taxonomy, target: Taxonomy, by_name: bool, where: str) -> torch.Tensor | None:
    """Lookup (len(source),) int64 from source class ids to target ids, or None when they are equal.

    Unequal taxonomies are refused, naming the differing classes, unless `by_name`: then each source
    class maps to the target class of the same name (`tst.taxonomy.map_by_name`), and classes the target
    lacks become 0 (unlabeled).
    """
    if source == target:
        return None
    if not by_name:
        only_source = [n for n in source.names if n not in target.names]
        only_target = [n for n in target.names if n not in source.names]
        moved = [n for n in source.names if n in target.names and source.id(n) != target.id(n)]
        details = "; ".join(part for part in (
            f"only in transfer: {', '.join(only_source)}" if only_source else "",
            f"only in eval: {', '.join(only_target)}" if only_target else "",
            f"different ids: {', '.join(moved)}" if moved else "") if part) or "thing/stuff flags differ"
        raise TSTError(f"{where}: the transfer and eval taxonomies differ ({details}); "
                       "set transfer.map_by_name=true to map classes by name")
    return torch.tensor(map_by_name(source, target).lookup, dtype=torch.long)


class Relabel:
    """Applies `transform` then maps semantic labels and box classes through `lookup` (None = as is);
    boxes whose class maps to 0 are dropped."""

    def __init__(self, transform, lookup: torch.Tensor | None):
        self.transform, self.lookup = transform, lookup

    def __call__(self, sample: dict) -> dict:
        sample = self.transform(sample)
        if self.lookup is None:
            return sample
        if "semantic" in sample:
            sample["semantic"] = self.lookup[sample["semantic"]]
        if "box_classes" in sample:
            classes = self.lookup[sample["box_classes"]]
            keep = classes > 0
            sample.update(boxes=sample["boxes"][keep], box_classes=classes[keep],
                          box_instances=sample["box_instances"][keep])
        return sample


def training_subset(frames, fraction: float, seed: int) -> Subset:
    """A seeded random `fraction` of the frames (at least one)."""
    if not 0 < fraction <= 1:
        raise TSTError(f"transfer.fraction: expected 0 < fraction <= 1, got {fraction}")
    count = max(1, int(round(len(frames) * fraction)))
    chosen = np.random.default_rng(seed).permutation(len(frames))[:count]
    return Subset(frames, sorted(int(i) for i in chosen))


def full_frame(size: int) -> RandomResizedCropFlip:
    """The deterministic view: the whole frame resized to `size`, never flipped."""
    return RandomResizedCropFlip(size, (1.0, 1.0), (1.0, 1.0), 0.0)


def training_view(size: int, crop_scale: tuple[float, float], captions: bool) -> RandomResizedCropFlip:
    """Random crops and flips for segmentation and detection. When captions are learned, whole frames
    (a caption names every object in view) flipped half the time, the caption's left and right swapped."""
    if captions:
        return RandomResizedCropFlip(size, (1.0, 1.0), (1.0, 1.0), flip=0.5)
    return RandomResizedCropFlip(size, crop_scale)


def transfer_and_eval(cfg: DictConfig, modalities: list[str], size: int) -> tuple:
    """(training frames, eval frames, eval taxonomy, eval dataset root, transfer dataset root)."""
    t = cfg.transfer
    root = collected_dataset(cfg)
    taxonomy = split_taxonomy(root, "eval")
    source = Path(str(t.transfer_data)) if t.get("transfer_data") else root
    if not (source / "manifest.json").is_file():
        raise TSTError(f"transfer.transfer_data: {source} holds no collected dataset (no manifest.json)")
    lookup = class_mapping(split_taxonomy(source, "transfer"), taxonomy, bool(t.map_by_name), str(source))
    view = training_view(size, tuple(cfg.data.crop_scale), "caption" in modalities)
    if float(t.color_jitter) > 0:
        view = ColourJitter(view, float(t.color_jitter))
    frames = FrameDataset(source, "transfer", ["rgb", *modalities], transform=Relabel(view, lookup))
    train = training_subset(frames, float(t.fraction), int(t.seed))
    eval_frames = FrameDataset(root, "eval", ["rgb", *modalities], transform=full_frame(size))
    return train, eval_frames, taxonomy, root, source
