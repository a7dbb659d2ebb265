"""`tst deploy`: the transferred specialist in the agent's perception loop; `tst deploy export`: its
torch.export and ONNX graphs, checked against PyTorch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tst.errors import TSTError
from tst.sheets import grid_image
from tst.stage import new_run_dir, publish
from tst.workspace import artifact_dir, atomic_write_json, read_json, read_manifest

from tst.collect.dataset import FrameDataset
from tst.collect.plan import read_plan
from tst.deploy.export import export
from tst.deploy.loop import latency_summary, run_loop, search_goal, truth_batch
from tst.deploy.observations import PathSettings, RenderProcess
from tst.deploy.online import OnlineSettings, OnlineTST, online_chart
from tst.deploy.predictor import Predictor
from tst.collect.dataset import collected_dataset
from tst.transfer.data import full_frame
from tst.envs.registry import space_name

console = Console(stderr=True)


def transfer_run(cfg: DictConfig) -> Path:
    """deploy.model, or the newest transfer run of the space holding every head in deploy.tasks."""
    if cfg.deploy.get("model"):
        model = Path(str(cfg.deploy.model))
        if not model.is_dir():
            raise TSTError(f"deploy.model: {model} {'is a file' if model.exists() else 'does not exist'}; "
                           "expected a tst transfer run folder (<workspace_dir>/<space>/transfer/<run>)")
        return model
    folder = artifact_dir(cfg.workspace_dir, space_name(cfg.space), "transfer")
    wanted = set(cfg.deploy.tasks)
    candidates = [run for run in (folder.iterdir() if folder.is_dir() else []) if (run / "tasks.json").is_file()
                  and wanted <= set(read_json(run / "tasks.json", "the heads of a tst transfer run", ("tasks",))["tasks"])]
    if not candidates:
        raise TSTError(f"{folder}: no transfer run with the heads {', '.join(sorted(wanted))}; run tst transfer "
                       "transfer.task=[seg,det,caption] or set deploy.model")
    return max(candidates, key=lambda run: (run / "tasks.json").stat().st_mtime)


def export_folder(cfg: DictConfig, model_dir: Path) -> Path:
    if cfg.deploy.get("export_dir"):
        return Path(str(cfg.deploy.export_dir))
    return artifact_dir(cfg.workspace_dir, space_name(cfg.space), "deploy/exports", model_dir.name,
                        run_key="deploy.model")


def make_predictor(cfg: DictConfig) -> Predictor:
    d = cfg.deploy
    model_dir = transfer_run(cfg)
    return Predictor.from_run(model_dir, tuple(d.tasks), device=str(d.device), precision=str(d.precision),
                              compile=bool(d.compile), runtime=str(d.runtime), export_dir=export_folder(cfg, model_dir))


def _pretrain_positions(cfg: DictConfig) -> np.ndarray | None:
    """Pretraining camera positions (N, 3) from the collected dataset's plan, if there is one."""
    try:
        path = collected_dataset(cfg) / "plan.json"
    except TSTError:
        path = None
    if path is None or not path.exists():
        console.print("[yellow]no collected dataset: the agent's path does not avoid pretraining cameras[/yellow]")
        return None
    _, plan = read_plan(path)  # a broken plan.json is a one-line error, not silently ignored
    positions = [np.asarray(f.camera.world_from_camera, float)[:3, 3] for f in plan.frames.get("pretrain", [])]
    return np.array(positions) if positions else None


def path_settings(cfg: DictConfig, size: int, steps: int, sensors: tuple[str, ...] = ()) -> PathSettings:
    """sensors: the sensor modalities online TST stores from every step."""
    c = cfg.collect
    return PathSettings(OmegaConf.to_container(cfg.space, resolve=True), size,
                        OmegaConf.to_container(c.walks, resolve=True), float(c.hfov_deg), steps, int(cfg.deploy.seed),
                        _pretrain_positions(cfg), float(c.eval_min_distance), int(c.min_box_pixels), sensors,
                        (float(c.edges.low), float(c.edges.high)))


