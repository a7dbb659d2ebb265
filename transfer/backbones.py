"""Backbones for transfer: a `tst pretrain` run's encoder, or the same architecture from scratch.

Every backbone maps RGB (B, 3, H, W) in [0, 1] to a feature map (B, dim, H/patch, W/patch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tst.errors import TSTError
from tst.layers import ModelConfig, patchify, set_drop_path
from tst.modalities import to_network

from tst.pretrain.model import ModalityIO, MultimodalMaskedModel


@dataclass(frozen=True)
class BackboneInfo:
    """What a results table needs to know: a name, where it comes from, its pretraining objective, and
    the run folder it was loaded from (None for scratch and the generalist)."""

    name: str
    source: str
    objective: str
    path: Path | None = None


# Tensors of a one-modality encoder that a pretraining run must provide.
ENCODER_KEYS = ("input_adapters.rgb.", "modality_embedding", "encoder.", "encoder_norm.")


class ScratchViT(nn.Module):
    """The pretraining encoder architecture reading RGB pixels: random init for `scratch`, or a
    pretraining run's encoder loaded into it (every objective transfers through this same network)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.model = MultimodalMaskedModel(config, [ModalityIO("rgb", "pixels", "pixels", 3, 3)])
        self.dim, self.grid, self.patch = config.dim, config.grid, config.patch

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        B = rgb.shape[0]
        tokens = self.model.encode_all(self.model.embed({"rgb": patchify(to_network("rgb", rgb), self.patch)}))
        return tokens.transpose(1, 2).reshape(B, self.dim, self.grid, self.grid)


class GeneralistFeatures(nn.Module):
    """EfficientNet-Lite0 (ImageNet-supervised) features: (B, 3, H, W) -> (B, 320, H/32, W/32)."""

    def __init__(self):
        super().__init__()
        from tst.transfer.generalist import load_generalist

        self.network = load_generalist()
        self.dim = 320

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.network.features(rgb)


GENERALIST_SIZE = 224  # the input size EfficientNet-Lite0 was trained at


def apply_drop_path(backbone: nn.Module, rate: float) -> None:
    """transfer.drop_path: stochastic depth on a ViT backbone's blocks while it fine-tunes (0 at the first
    block, `rate` at the last). The generalist, a CNN, is fine-tuned without it."""
    blocks = backbone.model.encoder if isinstance(backbone, ScratchViT) else getattr(backbone, "blocks", None)
    if blocks is not None:
        set_drop_path(blocks, rate)


def resized(config: dict, size: int | None, source: str) -> dict:
    """A ViT's config at `size` input pixels (None: unchanged). Fine-tuning above the pretraining
    resolution keeps every weight: a patch embeds the same pixels, and the positions of the larger grid are
    the sin-cos table built for it (published ViTs resize their learned table, `PlainViT.positions`)."""
    if size is None:
        return config
    if int(size) <= 0 or int(size) % int(config["patch"]):
        raise TSTError(f"transfer.image_size: {size} is not a positive multiple of {source}'s patch size "
                       f"({config['patch']} pixels)")
    return {**config, "image_size": int(size)}


def make_backbone(spec: str, model_config: dict, settings: dict | None = None) -> tuple[nn.Module, BackboneInfo, int]:
    """(feature extractor, info, input image size) for `transfer.backbone=spec`: scratch, generalist,
    or a `tst pretrain` run folder. settings: the transfer config (generalist_size; image_size, the input
    pixels of a ViT backbone, default its pretraining size)."""
    size = (settings or {}).get("image_size")
    if spec == "generalist":
        size = int((settings or {}).get("generalist_size") or GENERALIST_SIZE)
        return (GeneralistFeatures(),
                BackboneInfo("generalist", "EfficientNet-Lite0, ImageNet-supervised (offline stand-in for an "
                             "internet-pretrained generalist)", "imagenet-supervised"), size)
    if spec == "scratch":
        config = ModelConfig(**resized(model_config, size, "model"))
        return ScratchViT(config), BackboneInfo("scratch", "random init", "none"), config.image_size
    from tst.transfer.foreign_weights import FOREIGN_SPECS, load_foreign

    if spec in FOREIGN_SPECS:  # published generalists, weights read from TST_WEIGHTS_DIR
        network, info = load_foreign(spec)
        return network, info, int(resized({"image_size": network.image_size, "patch": network.patch}, size, spec)["image_size"])
    path = Path(spec)
    if (path / "config.json").is_file():
        from tst.pretrain.backbone import rgb_encoder_state
        from tst.pretrain.run import read_pretrain_config

        pretraining = read_pretrain_config(path)["pretrain"]
        objective = pretraining["objective"]
        name = "adapted" if pretraining.get("init") else objective  # the paper's row: 4M-21 adapted to the space
        pretrained_config, state = rgb_encoder_state(path)
        backbone = ScratchViT(ModelConfig(**resized(pretrained_config, size, str(path))))
        missing = [k for k in backbone.model.state_dict() if k.startswith(ENCODER_KEYS) and k not in state]
        if missing:
            raise TSTError(f"{path}: its encoder lacks {missing[:3]}")
        backbone.model.load_state_dict(state, strict=False)
        return backbone, BackboneInfo(name, str(path), objective, path), backbone.model.config.image_size
    raise TSTError(f"transfer.backbone: '{spec}' is neither 'scratch', 'generalist', one of "
                   f"{', '.join(FOREIGN_SPECS)} nor a tst pretrain run folder")
