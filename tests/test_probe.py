"""`tst transfer probe`: the closed-form frozen-feature probe and its table in the report."""

import json

import torch

from tst.orchestration.cli import main
from tst.transfer.probe import RidgeProbe, patch_labels, patch_scores

from conftest import collect_small


def test_patch_labels_are_each_patch_majority_class():
    semantic = torch.zeros(1, 4, 4, dtype=torch.long)
    semantic[0, :2, :2] = 3           # top-left patch: all 3
    semantic[0, :2, 2:] = 5
    semantic[0, 0, 2] = 1             # top-right patch: three 5s and one 1
    semantic[0, 2:, :] = 2
    assert patch_labels(semantic, 2).tolist() == [3, 5, 2, 2]
    assert patch_labels(torch.full((1, 5, 5), 4), 2).tolist() == [4, 4, 4, 4]  # 5 px resized to 4


def test_the_ridge_probe_reads_classes_that_the_features_encode_and_not_noise():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(1, 6, (600,), generator=generator)
    encoded = torch.nn.functional.one_hot(labels, 6).double() * 3 + torch.randn(600, 6, generator=generator, dtype=torch.float64)
    noise = torch.randn(600, 6, generator=generator, dtype=torch.float64)
    fit, test = slice(0, 400), slice(400, 600)
    informed = RidgeProbe.fit(encoded[fit], labels[fit], 6, 1.0)
    blind = RidgeProbe.fit(noise[fit], labels[fit], 6, 1.0)
    assert patch_scores(informed.predict(encoded[test]), labels[test])["patch_miou"] > 0.8
    assert patch_scores(blind.predict(noise[test]), labels[test])["patch_miou"] < 0.3


def test_patch_scores_leave_out_unlabeled_patches():
    truth = torch.tensor([0, 0, 1, 1, 2])
    scores = patch_scores(torch.tensor([2, 2, 1, 1, 2]), truth)
    assert scores["patch_accuracy"] == 1.0 and abs(scores["patch_miou"] - (1.0 + 1 / 3) / 2) < 1e-9


def test_tst_transfer_probe_writes_its_scores(tmp_path, capsys):
    collect_small(tmp_path, 4, 4, 6, 32)
    assert main(["transfer", "probe", f"workspace_dir={tmp_path}", "model.dim=32", "model.encoder_depth=1",
                 "model.heads=2", "model.image_size=32", "tracking.enabled=false", "run_name=random"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = tmp_path / "procedural-0" / "probe" / "random"
    stored = json.loads((run / "probe.json").read_text())
    assert stored == printed and (run / "manifest.json").is_file()
    assert stored["backbone"] == "scratch" and stored["fit_frames"] == 3 and stored["held_out_frames"] == 3
    assert stored["patches_per_frame"] == 16  # 32 px, patch 8
    for where in ("in_domain", "test_space"):
        assert 0 <= stored[where]["patch_miou"] <= 1 and 0 < stored[where]["patch_accuracy"] <= 1
    assert abs(stored["gap"] - (stored["in_domain"]["patch_miou"] - stored["test_space"]["patch_miou"])) < 1e-12
