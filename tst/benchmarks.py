"""Saving benchmark reports: JSON on stdout, in the workspace (with a manifest), at `out`, in MLflow."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from tst.stage import publish
from tst.workspace import artifact_dir, atomic_write_json, new_run_name


def target(value: float | None, goal: float, unit: str, at_most: bool) -> dict:
    """One verdict of a report's "targets": the measured `value` against `goal` (an upper bound when
    `at_most`, else a lower one); met is None when nothing was measured (value None)."""
    met = None if value is None else bool(value <= goal if at_most else value >= goal)
    return {"value": value, "goal": goal, "unit": unit, "met": met}


def save_report(cfg: DictConfig, name: str, space: str, report: dict, metrics: dict[str, float]) -> Path:
    """Print `report` as JSON and keep it: <workspace>/<space>/bench/<run>/bench.json (+ cfg.out)."""
    print(json.dumps(report, indent=2))
    final = artifact_dir(cfg.workspace_dir, space, "bench", cfg.run_name or new_run_name())

    def write(folder: Path) -> dict:
        atomic_write_json(folder / "bench.json", report)
        return {"report": "bench.json"}

    publish(cfg, f"bench.{name}", space, final, write, {}, metrics)
    if cfg.get("out"):
        atomic_write_json(Path(str(cfg.out)), report)
    return final


def _timed_worker(prepare: Callable, work: Callable, context: Any, share: Any, barrier, results) -> None:
    state = prepare(context)
    barrier.wait()
    start = time.monotonic()
    work(state, share)
    results.put((start, time.monotonic()))


def parallel_seconds(prepare: Callable[[Any], Any], work: Callable[[Any, Any], None], context: Any,
                     shares: list) -> float:
    """Wall seconds for len(shares) spawned processes to each run `work(prepare(context), share)`.

    The clock starts when every process has finished `prepare` (building its space, compiling), so
    start-up is not counted. `prepare` and `work` must be module-level functions (they are pickled).
    """
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(len(shares)), spawn.Queue()
    processes = [spawn.Process(target=_timed_worker, args=(prepare, work, context, share, barrier, results))
                 for share in shares]
    for process in processes:
        process.start()
    spans = [results.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join()
    return max(end for _, end in spans) - min(start for start, _ in spans)
