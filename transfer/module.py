"""The fine-tuning LightningModule: a backbone, a task head, the task loss and optimizer."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from tst.transfer.heads import SegmentationHead


class SegmentationModule(L.LightningModule):
    """Per-pixel cross-entropy (unlabeled class 0 ignored). mode: "full" (backbone trained at
    lr x backbone_lr_scale) or "probe" (backbone frozen)."""

    def __init__(self, backbone: nn.Module, classes: int, settings: dict):
        super().__init__()
        self.backbone, self.settings = backbone, settings
        self.head = SegmentationHead(backbone.dim, classes)
        if settings["mode"] == "probe":
            self.backbone.requires_grad_(False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, classes, H, W) logits."""
        if self.settings["mode"] == "probe":
            self.backbone.eval()
        return self.head(self.backbone(rgb), rgb.shape[-2:])

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["rgb"]), batch["semantic"], ignore_index=0)
        self.log("loss/seg", loss, prog_bar=True, batch_size=len(batch["key"]))
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=len(batch["key"]))
        return loss

    def configure_optimizers(self):
        s = self.settings
        groups = [{"params": list(self.head.parameters()), "lr": float(s["lr"])}]
        if s["mode"] == "full":
            groups.append({"params": list(self.backbone.parameters()), "lr": float(s["lr"]) * float(s["backbone_lr_scale"])})
        optimizer = torch.optim.AdamW(groups, weight_decay=float(s["weight_decay"]))
        warmup, total = int(s["warmup_steps"]), int(s["steps"])

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
