"""Training data for pretraining: the test space's `pretrain` split (and, with pretrain.splits, the
transfer split's sensor modalities too), optionally mixed with other spaces' pretrain splits at a fixed
frame budget (pretrain.external, pretrain.test_space_share, pretrain.frames: the paper's trade-off and
data-worth analyses), with a resumable sample order."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

from tst.errors import TSTError
from tst.modalities import get, pixel_maps

from tst.collect.dataset import FrameDataset, RandomResizedCropFlip, collate
from tst.pretrain.teacher import features_under
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


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample `index` in epoch `epoch` of a run seeded `seed`: the same in every process, so
    what a sample looks like does not depend on which loader worker makes it, nor on how many there are."""
    return int(np.random.default_rng([seed, epoch, index]).integers(2**62))


class SeededSamples(Dataset):
    """Position `epoch * size + index` of a ResumableSampler: sample `index` of `frames` (a dataset whose
    transform draws from torch's default CPU generator: transfer's crops, flips and colour jitter, the
    tokenizers' crops), every number it draws taken from sample_seed(seed, epoch, index). A run's samples
    are then the same whichever loader worker makes them and however many there are (data.num_workers is
    a speed setting only), and every epoch draws new views."""

    def __init__(self, frames: Dataset, seed: int):
        self.frames, self.seed = frames, seed

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, position: int) -> dict:
        epoch, index = divmod(position, len(self.frames))
        # The transforms draw from the default generator (kornia's jitter offers no other); fork it so a
        # loader running in the main process (num_workers=0) leaves the training step's numbers alone.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.frames[index]


class EpochCrops(torch.utils.data.Dataset):
    """Sample `epoch * size + index` of a ResumableSampler: frame `index` with a crop drawn from
    (seed, epoch, index), so every epoch differs and a resumed run repeats exactly."""

    def __init__(self, frames: FrameDataset, transform: RandomResizedCropFlip, modalities: list[str], seed: int,
                 codes: dict[str, dict[str, torch.Tensor]] | None = None, cache_frames: bool = False,
                 teacher: tuple[str, torch.Tensor, int] | None = None):
        self.frames, self.transform, self.modalities, self.seed = frames, transform, modalities, seed
        self.codes = codes  # precomputed tokenizer codes by frame key (then the transform is fixed)
        # (name, (F, C, h, w) whole-frame feature maps by frame index, token grid): each crop's sample gets
        # name -> (grid * grid, C), the features under its tokens (see tst.pretrain.teacher)
        self.teacher = teacher
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
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        frame = self.frame(index)
        view = self.transform.draw(*frame[pixel_maps(frame)[0]].shape[-2:], generator)
        out = self.transform.apply(frame, view)
        sample = {name: out[name] for name in self.modalities} | {"key": out["key"]}
        if self.teacher is not None:
            name, maps, grid = self.teacher
            sample[name] = features_under(maps[index], view, grid)
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


