"""`tst bench render`: frames/s of the mesh renderer, against the bare ray cast and across processes."""

from __future__ import annotations

import time

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from tst.camera import Camera, intrinsics_from_fov
from tst.errors import TSTError
from tst.modalities import RENDERED
from tst.benchmarks import parallel_seconds, save_report, target

from tst.envs.mesh_space import MeshSpace
from tst.envs.registry import make_space
from tst.envs.preview_cameras import preview_cameras

console = Console(stderr=True)
WARMUP = 2
RENDER_OVER_CAST_GOAL = 1.3  # a frame with every modality costs at most 1.3x its bare ray cast
PROCESS_SPEEDUP_GOAL = 1.8  # two processes (one thread each) render at least 1.8x one


def _resized(cameras: list[Camera], size: int, hfov_deg: float) -> list[Camera]:
    K = intrinsics_from_fov(size, size, hfov_deg)
    return [Camera(K, size, size, c.world_from_camera) for c in cameras]


def _interleaved_fps(steps: dict, cameras: list[Camera], repeats: int = 3) -> dict[str, float]:
    """Frames/s of each step (name -> camera -> anything): the steps take turns, each running over every
    view in one block, so that load from other processes on this shared machine hits all steps alike;
    median over the views. Blocks, not one view at a time: a bare cast timed right after a whole render
    paid for waking the threads the shading had left (3.3 ms against 1.8 ms at 128 px), which made the
    render look cheaper relative to it than it is."""
    for step in steps.values():
        for camera in cameras[:WARMUP]:
            step(camera)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            for camera in cameras:
                start = time.perf_counter()
                step(camera)
                seconds[name].append(time.perf_counter() - start)
    return {name: 1.0 / float(np.median(values)) for name, values in seconds.items()}


def _prepare_worker(context: tuple[dict, float, int, list]) -> tuple:
    """In a benchmark process: build the space with one ray-casting thread and render one frame of every
    modality at the measured size from the pose `context[3]`, so that compiling and the first full-size
    frame's one-time costs stay off the clock. (Warmed up with an 8 px frame instead, each process paid them
    inside the measurement: two processes at 256 px read 1.43-1.52x one, against 1.92-1.97x warmed up so.)"""
    space_cfg, hfov_deg, size, pose = context
    config = OmegaConf.create(space_cfg)
    config.nthreads = 1
    space = make_space(config)
    space.render(Camera(intrinsics_from_fov(size, size, hfov_deg), size, size, np.array(pose)), RENDERED)
    return space, hfov_deg


def _render_share(state: tuple, share: tuple[list, int]) -> None:
    space, hfov_deg = state
    poses, size = share
    for camera in _resized([Camera(np.eye(3), 1, 1, np.array(p)) for p in poses], size, hfov_deg):
        space.render(camera, RENDERED)


def _parallel_fps(space_cfg: DictConfig, cameras: list[Camera], workers: int, size: int, hfov_deg: float) -> float:
    """Frames/s of `workers` processes rendering `cameras` between them, each with its own scene."""
    poses = [c.world_from_camera.tolist() for c in cameras]
    shares = [(poses[k::workers], size) for k in range(workers)]
    context = (OmegaConf.to_container(space_cfg, resolve=True), hfov_deg, size, poses[0])
    return len(cameras) / parallel_seconds(_prepare_worker, _render_share, context, shares)


def bench_render(cfg: DictConfig) -> dict:
    """Measure and print the JSON report; also written to the workspace (and `out`)."""
    space = make_space(cfg.space)
    if not isinstance(space, MeshSpace):
        raise TSTError(f"bench render: space '{space.name}' is not a mesh space")
    if space.num_triangles < cfg.render_bench.min_triangles:
        raise TSTError(f"bench render: {space.name} has {space.num_triangles} triangles, fewer than "
                       f"render_bench.min_triangles={cfg.render_bench.min_triangles}; lower space.max_edge")
    hfov = 90.0
    console.print(f"[bold]bench render[/bold]: {space.name}, {space.num_triangles} triangles")
    base = preview_cameras(space, max(cfg.render_bench.frames, cfg.render_bench.process_frames), 64, np.random.default_rng(0), hfov)
    report: dict = {"space": space.name, "triangles": space.num_triangles, "frames": cfg.render_bench.frames,
                    "nthreads": space.renderer.nthreads, "sizes": {}}
    for size in cfg.render_bench.sizes:
        cameras = _resized(base[:cfg.render_bench.frames], int(size), hfov)
        fps = _interleaved_fps({"render": lambda c: space.render(c, RENDERED), "cast": space.renderer.cast}, cameras)
        render_fps, cast_fps = fps["render"], fps["cast"]
        report["sizes"][str(size)] = {"render_fps": round(render_fps, 2), "raycast_only_fps": round(cast_fps, 2),
                                      "render_over_raycast": round(cast_fps / render_fps, 3)}
        console.print(f"  {size}px: render {render_fps:.1f} fps, ray cast only {cast_fps:.1f} fps")
    process_cameras = _resized(base[:cfg.render_bench.process_frames], int(cfg.render_bench.process_size), hfov)
    workers = {}
    for count in cfg.render_bench.workers:
        workers[str(count)] = round(_parallel_fps(cfg.space, process_cameras, int(count), int(cfg.render_bench.process_size), hfov), 2)
        console.print(f"  {count} process(es), 1 thread each, {cfg.render_bench.process_size}px: {workers[str(count)]} fps")
    report["processes"] = {"size": cfg.render_bench.process_size, "frames": cfg.render_bench.process_frames, "fps": workers}
    if len(workers) >= 2:
        counts = sorted(workers, key=int)
        report["processes"]["speedup"] = round(workers[counts[-1]] / workers[counts[0]], 3)
    report["targets"] = {f"render_over_raycast_{size}px": target(v["render_over_raycast"], RENDER_OVER_CAST_GOAL,
                                                                 "x the bare ray cast's time per frame", at_most=True)
                         for size, v in report["sizes"].items()}
    report["targets"]["process_speedup"] = target(report["processes"].get("speedup"), PROCESS_SPEEDUP_GOAL,
                                                  "x the frames/s of the fewest processes, with the most",
                                                  at_most=False)
    metrics = {f"render_fps_{s}": v["render_fps"] for s, v in report["sizes"].items()}
    metrics |= {f"raycast_fps_{s}": v["raycast_only_fps"] for s, v in report["sizes"].items()}
    metrics |= {f"process_fps_{k}": v for k, v in workers.items()}
    save_report(cfg, "render", space.name, report, metrics)
    return report
