"""`tst collect`: plan, render in parallel, write shards, and describe the dataset."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tst.camera import Camera
from tst.errors import TSTError
from tst.frame import Frame
from tst.envs.floorplan import Track, floor_plan
from tst.envs.mesh_space import MeshSpace
from tst.envs.registry import make_space
from tst.modalities import get, manifest_entries, pixel_maps
from tst.sheets import contact_sheet
from tst.tracking import record_run
from tst.validate import check
from tst.workspace import artifact_dir, atomic_write_bytes, atomic_write_json, fingerprint, write_manifest

from tst.collect.dataset import FrameDataset, shard_path
from tst.collect.executors import make_executor
from tst.collect.plan import SPLITS, Plan, frame_counts, make_plan, read_plan
from tst.collect.worker import Settings, Unit, stored_modalities, unit_complete

console = Console(stderr=True)
PLAN = "plan.json"
RUNTIME_KEYS = ("out", "splits", "workers", "executor", "ray_address", "overwrite", "sheet_samples")
SPLIT_COLOURS = {"pretrain": (30, 90, 220), "eval": (235, 120, 0), "transfer": (20, 160, 60)}


def _space_defaults(backend: str, where: str) -> dict:
    """The shipped defaults of a space backend (configs/space/<backend>.yaml)."""
    from tst.config import config_root

    path = config_root() / "space" / f"{backend}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise TSTError(f"{where}.backend: unknown backend {backend!r}; expected one of {options}")
    return OmegaConf.to_container(OmegaConf.load(path))


def _transfer_space_configs(cfg: DictConfig, test_space_cfg: dict) -> list[dict]:
    """The transfer spaces as complete space configs. An integer is a procedural apartment of that seed (the
    test space's procedural settings when it is procedural itself); a mapping is merged over its backend's
    defaults, so `{backend: mesh, path: other.glb}` is enough."""
    configs = []
    for index, entry in enumerate(cfg.collect.transfer_spaces):
        where = f"collect.transfer_spaces[{index}]"
        if isinstance(entry, int) and not isinstance(entry, bool):
            if test_space_cfg.get("backend") == "procedural":
                if entry == test_space_cfg.get("seed"):
                    raise TSTError(f"{where}: seed {entry} is the test space itself; "
                                   "transfer data must come from OTHER spaces")
                configs.append(dict(test_space_cfg, seed=entry))
            else:
                configs.append(dict(_space_defaults("procedural", where), seed=entry))
        elif isinstance(entry, DictConfig):
            given = OmegaConf.to_container(entry, resolve=True)
            backend = given.get("backend")
            if not isinstance(backend, str):
                raise TSTError(f"{where}: no 'backend'; expected a procedural seed (e.g. 1) or a space config "
                               "such as {backend: mesh, path: other.glb}")
            merged = _space_defaults(backend, where) | given
            missing = [key for key, value in merged.items() if value == "???"]
            if missing:
                raise TSTError(f"{where}: {backend} spaces need {', '.join(missing)} "
                               f"(e.g. {{backend: {backend}, {missing[0]}: ...}})")
            configs.append(merged)
        else:
            raise TSTError(f"{where}: expected a procedural seed (e.g. 1) or a space config such as "
                           f"{{backend: mesh, path: other.glb}}, got {entry!r}")
    return configs


def dataset_identity(cfg: DictConfig) -> str:
    """What determines the dataset's content: the space and every collect key but the runtime ones
    (RUNTIME_KEYS; "out" is the dataset folder's key in configs stored before it became data_dir)."""
    collect = {k: v for k, v in OmegaConf.to_container(cfg.collect, resolve=True).items() if k not in RUNTIME_KEYS}
    for key, default in (("poses", "sampled"), ("real_rgb", True), ("min_shared_classes", 3)):  # keys added later:
        if collect.get(key) == default:  # at their defaults they keep older datasets' identity
            collect.pop(key)
    space = {k: v for k, v in OmegaConf.to_container(cfg.space, resolve=True).items() if k != "nthreads"}
    return hashlib.sha256(json.dumps({"space": space, "collect": collect}, sort_keys=True).encode()).hexdigest()[:16]


def _validate(cfg: DictConfig) -> None:
    """The collect-specific checks on top of the per-key rules `tst.config.load` applies (applied here
    too, for configs built without it)."""
    check("collect", cfg)
    c = cfg.collect
    for name in c.modalities:
        get(name)
    missing = [m for m in ("rgb",) if m not in c.modalities]
    if missing:
        raise TSTError("collect.modalities: rgb is required (edges and captions are computed from it)")
    unknown = [s for s in c.splits if s not in SPLITS]
    if unknown:
        raise TSTError(f"collect.splits: unknown split(s) {unknown}; expected a subset of {list(SPLITS)}")
    frame_counts(c)


def _output_dir(cfg: DictConfig, space_name: str) -> tuple[Path, Path | None]:
    """The dataset directory, created and checked writable, and the topmost folder this call created
    (None if the directory existed), which a run refused before rendering removes again."""
    out = Path(str(cfg.data_dir)) if cfg.get("data_dir") else artifact_dir(cfg.workspace_dir, space_name, "data")
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as error:
        raise TSTError(f"data_dir: cannot write to {out} ({error.strerror or error})") from None
    return out, created


def _nothing_rendered(out: Path) -> bool:
    return not (out / "manifest.json").exists() and not any((out / split).exists() for split in SPLITS)


def _load_or_make_plan(cfg: DictConfig, out: Path, space, test_space_cfg: dict) -> Plan:
    identity = dataset_identity(cfg)
    path = out / PLAN
    if path.exists():
        try:
            stored_identity, stored_plan = read_plan(path)
        except TSTError:
            if not cfg.collect.overwrite and not _nothing_rendered(out):
                raise
            stored_identity, stored_plan = None, None  # replaced: under overwrite, or when nothing is rendered
        if stored_plan is not None and stored_identity == identity:
            console.print(f"resuming the collection in {out}")
            return stored_plan
        if not cfg.collect.overwrite and not _nothing_rendered(out):  # a plan alone is cheap to replace
            raise TSTError(f"data_dir: {out} holds a dataset collected with a different config; "
                           "choose another data_dir or set collect.overwrite=true")
        for entry in [out / PLAN, out / "manifest.json", *[out / s for s in SPLITS]]:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
    console.print(f"planning cameras for {space.name} ...")
    transfer = _transfer_space_configs(cfg, test_space_cfg) if frame_counts(cfg.collect)["transfer"] else []
    plan = make_plan(cfg.collect, test_space_cfg, space, transfer, lambda c: make_space(OmegaConf.create(c)))
    atomic_write_json(path, {"identity": identity, "plan": plan.to_dict()})
    return plan


def make_units(plan: Plan, splits: list[str], shard_size: int) -> list[Unit]:
    units = []
    for split in splits:
        frames = plan.frames[split]
        for shard, start in enumerate(range(0, len(frames), shard_size)):
            units.append(Unit(split, shard, frames[start:start + shard_size]))
    return units


def _render(units: list[Unit], settings: Settings, cfg: DictConfig) -> float:
    """Render every unit not yet on disk; returns frames/s of this run (0 when nothing was left)."""
    todo = [u for u in units if not unit_complete(settings, u.split, u.shard)]
    total = sum(len(u.frames) for u in todo)
    done = sum(len(u.frames) for u in units) - total
    if done:
        console.print(f"{done} frames already on disk, {total} to go")
    if not todo:
        return 0.0
    workers = cfg.collect.workers or os.cpu_count() or 1
    executor = make_executor(cfg.collect.executor, min(workers, len(todo)), cfg.collect.ray_address)
    columns = [TextColumn("[bold]collect[/bold]"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"),
               TextColumn("{task.fields[fps]:.1f} frames/s"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    start = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("collect", total=total, fps=0.0)
        rendered = 0
        for count in executor.run(todo, settings):
            rendered += count
            progress.update(task, advance=count, fps=rendered / (time.perf_counter() - start))
    return total / (time.perf_counter() - start)


def _sheets(out: Path, plan: Plan, splits: list[str], cfg: DictConfig, space, taxonomy,
            manifest: dict) -> dict[str, str]:
    """A contact sheet of random samples per split and the test space's floor plan with every camera;
    `manifest`: the dataset's manifest, not written yet, for reading its shards back."""
    written = {}
    image_modalities = pixel_maps(cfg.collect.modalities)
    rng = np.random.default_rng(cfg.collect.seed)
    for split in splits:
        dataset = FrameDataset(out, split, image_modalities, manifest=manifest)
        picks = sorted(rng.choice(len(dataset), min(cfg.collect.sheet_samples, len(dataset)), replace=False))
        frames = []
        for index in picks:
            values = dataset.values(int(index))
            frames.append(Frame(Camera.from_dict(values.pop("camera")), values))
        sheet = contact_sheet(frames, image_modalities, taxonomy)
        atomic_write_bytes(out / f"sheet-{split}.png", _png_bytes(sheet))
        written[split] = f"sheet-{split}.png"
    if isinstance(space, MeshSpace):
        tracks = [Track([f.camera for f in plan.frames[s]], SPLIT_COLOURS[s], s, [f.path_id for f in plan.frames[s]])
                  for s in ("pretrain", "eval") if plan.frames[s]]
        atomic_write_bytes(out / "floorplan.png", _png_bytes(floor_plan(space, tracks)))
        written["floorplan"] = "floorplan.png"
    return written


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


ENCODE_AHEAD = 2  # frames a worker with a core to spare may render ahead of its encoding helper


def worker_settings(collect: DictConfig, plan: Plan, out: Path, workers: int, taxonomy) -> Settings:
    """What each of `workers` processes needs; `taxonomy`: the test space's, which every split's labels are
    written in. Several workers cast rays on one thread each; with fewer workers than cores, each encodes
    in a helper while it renders (collect/encoder.py; one worker on 2 cores, 128 px, `tst bench collect`:
    145 frames/s inline, 158-194 with a helper thread, 189-212 with a helper process; with a worker per
    core a helper would only contend for the cores)."""
    spare_core = workers < (os.cpu_count() or 1)
    return Settings(str(out), plan.spaces, list(collect.modalities), collect.rgb_format,
                    (float(collect.edges.low), float(collect.edges.high)), int(collect.min_box_pixels),
                    int(collect.seed), 1 if workers > 1 else 0, bool(collect.get("real_rgb", True)), taxonomy.to_dict(),
                    tuple(plan.class_maps), ENCODE_AHEAD if spare_core else 0)


def dataset_outputs(out: Path, plan: Plan, units: list[Unit], settings: Settings, space) -> dict:
    """The `outputs` section of a dataset manifest: what the readers need and what people look up."""
    splits = sorted({u.split for u in units}, key=SPLITS.index)
    return {
        "space": space.name, "taxonomy": space.taxonomy.to_dict(), "taxonomy_fingerprint": space.taxonomy.fingerprint(),
        "modalities": stored_modalities(settings.modalities), "rgb_format": settings.rgb_format,
        "registry": manifest_entries(settings.modalities),
        "camera_model": "pinhole, OpenCV axes (x right, y down, z forward), world z-up, metres",
        "spaces": plan.space_names, "eval_min_distance": plan.eval_min_distance,
        "class_maps": {name: {k: mapping[k] for k in ("shared", "dropped")}
                       for name, mapping in zip(plan.space_names, plan.class_maps) if mapping is not None},
        "splits": {s: {"frames": len(plan.frames[s]),
                       "shards": [{"index": u.shard, "frames": len(u.frames),
                                   "fingerprints": {m: fingerprint(shard_path(out, s, m, u.shard))
                                                    for m in stored_modalities(settings.modalities)}}
                                  for u in units if u.split == s]} for s in splits},
    }


def run(cfg: DictConfig) -> Path:
    """Collect the configured splits; returns the dataset directory (with manifest.json)."""
    _validate(cfg)
    test_space_cfg = OmegaConf.to_container(cfg.space, resolve=True)
    space = make_space(cfg.space)
    out, created = _output_dir(cfg, space.name)
    try:
        plan = _load_or_make_plan(cfg, out, space, test_space_cfg)
    except BaseException:  # refused or interrupted while planning: leave nothing that blocks the next run
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    splits = [s for s in cfg.collect.splits if plan.frames[s]]
    workers = cfg.collect.workers or os.cpu_count() or 1
    settings = worker_settings(cfg.collect, plan, out, workers, space.taxonomy)
    units = make_units(plan, splits, cfg.collect.shard_size)
    for partial in out.glob("*/*/.shard-*.tmp-*"):  # half-written by a killed run; its shard is re-rendered
        partial.unlink(missing_ok=True)
    fps = _render(units, settings, cfg)
    outputs = dataset_outputs(out, plan, units, settings, space)
    images = _sheets(out, plan, splits, cfg, space, space.taxonomy, {"stage": "collect", "outputs": outputs})
    write_manifest(out, "collect", cfg, {}, outputs | {"images": images})  # last: the dataset is finished
    counts = {s: len(plan.frames[s]) for s in splits}
    console.print(f"[green]dataset[/green] {out}  frames {counts}  eval-pretrain min distance "
                  f"{plan.eval_min_distance if plan.eval_min_distance is None else round(plan.eval_min_distance, 3)} m")
    metrics = {f"frames_{s}": float(n) for s, n in counts.items()} | ({"frames_per_second": fps} if fps else {})
    if plan.eval_min_distance is not None:
        metrics["eval_min_distance"] = plan.eval_min_distance
    record_run(cfg, "collect", space.name, out, {}, {"dataset": str(out), **counts}, metrics,
               images=[out / name for name in images.values()])
    space.close()
    return out

