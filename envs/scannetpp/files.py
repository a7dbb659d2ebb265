"""Where a ScanNet++ release keeps a scene's files, and reading them with errors that say how to get the data."""

from __future__ import annotations

import json
from pathlib import Path

from tst.errors import TSTError

GET_DATA = ("ScanNet++ is not downloadable without an approved application at "
            "https://kaldir.vc.in.tum.de/scannetpp (then use its download script)")
MESH_FILE = "scans/mesh_aligned_0.05.ply"


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise TSTError(f"{what}: {path} does not exist; expected a ScanNet++ release there. {GET_DATA}")
    return path


def read_release_json(path: Path, what: str) -> dict:
    require_file(path, what)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TSTError(f"{what}: cannot read {path} as JSON ({str(error).splitlines()[0]})") from None


def scene_dir(root: str | Path, scene: str) -> Path:
    """<root>/data/<scene>, checked to exist."""
    root = require_file(Path(root), "space.root")
    require_file(root / "data", "space.root")
    return require_file(root / "data" / str(scene), "space.scene")


# --------------------------------------------------------------------------- classes
