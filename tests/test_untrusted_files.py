"""Nothing TST loads from a run folder can execute code: a pickle that would run a shell command is
refused in one line on every path that reads torch files (resume, predict, deploy, report)."""

import os
import shutil

import pytest
import torch

from tst.orchestration.cli import main

from conftest import TINY_MODEL, tiny_runs



class RunsAShellCommand:
    """Unpickling this runs `command` (what a planted checkpoint would do)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def plant(path, marker) -> None:
    torch.save({"state_dict": RunsAShellCommand(f"touch {marker}")}, path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished pretraining run and a finished multi-task transfer run in a tiny workspace."""
    workspace = tmp_path_factory.mktemp("untrusted")
    return (workspace, *tiny_runs(workspace))


def one_error_line(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1, errors
    return errors[0]


def test_resume_refuses_a_planted_checkpoint(runs, tmp_path, capsys):
    workspace, pretrained, _ = runs
    run = pretrained.parent / "planted-resume"
    shutil.copytree(pretrained, run)
    marker = tmp_path / "pwned"
    plant(run / "checkpoints" / "last.ckpt", marker)
    capsys.readouterr()
    assert main(["pretrain", f"resume={run}", "pretrain.steps=4", f"workspace_dir={workspace}"]) != 0
    assert "last.ckpt: refused" in one_error_line(capsys) and not marker.exists()


def test_predict_and_transfer_refuse_a_planted_checkpoint(runs, tmp_path, capsys):
    workspace, pretrained, _ = runs
    run = pretrained.parent / "planted-predict"
    shutil.copytree(pretrained, run)
    (run / "model.safetensors").unlink()  # predict then falls back to the Lightning checkpoint
    marker = tmp_path / "pwned"
    plant(run / "checkpoints" / "last.ckpt", marker)
    capsys.readouterr()
    assert main(["pretrain", "predict", f"ckpt={run}", "predict_frames=2", f"workspace_dir={workspace}"]) != 0
    assert "last.ckpt: refused" in one_error_line(capsys) and not marker.exists()
    # transfer reads the encoder's safetensors only: with it gone the planted checkpoint is still never read
    (run / "encoder.safetensors").unlink()
    assert main(["transfer", f"transfer.backbone={run}", "transfer.steps=1", f"workspace_dir={workspace}",
                 *TINY_MODEL]) != 0
    assert "encoder.safetensors" in one_error_line(capsys) and not marker.exists()


def test_deploy_and_report_refuse_a_planted_transfer_model(runs, tmp_path, capsys):
    workspace, _, transferred = runs
    run = transferred.parent / "planted-deploy"
    shutil.copytree(transferred, run)
    marker = tmp_path / "pwned"
    plant(run / "model.pt", marker)
    capsys.readouterr()
    assert main(["deploy", f"deploy.model={run}", "deploy.steps=1", f"workspace_dir={workspace}",
                 "tracking.enabled=false"]) != 0
    assert "model.pt: refused" in one_error_line(capsys) and not marker.exists()
    main(["report", f"workspace_dir={workspace}"])  # reads metrics and MLflow, never the weights
    assert not marker.exists()


def test_a_truncated_checkpoint_is_named(tmp_path):
    from tst.errors import TSTError
    from tst.weights import read_torch_file

    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(TSTError, match="model.pt: not a readable torch checkpoint"):
        read_torch_file(path)
