"""What every stage does around its own work, in one place: pick a new run folder, then land the finished
run in it (files staged in a hidden sibling, the manifest written last, the folder renamed into place),
record it in MLflow and print its one JSON line.

A stage's `run(cfg)` reads its inputs, computes, and hands `publish` a function that writes its files.
Stages that write as they go so a kill can resume (collect's shards, pretraining's checkpoints) write
their folder in place and end with `write_manifest` + `record_run` themselves; the manifest is still the
last file written, so "finished" means the same everywhere: the folder holds manifest.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from tst.errors import TSTError
from tst.tracking import record_run
from tst.workspace import artifact_dir, new_run_name, staged_directory, write_manifest


def new_run_dir(cfg: DictConfig, space: str, stage_folder: str, default_name: str,
                space_key: str = "space.name") -> Path:
    """<workspace_dir>/<space>/<stage_folder>/<run_name or default_name>-<timestamp>, refused if it exists
    (a run never overwrites another)."""
    name = cfg.get("run_name") or f"{default_name}-{new_run_name()}"
    run_dir = artifact_dir(cfg.workspace_dir, space, stage_folder, name, space_key=space_key)
    if run_dir.exists():
        raise TSTError(f"{run_dir}: already exists; choose another run_name")
    return run_dir


def publish(cfg: DictConfig, stage: str, space: str, run_dir: Path, write: Callable[[Path], dict[str, Any]],
            inputs: dict[str, Path], metrics: dict[str, float] | None = None, *, images: tuple[str, ...] = (),
            tags: dict[str, str] | None = None, summary: dict | None = None, replace: bool = False) -> Path:
    """Land one finished run in `run_dir` and return it.

    write(folder) fills the staged folder and returns the manifest's `outputs` (file names relative to the
    run folder, or any JSON value); `inputs` are the folders or files it was made from (fingerprinted in the
    manifest); `images` are PNGs among its files, logged with the tracked run; `summary` is printed as one
    JSON line on stdout (what scripts read). `replace` swaps out an existing folder whole, once the new
    one is complete."""
    with staged_directory(run_dir, replace=replace) as folder:
        outputs = write(folder)
        write_manifest(folder, stage, cfg, inputs, outputs)
    files = {key: str(run_dir / value) for key, value in outputs.items()
             if isinstance(value, str) and (run_dir / value).exists()}
    record_run(cfg, stage, space, run_dir, {key: str(path) for key, path in inputs.items()}, files, metrics,
               images=[run_dir / name for name in images], tags=tags)
    if summary is not None:
        print(json.dumps(summary))
    return run_dir
