"""The pretrain stage: budgets, objectives, tokenizers, checkpoints, resume, predict, DDP, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tst.orchestration.cli import main
from tst.errors import TSTError
from tst.pretrain.masking import MixtureComponent, fixed_selection, select_tokens
from tst.layers import ModelConfig
from tst.pretrain.model import MultimodalMaskedModel
from tst.pretrain.objectives import PixelObjective, TokenObjective
from tst.pretrain.run import load_run
from tst.pretrain.tokenizer import Tokenizer, TokenizerConfig

from conftest import collect_small

SENSORS = ["rgb", "depth", "normals", "edges"]
TINY = ["model.dim=64", "model.encoder_depth=2", "model.decoder_depth=1", "model.heads=2", "data.batch_size=8",
        "data.num_workers=0", "tracking.enabled=false", "pretrain.input_budget=32", "pretrain.target_budget=32"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A small collected dataset (64 px) in a fresh workspace."""
    tmp = tmp_path_factory.mktemp("pretrain")
    collect_small(tmp, 48, 8, 0, 64, "collect.shard_size=16")
    return tmp


def pretrain(workspace: Path, *extra: str) -> int:
    return main(["pretrain", f"workspace_dir={workspace}", *TINY, *extra])


def test_budgets_sum_exactly_and_inputs_and_targets_are_disjoint():
    mixture = [MixtureComponent(0.5, {"rgb": 1.0}, {m: 0.5 for m in SENSORS}),
               MixtureComponent(0.5, {m: 0.2 for m in SENSORS}, {"depth": 1.0, "normals": 1.0})]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        s = select_tokens(16, SENSORS, 16, 12, 16, mixture, generator)
        assert s.inputs.shape == (16, 12) and s.targets.shape == (16, 16)
        for row in range(16):
            inputs, targets = set(s.inputs[row].tolist()), set(s.targets[row].tolist())
            assert len(inputs) == 12 and len(targets) == 16 and not inputs & targets
        assert (s.target_modality == s.targets // 16).all()


def test_budget_larger_than_the_tokens_is_refused():
    with pytest.raises(TSTError, match="exceeds"):
        select_tokens(1, ["rgb"], 16, 20, 4, [MixtureComponent(1.0, {"rgb": 1.0}, {"rgb": 1.0})],
                      torch.Generator().manual_seed(0))


def overfit(objective, batch: dict, modalities: list[str], steps: int = 120) -> tuple[float, float]:
    torch.manual_seed(0)
    config = ModelConfig(dim=64, encoder_depth=2, decoder_depth=1, heads=2, patch=8, image_size=32)
    model = MultimodalMaskedModel(config, objective.io())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    mixture = [MixtureComponent(1.0, {m: 1.0 for m in modalities}, {m: 1.0 for m in modalities})]
    selection = select_tokens(16, modalities, 16, 6 * len(modalities), 8 * len(modalities), mixture,
                              torch.Generator().manual_seed(1))
    losses = []
    for _ in range(steps):
        loss = sum(objective.losses(model(objective.inputs(batch), selection), batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], min(losses[-5:])


def synthetic_batch() -> dict:
    """16 frames of simple scenes at 32 px: two-colour halves, a depth ramp, axis normals, an edge line."""
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(16, 3, 1, 1, generator=g).expand(16, 3, 32, 32).clone()
    rgb[:, :, :, 16:] = torch.rand(16, 3, 1, 1, generator=g)
    depth = torch.linspace(1, 4, 32).view(1, 1, 32, 1).expand(16, 1, 32, 32) * torch.rand(16, 1, 1, 1, generator=g)
    normals = torch.zeros(16, 3, 32, 32)
    normals[:, 2] = -1
    edges = torch.zeros(16, 1, 32, 32)
    edges[:, :, :, 16] = 1
    return {"rgb": rgb, "depth": depth, "normals": normals, "edges": edges, "key": [str(i) for i in range(16)]}


@pytest.mark.parametrize("objective", ["multimae", "mae", "fourm"])
def test_each_objective_overfits_a_batch(objective):
    batch = synthetic_batch()
    if objective == "fourm":
        tokenizers = {m: Tokenizer(m, TokenizerConfig((8, 5, 5, 5), 8, 32)).eval() for m in SENSORS}
        first, last = overfit(TokenObjective(tokenizers, 8), batch, SENSORS)
    else:
        modalities = ["rgb"] if objective == "mae" else SENSORS
        first, last = overfit(PixelObjective(modalities, 8), batch, modalities)
    assert last <= first / 2, (first, last)



def test_rgb_patch_norm_off_regresses_plain_pixels():
    """pretrain.rgb_patch_norm=false: RGB targets are the pixels themselves (a perfect prediction of the
    pixels costs 0 and displays as the image); with it on (MAE's target) the same prediction is penalized."""
    from tst.layers import patchify
    from tst.modalities import to_network

    torch.manual_seed(0)
    batch = {"rgb": torch.rand(2, 3, 16, 16)}
    pixels = patchify(to_network("rgb", batch["rgb"]), 8)  # (2, 4, 192)
    where = torch.stack([torch.arange(2).repeat_interleave(4), torch.arange(4).repeat(2)], 1)
    outputs = {"rgb": (pixels[where[:, 0], where[:, 1]], where)}
    plain = PixelObjective(["rgb"], 8, rgb_patch_norm=False)
    assert plain.losses(outputs, batch)["rgb"].item() == 0.0
    assert torch.allclose(plain.images("rgb", pixels, batch), batch["rgb"], atol=1e-6)
    assert PixelObjective(["rgb"], 8).losses(outputs, batch)["rgb"].item() > 0.01


def test_tokenizer_round_trip_on_simple_images():
    torch.manual_seed(0)
    batch = synthetic_batch()
    tokenizer = Tokenizer("rgb", TokenizerConfig((8, 5, 5, 5), 8, 32))
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=3e-3)
    for _ in range(250):
        reconstruction, _ = tokenizer(batch["rgb"])
        loss = tokenizer.loss(batch["rgb"], reconstruction)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    from tst.modalities import from_network

    codes = tokenizer.encode(batch["rgb"])
    assert codes.shape == (16, 16) and codes.max() < 1000
    decoded = from_network("rgb", tokenizer.decode(codes))
    assert (decoded - batch["rgb"]).abs().mean() < 0.08


def test_pretrain_run_checkpoints_predict_and_resume(workspace, capsys):
    assert pretrain(workspace, "run_name=straight", "pretrain.steps=6", "pretrain.checkpoint_every=3",
                    "pretrain.image_every=3", "pretrain.warmup_steps=2") == 0
    run = workspace / "procedural-0" / "pretrain" / "straight"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "images" / "step-000006.png").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["outputs"]["objective"] == "multimae" and manifest["outputs"]["modalities"] == SENSORS
    encoder = load_file(run / "encoder.safetensors")
    assert any(k.startswith("encoder.") for k in encoder) and not any(k.startswith("decoder.") for k in encoder)

    # Save -> load gives identical outputs (exported weights and the last checkpoint agree).
    module, config, data = load_run(run)
    batch = {m: torch.rand(2, 3 if m in ("rgb", "normals") else 1, 64, 64) for m in SENSORS} | {"key": ["a", "b"]}
    selection = fixed_selection(2, SENSORS, 64, ["rgb"], ["depth"])
    first = module.model(module.objective.inputs(batch), selection)["depth"][0]
    again, _, _ = load_run(run / "checkpoints" / "last.ckpt")
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    again.load_state_dict(state)
    assert torch.equal(first, again.model(again.objective.inputs(batch), selection)["depth"][0])

    # The encoder alone, as a plain backbone on RGB (and RGB + depth).
    from tst.pretrain.backbone import load_backbone

    features = load_backbone(run)({"rgb": batch["rgb"]})
    assert features.shape == (2, 64, 64)
    both = load_backbone(run, ("rgb", "depth"))({"rgb": batch["rgb"], "depth": batch["depth"]})
    assert both.shape == (2, 128, 64) and torch.isfinite(both).all()

    # A run killed after writing step-3.ckpt, before last.ckpt, and halfway through its next checkpoint,
    # resumes from step 3 and reaches the same weights, step and learning rate as the 6 straight steps.
    halves = workspace / "procedural-0" / "pretrain" / "halves"
    (halves / "checkpoints").mkdir(parents=True)
    (halves / "config.json").write_bytes((run / "config.json").read_bytes())
    (halves / "checkpoints" / "step-000003.ckpt").write_bytes((run / "checkpoints" / "step-000003.ckpt").read_bytes())
    cut = (run / "checkpoints" / "step-000006.ckpt").read_bytes()
    (halves / "checkpoints" / "last.ckpt").write_bytes(cut[:len(cut) // 2])
    assert main(["pretrain", f"resume={halves}", f"workspace_dir={workspace}"]) == 0
    a, b = load_file(run / "model.safetensors"), load_file(halves / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # Killed before its first checkpoint (only config.json): resume starts it over, to the same weights.
    bare = workspace / "procedural-0" / "pretrain" / "bare"
    bare.mkdir()
    (bare / "config.json").write_bytes((run / "config.json").read_bytes())
    assert main(["pretrain", f"resume={bare}", f"workspace_dir={workspace}"]) == 0
    c = load_file(bare / "model.safetensors")
    assert all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)
    ckpt_a = torch.load(run / "checkpoints" / "step-000006.ckpt", map_location="cpu", weights_only=False)
    ckpt_b = torch.load(halves / "checkpoints" / "step-000006.ckpt", map_location="cpu", weights_only=False)
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == 6
    assert ckpt_a["lr_schedulers"][0]["_last_lr"] == ckpt_b["lr_schedulers"][0]["_last_lr"]

    # Any-to-any predictions with errors per modality.
    capsys.readouterr()
    assert main(["pretrain", "predict", f"ckpt={run}", "from=[rgb]", "to=[depth,normals,edges]", "predict_frames=4",
                 f"workspace_dir={workspace}"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"depth", "normals", "edges"} and "abs_rel" in metrics["depth"]
    assert (run / "predict" / "rgb-to-depth+normals+edges" / "predictions.png").is_file()

    # Resume with a different model is refused, naming the key.
    capsys.readouterr()
    assert main(["pretrain", f"resume={halves}", "model.dim=32", f"workspace_dir={workspace}"]) != 0
    assert "model" in capsys.readouterr().err


def test_fourm_with_tokenizers(workspace, capsys):
    assert main(["pretrain", "tokenizers", f"workspace_dir={workspace}", *TINY, "pretrain.tokenizer.steps=10",
                 "pretrain.tokenizer.hidden=16"]) == 0
    tokenizers = workspace / "procedural-0" / "pretrain" / "tokenizers"
    manifest = json.loads((tokenizers / "manifest.json").read_text())
    assert set(manifest["outputs"]["quality"]) == set(SENSORS)
    assert (tokenizers / "reconstructions.png").is_file()
    assert pretrain(workspace, "pretrain.objective=fourm", "run_name=fourm", "pretrain.steps=3",
                    "pretrain.tokenizer.hidden=16", "pretrain.allow_weak_tokenizers=true") == 0
    assert main(["pretrain", "predict", f"ckpt={workspace / 'procedural-0' / 'pretrain' / 'fourm'}",
                 "from=[rgb,depth]", "to=[normals]", "predict_frames=2", f"workspace_dir={workspace}"]) == 0
    # Precomputed tokens equal what the tokenizers give on the fly for the same whole frames.
    assert main(["pretrain", "tokens", f"workspace_dir={workspace}", *TINY, "pretrain.tokenizer.hidden=16"]) == 0
    from tst.collect.dataset import FrameDataset
    from tst.pretrain.run import load_tokenizers
    from tst.pretrain.tokens import load_tokens, whole_frame

    data = workspace / "procedural-0" / "data"
    stored = load_tokens(tokenizers, data, 64)
    frame = FrameDataset(data, "pretrain", ["depth"], transform=whole_frame(64))[5]
    depth_tokenizer = load_tokenizers(tokenizers, data, ["depth"], 8)["depth"]
    assert torch.equal(stored[frame["key"]]["depth"], depth_tokenizer.encode(frame["depth"][None])[0])
    assert pretrain(workspace, "pretrain.objective=fourm", "run_name=fourm-tokens", "pretrain.steps=2",
                    "pretrain.precomputed_tokens=true", "pretrain.tokenizer.hidden=16",
                    "pretrain.allow_weak_tokenizers=true") == 0


def test_tokenizers_do_not_depend_on_the_loader_workers(workspace):
    """The tokenizers' crops are drawn from (seed, epoch, frame) whichever process makes them: the same
    weights with 0 and 2 loader workers."""
    from safetensors.torch import load_file

    def trained(workers: int) -> dict:
        folder = workspace / f"tokenizers-w{workers}"
        assert main(["pretrain", "tokenizers", f"workspace_dir={workspace}", *TINY, "pretrain.tokenizer.steps=3",
                     "pretrain.tokenizer.hidden=16", f"data.num_workers={workers}", f"pretrain.tokenizers={folder}"]) == 0
        return load_file(folder / "depth.safetensors")

    in_process, in_workers = trained(0), trained(2)
    assert all(torch.equal(in_process[k], in_workers[k]) for k in in_process)


def test_two_process_cpu_ddp(workspace):
    command = [sys.executable, "-m", "tst.orchestration.cli", "pretrain", f"workspace_dir={workspace}", *TINY, "trainer=ddp",
               "trainer.accelerator=cpu", "trainer.devices=2", "pretrain.steps=3", "run_name=ddp",
               "pretrain.image_every=100"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = torch.load(workspace / "procedural-0" / "pretrain" / "ddp" / "checkpoints" / "last.ckpt",
                            map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3


@pytest.mark.parametrize("extra, message", [
    (["pretrain.modalities=[rgb,semantic]"], "labels"),
    (["pretrain.modalities=[rgb,heat]"], "unknown"),
    (["data_dir=/nonexistent/data"], "no collected dataset there"),
    (["pretrain.input_budget=200", "pretrain.target_budget=200"], "exceed"),
])
def test_bad_input(workspace, extra, message, capsys):
    assert pretrain(workspace, "pretrain.steps=1", *extra) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], errors


def test_dataset_lacking_a_modality_and_foreign_tokenizers(workspace, tmp_path, capsys):
    collect_small(tmp_path, 8, 4, 0, 32, "collect.modalities=[rgb,depth]")
    capsys.readouterr()
    assert pretrain(tmp_path, "pretrain.steps=1") != 0
    assert "lacks ['normals', 'edges']" in capsys.readouterr().err
    tokenizers = workspace / "procedural-0" / "pretrain" / "tokenizers"
    if not tokenizers.exists():
        pytest.skip("needs the tokenizers of test_fourm_with_tokenizers")
    assert pretrain(tmp_path, "pretrain.steps=1", "pretrain.objective=fourm", "pretrain.modalities=[rgb,depth]",
                    f"pretrain.tokenizers={tokenizers}", "pretrain.allow_weak_tokenizers=true") != 0
    assert "trained on another dataset" in capsys.readouterr().err


def test_non_finite_loss_names_the_step_and_modality():
    from omegaconf import OmegaConf

    from tst.config import config_root
    from tst.pretrain.module import PretrainModule

    config = {"model": {"dim": 32, "encoder_depth": 1, "decoder_depth": 1, "heads": 2, "patch": 8, "image_size": 32,
                        "mlp_ratio": 2.0},
              "pretrain": OmegaConf.to_container(OmegaConf.load(config_root() / "pretrain" / "default.yaml"))
              | {"input_budget": 16, "target_budget": 16}}
    module = PretrainModule(config, SENSORS)
    batch = synthetic_batch()
    batch["depth"][:] = float("nan")
    with pytest.raises(TSTError, match=r"non-finite loss at step 0 in .*depth"):  # NaN inputs spread to all
        module.training_step(batch, 0)


def test_empty_pretrain_split_is_refused(tmp_path, capsys):
    collect_small(tmp_path, 0, 4, 0, 32)
    capsys.readouterr()
    assert pretrain(tmp_path, "pretrain.steps=1") != 0
    assert "no split 'pretrain'" in capsys.readouterr().err


def test_cached_frames_give_the_same_samples_and_decode_once(workspace):
    from tst.collect.dataset import FrameDataset, RandomResizedCropFlip
    from tst.pretrain.data import EpochCrops

    class CountingFrames(FrameDataset):
        def __init__(self, *args):
            super().__init__(*args)
            self.decoded = []

        def __getitem__(self, i):
            self.decoded.append(i)
            return super().__getitem__(i)

    root = workspace / "procedural-0" / "data"
    crops = RandomResizedCropFlip(32, scale=(0.6, 1.0))
    plain = EpochCrops(FrameDataset(root, "pretrain", SENSORS), crops, SENSORS, seed=3)
    cached = EpochCrops(CountingFrames(root, "pretrain", SENSORS), crops, SENSORS, seed=3, cache_frames=True)
    size = len(plain)
    for position in [0, 5, size, size + 5, 2 * size + 5]:  # frames 0 and 5 over three epochs
        a, b = plain[position], cached[position]
        assert all(torch.equal(a[m], b[m]) for m in SENSORS)
    assert sorted(cached.frames.decoded) == [0, 5]
    assert not torch.equal(plain[5]["rgb"], plain[size + 5]["rgb"])  # each epoch crops anew


def test_pretraining_batches_do_not_depend_on_the_loader_workers(workspace):
    """Each sample is drawn from (seed, epoch, frame), whichever process makes it: data.num_workers is a
    speed setting only."""
    from torch.utils.data import DataLoader

    from tst.collect.dataset import FrameDataset, RandomResizedCropFlip, collate
    from tst.pretrain.data import EpochCrops, ResumableSampler

    root = workspace / "procedural-0" / "data"
    crops = EpochCrops(FrameDataset(root, "pretrain", SENSORS), RandomResizedCropFlip(32, scale=(0.6, 1.0)), SENSORS,
                       seed=3)

    def batches(workers: int) -> list[dict]:
        sampler = ResumableSampler(len(crops), 3, 0, 0, 1)
        loader = DataLoader(crops, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate)
        return [batch for batch, _ in zip(loader, range(3))]

    for a, b in zip(batches(0), batches(2)):
        assert a["key"] == b["key"] and all(torch.equal(a[m], b[m]) for m in SENSORS)


def test_pretraining_can_read_the_transfer_splits_sensor_frames_never_its_labels(tmp_path, capsys):
    from tst.collect.dataset import FrameDataset
    from tst.pretrain.data import PretrainData

    collect_small(tmp_path, 8, 2, 6, 32)
    root = tmp_path / "procedural-0" / "data"
    both = PretrainData(root, SENSORS, 32, 4, 0, (0.6, 1.0), 0, False, splits=("pretrain", "transfer"))
    transfer = FrameDataset(root, "transfer", SENSORS)
    assert len(both.train) == 8 + 6
    assert torch.equal(both.train.frame(8)["rgb"], transfer[0]["rgb"])  # the transfer frames follow
    with pytest.raises(TSTError, match="the transfer split's labels \\(semantic\\) are for the heads only"):
        PretrainData(root, SENSORS + ["semantic"], 32, 4, 0, (0.6, 1.0), 0, False, splits=("pretrain", "transfer"))
    assert pretrain(tmp_path, "pretrain.steps=1", "pretrain.input_budget=8", "pretrain.target_budget=8",
                    "pretrain.splits=[pretrain,transfer]", "run_name=mixed") == 0
    assert pretrain(tmp_path, "pretrain.splits=[eval]") != 0
    assert "pretrain.splits[0]: expected pretrain or transfer, got 'eval'" in capsys.readouterr().err


def test_mixed_frames_keep_the_budget_the_share_and_the_draw():
    """A fixed budget: round(share x frames) test-space frames, the rest evenly over the other spaces, each a
    seeded draw without replacement; the test space's whole split unchanged at share 1."""
    from tst.pretrain.data import mixed_frames

    test, b, c = [f"a{i}" for i in range(10)], [f"b{i}" for i in range(6)], [f"c{i}" for i in range(6)]
    assert mixed_frames(test, [("b", b)], 1.0, None, 0) is test
    half = list(mixed_frames(test, [("b", b), ("c", c)], 0.5, None, 0))
    assert len(half) == 10 and sum(f[0] == "a" for f in half) == 5 and sum(f[0] == "b" for f in half) == 3
    assert len(set(half)) == 10 and half == list(mixed_frames(test, [("b", b), ("c", c)], 0.5, None, 0))
    assert half != list(mixed_frames(test, [("b", b), ("c", c)], 0.5, None, 1))  # another seed, another draw
    others = list(mixed_frames(test, [("b", b), ("c", c)], 0.0, 8, 0))
    assert sorted(f[0] for f in others) == ["b"] * 4 + ["c"] * 4
    assert len(mixed_frames(test, [], 1.0, 4, 0)) == 4  # a subset of the test space alone
    with pytest.raises(TSTError, match="pretrain.test_space_share=0.5 with pretrain.frames=10: the other 5 frames "
                                       "need pretrain.external"):
        mixed_frames(test, [], 0.5, None, 0)
    with pytest.raises(TSTError, match="pretrain.external: b holds 6 pretrain frames; this budget draws 10"):
        mixed_frames(test, [("b", b)], 0.0, 10, 0)
    with pytest.raises(TSTError, match="pretrain.frames: 20 frames at pretrain.test_space_share=1 need 20"):
        mixed_frames(test, [], 1.0, 20, 0)


def test_pretraining_mixes_in_another_spaces_frames(tmp_path, capsys):
    """pretrain.external: another space's collected pretrain split mixed in; its manifest is an input of the
    run; the test space itself, or a folder that is not a dataset, is refused in one line."""
    from tst.workspace import read_manifest

    collect_small(tmp_path, 8, 2, 0, 32)
    collect_small(tmp_path, 8, 0, 0, 32, "space.seed=5")
    assert pretrain(tmp_path, "pretrain.steps=1", "pretrain.input_budget=8", "pretrain.target_budget=8",
                    "pretrain.test_space_share=0.5", "pretrain.external=[procedural-5/data]", "run_name=mixed") == 0
    inputs = read_manifest(tmp_path / "procedural-0" / "pretrain" / "mixed")["inputs"]
    assert inputs["external/procedural-5"]["path"] == str(tmp_path / "procedural-5" / "data")
    capsys.readouterr()
    assert pretrain(tmp_path, "pretrain.external=[procedural-0/data]") != 0
    assert "pretrain.external[0]: " in (err := capsys.readouterr().err) and "is the test space procedural-0" in err
    assert pretrain(tmp_path, "pretrain.external=[nowhere]") != 0
    assert "is not a collected dataset (no manifest.json)" in capsys.readouterr().err
