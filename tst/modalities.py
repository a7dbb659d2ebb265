"""The modality registry: one typed entry per modality, the single place that says what it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from tst import visualize
from tst.errors import TSTError

Kind = Literal["image", "depth", "normals", "label_map", "boxes", "text"]
Tier = Literal["sensor", "label"]


@dataclass(frozen=True)
class Modality:
    """What one modality is.

    name: key in Frame.modalities and on disk. kind: how models treat it. channels: per pixel
    (0 for boxes and text). dtype/unit: in-memory numpy dtype and physical unit. encoding: the on-disk
    format. tier: `sensor` (an agent measures or computes it from its own sensors) or `label`
    (annotations; never used in pretraining by default). loss/tokenizer: defaults for pretraining.
    visualize: array -> (H, W, 3) uint8 for contact sheets (None for non-image modalities).
    """

    name: str
    kind: Kind
    channels: int
    dtype: str
    unit: str
    encoding: str
    tier: Tier
    loss: str
    tokenizer: str
    visualize: Callable[[np.ndarray], np.ndarray] | None


_ENTRIES = [
    Modality("rgb", "image", 3, "uint8", "sRGB 0-255", "png", "sensor", "mse", "vq", visualize.rgb_image),
    Modality("depth", "depth", 1, "float32", "metres, z-depth, 0 = no hit", "png16 millimetres",
             "sensor", "l1", "vq", visualize.depth_image),
    Modality("normals", "normals", 3, "float32", "unit vector, camera frame", "png8 (n+1)/2",
             "sensor", "l1", "vq", visualize.normals_image),
    Modality("edges", "image", 1, "uint8", "0 or 255 (Canny on rgb)", "png", "sensor", "bce", "vq",
             visualize.edges_image),
    Modality("semantic", "label_map", 1, "uint16", "class id, 0 = unlabeled", "png16", "label", "ce", "vq",
             visualize.label_image),
    Modality("instance", "label_map", 1, "uint16", "instance id, 0 = none", "png16", "label", "ce", "vq",
             lambda ids: visualize.label_image(ids, seed=7)),
    Modality("boxes", "boxes", 0, "object", "(class_id, instance_id, x0, y0, x1, y1, visible_pixels) px",
             "json", "label", "ce", "sequence", None),
    Modality("caption", "text", 0, "str", "English sentences", "json", "label", "ce", "wordpiece", None),
]

MODALITIES: dict[str, Modality] = {entry.name: entry for entry in _ENTRIES}

# What a mesh renderer produces from one ray cast.
RENDERED = ("rgb", "depth", "normals", "semantic", "instance")


def get(name: str) -> Modality:
    """The registry entry for `name`; a one-line error for an unknown name."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise TSTError(f"unknown modality '{name}': expected one of {', '.join(MODALITIES)}") from None


def by_tier(tier: Tier) -> list[str]:
    return [entry.name for entry in _ENTRIES if entry.tier == tier]
