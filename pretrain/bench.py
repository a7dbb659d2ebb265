"""`tst bench pretrain`: training-step throughput and peak memory per model size, and how long the
training loop waits for data at the quickstart config."""

from __future__ import annotations

import multiprocessing
import queue
import resource
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig
from rich.console import Console

from tst.benchmarks import save_report, target
from tst.config import composed
from tst.errors import TSTError
from tst.modalities import by_tier

from tst.envs.registry import space_name
from tst.pretrain.data import PretrainData
from tst.pretrain.module import PretrainModule
from tst.pretrain.tokenizer import Tokenizer, TokenizerConfig

console = Console(stderr=True)
SENSORS = by_tier("sensor")  # what pretraining reads by default
LOADER_WAIT_GOAL = 0.05  # the data loader keeps the training loop waiting at most 5 % of the time


def _synthetic_batch(batch_size: int, size: int) -> dict:
    return {"rgb": torch.rand(batch_size, 3, size, size), "depth": torch.rand(batch_size, 1, size, size) * 5,
            "normals": torch.nn.functional.normalize(torch.randn(batch_size, 3, size, size), dim=1),
            "edges": (torch.rand(batch_size, 1, size, size) > 0.9).float(), "key": [str(i) for i in range(batch_size)]}


def _tokenizers(config: dict) -> dict[str, Tokenizer] | None:
    """fourm: untrained tokenizers of the configured size for every sensor modality (a step's cost does not
    depend on their weights); other objectives: None."""
    if config["pretrain"]["objective"] != "fourm":
        return None
    t = config["pretrain"]["tokenizer"]
    settings = TokenizerConfig(tuple(int(v) for v in t["levels"]), int(config["model"]["patch"]), int(t["hidden"]))
    return {name: Tokenizer(name, settings).eval() for name in SENSORS}


def _step_throughput(job: tuple[dict, int, int], results) -> None:
    """In a fresh process (so peak RSS belongs to this model): time `steps` optimizer steps. fourm's steps
    include tokenizing the batch, as a run without precomputed codes does."""
    config, batch_size, steps = job
    try:
        module = PretrainModule(config, SENSORS, tokenizers=_tokenizers(config))
        optimizer = module.configure_optimizers()["optimizer"]
        synthetic = _synthetic_batch(batch_size, config["model"]["image_size"])
    except Exception as error:  # the parent reports it instead of waiting for a result
        results.put({"error": f"{type(error).__name__}: {error}"})
        raise
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for step in range(steps + 2):
        if step == 2:
            start = time.perf_counter()
        batch = dict(synthetic)  # a fresh dict: the fourm objective keeps each batch's codes in it
        loss = sum(module.losses(batch, step).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tokens = batch_size * (module.input_budget + module.target_budget)
    results.put({"samples_per_s": round(batch_size * steps / seconds, 2),
                 "tokens_per_s": round(tokens * steps / seconds, 1),
                 "peak_rss_mb": round(peak / 1024, 1), "rss_growth_mb": round((peak - before) / 1024, 1),
                 "parameters_m": round(sum(p.numel() for p in module.model.parameters()) / 1e6, 2)})


def _in_fresh_process(job) -> dict:
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    process = spawn.Process(target=_step_throughput, args=(job, results))
    process.start()
    while True:  # wait for the result, but not for a process that died without one
        try:
            result = results.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():
                raise TSTError(f"bench pretrain: the measuring process exited with code {process.exitcode} "
                               "before reporting") from None
    process.join()
    if "error" in result:
        raise TSTError(f"bench pretrain: {result['error']}")
    return result


class LoaderWait(L.Callback):
    """Seconds spent waiting for batches vs seconds in training steps (after the first 3 steps)."""

    def __init__(self):
        self.wait = self.step = 0.0
        self._end = self._start = None
        self.count = 0

    def on_train_batch_start(self, trainer, module, batch, batch_index):
        now = time.perf_counter()
        if self._end is not None and self.count >= 3:
            self.wait += now - self._end
        self._start = now

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
        now = time.perf_counter()
        if self.count >= 3:
            self.step += now - self._start
        self._end = now
        self.count += 1


def bench_pretrain(cfg: DictConfig) -> dict:
    b = cfg.pretrain_bench
    base = composed("pretrain", "pretrain")
    report: dict = {"device": "cpu", "objective": b.objective, "models": {}}
    for name in b.models:
        model = composed("pretrain", "model", [f"model={name}"])
        tokens = (model["image_size"] // model["patch"]) ** 2
        pretrain = base | {"objective": b.objective, "input_budget": tokens,
                                                   "target_budget": tokens}
        config = {"model": model, "pretrain": pretrain}
        result = _in_fresh_process((config, int(b.batch_size[name]), int(b.steps)))
        report["models"][name] = {"batch_size": int(b.batch_size[name]), **result}
        console.print(f"  {name}: {result['samples_per_s']} samples/s, {result['tokens_per_s']} tokens/s, "
                      f"peak RSS {result['peak_rss_mb']} MB")
    report["data_loader"] = _loader_wait(cfg)
    report["targets"] = {"data_loader_wait": target(report["data_loader"].get("wait_fraction"), LOADER_WAIT_GOAL,
                                                    "fraction of training time spent waiting for batches "
                                                    "(null: no collected dataset to read)", at_most=True)}
    metrics = {f"{m}_samples_per_s": v["samples_per_s"] for m, v in report["models"].items()}
    metrics |= {f"{m}_peak_rss_mb": v["peak_rss_mb"] for m, v in report["models"].items()}
    if report["data_loader"].get("wait_fraction") is not None:
        metrics["loader_wait_fraction"] = report["data_loader"]["wait_fraction"]
    save_report(cfg, "pretrain", space_name(cfg.space), report, metrics)
    return report


def _loader_wait(cfg: DictConfig) -> dict:
    """Run the tiny quickstart model on the collected dataset and time the waits for data."""
    from tst.pretrain.run import build_module

    root = Path(cfg.workspace_dir) / space_name(cfg.space) / "data"
    if not (root / "manifest.json").is_file():
        return {"skipped": f"no dataset at {root}; run tst collect first"}
    b = cfg.pretrain_bench
    config = {"model": composed("pretrain", "model", ["model=tiny"]), "pretrain": composed("pretrain", "pretrain"),
              "workspace_dir": cfg.workspace_dir}
    try:
        module = build_module(config, root)
    except TSTError as error:
        return {"skipped": str(error)}
    data = PretrainData(root, module.modalities, config["model"]["image_size"], int(b.loader_batch_size),
                        int(b.loader_workers), (0.6, 1.0), 0, False)
    timer = LoaderWait()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=int(b.loader_steps), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], use_distributed_sampler=False)
    trainer.fit(module, datamodule=data)
    fraction = timer.wait / max(timer.wait + timer.step, 1e-9)
    samples = int(b.loader_batch_size) * (timer.count - 3)
    console.print(f"  data loader wait: {fraction:.1%} of the loop at the quickstart config")
    return {"steps": timer.count, "wait_fraction": round(fraction, 4),
            "step_samples_per_s": round(samples / max(timer.step + timer.wait, 1e-9), 2),
            "target_below_10_percent": fraction < 0.10}
