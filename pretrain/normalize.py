"""How each sensor modality is scaled for the networks, and back (one place for models and tokenizers)."""

from __future__ import annotations

import torch

DEPTH_SCALE = 5.0  # metres mapped to 1.0
RGB_MEAN, RGB_STD = 0.45, 0.25

# Channels of each pixel modality as the collect reader returns them.
CHANNELS = {"rgb": 3, "depth": 1, "normals": 3, "edges": 1}


def to_network(name: str, x: torch.Tensor) -> torch.Tensor:
    """Reader units (module tst.collect.dataset) -> roughly zero-centred, unit-scale network values."""
    if name == "rgb":
        return (x - RGB_MEAN) / RGB_STD
    if name == "depth":
        return x / DEPTH_SCALE
    if name == "edges":
        return 2.0 * x - 1.0
    return x  # normals are already in [-1, 1]


def from_network(name: str, x: torch.Tensor) -> torch.Tensor:
    """Network values (for edges: logits) -> reader units."""
    if name == "rgb":
        return (x * RGB_STD + RGB_MEAN).clamp(0, 1)
    if name == "depth":
        return (x * DEPTH_SCALE).clamp(min=0)
    if name == "edges":
        return torch.sigmoid(x)
    if name == "normals":
        return torch.nn.functional.normalize(x, dim=1)
    return x
