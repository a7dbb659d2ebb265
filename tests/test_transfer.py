"""The transfer stage (segmentation slice): metric, head, a run end to end, bad input."""

import json

import pytest
import torch

from tst.orchestration.cli import main
from tst.transfer.backbones import ScratchViT
from tst.layers import ModelConfig
from tst.transfer.metrics import SegmentationScore
from tst.taxonomy import SemanticClass, Taxonomy
from tst.transfer.module import TransferModule
from tst.transfer.tasks import SegmentationTask

from conftest import collect_small


def test_miou_matches_a_hand_computed_confusion_matrix():
    truth = torch.tensor([[[0, 1, 1, 2], [2, 2, 3, 3]]])
    predicted = torch.tensor([[[2, 1, 2, 2], [2, 1, 3, 1]]])
    score = SegmentationScore(5)
    score.update(predicted, truth)
    result = score.compute()
    # Pixels with truth 0 are ignored. Class 1: TP 1, FP 2, FN 1 -> 1/4. Class 2: TP 2, FP 1, FN 1 -> 2/4.
    # Class 3: TP 1, FP 0, FN 1 -> 1/2. Class 4 never occurs in the truth: not averaged.
    assert result["per_class"] == pytest.approx({1: 0.25, 2: 0.5, 3: 0.5})
    assert result["miou"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)


