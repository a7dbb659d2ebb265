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
from pathlib import Path, PureWindowsPath
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

import tst
from tst.errors import TSTError

MANIFEST = "manifest.json"


def default_mode(directory: bool = False) -> int:
    """The permissions `open` or `mkdir` would give a new file (or folder) under the current umask.
    tempfile's files (0600) and folders (0700) get these before they are renamed into place, so outputs
    are as readable by others as anything else the user writes."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def file_sha256(path: Path) -> str:
    """Full sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> str:
    """sha256 (16 hex digits) of a file's bytes, or of a directory's manifest (else all its files)."""
    path = Path(path)
    if not path.exists():
        raise TSTError(f"{path}: no such file or directory")
    if not path.is_dir():
        return file_sha256(path)[:16]
    digest = hashlib.sha256()
    files = [path / MANIFEST] if (path / MANIFEST).exists() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path)).encode())
        digest.update(bytes.fromhex(fingerprint(file)))
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


def folder_name(value: Any, key: str) -> str:
    """`value` (a config value that becomes one path component, such as run_name or space.name) as a
    folder name; a TSTError naming `key` and the value unless it is exactly one path component:
    a string or number, not empty, not '.' or '..', no '/' or '\\', not absolute (no root, no drive)."""
    name = str(value)
    one_component = (isinstance(value, (str, int, float)) and not isinstance(value, bool)
                     and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
                     and not os.path.isabs(name) and not PureWindowsPath(name).drive)
    if not one_component:
        raise TSTError(f"{key}: {name!r} is not a folder name; expected exactly one path component "
                       "(not empty, not '.' or '..', no '/' or '\\', not an absolute path)")
    return name


def inside(path: str | Path, root: str | Path, key: str) -> Path:
    """`path`, once checked to lie under `root` (or be `root`); a TSTError naming `key` otherwise.

    Both are made absolute and normalized by their text ('..' folded, symlinks not followed), so a
    workspace may hold symlinked folders but no path that climbs out of it.
    """
    if not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
        raise TSTError(f"{key}: {path} lies outside {root}; expected every output to stay under it")
    return Path(path)


# Config keys naming places a command writes: folders, and files (whose folder must be writable).
OUTPUT_FOLDER_KEYS = ("workspace_dir", "report.out", "deploy.export_dir")
OUTPUT_FILE_KEYS = ("out",)
WRITTEN_BY = {"data_dir": "collect"}  # keys that name a place only one stage writes (the others read it)


def check_writable(path: str | Path, key: str, *, is_file: bool = False) -> None:
    """Refuse, before any work, an output location this user cannot create: a TSTError naming `key`
    when a file stands where a folder must be, or when the nearest existing folder on the way to
    `path` refuses a new entry (permissions, a read-only or virtual file system). The check creates
    and removes one empty temporary folder there, so nothing is left behind."""
    target = Path(os.path.abspath(path))
    folder = target.parent if is_file else target
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TSTError(f"{key}: {path}: {existing} is a file; expected a folder this user may write to")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tst-write-check-", dir=existing))
    except OSError as error:
        reason = error.strerror.lower() if error.strerror else str(error)
        raise TSTError(f"{key}: {path}: cannot write in {existing} ({reason}); "
                       "expected a folder this user may write to") from None


def check_outputs(cfg: DictConfig, stage: str) -> None:
    """`check_writable` for every output key the composed config of `stage` sets (OUTPUT_FOLDER_KEYS,
    OUTPUT_FILE_KEYS, and the WRITTEN_BY keys of this stage)."""
    written = tuple(key for key, writer in WRITTEN_BY.items() if writer == stage)
    for keys, is_file in ((OUTPUT_FOLDER_KEYS + written, False), (OUTPUT_FILE_KEYS, True)):
        for key in keys:
            value = OmegaConf.select(cfg, key, default=None)
            if value not in (None, ""):
                check_writable(str(value), key, is_file=is_file)


def artifact_dir(workspace_dir: str | Path, space: str, stage_folder: str, run: str | None = None, *,
                 space_key: str = "space.name", run_key: str = "run_name") -> Path:
    """<workspace_dir>/<space>/<stage_folder>[/<run>], checked before anything is written there:
    `space` and `run` must be single folder names (`space_key` and `run_key` name the config keys
    they came from, for the error) and the result must lie under workspace_dir."""
    path = Path(workspace_dir) / folder_name(space, space_key) / stage_folder
    if run is not None:
        path = path / folder_name(run, run_key)
    return inside(path, workspace_dir, "workspace_dir")


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


def read_json(path: Path, expected: str, required: tuple[str, ...] = ()) -> Any:
    """The JSON value in `path`; a one-line TSTError naming the file and `expected` (what should be
    there) when it is missing, unreadable, not valid JSON, or lacks one of the `required` dotted keys
    (e.g. "pretrain.objective")."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise TSTError(f"{path}: missing; expected {expected}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TSTError(f"{path}: unreadable ({getattr(error, 'strerror', None) or error}); expected {expected}") from None
    except json.JSONDecodeError as error:
        raise TSTError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}); expected {expected}") from None
    for key in required:
        node = value
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise TSTError(f"{path}: no '{key}'; expected {expected}")
    return value


def read_manifest(directory: Path) -> dict:
    """<directory>/manifest.json, checked to be an object with an `outputs` object (every tst stage
    writes one); a one-line TSTError naming the file otherwise."""
    path = Path(directory) / MANIFEST
    expected = "a manifest written by a tst stage"
    manifest = read_json(path, expected)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), dict):
        raise TSTError(f"{path}: no 'outputs' object; expected {expected} (re-run the stage that made "
                       f"{Path(directory).name})")
    return manifest


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
        tmp.chmod(default_mode(directory=True))
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
