"""Names never escape the workspace: run_name and space names are single folder names, refused before
anything is written, and every output directory a stage makes lies under workspace_dir."""

import os
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tst.orchestration.cli import main
from tst.envs.registry import space_name
from tst.errors import TSTError
from tst.workspace import artifact_dir, folder_name, inside

from conftest import collect_small

TINY = ["model.dim=32", "model.encoder_depth=1", "model.decoder_depth=1", "model.heads=2", "data.batch_size=2",
        "data.num_workers=0", "tracking.enabled=false"]
# Complete commands: without the name checks each would run and write its artifacts.
STAGES = {
    "collect": ["collect.frames.pretrain=2", "collect.frames.eval=2", "collect.frames.transfer=0",
                "collect.size=32", "collect.workers=1", "collect.sheet_samples=1", "tracking.enabled=false"],
    "pretrain": TINY + ["pretrain.steps=1", "pretrain.input_budget=8", "pretrain.target_budget=8"],
    "transfer": TINY + ["transfer.steps=1"],
    "deploy": ["deploy.steps=1", "tracking.enabled=false"],
    "report": ["tracking.enabled=false"],
    "run": ["experiment=smoke", "tracking.enabled=false"],
}
NO_RUN_NAME = {"collect", "report", "run"}  # their configs have no run_name: Hydra refuses the key itself
BAD = [("run_name", "../x"), ("run_name", "/tmp/abs"), ("run_name", "a/b"), ("run_name", ".."),
       ("space.name", "../x")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """<tmp>/ws with a tiny collected dataset; an escaping name would write next to it, in <tmp>."""
    ws = tmp_path_factory.mktemp("paths") / "ws"
    collect_small(ws, 2, 2, 2, 32)
    return ws


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("key, value", BAD, ids=[f"{k}={v}" for k, v in BAD])
@pytest.mark.parametrize("stage", list(STAGES))
def test_bad_names_are_refused_before_anything_is_written(workspace, stage, key, value, capsys):
    override = f"+{key}={value}" if key == "space.name" else f"{key}={value}"  # procedural has no name key
    before, absolute = tree(workspace.parent), os.path.lexists("/tmp/abs")
    capsys.readouterr()
    assert main([stage, f"workspace_dir={workspace}", *STAGES[stage], override]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"tst {stage}: error: ") and key in errors[0], errors
    if not (key == "run_name" and stage in NO_RUN_NAME):
        assert f"{key}: '{value}' is not a folder name; expected exactly one path component" in errors[0], errors
    assert tree(workspace.parent) == before  # nothing in the workspace, nothing beside it
    assert os.path.lexists("/tmp/abs") == absolute


def test_a_sweep_with_one_bad_name_runs_none_of_its_runs(workspace, capsys):
    assert main(["pretrain", "-m", "run_name=good,../x", f"workspace_dir={workspace}", *STAGES["pretrain"]]) == 2
    assert "run_name: '../x'" in capsys.readouterr().err
    assert not (workspace / "procedural-0" / "pretrain").exists()


@pytest.mark.parametrize("value", ["run-1", "a.b", "..a", 7])
def test_folder_name_accepts_one_component(value):
    assert folder_name(value, "run_name") == str(value)


@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "../x", "/tmp/abs", "a\\b", "C:", "a\0b", True, ["a"]])
def test_folder_name_refuses_everything_else(value):
    with pytest.raises(TSTError, match=r"^run_name: .* is not a folder name; expected exactly one path component"):
        folder_name(value, "run_name")


def test_inside(tmp_path):
    ws = tmp_path / "ws"
    assert inside(ws / "a" / "b", ws, "k") == ws / "a" / "b"
    assert inside(ws, ws, "k") == ws
    assert inside("ws/a", "ws", "k") == Path("ws/a")  # relative paths: against the current folder
    for path, root in ((ws / ".." / "x", ws), (tmp_path / "ws2", ws), ("/tmp/abs", ws), ("ws/../../x", "ws")):
        with pytest.raises(TSTError, match=r"^k: .* lies outside .*; expected every output to stay under it"):
            inside(path, root, "k")


def test_inside_allows_symlinked_folders_in_the_workspace(tmp_path):
    (tmp_path / "big-disk").mkdir()
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "data").symlink_to(tmp_path / "big-disk")
    assert inside(tmp_path / "ws" / "data" / "run", tmp_path / "ws", "k") == tmp_path / "ws" / "data" / "run"


def test_artifact_dir_checks_both_names(tmp_path):
    assert artifact_dir(tmp_path, "procedural-0", "pretrain", "r1") == tmp_path / "procedural-0" / "pretrain" / "r1"
    assert artifact_dir(tmp_path, "procedural-0", "data") == tmp_path / "procedural-0" / "data"
    with pytest.raises(TSTError, match=r"^run_name: '\.\./x'"):
        artifact_dir(tmp_path, "procedural-0", "pretrain", "../x")
    with pytest.raises(TSTError, match=r"^deploy\.model: '\.\.'"):
        artifact_dir(tmp_path, "procedural-0", "deploy/exports", "..", run_key="deploy.model")
    with pytest.raises(TSTError, match=r"^space\.name: '/abs'"):
        artifact_dir(tmp_path, "/abs", "data")


@pytest.mark.parametrize("space, name", [
    ({"backend": "procedural", "seed": 3}, "procedural-3"),
    ({"backend": "mesh", "path": "scenes/room.glb"}, "room"),
    ({"backend": "scannetpp", "scene": "abc"}, "scannetpp-abc"),
    ({"backend": "procedural", "seed": 3, "name": "kitchen"}, "kitchen"),
])
def test_space_name(space, name):
    assert space_name(OmegaConf.create(space)) == name


@pytest.mark.parametrize("space, key", [
    ({"backend": "procedural", "name": "../x"}, "space.name"),
    ({"backend": "procedural", "name": ""}, "space.name"),
    ({"backend": "procedural", "seed": "../x"}, "space name (from space.seed)"),
    ({"backend": "scannetpp", "scene": "../x"}, "space name (from space.scene)"),
    ({"backend": "thor", "scene": "/tmp/abs"}, "space name (from space.scene)"),
    ({"backend": "mesh", "path": "scenes/.."}, "space name (from space.path)"),
])
def test_space_name_refuses_names_that_are_not_one_folder(space, key):
    with pytest.raises(TSTError, match=f"^{re.escape(key)}: .* is not a folder name"):
        space_name(OmegaConf.create(space))
