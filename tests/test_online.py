"""Online TST: continuing a pretraining run (`pretrain.init=<run>`), the agent's observations as a dataset,
one refit swapped into the loop, and `tst deploy deploy.online=true` end to end."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tst.orchestration.cli import main
from tst.config import load

from conftest import TINY_MODEL, tiny_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(workspace, pretraining run, a transfer run of it) of a tiny 32-px space."""
    workspace = tmp_path_factory.mktemp("online")
    pretrained, _ = tiny_runs(workspace)
    assert main(["transfer", "transfer.task=[seg,det,caption]", "transfer.steps=1", f"transfer.backbone={pretrained}",
                 "run_name=specialist", "transfer.caption.max_words=8", f"workspace_dir={workspace}", *TINY_MODEL]) == 0
    return workspace, pretrained, workspace / "procedural-0" / "transfer" / "specialist"


def _distance(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_pretraining_continues_the_weights_of_another_run(runs):
    workspace, pretrained, _ = runs
    common = [f"workspace_dir={workspace}", *TINY_MODEL, "pretrain.steps=1", "pretrain.input_budget=8",
              "pretrain.target_budget=8", "pretrain.seed=1"]  # another seed: another initialization
    assert main(["pretrain", f"pretrain.init={pretrained}", "run_name=continued", *common]) == 0
    assert main(["pretrain", "run_name=fresh", *common]) == 0
    before = load_file(str(pretrained / "model.safetensors"))
    space = workspace / "procedural-0" / "pretrain"
    continued, fresh = (load_file(str(space / name / "model.safetensors")) for name in ("continued", "fresh"))
    assert _distance(continued, before) < 0.1 * _distance(fresh, before)


def test_continuing_a_run_of_another_objective_is_refused(runs, capsys):
    workspace, pretrained, _ = runs
    assert main(["pretrain", f"workspace_dir={workspace}", *TINY_MODEL, "pretrain.objective=mae", "pretrain.steps=1",
                 f"pretrain.init={pretrained}", "run_name=other"]) != 0
    error = capsys.readouterr().err
    assert "pretrain.init" in error and "pretrain.objective=multimae" in error


def test_deploy_online_is_a_switch():
    online = load("deploy", ["deploy.online=true", "deploy.online.every=7"]).deploy.online
    assert online.enabled is True and online.every == 7 and online.pretrain_steps == 100
    with pytest.raises(Exception, match="deploy.online.observation_share"):
        load("deploy", ["deploy.online.observation_share=0"])


def _online(workspace, transfer_run, every: int):
    """An OnlineTST over the tiny model, and the render process of a path storing its sensor modalities."""
    from tst.deploy.observations import RenderProcess
    from tst.deploy.online import OnlineSettings, OnlineTST
    from tst.deploy.predictor import Predictor
    from tst.deploy.run import path_settings

    cfg = load("deploy", [f"workspace_dir={workspace}", f"deploy.model={transfer_run}", "tracking.enabled=false"])
    frozen = Predictor.from_run(transfer_run)
    online = OnlineTST(OnlineSettings(every, 2, 0.5, 1, 1), frozen, workspace / "online-test", Predictor.from_run,
                       "procedural-0", {})
    renderer = RenderProcess(path_settings(cfg, frozen.image_size, 2 * every, online.modalities))
    return online, frozen, renderer


def test_observations_land_as_a_dataset_and_a_refit_is_swapped_in(runs):
    from tst.collect.dataset import FrameDataset

    workspace, pretrained, transfer_run = runs
    online, frozen, renderer = _online(workspace, transfer_run, every=3)
    live, observations = frozen, []
    try:
        for step in range(3):
            renderer.submit(step)
            observations.append(renderer.get())
        for step, observation in enumerate(observations):
            live = online.after_step(step, observation, live(observation.rgb), (), live) or live
        folder = online.shards.folder
        frames = FrameDataset(folder, "pretrain", ["rgb", "depth", "normals", "edges"])
        assert len(frames) == 3 and frames[0]["rgb"].shape == (3, 32, 32)
        assert "semantic" not in json.loads((folder / "manifest.json").read_text())["outputs"]["modalities"]
        deadline, step = time.monotonic() + 300, 3
        while live is frozen and time.monotonic() < deadline:  # the agent walks on while the refit runs
            observation = observations[step % 3]
            live = online.after_step(step, observation, live(observation.rgb), (), live) or live
            step += 1
            time.sleep(0.05)
        live = online.after_step(step, observations[0], live(observations[0].rgb), (), live) or live  # one step on it
    finally:
        summary = online.close()
        renderer.close()
    assert live is not frozen, "the refit did not land within 300 s"
    swap = summary["swaps"][0]
    assert swap["observations"] == 3 and swap["swapped_step"] == summary["segments"][1]["first_step"]
    refit = json.loads((Path(swap["pretrain_run"]) / "manifest.json").read_text())
    assert refit["config"]["pretrain"]["init"] == str(pretrained)
    assert any(key.startswith("external/") for key in refit["inputs"])
    before, after = (dict(p.module.state_dict()) for p in (frozen, live))
    assert any(not torch.equal(before[k], after[k]) for k in before), "the swapped-in specialist has new weights"
    assert set(summary["segments"][0]) >= {"live", "frozen"} and "seg_miou" in summary["segments"][1]["frozen"]
    assert np.isfinite(swap["eval"]["seg_miou"])


def test_deploy_online_writes_observations_and_reports_them(runs):
    workspace, _, transfer_run = runs
    assert main(["deploy", f"workspace_dir={workspace}", f"deploy.model={transfer_run}", "deploy.steps=6",
                 "deploy.online=true", "deploy.online.every=3", "deploy.online.pretrain_steps=1",
                 "deploy.online.transfer_steps=1", "run_name=walk", "tracking.enabled=false"]) == 0
    out = workspace / "procedural-0" / "deploy" / "walk"
    summary = json.loads((out / "report.json").read_text())["online_tst"]
    assert summary["observations"] == 6 and summary["every"] == 3
    assert (out / "online.png").is_file()
    manifest = json.loads((workspace / "procedural-0" / "online" / "walk" / "observations" / "manifest.json").read_text())
    assert manifest["outputs"]["origin"] == "agent" and manifest["outputs"]["splits"]["pretrain"]["frames"] == 6


def test_online_needs_a_pretrained_backbone(tmp_path, capsys):
    from conftest import collect_small

    collect_small(tmp_path, 8, 4, 4, 32)
    common = [f"workspace_dir={tmp_path}", *TINY_MODEL]
    assert main(["transfer", "transfer.task=[seg,det,caption]", "transfer.steps=1", "run_name=scratch",
                 "transfer.caption.max_words=8", *common]) == 0
    model = tmp_path / "procedural-0" / "transfer" / "scratch"
    assert main(["deploy", f"workspace_dir={tmp_path}", f"deploy.model={model}", "deploy.steps=2",
                 "deploy.online=true", "tracking.enabled=false"]) != 0
    assert "no tst pretrain backbone (scratch)" in capsys.readouterr().err
