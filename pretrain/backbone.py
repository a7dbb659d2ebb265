"""The pretrained encoder as a plain ViT backbone for transfer: images in, patch features out."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tst.errors import TSTError



class Backbone(nn.Module):
    """Encoder of a pretraining run reading `modalities` (default RGB; depth too if it was trained).

    forward(images: name -> (B, C, H, W) in reader units at the model's image size)
      -> (B, len(modalities) * N, dim) encoder features, N = (image_size / patch)² per modality,
         modalities in the order given, patches row-major.
    """

    def __init__(self, module, modalities: tuple[str, ...] = ("rgb",)):
        super().__init__()
        missing = [m for m in modalities if m not in module.modalities]
        if missing:
            raise TSTError(f"backbone: the run was not trained on {missing} (it has {module.modalities})")
        self.module, self.modalities = module, list(modalities)
        self.dim, self.grid = module.model.config.dim, module.model.config.grid

    def forward(self, images: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = dict(images) | {"key": [""] * next(iter(images.values())).shape[0]}
        inputs = {name: x for name, x in self.module.objective.inputs(batch).items() if name in self.modalities}
        model = self.module.model
        return model.encode_all(model.modality_tokens(model.embed(inputs), self.modalities))


def load_backbone(run_dir: str | Path, modalities: tuple[str, ...] = ("rgb",)) -> Backbone:
    from tst.pretrain.run import load_run

    module, _, _ = load_run(Path(run_dir))
    return Backbone(module, modalities)
