"""Photometric augmentation of transfer frames (transfer.color_jitter) and the captions it must not corrupt."""

import json

import torch

from tst.orchestration.cli import main
from tst.transfer.photometric import COLOURS_KEPT, ColourJitter

from conftest import TINY_MODEL, collect_small


def test_colour_jitter_changes_about_its_share_of_frames_and_marks_them():
    rgb = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    jitter = ColourJitter(lambda sample: sample, strength=0.4, share=0.5)
    torch.manual_seed(0)
    samples = [jitter({"rgb": rgb.clone()}) for _ in range(200)]
    kept = [bool(s[COLOURS_KEPT]) for s in samples]
    assert 70 < sum(kept) < 130
    for sample, was_kept in zip(samples, kept):
        assert torch.equal(sample["rgb"], rgb) == was_kept
        assert 0.0 <= float(sample["rgb"].min()) and float(sample["rgb"].max()) <= 1.0
    torch.manual_seed(0)
    again = [jitter({"rgb": rgb.clone()}) for _ in range(200)]
    assert all(torch.equal(a["rgb"], b["rgb"]) for a, b in zip(samples, again))  # seeded: reproducible


def test_caption_loss_learns_only_from_frames_whose_colours_were_kept():
    from tst.transfer.captioning import Vocabulary
    from tst.transfer.tasks import CaptionTask

    captions = ["a grey sofa.", "a red bed.", "a blue lamp."]
    task = CaptionTask(Vocabulary.build(captions + ["a green chair."]), beam=1, max_length=8)
    head = task.build_head(16).eval()  # no dropout: the losses below are compared exactly
    features = torch.randn(3, 16, 2, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    kept = torch.tensor([True, False, True])
    masked = task.loss(head, features, {"caption": captions, COLOURS_KEPT: kept})
    alone = task.loss(head, features[kept], {"caption": [captions[0], captions[2]]})
    assert torch.allclose(masked, alone)
    relabelled = task.loss(head, features, {"caption": ["a grey sofa.", "a green chair.", "a blue lamp."],
                                            COLOURS_KEPT: kept})
    assert torch.allclose(masked, relabelled)  # the jittered frame's caption is not read
    everything = task.loss(head, features, {"caption": captions})
    assert not torch.allclose(masked, everything)
    none_kept = task.loss(head, features, {"caption": captions, COLOURS_KEPT: torch.zeros(3, dtype=torch.bool)})
    none_kept.backward()
    assert float(none_kept.detach()) == 0.0 and features.grad is not None


def test_transfer_with_colour_jitter_end_to_end(tmp_path, capsys):
    collect_small(tmp_path, 4, 4, 8, 32)
    common = ["transfer", f"workspace_dir={tmp_path}", *TINY_MODEL, "transfer.steps=2", "transfer.task=[seg,caption]"]
    assert main([*common, "transfer.color_jitter=0.4", "run_name=jitter"]) == 0
    metrics = json.loads((tmp_path / "procedural-0" / "transfer" / "jitter" / "metrics.json").read_text())
    assert "seg_miou" in metrics and "caption_cider_d" in metrics
    capsys.readouterr()
    assert main([*common, "transfer.color_jitter=1.5", "run_name=too-much"]) != 0
    assert "transfer.color_jitter" in capsys.readouterr().err
