"""`tst run` end to end at the smoke-sized experiment, and its resumption."""

import json

import pytest

from tst.orchestration.cli import main


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
    probed = sorted(p.name.split("-")[0] for p in (space / "probe").iterdir())
    assert probed == ["fourm", "generalist", "mae", "scratch"]  # experiment.probe: each backbone's frozen probe
    table = (space / "report" / "results.md").read_text()
    for row in ("| scratch |", "| mae |", "| fourm |", "| generalist |"):
        assert row in table
    assert table.split("## Frozen-feature probe")[1].split("## ")[0].count("\n| ") == 5  # header + 4 backbones
    assert (space / "report" / "results.png").is_file()


def test_a_second_run_skips_every_finished_stage(finished, capsys):
    before = {p: p.stat().st_mtime for p in (finished / "procedural-0" / "transfer").iterdir()}
    capsys.readouterr()
    assert main(["run", "experiment=smoke", f"workspace_dir={finished}"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipped") >= 8  # collect, tokenizers, 2 pretrain, 4 transfer, deploy
    assert before == {p: p.stat().st_mtime for p in (finished / "procedural-0" / "transfer").iterdir()}


def test_a_transfer_made_with_another_default_is_made_again(finished, capsys):
    # As a transfer finished before transfer.layer_decay's default became 0.75 leaves it: same folder name
    # (the preset's overrides did not change), another value in its manifest's resolved config.
    (stale,) = (finished / "procedural-0" / "transfer").glob("fourm-*")  # the deployed specialist
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["config"]["transfer"]["layer_decay"] = 1.0
    (stale / "manifest.json").write_text(json.dumps(manifest))
    others = {p: p.stat().st_mtime for p in (finished / "procedural-0" / "transfer").iterdir() if p != stale}
    capsys.readouterr()
    assert main(["run", "experiment=smoke", f"workspace_dir={finished}"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "was made with other settings (transfer.layer_decay: 1.0 -> 0.75): running it again" in err
    assert json.loads((stale / "manifest.json").read_text())["config"]["transfer"]["layer_decay"] == 0.75
    assert others == {p: p.stat().st_mtime for p in others}  # the up-to-date ones were skipped
    assert len(list((finished / "procedural-0" / "deploy").iterdir())) == 2  # and it is deployed again


def test_unknown_backbone_in_an_experiment(tmp_path, capsys):
    assert main(["run", "experiment=smoke", f"workspace_dir={tmp_path}", "experiment.backbones=[clip]"]) != 0
    assert "experiment.backbones: 'clip'" in capsys.readouterr().err


def test_seed_pretraining_gives_every_seed_its_own_backbone(tmp_path):
    assert main(["run", "experiment=smoke", f"workspace_dir={tmp_path}",
                 "experiment.objectives=[mae]", "experiment.backbones=[mae]", "experiment.seeds=[0,1]",
                 "experiment.seed_pretraining=true", "experiment.deploy_backbone=null"]) == 0
    space = tmp_path / "procedural-0"
    pretrained = sorted(p.name.rsplit("-", 1)[0] for p in (space / "pretrain").iterdir())
    assert pretrained == ["mae-s0", "mae-s1"]
    seeds = [json.loads((p / "config.json").read_text())["pretrain"]["seed"] for p in sorted((space / "pretrain").iterdir())]
    assert seeds == [0, 1]
    backbones = {json.loads((p / "metrics.json").read_text())["seed"]: json.loads((p / "manifest.json").read_text())
                 for p in (space / "transfer").iterdir()}
    used = {seed: m["inputs"]["backbone"]["path"] for seed, m in backbones.items()}
    assert used[0] != used[1] and all(f"mae-s{seed}-" in path for seed, path in used.items())


def test_a_pretraining_killed_between_checkpoints_is_resumed_not_deleted(finished, capsys):
    workspace = finished  # a copy elsewhere would be another dataset (its identity holds the workspace path)
    (run,) = (workspace / "procedural-0" / "pretrain").glob("mae-*")
    # As a kill after step-2.ckpt and before last.ckpt and the export leaves it.
    for name in ("model.safetensors", "encoder.safetensors", "manifest.json", "checkpoints/last.ckpt"):
        (run / name).unlink()
    kept = (run / "checkpoints" / "step-000002.ckpt").read_bytes()
    capsys.readouterr()
    assert main(["run", "experiment=smoke", f"workspace_dir={workspace}"]) == 0
    assert f"resuming {run}" in capsys.readouterr().err.replace("\n", "")
    assert (run / "checkpoints" / "step-000002.ckpt").read_bytes() == kept  # the folder was not started over
    assert (run / "manifest.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()


def test_the_modalities_analysis_pretrains_each_set_as_its_own_row(tmp_path):
    """experiment=modalities at smoke sizes, two of its modality sets: each variant pretrains on its own
    modalities and is a row of its own in the table and the chart."""
    from omegaconf import OmegaConf

    from tst.config import config_root

    smoke = OmegaConf.load(config_root() / "experiment" / "smoke.yaml").experiment
    smoke.pretrain.append("pretrain.input_budget=16")  # the RGB-only set has 64 tokens: 16 in, 48 out
    lists = {key: "[" + ",".join(f'"{o}"' for o in smoke[key]) + "]" for key in ("collect", "pretrain", "transfer")}
    assert main(["run", "experiment=modalities", f"workspace_dir={tmp_path}", "tracking.enabled=false",
                 *[f"experiment.{key}={value}" for key, value in lists.items()],
                 "experiment.objectives=[rgb,no-depth]", "experiment.backbones=[rgb,no-depth,scratch]"]) == 0
    space = tmp_path / "procedural-0"
    modalities = {p.name.split("-")[0]: json.loads((p / "config.json").read_text())["pretrain"]["modalities"]
                  for p in (space / "pretrain").iterdir()}
    assert modalities == {"rgb": ["rgb"], "no": ["rgb", "normals", "edges"]}
    rows = {json.loads((p / "metrics.json").read_text())["backbone"] for p in (space / "transfer").iterdir()}
    assert rows == {"rgb", "no-depth", "scratch"}
    table = (space / "report" / "results.md").read_text()
    assert "| rgb |" in table and "| no-depth |" in table and (space / "report" / "results.png").is_file()


def test_editing_a_variant_names_a_new_pretraining_folder(tmp_path):
    """A finished pretraining is reused only for the same settings: a variant's own overrides are part of
    its folder's name, so changing them does not silently reuse the old run."""
    from tst.config import load
    from tst.orchestration.pipeline import Pipeline

    def folder(*extra):
        pipeline = Pipeline(load("run", ["experiment=modalities", f"workspace_dir={tmp_path}", *extra]))
        return pipeline.pretraining_dir("rgb", pipeline.overrides("pretrain"), ["data"], None)

    assert folder() == folder()
    assert folder() != folder('experiment.variants.rgb=["pretrain.objective=multimae","pretrain.modalities=[rgb]"]')
    assert folder().parent == tmp_path / "procedural-0" / "pretrain" and folder().name.startswith("rgb-")


def test_a_dataset_is_reused_when_its_content_would_be_the_same(tmp_path):
    """tst run keeps a finished dataset when the collect config would render the same frames: runtime keys
    (workers) and the folder key's old name (collect.out, before data_dir) do not matter; content keys and
    a missing split do."""
    from omegaconf import OmegaConf

    from tst.config import load
    from tst.orchestration.pipeline import _same_dataset

    def config(*extra):
        return load("collect", [f"workspace_dir={tmp_path}", *extra])

    stored = OmegaConf.to_container(config(), resolve=True)
    assert _same_dataset(stored, config("collect.workers=1"))
    assert _same_dataset(stored | {"collect": stored["collect"] | {"out": None}}, config())
    assert not _same_dataset(stored, config("collect.frames.eval=7"))
    only_eval = OmegaConf.to_container(config("collect.splits=[eval]"), resolve=True)
    assert not _same_dataset(only_eval, config()) and _same_dataset(stored, config("collect.splits=[eval]"))


def test_held_out_spaces_score_every_transfer_and_the_report_shows_the_gap(tmp_path):
    """experiment.held_out at smoke sizes: the held-out space's eval split is collected on its own, every
    transfer is also scored there, and the report has the specialization table and figure."""
    assert main(["run", "experiment=smoke", f"workspace_dir={tmp_path}", "tracking.enabled=false",
                 "experiment.objectives=[mae]", "experiment.backbones=[mae,scratch]", "experiment.deploy_backbone=null",
                 'experiment.held_out=[["space.seed=5"]]']) == 0
    held_out = tmp_path / "procedural-5" / "data"
    assert json.loads((held_out / "manifest.json").read_text())["config"]["collect"]["splits"] == ["eval"]
    assert not (held_out / "pretrain").exists()
    for run in (tmp_path / "procedural-0" / "transfer").iterdir():
        scores = json.loads((run / "metrics.json").read_text())["held_out"]
        assert list(scores) == ["procedural-5"] and 0 <= scores["procedural-5"]["seg_miou"] <= 1
    report = tmp_path / "procedural-0" / "report"
    table = (report / "results.md").read_text()
    assert "## Specialization" in table and "| procedural-0 (test) | procedural-5 | gap |" in table
    assert (report / "specialization.png").is_file()


def test_the_test_space_cannot_be_held_out(tmp_path, capsys):
    assert main(["run", "experiment=smoke", f"workspace_dir={tmp_path / 'ws'}", 'experiment.held_out=[["space.seed=0"]]']) != 0
    assert "experiment.held_out[0]: procedural-0 is the test space" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_an_unknown_objective_names_the_variants(tmp_path, capsys):
    assert main(["run", "experiment=modalities", f"workspace_dir={tmp_path}", "experiment.objectives=[rgb,depth]"]) != 0
    assert "experiment.objectives[1]: 'depth' is neither an objective" in capsys.readouterr().err


def test_a_bad_variant_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["run", "experiment=modalities", f"workspace_dir={tmp_path / 'ws'}",
                 'experiment.variants.rgb=["pretrain.init=bogus"]']) != 0
    assert "experiment.variants.rgb: pretrain.init: expected null or 4m21-b or a tst pretrain run folder, got 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_a_tradeoff_run_mixes_other_spaces_into_pretraining_and_draws_the_curve(tmp_path):
    """experiment.external at smoke sizes: the other space is collected once with both splits (held out and
    external), a variant pretrains on half its frames from it, every transfer records how its backbone drew
    its frames, and the report has the trade-off table and figure."""
    variant = '"pretrain.objective=mae","pretrain.test_space_share=0.5","pretrain.external=[procedural-5/data]"'
    assert main(["run", "experiment=smoke", f"workspace_dir={tmp_path}", "tracking.enabled=false",
                 "experiment.objectives=[mae,mixed]", "experiment.backbones=[mae,mixed,scratch]",
                 f"+experiment.variants.mixed=[{variant}]",
                 "experiment.deploy_backbone=null", "experiment.probe=false",
                 'experiment.held_out=[["space.seed=5"]]', 'experiment.external=[["space.seed=5"]]']) == 0
    other = json.loads((tmp_path / "procedural-5" / "data" / "manifest.json").read_text())
    assert other["config"]["collect"]["splits"] == ["eval", "pretrain"]
    runs = {json.loads((run / "metrics.json").read_text())["backbone"]: json.loads((run / "metrics.json").read_text())
            for run in (tmp_path / "procedural-0" / "transfer").iterdir()}
    assert runs["mixed"]["pretrain_data"] == {"objective": "mae", "test_space_share": 0.5,
                                              "external": ["procedural-5/data"], "frames": None}
    assert runs["mae"]["pretrain_data"]["test_space_share"] == 1.0 and runs["scratch"]["pretrain_data"] is None
    report = tmp_path / "procedural-0" / "report"
    table = (report / "results.md").read_text()
    assert "## Trade-off" in table and "| mixed | 0.5 | procedural-5 |" in table
    assert (report / "tradeoff.png").is_file() and not (report / "data_worth.png").exists()


def test_a_variant_must_name_a_collected_external_space(tmp_path, capsys):
    assert main(["run", "experiment=tradeoff", f"workspace_dir={tmp_path / 'ws'}", "experiment.external=[]"]) != 0
    assert ("experiment.variants.mixed-0.5: pretrain.external names procedural-11/data, which this experiment does "
            "not collect") in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()
