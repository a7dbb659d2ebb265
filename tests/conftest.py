"""Shared test helpers: small analytic scenes and cameras."""

from __future__ import annotations

import numpy as np
import pytest

from tst.camera import Camera, intrinsics_from_fov, look_at
from tst.envs.mesh import LabeledMesh, Material


def quad_mesh(z: float, half: float = 5.0, class_id: int = 1, instance: int = 1,
              material: Material | None = None, uv_repeat: float = 1.0) -> LabeledMesh:
    """A square in the plane z = `z` (metres), facing -z (towards a camera below looking up),
    UVs 0..uv_repeat across it."""
    vertices = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]], float)
    faces = np.array([[0, 2, 1], [0, 3, 2]])  # clockwise seen from +z: the front faces -z
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float) * uv_repeat
    return LabeledMesh(vertices, faces, [class_id] * 2, [instance] * 2, [0, 0],
                       [material or Material("grey", (0.5, 0.5, 0.5))], corner_uvs=uv[faces])


def camera_looking_up(width: int = 64, height: int = 48, hfov: float = 60.0, position=(0.0, 0.0, 0.0)) -> Camera:
    """A camera at `position` looking along +z (world), image x along world +x, image y along world +y."""
    position = np.asarray(position, float)
    pose = look_at(position, position + [0, 0, 1], up=np.array([0.0, -1.0, 0.0]))
    return Camera(intrinsics_from_fov(width, height, hfov), width, height, pose)


@pytest.fixture
def workspace(tmp_path):
    """Overrides that send artifacts and tracking into a fresh temporary workspace."""
    return [f"workspace_dir={tmp_path / 'ws'}"]


def collect_small(workspace, pretrain: int, eval: int, transfer: int, size: int, *extra: str) -> None:
    """Collect a tiny dataset into `workspace` (one worker, no tracking); transfer frames from seed 1."""
    from tst.orchestration.cli import main

    assert main(["collect", f"workspace_dir={workspace}", f"collect.frames.pretrain={pretrain}",
                 f"collect.frames.eval={eval}", f"collect.frames.transfer={transfer}", "collect.transfer_spaces=[1]",
                 f"collect.size={size}", "collect.workers=1", "tracking.enabled=false", "collect.sheet_samples=1",
                 *extra]) == 0


TINY_MODEL = ["model.dim=32", "model.encoder_depth=1", "model.decoder_depth=1", "model.heads=2", "model.image_size=32",
              "data.num_workers=0", "data.batch_size=4", "tracking.enabled=false"]


def tiny_runs(workspace, tasks: str = "[seg,det,caption]"):
    """A 32-px dataset, a pretraining run `mm` (2 steps, a checkpoint each step) and a transfer run `multi`
    holding `tasks`, in `workspace`; returns (pretraining run, transfer run) folders."""
    from tst.orchestration.cli import main

    collect_small(workspace, 8, 4, 4, 32)
    common = [f"workspace_dir={workspace}", *TINY_MODEL]
    assert main(["pretrain", "pretrain.steps=2", "pretrain.checkpoint_every=1", "pretrain.input_budget=8",
                 "pretrain.target_budget=8", "run_name=mm", *common]) == 0
    assert main(["transfer", f"transfer.task={tasks}", "transfer.steps=1", "run_name=multi",
                 "transfer.caption.max_words=8", *common]) == 0
    space = workspace / "procedural-0"
    return space / "pretrain" / "mm", space / "transfer" / "multi"
