"""PNGs of what the model does: masked inputs, predictions and targets per modality."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tst.layers import unpatchify
from tst.modalities import get
from tst.sheets import grid_image

from tst.pretrain.masking import TokenSelection

GREY = 0.5


def to_uint8(name: str, image: torch.Tensor, max_depth: float | None = None) -> np.ndarray:
    """One (C, H, W) image in reader units -> (H, W, 3) uint8, drawn as its registry entry draws it.
    max_depth: metres at the top of the depth colormap (pass the truth's so prediction and truth compare)."""
    modality = get(name)
    return modality.picture(modality.from_tensor(image), max_depth)


def token_mask(positions: torch.Tensor, rows: torch.Tensor, batch_size: int, tokens: int, patch: int) -> torch.Tensor:
    """(B, 1, H, W) bool: True on the patches listed as (rows, positions)."""
    mask = torch.zeros(batch_size, tokens, device=positions.device)
    mask[rows, positions] = 1.0
    return unpatchify(mask[..., None].expand(-1, -1, patch * patch), patch, 1) > 0.5


@torch.no_grad()
def prediction_sheet(module, batch: dict, selection: TokenSelection, samples: int = 4) -> Image.Image:
    """Rows: modality x sample; columns: masked input, prediction, target."""
    model, objective = module.model, module.objective
    N, patch = model.config.tokens_per_modality, model.config.patch
    outputs = model(objective.inputs(batch), selection)
    B = len(batch["key"])
    rows = []
    drawn = [name for name in model.names if name in batch]  # a teacher's features are not a picture
    for index, name in enumerate(model.names):
        if name not in drawn:
            continue
        truth = batch[name] if batch[name].dim() == 4 else batch[name][:, None]
        in_where = selection.input_modality == index
        in_rows = in_where.nonzero()[:, 0]
        in_mask = token_mask(selection.inputs[in_where] - index * N, in_rows, B, N, patch)
        if name in outputs:
            prediction, where = outputs[name]
            grid = prediction.new_zeros(B, N, prediction.shape[-1])
            grid[where[:, 0], where[:, 1]] = prediction
            predicted = objective.images(name, grid, batch)
            predicted = predicted if predicted.dim() == 4 else predicted[:, None]
            out_mask = token_mask(where[:, 1], where[:, 0], B, N, patch)
        else:
            predicted, out_mask = torch.zeros_like(truth.float()), torch.zeros_like(in_mask)
        for b in range(min(samples, B)):
            grey = torch.full_like(truth[b].float(), GREY if name != "depth" else 0.0)
            masked = torch.where(in_mask[b], truth[b].float(), grey)
            shown = torch.where(out_mask[b], predicted[b].float(), grey)
            top = float(truth[b].max()) if name == "depth" else None
            rows.append([to_uint8(name, masked, top), to_uint8(name, shown, top), to_uint8(name, truth[b], top)])
    return grid_image(rows, ["masked input", "prediction", "target"],
                      [f"{name} #{b}" for name in drawn for b in range(min(samples, B))])