@pytest.mark.parametrize("head", ["pyramid", "linear"])
def test_segmentation_head_overfits_eight_frames(head):
    torch.manual_seed(0)
    rgb = torch.rand(8, 3, 32, 32)
    semantic = torch.zeros(8, 32, 32, dtype=torch.long)
    for i in range(8):  # a bright square of class 2 on a background of class 1
        semantic[i] = 1
        y, x = 4 * (i % 4), 4 * (i // 2)
        rgb[i, :, y:y + 12, x:x + 12] = 1.0
        semantic[i, y:y + 12, x:x + 12] = 2
    backbone = ScratchViT(ModelConfig(dim=48, encoder_depth=2, decoder_depth=1, heads=2, patch=8, image_size=32))
    task = SegmentationTask(Taxonomy([SemanticClass("background", False), SemanticClass("square", True)]), head=head)
    module = TransferModule(backbone, [task], {"mode": "full", "lr": 2e-3, "backbone_lr_scale": 1.0,
                                               "weight_decay": 0.0, "warmup_steps": 1, "steps": 150})
    head = module.heads["seg"]
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    for _ in range(150):
        loss = task.loss(head, module.features(rgb), {"rgb": rgb, "semantic": semantic})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    score = SegmentationScore(3)
    score.update(module(rgb)["seg"], semantic)
    assert score.compute()["miou"] >= 0.9


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transfer")
    collect_small(tmp, 8, 8, 8, 64)
    return tmp


def test_transfer_run_end_to_end(workspace, capsys):
    assert main(["transfer", f"workspace_dir={workspace}", "transfer.steps=4", "data.num_workers=0",
                 "data.batch_size=4", "model.dim=32", "model.encoder_depth=1", "model.heads=2", "run_name=seg",
                 "transfer.fraction=0.5"]) == 0
    out = workspace / "procedural-0" / "transfer" / "seg"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"] == "scratch" and metrics["train_frames"] == 4 and metrics["eval_frames"] == 8
    assert metrics["layer_decay"] == 1.0  # a random init has no pretrained blocks for transfer.layer_decay to keep
    assert 0.0 <= metrics["seg_miou"] <= 1.0 and (out / "predictions.png").is_file()
    assert json.loads((out / "manifest.json").read_text())["stage"] == "transfer"

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tst"], output_format="list")
    assert runs[0].data.params["transfer.fraction"] == "0.5" and "seg_miou" in runs[0].data.metrics


@pytest.mark.parametrize("extra, message", [
    (["transfer.task=dance"], "transfer.task: 'dance'"),
    (["transfer.task=[seg,dance]"], "transfer.task: 'dance'"),
    (["transfer.mode=half"], "transfer.mode"),
    (["transfer.transfer_data=/no/such/data"], "transfer.transfer_data"),
    (["transfer.backbone=/no/such/run"], "neither 'scratch'"),
    (["transfer.backbone=dinov2-s14"], "TST_WEIGHTS_DIR"),
    (["transfer.fraction=0"], "transfer.fraction"),
    (["transfer.seg_head=mlp"], "transfer.seg_head"),
])
def test_bad_input(workspace, extra, message, capsys):
    assert main(["transfer", f"workspace_dir={workspace}", "transfer.steps=1", "tracking.enabled=false", *extra]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], errors


def test_empty_eval_split(tmp_path, capsys):
    collect_small(tmp_path, 4, 0, 4, 32)
    capsys.readouterr()
    assert main(["transfer", f"workspace_dir={tmp_path}", "transfer.steps=1", "tracking.enabled=false"]) != 0
    assert "the eval split is empty" in capsys.readouterr().err


def test_generalist_loads_the_shipped_weights_and_sees_a_cat():
    skimage = pytest.importorskip("skimage.data")
    from tst.transfer.generalist import EfficientNetLite0, shipped_weights

    state = torch.load(shipped_weights(), map_location="cpu", weights_only=True)
    missing, unexpected = EfficientNetLite0().load_state_dict(state, strict=False)
    assert missing == [] and unexpected == []
    from tst.transfer.generalist import load_generalist

    image = torch.tensor(skimage.chelsea()).permute(2, 0, 1)[None].float() / 255
    image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = int(load_generalist()(image).argmax())
    assert 281 <= top <= 285  # ImageNet's domestic cat classes (tabby ... Egyptian cat)


def test_generalist_backbone_feature_map():
    from tst.transfer.backbones import make_backbone

    backbone, info, size = make_backbone("generalist", {})
    assert info.objective == "imagenet-supervised" and size == 224
    with torch.no_grad():
        assert backbone(torch.rand(1, 3, 224, 224)).shape == (1, 320, 7, 7)


def _relabelled_copy(workspace, tmp_path):
    """The workspace's dataset with one class renamed in its manifest: another space's taxonomy."""
    import shutil

    copy = tmp_path / "other-data"
    shutil.copytree(workspace / "procedural-0" / "data", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    names = [c["name"] for c in manifest["outputs"]["taxonomy"]["classes"]]
    manifest["outputs"]["taxonomy"]["classes"][names.index("bed")]["name"] = "cot"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_taxonomy_mismatch_is_refused_or_mapped_by_name(workspace, tmp_path, capsys):
    other = _relabelled_copy(workspace, tmp_path)
    common = ["transfer", f"workspace_dir={workspace}", "transfer.steps=1", "tracking.enabled=false",
              "data.num_workers=0", "model.dim=32", "model.encoder_depth=1", "model.heads=2",
              f"transfer.transfer_data={other}"]
    assert main(common) != 0
    error = capsys.readouterr().err
    assert "taxonomies differ" in error and "only in transfer: cot" in error and "only in eval: bed" in error
    assert main(common + ["transfer.map_by_name=true", "run_name=mapped"]) == 0
    manifest = json.loads((workspace / "procedural-0" / "transfer" / "mapped" / "manifest.json").read_text())
    assert "transfer_data" in manifest["inputs"]


def test_class_mapping_by_name_drops_unknown_classes():
    from tst.transfer.data import Relabel, class_mapping

    source = Taxonomy([SemanticClass("wall", False), SemanticClass("cot", True), SemanticClass("chair", True)])
    target = Taxonomy([SemanticClass("chair", True), SemanticClass("wall", False)])
    lookup = class_mapping(source, target, True, "test")
    assert lookup.tolist() == [0, 2, 0, 1]
    sample = {"semantic": torch.tensor([[1, 2, 3]]), "boxes": torch.ones(2, 4),
              "box_classes": torch.tensor([2, 3]), "box_instances": torch.tensor([5, 6])}
    out = Relabel(lambda s: s, lookup)(sample)
    assert out["semantic"].tolist() == [[2, 0, 1]] and out["box_classes"].tolist() == [1]
    assert out["box_instances"].tolist() == [6]


def test_a_checkpoint_of_another_model_size_is_named():
    from tst.errors import TSTError
    from tst.pretrain.run import load_checked

    small = ScratchViT(ModelConfig(dim=32, encoder_depth=1, heads=2, patch=8, image_size=32))
    larger = ScratchViT(ModelConfig(dim=48, encoder_depth=1, heads=2, patch=8, image_size=32))
    with pytest.raises(TSTError, match="has shape .* another model size"):
        load_checked(small, larger.state_dict(), "run/model.safetensors", {"dim": 32})


def test_layer_decay_scales_blocks_geometrically():
    from tst.transfer.module import layer_groups

    backbone = ScratchViT(ModelConfig(dim=32, encoder_depth=3, decoder_depth=1, heads=2, patch=8, image_size=32))
    groups = layer_groups(backbone, 1.0, 0.5)
    rates = sorted({g["lr"] for g in groups})
    assert rates == [0.125, 0.25, 0.5, 1.0]  # embeddings, blocks 0..2 (the last at the full rate)
    assert sum(len(g["params"]) for g in groups) == len(list(backbone.parameters()))


def test_drop_path_rises_over_the_blocks_and_only_acts_in_training():
    """transfer.drop_path: 0 at the first encoder block, the rate at the last; in training a block drops
    whole samples' branches at its rate and scales the rest by 1 / keep; eval is the plain network."""
    from tst.errors import TSTError
    from tst.transfer.backbones import apply_drop_path

    torch.manual_seed(0)
    backbone = ScratchViT(ModelConfig(dim=32, encoder_depth=3, decoder_depth=1, heads=2, patch=8, image_size=32))
    rgb = torch.rand(8, 3, 32, 32)
    backbone.eval()
    plain = backbone(rgb)
    apply_drop_path(backbone, 0.4)
    assert [b.drop_path for b in backbone.model.encoder] == pytest.approx([0.0, 0.2, 0.4])
    assert torch.equal(backbone(rgb), plain)
    backbone.train()
    assert not torch.allclose(backbone(rgb), backbone(rgb))
    last = backbone.model.encoder[-1]
    branch = last._stochastic_depth(torch.ones(4000, 5, 2))
    per_sample = branch[:, 0, 0]
    assert torch.all(branch == per_sample[:, None, None])  # a sample's whole branch is kept or dropped
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.6])
    assert (per_sample == 0).float().mean().item() == pytest.approx(0.4, abs=0.03)
    with pytest.raises(TSTError, match="drop_path"):
        apply_drop_path(backbone, 1.0)


