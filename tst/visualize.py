"""Turn modality arrays into uint8 RGB images for contact sheets and previews."""

from __future__ import annotations

import hashlib

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import hsv_to_rgb


def rgb_image(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> itself."""
    return np.asarray(rgb, dtype=np.uint8)


def depth_image(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
    """(H, W) float metres -> (H, W, 3) uint8 with the turbo colormap; no-hit pixels black.

    max_depth: metres mapped to the top of the colormap (default: the 99th percentile of valid depth).
    """
    valid = depth > 0
    if max_depth is None:
        max_depth = float(np.percentile(depth[valid], 99)) if valid.any() else 1.0
    scaled = np.clip(depth / max(max_depth, 1e-6), 0.0, 1.0)
    image = (colormaps["turbo"](scaled)[..., :3] * 255).astype(np.uint8)
    image[~valid] = 0
    return image


def normals_image(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit vectors in [-1, 1] -> (H, W, 3) uint8, (n + 1) / 2 per channel; zero vectors black."""
    image = ((np.asarray(normals) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    image[~np.any(normals != 0, axis=-1)] = 0
    return image


def edges_image(edges: np.ndarray) -> np.ndarray:
    """(H, W) uint8 edge map (0 or 255) -> (H, W, 3) uint8 grey."""
    return np.repeat(np.asarray(edges, dtype=np.uint8)[..., None], 3, axis=-1)


def label_palette(count: int, seed: int = 0) -> np.ndarray:
    """(count, 3) uint8 distinct colours; entry 0 (unlabeled / none) is black.

    Hues walk the golden ratio so neighbouring ids get far-apart colours; `seed` shifts the hues.
    """
    index = np.arange(count)
    hsv = np.stack([
        (index * 0.618033988749895 + seed * 0.1372) % 1.0,
        0.55 + 0.15 * (index % 3),
        0.7 + 0.15 * ((index // 3) % 3),
    ], axis=-1)
    palette = (hsv_to_rgb(hsv) * 255).astype(np.uint8)
    palette[0] = 0
    return palette


def class_palette(names: list[str]) -> np.ndarray:
    """(len(names), 3) uint8: one colour per class *name* (entry 0, unlabeled, black), so a class keeps its
    colour in every space's pictures whatever its id there. Hue, saturation and value come from a hash of
    the name as `tst.taxonomy.normalized` spells it (`Wall` and `wall` alike)."""
    from tst.taxonomy import normalized

    palette = np.zeros((len(names), 3), np.uint8)
    for index, name in enumerate(names[1:], start=1):
        digest = hashlib.sha1(normalized(name).encode()).digest()
        hsv = (int.from_bytes(digest[:2], "big") / 65536, 0.5 + 0.4 * digest[2] / 255, 0.65 + 0.35 * digest[3] / 255)
        palette[index] = (hsv_to_rgb(np.array(hsv)) * 255).astype(np.uint8)
    return palette


def label_image(labels: np.ndarray, seed: int = 0, palette: np.ndarray | None = None) -> np.ndarray:
    """(H, W) integer ids -> (H, W, 3) uint8 with a fixed colour per id (0 black).

    palette: (K, 3) uint8 colours by id (e.g. `class_palette` of a taxonomy); without one, ids are coloured
    by `label_palette(.., seed)`: instance maps use another seed so they look different.
    """
    labels = np.asarray(labels).astype(np.int64)
    if palette is None:
        palette = label_palette(int(labels.max(initial=0)) + 1, seed)
    return palette[np.clip(labels, 0, len(palette) - 1)]
