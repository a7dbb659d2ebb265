"""Pieces every stage's networks share: the model's shape (ModelConfig), fixed 2D sin-cos positions,
patch (un)folding and the pre-norm transformer block. Pretraining builds its encoder-decoder from them,
transfer its ViTs and caption decoder, deploy its benchmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tst.errors import TSTError


@dataclass(frozen=True)
class ModelConfig:
    """dim: token width. encoder_depth / decoder_depth: blocks. heads: attention heads. patch: pixels
    per token side. image_size: pixels (square). mlp_ratio: MLP width / dim."""

    dim: int = 128
    encoder_depth: int = 4
    decoder_depth: int = 2
    heads: int = 4
    patch: int = 8
    image_size: int = 64
    mlp_ratio: float = 4.0
    family: str = "tst"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def tokens_per_modality(self) -> int:
        return self.grid ** 2


def sincos_2d(rows: int, columns: int, dim: int, row_first: bool = False,
              temperature: float = 10000.0) -> torch.Tensor:
    """(rows * columns, dim) fixed 2D sin-cos position embedding, tokens in row-major order.

    Each token gets [sin(a w), cos(a w), sin(b w), cos(b w)] over dim/4 frequencies w = temperature^(-k/(dim/4)),
    with (a, b) = (column, row) by default (TST's own models) or (row, column) with `row_first` (4M's
    build_2d_sincos_posemb on its square grids; its meshgrid is 'ij' over (w, h)). Channels beyond
    4 * (dim // 4) are zero. Computed in float64, returned as float32."""
    quarter = dim // 4
    omega = 1.0 / (temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(columns, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for coordinate in ((ys, xs) if row_first else (xs, ys)):
        angles = coordinate.reshape(-1)[:, None] * omega[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    embedding = torch.cat(parts, dim=1)
    return F.pad(embedding, (0, dim - embedding.shape[1])).float()


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch*patch*C), patches in row-major order."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


def unpatchify(patches: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """(B, N, patch*patch*C) -> (B, C, H, W) for a square grid."""
    B, N, _ = patches.shape
    grid = int(math.isqrt(N))
    x = patches.reshape(B, grid, grid, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, grid * patch, grid * patch)


FAMILIES = ("tst", "4m")


def block_options(config: ModelConfig) -> dict:
    """Block keyword arguments of a model family (ModelConfig.family)."""
    return {"mlp": "swiglu", "eps": 1e-6} if config.family == "4m" else {"mlp": "gelu", "eps": 1e-5}


class Attention(nn.Module):
    """Multi-head attention on scaled_dot_product_attention; keys/values from `context` (cross) or x."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D), context (B, S, D), mask (B, L, S) bool (True = may attend) -> (B, L, D)."""
        context = x if context is None else context
        B, L, D = x.shape
        q = self.q(x).reshape(B, L, self.heads, D // self.heads).transpose(1, 2)
        k, v = self.kv(context).reshape(B, context.shape[1], 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None])
        return self.out(attended.transpose(1, 2).reshape(B, L, D))


class GatedMLP(nn.Module):
    """4M's gated feed-forward (SwiGLU): fc2(silu(fc1 x) * fc3 x); names follow ml-4m's GatedMlp."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc3 = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """Hidden width of 4M's gated MLP: 2/3 of the plain MLP's, so the parameter count stays the same."""
    return int(2 * int(dim * mlp_ratio) / 3)


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP (GELU, or 4M's gated
    SwiGLU with mlp="swiglu"); eps: every LayerNorm's epsilon. drop_path: the probability that a training
    sample skips each residual branch (stochastic depth; 0 = never, the default; `set_drop_path`)."""

    drop_path = 0.0  # a plain attribute, not a parameter or buffer: state dicts are the same either way

    def __init__(self, dim: int, heads: int, mlp_ratio: float, cross: bool = False, mlp: str = "gelu",
                 eps: float = 1e-5):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads)
        self.cross = cross
        if cross:
            self.norm_cross, self.cross_attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads)
            self.norm_memory = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        if mlp == "swiglu":
            self.mlp = GatedMLP(dim, swiglu_hidden(dim, mlp_ratio))
        else:
            self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self._stochastic_depth(self.attn(self.norm1(x), mask=mask))
        if self.cross:
            x = x + self._stochastic_depth(self.cross_attn(self.norm_cross(x), self.norm_memory(memory)))
        return x + self._stochastic_depth(self.mlp(self.norm2(x)))

    def _stochastic_depth(self, branch: torch.Tensor) -> torch.Tensor:
        """branch (B, L, D), zeroed for a random drop_path share of the samples in training and the rest
        scaled by 1 / (1 - drop_path), so its expected value is unchanged; untouched in eval mode."""
        if not self.training or self.drop_path == 0.0:
            return branch
        keep = 1.0 - self.drop_path
        kept = torch.empty(branch.shape[0], 1, 1, device=branch.device, dtype=branch.dtype).bernoulli_(keep)
        return branch * kept / keep


def set_drop_path(blocks: nn.ModuleList, rate: float) -> None:
    """Stochastic depth over a stack of Blocks, rising linearly from 0 at the first block to `rate` at the
    last (the schedule of the stochastic-depth paper and of MAE's, BEiT's and 4M's fine-tuning)."""
    if not 0.0 <= rate < 1.0:
        raise TSTError(f"drop_path: expected a probability in [0, 1), got {rate}")
    for index, block in enumerate(blocks):
        block.drop_path = rate * index / max(1, len(blocks) - 1)
