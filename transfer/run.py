"""`tst transfer`: train a task head on the transfer split (other spaces), score it on the test space's
eval split, record the result."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch.utils.data import DataLoader, Subset

from tst.errors import TSTError
from tst.sheets import grid_image
from tst.taxonomy import Taxonomy
from tst.tracking import record_run
from tst.workspace import atomic_write_json, new_run_name, read_manifest, staged_directory, write_manifest

from tst.collect.dataset import FrameDataset, RandomResizedCropFlip, collate
from tst.pretrain.visualize import to_uint8
from tst.transfer.backbones import make_backbone
from tst.transfer.metrics import SegmentationScore
from tst.transfer.module import SegmentationModule

console = Console(stderr=True)
TASKS = ("seg",)
PLANNED_TASKS = ("det", "caption")


def _dataset(cfg: DictConfig) -> Path:
    if cfg.get("data_dir"):
        root = Path(str(cfg.data_dir))
    else:
        name = f"procedural-{cfg.space.seed}" if cfg.space.backend == "procedural" else Path(str(cfg.space.path)).stem
        root = Path(cfg.workspace_dir) / name / "data"
    if not (root / "manifest.json").is_file():
        raise TSTError(f"{root}: no collected dataset there (no manifest.json); run tst collect first")
    return root


def _check_splits(root: Path) -> Taxonomy:
    """The transfer and eval splits exist, are non-empty and share one taxonomy (one dataset has one)."""
    outputs = read_manifest(root)["outputs"]
    for split in ("transfer", "eval"):
        if outputs["splits"].get(split, {}).get("frames", 0) == 0:
            raise TSTError(f"{root}: the {split} split is empty; collect it (collect.frames.{split})")
    return Taxonomy.from_dict(outputs["taxonomy"])


def _training_subset(frames: FrameDataset, fraction: float, seed: int) -> Subset:
    if not 0 < fraction <= 1:
        raise TSTError(f"transfer.fraction: expected 0 < fraction <= 1, got {fraction}")
    count = max(1, int(round(len(frames) * fraction)))
    chosen = np.random.default_rng(seed).permutation(len(frames))[:count]
    return Subset(frames, sorted(int(i) for i in chosen))


def _evaluate(module: SegmentationModule, eval_frames: FrameDataset, classes: int, batch_size: int):
    score = SegmentationScore(classes)
    examples = []
    module.eval()
    with torch.no_grad():
        for batch in DataLoader(eval_frames, batch_size=batch_size, collate_fn=collate):
            predicted = module(batch["rgb"]).argmax(1)
            score.update(predicted, batch["semantic"])
            if len(examples) < 4:
                examples += [(batch["rgb"][i], batch["semantic"][i], predicted[i])
                             for i in range(min(4 - len(examples), len(batch["key"])))]
    return score.compute(), examples


def run(cfg: DictConfig) -> Path:
    t = cfg.transfer
    if t.task not in TASKS:
        planned = " (not built yet)" if t.task in PLANNED_TASKS else ""
        raise TSTError(f"transfer.task: '{t.task}'{planned}; expected one of {', '.join(TASKS)}")
    if t.mode not in ("full", "probe"):
        raise TSTError(f"transfer.mode: expected full or probe, got {t.mode!r}")
    root = _dataset(cfg)
    taxonomy = _check_splits(root)
    backbone, info, size = make_backbone(str(t.backbone), OmegaConf.to_container(cfg.model, resolve=True))
    name = cfg.run_name or f"{t.task}-{info.name}-f{t.fraction}-s{t.seed}-{new_run_name()}"
    run_dir = Path(cfg.workspace_dir) / root.parent.name / "transfer" / name
    if run_dir.exists():
        raise TSTError(f"{run_dir}: already exists; choose another run_name")
    view = RandomResizedCropFlip(size, (1.0, 1.0), (1.0, 1.0), 0.0)
    train = _training_subset(FrameDataset(root, "transfer", ["rgb", "semantic"],
                                          transform=RandomResizedCropFlip(size, tuple(cfg.data.crop_scale))),
                             float(t.fraction), int(t.seed))
    eval_frames = FrameDataset(root, "eval", ["rgb", "semantic"], transform=view)
    L.seed_everything(int(t.seed), workers=True, verbose=False)
    settings = OmegaConf.to_container(t, resolve=True)
    module = SegmentationModule(backbone, len(taxonomy), settings)
    loader = DataLoader(train, batch_size=int(cfg.data.batch_size), shuffle=True, drop_last=len(train) >= int(cfg.data.batch_size),
                        num_workers=int(cfg.data.num_workers), collate_fn=collate, persistent_workers=int(cfg.data.num_workers) > 0)
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, max_steps=int(t.steps), logger=False,
                        enable_checkpointing=False, enable_model_summary=False, precision=cfg.trainer.precision,
                        gradient_clip_val=1.0)
    trainer.fit(module, loader)
    scores, examples = _evaluate(module, eval_frames, len(taxonomy), int(t.eval_batch_size))
    per_class = {taxonomy.name(c): v for c, v in scores["per_class"].items()}
    metrics = {"task": t.task, "backbone": info.name, "backbone_source": info.source, "objective": info.objective,
               "fraction": float(t.fraction), "seed": int(t.seed), "mode": t.mode, "train_frames": len(train),
               "eval_frames": len(eval_frames), "seg_miou": scores["miou"], "seg_per_class_iou": per_class}
    rows = [[to_uint8("rgb", rgb), to_uint8("semantic", truth), to_uint8("semantic", predicted)]
            for rgb, truth, predicted in examples]
    inputs = {"dataset": root} | ({"backbone": info.path} if info.path else {})
    with staged_directory(run_dir) as tmp:
        grid_image(rows, ["eval rgb", "truth", f"{info.name} prediction"],
                   [f"#{i}" for i in range(len(rows))]).save(tmp / "predictions.png")
        atomic_write_json(tmp / "metrics.json", metrics)
        torch.save(module.state_dict(), tmp / "model.pt")
        write_manifest(tmp, "transfer", cfg, inputs,
                       {"metrics": "metrics.json", "model": "model.pt", "predictions": "predictions.png"})
    record_run(cfg, "transfer", root.parent.name, run_dir, {"dataset": str(root)},
               {"metrics": str(run_dir / "metrics.json")},
               {"seg_miou": scores["miou"]} | {f"iou/{k}": v for k, v in per_class.items()},
               images=[run_dir / "predictions.png"])
    console.print(f"[green]{t.task}[/green] backbone {info.name}: mIoU {scores['miou']:.3f} on "
                  f"{len(eval_frames)} eval frames  ({run_dir})")
    print(json.dumps({k: v for k, v in metrics.items() if k != "seg_per_class_iou"}))
    return run_dir
