"""Space backends by name: what `space=<name>` builds, and whether it can run on this machine."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from tst.errors import TSTError
from tst.workspace import folder_name

from tst.envs.base import TestSpace


def _procedural(cfg: DictConfig) -> TestSpace:
    from tst.envs.procedural.apartment import ProceduralSpace

    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TSTError(f"space.seed: expected a non-negative integer, got {seed!r}")
    rooms = list(cfg.get("rooms", [4, 6]))
    return ProceduralSpace(seed, float(cfg.max_edge), int(cfg.segments), (int(rooms[0]), int(rooms[1])),
                           int(cfg.nthreads))


def _mesh(cfg: DictConfig) -> TestSpace:
    from tst.envs.labelmap import load_label_map
    from tst.envs.loaders import load_mesh
    from tst.envs.mesh_space import MeshSpace

    if cfg.get("path") in (None, "", "???"):
        raise TSTError("space.path: missing; expected the path of a glTF/GLB, PLY or OBJ scene (space.path=...)")
    path = Path(str(cfg.path))
    labels = load_label_map(cfg.get("labels"))
    mesh = load_mesh(path, labels, str(cfg.get("up_axis", "auto")))
    space = MeshSpace(space_name(cfg), mesh, labels.taxonomy, int(cfg.get("nthreads", 0)))
    space.source_files = {"mesh": path} | ({"labels": Path(str(cfg.labels))} if cfg.get("labels") else {})
    return space


def _lazy(module: str) -> Callable[[DictConfig], TestSpace]:
    """`tst.envs.<module>.build`, imported when the space is built."""

    def build(cfg: DictConfig) -> TestSpace:
        return importlib.import_module(f"tst.envs.{module}").build(cfg)

    return build


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    requires: tuple[str, ...]  # importable modules it needs
    build: Callable[[DictConfig], TestSpace]
    install: str = ""  # how to get what it needs, when it is missing

    def installed(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in self.requires)


BACKENDS: dict[str, Backend] = {
    "procedural": Backend("procedural", "procedural apartments, one per seed (the embedded default)",
                          ("open3d", "scipy"), _procedural),
    "mesh": Backend("mesh", "any labeled glTF/GLB, PLY or OBJ scene (space.path=..., space.labels=...)",
                    ("open3d", "trimesh"), _mesh),
    "scannetpp": Backend("scannetpp", "a ScanNet++ scene (space.root=<release> space.scene=<id>)",
                         ("open3d", "trimesh"), _lazy("scannetpp")),
    "replica": Backend("replica", "a Replica scene (space.root=<Replica> space.scene=room_0)",
                       ("open3d",), _lazy("replica")),
    "habitat": Backend("habitat", "habitat-sim: any scene it loads (space.scene=<.glb or dataset config>)",
                       ("habitat_sim",), _lazy("habitat"),
                       "habitat-sim is a conda package: conda install habitat-sim -c conda-forge -c aihabitat"),
    "thor": Backend("thor", "AI2-THOR / ProcTHOR (space.scene=FloorPlan201 or space.house=<house.json>)",
                    ("ai2thor",), _lazy("thor"),
                    "pip install -e '.[thor]'; it downloads a Unity build on first use and needs Vulkan or an X server"),
}


def space_name(cfg: DictConfig) -> str:
    """The name a `space:` config's space has (its workspace folder), without building it:
    space.name if set, else the backend's default (procedural-<seed>, the mesh file's stem,
    scannetpp-<scene>, replica-<scene>, habitat-<scene file stem>, the THOR scene or house file stem).
    A TSTError unless the name is a single folder name (see `folder_name`)."""
    if cfg.get("name") is not None:
        return folder_name(cfg.name, "space.name")
    backend = cfg.get("backend")
    if backend == "procedural":
        name, source = f"procedural-{cfg.get('seed', 0)}", "space.seed"
    elif backend in ("scannetpp", "replica"):
        name, source = f"{backend}-{cfg.get('scene')}", "space.scene"
    elif backend == "habitat":
        name, source = f"habitat-{Path(str(cfg.get('scene'))).name.split('.')[0]}", "space.scene"
    elif backend == "thor":
        name, source = (Path(str(cfg.house)).stem, "space.house") if cfg.get("house") else \
            (str(cfg.get("scene") or "FloorPlan201"), "space.scene")
    else:
        name, source = Path(str(cfg.get("path"))).stem, "space.path"
    return folder_name(name, f"space name (from {source})")


def make_space(cfg: DictConfig) -> TestSpace:
    """Build the space a `space:` config describes (its `backend` key picks the backend)."""
    name = cfg.get("backend")
    if name not in BACKENDS:
        raise TSTError(f"unknown space backend '{name}': expected one of {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    if not backend.installed():
        missing = [m for m in backend.requires if importlib.util.find_spec(m) is None]
        hint = f"; {backend.install}" if backend.install else ""
        raise TSTError(f"space backend '{name}' needs {', '.join(missing)}, which is not installed here{hint}")
    return backend.build(cfg)
