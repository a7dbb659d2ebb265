"""Label shift: how far the class mix the heads learn from (the transfer split, other spaces' labels) is
from the class mix they are scored on (the test space's eval split).

Each split's labelled pixels are counted per class (id 0, unlabeled, left out), the transfer split's
classes mapped onto the eval taxonomy by name; the shift is the total-variation distance between the two
pixel shares (0: the same mix, 1: no class in common). A class the test space is full of but the other
spaces barely show cannot be learned from their labels whatever the backbone, so a large shift caps what
any transfer scores and narrows the gaps between backbones.

This reads the eval split's labels for the report only, beside the scores; nothing is trained or selected
with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tst.collect.dataset import CollectedData
from tst.taxonomy import map_by_name
from tst.workspace import MANIFEST, read_manifest
from tst.transfer.data import split_taxonomy


@dataclass
class LabelShift:
    """names: the eval taxonomy's class names (index = class id); eval_shares, transfer_shares:
    (len(names),) float64, each class's share of its split's labelled pixels (index 0 stays 0)."""

    names: list[str]
    eval_shares: np.ndarray
    transfer_shares: np.ndarray

    @property
    def distance(self) -> float:
        """Total-variation distance between the two shares, in [0, 1]."""
        return 0.5 * float(np.abs(self.eval_shares - self.transfer_shares).sum())

    def largest_differences(self, count: int) -> list[int]:
        """The `count` class ids whose shares differ most, largest first (ties by id)."""
        difference = np.abs(self.eval_shares - self.transfer_shares)
        order = sorted(range(1, len(self.names)), key=lambda i: (-difference[i], i))
        return [i for i in order[:count] if difference[i] > 0]


def pixel_shares(root: Path, split: str, lookup: np.ndarray, classes: int) -> np.ndarray:
    """(classes,) float64: each class's share of the labelled pixels of `split` of the dataset at `root`,
    its label ids mapped through `lookup` (source id -> target id < classes; 0 = unlabeled, not counted)."""
    data = CollectedData(root, split, ["semantic"])
    counts = np.zeros(classes, dtype=np.int64)
    for shard in data.shards:
        for key, raw in data.read_shard(shard["index"]):
            labels = np.asarray(data.decode_values(shard["index"], key, raw)["semantic"], dtype=np.int64).ravel()
            known = labels < len(lookup)  # an id outside the taxonomy counts as unlabeled
            counts += np.bincount(np.where(known, lookup[np.where(known, labels, 0)], 0), minlength=classes)
    counts[0] = 0
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def has_labels(root: Path, split: str) -> bool:
    """Whether the dataset at `root` holds a non-empty `split` with semantic labels (a dataset collected
    without them, or moved away since, has no label shift to show)."""
    if not (Path(root) / MANIFEST).is_file():
        return False
    outputs = read_manifest(root)["outputs"]
    return "semantic" in outputs.get("modalities", []) and outputs.get("splits", {}).get(split, {}).get("frames", 0) > 0


def measure(eval_root: Path, transfer_root: Path) -> LabelShift:
    """The label shift between the transfer split of `transfer_root` and the eval split of `eval_root`."""
    target = split_taxonomy(eval_root, "eval")
    source = split_taxonomy(transfer_root, "transfer")
    identity = np.arange(len(target), dtype=np.int64)
    lookup = identity if source == target else np.asarray(map_by_name(source, target).lookup, dtype=np.int64)
    return LabelShift(target.names, pixel_shares(eval_root, "eval", identity, len(target)),
                      pixel_shares(transfer_root, "transfer", lookup, len(target)))


def markdown(shift: LabelShift, eval_root: Path, transfer_root: Path, count: int = 6) -> str:
    """The report's label-shift section: the distance and the classes that differ most."""
    lines = ["## Label shift", "",
             f"Share of labelled pixels per class: the transfer split's labels ({transfer_root}; each run learns "
             f"from its labelled share of them) against the test space's eval split ({eval_root}; its labels "
             "read here for this diagnostic only). Total-variation "
             f"distance **{shift.distance:.3f}** (0: the same class mix, 1: none in common). A class the test space "
             "holds much more of than the transfer labels caps every backbone alike.", "",
             "| class | eval share % | transfer share % |", "|---|---|---|"]
    for i in shift.largest_differences(count):
        lines.append(f"| {shift.names[i]} | {100 * shift.eval_shares[i]:.1f} | {100 * shift.transfer_shares[i]:.1f} |")
    return "\n".join(lines) + "\n"
