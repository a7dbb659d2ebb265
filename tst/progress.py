"""The training progress bar of every Lightning stage."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar, labelled by what TST counts: TST trains for `max_steps` with no epoch limit,
    where Lightning's own label would read "Epoch 0/-2"."""

    def __init__(self, label: str = "train"):
        super().__init__()
        self.label = label

    def _get_train_description(self, current_epoch: int) -> str:
        return self.label