def mixed_frames(test: Dataset, external: list[tuple[str, Dataset]], share: float, frames: int | None,
                 seed: int) -> Dataset:
    """The pretraining frames at a fixed budget: `frames` in all (None: as many as the test space has),
    round(share x frames) of them from the test space's frames and the rest split evenly over the
    `external` spaces' (name, frames) pairs. Each source's frames are a seeded draw without replacement,
    so a share and budget name the same frames on every run. With share 1 and the whole budget, the test
    space's frames unchanged."""
    budget = len(test) if frames is None else frames
    own = round(share * budget)
    if own > len(test):
        raise TSTError(f"pretrain.frames: {budget} frames at pretrain.test_space_share={share:g} need {own} test-space "
                       f"frames; its pretraining splits hold {len(test)}")
    if own < budget and not external:
        raise TSTError(f"pretrain.test_space_share={share:g} with pretrain.frames={budget}: the other "
                       f"{budget - own} frames need pretrain.external datasets (other spaces' collected data)")
    counts = [(budget - own) // len(external) + (k < (budget - own) % len(external)) for k in range(len(external))] \
        if external else []
    for (name, frames_of), count in zip(external, counts):
        if count > len(frames_of):
            raise TSTError(f"pretrain.external: {name} holds {len(frames_of)} pretrain frames; this budget draws "
                           f"{count} from it (collect more, or lower pretrain.frames)")
    if own == len(test) and not any(counts):
        return test

    def draw(source: Dataset, count: int, index: int) -> Subset:
        return Subset(source, sorted(np.random.default_rng([seed, index]).choice(len(source), count, replace=False)))

    parts = [draw(test, own, 0)] + [draw(source, count, k + 1) for k, ((_, source), count) in
                                    enumerate(zip(external, counts))]
    return ConcatDataset([part for part in parts if len(part)])


def pretraining_data(pretrain: dict | None) -> dict | None:
    """How a pretraining run drew its frames, from its `pretrain` config (None when there was no
    pretraining): the test-space share, the external datasets as configured and the frame budget (None:
    all the test space's). Transfer runs record it; the report's trade-off and data-worth analyses read it."""
    if pretrain is None:
        return None
    return {"objective": pretrain["objective"], "test_space_share": float(pretrain.get("test_space_share", 1.0)),
            "external": [str(e) for e in pretrain.get("external") or []], "frames": pretrain.get("frames")}


class PretrainData(L.LightningDataModule):
    """Random resized crops of the pretraining splits at the model's size, with only the trained
    modalities (whole frames plus their precomputed codes when `codes` is given); cache_frames: keep
    decoded frames in memory (each loader worker holds them: frames x pixels x 8 channels x 4 bytes).
    splits: the test space's `pretrain` split, and `transfer` to add the transfer split's frames (other
    spaces' sensor modalities, the frames the heads will later be trained on; the paper found mixing them
    in helps). external, test_space_share, frames: other spaces' datasets mixed in at a fixed budget
    (mixed_frames). teacher: (name, frames -> (F, C, h, w) whole-frame feature maps, token grid): a
    teacher's features as a target (tst.pretrain.teacher)."""

    def __init__(self, root: Path, modalities: list[str], size: int, batch_size: int, num_workers: int,
                 crop_scale: tuple[float, float], seed: int, skip_corrupt: bool,
                 codes: dict[str, dict[str, torch.Tensor]] | None = None, cache_frames: bool = False,
                 splits: tuple[str, ...] = ("pretrain",), external: tuple[Path, ...] = (),
                 test_space_share: float = 1.0, frames: int | None = None,
                 teacher: tuple[str, Callable[[Dataset], torch.Tensor], int] | None = None):
        super().__init__()
        self.root, self.modalities, self.size = root, modalities, size
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        if codes is not None and (list(splits) != ["pretrain"] or external or frames is not None):
            raise TSTError("pretrain.precomputed_tokens: codes exist for the test space's whole pretrain split only; "
                           "use pretrain.splits=[pretrain] without pretrain.external or pretrain.frames, or "
                           "precomputed_tokens=false")
        transform = whole_frame(size) if codes is not None else RandomResizedCropFlip(size, scale=tuple(crop_scale))
        others = [(str(folder), FrameDataset(folder, "pretrain", modalities, skip_corrupt=skip_corrupt))
                  for folder in external]
        frames_used = mixed_frames(pretraining_frames(root, list(splits), modalities, skip_corrupt), others,
                                   test_space_share, frames, seed)
        if len(frames_used) == 0:
            raise TSTError(f"{root}: the pretrain split is empty; collect it first (tst collect)")
        if teacher is not None:
            name, read_features, grid = teacher
            teacher = (name, read_features(frames_used), grid)
        self.train = EpochCrops(frames_used, transform, modalities, seed, codes, cache_frames, teacher)
        self.start_step = 0

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer else 0
        world = self.trainer.world_size if self.trainer else 1
        start = (self.trainer.global_step if self.trainer else self.start_step) * self.batch_size
        sampler = ResumableSampler(len(self.train.frames), self.seed, start, rank, world)
        return DataLoader(self.train, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate, persistent_workers=self.num_workers > 0, drop_last=True)
