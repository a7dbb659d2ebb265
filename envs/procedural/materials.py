"""Procedural material textures (wood, fabric, tile, paint, metal, leaves, art) and per-seed palettes.

Textures are (T, T, 3) uint8 images that tile seamlessly (periodic noise), generated from a seeded
numpy Generator, so the same seed always gives the same apartment.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tst.envs.mesh import Material

TEXTURE_SIZE = 128


def periodic_noise(rng: np.random.Generator, size: int, cells: int, octaves: int = 3) -> np.ndarray:
    """(size, size) float in [0, 1]: smooth fractal noise that wraps around at the edges."""
    total = np.zeros((size, size))
    weight = 1.0
    for octave in range(octaves):
        grid = rng.random((cells * 2**octave, cells * 2**octave))
        total += weight * ndimage.zoom(grid, size / grid.shape[0], order=3, mode="grid-wrap")[:size, :size]
        weight /= 2
    total -= total.min()
    return total / max(total.max(), 1e-9)


def _tint(value: np.ndarray, dark: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Blend two RGB colours (0..1) by `value` (H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (255 * (dark + value[..., None] * (light - dark))).clip(0, 255).astype(np.uint8)


def wood(rng: np.random.Generator, base: np.ndarray, planks: bool = False) -> np.ndarray:
    """Grain along u: stretched noise bands; `planks` adds seams every quarter of the texture."""
    size = TEXTURE_SIZE
    warp = periodic_noise(rng, size, 4)
    rows = np.linspace(0, 1, size, endpoint=False)[:, None]
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (rows * 12 + warp * 1.5))
    value = 0.65 * grain + 0.35 * periodic_noise(rng, size, 16, 2)
    if planks:
        value = np.where((np.arange(size) % (size // 4))[:, None] < 2, 0.0, value)
    return _tint(value, base * 0.6, np.minimum(base * 1.15, 1))


def fabric(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A fine weave (alternating threads) over soft noise."""
    size = TEXTURE_SIZE
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    weave = ((i // 2 + j // 2) % 2) * 0.25
    value = 0.5 * periodic_noise(rng, size, 8) + weave + 0.25
    return _tint(np.clip(value, 0, 1), base * 0.7, np.minimum(base * 1.1, 1))


def tile(rng: np.random.Generator, base: np.ndarray, tiles: int = 4) -> np.ndarray:
    """`tiles` x `tiles` square tiles (tiles must divide the texture size) with light grout and a slight
    tone change per tile."""
    size = TEXTURE_SIZE
    step = size // tiles
    tone = rng.uniform(0.85, 1.05, (tiles, tiles))
    index = np.arange(size) // step
    value = tone[index[:, None], index[None, :]] * (0.9 + 0.1 * periodic_noise(rng, size, 16, 2))
    image = _tint(value / 1.05, base * 0.8, np.minimum(base * 1.05, 1))
    grout = (np.arange(size) % step) < 2
    image[grout, :] = 215
    image[:, grout] = 215
    return image


def paint(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A nearly flat colour with faint roller noise."""
    value = periodic_noise(rng, TEXTURE_SIZE, 8)
    return _tint(value, base * 0.92, np.minimum(base * 1.03, 1))


def metal(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """Brushed streaks: noise stretched along u."""
    size = TEXTURE_SIZE
    streaks = ndimage.zoom(rng.random((size, 4)), (1, size / 4), order=1, mode="grid-wrap")
    return _tint(0.6 * streaks + 0.4 * periodic_noise(rng, size, 8), base * 0.75, np.minimum(base * 1.2, 1))


def leaves(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """Blotchy foliage."""
    value = periodic_noise(rng, TEXTURE_SIZE, 16, 3) ** 1.5
    return _tint(value, base * 0.4, np.minimum(base * 1.3, 1))


def art(rng: np.random.Generator) -> np.ndarray:
    """An abstract painting: a few soft colour fields."""
    size = TEXTURE_SIZE
    image = np.zeros((size, size, 3))
    colours = [np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.4, 1.0)))
               for _ in range(3)]
    weights = np.stack([periodic_noise(rng, size, 2, 2) ** 2 for _ in colours])
    weights /= weights.sum(axis=0, keepdims=True)
    for colour, weight in zip(colours, weights):
        image += weight[..., None] * colour
    return (image * 255).astype(np.uint8)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


@dataclass
class Palette:
    """The per-seed colour scheme of one apartment: a material (and its UV scale, metres) per role."""

    materials: dict[str, tuple[Material, float]]

    def __getitem__(self, role: str) -> tuple[Material, float]:
        return self.materials[role]


def make_palette(rng: np.random.Generator) -> Palette:
    """Draw every material of an apartment: wall paints, floors, woods, fabrics, metals and more."""
    m: dict[str, tuple[Material, float]] = {}

    def add(role: str, texture: np.ndarray | None, uv_scale: float = 1.0, color=(1.0, 1.0, 1.0)) -> None:
        m[role] = (Material(role, tuple(float(c) for c in color), texture), uv_scale)

    wall_hue = rng.random()
    for k in range(4):  # room wall paints: pastels around one scheme hue
        add(f"paint_{k}", paint(rng, _hsv(wall_hue + rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.3),
                                         rng.uniform(0.8, 0.95))), 2.0)
    add("ceiling_paint", paint(rng, _hsv(0.1, 0.03, 0.95)), 2.0)
    wood_tones = [_hsv(0.08, s, v) for s, v in ((0.55, 0.55), (0.45, 0.75), (0.6, 0.35), (0.3, 0.85))]
    order = rng.permutation(len(wood_tones))
    add("floor_wood", wood(rng, wood_tones[order[0]], planks=True), 1.2)
    add("wood_light", wood(rng, wood_tones[order[1]]), 0.8)
    add("wood_dark", wood(rng, wood_tones[order[2]]), 0.8)
    tile_hue = rng.random()
    add("floor_tile", tile(rng, _hsv(tile_hue, rng.uniform(0.05, 0.3), rng.uniform(0.6, 0.9))), 1.2)
    add("wall_tile", tile(rng, _hsv(tile_hue + 0.5, rng.uniform(0.0, 0.2), rng.uniform(0.8, 0.97)), 8), 0.9)
    fabric_hue = rng.random()
    for k in range(3):
        add(f"fabric_{k}", fabric(rng, _hsv(fabric_hue + k * rng.uniform(0.1, 0.4), rng.uniform(0.2, 0.7),
                                            rng.uniform(0.35, 0.85))), 0.5)
    add("linen", fabric(rng, _hsv(rng.random(), 0.05, 0.95)), 0.5)
    add("metal", metal(rng, _hsv(0.6, 0.05, rng.uniform(0.55, 0.8))), 0.5)
    add("ceramic", paint(rng, _hsv(0.55, 0.02, 0.97)), 1.0)
    add("white_plastic", paint(rng, _hsv(0.1, 0.02, 0.9)), 1.0)
    add("black_plastic", paint(rng, _hsv(0.6, 0.1, 0.12)), 1.0)
    add("glass", paint(rng, _hsv(0.55, 0.25, 0.85)), 1.0)
    add("leaves", leaves(rng, _hsv(rng.uniform(0.22, 0.35), 0.7, 0.6)), 0.3)
    add("pot", paint(rng, _hsv(rng.uniform(0.0, 0.1), 0.6, rng.uniform(0.4, 0.8))), 0.5)
    add("lamp_shade", fabric(rng, _hsv(rng.uniform(0.05, 0.15), 0.2, 0.95)), 0.4)
    for k in range(2):
        add(f"art_{k}", art(rng), 1.0)
    for k in range(6):  # book spines
        add(f"book_{k}", paint(rng, _hsv(rng.random(), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.8))), 0.3)
    add("towel", fabric(rng, _hsv(rng.random(), 0.4, 0.85)), 0.3)
    add("curtain", fabric(rng, _hsv(rng.random(), rng.uniform(0.2, 0.5), rng.uniform(0.5, 0.9))), 0.6)
    return Palette(m)
