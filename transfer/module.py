"""The fine-tuning LightningModule: one backbone, one head per task, summed task losses."""

from __future__ import annotations

import itertools
import math
import re

import lightning as L
import torch
from torch import nn

from tst.transfer.tasks import Task

# Block indices in parameter names: our ViT (`encoder.3.`), DINOv2-style (`blocks.3.`), CLIP
# (`resblocks.3.`), EfficientNet (`_blocks.3.`).
BLOCK_INDEX = re.compile(r"(?:^|\.)(?:encoder|blocks|resblocks|_blocks)\.(\d+)\.")


def layer_groups(backbone: nn.Module, lr: float, decay: float) -> list[dict]:
    """AdamW parameter groups with layer-wise LR decay: the last block trains at `lr`, each block below
    at `decay` times the one above, embeddings (before the first block) at the lowest rate and layers
    after the last block (final norms) at `lr`. decay=1 gives one group at `lr`."""
    named = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    if decay == 1.0:
        return [{"params": [p for _, p in named], "lr": lr}] if named else []
    blocks = [int(m.group(1)) for n, _ in named if (m := BLOCK_INDEX.search(n))]
    depth = max(blocks) + 1 if blocks else 0
    groups: dict[int, list] = {}
    seen_block = False
    for name, parameter in named:
        match = BLOCK_INDEX.search(name)
        if match:
            seen_block, layer = True, int(match.group(1)) + 1
        else:
            layer = depth + 1 if seen_block else 0
        groups.setdefault(layer, []).append(parameter)
    return [{"params": params, "lr": lr if layer > depth else lr * decay ** (depth - layer)}
            for layer, params in sorted(groups.items())]


def _floating_tensors(network: nn.Module):
    """(name, tensor) of every floating-point parameter and buffer, each shared tensor once."""
    return [(name, tensor) for name, tensor in itertools.chain(network.named_parameters(), network.named_buffers())
            if tensor.is_floating_point()]


def weights_snapshot(network: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `network`'s floating-point parameters and buffers, for `interpolate_weights`."""
    return {name: tensor.detach().clone() for name, tensor in _floating_tensors(network)}


def interpolate_weights(network: nn.Module, start: dict[str, torch.Tensor], alpha: float) -> None:
    """WiSE-FT (Wortsman et al. 2022), in place: each floating-point parameter and buffer of `network`
    becomes start + alpha x (now - start), `start` its `weights_snapshot` from before fine-tuning.
    Integer buffers keep their fine-tuned values."""
    with torch.no_grad():
        for name, tensor in _floating_tensors(network):
            tensor.copy_(torch.lerp(start[name].to(tensor), tensor, alpha))


class TransferModule(L.LightningModule):
    """settings: mode "full" (backbone trained at lr x backbone_lr_scale, layer_decay per block) or
    "probe" (backbone frozen, in eval mode); lr, weight_decay, warmup_steps, steps; head_first_steps: in
    full mode, the backbone's LR is 0 for that many steps at the start, then warms up and decays over the
    rest (LP-FT: heads fitted on the pretrained features before fine-tuning can distort them).
    joint: the backbone's pretraining objective on the test space's frames, its loss added with weight
    settings["joint_pretraining"] and its own parameters (decoder...) trained at the backbone's LR
    (transfer/joint.py); None = off."""

    def __init__(self, backbone: nn.Module, tasks: list[Task], settings: dict, joint: nn.Module | None = None):
        super().__init__()
        self.backbone, self.settings, self.joint = backbone, settings, joint
        self.tasks = {task.name: task for task in tasks}
        self.heads = nn.ModuleDict({task.name: task.build_head(backbone.dim) for task in tasks})
        if settings["mode"] == "probe":
            self.backbone.requires_grad_(False)

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, dim, g, g)."""
        if self.settings["mode"] == "probe":
            self.backbone.eval()
        return self.backbone(rgb)

    def forward(self, rgb: torch.Tensor, skip: tuple[str, ...] = ()) -> dict:
        """One backbone pass, every head but those in `skip`: task name -> that task's per-image predictions."""
        features = self.features(rgb)
        return {name: task.predict(self.heads[name], features, tuple(rgb.shape[-2:]))
                for name, task in self.tasks.items() if name not in skip}

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        features = self.features(batch["rgb"])
        size = len(batch["key"])
        total = 0.0
        for name, task in self.tasks.items():
            loss = task.loss(self.heads[name], features, batch)
            self.log(f"loss/{name}", loss, prog_bar=True, batch_size=size)
            total = total + loss
        if self.joint is not None:
            loss = self.joint.loss(self.global_step, features.device)
            self.log("loss/joint", loss, prog_bar=True, batch_size=size)
            total = total + float(self.settings["joint_pretraining"]) * loss
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=size)
        return total

    def configure_optimizers(self):
        s = self.settings
        lr = float(s["lr"])
        groups = [{"params": list(self.heads.parameters()), "lr": lr}]
        if s["mode"] == "full":
            groups += layer_groups(self.backbone, lr * float(s["backbone_lr_scale"]), float(s.get("layer_decay", 1.0)))
        if self.joint is not None:
            groups.append({"params": self.joint.own_parameters(self.backbone), "lr": lr * float(s["backbone_lr_scale"])})
        optimizer = torch.optim.AdamW(groups, weight_decay=float(s["weight_decay"]))
        warmup, total, first = int(s["warmup_steps"]), int(s["steps"]), int(s.get("head_first_steps", 0))

        def factor(step: int, start: int = 0) -> float:
            """Linear warmup, then cosine decay to 0 at `total`, both counted from step `start` (0 before it)."""
            if step < start:
                return 0.0
            step, span = step - start, total - start
            if step < warmup:
                return (step + 1) / max(1, warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, span - warmup))))

        backbone = (lambda step: factor(step, first)) if first else factor
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [factor] + [backbone] * (len(groups) - 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
