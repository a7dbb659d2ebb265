"""A plain RGB ViT encoder for published generalist weights (DINOv2, CLIP, 4M), built from our own block.

`PlainViT` reuses `tst.layers.Block` unchanged (pre-norm: norm1 -> attention with separate `q`
and `kv` projections -> `out`; norm2 -> MLP) and adds only what the published models need around it:
a conv patch embedding, an optional class token and register tokens, a position embedding at the
pretrained grid that is resized to the input grid, an optional pre-norm (CLIP's ln_pre), a final norm,
and the model's own input normalization. Per-model block variations are applied after construction,
without touching `Block`:

- LayerNorm epsilon (1e-6 for DINOv2 and 4M, 1e-5 for CLIP) is set on every norm;
- the MLP activation: "gelu" (exact erf GELU, Block's default), "quick_gelu" (CLIP's x * sigmoid(1.702 x))
  or "swiglu" (4M's gated MLP, which replaces the block's MLP: fc2(silu(fc1 x) * fc3 x));
- LayerScale (DINOv2) is not a module here: `foreign_weights` folds gamma into the attention `out` and
  MLP output linears (gamma * W, gamma * b), which computes exactly the same function;
- bias-free linears / norms (4M) get zero biases from the weight mapping.

forward: RGB (B, 3, H, W) in [0, 1] -> patch features (B, dim, H/patch, W/patch); class and register
tokens go through the blocks but are dropped from the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tst.errors import TSTError
from tst.layers import Block, GatedMLP, sincos_2d, swiglu_hidden

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ViTConfig:
    """patch: pixels per token side. dim / depth / heads / mlp_ratio: transformer shape (a "swiglu" MLP has
    int(2/3 * dim * mlp_ratio) hidden units, as in 4M). pos_grid: side of the pretrained position grid
    (37 for DINOv2 at 518 px, 14 for CLIP and 4M at 224 px). class_token / register_tokens: extra tokens
    before the patches (the class token has a position, registers do not, as in DINOv2). pre_norm: a
    LayerNorm before the blocks (CLIP's ln_pre). norm_eps: epsilon of every LayerNorm. mlp: "gelu",
    "quick_gelu" or "swiglu". position: "learned" (a trained parameter, resized bicubically) or "sincos4m"
    (4M's fixed 2D sin-cos buffer, regenerated at other grids). interpolate_offset / interpolate_antialias:
    DINOv2's resizing details (the published models use offset 0.1 without antialiasing; the register
    models offset 0 with antialiasing). mean / std: the input normalization the model was trained with.
    image_size: the input size transfer uses by default."""

    patch: int
    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    pos_grid: int = 14
    class_token: bool = True
    register_tokens: int = 0
    pre_norm: bool = False
    norm_eps: float = 1e-6
    mlp: str = "gelu"
    position: str = "learned"
    interpolate_offset: float = 0.0
    interpolate_antialias: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    image_size: int = 224


class QuickGELU(nn.Module):
    """CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class PlainViT(nn.Module):
    """An RGB-only ViT on `tst.layers.Block` (see the module docstring)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        c = config
        if c.mlp not in ("gelu", "quick_gelu", "swiglu"):
            raise TSTError(f"PlainViT: mlp '{c.mlp}' is not one of gelu, quick_gelu, swiglu")
        if c.position not in ("learned", "sincos4m"):
            raise TSTError(f"PlainViT: position '{c.position}' is not one of learned, sincos4m")
        self.config = c
        self.dim, self.patch, self.image_size = c.dim, c.patch, c.image_size
        self.grid = c.image_size // c.patch  # feature-map side at the default input size
        self.prefix = int(c.class_token) + c.register_tokens  # tokens before the patches
        # Registered first so that layer-wise LR decay puts them with the embeddings (layer 0).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.class_token else None
        self.register_tokens = nn.Parameter(torch.zeros(1, c.register_tokens, c.dim)) if c.register_tokens else None
        positions = int(c.class_token) + c.pos_grid ** 2
        if c.position == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, positions, c.dim))
        else:  # 4M never trains its position embedding: keep it a (loaded) buffer
            self.register_buffer("pos_embed", torch.zeros(1, positions, c.dim))
        self.patch_embed = nn.Conv2d(3, c.dim, c.patch, c.patch)
        self.norm_pre = nn.LayerNorm(c.dim, eps=c.norm_eps) if c.pre_norm else None
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        for block in self.blocks:
            if c.mlp == "quick_gelu":
                block.mlp[1] = QuickGELU()
            elif c.mlp == "swiglu":
                block.mlp = GatedMLP(c.dim, swiglu_hidden(c.dim, c.mlp_ratio))
            block.norm1.eps = block.norm2.eps = c.norm_eps
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.register_buffer("mean", torch.tensor(c.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c.std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def uninitialized(cls, config: ViTConfig) -> "PlainViT":
        """A PlainViT with its weights allocated but not initialized, for a strict load to overwrite (the
        random init of a B-sized model costs about a second)."""
        with torch.device("meta"):
            network = cls(config)
        network.to_empty(device="cpu")
        network.mean = torch.tensor(config.mean).view(1, 3, 1, 1)  # not in the state dict: set here
        network.std = torch.tensor(config.std).view(1, 3, 1, 1)
        return network

    def positions(self, rows: int, columns: int) -> torch.Tensor:
        """(1, [1 +] rows*columns, dim): the position embedding for a rows x columns patch grid."""
        c, grid = self.config, self.config.pos_grid
        if (rows, columns) == (grid, grid):
            return self.pos_embed
        if c.position == "sincos4m":
            return sincos_2d(rows, columns, c.dim, row_first=True)[None].to(self.pos_embed)
        head, table = self.pos_embed[:, :int(c.class_token)], self.pos_embed[:, int(c.class_token):]
        table = table.float().reshape(1, grid, grid, c.dim).permute(0, 3, 1, 2)
        if c.interpolate_offset:  # DINOv2's resize: a scale factor, slightly enlarged, sets the sampling
            scale = ((rows + c.interpolate_offset) / grid, (columns + c.interpolate_offset) / grid)
            table = F.interpolate(table, scale_factor=scale, mode="bicubic", antialias=c.interpolate_antialias)
        else:
            table = F.interpolate(table, size=(rows, columns), mode="bicubic", antialias=c.interpolate_antialias)
        table = table.permute(0, 2, 3, 1).reshape(1, rows * columns, c.dim).to(self.pos_embed.dtype)
        return torch.cat([head, table], dim=1)

    def tokens(self, rgb: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """RGB (B, 3, H, W) in [0, 1] -> (all tokens after the final norm (B, prefix + h*w, dim), h, w)."""
        B, _, H, W = rgb.shape
        if H % self.patch or W % self.patch:
            raise TSTError(f"PlainViT: input {H}x{W} is not a multiple of the patch size {self.patch}")
        x = self.patch_embed((rgb - self.mean) / self.std)  # (B, D, h, w)
        rows, columns = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        x = x + self.positions(rows, columns)
        if self.register_tokens is not None:  # after the class token, without a position (DINOv2)
            x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], dim=1)
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), rows, columns

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x, rows, columns = self.tokens(rgb)
        return x[:, self.prefix:].transpose(1, 2).reshape(rgb.shape[0], self.dim, rows, columns)
