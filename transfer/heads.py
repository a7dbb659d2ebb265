"""Task heads on a backbone's feature map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationHead(nn.Module):
    """A simple feature pyramid (x4 and x2 up, x1, x0.5 down) of the last feature map, fused by convs
    and upsampled to the image: (B, dim, g, g) -> (B, classes, H, W) logits."""

    def __init__(self, dim: int, classes: int, width: int = 64):
        super().__init__()
        self.scales = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(dim, width, 2, 2), nn.GELU(), nn.ConvTranspose2d(width, width, 2, 2)),
            nn.ConvTranspose2d(dim, width, 2, 2),
            nn.Conv2d(dim, width, 1),
            nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(dim, width, 1)),
        ])
        self.fuse = nn.Sequential(nn.Conv2d(4 * width, width, 3, padding=1), nn.BatchNorm2d(width), nn.GELU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.GELU())
        self.classify = nn.Conv2d(width, classes, 1)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        finest = features.shape[-1] * 4
        levels = [F.interpolate(scale(features), size=(finest, finest), mode="bilinear", align_corners=False)
                  for scale in self.scales]
        logits = self.classify(self.fuse(torch.cat(levels, dim=1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class LinearSegmentationHead(nn.Module):
    """One linear layer per patch feature (a 1x1 convolution), upsampled bilinearly to the image:
    (B, dim, g, g) -> (B, classes, H, W) logits. Every bit of spatial reasoning must come from the
    backbone, so the score measures the backbone (as a linear decoder does in DINOv2's and Segmenter's
    evaluations) rather than a small CNN trained on top of it."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.classify = nn.Conv2d(dim, classes, 1)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.classify(features), size=size, mode="bilinear", align_corners=False)
