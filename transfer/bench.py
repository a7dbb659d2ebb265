"""`tst bench transfer`: fine-tuning steps/s and eval frames/s per task, on the collected dataset."""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch.utils.data import DataLoader

from tst.benchmarks import save_report

from tst.collect.dataset import FrameDataset, collate, collected_dataset
from tst.envs.registry import space_name
from tst.transfer.backbones import make_backbone
from tst.transfer.data import full_frame, split_taxonomy
from tst.transfer.module import TransferModule
from tst.transfer.run import build_tasks, caption_vocabulary, task_names
from tst.transfer.tasks import TASKS

console = Console(stderr=True)


def _batches(root, split: str, modalities: list[str], size: int, batch_size: int, count: int) -> list[dict]:
    frames = FrameDataset(root, split, ["rgb", *modalities], transform=full_frame(size))
    loader = DataLoader(frames, batch_size=batch_size, shuffle=False, collate_fn=collate, drop_last=False)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def _measure(cfg: DictConfig, task: str) -> dict:
    b = cfg.transfer_bench
    root = collected_dataset(cfg)
    taxonomy = split_taxonomy(root, "eval")
    settings = OmegaConf.to_container(cfg.transfer, resolve=True) | {"steps": int(b.steps), "warmup_steps": 1}
    backbone, info, size = make_backbone(str(b.backbone), OmegaConf.to_container(cfg.model, resolve=True), settings)
    vocabulary = None
    if task == "caption":
        frames = FrameDataset(root, "transfer", ["caption"])
        vocabulary = caption_vocabulary(torch.utils.data.Subset(frames, range(len(frames))), 1)
    module = TransferModule(backbone, build_tasks([task], taxonomy, settings, vocabulary), settings)
    optimizer = module.configure_optimizers()["optimizer"]
    train = _batches(root, "transfer", list(TASKS[task].modalities), size, int(b.batch_size), 2)
    module.train()
    for step in range(int(b.steps) + 2):  # two warm-up steps
        if step == 2:
            start = time.perf_counter()
        batch = train[step % len(train)]
        loss = module.tasks[task].loss(module.heads[task], module.features(batch["rgb"]), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    steps_per_s = int(b.steps) / (time.perf_counter() - start)
    evaluation = _batches(root, "eval", list(TASKS[task].modalities), size, int(b.eval_batch_size), int(b.eval_batches))
    module.eval()
    with torch.inference_mode():
        module(evaluation[0]["rgb"])  # warm-up
        start = time.perf_counter()
        frames = 0
        for batch in evaluation:
            module(batch["rgb"])
            frames += len(batch["key"])
    return {"backbone": info.name, "image_size": size, "batch_size": int(b.batch_size),
            "train_steps_per_s": round(steps_per_s, 3), "train_samples_per_s": round(steps_per_s * int(b.batch_size), 2),
            "eval_frames_per_s": round(frames / (time.perf_counter() - start), 2)}


def bench_transfer(cfg: DictConfig) -> dict:
    tasks = task_names(cfg.transfer_bench.tasks)
    report = {"threads": torch.get_num_threads(), "model": OmegaConf.to_container(cfg.model, resolve=True), "tasks": {}}
    for task in tasks:
        with console.status(f"benchmarking {task}"):
            report["tasks"][task] = _measure(cfg, task)
        console.print(f"{task}: {report['tasks'][task]}")
    report["targets"] = {}  # issue 15 sets no speed goal for fine-tuning; the key is here so every bench has one
    metrics = {f"{t}_{k}": float(v) for t, r in report["tasks"].items() for k, v in r.items()
               if isinstance(v, (int, float))}
    space = space_name(cfg.space)
    save_report(cfg, "transfer", space, report, metrics)
    return report
