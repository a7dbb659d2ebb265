"""The pseudo tier: a teacher's feature map as a pretraining target (tst.pretrain.teacher)."""

import pytest
import torch
import torch.nn.functional as F

from tst.orchestration.cli import main
from tst.collect.dataset import RandomResizedCropFlip
from tst.pretrain.run import load_run
from tst.pretrain.teacher import features_under

from conftest import collect_small

TINY = ["model.dim=32", "model.encoder_depth=1", "model.decoder_depth=1", "model.heads=2", "model.image_size=32",
        "data.batch_size=4", "data.num_workers=0", "tracking.enabled=false"]
BUDGETS = ["pretrain.input_budget=8", "pretrain.target_budget=8"]


def test_features_under_a_crop_are_the_frames_map_seen_through_the_same_crop_and_flip():
    """A smooth map at frame resolution, cropped and flipped as the pixels are, equals the whole-frame map
    at a quarter of the resolution sampled under the crop's tokens (bilinear; up to interpolation error)."""
    height, width, grid = 64, 96, 8
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    full = torch.stack([xs, ys, xs * ys])  # (3, H, W), linear in x and y, so bilinear sampling is exact-ish
    coarse = F.interpolate(full[None], size=(height // 4, width // 4), mode="bilinear", align_corners=False,
                           antialias=True)[0]
    transform = RandomResizedCropFlip(grid, scale=(0.4, 1.0), flip=0.5)
    flips = set()
    for seed in range(12):
        view = transform.draw(height, width, torch.Generator().manual_seed(seed))
        flips.add(view.flipped)
        pixels = transform.apply({"rgb": full}, view)["rgb"]  # (3, grid, grid)
        tokens = features_under(coarse, view, grid)  # (grid * grid, 3)
        assert tokens.shape == (grid * grid, 3)
        assert torch.allclose(tokens.T.reshape(3, grid, grid), pixels, atol=0.06)
    assert flips == {True, False}


def test_crops_drawn_in_two_steps_are_those_of_one_call():
    transform = RandomResizedCropFlip(16)
    frame = {"rgb": torch.rand(3, 40, 48)}
    once = transform(frame, torch.Generator().manual_seed(3))["rgb"]
    generator = torch.Generator().manual_seed(3)
    twice = transform.apply(frame, transform.draw(40, 48, generator))["rgb"]
    assert torch.equal(once, twice)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    collect_small(tmp, 8, 4, 4, 32)
    return tmp


def test_pretraining_with_the_generalist_teacher_then_transfer(workspace, capsys):
    common = [f"workspace_dir={workspace}", *TINY]
    assert main(["pretrain", "pretrain.steps=3", "run_name=taught", "pretrain.teacher=generalist",
                 "pretrain.teacher_size=64", "pretrain.image_every=3", *BUDGETS, *common]) == 0
    run = workspace / "procedural-0" / "pretrain" / "taught"
    module, config, _ = load_run(run)
    assert module.model.names == ["rgb", "depth", "normals", "edges", "generalist"]
    assert "generalist" not in module.model.input_adapters  # target-only
    assert module.model.output_adapters["generalist"].out_features == 320
    assert (run / "images" / "step-000003.png").is_file()

    # The loss on the teacher's tokens is computed and finite; the transfer backbone reads RGB alone.
    from tst.pretrain.data import PretrainData

    data = PretrainData(workspace / "procedural-0" / "data", module.modalities, 32, 4, 0, (0.6, 1.0), 0, False,
                        teacher=("generalist", lambda frames: torch.randn(len(frames), 320, 2, 2), 4))
    sample = data.train[0]
    assert sample["generalist"].shape == (16, 320)
    batch = {k: torch.stack([data.train[i][k] for i in range(4)]) for k in sample if k != "key"} | {"key": list("abcd")}
    losses = module.losses(batch, step=0)
    assert "generalist" in losses and torch.isfinite(losses["generalist"])
    assert main(["transfer", "transfer.task=[seg]", "transfer.steps=1", "run_name=tx",
                 f"transfer.backbone={run}", *common]) == 0


def test_a_teacher_is_refused_for_mae_and_an_unknown_one_named(workspace, capsys):
    common = [f"workspace_dir={workspace}", *TINY, *BUDGETS, "pretrain.steps=1"]
    assert main(["pretrain", "pretrain.objective=mae", "pretrain.teacher=generalist", *common]) != 0
    assert "mae is the RGB-only baseline" in capsys.readouterr().err
    assert main(["pretrain", "pretrain.teacher=clip", *common]) != 0
    assert "unknown teacher 'clip'" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["multimae", "fourm"])
def test_each_objective_learns_the_teachers_features_as_a_target_only_modality(objective):
    """The teacher's term falls below the best constant's as a model fits one batch, beside the objective's
    own terms, and the teacher's tokens are never inputs."""
    from tst.layers import ModelConfig
    from tst.pretrain.masking import MixtureComponent, select_tokens
    from tst.pretrain.model import MultimodalMaskedModel
    from tst.pretrain.module import mixture_from_config
    from tst.pretrain.objectives import PixelObjective, TokenObjective
    from tst.pretrain.teacher import TeacherTargets
    from tst.pretrain.tokenizer import Tokenizer, TokenizerConfig

    torch.manual_seed(0)
    sensors = ["rgb", "depth"]
    base = (TokenObjective({m: Tokenizer(m, TokenizerConfig((8, 5, 5, 5), 8, 16)).eval() for m in sensors}, 8)
            if objective == "fourm" else PixelObjective(sensors, 8))
    teacher = TeacherTargets(base, "generalist")
    names = sensors + ["generalist"]
    batch = {"rgb": torch.rand(8, 3, 32, 32), "depth": torch.rand(8, 1, 32, 32) * 4, "key": list("abcdefgh"),
             "generalist": torch.randn(1, 16, 320).expand(8, 16, 320)}  # a feature vector per token position
    model = MultimodalMaskedModel(ModelConfig(dim=64, encoder_depth=2, decoder_depth=1, heads=2, patch=8,
                                              image_size=32), teacher.io())
    [component] = mixture_from_config([{"weight": 1.0, "inputs": {"all": 1.0}, "targets": {"all": 1.0}}], names,
                                      ("generalist",))
    assert component.input_alphas["generalist"] == 0.0 and component.target_alphas["generalist"] == 1.0
    selection = select_tokens(8, names, 16, 12, 24, [component], torch.Generator().manual_seed(1))
    assert not (selection.input_modality == names.index("generalist")).any()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    history = []
    for _ in range(80):
        losses = teacher.losses(model(teacher.inputs(batch), selection), batch)
        assert set(losses) == set(names)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append(losses["generalist"].item())
    # Per-token-normalized targets: predicting zeros (the best constant) scores 1.0.
    assert history[0] > 1.0 and min(history[-5:]) < 0.85, history
