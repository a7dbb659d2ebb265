"""Joint pretraining during fine-tuning (transfer.joint_pretraining): the backbone keeps training on its own
pretraining objective over the test space's unlabelled frames while the task heads learn from other spaces'
labels, so fine-tuning cannot erase what the pretraining learned about the test space (the joint training of
test-time training, Sun et al. 2020, with the multimodal masked objective as the auxiliary task).

The pretraining run's whole model (decoder, output adapters, other modalities' inputs) is loaded and its RGB
patch embedding, encoder blocks and encoder norm are *the same tensors* as the transfer backbone's; only
the test space's pretrain split is read (its sensor modalities: never labels), at the pretraining resolution.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from tst.errors import TSTError
from tst.modalities import MODALITIES

from tst.pretrain.data import PretrainData
from tst.pretrain.module import PretrainModule
from tst.transfer.backbones import ScratchViT


class JointPretraining(nn.Module):
    """The pretraining objective of `pretraining` (a loaded PretrainModule) over the endless `batches` of the
    test space's pretrain frames, tied to `backbone`'s encoder. loss(step) -> scalar: the summed
    per-modality losses of one batch, tokens selected as the pretraining run selected them at that step."""

    def __init__(self, pretraining: PretrainModule, backbone: ScratchViT, batches: DataLoader):
        super().__init__()
        shared = backbone.model
        model = pretraining.model
        model.input_adapters["rgb"] = shared.input_adapters["rgb"]
        model.encoder, model.encoder_norm = shared.encoder, shared.encoder_norm
        self.pretraining = pretraining
        self.batches = batches
        self._iterator = None

    def own_parameters(self, shared: nn.Module) -> list[nn.Parameter]:
        """The trainable parameters that are not also `shared`'s (decoder, output adapters, the other
        modalities' inputs, modality embeddings)."""
        ids = {id(p) for p in shared.parameters()}
        return [p for p in self.pretraining.model.parameters() if p.requires_grad and id(p) not in ids]

    def loss(self, step: int, device: torch.device) -> torch.Tensor:
        if self._iterator is None:
            self._iterator = iter(self.batches)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in next(self._iterator).items()}
        selection = self.pretraining.selection(len(batch["key"]), step)
        selection = dataclasses.replace(selection, **{f.name: getattr(selection, f.name).to(device)
                                                      for f in dataclasses.fields(selection)})
        model, objective = self.pretraining.model, self.pretraining.objective
        losses = objective.losses(model(objective.inputs(batch), selection), batch)
        return sum(losses.values())


def joint_pretraining(run_dir: Path, backbone: nn.Module, batch_size: int, seed: int) -> JointPretraining:
    """JointPretraining for the pretraining run at `run_dir` whose encoder `backbone` was loaded from; a
    one-line error when the backbone is not such a run or its pretraining read labels."""
    from tst.pretrain.run import load_run

    if not isinstance(backbone, ScratchViT) or run_dir is None:
        raise TSTError("transfer.joint_pretraining: needs transfer.backbone to be a tst pretrain run folder "
                       "(scratch, the generalist and published weights have no pretraining objective to keep)")
    pretraining, config, data = load_run(Path(run_dir))
    labels = [m for m in pretraining.modalities if m in MODALITIES and MODALITIES[m].tier == "label"]
    if labels:
        raise TSTError(f"transfer.joint_pretraining: {run_dir} was pretrained on the labels {labels} "
                       "(pretrain.label_ablation); training on the test space's labels during transfer is refused")
    pretraining.train()
    d = config["data"]
    frames = PretrainData(data, pretraining.modalities, int(config["model"]["image_size"]), batch_size, 0,
                          tuple(d["crop_scale"]), seed, bool(d["skip_corrupt"]), cache_frames=True)
    return JointPretraining(pretraining, backbone, frames.train_dataloader())

