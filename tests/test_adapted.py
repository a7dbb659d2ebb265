"""Adapted TST (`pretrain.init=4m21-b`): a state dict with ml-4m's published key names (a small model, so the
test is fast) is mapped onto TST's MultimodalMaskedModel, and the mapped model's decoder output equals a
reference computation written in ml-4m's own parameterization (fourm/models/fm.py: encoder, context
projection plus encoder embeddings, decoder with self- and cross-attention, bias-free SwiGLU blocks)."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import TINY_MODEL, collect_small
from tst.orchestration.cli import main
from tst.errors import TSTError
from tst.layers import ModelConfig, patchify, sincos_2d
from tst.modalities import to_network
from tst.pretrain.adapted import adapted_model_config, load_adapted, read_published
from tst.pretrain.masking import TokenSelection
from tst.pretrain.model import ModalityIO, MultimodalMaskedModel
from tst.weights import WEIGHTS_ENV

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def published_4m(dim: int = 128, encoder: int = 2, decoder: int = 2, patch: int = 16, seed: int = 0) -> dict:
    """ml-4m FourM names and shapes (fm_*_swiglu_nobias): bias-free linears, LayerNorms with zero bias
    buffers, fixed sin-cos pos_emb buffers, decoder_proj_context with a bias, and modalities TST maps
    (rgb@224, tok_rgb@224, tok_depth@224) beside one it drops (caption)."""
    g = torch.Generator().manual_seed(seed)
    hidden = int(2 * int(dim * 4) / 3)  # ml-4m's SwiGLU width at mlp_ratio 4
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.05  # noqa: E731
    s = {"mask_token": r(1, 1, dim), "decoder_proj_context.weight": r(dim, dim), "decoder_proj_context.bias": r(dim),
         "encoder_embeddings.rgb@224.proj.weight": r(dim, patch * patch * 3),
         "encoder_embeddings.rgb@224.mod_emb": r(1, 1, dim),
         "encoder_embeddings.rgb@224.pos_emb": sincos_2d(224 // patch, 224 // patch, dim, row_first=True)[None],
         "encoder_embeddings.tok_depth@224.token_emb.weight": r(50, dim),
         "encoder_embeddings.tok_depth@224.mod_emb": r(1, 1, dim), "encoder_embeddings.caption.token_emb.weight": r(30, dim),
         "encoder_embeddings.caption.mod_emb": r(1, 1, dim), "encoder_embeddings.caption.pos_emb": r(1, 8, dim)}
    for modality in ("tok_rgb@224", "tok_depth@224", "caption"):
        d = f"decoder_embeddings.{modality}"
        s |= {f"{d}.mod_emb": r(1, 1, dim), f"{d}.token_emb.weight": r(50, dim), f"{d}.to_logits.weight": r(50, dim)}
    s["decoder_embeddings.tok_depth@224.mod_emb"] = s["encoder_embeddings.tok_depth@224.mod_emb"].clone()  # shared
    norms = {"encoder": ("norm1", "norm2"), "decoder": ("norm1", "query_norm", "context_norm", "norm2")}
    for part, depth in (("encoder", encoder), ("decoder", decoder)):
        for i in range(depth):
            p = f"{part}.{i}"
            for n in norms[part]:
                s[f"{p}.{n}.weight"], s[f"{p}.{n}.bias"] = 1 + r(dim), torch.zeros(dim)
            attention = "attn" if part == "encoder" else "self_attn"
            s |= {f"{p}.{attention}.qkv.weight": r(3 * dim, dim), f"{p}.{attention}.proj.weight": r(dim, dim),
                  f"{p}.mlp.fc1.weight": r(hidden, dim), f"{p}.mlp.fc3.weight": r(hidden, dim),
                  f"{p}.mlp.fc2.weight": r(dim, hidden)}
            if part == "decoder":
                s |= {f"{p}.cross_attn.q.weight": r(dim, dim), f"{p}.cross_attn.kv.weight": r(2 * dim, dim),
                      f"{p}.cross_attn.proj.weight": r(dim, dim)}
    for part in ("encoder_norm", "decoder_norm"):
        s[f"{part}.weight"], s[f"{part}.bias"] = 1 + r(dim), torch.zeros(dim)
    return s


# ------------------------------------------------------------------ ml-4m's computation, written out

def layer_norm(x, s, key):
    return F.layer_norm(x, x.shape[-1:], s[f"{key}.weight"], s[f"{key}.bias"], 1e-6)


def attend(q, k, v, heads, mask=None):
    """Softmax attention as ml-4m writes it: scores masked where `mask` is True (not allowed)."""
    B, L, D = q.shape
    split = lambda t: t.reshape(B, t.shape[1], heads, D // heads).transpose(1, 2)  # noqa: E731
    scores = (split(q) @ split(k).transpose(-2, -1)) * (D // heads) ** -0.5
    if mask is not None:
        scores = scores.masked_fill(mask[:, None], -torch.finfo(scores.dtype).max)
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(B, L, D)


def swiglu(x, s, p):
    return F.linear(F.silu(F.linear(x, s[f"{p}.fc1.weight"])) * F.linear(x, s[f"{p}.fc3.weight"]), s[f"{p}.fc2.weight"])


def reference_4m(s, rgb, heads, target_modalities, target_positions, grid):
    """FourM.forward up to the decoder output, RGB pixels as the only input, every target named by
    (4M modality, position index). rgb (B, 3, H, W) in [0, 1] -> (B, T, D)."""
    B, D = rgb.shape[0], s["mask_token"].shape[-1]
    patch = rgb.shape[-1] // grid
    pixels = patchify((rgb - MEAN) / STD, patch)  # (ph pw c) order, as 4M's rearrange
    position = sincos_2d(grid, grid, D, row_first=True)  # build_2d_sincos_posemb at this grid
    encoder_emb = position + s["encoder_embeddings.rgb@224.mod_emb"][0]
    x = F.linear(pixels, s["encoder_embeddings.rgb@224.proj.weight"]) + encoder_emb
    for i in range(sum(k.endswith(".attn.proj.weight") for k in s if k.startswith("encoder."))):
        p = f"encoder.{i}"
        q, k, v = F.linear(layer_norm(x, s, f"{p}.norm1"), s[f"{p}.attn.qkv.weight"]).chunk(3, dim=-1)
        x = x + F.linear(attend(q, k, v, heads), s[f"{p}.attn.proj.weight"])
        x = x + swiglu(layer_norm(x, s, f"{p}.norm2"), s, f"{p}.mlp")
    x = layer_norm(x, s, "encoder_norm")
    context = F.linear(x, s["decoder_proj_context.weight"], s["decoder_proj_context.bias"]) + encoder_emb
    embeddings = torch.stack([s[f"decoder_embeddings.{m}.mod_emb"][0, 0] for m in target_modalities])
    y = (s["mask_token"][0] + embeddings + position[target_positions]).expand(B, -1, -1)
    modality_ids = torch.tensor([hash(m) for m in target_modalities])
    separate = (modality_ids[:, None] != modality_ids[None, :])[None].expand(B, -1, -1)  # decoder_sep_mask
    for i in range(sum(k.endswith(".self_attn.proj.weight") for k in s)):
        p = f"decoder.{i}"
        q, k, v = F.linear(layer_norm(y, s, f"{p}.norm1"), s[f"{p}.self_attn.qkv.weight"]).chunk(3, dim=-1)
        y = y + F.linear(attend(q, k, v, heads, separate), s[f"{p}.self_attn.proj.weight"])
        query, memory = layer_norm(y, s, f"{p}.query_norm"), layer_norm(context, s, f"{p}.context_norm")
        k, v = F.linear(memory, s[f"{p}.cross_attn.kv.weight"]).chunk(2, dim=-1)
        y = y + F.linear(attend(F.linear(query, s[f"{p}.cross_attn.q.weight"]), k, v, heads),
                         s[f"{p}.cross_attn.proj.weight"])
        y = y + swiglu(layer_norm(y, s, f"{p}.norm2"), s, f"{p}.mlp")
    return layer_norm(y, s, "decoder_norm")


# ------------------------------------------------------------------------------------------- tests

def adapted_model(state, image_size=64):
    config = ModelConfig(**adapted_model_config(state, image_size))
    return MultimodalMaskedModel(config, [ModalityIO("rgb", "pixels", "pixels", 3, 3),
                                          ModalityIO("depth", "pixels", "pixels", 1, 1)])


def test_architecture_is_read_from_the_file():
    config = adapted_model_config(published_4m(dim=128, encoder=3, decoder=2), 96)
    assert config == {"dim": 128, "encoder_depth": 3, "decoder_depth": 2, "heads": 2, "patch": 16, "image_size": 96,
                      "mlp_ratio": 4.0, "family": "4m"}
    with pytest.raises(TSTError, match="not a multiple of the 4M patch"):
        adapted_model_config(published_4m(), 100)


def test_mapped_model_computes_what_4m_computes():
    state = published_4m()
    model = adapted_model(state).eval()
    report = load_adapted(model, state)
    assert report["fresh"] == ["input_adapters.depth.bias", "input_adapters.depth.weight",
                               "output_adapters.depth.bias", "output_adapters.depth.weight",
                               "output_adapters.rgb.bias", "output_adapters.rgb.weight"]
    rgb = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    N = model.config.tokens_per_modality  # 16 at 64 px, patch 16
    targets = torch.tensor([N + 0, N + 5, N + 15, 3, 7])  # depth tokens 0, 5, 15, then rgb tokens 3, 7
    selection = TokenSelection(inputs=torch.arange(N).expand(2, -1), targets=targets.expand(2, -1),
                               target_modality=torch.tensor([1, 1, 1, 0, 0]).expand(2, -1),
                               input_modality=torch.zeros(2, N, dtype=torch.long))
    with torch.no_grad():
        tokens = model.embed({"rgb": patchify(to_network("rgb", rgb), 16)})
        ours = model.decode(model.encode(tokens, selection), selection)
        reference = reference_4m(state, rgb, 2, ["tok_depth@224"] * 3 + ["tok_rgb@224"] * 2, targets % N, 4)
    assert (ours - reference).abs().max() < 1e-4 * reference.abs().max()
    model.target_modality_embedding.data[0] = model.modality_embedding.data[0]  # rgb targets are tok_rgb, not rgb
    with torch.no_grad():
        assert (model.decode(model.encode(tokens, selection), selection) - reference).abs().max() > 1e-2


def test_every_published_key_is_accounted_for():
    state = published_4m() | {"encoder_embeddings.rgb@224.surprise": torch.zeros(3)}
    with pytest.raises(TSTError, match="unknown key 'encoder_embeddings.rgb@224.surprise'"):
        load_adapted(adapted_model(state), state)


def test_missing_weights_name_the_setting_directory_variable_and_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(TSTError) as error:
        read_published("4m21-b")
    message = str(error.value)
    assert "pretrain.init=4m21-b" in message and str(tmp_path) in message and WEIGHTS_ENV in message
    assert "4M-21_B.safetensors" in message and "\n" not in message


def test_tst_pretrain_continues_from_the_published_weights(tmp_path, monkeypatch, capsys):
    collect_small(tmp_path, 8, 2, 2, 32)
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    args = ["pretrain", f"workspace_dir={tmp_path}", *TINY_MODEL, "pretrain.steps=1", "pretrain.input_budget=4",
            "pretrain.target_budget=4", "pretrain.modalities=[rgb,depth]", "pretrain.init=4m21-b", "run_name=adapted"]
    assert main(args) != 0  # no file yet: one line, nothing written
    assert "4M-21_B.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "procedural-0" / "pretrain" / "adapted").exists()
    state = published_4m(dim=64, encoder=1, decoder=1, patch=8)
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights / "4M-21_B.safetensors"))
    assert main(args) == 0
    run = tmp_path / "procedural-0" / "pretrain" / "adapted"
    config = json.loads((run / "config.json").read_text())
    assert config["model"] | {} == {"dim": 64, "encoder_depth": 1, "decoder_depth": 1, "heads": 1, "patch": 8,
                                    "image_size": 32, "mlp_ratio": 4.0, "family": "4m"}
    assert "from" in capsys.readouterr().err
    from tst.transfer.backbones import make_backbone

    backbone, info, size = make_backbone(str(run), config["model"])
    assert info.name == "adapted" and info.objective == "multimae" and size == 32
    assert backbone(torch.rand(1, 3, 32, 32)).shape == (1, 64, 4, 4)