def online_tst(cfg: DictConfig, predictor: Predictor, run_dir: Path) -> OnlineTST | None:
    """deploy.online's OnlineTST for this walk (None when off); its folder is <workspace>/<space>/online/<run>."""
    d = cfg.deploy
    if not d.online.enabled:
        return None
    if str(d.runtime) != "torch":
        raise TSTError(f"deploy.online: the refitted specialists run in PyTorch; expected deploy.runtime=torch, "
                       f"got {d.runtime}")
    space = space_name(cfg.space)

    def load(model: Path) -> Predictor:
        return Predictor.from_run(model, tuple(d.tasks), device=str(d.device), precision=str(d.precision),
                                  compile=bool(d.compile), runtime="torch")

    folder = artifact_dir(cfg.workspace_dir, space, "online", run_dir.name)
    if folder.exists():  # left by a walk of this name killed before its run landed (run_dir does not exist)
        shutil.rmtree(folder)
    return OnlineTST(OnlineSettings.from_config(d.online), predictor, folder, load, space,
                     OmegaConf.to_container(cfg, resolve=True))


def strip_steps(steps: int, count: int) -> set[int]:
    """The `count` steps strip.png shows, evenly along a walk of `steps` (the loop keeps only their frames)."""
    return set(np.linspace(0, steps - 1, min(count, steps)).astype(int).tolist())


def _strip(result, tasks: dict, count: int, min_score: float):
    """strip.png: up to `count` kept steps along the path (strip_steps, and the last step of a search cut
    short): the observation, then each task's truth and prediction as the transfer stage draws them
    (detections scoring >= min_score)."""
    kept = [record for record in result.steps if record.observation is not None]
    picks = [kept[i] for i in np.unique(np.linspace(0, len(kept) - 1, min(count, len(kept))).astype(int))]
    rows = []
    for record in picks:
        truth = truth_batch([record.observation])
        row = [record.observation.rgb]
        for task in tasks.values():
            row += task.draw(truth, 0, task.scored([record.prediction])[0], min_score)
        rows.append(row)
    titles = ["observation"] + [title for task in tasks.values() for title in task.columns()]
    return grid_image(rows, titles, [f"step {record.step}" for record in picks])


def _set_threads(cfg: DictConfig) -> None:
    threads = int(cfg.deploy.threads) or max(1, (os.cpu_count() or 2) - (1 if cfg.deploy.overlap else 0))
    torch.set_num_threads(threads)


