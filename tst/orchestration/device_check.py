"""`tst bench gpu`: the device check, one command that spends a lent GPU's few minutes on the figures
that matter (scripts/device-check.sh runs it on a fresh machine):

- deploy latency, batch 1, every head (segmentation, detection, a caption of fixed length): p50/p99 per
  precision (fp32, bf16) and mode (eager, torch.compile, CUDA graphs through compile's reduce-overhead);
- pretraining throughput in bf16 at the largest batch that fits (of gpu_bench.batch_sizes): samples/s,
  tokens/s, FLOPs per step counted by torch's FlopCounterMode, and model FLOPs utilization against the
  chip's dense bf16 peak.

Without a CUDA GPU it says so in one line, skips the GPU rows and runs the same code paths on the CPU at
gpu_bench.cpu_model / cpu_size, so CI tests it. The JSON's `targets` gives each goal's verdict; rows reach `out` as
they are measured ("complete": false until the last), so a check cut short keeps what it measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console

from tst.benchmarks import save_report, target
from tst.config import composed
from tst.workspace import atomic_write_json

console = Console(stderr=True)

# Dense bf16 tensor throughput (FLOP/s) by the chip's marketing name, from the vendors' data sheets (SXM
# parts); MFU is reported only for these.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
LATENCY_GOAL_MS, MFU_GOAL = 5.0, 0.40  # ViT-B at 224 px with every head, p99; pretraining bf16 MFU


def peak_flops(device_name: str) -> float | None:
    return next((flops for chip, flops in PEAK_BF16_FLOPS.items() if chip in device_name), None)


def _model_config(name: str, size: int) -> dict:
    return composed("pretrain", "model", [f"model={name}", f"model.image_size={size}"])


def deploy_latency(model: str, size: int, device: str, precisions: list[str], modes: list[str],
                   repeats: int, warmup: int, caption_words: int,
                   on_row: Callable[[dict], None] = lambda rows: None) -> dict:
    """{precision_mode: latency percentiles} of the batch-1 multi-task predictor (tst bench deploy's model);
    `on_row(rows so far)` runs after each row, so a caller can keep what a killed run measured."""
    from tst.deploy.bench import _latency, _torch_runner, multitask_model

    compile_modes = {"eager": None, "compiled": "", "cuda_graphs": "reduce-overhead"}
    rows: dict = {}
    for precision in precisions:
        for mode in modes:
            module = multitask_model(model, size, caption_words)
            infer = _torch_runner(module, size, device, precision, compile_modes[mode])
            rows[f"{precision}_{mode}"] = _latency(infer, repeats, warmup + (3 if mode != "eager" else 0),
                                                   device == "cuda")
            console.print(f"deploy {model}@{size} {precision} {mode}: {rows[f'{precision}_{mode}']}")
            on_row(rows)
    return rows


def _training_step(module, optimizer, batch: dict, device: str) -> None:
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = sum(module.losses(batch, 0).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def pretrain_throughput(model: str, size: int, device: str, batch_sizes: list[int], steps: int) -> dict:
    """Training-step throughput of the multimae objective (every sensor modality, full token budgets) at
    the largest of `batch_sizes` that fits; FLOPs per step from one counted step."""
    from torch.utils.flop_counter import FlopCounterMode

    from tst.pretrain.bench import SENSORS, _synthetic_batch
    from tst.pretrain.module import PretrainModule

    config = _model_config(model, size)
    tokens = (size // config["patch"]) ** 2
    pretrain = composed("pretrain", "pretrain") | {"objective": "multimae", "input_budget": tokens,
                                                   "target_budget": tokens}
    result: dict = {"model": model, "image_size": size, "precision": "bf16" if device == "cuda" else "fp32"}
    for batch_size in sorted(batch_sizes, reverse=True):
        module = PretrainModule({"model": config, "pretrain": pretrain}, SENSORS).to(device)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=device == "cuda")
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in _synthetic_batch(batch_size, size).items()}
        tokens_per_sample = module.input_budget + module.target_budget
        try:
            _training_step(module, optimizer, batch, device)  # warm-up, and the out-of-memory probe
            with FlopCounterMode(display=False) as counter:
                _training_step(module, optimizer, batch, device)
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                _training_step(module, optimizer, batch, device)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / steps
        except torch.OutOfMemoryError:
            module = optimizer = batch = None  # free this size's memory before trying a smaller one
            torch.cuda.empty_cache()
            console.print(f"pretrain {model}: batch {batch_size} does not fit")
            continue
        flops = counter.get_total_flops()
        result |= {"batch_size": batch_size, "samples_per_s": round(batch_size / seconds, 1),
                   "tokens_per_s": round(batch_size * tokens_per_sample / seconds),
                   "flops_per_step": flops, "achieved_tflops": round(flops / seconds / 1e12, 2)}
        console.print(f"pretrain {model}: {result}")
        return result
    return result | {"skipped": f"no batch size of {sorted(batch_sizes)} fits"}


def bench_gpu(cfg: DictConfig) -> dict:
    b = cfg.gpu_bench
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name() if cuda else "cpu"
    report: dict = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
                    "complete": False}

    def keep_partial() -> None:
        """A lent GPU's minutes are few: what is measured reaches cfg.out before the next row starts."""
        if cfg.get("out"):
            atomic_write_json(Path(str(cfg.out)), report)

    if cuda:
        model, size, modes, precisions = str(b.model), int(b.size), list(b.modes), list(b.precisions)
    else:
        console.print("tst bench gpu: no CUDA GPU visible; the GPU rows are skipped and the same code runs on "
                      f"the CPU at {b.cpu_model}@{b.cpu_size}, fp32 eager")
        model, size, modes, precisions = str(b.cpu_model), int(b.cpu_size), ["eager"], ["fp32"]
    report["pretrain"] = pretrain_throughput(model, size, device, list(b.batch_sizes) if cuda else [2],
                                             int(b.steps))
    peak = peak_flops(name) if cuda else None
    achieved = report["pretrain"].get("achieved_tflops")
    report["pretrain"]["mfu"] = round(achieved * 1e12 / peak, 4) if peak and achieved else None
    report["deploy"] = {"model": model, "image_size": size, "caption_words": int(b.caption_words), "rows": {}}
    keep_partial()

    def keep_rows(rows: dict) -> None:
        report["deploy"]["rows"] = rows
        keep_partial()

    deploy_latency(model, size, device, precisions, modes, int(b.repeats), int(b.warmup), int(b.caption_words),
                   keep_rows)
    best_p99 = min(row["p99_ms"] for row in report["deploy"]["rows"].values())
    mfu = report["pretrain"]["mfu"]
    report["complete"] = True
    report["targets"] = {
        "deploy_p99_all_heads": target(best_p99, LATENCY_GOAL_MS, "ms", at_most=True) | ({} if cuda else {"met": None}),
        "pretrain_bf16_mfu": target(mfu, MFU_GOAL, "fraction of the chip's bf16 peak", at_most=False),
    }
    metrics = {"deploy_best_p99_ms": best_p99} | ({"pretrain_mfu": mfu} if mfu is not None else {})
    save_report(cfg, "gpu", "device", report, metrics)
    return report
