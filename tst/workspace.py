"""The workspace on disk: artifact directories, their manifests, fingerprints and atomic writes.

Layout: <workspace_dir>/<space>/<stage-folder>/<run>/ with a manifest.json in every artifact
directory, and the MLflow store (mlflow.db, mlartifacts/) at the workspace root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

import tst
from tst.errors import TSTError

MANIFEST = "manifest.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def fingerprint(path: Path) -> str:
    """sha256 (16 hex digits) of a file's bytes, or of a directory's manifest (else all its files)."""
    path = Path(path)
    if not path.exists():
        raise TSTError(f"{path}: no such file or directory")
    digest = hashlib.sha256()
    if path.is_dir():
        files = [path / MANIFEST] if (path / MANIFEST).exists() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digest.update(str(file.relative_to(path)).encode())
            digest.update(bytes.fromhex(fingerprint(file)))
    else:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def code_version() -> str:
    """The package version, plus the git commit (and `-dirty`) when running from a checkout."""
    version = tst.__version__
    source = Path(tst.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}{'-dirty' if dirty else ''}" if commit else version


def new_run_name() -> str:
    """A sortable, unique-enough run folder name: YYYYmmdd-HHMMSS-<4 hex>."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(2).hex()


def artifact_dir(workspace_dir: str | Path, space: str, stage_folder: str, run: str) -> Path:
    """<workspace_dir>/<space>/<stage_folder>/<run>."""
    return Path(workspace_dir) / space / stage_folder / run


def write_manifest(directory: Path, stage: str, cfg: DictConfig | dict, inputs: dict[str, Path],
                   outputs: dict[str, Any]) -> dict:
    """Write <directory>/manifest.json: what made it, from what, and what it holds."""
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "code_version": code_version(),
        "config": config,
        "inputs": {name: {"path": str(path), "fingerprint": fingerprint(path)} for name, path in inputs.items()},
        "outputs": outputs,
    }
    atomic_write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TSTError(f"{path}: missing; expected an artifact directory written by a tst stage") from None
    except json.JSONDecodeError as error:
        raise TSTError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


@contextmanager
def staged_directory(final: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `final` to fill; rename it to `final` only if the block succeeds.

    A failed or killed run leaves no `final` directory behind (at most a hidden `.tmp-` folder,
    removed on failure). An existing `final` is refused, or with `replace` swapped out whole only once
    the new one is complete.
    """
    final = Path(final)
    if final.exists() and not replace:
        raise TSTError(f"{final}: already exists; choose another run name")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