def deploy(cfg: DictConfig) -> Path:
    d = cfg.deploy
    if d.task not in ("explore", "find"):
        raise TSTError(f"deploy.task: expected explore or find, got {d.task!r}")
    if float(d.rate_hz) <= 0 or int(d.steps) < 1:
        raise TSTError(f"deploy.rate_hz and deploy.steps: expected positive values, got {d.rate_hz}, {d.steps}")
    predictor = make_predictor(cfg)
    goal = search_goal(predictor.taxonomy, str(d.target), float(d.score_threshold), float(d.success_distance),
                       int(cfg.collect.min_box_pixels)) if d.task == "find" else None
    run_dir = new_run_dir(cfg, space_name(cfg.space), "deploy", f"{d.task}-{predictor.model.run_dir.name}")
    _set_threads(cfg)
    console.print(f"deploying {predictor.model.run_dir.name} ({', '.join(predictor.tasks)}) on "
                  f"{predictor.device}, {d.runtime}, {d.precision}{', compiled' if d.compile else ''}")
    online = online_tst(cfg, predictor, run_dir)
    # Online TST compares the live and the frozen specialist on the same steps, captions included.
    background_captions = bool(d.background_captions) and online is None
    sensors = online.modalities if online else ()
    with RenderProcess(path_settings(cfg, predictor.image_size, int(d.steps), sensors)) as renderer:
        if renderer.taxonomy != predictor.taxonomy.to_dict():
            raise TSTError(f"{predictor.model.run_dir}: the model's taxonomy differs from space {space_name(cfg.space)}'s")
        with Progress(TextColumn("agent"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                      TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task("loop", total=int(d.steps))
            try:
                result = run_loop(predictor, renderer, int(d.steps), bool(d.overlap), goal,
                                  lambda step: progress.update(bar, completed=step + 1), int(d.caption_every), online,
                                  float(d.rate_hz) if d.pace else None,
                                  strip_steps(int(d.steps), int(d.strip_frames)).__contains__, background_captions)
            finally:
                summary = online.close() if online else None
    report = {"model": str(predictor.model.run_dir), "backbone": predictor.model.backbone.name,
              "device": str(predictor.device), "runtime": str(d.runtime), "precision": str(d.precision),
              "compile": bool(d.compile), "overlap": bool(d.overlap), "pace": bool(d.pace), "task": str(d.task),
              "caption_every": int(d.caption_every), "background_captions": background_captions} \
        | latency_summary(result, float(d.rate_hz)) | {"online": result.metrics} \
        | ({"search": result.search} if result.search else {}) | ({"online_tst": summary} if summary else {})

    def write(folder: Path) -> dict:
        atomic_write_json(folder / "report.json", report)
        _strip(result, predictor.module.tasks, int(d.strip_frames), float(d.score_threshold)).save(folder / "strip.png")
        outputs = {"report": "report.json", "strip": "strip.png"}
        if summary and summary["segments"]:
            (folder / "online.png").write_bytes(online_chart(summary))
            outputs["online"] = "online.png"
        return outputs

    metrics = {f"online_{k}": v for k, v in result.metrics.items()} | {
        "perception_p50_ms": report["perception_ms"]["p50"], "perception_p99_ms": report["perception_ms"]["p99"],
        "period_p50_ms": report["period_ms"]["p50"], "fps": report["fps"], "deadline_misses": report["deadline_misses"]}
    if result.search:
        metrics["search_success"] = float(result.search["success"])
    if summary:
        metrics["online_swaps"] = len(summary["swaps"])
    publish(cfg, "deploy", space_name(cfg.space), run_dir, write, {"model": predictor.model.run_dir}, metrics,
            images=("strip.png",) + (("online.png",) if summary and summary["segments"] else ()),
            tags={"backbone": predictor.model.backbone.name}, summary=report)
    console.print(f"[green]deploy[/green] {len(result.steps)} steps: perception p50 {report['perception_ms']['p50']:.1f} ms, "
                  f"period p50 {report['period_ms']['p50']:.1f} ms (render {report['render_ms']['p50']:.1f} ms), "
                  f"{report['fps']:.1f} FPS  ({run_dir})")
    if summary:
        console.print(f"online TST: {summary['observations']} observations stored, {len(summary['swaps'])} swaps"
                      + (f", refit {summary['unfinished_refit']} cut short by the end of the walk"
                         if summary["unfinished_refit"] else "") + f"  ({summary['folder']})")
    return run_dir


def export_command(cfg: DictConfig) -> Path:
    """Export the deploy model; the parity check runs on deploy.export_frames eval frames."""
    model_dir = transfer_run(cfg)
    from tst.transfer.checkpoint import load_transfer

    model = load_transfer(model_dir, tuple(cfg.deploy.tasks))
    out = export_folder(cfg, model_dir)
    if out.exists():
        raise TSTError(f"{out}: an export exists already; remove it or set deploy.export_dir")
    root = Path(read_manifest(model_dir)["inputs"]["dataset"]["path"])
    eval_frames = FrameDataset(root, "eval", ["rgb"], transform=full_frame(model.image_size))
    if len(eval_frames) == 0:
        raise TSTError(f"{root}: the eval split is empty; the export check needs eval frames")
    frames = [eval_frames[i]["rgb"] for i in range(min(int(cfg.deploy.export_frames), len(eval_frames)))]
    checks = export(model.module, model.image_size, frames, out, model_dir)
    differences, int8 = checks["max_abs_difference"], checks["int8"]
    console.print(f"[green]export[/green] {out}: ONNX Runtime vs PyTorch max abs difference "
                  f"{max(differences.values()):.2e} over {len(frames)} eval frames")
    if int8["refused"]:
        console.print(f"[yellow]int8 graph not written[/yellow]: {int8['refused']}")
    else:
        agreement = "" if int8["seg_agreement"] is None else f", {int8['seg_agreement']:.1%} of segmentation pixels agree"
        console.print(f"int8 graph (deploy.precision=int8): within {max(int8['max_relative_difference'].values()):.1%} "
                      f"of PyTorch's output range{agreement}")
    print(json.dumps({"export_dir": str(out), "frames": len(frames), **checks}))
    return out
