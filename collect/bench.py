"""`tst bench collect`: end-to-end collection throughput against rendering alone, and reader speed."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch.utils.data import DataLoader

from tst.benchmarks import parallel_seconds, save_report, target
from tst.envs.registry import make_space
from tst.modalities import RENDERED
from tst.workspace import write_manifest

from tst.collect.dataset import ShardStream, collate
from tst.collect.plan import Plan, make_plan
from tst.collect.run import dataset_outputs, make_units, worker_settings
from tst.collect.worker import Settings, Unit, close_spaces, render_unit

console = Console(stderr=True)
END_TO_END_GOAL = 0.85  # collection (render, derive, encode, write) at 0.85x the frames/s of rendering alone


def _prepare(context: tuple[Settings, list[Unit]]) -> Settings:
    """In a benchmark process: build and warm the space by rendering the first unit once (elsewhere)."""
    settings, warmup = context
    warm = Settings(**{**settings.__dict__, "out": settings.out + "-warmup"})
    render_unit(warmup[0], warm)
    return settings


def _write_units(settings: Settings, units: list[Unit]) -> None:
    for unit in units:
        render_unit(unit, settings)


def bench_collect(cfg: DictConfig) -> dict:
    b = cfg.collect_bench
    collect = OmegaConf.merge(cfg.collect, {"size": b.size, "frames": {"pretrain": b.frames, "eval": 0, "transfer": 0},
                                            "splits": ["pretrain"], "transfer_spaces": []})
    space_cfg = OmegaConf.to_container(cfg.space, resolve=True)
    space = make_space(cfg.space)
    console.print(f"[bold]bench collect[/bold]: {space.name}, {b.frames} frames at {b.size} px")
    plan: Plan = make_plan(collect, space_cfg, space, [], None)
    frames = plan.frames["pretrain"]
    report: dict = {"space": space.name, "frames": len(frames), "size": b.size,
                    "modalities": list(collect.modalities), "workers": {}}
    with tempfile.TemporaryDirectory(prefix="tst-bench-collect-") as tmp:
        # Render only, one thread, the same views.
        space.renderer.nthreads = 1
        needed = tuple(m for m in RENDERED)
        space.render(frames[0].camera, needed)
        start = time.perf_counter()
        for frame in frames:
            space.render(frame.camera, needed)
        render_fps = len(frames) / (time.perf_counter() - start)
        report["render_only_fps_1_thread"] = round(render_fps, 2)
        for workers in b.workers:
            out = Path(tmp) / f"workers-{workers}"
            # As `tst collect` runs that many workers, but casting on one thread each like the baseline.
            settings = replace(worker_settings(collect, plan, out, workers, space.taxonomy), render_threads=1)
            units = make_units(plan, ["pretrain"], collect.shard_size)
            shares = [units[k::workers] for k in range(workers)]
            seconds = parallel_seconds(_prepare, _write_units, (settings, units[:1]), shares)
            report["workers"][str(workers)] = {"end_to_end_fps": round(len(frames) / seconds, 2)}
            console.print(f"  {workers} worker(s): {len(frames) / seconds:.1f} frames/s end to end")
        one = report["workers"][str(b.workers[0])]["end_to_end_fps"]
        report["end_to_end_over_render_only"] = round(one / render_fps, 3)
        if len(b.workers) > 1:
            report["worker_speedup"] = round(report["workers"][str(b.workers[-1])]["end_to_end_fps"] / one, 3)
        # The reader, on the dataset the first measurement wrote.
        out = Path(tmp) / f"workers-{b.workers[0]}"
        settings = worker_settings(collect, plan, out, b.workers[0], space.taxonomy)
        write_manifest(out, "collect", cfg, {}, dataset_outputs(out, plan, make_units(plan, ["pretrain"],
                                                                collect.shard_size), settings, space))
        report["reader"] = {}
        for loader_workers in b.reader_workers:
            stream = ShardStream(out, "pretrain", ["rgb", "depth", "normals", "edges"])
            loader = DataLoader(stream, batch_size=b.reader_batch, num_workers=loader_workers, collate_fn=collate)
            start, count = time.perf_counter(), 0
            for batch in loader:
                count += len(batch["key"])
            report["reader"][str(loader_workers)] = round(count / (time.perf_counter() - start), 2)
            console.print(f"  reader, {loader_workers} DataLoader workers: {report['reader'][str(loader_workers)]} samples/s")
    close_spaces()
    report["targets"] = {"end_to_end_over_render_only": target(
        report["end_to_end_over_render_only"], END_TO_END_GOAL,
        f"x the frames/s of rendering alone on one thread, collecting with {b.workers[0]} worker(s)", at_most=False)}
    metrics = {f"end_to_end_fps_{k}": v["end_to_end_fps"] for k, v in report["workers"].items()}
    metrics |= {f"reader_samples_per_s_{k}": v for k, v in report["reader"].items()}
    metrics["render_only_fps"] = report["render_only_fps_1_thread"]
    save_report(cfg, "collect", space.name, report, metrics)
    return report
