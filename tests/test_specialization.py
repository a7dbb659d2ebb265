"""What the specialization experiment rests on: fourm reads RGB pixels, tokenizers that beat the patch
mean (and the refusal of ones that do not), same seed -> same numbers, a caption head that learns."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tst.orchestration.cli import main
from tst.errors import TSTError
from tst.pretrain.tokenizer import Tokenizer, TokenizerConfig
from tst.pretrain.tokenizer_quality import check_quality, measure

from conftest import collect_small

TINY = ["model.dim=32", "model.encoder_depth=1", "model.decoder_depth=1", "model.heads=2", "data.batch_size=8",
        "data.num_workers=0", "tracking.enabled=false", "pretrain.input_budget=32", "pretrain.target_budget=32",
        "pretrain.image_every=100", "pretrain.checkpoint_every=100"]
TOKENIZERS = ["pretrain.tokenizer.steps=4", "pretrain.tokenizer.hidden=16", "pretrain.tokenizer.levels=[4,4]"]
TRANSFER = ["tracking.enabled=false", "model.dim=32", "model.encoder_depth=1", "model.heads=2", "data.batch_size=8",
            "data.num_workers=0", "transfer.steps=3", "transfer.warmup_steps=1", "transfer.head_width=16"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("specialization")
    collect_small(tmp, 24, 8, 16, 64, "collect.shard_size=16")
    return tmp


def shapes(size: int = 32, count: int = 32) -> dict:
    """`count` frames of simple scenes: a rectangle of one palette colour on another, its depth step, the two
    normals, and its outline as edges."""
    g = torch.Generator().manual_seed(0)
    palette = torch.rand(6, 3, generator=g)  # one space's few paints
    rgb = palette[torch.randint(0, 6, (count,), generator=g)][:, :, None, None].expand(count, 3, size, size).clone()
    depth = torch.full((count, 1, size, size), 3.0)
    normals = torch.zeros(count, 3, size, size)
    normals[:, 2] = -1
    edges = torch.zeros(count, 1, size, size)
    for i in range(count):
        x0, y0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        x1, y1 = x0 + size // 3, y0 + size // 3
        rgb[i, :, y0:y1, x0:x1] = palette[int(torch.randint(0, 6, (1,), generator=g))][:, None, None]
        depth[i, :, y0:y1, x0:x1] = 1.5
        normals[i, :, y0:y1, x0:x1] = torch.tensor([0.0, -1.0, 0.0])[:, None, None]
        edges[i, :, y0, x0:x1] = edges[i, :, y1 - 1, x0:x1] = 1
        edges[i, :, y0:y1, x0] = edges[i, :, y0:y1, x1 - 1] = 1
    return {"rgb": rgb, "depth": depth, "normals": normals, "edges": edges}


def test_tokenizers_beat_the_patch_mean_and_use_their_codebook():
    torch.manual_seed(0)
    frames = shapes()
    config = TokenizerConfig((8, 5, 5), 8, 32)  # a small codebook of 200
    tokenizers = {name: Tokenizer(name, config) for name in frames}
    optimizer = torch.optim.AdamW([p for t in tokenizers.values() for p in t.parameters()], lr=3e-3)
    for _ in range(800):
        loss = sum(t.loss(frames[n], t(frames[n])[0]) for n, t in tokenizers.items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    quality = measure(tokenizers, [frames], "synthetic")
    for name, q in quality.items():
        assert q["error"] < q["baseline_error"], (name, q)
        # Two normals make few distinct patches (a corner, an edge at some offset), so fewer codes suffice.
        assert q["codes_used"] > (0.1 if name == "normals" else 0.2) * q["codebook"], (name, q)
    check_quality(quality, 0.1, "synthetic")  # passes: no exception


def test_weak_tokenizers_are_named_and_refused():
    quality = {"edges": {"codes_used": 1, "codebook": 1000, "perplexity": 1.0, "metric": "balanced_mae",
                         "error": 0.5, "baseline_error": 0.45, "split": "eval", "patches": 640}}
    with pytest.raises(TSTError, match=r"edges reconstructs worse than the patch mean .*edges uses 1 of 1000 codes"):
        check_quality(quality, 0.05, "tokenizers")


def test_fourm_refuses_weak_tokenizers_unless_allowed(workspace, capsys):
    assert main(["pretrain", "tokenizers", f"workspace_dir={workspace}", *TINY, *TOKENIZERS]) == 0
    manifest = json.loads((workspace / "procedural-0" / "pretrain" / "tokenizers" / "manifest.json").read_text())
    quality = manifest["outputs"]["quality"]
    assert set(quality) == {"rgb", "depth", "normals", "edges"}
    assert all(q["split"] == "eval" and q["patches"] == 8 * 64 for q in quality.values())
    capsys.readouterr()
    # 4 steps cannot make good tokenizers; demanding the whole codebook makes the refusal certain.
    args = ["pretrain", f"workspace_dir={workspace}", *TINY, *TOKENIZERS, "pretrain.objective=fourm",
            "pretrain.steps=1", "pretrain.min_code_share=1.0"]
    assert main(args + ["run_name=refused"]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "weak tokenizers" in errors[0] and "codes" in errors[0], errors
    assert not (workspace / "procedural-0" / "pretrain" / "refused").exists()
    assert main(args + ["run_name=allowed", "pretrain.allow_weak_tokenizers=true"]) == 0

    # The fourm encoder reads RGB pixels: a linear patch embedding, and the transfer backbone needs no tokenizer.
    run = workspace / "procedural-0" / "pretrain" / "allowed"
    encoder = load_file(run / "encoder.safetensors")
    assert encoder["input_adapters.rgb.weight"].shape == (32, 8 * 8 * 3)
    assert encoder["input_adapters.depth.weight"].shape[0] == 16  # depth enters as codes (embedding table)
    from tst.transfer.backbones import make_backbone

    backbone, info, size = make_backbone(str(run), {})
    assert info.objective == "fourm" and size == 64
    assert not any("tokenizer" in name for name in backbone.state_dict())
    assert torch.equal(backbone.model.input_adapters["rgb"].weight, encoder["input_adapters.rgb.weight"])
    assert backbone(torch.rand(2, 3, 64, 64)).shape == (2, 32, 8, 8)


def test_same_seed_same_weights_and_metrics(workspace, capsys):
    # model=tiny, 8 steps of 16 frames, two threads: without trainer.deterministic (on by default), two
    # runs summed some gradients in different orders and differed by ~5e-6 (3e-5 over 60 steps).
    sized = ["model=tiny", "data.batch_size=16", "data.num_workers=0", "tracking.enabled=false",
             "pretrain.input_budget=16", "pretrain.target_budget=48", "pretrain.image_every=100",
             "pretrain.checkpoint_every=100"]

    def pretrain(name: str, seed: int) -> dict:
        assert main(["pretrain", f"workspace_dir={workspace}", *sized, "pretrain.steps=8", f"pretrain.seed={seed}",
                     f"run_name={name}"]) == 0
        return load_file(workspace / "procedural-0" / "pretrain" / name / "model.safetensors")

    a, b, c = pretrain("seed0-a", 0), pretrain("seed0-b", 0), pretrain("seed1", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)

    def transfer(name: str, seed: int, workers: int = 0) -> tuple[dict, dict]:
        capsys.readouterr()
        assert main(["transfer", f"workspace_dir={workspace}", *TRANSFER, "transfer.task=[seg,caption]",
                     f"transfer.seed={seed}", f"run_name={name}", "transfer.caption.max_words=8",
                     f"data.num_workers={workers}"]) == 0
        run = workspace / "procedural-0" / "transfer" / name
        return json.loads((run / "metrics.json").read_text()), torch.load(run / "model.pt", weights_only=True)

    # the second same-seed run makes its samples in two loader workers: the worker count is a speed setting
    (m0, w0), (m1, w1), (_, w2) = transfer("t0-a", 0), transfer("t0-b", 0, workers=2), transfer("t1", 1)
    assert m0["seg_miou"] == m1["seg_miou"] and m0["caption_cider_d"] == m1["caption_cider_d"]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], w2[k]) for k in w0)


def test_caption_task_learns_its_captions():
    """Through CaptionTask.loss (the path tst transfer trains), a decoder learns to say the caption of
    each of four frames: the teacher-forced targets are the next word, not the one after."""
    from tst.transfer.captioning import Vocabulary
    from tst.transfer.tasks import CaptionTask

    captions = ["a bed and a lamp.", "a sofa in the living room.", "two chairs at a table.", "a sink by the door."]
    task = CaptionTask(Vocabulary.build(captions), beam=1, max_length=12)
    head = task.build_head(16)
    features = torch.randn(4, 16, 2, 2, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(150):
        loss = task.loss(head, features, {"caption": captions})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert task.predict(head, features, (16, 16)) == captions


def test_frozen_tokenizers_stay_in_eval_mode_while_pretraining():
    from omegaconf import OmegaConf

    from tst.config import config_root
    from tst.pretrain.module import PretrainModule

    config = {"model": {"dim": 32, "encoder_depth": 1, "decoder_depth": 1, "heads": 2, "patch": 8, "image_size": 32,
                        "mlp_ratio": 2.0},
              "pretrain": OmegaConf.to_container(OmegaConf.load(config_root() / "pretrain" / "default.yaml"))
              | {"objective": "fourm", "input_budget": 16, "target_budget": 16}}
    tokenizers = {m: Tokenizer(m, TokenizerConfig((4, 4), 8, 8)) for m in ("rgb", "depth")}
    module = PretrainModule(config, ["rgb", "depth"], tokenizers=tokenizers).train()
    assert module.model.training and not any(t.training for t in module.tokenizers.values())


def test_cross_matrix_names_where_each_backbone_pretrained():
    """A backbone pretrained on a held-out space alone makes the cross matrix; its own space's cell is bold."""
    from tst.transfer.report import TransferResult
    from tst.transfer.specialization import cross_matrix_markdown, specialization_table

    def run(name, seed, data, test, held):
        return TransferResult(name, 0.1, seed, {"seg_miou": test}, held_out={"procedural-11": {"seg_miou": held}},
                              pretrain_data=data)

    own = {"objective": "multimae", "test_space_share": 1.0, "external": [], "frames": None}
    other = {"objective": "multimae", "test_space_share": 0.0, "external": ["procedural-11/data"], "frames": None}
    used = [run("multimae", s, own, 0.12, 0.08) for s in (0, 1)] + [run("on-11", s, other, 0.07, 0.1) for s in (0, 1)]
    used += [run("scratch", s, None, 0.06, 0.06) for s in (0, 1)]
    text = cross_matrix_markdown(specialization_table(used, "procedural-0"), "procedural-0", used)
    assert "| backbone | pretrained on | procedural-0 (test) | procedural-11 |" in text
    assert "| multimae | procedural-0 | **12.0 ± 0.0** | 8.0 ± 0.0 |" in text
    assert "| on-11 | procedural-11 | 7.0 ± 0.0 | **10.0 ± 0.0** |" in text and "| scratch | – | 6.0 ± 0.0 |" in text
    plain = [r for r in used if r.backbone != "on-11"]
    assert cross_matrix_markdown(specialization_table(plain, "procedural-0"), "procedural-0", plain) is None
