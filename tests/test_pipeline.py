"""`tst run` end to end at the smoke-sized experiment, and its resumption."""

import json

import pytest

from tst.cli import main


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("pipeline")
    assert main(["run", "experiment=smoke", f"workspace_dir={workspace}"]) == 0
    return workspace


def test_run_smoke_writes_every_stage_and_the_table(finished):
    space = finished / "procedural-0"
    assert (space / "data" / "manifest.json").is_file()
    assert (space / "pretrain" / "tokenizers" / "manifest.json").is_file()
    pretrained = sorted(p.name.split("-")[0] for p in (space / "pretrain").iterdir() if p.name != "tokenizers")
    assert pretrained == ["fourm", "mae"]
    transferred = sorted(p.name.split("-")[0] for p in (space / "transfer").iterdir())
    assert transferred == ["fourm", "generalist", "mae", "scratch"]
    (deployed,) = (space / "deploy").iterdir()
    assert json.loads((deployed / "report.json").read_text())["steps"] == 3
    table = (space / "report" / "results.md").read_text()
    for row in ("| scratch |", "| mae |", "| fourm |", "| generalist |"):
        assert row in table
    assert (space / "report" / "results.png").is_file()


def test_a_second_run_skips_every_finished_stage(finished, capsys):
    before = {p: p.stat().st_mtime for p in (finished / "procedural-0" / "transfer").iterdir()}
    capsys.readouterr()
    assert main(["run", "experiment=smoke", f"workspace_dir={finished}"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipped") >= 8  # collect, tokenizers, 2 pretrain, 4 transfer, deploy
    assert before == {p: p.stat().st_mtime for p in (finished / "procedural-0" / "transfer").iterdir()}


def test_unknown_backbone_in_an_experiment(tmp_path, capsys):
    assert main(["run", "experiment=smoke", f"workspace_dir={tmp_path}", "experiment.backbones=[clip]"]) != 0
    assert "experiment.backbones: 'clip'" in capsys.readouterr().err