def test_head_first_steps_hold_the_backbone_still_then_schedule_it():
    """LP-FT: the backbone's LR is 0 for transfer.head_first_steps, then warms up; the heads' schedule is
    unchanged; head_first_steps must be below steps."""
    import torch.nn as nn

    from tst.transfer.module import TransferModule

    class Backbone(nn.Module):
        dim = 8

        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 8)

    settings = {"mode": "full", "lr": 1.0, "backbone_lr_scale": 1.0, "layer_decay": 1.0, "weight_decay": 0.0,
                "warmup_steps": 2, "steps": 10, "head_first_steps": 4}
    module = TransferModule(Backbone(), [], settings)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(7):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    heads, backbone = [r[0] for r in rates], [r[-1] for r in rates]
    assert backbone[:4] == [0.0] * 4 and backbone[4] == pytest.approx(0.5) and backbone[5] == pytest.approx(1.0)
    assert heads[0] == pytest.approx(0.5) and heads[1] == pytest.approx(1.0) and heads[4] < 1.0
    from tst.config import load
    from tst.errors import TSTError

    with pytest.raises(TSTError, match=r"transfer.head_first_steps: expected fewer than transfer.steps \(10\), got 10"):
        load("transfer", ["transfer.steps=10", "transfer.head_first_steps=10"])


