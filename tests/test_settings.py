"""Settings checked at compose time: every bad value is one line naming the key, the value and what was
expected, before anything is written; every shipped preset passes; label maps and collect plans that used
to fail late or block the corrected command."""

import json

import pytest
import trimesh

from tst.orchestration.cli import main
from tst.config import config_root, groups, load, stages
from tst.orchestration.pipeline import Pipeline

from conftest import collect_small

# (command and overrides, the key the error names, what it says it got)
BAD_SETTINGS = [
    (["pretrain", "pretrain.steps=abc"], "pretrain.steps", "got 'abc'"),
    (["pretrain", "pretrain.steps=-1"], "pretrain.steps", "got -1"),
    (["pretrain", "pretrain.steps=0"], "pretrain.steps", "got 0"),
    (["pretrain", "pretrain.steps=2.5"], "pretrain.steps", "got 2.5"),
    (["pretrain", "data.batch_size=0"], "data.batch_size", "got 0"),
    (["pretrain", "model.patch=7"], "model.patch (7)", "got 64"),
    (["pretrain", "model.heads=3"], "model.heads", "got 3"),
    (["pretrain", "model.image_size=100000"], "model.image_size", "at most 2048"),
    (["pretrain", "pretrain.lr=0"], "pretrain.lr", "got 0"),
    (["pretrain", "pretrain.warmup_steps=-5"], "pretrain.warmup_steps", "got -5"),
    (["pretrain", "pretrain.checkpoint_every=0"], "pretrain.checkpoint_every", "got 0"),
    (["pretrain", "pretrain.image_every=0"], "pretrain.image_every", "got 0"),
    (["pretrain", "pretrain.log_every=-1"], "pretrain.log_every", "got -1"),
    (["pretrain", "pretrain.objective=simclr"], "pretrain.objective", "got 'simclr'"),
    (["pretrain", "pretrain.mae_mask_ratio=1.0"], "pretrain.mae_mask_ratio", "got 1.0"),
    (["pretrain", "data.crop_scale=[0.9,0.5]"], "data.crop_scale", "got [0.9, 0.5]"),
    (["pretrain", "data.crop_scale=[0,1]"], "data.crop_scale", "got [0, 1]"),
    (["pretrain", "data.num_workers=-1"], "data.num_workers", "got -1"),
    (["pretrain", "tokenizers", "pretrain.tokenizer.steps=0"], "pretrain.tokenizer.steps", "got 0"),
    (["collect", "collect.size=100000"], "collect.size", "at most 2048"),
    (["collect", "collect.frames.pretrain=1e12"], "collect.frames.pretrain", "at most 1000000"),
    (["collect", "collect.frames.eval=2000000"], "collect.frames.eval", "got 2000000"),
    (["collect", "collect.rgb_format=webp"], "collect.rgb_format", "got 'webp'"),
    (["collect", "collect.workers=-2"], "collect.workers", "got -2"),
    (["collect", "collect.shard_size=0"], "collect.shard_size", "got 0"),
    (["transfer", "transfer.mode=half"], "transfer.mode", "got 'half'"),
    (["transfer", "transfer.seg_head=mlp"], "transfer.seg_head", "got 'mlp'"),
    (["transfer", "transfer.steps=0"], "transfer.steps", "got 0"),
    (["transfer", "transfer.fraction=1.5"], "transfer.fraction", "got 1.5"),
    (["transfer", "transfer.lr=-1"], "transfer.lr", "got -1"),
    (["transfer", "transfer.warmup_steps=-1"], "transfer.warmup_steps", "got -1"),
    (["transfer", "data.batch_size=abc"], "data.batch_size", "got 'abc'"),
    (["transfer", "transfer.det.pyramid=[1,2]"], "transfer.det.pyramid", "got [1, 2]"),
    (["transfer", "transfer.det.pyramid=[8,4]"], "transfer.det.pyramid", "got [8, 4]"),
    (["transfer", "transfer.wise_alpha=1.5"], "transfer.wise_alpha", "got 1.5"),
    (["deploy", "deploy.steps=0"], "deploy.steps", "got 0"),
    (["run", "experiment.fractions=[0.1,2]"], "experiment.fractions[1]", "got 2"),
    (["run", "experiment.collect=[\"collect.size=100000\"]"], "collect.size", "got 100000"),
    (["run", "experiment.pretrain=[\"pretrain.steps=-1\"]"], "pretrain.steps", "got -1"),
]


