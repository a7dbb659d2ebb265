"""Published generalist weights on PlainViT: key sets with the published names and shapes (random values)
map completely and load strictly; the reparameterizations (fused qkv split, LayerScale folding, 4M's
patch embedding and SwiGLU, CLIP's attention and QuickGELU) match reference computations written here
in the published parameterization; missing weights give a one-line error. Tests on the real files run
only when TST_WEIGHTS_DIR holds them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tst.errors import TSTError
from tst.transfer.foreign_weights import (FOREIGN, FOREIGN_SPECS, build_foreign, load_foreign,
                                          load_weights, read_state_dict)
from tst.layers import sincos_2d
from tst.transfer.vit import PlainViT
from tst.weights import WEIGHTS_ENV

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def filled(shapes: dict[str, tuple], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random values for every shape: norm weights and LayerScale gammas around 1 and 0.5, the rest small."""
    out = {}
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=generator)
        if key.endswith("gamma"):
            value.mul_(0.3).add_(0.5)
        elif any(n in key for n in ("norm", "ln_")) and key.endswith("weight"):
            value.mul_(0.1).add_(1.0)
        else:
            value.mul_(0.05)
        out[key] = value
    return out


def unread(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Tensors of the published shapes that take no memory: for keys the mapping drops."""
    return {key: torch.zeros(()).expand(shape) for key, shape in shapes.items()}


# ------------------------------------------------------------------ published key sets (names and shapes)

def dinov2_shapes(dim: int, depth: int, registers: int = 0) -> dict[str, tuple]:
    """As in dinov2_vit{s,b}14[_reg4]_pretrain.pth (DinoVisionTransformer, 518 px, block_chunks=0)."""
    s = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + 37 * 37, dim), "mask_token": (1, dim),
         "patch_embed.proj.weight": (dim, 3, 14, 14), "patch_embed.proj.bias": (dim,)}
    if registers:
        s["register_tokens"] = (1, registers, dim)
    for i in range(depth):
        p = f"blocks.{i}"
        s |= {f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,), f"{p}.attn.qkv.weight": (3 * dim, dim),
              f"{p}.attn.qkv.bias": (3 * dim,), f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,),
              f"{p}.ls1.gamma": (dim,), f"{p}.norm2.weight": (dim,), f"{p}.norm2.bias": (dim,),
              f"{p}.mlp.fc1.weight": (4 * dim, dim), f"{p}.mlp.fc1.bias": (4 * dim,),
              f"{p}.mlp.fc2.weight": (dim, 4 * dim), f"{p}.mlp.fc2.bias": (dim,), f"{p}.ls2.gamma": (dim,)}
    return s | {"norm.weight": (dim,), "norm.bias": (dim,)}


def clip_resblock_shapes(prefix: str, width: int) -> dict[str, tuple]:
    return {f"{prefix}.attn.in_proj_weight": (3 * width, width), f"{prefix}.attn.in_proj_bias": (3 * width,),
            f"{prefix}.attn.out_proj.weight": (width, width), f"{prefix}.attn.out_proj.bias": (width,),
            f"{prefix}.ln_1.weight": (width,), f"{prefix}.ln_1.bias": (width,),
            f"{prefix}.mlp.c_fc.weight": (4 * width, width), f"{prefix}.mlp.c_fc.bias": (4 * width,),
            f"{prefix}.mlp.c_proj.weight": (width, 4 * width), f"{prefix}.mlp.c_proj.bias": (width,),
            f"{prefix}.ln_2.weight": (width,), f"{prefix}.ln_2.bias": (width,)}


def clip_visual_shapes(depth: int) -> dict[str, tuple]:
    """The image tower of OpenAI's ViT-B-16.pt (keys `visual.*`)."""
    s = {"visual.class_embedding": (768,), "visual.positional_embedding": (197, 768), "visual.proj": (768, 512),
         "visual.conv1.weight": (768, 3, 16, 16), "visual.ln_pre.weight": (768,), "visual.ln_pre.bias": (768,)}
    for i in range(depth):
        s |= clip_resblock_shapes(f"visual.transformer.resblocks.{i}", 768)
    return s | {"visual.ln_post.weight": (768,), "visual.ln_post.bias": (768,)}


def clip_text_shapes() -> dict[str, tuple]:
    """The text tower of ViT-B-16.pt, and the scalars its TorchScript archive keeps beside the weights."""
    s = {"positional_embedding": (77, 512), "text_projection": (512, 512), "logit_scale": (),
         "token_embedding.weight": (49408, 512), "ln_final.weight": (512,), "ln_final.bias": (512,),
         "input_resolution": (), "context_length": (), "vocab_size": ()}
    for i in range(12):
        s |= clip_resblock_shapes(f"transformer.resblocks.{i}", 512)
    return s


def fourm_encoder_shapes(depth: int, with_buffers: bool = True) -> dict[str, tuple]:
    """The RGB encoder of 4M-21 B (fm_base_12e_12d_swiglu_nobias): bias-free linears, SwiGLU (2048
    hidden), bias-free LayerNorms whose zero `bias` buffers are saved, the fixed sin-cos `pos_emb` buffer."""
    e = "encoder_embeddings.rgb@224"
    s = {f"{e}.proj.weight": (768, 16 * 16 * 3), f"{e}.mod_emb": (1, 1, 768)}
    if with_buffers:
        s[f"{e}.pos_emb"] = (1, 196, 768)
    norms = ["norm1", "norm2"]
    for i in range(depth):
        p = f"encoder.{i}"
        s |= {f"{p}.attn.qkv.weight": (3 * 768, 768), f"{p}.attn.proj.weight": (768, 768),
              f"{p}.mlp.fc1.weight": (2048, 768), f"{p}.mlp.fc3.weight": (2048, 768),
              f"{p}.mlp.fc2.weight": (768, 2048)}
        s |= {f"{p}.{n}.{w}": (768,) for n in norms for w in (("weight", "bias") if with_buffers else ("weight",))}
    return s | {"encoder_norm.weight": (768,)} | ({"encoder_norm.bias": (768,)} if with_buffers else {})


def fourm_rest_shapes() -> dict[str, tuple]:
    """What a 4M-21 checkpoint holds besides the RGB encoder: other modalities' input embeddings, the
    decoder (self- and cross-attention blocks), its embeddings with output logits, the mask token."""
    s = {"mask_token": (1, 1, 768), "decoder_proj_context.weight": (768, 768), "decoder_proj_context.bias": (768,),
         "decoder_norm.weight": (768,), "decoder_norm.bias": (768,)}
    for modality, vocab, positions in [("caption", 30000, 256), ("t5_caption", None, 128), ("det", 30000, 256),
                                       ("tok_depth@224", 8192, 196), ("tok_dinov2@224", 8192, 256),
                                       ("tok_dinov2_global", 8192, 16), ("metadata", 30000, 40)]:
        e = f"encoder_embeddings.{modality}"
        s |= {f"{e}.mod_emb": (1, 1, 768), f"{e}.pos_emb": (1, positions, 768)}
        if vocab is None:
            s |= {f"{e}.emb_proj.weight": (768, 4096), f"{e}.emb_proj.bias": (768,)}
            continue
        s[f"{e}.token_emb.weight"] = (vocab, 768)
        d = f"decoder_embeddings.{modality}"
        s |= {f"{d}.mod_emb": (1, 1, 768), f"{d}.pos_emb": (1, positions, 768), f"{d}.token_emb.weight": (vocab, 768),
              f"{d}.to_logits.weight": (vocab, 768)}
    for i in range(12):
        p = f"decoder.{i}"
        s |= {f"{p}.{n}.{w}": (768,) for n in ("norm1", "query_norm", "context_norm", "norm2")
              for w in ("weight", "bias")}
        s |= {f"{p}.self_attn.qkv.weight": (3 * 768, 768), f"{p}.self_attn.proj.weight": (768, 768),
              f"{p}.cross_attn.q.weight": (768, 768), f"{p}.cross_attn.kv.weight": (2 * 768, 768),
              f"{p}.cross_attn.proj.weight": (768, 768), f"{p}.mlp.fc1.weight": (2048, 768),
              f"{p}.mlp.fc3.weight": (2048, 768), f"{p}.mlp.fc2.weight": (768, 2048)}
    return s


def published(spec: str, depth: int = 12, seed: int = 0,
              values: bool = True) -> tuple[dict[str, torch.Tensor], set[str]]:
    """(a state dict with `spec`'s published key names and shapes, the keys the mapping must drop);
    values=False: zeros that take no memory (for checks of keys and shapes only)."""
    g = torch.Generator().manual_seed(seed)
    fill = filled if values else (lambda shapes, _: unread(shapes))
    if spec.startswith("dinov2"):
        dim = 384 if "-s14" in spec else 768
        state = fill(dinov2_shapes(dim, depth, 4 if spec.endswith("-reg") else 0), g)
        return state, {"mask_token"}
    if spec == "clip-b16":
        rest = unread(clip_text_shapes() | {"visual.proj": (768, 512)})
        state = fill({k: v for k, v in clip_visual_shapes(depth).items() if k not in rest}, g)
        return state | rest, set(rest)
    encoder = fill(fourm_encoder_shapes(depth), g)
    if not values:
        return encoder | unread(fourm_rest_shapes()), set(fourm_rest_shapes())
    for key in encoder:  # the saved buffers: zero LayerNorm biases, the fixed sin-cos positions
        if key.endswith("bias"):
            encoder[key].zero_()
    encoder["encoder_embeddings.rgb@224.pos_emb"] = sincos_2d(14, 14, 768, row_first=True)[None]
    rest = unread(fourm_rest_shapes())
    return encoder | rest, set(rest)


def shallow(spec: str, depth: int) -> PlainViT:
    return PlainViT.uninitialized(dataclasses.replace(FOREIGN[spec].config, depth=depth))


# ------------------------------------------------------------------------------------- key accounting

@pytest.mark.parametrize("spec", FOREIGN_SPECS)
def test_full_published_key_set_is_accounted_for_and_loads_strictly(spec):
    state, dropped = published(spec, values=False)
    ours, accounted = FOREIGN[spec].mapper(state)
    assert set(accounted) == set(state)
    assert {k for k, what in accounted.items() if what.startswith("dropped")} == dropped
    with torch.device("meta"):  # keys and shapes only here; values are loaded in the tests below
        network = PlainViT(FOREIGN[spec].config)
    result = network.load_state_dict(ours, strict=True, assign=True)  # strict: keys and shapes must match
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("spec, shape", [("dinov2-b14", (768, 16, 16)), ("dinov2-b14-reg", (768, 16, 16)),
                                         ("clip-b16", (768, 14, 14)), ("4m21-b", (768, 14, 14))])
def test_output_shape_at_224(spec, shape):
    # The mappers are generic over depth: one block keeps this fast; the full key sets are checked above,
    # and a full-size DINOv2-S runs in test_load_foreign_reads_a_state_dict_file_from_the_weights_dir.
    network = shallow(spec, 1)
    load_weights(network, FOREIGN[spec].mapper(published(spec, depth=1)[0])[0], spec)
    with torch.no_grad():
        features = network(torch.rand(1, 3, 224, 224))
    assert features.shape == (1, *shape) and torch.isfinite(features).all()


def test_unknown_and_missing_keys_are_named():
    state, _ = published("dinov2-s14", depth=1)
    with pytest.raises(TSTError, match="unknown key 'blocks.0.attn.rope'"):
        FOREIGN["dinov2-s14"].mapper(state | {"blocks.0.attn.rope": torch.zeros(3)})
    del state["blocks.0.ls2.gamma"]
    with pytest.raises(TSTError, match="missing key 'blocks.0.ls2.gamma'"):
        FOREIGN["dinov2-s14"].mapper(state)
    clip, _ = published("clip-b16", depth=1)
    with pytest.raises(TSTError, match="unknown key 'visual.attnpool.k_proj.weight'"):
        FOREIGN["clip-b16"].mapper(clip | {"visual.attnpool.k_proj.weight": torch.zeros(2)})
    fourm, _ = published("4m21-b", depth=1)
    with pytest.raises(TSTError, match="unknown key 'encoder.0.attn.q_norm.weight'"):
        FOREIGN["4m21-b"].mapper(fourm | {"encoder.0.attn.q_norm.weight": torch.zeros(64)})


def test_a_file_of_another_model_size_is_a_shape_error():
    state, _ = published("dinov2-s14", depth=1)
    network = shallow("dinov2-b14", 1)
    with pytest.raises(TSTError, match="has shape .* the model expects"):
        load_weights(network, FOREIGN["dinov2-s14"].mapper(state)[0], "dinov2-b14")


def test_4m_without_saved_buffers_gets_zero_biases_and_the_sincos_positions():
    state = filled(fourm_encoder_shapes(1, with_buffers=False), torch.Generator().manual_seed(1))
    ours, accounted = FOREIGN["4m21-b"].mapper(state)
    assert set(accounted) == set(state)
    assert torch.equal(ours["pos_embed"], sincos_2d(14, 14, 768, row_first=True)[None])
    assert not ours["blocks.0.norm1.bias"].any() and not ours["norm.bias"].any()


# --------------------------------------------------------------------------------- numerical checks

def layer_norm(x, state, key, eps):
    return F.layer_norm(x, x.shape[-1:], state[f"{key}.weight"], state.get(f"{key}.bias"), eps)


def fused_attention(x, qkv_weight, qkv_bias, heads):
    """Softmax attention with a fused [q; k; v] projection, as DINOv2 and 4M write it."""
    B, N, D = x.shape
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attention = ((q @ k.transpose(-2, -1)) * (D // heads) ** -0.5).softmax(dim=-1)
    return (attention @ v).transpose(1, 2).reshape(B, N, D)


def dinov2_block(x, s, p, heads):
    """DINOv2's block: x + ls1(proj(attn(norm1 x))), then x + ls2(fc2(gelu(fc1(norm2 x))))."""
    h = fused_attention(layer_norm(x, s, f"{p}.norm1", 1e-6), s[f"{p}.attn.qkv.weight"], s[f"{p}.attn.qkv.bias"], heads)
    x = x + s[f"{p}.ls1.gamma"] * F.linear(h, s[f"{p}.attn.proj.weight"], s[f"{p}.attn.proj.bias"])
    h = F.gelu(F.linear(layer_norm(x, s, f"{p}.norm2", 1e-6), s[f"{p}.mlp.fc1.weight"], s[f"{p}.mlp.fc1.bias"]))
    return x + s[f"{p}.ls2.gamma"] * F.linear(h, s[f"{p}.mlp.fc2.weight"], s[f"{p}.mlp.fc2.bias"])


def close(ours, reference, tolerance=1e-4):
    return (ours - reference).abs().max().item() <= tolerance * max(1.0, reference.abs().max().item())


def test_dinov2_block_matches_the_published_parameterization():
    """The qkv split and LayerScale folding are exact: one block against DINOv2's own computation."""
    state, _ = published("dinov2-b14", depth=1)
    network = shallow("dinov2-b14", 1)
    load_weights(network, FOREIGN["dinov2-b14"].mapper(state)[0], "dinov2-b14")
    x = torch.randn(2, 17, 768, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert close(network.blocks[0](x), dinov2_block(x, state, "blocks.0", heads=12))


def test_dinov2_forward_matches_the_published_computation_at_224():
    """Token preparation too: class token, DINOv2's bicubic resize of the 37x37 positions (offset 0.1),
    registers after the class token, final norm, patch tokens only."""
    for spec, offset, antialias in [("dinov2-s14", 0.1, False), ("dinov2-s14-reg", 0.0, True)]:
        state, _ = published(spec, depth=1)
        network = shallow(spec, 1)
        load_weights(network, FOREIGN[spec].mapper(state)[0], spec)
        rgb = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
        x = F.conv2d((rgb - MEAN) / STD, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
        x = torch.cat([state["cls_token"], x.flatten(2).transpose(1, 2)], dim=1)
        table = state["pos_embed"][:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
        resize = {"scale_factor": ((16 + offset) / 37, (16 + offset) / 37)} if offset else {"size": (16, 16)}
        table = F.interpolate(table, mode="bicubic", antialias=antialias, **resize)
        x = x + torch.cat([state["pos_embed"][:, :1], table.permute(0, 2, 3, 1).reshape(1, 256, 384)], dim=1)
        if "register_tokens" in state:
            x = torch.cat([x[:, :1], state["register_tokens"], x[:, 1:]], dim=1)
        x = layer_norm(dinov2_block(x, state, "blocks.0", heads=6), state, "norm", 1e-6)
        reference = x[:, -256:].transpose(1, 2).reshape(1, 384, 16, 16)
        with torch.no_grad():
            assert close(network(rgb), reference), spec


def test_clip_block_matches_torch_multihead_attention_and_quick_gelu():
    state, _ = published("clip-b16", depth=1)
    network = shallow("clip-b16", 1)
    load_weights(network, FOREIGN["clip-b16"].mapper(state)[0], "clip-b16")
    p = "visual.transformer.resblocks.0"
    attention = torch.nn.MultiheadAttention(768, 12)  # CLIP's own attention module, (L, N, D) layout
    attention.load_state_dict({"in_proj_weight": state[f"{p}.attn.in_proj_weight"],
                               "in_proj_bias": state[f"{p}.attn.in_proj_bias"],
                               "out_proj.weight": state[f"{p}.attn.out_proj.weight"],
                               "out_proj.bias": state[f"{p}.attn.out_proj.bias"]})
    x = torch.randn(1, 197, 768, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        h = layer_norm(x, state, f"{p}.ln_1", 1e-5).transpose(0, 1)
        y = x + attention(h, h, h, need_weights=False)[0].transpose(0, 1)
        h = F.linear(layer_norm(y, state, f"{p}.ln_2", 1e-5), state[f"{p}.mlp.c_fc.weight"],
                     state[f"{p}.mlp.c_fc.bias"])
        reference = y + F.linear(h * torch.sigmoid(1.702 * h), state[f"{p}.mlp.c_proj.weight"],
                                 state[f"{p}.mlp.c_proj.bias"])
        assert close(network.blocks[0](x), reference)
        # Embedding: conv1 (no bias), class embedding, positions, ln_pre; features after ln_post.
        rgb = torch.rand(1, 3, 224, 224)
        mean, std = torch.tensor(FOREIGN["clip-b16"].config.mean), torch.tensor(FOREIGN["clip-b16"].config.std)
        x = F.conv2d((rgb - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1), state["visual.conv1.weight"], stride=16)
        x = torch.cat([state["visual.class_embedding"].view(1, 1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        x = layer_norm(x + state["visual.positional_embedding"], state, "visual.ln_pre", 1e-5)
        network.blocks = torch.nn.ModuleList([])
        reference = layer_norm(x, state, "visual.ln_post", 1e-5)[:, 1:].transpose(1, 2).reshape(1, 768, 14, 14)
        assert close(network(rgb), reference)


def test_4m_embedding_and_swiglu_block_match_the_published_parameterization():
    """4M: Linear over (ph pw c)-ordered patches + pos_emb + mod_emb; bias-free block with SwiGLU MLP."""
    state, _ = published("4m21-b", depth=1)
    network = shallow("4m21-b", 1)
    load_weights(network, FOREIGN["4m21-b"].mapper(state)[0], "4m21-b")
    rgb = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    e, p = "encoder_embeddings.rgb@224", "encoder.0"
    patches = ((rgb - MEAN) / STD).reshape(1, 3, 14, 16, 14, 16).permute(0, 2, 4, 3, 5, 1).reshape(1, 196, 768)
    x = F.linear(patches, state[f"{e}.proj.weight"]) + state[f"{e}.pos_emb"] + state[f"{e}.mod_emb"]
    x = x + F.linear(fused_attention(layer_norm(x, state, f"{p}.norm1", 1e-6), state[f"{p}.attn.qkv.weight"], None, 12),
                     state[f"{p}.attn.proj.weight"])
    h = layer_norm(x, state, f"{p}.norm2", 1e-6)
    x = x + F.linear(F.silu(F.linear(h, state[f"{p}.mlp.fc1.weight"])) * F.linear(h, state[f"{p}.mlp.fc3.weight"]),
                     state[f"{p}.mlp.fc2.weight"])
    reference = layer_norm(x, state, "encoder_norm", 1e-6).transpose(1, 2).reshape(1, 768, 14, 14)
    with torch.no_grad():
        assert close(network(rgb), reference)
        assert network(torch.rand(1, 3, 288, 224)).shape == (1, 768, 18, 14)  # sin-cos positions regenerated


# ------------------------------------------------------------------------------------- files, errors

def test_missing_weights_give_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(TSTError) as error:
        load_foreign("dinov2-s14")
    assert WEIGHTS_ENV in str(error.value) and "dinov2_vits14_pretrain.pth" in str(error.value)
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    with pytest.raises(TSTError) as error:
        load_foreign("clip-b16")
    message = str(error.value)
    assert str(missing) in message and WEIGHTS_ENV in message and "ViT-B-16.pt" in message
    with pytest.raises(TSTError) as error:
        load_foreign("4m21-b", weights_dir=tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and WEIGHTS_ENV in message and "4M-21_B.safetensors" in message
    assert "\n" not in message
    with pytest.raises(TSTError, match="unknown published backbone"):
        load_foreign("dinov3-s16", weights_dir=tmp_path)


def test_load_foreign_reads_a_state_dict_file_from_the_weights_dir(tmp_path, monkeypatch):
    state, _ = published("dinov2-s14")
    torch.save(state, tmp_path / "dinov2_vits14_pretrain.pth")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    network, info = load_foreign("dinov2-s14")
    assert isinstance(network, PlainViT) and network.dim == 384 and not network.training
    assert info.name == "dinov2-s14" and info.path == tmp_path / "dinov2_vits14_pretrain.pth"
    assert torch.equal(network.cls_token, state["cls_token"])
    with torch.no_grad():  # the full-size model at 224 px: a 16x16 map of 384-d features
        features = network(torch.rand(1, 3, 224, 224))
    assert features.shape == (1, 384, 16, 16) and torch.isfinite(features).all()
    assert (network.dim, network.patch, network.image_size) == (384, 14, 224)


def test_weight_file_formats(tmp_path):
    """safetensors, a torch-saved state dict, and a TorchScript archive (OpenAI ships CLIP as one; its
    fp16 weights become float32 when mapped)."""
    from safetensors.torch import save_file

    state = {"visual.class_embedding": torch.randn(4), "visual.conv1.weight": torch.randn(4, 3, 2, 2),
             "logit_scale": torch.tensor(4.6)}
    save_file(state, str(tmp_path / "a.safetensors"))
    torch.save(state, tmp_path / "b.pt")

    class Holder(torch.nn.Module):  # a scripted module whose state dict has CLIP's names
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Module()
            self.visual.class_embedding = torch.nn.Parameter(state["visual.class_embedding"].half())
            self.visual.conv1 = torch.nn.Conv2d(3, 4, 2, bias=False).half()
            self.visual.conv1.weight.data = state["visual.conv1.weight"].half()
            self.logit_scale = torch.nn.Parameter(state["logit_scale"].half())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.logit_scale

    torch.jit.save(torch.jit.script(Holder()), str(tmp_path / "c.pt"))
    for name in ("a.safetensors", "b.pt", "c.pt"):
        loaded = read_state_dict(tmp_path / name)
        assert set(loaded) == set(state)
        for key in state:
            assert torch.allclose(loaded[key].float(), state[key], atol=1e-2), (name, key)


# ------------------------------------------------------------------------- real published weights

def real_weights(spec: str) -> Path:
    directory = os.environ.get(WEIGHTS_ENV)
    for name in FOREIGN[spec].files if directory else ():
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    pytest.skip(f"{WEIGHTS_ENV} does not hold {FOREIGN[spec].files[0]}")


def scene(shift: int = 0) -> torch.Tensor:
    """(1, 3, 224, 224) a mosaic of coloured rectangles of about one to three patches, moved right by
    `shift` pixels (cut from a wider canvas, so content moves and nothing wraps around)."""
    g = torch.Generator().manual_seed(0)
    canvas = torch.full((3, 224, 336), 0.5)
    for _ in range(120):
        h, w = (int(v) for v in torch.randint(12, 48, (2,), generator=g))
        y, x = int(torch.randint(0, 224 - h, (1,), generator=g)), int(torch.randint(0, 336 - w, (1,), generator=g))
        canvas[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=g)
    start = 56 - shift
    return canvas[:, :, start:start + 224][None]


@pytest.mark.parametrize("spec", FOREIGN_SPECS)
def test_real_published_weights(spec):
    """With the real file: every key accounted for (build_foreign raises otherwise), strict load, finite
    features that vary over the image. DINOv2 and 4M features are local: when the image moves by one
    patch, a patch's feature is closer to the feature of the same content in the moved image than to
    the feature at the same place. (CLIP's last-layer patch tokens are known to be spatially mixed, so
    the check is not asked of it.)"""
    path = real_weights(spec)
    network, _ = build_foreign(spec, read_state_dict(path))
    patch = network.patch
    with torch.no_grad():
        still, moved = network(scene()), network(scene(patch))
    assert still.shape == (1, network.dim, 224 // patch, 224 // patch) and torch.isfinite(still).all()
    assert still.flatten(2).std(dim=2).mean() > 0
    if spec == "clip-b16":
        return
    a = F.normalize(still[0, :, 1:-1, 1:-2], dim=0)  # interior patches
    same_content = (a * F.normalize(moved[0, :, 1:-1, 2:-1], dim=0)).sum(0).mean()
    same_place = (a * F.normalize(moved[0, :, 1:-1, 1:-2], dim=0)).sum(0).mean()
    assert same_content > same_place, (same_content.item(), same_place.item())
