"""Training data for pretraining: the test space's `pretrain` split (and, with pretrain.splits, the
transfer split's sensor modalities too), with a resumable sample order."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from tst.errors import TSTError
from tst.modalities import get

from tst.collect.dataset import FrameDataset, RandomResizedCropFlip, collate
from tst.pretrain.tokens import whole_frame


class ResumableSampler(Sampler[int]):
    """An endless sample order: epoch e is permutation(seed, e) of the dataset; rank r of w takes every
    w-th index. Starting at `start` samples (per rank) skips exactly what a resumed run already saw.
    Yields epoch * size + index, so the dataset can draw a different crop every epoch."""

    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.size, self.seed, self.start, self.rank, self.world = size, seed, start, rank, world

    def __iter__(self) -> Iterator[int]:
        per_epoch = self.size // self.world
        epoch, offset = divmod(self.start, per_epoch)
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)[self.rank::self.world][:per_epoch]
            yield from (epoch * self.size + int(i) for i in order[offset:])
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; training length is set by max_steps
        return 2**62


class EpochCrops(torch.utils.data.Dataset):
    """Sample `epoch * size + index` of a ResumableSampler: frame `index` with a crop drawn from
    (seed, epoch, index), so every epoch differs and a resumed run repeats exactly."""

    def __init__(self, frames: FrameDataset, transform: RandomResizedCropFlip, modalities: list[str], seed: int,
                 codes: dict[str, dict[str, torch.Tensor]] | None = None, cache_frames: bool = False):
        self.frames, self.transform, self.modalities, self.seed = frames, transform, modalities, seed
        self.codes = codes  # precomputed tokenizer codes by frame key (then the transform is fixed)
        # Decoded frames by index, kept by each loader worker for the next epochs (PNG decoding is about
        # a third of a small model's step on 2 cores); None = decode every time.
        self.decoded: dict[int, dict] | None = {} if cache_frames else None

    def frame(self, index: int) -> dict:
        """Frame `index` decoded (from this process's cache when caching)."""
        if self.decoded is None:
            return self.frames[index]
        if index not in self.decoded:
            self.decoded[index] = self.frames[index]
        return self.decoded[index]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, position: int) -> dict:
        epoch, index = divmod(position, len(self.frames))
        generator = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, epoch, index]).integers(2**62)))
        out = self.transform(self.frame(index), generator)
        sample = {name: out[name] for name in self.modalities} | {"key": out["key"]}
        if self.codes is not None:
            sample |= {f"codes/{name}": codes for name, codes in self.codes[out["key"]].items()}
        return sample


SPLITS = ("pretrain", "transfer")  # what pretraining may read: never a split's labels, never the eval split


def pretraining_frames(root: Path, splits: list[str], modalities: list[str], skip_corrupt: bool):
    """The frames of `splits`, one after the other (a FrameDataset, or their concatenation). Only the
    trained (sensor) modalities are read, so the transfer split's labels stay unseen."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise TSTError(f"pretrain.splits: expected a list of {', '.join(SPLITS)}, got {list(splits)}")
    labels = [m for m in modalities if get(m).tier == "label"]
    if "transfer" in splits and labels:
        raise TSTError(f"pretrain.splits: the transfer split's labels ({', '.join(labels)}) are for the heads only; "
                       "pretrain on it with sensor modalities")
    parts = [FrameDataset(root, split, modalities, skip_corrupt=skip_corrupt) for split in splits]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


class PretrainData(L.LightningDataModule):
    """Random resized crops of the pretraining splits at the model's size, with only the trained
    modalities (whole frames plus their precomputed codes when `codes` is given); cache_frames: keep
    decoded frames in memory (each loader worker holds them: frames x pixels x 8 channels x 4 bytes).
    splits: the test space's `pretrain` split, and `transfer` to add the transfer split's frames (other
    spaces' sensor modalities, the frames the heads will later be trained on; the paper found mixing them
    in helps)."""

    def __init__(self, root: Path, modalities: list[str], size: int, batch_size: int, num_workers: int,
                 crop_scale: tuple[float, float], seed: int, skip_corrupt: bool,
                 codes: dict[str, dict[str, torch.Tensor]] | None = None, cache_frames: bool = False,
                 splits: tuple[str, ...] = ("pretrain",)):
        super().__init__()
        self.root, self.modalities, self.size = root, modalities, size
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        if codes is not None and list(splits) != ["pretrain"]:
            raise TSTError("pretrain.precomputed_tokens: codes exist for the pretrain split only; use "
                           "pretrain.splits=[pretrain] or precomputed_tokens=false")
        transform = whole_frame(size) if codes is not None else RandomResizedCropFlip(size, scale=tuple(crop_scale))
        self.train = EpochCrops(pretraining_frames(root, list(splits), modalities, skip_corrupt),
                                transform, modalities, seed, codes, cache_frames)
        if len(self.train.frames) == 0:
            raise TSTError(f"{root}: the pretrain split is empty; collect it first (tst collect)")
        self.start_step = 0

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        start = (self.trainer.global_step if self.trainer else self.start_step) * self.batch_size
        sampler = ResumableSampler(len(self.train.frames), self.seed, start, rank, world)
        return DataLoader(self.train, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate, persistent_workers=self.num_workers > 0, drop_last=True)
