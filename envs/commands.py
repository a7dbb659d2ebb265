"""`tst spaces list` and `tst spaces render`: see which spaces exist and look at one."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import track
from rich.table import Table

from tst.errors import TSTError
from tst.modalities import RENDERED
from tst.sheets import contact_sheet
from tst.tracking import record_run
from tst.workspace import artifact_dir, atomic_write_bytes, new_run_name, staged_directory, write_manifest

from tst.envs.floorplan import Track, floor_plan
from tst.envs.mesh_space import MeshSpace
from tst.envs.registry import BACKENDS, make_space
from tst.envs.preview_cameras import preview_cameras

console = Console(stderr=True)


def list_spaces() -> None:
    """Print every backend, whether it can run here and what it needs."""
    table = Table(title="TST spaces")
    for column in ("space", "installed", "needs", "what"):
        table.add_column(column)
    for backend in BACKENDS.values():
        table.add_row(backend.name, "yes" if backend.installed() else "no", ", ".join(backend.requires),
                      backend.description)
    Console().print(table)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_out(out: str | None) -> Path | None:
    if out is None:
        return None
    path = Path(str(out))
    if path.suffix.lower() != ".png":
        raise TSTError(f"out: expected a .png file path, got '{out}'")
    if path.is_dir():
        raise TSTError(f"out: {path} is a directory; expected a .png file path")
    return path


def render_space(cfg: DictConfig) -> Path:
    """Render `views` previews of the configured space into a contact sheet and a floor plan.

    Writes <workspace>/<space>/spaces/<run>/{sheet.png, floorplan.png, cameras.json, manifest.json}
    (and the sheet at `out` when given); returns the artifact directory.
    """
    out = _check_out(cfg.get("out"))
    for key in ("views", "size"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TSTError(f"{key}: expected a positive integer, got {value!r}")
    space = make_space(cfg.space)
    with space:
        cameras = preview_cameras(space, cfg.views, cfg.size, np.random.default_rng(cfg.view_seed),
                                  float(cfg.hfov_deg), tuple(cfg.height_range))
        frames = [space.render(camera, RENDERED) for camera in
                  track(cameras, description=f"rendering {space.name}", console=console)]
        sheet = _png(contact_sheet(frames, list(RENDERED), space.taxonomy))
        plan = _png(floor_plan(space, [Track(cameras, numbered=True)])) if isinstance(space, MeshSpace) else None
        inputs = dict(getattr(space, "source_files", {}))
        stats = {"triangles": getattr(space, "num_triangles", None)}
        if hasattr(space, "apartment"):
            stats = space.apartment.stats()
    final = artifact_dir(cfg.workspace_dir, space.name, "spaces", cfg.run_name or new_run_name())
    outputs = {"sheet": "sheet.png", "views": len(frames), "size": cfg.size, "space": stats,
               "taxonomy": space.taxonomy.fingerprint()}
    with staged_directory(final) as tmp:
        (tmp / "sheet.png").write_bytes(sheet)
        if plan is not None:
            (tmp / "floorplan.png").write_bytes(plan)
            outputs["floorplan"] = "floorplan.png"
        (tmp / "cameras.json").write_text(json.dumps([c.to_dict() for c in cameras], indent=1))
        outputs["cameras"] = "cameras.json"
        write_manifest(tmp, "spaces.render", cfg, inputs, outputs)
    written = [final / "sheet.png"] + ([final / "floorplan.png"] if plan is not None else [])
    if out is not None:
        atomic_write_bytes(out, sheet)
        if plan is not None:
            atomic_write_bytes(out.with_name(out.stem + "-floorplan.png"), plan)
    record_run(cfg, "spaces.render", space.name, final, {k: str(v) for k, v in inputs.items()}, outputs,
               images=written)
    console.print(f"[green]contact sheet[/green] {out or final / 'sheet.png'}")
    if plan is not None:
        plan_path = out.with_name(out.stem + "-floorplan.png") if out else final / "floorplan.png"
        console.print(f"[green]floor plan[/green]    {plan_path}")
    console.print(f"[green]artifacts[/green]     {final}")
    return final
