"""The pseudo tier (TST paper): an offline, internet-trained teacher's feature map of each test-space frame
as one more pretraining target, as 4M-21 predicts CLIP and DINOv2 feature maps. No label of any space is
involved: the teacher is the ImageNet-supervised generalist, its features are computed from RGB alone.

`pretrain.teacher=generalist`: the teacher reads every pretraining frame once, whole, at
`pretrain.teacher_size` px; each training crop takes the feature map under its tokens (bilinear, so the
crops and flips of the other modalities line up with it); the model predicts every masked token's feature
vector, normalized per token (no affine), with an MSE loss. Target-only: the encoder never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from tst.errors import TSTError

from tst.collect.dataset import CropView
from tst.pretrain.model import ModalityIO


@dataclass(frozen=True)
class Teacher:
    """A frozen feature extractor: load() -> module whose `features` maps (B, 3, H, W) RGB in [0, 1]
    to (B, channels, H / stride, W / stride)."""

    load: Callable[[], torch.nn.Module]
    channels: int
    stride: int


def _generalist() -> torch.nn.Module:
    from tst.transfer.generalist import load_generalist

    return load_generalist()


TEACHERS = {"generalist": Teacher(_generalist, channels=320, stride=32)}


def get_teacher(name: str) -> Teacher:
    """The registered teacher `name`; a one-line error naming the choices otherwise."""
    if name not in TEACHERS:
        raise TSTError(f"pretrain.teacher: unknown teacher {name!r}; expected one of {', '.join(TEACHERS)} or null")
    return TEACHERS[name]


def teacher_features(name: str, frames, size: int, batch_size: int = 32) -> torch.Tensor:
    """Every frame of `frames` (a dataset of samples with "rgb" (3, H, W) in [0, 1]) resized to size x size
    and read by the teacher -> (F, channels, size / stride, size / stride) float32 feature maps."""
    teacher = get_teacher(name)
    if size % teacher.stride:
        raise TSTError(f"pretrain.teacher_size: expected a multiple of {teacher.stride} for {name}, got {size}")
    model = teacher.load().eval()
    maps = []
    with torch.inference_mode():
        for start in range(0, len(frames), batch_size):
            # each frame resized on its own: mixed-in spaces may have been collected at other sizes
            resized = torch.cat([F.interpolate(frames[i]["rgb"][None], size=(size, size), mode="bilinear",
                                               align_corners=False, antialias=True)
                                 for i in range(start, min(start + batch_size, len(frames)))])
            maps.append(model.features(resized).float())
    return torch.cat(maps)


def features_under(feature_map: torch.Tensor, view: CropView, grid: int) -> torch.Tensor:
    """A whole frame's (C, h, w) feature map sampled bilinearly at the centres of the grid x grid tokens of
    the crop `view` -> (grid * grid, C), tokens row-major (the model's patch order)."""
    sampled = F.grid_sample(feature_map[None], view.sample_grid(grid)[None], mode="bilinear",
                            padding_mode="border", align_corners=False)
    return sampled[0].flatten(1).T.contiguous()


class TeacherTargets:
    """Wraps an objective (multimae, fourm) with the teacher's features as one more target-only modality:
    batch[name] holds (B, N, C) features per token; the loss is MSE against them normalized per token."""

    def __init__(self, objective, name: str):
        self.objective, self.name = objective, name
        self.channels = get_teacher(name).channels

    def io(self) -> list[ModalityIO]:
        return self.objective.io() + [ModalityIO(self.name, "nothing", "features", out_channels=self.channels)]

    def inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.objective.inputs(batch)

    def losses(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        own = {name: value for name, value in outputs.items() if name != self.name}
        losses = self.objective.losses(own, batch)
        if self.name in outputs:
            prediction, where = outputs[self.name]
            target = batch[self.name][where[:, 0], where[:, 1]]
            losses[self.name] = F.mse_loss(prediction, F.layer_norm(target, target.shape[-1:]))
        return losses

    def images(self, name: str, prediction: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.objective.images(name, prediction, batch)
