"""Per-modality tokenizers for the `fourm` objective: a convolutional autoencoder with finite scalar
quantization (FSQ). Each `patch` x `patch` pixel block becomes one code out of prod(levels); FSQ has no
codebook to collapse, so it needs no EMA or dead-code restarts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tst.pretrain.normalize import CHANNELS, to_network


@dataclass(frozen=True)
class TokenizerConfig:
    """levels: FSQ levels per latent channel (codebook size = their product). patch: pixels per code
    side (a power of two). hidden: conv channels."""

    levels: tuple[int, ...] = (8, 5, 5, 5)
    patch: int = 8
    hidden: int = 64

    @property
    def vocab(self) -> int:
        return math.prod(self.levels)


class FSQ(nn.Module):
    """Finite scalar quantization: bound each latent channel, round it to one of L levels
    (straight-through gradient), and read the rounded channels as digits of one code id."""

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + list(levels[:-1])), 0)
        self.register_buffer("basis", basis.long(), persistent=False)

    def _half(self) -> tuple[torch.Tensor, torch.Tensor]:
        half = (self.levels - 1) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        return half, offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, d, h, w) -> rounded values in [-half, half] (straight-through), same shape."""
        half, offset = self._half()
        shape = (1, -1, 1, 1)
        bounded = torch.tanh(z) * half.view(shape)  # in [-half, half]
        # Odd L: integers -h..h; even L: half-integers, so each channel has exactly L values.
        rounded = torch.round(bounded + offset.view(shape)) - offset.view(shape)
        return bounded + (rounded - bounded).detach()

    def codes(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) rounded values -> (B, h*w) code ids."""
        half, _ = self._half()
        digits = (quantized + half.view(1, -1, 1, 1)).round().long()
        return (digits * self.basis.view(1, -1, 1, 1)).sum(1).flatten(1)

    def values(self, codes: torch.Tensor, grid: int) -> torch.Tensor:
        """(B, h*w) code ids -> (B, d, h, w) rounded values."""
        half, _ = self._half()
        digits = (codes[:, None, :] // self.basis.view(1, -1, 1)) % self.levels.long().view(1, -1, 1)
        return (digits.float() - half.view(1, -1, 1)).reshape(codes.shape[0], -1, grid, grid)


def _tower(channels: list[int], transpose: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(channels[:-1], channels[1:])):
        conv = nn.ConvTranspose2d(a, b, 4, 2, 1) if transpose else nn.Conv2d(a, b, 4, 2, 1)
        layers += [conv, nn.GELU()]
    return nn.Sequential(*layers)


class Tokenizer(nn.Module):
    """Autoencoder of one modality: (B, C, H, W) reader units <-> (B, (H/patch)*(W/patch)) code ids."""

    def __init__(self, modality: str, config: TokenizerConfig):
        super().__init__()
        if config.patch & (config.patch - 1):
            raise ValueError("tokenizer patch must be a power of two")
        self.modality, self.config = modality, config
        channels = CHANNELS[modality]
        steps = int(math.log2(config.patch))
        widths = [config.hidden] * (steps + 1)
        self.stem = nn.Conv2d(channels, config.hidden, 3, padding=1)
        self.down = _tower(widths, transpose=False)
        self.to_latent = nn.Conv2d(config.hidden, len(config.levels), 1)
        self.quantizer = FSQ(config.levels)
        self.from_latent = nn.Conv2d(len(config.levels), config.hidden, 1)
        self.up = _tower(widths, transpose=True)
        self.head = nn.Conv2d(config.hidden, channels, 3, padding=1)

    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.quantize(self.to_latent(self.down(F.gelu(self.stem(to_network(self.modality, x))))))

    def _reconstruct(self, quantized: torch.Tensor) -> torch.Tensor:
        """-> network values (edges: logits)."""
        return self.head(self.up(F.gelu(self.from_latent(quantized))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in reader units -> (reconstruction in network values, code ids (B, N))."""
        quantized = self._latent(x)
        return self._reconstruct(quantized), self.quantizer.codes(quantized)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.codes(self._latent(x))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N) code ids -> (B, C, H, W) network values (see normalize.from_network)."""
        grid = int(math.isqrt(codes.shape[1]))
        return self._reconstruct(self.quantizer.values(codes, grid))

    def loss(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        target = to_network(self.modality, x)
        if self.modality == "edges":
            return F.binary_cross_entropy_with_logits(reconstruction, x)
        return F.mse_loss(reconstruction, target)
