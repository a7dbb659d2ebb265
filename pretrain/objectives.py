"""Pretraining objectives: what the model reads and predicts, and the loss per modality.

- `multimae`: pixel patches in and out, each modality with its registry entry's loss (MSE on per-patch
  normalized RGB, L1 on depth and normals, BCE on edges); CE on label maps (only in label ablations).
  With rgb_patch_norm off (pretrain.rgb_patch_norm=false), RGB is regressed as pixels, plain MSE, so the
  encoder must keep each patch's absolute colour and brightness, which per-patch normalization discards.
- `mae`: the same on RGB alone (the unimodal baseline).
- `fourm`: RGB pixel patches and the other modalities' tokenizer codes in; every modality's codes
  (RGB included) out, cross-entropy on the target codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tst.errors import TSTError
from tst.layers import patchify, unpatchify
from tst.modalities import MODALITIES, by_tier, from_network, get, normalized_patch_mse, to_network

from tst.pretrain.model import ModalityIO
from tst.pretrain.tokenizer import Tokenizer

OBJECTIVES = ("fourm", "multimae", "mae")  # every objective `tst pretrain` trains; a run of each is a backbone


def is_label_map(name: str) -> bool:
    """Label maps (semantic, instance) enter as one-hot classes and are predicted with cross-entropy."""
    return name in MODALITIES and MODALITIES[name].kind == "label_map"


class PixelObjective:
    """multimae / mae: the model regresses the masked patches of each modality."""

    def __init__(self, modalities: list[str], patch: int, num_classes: int = 0, rgb_patch_norm: bool = True):
        self.names, self.patch, self.num_classes = list(modalities), patch, num_classes
        self.rgb_patch_norm = rgb_patch_norm

    def _loss(self, name: str):
        """The modality's registry loss; plain MSE for RGB without per-patch normalization."""
        if name == "rgb" and not self.rgb_patch_norm:
            return F.mse_loss
        return get(name).loss

    def io(self) -> list[ModalityIO]:
        ios = []
        for name in self.names:
            channels = self.num_classes if is_label_map(name) else get(name).channels
            ios.append(ModalityIO(name, "pixels", "pixels", channels, channels))
        return ios

    def _pixels(self, name: str, batch: dict) -> torch.Tensor:
        x = batch[name]
        if is_label_map(name):
            return F.one_hot(x.clamp(max=self.num_classes - 1), self.num_classes).permute(0, 3, 1, 2).float()
        return to_network(name, x)

    def inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        return {name: patchify(self._pixels(name, batch), self.patch) for name in self.names if name in batch}

    def losses(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        losses = {}
        for name, (prediction, where) in outputs.items():
            rows, tokens = where[:, 0], where[:, 1]
            if is_label_map(name):
                target = patchify(batch[name][:, None].float(), self.patch)[rows, tokens].long()
                logits = prediction.reshape(-1, self.patch * self.patch, self.num_classes)
                losses[name] = F.cross_entropy(logits.reshape(-1, self.num_classes), target.reshape(-1))
                continue
            losses[name] = self._loss(name)(prediction, patchify(self._pixels(name, batch), self.patch)[rows, tokens])
        return losses

    def images(self, name: str, prediction: torch.Tensor, batch: dict) -> torch.Tensor:
        """Full-grid predictions (B, N, out) -> (B, C, H, W) in reader units (RGB patches un-normalized
        with the statistics of the true patches, as MAE does for display)."""
        if is_label_map(name):
            logits = unpatchify(prediction, self.patch, self.num_classes)
            return logits.argmax(1)
        if self._loss(name) is normalized_patch_mse:
            truth = patchify(self._pixels(name, batch), self.patch)
            prediction = prediction * (truth.var(-1, keepdim=True) + 1e-6).sqrt() + truth.mean(-1, keepdim=True)
        return from_network(name, unpatchify(prediction, self.patch, get(name).channels))


class TokenObjective:
    """fourm (as in 4M): RGB enters as pixel patches, every other modality as tokenizer codes; every
    modality, RGB included, is predicted as codes, with cross-entropy on the masked ones. The encoder
    therefore never needs a tokenizer for RGB: the transfer backbone reads pixels."""

    PIXEL_INPUTS = ("rgb",)

    def __init__(self, tokenizers: dict[str, Tokenizer], patch: int):
        self.tokenizers, self.patch = tokenizers, patch
        self.names = list(tokenizers)

    def io(self) -> list[ModalityIO]:
        return [ModalityIO(name, "pixels", "tokens", in_channels=get(name).channels, vocab=t.config.vocab)
                if name in self.PIXEL_INPUTS else ModalityIO(name, "tokens", "tokens", vocab=t.config.vocab)
                for name, t in self.tokenizers.items()]

    def codes(self, batch: dict) -> dict[str, torch.Tensor]:
        """name -> (B, N) code ids of every modality in the batch (precomputed ones when present,
        else tokenized once per batch and kept in it)."""
        if "_codes" not in batch:
            batch["_codes"] = {name: batch[f"codes/{name}"] if f"codes/{name}" in batch else t.encode(batch[name])
                               for name, t in self.tokenizers.items() if name in batch or f"codes/{name}" in batch}
        return batch["_codes"]

    def inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """RGB as (B, N, patch*patch*3) network-scaled patches, the rest as (B, N) codes."""
        pixels = {name: patchify(to_network(name, batch[name]), self.patch)
                  for name in self.PIXEL_INPUTS if name in batch}
        if all(name in self.PIXEL_INPUTS for name in self.names if name in batch):
            return pixels  # e.g. the transfer backbone: RGB alone, no tokenizer involved
        return self.codes(batch) | pixels

    def losses(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        codes = self.codes(batch)
        return {name: F.cross_entropy(prediction, codes[name][where[:, 0], where[:, 1]])
                for name, (prediction, where) in outputs.items()}

    def images(self, name: str, prediction: torch.Tensor, batch: dict) -> torch.Tensor:
        return from_network(name, self.tokenizers[name].decode(prediction.argmax(-1)))


def check_modalities(objective: str, modalities: list[str], allow_labels: bool) -> list[str]:
    """The modalities an objective trains on; label-tier ones only as a declared ablation."""
    if objective == "mae":
        return ["rgb"]
    labels = [m for m in modalities if m in MODALITIES and MODALITIES[m].tier == "label"]
    if labels and not allow_labels:
        raise TSTError(f"pretrain.modalities: {labels} are labels, which the test space does not have; "
                       "set pretrain.label_ablation=true to use them anyway (recorded as an ablation)")
    unsupported = [m for m in modalities if m in MODALITIES and not is_label_map(m) and MODALITIES[m].scaling is None
                   or (objective == "fourm" and is_label_map(m))]
    if unsupported:
        raise TSTError(f"pretrain.modalities: {unsupported} cannot be used with objective '{objective}'")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise TSTError(f"pretrain.modalities: unknown {unknown}; expected among {by_tier('sensor')}")
    return list(modalities)
