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


ENCODER_PREFIXES = ("input_adapters.rgb.", "encoder.", "encoder_norm.")


def rgb_encoder_state(run_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model config, state dict) of a pretraining run's encoder as a plain RGB ViT: the RGB patch
    embedding, RGB's modality embedding (1, dim), the encoder blocks and norm -- the tensors of a
    one-modality MultimodalMaskedModel([rgb pixels]) encoder, for every objective (fourm reads RGB
    pixels too). Decoder, output adapters and other modalities' inputs are left behind."""
    from tst.weights import load_safetensors
    from tst.workspace import read_json, read_manifest

    run_dir = Path(run_dir)
    weights = run_dir / "encoder.safetensors"
    if not weights.is_file():
        raise TSTError(f"{run_dir}: no encoder.safetensors; is the pretraining run finished?")
    config = read_json(run_dir / "config.json", "the config of a tst pretrain run")
    modalities = list(read_manifest(run_dir)["outputs"]["modalities"])
    if "rgb" not in modalities:
        raise TSTError(f"{run_dir}: the run was not trained on rgb (it has {modalities})")
    stored = load_safetensors(weights, "the encoder weights of a finished tst pretrain run")
    if "input_adapters.rgb.weight" not in stored or "modality_embedding" not in stored:
        raise TSTError(f"{weights}: no RGB input adapter or modality embedding; expected the encoder of a tst "
                       "pretrain run")
    if stored["input_adapters.rgb.weight"].ndim != 2 or "input_adapters.rgb.bias" not in stored:
        raise TSTError(f"{run_dir}: its RGB input is not a pixel patch embedding (a run from before fourm read "
                       "RGB pixels); pretrain it again")
    state = {k: v for k, v in stored.items() if k.startswith(ENCODER_PREFIXES)}
    index = modalities.index("rgb")
    state["modality_embedding"] = stored["modality_embedding"][index:index + 1].clone()
    return config["model"], state


def load_backbone(run_dir: str | Path, modalities: tuple[str, ...] = ("rgb",)) -> Backbone:
    from tst.pretrain.run import load_run

    module, _, _ = load_run(Path(run_dir))
    return Backbone(module, modalities)
