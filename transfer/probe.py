"""`tst transfer probe`: how far a backbone's frozen features close the gap between the transfer spaces and
the test space, in seconds and without SGD.

Each frame's features (B, D, g, g) are cut into g x g patches; a patch's label is the majority class of
its pixels. One ridge regression from patch features to one-hot patch classes is fitted on the even
frames of the transfer split (other spaces) and scored twice as patch mIoU: on the odd transfer frames
(in-domain: the spaces the labels came from) and on the test space's eval split. The gap between the two
is what test-space pretraining should shrink: features fitted to the test space make it look like the
spaces the heads were trained on. The probe is closed-form, so it measures the features alone, with no
head, schedule or fine-tuning to wash them out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from tst.errors import TSTError
from tst.stage import new_run_dir, publish
from tst.workspace import atomic_write_json, read_manifest

from tst.collect.dataset import FrameDataset, collected_dataset
from tst.transfer.backbones import make_backbone
from tst.transfer.data import class_mapping, full_frame, split_taxonomy

console = Console(stderr=True)
BATCH = 32


def patch_labels(semantic: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, H, W) class ids -> (B * grid * grid,) each patch's majority class, rows first (a map whose side
    is not a multiple of `grid` is first resized, nearest, to the multiple below it)."""
    B, H, W = semantic.shape
    if H % grid or W % grid:
        side = (max(1, H // grid) * grid, max(1, W // grid) * grid)
        semantic = torch.nn.functional.interpolate(semantic[:, None].float(), size=side, mode="nearest")[:, 0].long()
        B, H, W = semantic.shape
    cells = semantic.reshape(B, grid, H // grid, grid, W // grid).permute(0, 1, 3, 2, 4).reshape(B, grid * grid, -1)
    return torch.mode(cells, dim=-1).values.reshape(-1)


@torch.no_grad()
def patch_features(backbone: torch.nn.Module, frames: FrameDataset, lookup: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (N * g * g, D) float64, labels (N * g * g,), frame index of each patch) over every frame;
    `lookup` maps the frames' class ids to the eval taxonomy's."""
    features, labels, owners = [], [], []
    for start in range(0, len(frames), BATCH):
        items = [frames[i] for i in range(start, min(len(frames), start + BATCH))]
        rgb = torch.stack([item["rgb"] for item in items])
        semantic = torch.stack([item["semantic"] for item in items]).long()
        if lookup is not None:
            semantic = lookup[semantic]
        maps = backbone(rgb)  # (B, D, g, g)
        grid = maps.shape[-1]
        features.append(maps.flatten(2).transpose(1, 2).reshape(-1, maps.shape[1]).double())
        labels.append(patch_labels(semantic, grid))
        owners.append(torch.arange(start, start + len(items)).repeat_interleave(grid * grid))
    return torch.cat(features), torch.cat(labels), torch.cat(owners)


@dataclasses.dataclass
class RidgeProbe:
    """Standardized features -> class scores, fitted in closed form: W = (X'X + ridge I)^-1 X'Y."""

    mean: torch.Tensor
    scale: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, classes: int, ridge: float) -> RidgeProbe:
        mean, scale = features.mean(0), features.std(0) + 1e-6
        X = _with_bias((features - mean) / scale)
        targets = torch.nn.functional.one_hot(labels, classes).double()
        weights = torch.linalg.solve(X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype), X.T @ targets)
        return cls(mean, scale, weights)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return (_with_bias((features - self.mean) / self.scale) @ self.weights).argmax(1)


def _with_bias(X: torch.Tensor) -> torch.Tensor:
    return torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)


def patch_scores(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Patch mIoU over the classes present in `truth` (class 0, unlabeled, left out) and patch accuracy."""
    ious = []
    for c in sorted(set(truth.tolist()) - {0}):
        union = int(((predicted == c) | (truth == c)).sum())
        ious.append(int(((predicted == c) & (truth == c)).sum()) / union)
    labeled = truth != 0
    return {"patch_miou": float(sum(ious) / len(ious)) if ious else 0.0,
            "patch_accuracy": float((predicted[labeled] == truth[labeled]).double().mean()) if labeled.any() else 0.0}


def probe(cfg: DictConfig) -> Path:
    """Fit and score the probe of `transfer.backbone`; writes probe.json into <space>/probe/<run>."""
    t = cfg.transfer
    L.seed_everything(int(t.seed), workers=True, verbose=False)  # scratch's random features
    settings = OmegaConf.to_container(t, resolve=True)
    backbone, info, size = make_backbone(str(t.backbone), OmegaConf.to_container(cfg.model, resolve=True), settings)
    if t.get("backbone_name"):
        info = dataclasses.replace(info, name=str(t.backbone_name))
    backbone.eval()
    root = collected_dataset(cfg)
    source = Path(str(t.transfer_data)) if t.get("transfer_data") else root
    taxonomy = split_taxonomy(root, "eval")
    lookup = class_mapping(split_taxonomy(source, "transfer"), taxonomy, bool(t.map_by_name), str(source))
    transfer = FrameDataset(source, "transfer", ["rgb", "semantic"], transform=full_frame(size))
    evaluation = FrameDataset(root, "eval", ["rgb", "semantic"], transform=full_frame(size))
    if len(transfer) < 2 or len(evaluation) == 0:
        raise TSTError(f"{root}: the probe needs at least 2 transfer frames and 1 eval frame "
                       f"(found {len(transfer)} and {len(evaluation)})")
    space = str(read_manifest(root)["outputs"]["space"])
    run_dir = new_run_dir(cfg, space, "probe", f"{info.name}-s{t.seed}", space_key=f"{root}/manifest.json: outputs.space")
    features, labels, owners = patch_features(backbone, transfer, lookup)
    fit, held_out = owners % 2 == 0, owners % 2 == 1
    model = RidgeProbe.fit(features[fit], labels[fit], len(taxonomy.classes), float(t.probe.ridge))
    in_domain = patch_scores(model.predict(features[held_out]), labels[held_out])
    eval_features, eval_labels, _ = patch_features(backbone, evaluation)
    test_space = patch_scores(model.predict(eval_features), eval_labels)
    result = {"backbone": info.name, "backbone_source": info.source, "seed": int(t.seed), "image_size": size,
              "patches_per_frame": len(eval_labels) // len(evaluation), "ridge": float(t.probe.ridge),
              "fit_frames": (len(transfer) + 1) // 2, "held_out_frames": len(transfer) // 2,
              "eval_frames": len(evaluation), "in_domain": in_domain, "test_space": test_space,
              "gap": in_domain["patch_miou"] - test_space["patch_miou"]}
    inputs = {"dataset": root} | ({"transfer_data": source} if source != root else {}) \
        | ({"backbone": info.path} if info.path else {})

    def write(folder: Path) -> dict:
        atomic_write_json(folder / "probe.json", result)
        return {"probe": "probe.json"}

    metrics = {"in_domain_patch_miou": in_domain["patch_miou"], "test_space_patch_miou": test_space["patch_miou"],
               "gap": result["gap"]}
    publish(cfg, "probe", space, run_dir, write, inputs, metrics, tags={"backbone": info.name, "seed": str(int(t.seed))},
            summary=result)
    console.print(f"[green]probe[/green] {info.name}: patch mIoU {100 * in_domain['patch_miou']:.1f} in-domain "
                  f"(held-out transfer frames), {100 * test_space['patch_miou']:.1f} on the test space; gap "
                  f"{100 * result['gap']:.1f}  ({run_dir})")
    return run_dir