def one_error_line(args, tmp_path, capsys) -> str:
    """Run `tst args` into a fresh workspace; assert it failed with one stderr line and wrote nothing."""
    code = main([*args, f"workspace_dir={tmp_path / 'ws'}", "tracking.enabled=false"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "error" in lines[0], lines
    assert not (tmp_path / "ws").exists()
    return lines[0]


@pytest.mark.parametrize("args, key, got", BAD_SETTINGS, ids=[" ".join(a) for a, *_ in BAD_SETTINGS])
def test_bad_setting_is_one_line_naming_key_and_value(args, key, got, tmp_path, capsys):
    line = one_error_line(args, tmp_path, capsys)
    assert key in line and got in line and "expected" in line, line


PRESETS = sorted(path.stem for path in (config_root() / "experiment").glob("*.yaml"))  # every shipped preset


@pytest.mark.parametrize("preset", PRESETS)
def test_every_shipped_preset_passes(preset):
    cfg = load("run", [f"experiment={preset}"])  # composes each stage's list too
    pipeline, e = Pipeline(cfg), cfg.experiment
    for objective in e.objectives:
        load("pretrain", pipeline.overrides("pretrain") + pipeline.pretraining_overrides(objective))
    for fraction in e.fractions:
        load("transfer", pipeline.overrides("transfer") + [f"transfer.fraction={fraction}"])
    for stage in ("collect", "deploy", "report"):
        load(stage, pipeline.overrides(stage))


@pytest.mark.parametrize("stage", ["collect", "pretrain", "transfer", "deploy", "report", "spaces", "bench"])
def test_every_stage_default_passes(stage):
    load(stage)


@pytest.mark.parametrize("stage", stages())
def test_every_config_group_option_composes_for_every_stage_that_has_the_group(stage):
    """Every option of every config group (model=s, trainer=fsdp, space=thor, ...) composes and passes
    the rules in each stage that has that group; the presets are covered by the test above."""
    has = load(stage)
    composed = 0
    for group, options in groups().items():
        if group in has and group != "experiment":
            for option in options:
                load(stage, [f"{group}={option}"])
                composed += 1
    assert composed >= 1


def room_scene(tmp_path):
    room = trimesh.creation.box((6.0, 5.0, 2.6))
    room.invert()
    scene = trimesh.Scene()
    scene.add_geometry(room, node_name="Room_walls", geom_name="room_mesh")
    scene.add_geometry(trimesh.creation.box((0.5, 0.5, 0.9)), node_name="Chair", geom_name="chair_mesh")
    path = tmp_path / "room.glb"
    scene.export(path)
    return path


@pytest.mark.parametrize("label_map, message", [
    ("match:\n  'sofa*': sofa\n  '*lamp*': table lamp\n",
     "no part of room.glb matches any 'match' pattern (sofa*, *lamp*); part names seen: Chair, Room_walls"),
    ("face_class: label\nface_class_names: 5\n", "face_class_names: expected a list of class names"),
    ("face_class: 3\n", "face_class: expected the name of a PLY face property, got 3"),
], ids=["patterns-match-nothing", "face_class_names-not-a-list", "face_class-not-a-name"])
def test_bad_label_map_is_one_line_naming_the_file(label_map, message, tmp_path, capsys):
    labels = tmp_path / "labels.yaml"
    labels.write_text(label_map)
    line = one_error_line(["collect", "space=mesh", f"space.path={room_scene(tmp_path)}", f"space.labels={labels}"],
                          tmp_path, capsys)
    assert str(labels) in line and message in line, line


def test_collect_refused_while_planning_leaves_no_folder(tmp_path, capsys):
    assert main(["collect", f"workspace_dir={tmp_path / 'ws'}", "tracking.enabled=false", "collect.transfer_spaces=[0]",
                 "collect.frames.pretrain=2", "collect.frames.eval=2", "collect.frames.transfer=2"]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "is the test space itself" in errors[0], errors
    assert not (tmp_path / "ws").exists()


def test_a_plan_without_rendered_frames_does_not_block_the_corrected_command(tmp_path):
    data = tmp_path / "procedural-0" / "data"
    data.mkdir(parents=True)
    (data / "plan.json").write_text(json.dumps({"identity": "another-config", "plan": {}}))
    collect_small(tmp_path, 2, 2, 0, 16)
    assert (data / "manifest.json").is_file()
    assert json.loads((data / "plan.json").read_text())["identity"] != "another-config"
