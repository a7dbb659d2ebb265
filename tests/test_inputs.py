"""Inputs read back from disk without being trusted (issue 12, section 3): a corrupt sample inside an
intact shard, broken plan / manifest files, truncated or missing weights, and tampered deploy
exports are each a one-line error naming the file, and leave nothing half-written behind."""

from __future__ import annotations

import json
import os
import shutil
import tarfile

import pytest

from conftest import TINY_MODEL, tiny_runs
from tst.orchestration.cli import main

BUDGETS = ["pretrain.input_budget=8", "pretrain.target_budget=8"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A tiny dataset, a finished pretraining run, a transfer run on it and the transfer run's ONNX export."""
    workspace = tmp_path_factory.mktemp("inputs")
    _, transferred = tiny_runs(workspace, "[seg,caption]")
    assert main(["deploy", "export", f"workspace_dir={workspace}", f"deploy.model={transferred}",
                 "deploy.tasks=[seg,caption]", f"deploy.export_dir={workspace / 'export'}", "deploy.export_frames=1",
                 "tracking.enabled=false"]) == 0
    return workspace


def one_error_line(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1, errors
    print(errors[0])  # shown with pytest -s
    return errors[0]


def tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def copy_data(ws, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(ws / "procedural-0" / "data", copy)
    return copy


def corrupt_member(shard, index: int = 0) -> str:
    """Overwrite the bytes of member `index` of a tar in place (the tar itself stays intact); its key."""
    with tarfile.open(shard) as tar:
        info = tar.getmembers()[index]
    with open(shard, "r+b") as handle:
        handle.seek(info.offset_data)
        handle.write(os.urandom(info.size))
    return info.name.split(".", 1)[0]


# -- 1. a corrupt sample inside an intact shard ---------------------------------------------------------

def test_pretraining_on_a_corrupt_png_names_shard_key_and_modality(ws, tmp_path, capsys):
    data = copy_data(ws, tmp_path)
    shard = data / "pretrain" / "rgb" / "shard-000000.tar"
    key = corrupt_member(shard, 1)
    runs = ws / "procedural-0" / "pretrain"
    before = tree(runs)
    capsys.readouterr()
    assert main(["pretrain", f"data_dir={data}", "pretrain.steps=2", "run_name=corrupt", f"workspace_dir={ws}",
                 *BUDGETS, *TINY_MODEL]) != 0
    line = one_error_line(capsys)
    assert str(shard) in line and key in line and "(rgb)" in line and "data.skip_corrupt=true" in line
    assert tree(runs) == before  # the refused run's folder is removed


def test_corrupt_samples_raise_or_are_skipped_by_both_readers(ws, tmp_path):
    from tst.collect.dataset import CorruptSample, FrameDataset, ShardStream

    data = copy_data(ws, tmp_path)
    shard = data / "pretrain" / "depth" / "shard-000000.tar"
    key = corrupt_member(shard, 0)
    frames = FrameDataset(data, "pretrain", ["rgb", "depth"])
    bad = next(i for i, (k, _) in enumerate(frames.index) if k == key)
    with pytest.raises(CorruptSample, match=f"shard-000000.tar: sample '{key}' \\(depth\\) does not decode"):
        frames[bad]
    with pytest.raises(CorruptSample, match=key):
        list(ShardStream(data, "pretrain", ["rgb", "depth"]))

    frames = FrameDataset(data, "pretrain", ["rgb", "depth"], skip_corrupt=True)
    with pytest.warns(UserWarning, match=key):
        substitute = frames[bad]
    assert substitute["key"] != key and substitute["depth"].shape[0] == 1
    with pytest.warns(UserWarning, match=key):
        keys = [s["key"] for s in ShardStream(data, "pretrain", ["rgb", "depth"], skip_corrupt=True)]
    assert key not in keys and len(keys) == len(frames) - 1


# -- 2. broken plan, manifests and weights --------------------------------------------------------------

def test_a_broken_plan_json_is_named(ws, tmp_path, capsys):
    data = copy_data(ws, tmp_path)
    (data / "plan.json").write_text('{"identity": "x", "plan": {')
    before = tree(data)
    capsys.readouterr()
    assert main(["collect", f"data_dir={data}", f"workspace_dir={ws}", "collect.frames.pretrain=8",
                 "collect.frames.eval=4", "collect.frames.transfer=4", "collect.transfer_spaces=[1]",
                 "collect.size=32", "collect.workers=1", "tracking.enabled=false"]) != 0
    line = one_error_line(capsys)
    assert f"{data / 'plan.json'}: not valid JSON" in line and "camera plan" in line
    assert tree(data) == before


@pytest.mark.parametrize("text, message", [('{"stage": "collect"}', "no 'outputs' object"),
                                           ('{"stage": "coll', "not valid JSON")])
def test_a_dataset_manifest_without_outputs_is_named(ws, tmp_path, capsys, text, message):
    data = copy_data(ws, tmp_path)
    (data / "manifest.json").write_text(text)
    runs = ws / "procedural-0" / "pretrain"
    before = tree(runs)
    capsys.readouterr()
    assert main(["pretrain", f"data_dir={data}", "pretrain.steps=1", "run_name=nomanifest", f"workspace_dir={ws}",
                 *BUDGETS, *TINY_MODEL]) != 0
    line = one_error_line(capsys)
    assert f"{data / 'manifest.json'}: {message}" in line
    assert tree(runs) == before


def _run_copy(ws, name):
    run = ws / "procedural-0" / "pretrain" / name
    shutil.copytree(ws / "procedural-0" / "pretrain" / "mm", run)
    return run


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncated_model(run):
    _truncate(run / "model.safetensors")
    return f"{run / 'model.safetensors'}: truncated or not a safetensors file"


def _no_weights(run):
    (run / "model.safetensors").unlink()
    shutil.rmtree(run / "checkpoints")
    return f"{run}: no weights (neither model.safetensors nor a complete checkpoint in checkpoints/)"


@pytest.mark.parametrize("damage", [_truncated_model, _no_weights])
def test_predict_names_a_run_with_broken_or_missing_weights(ws, capsys, damage):
    run = _run_copy(ws, damage.__name__.strip("_"))
    message = damage(run)
    before = tree(ws)
    capsys.readouterr()
    assert main(["pretrain", "predict", f"ckpt={run}", "predict_frames=2", f"workspace_dir={ws}"]) != 0
    assert message in one_error_line(capsys)
    assert tree(ws) == before


def test_a_truncated_encoder_safetensors_is_named(ws, capsys):
    run = _run_copy(ws, "truncated-encoder")
    _truncate(run / "encoder.safetensors")
    before = tree(ws)
    capsys.readouterr()
    assert main(["transfer", f"transfer.backbone={run}", "transfer.steps=1", "run_name=from-truncated",
                 f"workspace_dir={ws}", *TINY_MODEL]) != 0
    line = one_error_line(capsys)
    assert f"{run / 'encoder.safetensors'}: truncated or not a safetensors file" in line
    assert tree(ws) == before


def test_a_truncated_tokenizer_is_named(ws, tmp_path):
    from tst.errors import TSTError
    from tst.pretrain.run import load_tokenizers
    from tst.workspace import fingerprint, write_manifest

    data = ws / "procedural-0" / "data"
    tokenizers = tmp_path / "tokenizers"
    tokenizers.mkdir()
    write_manifest(tokenizers, "tokenizers", {}, {}, {"dataset_fingerprint": fingerprint(data), "dataset": str(data),
                                                       "patch": 8, "modalities": ["rgb"], "levels": [4, 4],
                                                       "hidden": 16})
    (tokenizers / "rgb.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(TSTError, match="rgb.safetensors: truncated or not a safetensors file") as error:
        load_tokenizers(tokenizers, data, ["rgb"], 8)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    ("{{garbage", "config.json: not valid JSON"),
    ("{}", "config.json: no 'model.patch'; expected the config of a tst pretrain run"),
])
def test_a_broken_pretraining_config_is_named_by_every_reader(ws, capsys, content, message):
    run = _run_copy(ws, f"broken-config-{len(content)}")
    (run / "config.json").write_text(content)
    before = tree(ws)
    for command in (["transfer", f"transfer.backbone={run}", "transfer.steps=1", *TINY_MODEL],
                    ["pretrain", f"resume={run}"], ["pretrain", "predict", f"ckpt={run}", "predict_frames=2"]):
        capsys.readouterr()
        assert main([*command, f"workspace_dir={ws}"]) != 0
        assert message in one_error_line(capsys), command
    assert tree(ws) == before


def test_a_broken_tasks_json_is_named(ws, tmp_path, capsys):
    (transferred,) = (ws / "procedural-0" / "transfer").iterdir()
    copy = tmp_path / "transfer-copy"
    shutil.copytree(transferred, copy)
    (copy / "tasks.json").write_text("garbage{")
    capsys.readouterr()
    assert main(["deploy", f"deploy.model={copy}", "deploy.tasks=[seg]", "deploy.steps=1",
                 f"workspace_dir={ws}", "tracking.enabled=false"]) != 0
    assert f"{copy / 'tasks.json'}: not valid JSON" in one_error_line(capsys)


# -- 3. deploy exports ----------------------------------------------------------------------------------

def _random_dense(folder):
    (folder / "dense.onnx").write_bytes(os.urandom(4096))


def _no_caption(folder):
    (folder / "caption-greedy.onnx").unlink()


def _caption_over_dense(folder):
    shutil.copyfile(folder / "caption-greedy.onnx", folder / "dense.onnx")


@pytest.mark.parametrize("tamper, file, message", [(_random_dense, "dense.onnx", "does not match the export manifest"),
                                                   (_no_caption, "caption-greedy.onnx", "missing"),
                                                   (_caption_over_dense, "dense.onnx",
                                                    "does not match the export manifest")])
def test_onnx_runtime_checks_the_export_manifest(ws, tmp_path, capsys, tamper, file, message):
    folder = tmp_path / "export"
    shutil.copytree(ws / "export", folder)
    tamper(folder)
    before = tree(ws)
    capsys.readouterr()
    assert main(["deploy", f"workspace_dir={ws}", f"deploy.model={ws / 'procedural-0' / 'transfer' / 'multi'}",
                 "deploy.tasks=[seg,caption]", "deploy.runtime=onnx", f"deploy.export_dir={folder}", "deploy.steps=1",
                 "tracking.enabled=false"]) != 0
    line = one_error_line(capsys)
    assert f"{folder / file}: {message}" in line and "re-run tst deploy export" in line
    assert tree(ws) == before


def test_an_export_of_another_format_is_refused(ws, tmp_path):
    from tst.deploy.export import check_export
    from tst.errors import TSTError

    folder = tmp_path / "export"
    shutil.copytree(ws / "export", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["outputs"]["format"]  # as exports made before the format was recorded
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TSTError, match="export format None, this tst reads format 4; re-run tst deploy export"):
        check_export(folder, ws / "procedural-0" / "transfer" / "multi", ["dense.onnx"])


def test_an_export_of_another_model_is_refused(ws, tmp_path):
    from tst.deploy.export import check_export
    from tst.errors import TSTError

    folder = tmp_path / "export"
    shutil.copytree(ws / "export", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inputs"]["model"]["fingerprint"] = "0" * 16
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TSTError, match="made from another model"):
        check_export(folder, ws / "procedural-0" / "transfer" / "multi", ["dense.onnx"])
