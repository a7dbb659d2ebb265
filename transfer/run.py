"""`tst transfer`: train task heads on the transfer split (other spaces), score them on the test space's
eval split, record the result.

`transfer.task` is one of seg | det | caption, or a list of them trained jointly on one backbone (the
multi-task model the deploy stage runs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from torch.utils.data import DataLoader, Subset

from tst.determinism import deterministic_kernels
from tst.errors import TSTError
from tst.progress import StepProgressBar
from tst.sheets import grid_image
from tst.stage import new_run_dir, publish
from tst.taxonomy import Taxonomy
from tst.workspace import atomic_write_json, read_manifest

from tst.collect.dataset import FrameDataset, collate
from tst.pretrain.data import ResumableSampler, SeededSamples, pretraining_data
from tst.pretrain.run import read_pretrain_config
from tst.pretrain.visualize import to_uint8
from tst.transfer.backbones import BackboneInfo, apply_drop_path, make_backbone
from tst.transfer.data import Relabel, class_mapping, full_frame, split_taxonomy, transfer_and_eval
from tst.transfer.module import TransferModule, interpolate_weights, weights_snapshot
from tst.transfer.tasks import TASKS, Task

console = Console(stderr=True)
EXAMPLES = 4  # eval frames drawn in predictions.png


def task_names(value) -> list[str]:
    """transfer.task as a list of registered task names, in the registry's order."""
    names = list(value) if isinstance(value, (list, tuple, ListConfig)) else [str(value)]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise TSTError(f"transfer.task: '{','.join(unknown) or names}' is not a task; expected one or a list of "
                       f"{', '.join(TASKS)}")
    return [n for n in TASKS if n in names]


def build_tasks(names: list[str], taxonomy: Taxonomy, settings: dict, vocabulary=None) -> list[Task]:
    """The Task objects of `names`; settings: the transfer config (head widths, thresholds, beam)."""
    return [TASKS[name].from_settings(taxonomy, settings, vocabulary) for name in names]


def caption_vocabulary(train: Subset, min_count: int):
    """The word vocabulary of the training frames' captions."""
    from tst.transfer.captioning import Vocabulary

    frames: FrameDataset = train.dataset
    captions = FrameDataset(frames.data.root, "transfer", ["caption"])
    return Vocabulary.build([captions[i]["caption"] for i in train.indices], min_count=min_count)


def evaluate(module: TransferModule, frames, batch_size: int, examples: int = EXAMPLES) -> tuple[dict, list]:
    """Every task's metrics over all `frames`, and picture rows for the first `examples` frames."""
    scores = {name: task.new_score() for name, task in module.tasks.items()}
    rows: list[list] = []
    module.eval()
    with torch.no_grad():
        for batch in DataLoader(frames, batch_size=batch_size, collate_fn=collate):
            predictions = module(batch["rgb"].to(module.device))
            for name, score in scores.items():
                score.update(predictions[name], batch)
            for i in range(min(examples - len(rows), len(batch["key"]))):
                row = [to_uint8("rgb", batch["rgb"][i])]
                for name, task in module.tasks.items():
                    row += task.draw(batch, i, predictions[name][i])
                rows.append(row)
    metrics: dict = {}
    for score in scores.values():
        metrics |= score.compute()
    return metrics, rows


