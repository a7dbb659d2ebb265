"""Task metrics over a whole eval split."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassJaccardIndex

from tst.determinism import exact_counting


class SegmentationScore:
    """Dataset-level IoU from one confusion matrix accumulated over every eval pixel (torchmetrics),
    class 0 (unlabeled) ignored. mIoU averages the classes that occur in the eval ground truth."""

    def __init__(self, classes: int):
        self.classes = classes
        self.jaccard = MulticlassJaccardIndex(classes, average="none", ignore_index=0)
        self.support = torch.zeros(classes, dtype=torch.long)

    def update(self, predicted: torch.Tensor, truth: torch.Tensor) -> None:
        """predicted, truth: (B, H, W) class ids."""
        with exact_counting():
            self.jaccard.update(predicted.cpu(), truth.cpu())
        self.support += torch.bincount(truth.cpu().flatten(), minlength=self.classes)

    def compute(self) -> dict:
        per_class = self.jaccard.compute()
        present = self.support > 0
        present[0] = False
        miou = float(per_class[present].mean()) if present.any() else 0.0
        return {"miou": miou, "per_class": {int(c): float(per_class[c]) for c in torch.nonzero(present).flatten()}}