def test_fine_tuning_above_the_pretraining_resolution(tmp_path, capsys):
    # transfer.image_size: the pretrained encoder reads 48-px frames (6x6 patches) with every weight kept,
    # the run records its size, and a reload (deploy) rebuilds the 6x6 grid.
    from conftest import TINY_MODEL, tiny_runs
    from tst.transfer.backbones import ENCODER_KEYS, make_backbone
    from tst.transfer.checkpoint import load_transfer

    pretrained, _ = tiny_runs(tmp_path, "seg")
    native, _, native_size = make_backbone(str(pretrained), {})
    larger, _, size = make_backbone(str(pretrained), {}, {"image_size": 48})
    assert (native_size, size) == (32, 48)
    pretrained_weights = {k: v for k, v in native.model.state_dict().items() if k.startswith(ENCODER_KEYS)}
    assert pretrained_weights and all(torch.equal(v, larger.model.state_dict()[k]) for k, v in pretrained_weights.items())
    assert larger(torch.rand(2, 3, 48, 48)).shape == (2, 32, 6, 6)
    common = [f"workspace_dir={tmp_path}", *TINY_MODEL, "transfer.steps=1", f"transfer.backbone={pretrained}"]
    assert main(["transfer", "transfer.image_size=48", "run_name=at48", *common]) == 0
    run = tmp_path / "procedural-0" / "transfer" / "at48"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["image_size"] == 48 and metrics["layer_decay"] == 0.75  # the default, for a pretrained backbone
    model = load_transfer(run)
    assert model.image_size == 48 and model.module(torch.rand(1, 3, 48, 48))["seg"].shape == (1, 48, 48)
    capsys.readouterr()
    assert main(["transfer", "transfer.image_size=50", "run_name=at50", *common]) != 0
    assert "transfer.image_size: 50 is not a positive multiple" in capsys.readouterr().err


def test_joint_pretraining_keeps_the_objective_on_the_test_space(tmp_path, capsys):
    # transfer.joint_pretraining: the pretraining model's encoder *is* the backbone's (shared tensors), its
    # loss on the test space's pretrain frames moves the backbone, and model.pt holds no decoder.
    from conftest import TINY_MODEL, tiny_runs
    from tst.transfer.backbones import make_backbone
    from tst.transfer.checkpoint import load_transfer
    from tst.transfer.joint import joint_pretraining

    pretrained, _ = tiny_runs(tmp_path, "seg")
    backbone, info, _ = make_backbone(str(pretrained), {})
    joint = joint_pretraining(info.path, backbone, batch_size=2, seed=0)
    assert joint.pretraining.model.encoder is backbone.model.encoder
    assert joint.pretraining.model.input_adapters["rgb"] is backbone.model.input_adapters["rgb"]
    own = {id(p) for p in joint.own_parameters(backbone)}
    assert own and not own & {id(p) for p in backbone.parameters()}
    loss = joint.loss(0, torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss) and backbone.model.encoder[0].mlp[0].weight.grad.abs().sum() > 0

    common = [f"workspace_dir={tmp_path}", *TINY_MODEL, "transfer.steps=2", "transfer.warmup_steps=0",
              f"transfer.backbone={pretrained}"]
    for name, weight in (("plain", 0.0), ("joint", 1.0)):
        assert main(["transfer", f"transfer.joint_pretraining={weight}", f"run_name={name}", *common]) == 0
    runs = tmp_path / "procedural-0" / "transfer"
    metrics = json.loads((runs / "joint" / "metrics.json").read_text())
    assert metrics["joint_pretraining"] == 1.0 and metrics["backbone"].endswith("+joint")
    plain, joined = (load_transfer(runs / name).module.backbone.state_dict() for name in ("plain", "joint"))
    assert plain.keys() == joined.keys() and any(not torch.equal(plain[k], joined[k]) for k in plain)
    capsys.readouterr()
    assert main(["transfer", "transfer.joint_pretraining=1.0", "transfer.backbone=scratch", "run_name=bad",
                 *common[:-1]]) != 0
    assert "transfer.joint_pretraining: needs transfer.backbone to be a tst pretrain run" in capsys.readouterr().err


