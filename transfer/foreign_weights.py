"""Published generalist weights (DINOv2, CLIP, 4M-21) mapped onto `tst.transfer.vit.PlainViT`.

`transfer.backbone=<spec>` for the specs in FOREIGN (`dinov2-s14`, `dinov2-b14`, `dinov2-s14-reg`,
`dinov2-b14-reg`, `clip-b16`, `4m21-b`). The weight files are not downloaded: put them in a directory
and point `TST_WEIGHTS_DIR` at it (or pass `weights_dir`). Expected file names (see FOREIGN[...].files):

    dinov2-s14      dinov2_vits14_pretrain.pth       (torch hub, dl.fbaipublicfiles.com/dinov2/dinov2_vits14/)
    dinov2-b14      dinov2_vitb14_pretrain.pth       (torch hub, dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/)
    dinov2-s14-reg  dinov2_vits14_reg4_pretrain.pth  (the "with registers" models)
    dinov2-b14-reg  dinov2_vitb14_reg4_pretrain.pth
    clip-b16        ViT-B-16.pt                      (OpenAI's file, a TorchScript archive; a plain state dict
                                                     of the whole CLIP model, keys `visual.*`, also works)
    4m21-b          4M-21_B.safetensors              (huggingface.co/EPFL-VILAB/4M-21_B `model.safetensors`,
                                                     renamed; `4M-21_B/model.safetensors` is found as well)

Each stem is also accepted with any of the extensions .pth, .pt and .safetensors.

Every published key is accounted for: it is mapped, or dropped on an explicit list below (with the reason);
an unknown key or a missing one is a TSTError naming it, and the result loads into PlainViT with
strict=True. `map_dinov2`, `map_clip` and `map_4m` are generic over depth (they read it from the keys); the
architecture itself comes from the spec's ViTConfig and the strict load checks every shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tst.errors import TSTError
from tst.layers import sincos_2d
from tst.weights import KeyMapper, check_mapped, published_weights_file, read_state_dict, split_qkv
from tst.transfer.vit import CLIP_MEAN, CLIP_STD, PlainViT, ViTConfig

EXTENSIONS = (".pth", ".pt", ".safetensors")


# ----------------------------------------------------------------------------------------------- DINOv2

def map_dinov2(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """DINOv2 hub checkpoint (dinov2_vit?14[_reg4]_pretrain.pth) -> PlainViT state dict.

    LayerScale is folded: DINOv2 computes x + gamma * (W h + b), which is exactly x + (gamma W) h + gamma b,
    so `ls1.gamma` scales the attention output projection and `ls2.gamma` the MLP's second linear. This
    keeps our Block unchanged; the only difference is in fine-tuning, where gamma is no longer a separate
    parameter (the function at load time is identical)."""
    keys = KeyMapper(state_dict, "DINOv2")
    # Dropped: the masked-image-modeling token that replaces masked patches in iBOT-style pretraining;
    # an unmasked forward pass (all dense-feature use) never reads it.
    keys.drop("mask_token", "masked-image-modeling token, unused without masking")
    keys.copy("patch_embed.proj.weight", "patch_embed.weight")
    keys.copy("patch_embed.proj.bias", "patch_embed.bias")
    keys.copy("cls_token", "cls_token")
    keys.copy("pos_embed", "pos_embed")
    if keys.has("register_tokens"):
        keys.copy("register_tokens", "register_tokens")
    for i in range(keys.blocks("blocks")):
        p, o = f"blocks.{i}", f"blocks.{i}"
        for norm in ("norm1", "norm2"):
            keys.copy(f"{p}.{norm}.weight", f"{o}.{norm}.weight")
            keys.copy(f"{p}.{norm}.bias", f"{o}.{norm}.bias")
        split_qkv(keys, f"{o}.attn", keys.take(f"{p}.attn.qkv.weight", f"-> {o}.attn.q/kv.weight"),
                   keys.take(f"{p}.attn.qkv.bias", f"-> {o}.attn.q/kv.bias"))
        gamma1 = keys.take(f"{p}.ls1.gamma", f"folded into {o}.attn.out")
        proj = keys.take(f"{p}.attn.proj.weight", f"-> {o}.attn.out.weight")
        keys.put(f"{o}.attn.out.weight", gamma1[:, None] * proj)
        keys.put(f"{o}.attn.out.bias", gamma1 * keys.take(f"{p}.attn.proj.bias", f"-> {o}.attn.out.bias"))
        keys.copy(f"{p}.mlp.fc1.weight", f"{o}.mlp.0.weight")
        keys.copy(f"{p}.mlp.fc1.bias", f"{o}.mlp.0.bias")
        gamma2 = keys.take(f"{p}.ls2.gamma", f"folded into {o}.mlp.2")
        keys.put(f"{o}.mlp.2.weight", gamma2[:, None] * keys.take(f"{p}.mlp.fc2.weight", f"-> {o}.mlp.2.weight"))
        keys.put(f"{o}.mlp.2.bias", gamma2 * keys.take(f"{p}.mlp.fc2.bias", f"-> {o}.mlp.2.bias"))
    keys.copy("norm.weight", "norm.weight")
    keys.copy("norm.bias", "norm.bias")
    return keys.finish()


# ------------------------------------------------------------------------------------------------- CLIP

# The text tower of OpenAI's CLIP file (and the scalars the TorchScript archive stores beside it):
# dense image features never use it.
CLIP_TEXT_TOWER = [r"token_embedding\.weight", r"positional_embedding", r"transformer\.resblocks\.\d+\..+",
                   r"ln_final\.(weight|bias)", r"text_projection", r"logit_scale",
                   r"input_resolution", r"context_length", r"vocab_size"]


def map_clip(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """OpenAI CLIP ViT state dict (ViT-B-16.pt: `visual.*` plus the text tower) -> PlainViT state dict.

    A state dict of the visual tower alone (keys without `visual.`) is accepted too. `ln_post` becomes
    the final norm applied to every token: CLIP applies it to the class token only, and using it on the
    patch tokens as well is the usual way to read dense CLIP features (e.g. MaskCLIP); `proj`, the
    projection of the class token into the 512-d image-text space, is dropped, so features are 768-d."""
    whole = any(k.startswith("visual.") for k in state_dict)
    keys = KeyMapper(state_dict, "CLIP")
    v = "visual." if whole else ""
    if whole:
        for pattern in CLIP_TEXT_TOWER:
            keys.drop_matching(pattern, "CLIP text tower")
    keys.drop(f"{v}proj", "projection of the class token into the image-text embedding space")
    weight = keys.take(f"{v}conv1.weight", "-> patch_embed.weight")
    keys.put("patch_embed.weight", weight)
    keys.put("patch_embed.bias", torch.zeros(weight.shape[0]))  # CLIP's conv1 has no bias
    keys.put("cls_token", keys.take(f"{v}class_embedding", "-> cls_token").reshape(1, 1, -1))
    keys.put("pos_embed", keys.take(f"{v}positional_embedding", "-> pos_embed")[None])
    keys.copy(f"{v}ln_pre.weight", "norm_pre.weight")
    keys.copy(f"{v}ln_pre.bias", "norm_pre.bias")
    for i in range(keys.blocks(f"{v}transformer.resblocks")):
        p, o = f"{v}transformer.resblocks.{i}", f"blocks.{i}"
        keys.copy(f"{p}.ln_1.weight", f"{o}.norm1.weight")
        keys.copy(f"{p}.ln_1.bias", f"{o}.norm1.bias")
        split_qkv(keys, f"{o}.attn", keys.take(f"{p}.attn.in_proj_weight", f"-> {o}.attn.q/kv.weight"),
                   keys.take(f"{p}.attn.in_proj_bias", f"-> {o}.attn.q/kv.bias"))
        keys.copy(f"{p}.attn.out_proj.weight", f"{o}.attn.out.weight")
        keys.copy(f"{p}.attn.out_proj.bias", f"{o}.attn.out.bias")
        keys.copy(f"{p}.ln_2.weight", f"{o}.norm2.weight")
        keys.copy(f"{p}.ln_2.bias", f"{o}.norm2.bias")
        keys.copy(f"{p}.mlp.c_fc.weight", f"{o}.mlp.0.weight")
        keys.copy(f"{p}.mlp.c_fc.bias", f"{o}.mlp.0.bias")
        keys.copy(f"{p}.mlp.c_proj.weight", f"{o}.mlp.2.weight")
        keys.copy(f"{p}.mlp.c_proj.bias", f"{o}.mlp.2.bias")
    keys.copy(f"{v}ln_post.weight", "norm.weight")
    keys.copy(f"{v}ln_post.bias", "norm.bias")
    return keys.finish()


# --------------------------------------------------------------------------------------------------- 4M

# Modality names of ml-4m (fourm/data/modality_info.py) whose encoder/decoder embeddings a FourM
# checkpoint may hold; all but the RGB input embedding are dropped.
FOURM_MODALITIES = [
    "rgb@224", "rgb@448", "caption", "det", "t5_caption", "metadata", "human_poses", "color_palette",
    "sam_instance", "tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224",
    "tok_clip@224", "tok_canny_edge@224", "tok_sam_edge@224", "tok_dinov2@224", "tok_imagebind@224",
    "tok_dinov2_global", "tok_imagebind_global", "tok_rgb@448", "tok_depth@448", "tok_normal@448",
    "tok_semseg@448", "tok_clip@448"]
FOURM_RGB = "rgb@224"


def map_4m(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """ml-4m FourM checkpoint (4M-21 B: fm_base_12e_12d_swiglu_nobias) -> PlainViT state dict (the RGB
    encoder: `encoder_embeddings.rgb@224`, `encoder.N`, `encoder_norm`).

    4M-21's linears have no bias and its LayerNorms are bias-free (ml-4m's LayerNorm(bias=False) keeps a
    zero `bias` buffer, saved in the file; it is read when present, else zeros are used): our biases get
    zeros. The RGB embedding is a bias-free Linear over (ph, pw, c)-ordered patch pixels plus a modality
    embedding added to every RGB token; it becomes our conv patch embedding, weight reshaped to
    (dim, 3, p, p) and bias = the modality embedding (exactly the same sum). Its position embedding is
    4M's fixed 2D sin-cos buffer; if a file leaves it out, it is rebuilt with ml-4m's formula."""
    keys = KeyMapper(state_dict, "4M")
    # Dropped: everything that is not the RGB encoder. The decoder and its embeddings (queries, target
    # modality embeddings, output logits) only serve to predict target modalities; the other modalities'
    # input embeddings would only be used if those modalities were fed as inputs; mask_token is the
    # decoder's query token.
    keys.drop_matching(r"decoder\.\d+\..+", "4M decoder")
    keys.drop_matching(r"decoder_norm\.(weight|bias)", "4M decoder")
    keys.drop_matching(r"decoder_proj_context\.(weight|bias)", "4M decoder")
    keys.drop_matching(r"mask_token", "4M decoder query token")
    for modality in FOURM_MODALITIES:
        keys.drop_matching(re.escape(f"decoder_embeddings.{modality}.") + ".+", "4M decoder embedding")
        if modality != FOURM_RGB:
            keys.drop_matching(re.escape(f"encoder_embeddings.{modality}.") + ".+", "non-RGB 4M input embedding")

    e = f"encoder_embeddings.{FOURM_RGB}"
    projection = keys.take(f"{e}.proj.weight", "-> patch_embed.weight")  # (dim, p*p*3), (ph pw c) order
    dim, patch = projection.shape[0], int(round((projection.shape[1] / 3) ** 0.5))
    keys.put("patch_embed.weight", projection.reshape(dim, patch, patch, 3).permute(0, 3, 1, 2))
    keys.put("patch_embed.bias", keys.take(f"{e}.mod_emb", "-> patch_embed.bias").reshape(dim))
    if keys.has(f"{e}.pos_emb"):
        keys.copy(f"{e}.pos_emb", "pos_embed")
    else:  # rgb@224: a 14x14 grid at patch 16
        keys.put("pos_embed", sincos_2d(224 // patch, 224 // patch, dim, row_first=True)[None])
    for i in range(keys.blocks("encoder")):
        p, o = f"encoder.{i}", f"blocks.{i}"
        keys.norm(f"{p}.norm1", f"{o}.norm1")
        keys.norm(f"{p}.norm2", f"{o}.norm2")
        qkv = keys.take(f"{p}.attn.qkv.weight", f"-> {o}.attn.q/kv.weight")
        split_qkv(keys, f"{o}.attn", qkv, torch.zeros(qkv.shape[0]))
        keys.linear(f"{p}.attn.proj", f"{o}.attn.out")
        for fc in ("fc1", "fc2", "fc3"):  # gated MLP: fc2(silu(fc1 x) * fc3 x)
            keys.linear(f"{p}.mlp.{fc}", f"{o}.mlp.{fc}")
    keys.norm("encoder_norm", "norm")
    return keys.finish()


# ---------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class ForeignModel:
    """A published model: its architecture, accepted weight files (relative to the weights directory,
    first one named in errors), key mapper, and what a results table says about it."""

    spec: str
    config: ViTConfig
    files: tuple[str, ...]
    mapper: Callable[[dict], tuple[dict, dict]]
    source: str
    objective: str


def _names(name: str) -> tuple[str, ...]:
    """`name` (the published file name), then its stem with the other accepted extensions."""
    stem = name.rsplit(".", 1)[0]
    return (name,) + tuple(stem + extension for extension in EXTENSIONS if stem + extension != name)


def _dinov2(spec: str, size: str, dim: int, heads: int, registers: bool) -> ForeignModel:
    stem = f"dinov2_vit{size}14{'_reg4' if registers else ''}_pretrain"
    # The hub models: 518 px (37x37 grid), LayerNorm eps 1e-6, exact GELU, LayerScale; position resizing
    # with offset 0.1 and no antialiasing, or (register models) offset 0 with antialiasing.
    config = ViTConfig(patch=14, dim=dim, depth=12, heads=heads, pos_grid=37, class_token=True,
                       register_tokens=4 if registers else 0, norm_eps=1e-6, mlp="gelu",
                       interpolate_offset=0.0 if registers else 0.1, interpolate_antialias=registers)
    name = f"DINOv2 ViT-{size.upper()}/14{' with registers' if registers else ''}"
    return ForeignModel(spec, config, _names(stem + ".pth"), map_dinov2, f"{name} (Meta, LVD-142M)",
                        "self-distillation")


FOREIGN: dict[str, ForeignModel] = {
    "dinov2-s14": _dinov2("dinov2-s14", "s", 384, 6, False),
    "dinov2-b14": _dinov2("dinov2-b14", "b", 768, 12, False),
    "dinov2-s14-reg": _dinov2("dinov2-s14-reg", "s", 384, 6, True),
    "dinov2-b14-reg": _dinov2("dinov2-b14-reg", "b", 768, 12, True),
    # OpenAI CLIP ViT-B/16: 224 px (14x14), ln_pre, LayerNorm eps 1e-5, QuickGELU, CLIP's own mean/std.
    "clip-b16": ForeignModel(
        "clip-b16", ViTConfig(patch=16, dim=768, depth=12, heads=12, pos_grid=14, class_token=True, pre_norm=True,
                              norm_eps=1e-5, mlp="quick_gelu", mean=CLIP_MEAN, std=CLIP_STD),
        _names("ViT-B-16.pt"), map_clip, "OpenAI CLIP ViT-B/16 image tower (WIT-400M)",
        "image-text-contrastive"),
    # 4M-21 B (fm_base_12e_12d_swiglu_nobias): 224 px (14x14), no class token, bias-free LayerNorm eps 1e-6,
    # SwiGLU MLP (2048 hidden), fixed sin-cos positions, ImageNet mean/std (ml-4m's RGBTransform).
    "4m21-b": ForeignModel(
        "4m21-b", ViTConfig(patch=16, dim=768, depth=12, heads=12, pos_grid=14, class_token=False, norm_eps=1e-6,
                            mlp="swiglu", position="sincos4m"),
        _names("4M-21_B.safetensors") + ("4M-21_B/model.safetensors",), map_4m,
        "4M-21 B RGB encoder (Apple/EPFL, CC12M+COYO700M+C4, 21 modalities)", "multimodal-masked-modeling"),
}
FOREIGN_SPECS = tuple(FOREIGN)


# ------------------------------------------------------------------------------------------------ loading

def weights_file(spec: str, weights_dir: str | Path | None = None) -> Path:
    """The weight file of `spec` in `weights_dir`, else in $TST_WEIGHTS_DIR (a one-line TSTError if absent)."""
    return published_weights_file(FOREIGN[spec].files, f"transfer.backbone={spec}", weights_dir)


def load_weights(model: PlainViT, state_dict: dict[str, torch.Tensor], spec: str) -> None:
    """Strict load with a one-line TSTError naming the first missing, unexpected or mis-shaped key."""
    check_mapped(state_dict, model.state_dict(), spec)
    model.load_state_dict(state_dict, strict=True)


def build_foreign(spec: str, state_dict: dict[str, torch.Tensor]) -> tuple[PlainViT, dict[str, str]]:
    """(PlainViT with the mapped weights, accounted: published key -> what became of it)."""
    if spec not in FOREIGN:
        raise TSTError(f"unknown published backbone '{spec}'; known: {', '.join(FOREIGN_SPECS)}")
    model = FOREIGN[spec]
    ours, accounted = model.mapper(state_dict)
    network = PlainViT.uninitialized(model.config)
    load_weights(network, ours, spec)
    return network.eval(), accounted


def load_foreign(spec: str, weights_dir: str | Path | None = None):
    """(PlainViT with `spec`'s published weights, BackboneInfo). The default input size is
    `network.image_size` (224); the features are (B, network.dim, H/network.patch, W/network.patch)."""
    from tst.transfer.backbones import BackboneInfo  # here: backbones.py may import this module

    if spec not in FOREIGN:
        raise TSTError(f"unknown published backbone '{spec}'; known: {', '.join(FOREIGN_SPECS)}")
    path = weights_file(spec, weights_dir)
    network, _ = build_foreign(spec, read_state_dict(path))
    model = FOREIGN[spec]
    return network, BackboneInfo(spec, f"{model.source}: {path}", model.objective, path)
