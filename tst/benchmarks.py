"""Saving benchmark reports: JSON on stdout, in the workspace (with a manifest), at `out`, in MLflow."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
from importlib import metadata
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


LIBRARIES = ("torch", "onnxruntime", "numpy", "numba", "open3d")
SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")  # x86 and Arm


def _cpu() -> tuple[str, list[str]]:
    """(CPU model name, the SIMD_FLAGS it has), from /proc/cpuinfo where there is one."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return fields.get("model name") or platform.processor() or platform.machine(), [f for f in SIMD_FLAGS if f in flags]


def matmul_gflops(size: int = 512, seconds: float = 0.2) -> float:
    """torch's fp32 (size x size) @ (size x size) rate on the CPU now, on torch's threads: GFLOP/s."""
    import torch

    a, b = torch.rand(size, size), torch.rand(size, size)
    a @ b  # warm-up: the first product pays for the BLAS library's set-up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count < 3:
        a @ b
        count += 1
    return round(2 * size**3 * count / elapsed / 1e9, 1)


def machine() -> dict:
    """What ran a benchmark, so that reports from other machines or days can be compared: the CPU model,
    logical cores, the SIMD sets its kernels may use, the 1-minute load average (other work on a shared
    machine), library versions, and a reference rate taken as the report is written, torch's fp32 matrix
    product in GFLOP/s (the same code has run 1.5-2x apart on two machines of this project)."""
    model, simd = _cpu()
    versions = {}
    for library in LIBRARIES:
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            continue
    return {"cpu": model, "logical_cores": os.cpu_count(), "simd": simd,
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "versions": versions, "matmul_fp32_gflops": matmul_gflops()}


def save_report(cfg: DictConfig, name: str, space: str, report: dict, metrics: dict[str, float]) -> Path:
    """Print `report` as JSON and keep it: <workspace>/<space>/bench/<run>/bench.json (+ cfg.out). The
    report gains a "machine" entry (`machine()`), so a figure can be read against the machine it came from."""
    report["machine"] = machine()
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