def test_transfer_samples_do_not_depend_on_the_loader_workers(workspace):
    """Crops, flips and colour jitter are drawn from (seed, epoch, frame), whichever process makes the sample:
    data.num_workers is a speed setting only. Every epoch draws new views, and a loader in the main
    process leaves the training step's random numbers alone."""
    from torch.utils.data import DataLoader

    from tst.collect.dataset import FrameDataset, collate
    from tst.pretrain.data import ResumableSampler, SeededSamples
    from tst.transfer.data import Relabel, training_view
    from tst.transfer.photometric import ColourJitter

    view = ColourJitter(training_view(32, (0.3, 1.0), captions=False), strength=0.4)
    frames = FrameDataset(workspace / "procedural-0" / "data", "transfer", ["rgb", "semantic", "boxes"],
                          transform=Relabel(view, None))
    samples = SeededSamples(frames, seed=5)

    def batches(workers: int) -> list[dict]:
        loader = DataLoader(samples, batch_size=4, sampler=ResumableSampler(len(frames), 5), num_workers=workers,
                            collate_fn=collate)
        return [batch for batch, _ in zip(loader, range(4))]  # two epochs of 8 frames

    in_process = batches(0)
    for a, b in zip(in_process, batches(2)):
        assert a["key"] == b["key"] and torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["semantic"], b["semantic"])
        assert all(torch.equal(x, y) for x, y in zip(a["boxes"], b["boxes"]))
    first = {key: rgb for batch in in_process[:2] for key, rgb in zip(batch["key"], batch["rgb"])}
    second = {key: rgb for batch in in_process[2:] for key, rgb in zip(batch["key"], batch["rgb"])}
    assert first.keys() == second.keys() and not any(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(0)
    samples[3]
    drawn_after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(drawn_after, torch.rand(3))  # making a sample left the global stream where it was


def test_wise_alpha_interpolates_the_backbone_toward_its_pretrained_weights(tmp_path, capsys):
    # transfer.wise_alpha=0.5: the saved backbone is the midpoint of the pretrained weights and those the
    # same-seed fine-tuning (alpha 1) ends at; the heads are the fine-tuned ones; scratch records 1.0.
    from conftest import TINY_MODEL, tiny_runs
    from tst.transfer.backbones import ENCODER_KEYS, make_backbone
    from tst.weights import read_torch_file

    pretrained, _ = tiny_runs(tmp_path, "seg")
    common = [f"workspace_dir={tmp_path}", *TINY_MODEL, "transfer.steps=3", "transfer.lr=0.05", "data.num_workers=0"]
    for alpha in (1.0, 0.5):
        assert main(["transfer", f"transfer.backbone={pretrained}", f"transfer.wise_alpha={alpha}",
                     f"run_name=wise{alpha}", *common]) == 0
    assert main(["transfer", "transfer.wise_alpha=0.5", "run_name=scratch", *common]) == 0
    runs = tmp_path / "procedural-0" / "transfer"
    tuned, wise = (read_torch_file(runs / f"wise{a}" / "model.pt") for a in (1.0, 0.5))
    start = {k: v for k, v in make_backbone(str(pretrained), {})[0].model.state_dict().items() if k.startswith(ENCODER_KEYS)}
    moved = [f"model.{k}" for k, v in start.items() if not torch.equal(v, tuned[f"backbone.model.{k}"])]
    start = {f"model.{k}": v for k, v in start.items()}
    assert moved  # fine-tuning changed the backbone, so the midpoint differs from both ends
    for key in moved:
        torch.testing.assert_close(wise[f"backbone.{key}"], (start[key] + tuned[f"backbone.{key}"]) / 2)
    heads = [k for k in tuned if k.startswith("heads.")]
    assert heads and all(torch.equal(tuned[k], wise[k]) for k in heads)
    assert json.loads((runs / "wise0.5" / "metrics.json").read_text())["wise_alpha"] == 0.5
    assert json.loads((runs / "scratch" / "metrics.json").read_text())["wise_alpha"] == 1.0
    capsys.readouterr()
    assert main(["transfer", "transfer.wise_alpha=1.5", "run_name=bad", *common]) != 0
    assert "transfer.wise_alpha" in capsys.readouterr().err
