"""Per-modality tokenizers for the `fourm` objective: a convolutional autoencoder with finite scalar
quantization (FSQ). Each `patch` x `patch` pixel block becomes one code out of prod(levels); FSQ has no
codebook to collapse, so it needs no EMA or dead-code restarts -- but it does need latents that are
bounded without being saturated: where tanh saturates, the straight-through gradient is zero and every
patch falls into the same corner code. The latents are therefore standardized per channel (a
BatchNorm without affine parameters) before the tanh bound, which keeps them in tanh's live range."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tst.modalities import get, to_network


@dataclass(frozen=True)
class TokenizerConfig:
    """levels: FSQ levels per latent channel (codebook size = their product). patch: pixels per code
    side. hidden: channels on the token grid."""

    levels: tuple[int, ...] = (8, 5, 5, 5)
    patch: int = 8
    hidden: int = 64

    @property
    def vocab(self) -> int:
        return math.prod(self.levels)


EDGE_WEIGHT_CAP = 10.0
# L1 where the quality check reads mean absolute error. For rgb, measured on a dev space (procedural-11, 64 px,
# 300 steps): MSE 1.02x the patch-mean baseline's error, L1 0.96x (600 steps: 0.87x).
L1_MODALITIES = ("rgb", "depth", "normals")


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


class ResidualConv(nn.Module):
    """x + conv3x3(GELU(conv3x3(x))) on the token grid: each code sees its 8 neighbours' content."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Tokenizer(nn.Module):
    """Autoencoder of one modality: (B, C, H, W) reader units <-> (B, (H/patch)*(W/patch)) code ids.

    Both halves work on the token grid (space-to-depth of each patch, then 3x3 convolutions across
    neighbouring patches), which costs a fraction of a full-resolution convolutional autoencoder on the
    CPU; the decoder's context lets a 10-bit code describe a patch better than its mean colour does."""

    def __init__(self, modality: str, config: TokenizerConfig):
        super().__init__()
        self.modality, self.config = modality, config
        values = get(modality).channels * config.patch ** 2  # pixel values per patch
        width, d = config.hidden, len(config.levels)
        self.encoder = nn.Sequential(nn.PixelUnshuffle(config.patch), nn.Conv2d(values, width, 1),
                                     ResidualConv(width), ResidualConv(width), nn.GELU(), nn.Conv2d(width, d, 1))
        self.standardize = nn.BatchNorm2d(d, affine=False)
        self.quantizer = FSQ(config.levels)
        self.decoder = nn.Sequential(nn.Conv2d(d, width, 1), ResidualConv(width), ResidualConv(width),
                                     nn.GELU(), nn.Conv2d(width, values, 1), nn.PixelShuffle(config.patch))

    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.quantize(self.standardize(self.encoder(to_network(self.modality, x))))

    def _reconstruct(self, quantized: torch.Tensor) -> torch.Tensor:
        """-> network values (edges: logits)."""
        return self.decoder(quantized)

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
        """L1 in network values for rgb, depth and normals (their errors are read as MAE), MSE otherwise; edges: BCE with edge pixels weighted by the batch's non-edge/edge ratio
        (at most EDGE_WEIGHT_CAP), so 1-pixel edges covering a few per cent of a frame are not ignored."""
        if self.modality == "edges":
            edges = (x > 0.5).float()
            weight = ((1 - edges).sum() / edges.sum().clamp(min=1)).clamp(1.0, EDGE_WEIGHT_CAP)
            return F.binary_cross_entropy_with_logits(reconstruction, edges, pos_weight=weight)
        if self.modality in L1_MODALITIES:
            return F.l1_loss(reconstruction, to_network(self.modality, x))
        return F.mse_loss(reconstruction, to_network(self.modality, x))
