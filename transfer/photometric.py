"""Photometric augmentation of the transfer split's training frames.

The labels come from other spaces, whose walls, floors and furniture have other colours than the test
space's; jittering brightness, contrast, saturation and hue keeps the heads from keying on one palette.
Captions name colours ("a grey sofa"), so a jittered frame's caption no longer describes it: each sample
records whether its colours were kept, and the caption loss learns only from those that were.
"""

from __future__ import annotations

import torch
from kornia.augmentation import ColorJitter

COLOURS_KEPT = "colours_kept"  # sample key: bool tensor, False when the frame's colours were jittered


class ColourJitter:
    """Applies `transform` (a crop/flip view), then, with probability `share`, a colour jitter of
    strength `strength` to the sample's rgb ((3, H, W) float in [0, 1]): brightness, contrast and
    saturation scaled by a factor in [1 - strength, 1 + strength], hue turned by up to strength / 4 of a
    full turn. Sets sample[COLOURS_KEPT]."""

    def __init__(self, transform, strength: float, share: float = 0.5):
        self.transform, self.share = transform, share
        self.jitter = ColorJitter(strength, strength, strength, strength / 4, p=1.0)

    def __call__(self, sample: dict) -> dict:
        sample = self.transform(sample)
        jittered = float(torch.rand(1)) < self.share
        if jittered:
            sample["rgb"] = self.jitter(sample["rgb"][None])[0].clamp(0, 1)
        sample[COLOURS_KEPT] = torch.tensor(not jittered)
        return sample