def held_out_scores(module: TransferModule, datasets: list[str], taxonomy: Taxonomy, modalities: list[str], size: int,
                    settings: dict) -> dict[str, dict]:
    """transfer.held_out: the heads scored on each listed dataset's eval split (spaces never pretrained on
    nor trained on), by space name; the headline metrics only. A taxonomy that differs is mapped by name
    under transfer.map_by_name, else refused."""
    scores = {}
    for index, folder in enumerate(datasets):
        root = Path(folder)
        where = f"transfer.held_out[{index}]: {root}"
        if not (root / "manifest.json").is_file():
            raise TSTError(f"{where} holds no collected dataset (no manifest.json)")
        lookup = class_mapping(split_taxonomy(root, "eval"), taxonomy, bool(settings["map_by_name"]), where)
        frames = FrameDataset(root, "eval", ["rgb", *modalities], transform=Relabel(full_frame(size), lookup))
        if len(frames) == 0:
            raise TSTError(f"{where}: its eval split is empty")
        metrics, _ = evaluate(module, frames, int(settings["eval_batch_size"]), examples=0)
        scores[str(read_manifest(root)["outputs"]["space"])] = {k: v for k, v in metrics.items()
                                                               if not isinstance(v, dict)}
    return scores


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """MLflow metrics: the headline numbers plus per-class values as iou/<class>, ap/<class>."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "held_out":  # held_out/<space>/<metric>
            flat |= {f"held_out/{space}/{name}": float(v) for space, values in value.items() for name, v in values.items()}
        elif isinstance(value, dict):
            prefix = {"seg_per_class_iou": "iou", "det_per_class_ap": "ap"}.get(key, key)
            flat |= {f"{prefix}/{name}": float(v) for name, v in value.items()}
        elif isinstance(value, (int, float)):
            flat[key] = float(value)
    return flat


def effective_layer_decay(info: BackboneInfo, layer_decay: float) -> float:
    """transfer.layer_decay for a pretrained backbone; 1.0 (every block at the backbone LR) for a random
    init. Layer-wise decay keeps pretrained lower blocks close to what pretraining learned; scratch has
    nothing there to keep, and slowing its lower blocks only holds the baseline back (dev space
    procedural-11, 3 seeds, seg mIoU x100: scratch 10.92 at 1.0, 10.72 at 0.75)."""
    return 1.0 if info.objective == "none" else layer_decay


def effective_wise_alpha(info: BackboneInfo, mode: str, alpha: float) -> float:
    """transfer.wise_alpha for a fine-tuned pretrained backbone; 1.0 (the fine-tuned weights as they are)
    for a random init, which has no pretrained weights to interpolate toward, and for a frozen one."""
    return 1.0 if info.objective == "none" or mode != "full" else alpha


def run(cfg: DictConfig) -> Path:
    t = cfg.transfer
    names = task_names(t.task)
    if t.mode not in ("full", "probe"):
        raise TSTError(f"transfer.mode: expected full or probe, got {t.mode!r}")
    settings = OmegaConf.to_container(t, resolve=True)
    L.seed_everything(int(t.seed), workers=True, verbose=False)  # before any weight exists
    backbone, info, size = make_backbone(str(t.backbone), OmegaConf.to_container(cfg.model, resolve=True), settings)
    if t.get("backbone_name"):  # a row of its own in the results table (a pretraining variant of tst run)
        info = dataclasses.replace(info, name=str(t.backbone_name))
    settings["layer_decay"] = effective_layer_decay(info, float(t.layer_decay))
    apply_drop_path(backbone, float(t.drop_path))
    wise_alpha = effective_wise_alpha(info, str(t.mode), float(t.get("wise_alpha", 1.0)))
    pretrained = weights_snapshot(backbone) if wise_alpha < 1 else None
    batch_size = int(cfg.data.batch_size)
    joint = None
    if float(t.joint_pretraining) > 0:
        if t.mode != "full":
            raise TSTError("transfer.joint_pretraining: needs transfer.mode=full (a frozen backbone learns nothing from it)")
        from tst.transfer.joint import joint_pretraining

        with torch.random.fork_rng():  # building the pretraining model draws no numbers the heads then miss
            joint = joint_pretraining(info.path, backbone, batch_size, int(t.seed))
        if not t.get("backbone_name"):  # its own row in the results table, beside the plain fine-tuning
            info = dataclasses.replace(info, name=f"{info.name}+joint")
    modalities = [m for name in names for m in TASKS[name].modalities]
    train, eval_frames, taxonomy, root, source = transfer_and_eval(cfg, modalities, size)
    space = str(read_manifest(root)["outputs"]["space"])  # the space the eval frames were rendered in
    run_dir = new_run_dir(cfg, space, "transfer", f"{'+'.join(names)}-{info.name}-f{t.fraction}-s{t.seed}",
                          space_key=f"{root}/manifest.json: outputs.space")
    vocabulary = caption_vocabulary(train, int(t.caption.min_count)) if "caption" in names else None
    tasks = build_tasks(names, taxonomy, settings, vocabulary)
    module = TransferModule(backbone, tasks, settings, joint)
    loader = DataLoader(SeededSamples(train, int(t.seed)), batch_size=batch_size,
                        sampler=ResumableSampler(len(train), int(t.seed)), num_workers=int(cfg.data.num_workers),
                        collate_fn=collate, persistent_workers=int(cfg.data.num_workers) > 0)
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, max_steps=int(t.steps), logger=False,
                        deterministic=deterministic_kernels(cfg.trainer.get("deterministic", True)),
                        enable_checkpointing=False, enable_model_summary=False, precision=cfg.trainer.precision,
                        gradient_clip_val=1.0, callbacks=[StepProgressBar("transfer")])
    trainer.fit(module, loader)
    module.joint = None  # the decoder served the joint loss only: model.pt holds the backbone and the heads
    if pretrained is not None:
        interpolate_weights(module.backbone, pretrained, wise_alpha)
    scores, rows = evaluate(module, eval_frames, int(t.eval_batch_size))
    if t.held_out:
        scores["held_out"] = held_out_scores(module, [str(d) for d in t.held_out], taxonomy, modalities, size, settings)
    pretraining = None if info.path is None else read_pretrain_config(info.path)["pretrain"]
    pretrain_steps = None if pretraining is None else int(pretraining["steps"])
    metrics = {"tasks": names, "backbone": info.name, "backbone_source": info.source, "objective": info.objective,
               "pretrain_steps": pretrain_steps, "pretrain_data": pretraining_data(pretraining),
               "fraction": float(t.fraction), "seed": int(t.seed), "mode": t.mode,
               "layer_decay": settings["layer_decay"], "drop_path": float(t.drop_path),
               "wise_alpha": wise_alpha,
               "joint_pretraining": float(t.joint_pretraining),
               "train_frames": len(train), "eval_frames": len(eval_frames), "image_size": size} | scores
    columns = ["eval rgb"] + [c for task in tasks for c in task.columns()]
    inputs = {"dataset": root} | ({"transfer_data": source} if source != root else {}) \
        | ({"backbone": info.path} if info.path else {})

    def write(folder: Path) -> dict:
        grid_image(rows, columns, [f"#{i}" for i in range(len(rows))]).save(folder / "predictions.png")
        atomic_write_json(folder / "metrics.json", metrics)
        atomic_write_json(folder / "tasks.json", {"taxonomy": taxonomy.to_dict(), "image_size": size,
                                                  "tasks": {task.name: task.state() for task in tasks}})
        torch.save(module.state_dict(), folder / "model.pt")
        return {"metrics": "metrics.json", "model": "model.pt", "tasks": "tasks.json", "predictions": "predictions.png"}

    tags = {"task": "+".join(names), "backbone": info.name, "objective": info.objective,
            "fraction": str(float(t.fraction)), "seed": str(int(t.seed)), "mode": str(t.mode)}
    if pretrain_steps is not None:  # the report's pretraining-length curve
        tags["pretrain_steps"] = str(pretrain_steps)
    publish(cfg, "transfer", space, run_dir, write, inputs, scalar_metrics(scores), images=("predictions.png",),
            tags=tags, summary={k: v for k, v in metrics.items() if not isinstance(v, dict)})
    headline = ", ".join(f"{task.headline} {scores[task.headline]:.3f}" for task in tasks)
    console.print(f"[green]{'+'.join(names)}[/green] backbone {info.name}: {headline} on "
                  f"{len(eval_frames)} eval frames  ({run_dir})")
    return run_dir
