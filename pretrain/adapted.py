"""Adapted TST (`pretrain.init=4m21-b`): continue masked modeling on the test space from the published
4M-21 B weights, encoder *and* decoder, mapped onto TST's MultimodalMaskedModel.

The file is read from $TST_WEIGHTS_DIR (huggingface.co/EPFL-VILAB/4M-21_B `model.safetensors`, saved as
`4M-21_B.safetensors`); nothing is downloaded. The architecture is read from the file (width, depths, patch,
SwiGLU width; heads = width / 64, 4M's head size) and built as the "4m" model family (tst.layers.ModelConfig),
whose parameterization is ml-4m's, so the mapped model computes exactly what 4M computes:

    4M (fourm/models/fm.py, fm_utils.py)                TST (pretrain/model.py)
    encoder_embeddings.rgb@224.proj (bias-free)         input_adapters.rgb (4M's ImageNet normalization of the
                                                        pixels folded into weight and bias: TST feeds its own)
    encoder_embeddings.<m>.mod_emb                      modality_embedding[m]
    decoder_embeddings.<m>.mod_emb                      target_modality_embedding[m]
    encoder.N / decoder.N (bias-free linears, fused     encoder.N / decoder.N (zero biases; q and kv split;
      qkv, query_norm / context_norm, SwiGLU fc1-3)       norm_cross / norm_memory; mlp.fc1-3)
    encoder_norm, decoder_norm, decoder_proj_context    encoder_norm, decoder_norm, context_projection
    mask_token (1, 1, D)                                mask_token (D,)
    fixed sin-cos pos_emb buffers                       recomputed in 4M's (row, column) layout

TST modality -> 4M modality (input embedding, target embedding): rgb -> rgb@224 (pixels) and tok_rgb@224,
depth -> tok_depth@224, normals -> tok_normal@224, edges -> tok_canny_edge@224. What starts fresh, and why:
the input adapters of depth, normals and edges and every output adapter. 4M reads and predicts those
modalities as codes of its own VQ tokenizers (8k-16k codes), which the file does not hold; TST's
objectives feed and predict its own (pixels for multimae and mae, its FSQ codes for fourm), so 4M's
`token_emb` and `to_logits` tables have nothing to attach to. Every other published key (the other 17
modalities' embeddings) is dropped by name, with the reason recorded.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from tst.errors import TSTError
from tst.layers import swiglu_hidden
from tst.modalities import RGB_MEAN, RGB_STD
from tst.weights import KeyMapper, check_mapped, published_weights_file, read_state_dict, split_qkv

from tst.pretrain.model import MultimodalMaskedModel

INITS = {"4m21-b": ("4M-21_B.safetensors", "4M-21_B/model.safetensors", "4M-21_B.pth", "4M-21_B.pt")}
HEAD_DIM = 64  # every published 4M model: 768 / 12 (B), 512 / 8 (S), 1024 / 16 (L)
FOURM_RGB_PIXELS = "rgb@224"
FOURM_NAMES = {"rgb": "tok_rgb@224", "depth": "tok_depth@224", "normals": "tok_normal@224",
               "edges": "tok_canny_edge@224"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ml-4m's RGB normalization


def read_published(init: str, weights_dir: str | Path | None = None) -> tuple[dict[str, torch.Tensor], Path]:
    """(state dict, file) of `pretrain.init=<init>`; a one-line TSTError naming the setting, the
    directory, TST_WEIGHTS_DIR and the file when it is not there."""
    if init not in INITS:
        raise TSTError(f"pretrain.init: expected null or one of {', '.join(INITS)}, got {init!r}")
    path = published_weights_file(INITS[init], f"pretrain.init={init}", weights_dir)
    return read_state_dict(path), path


def adapted_model_config(state_dict: dict[str, torch.Tensor], image_size: int) -> dict:
    """The "4m"-family model config of a published 4M state dict at `image_size` px."""
    key = f"encoder_embeddings.{FOURM_RGB_PIXELS}.proj.weight"
    if key not in state_dict:
        raise TSTError(f"4M weights: missing key '{key}' (is this a 4M checkpoint?)")
    dim, pixels = state_dict[key].shape
    patch = int(round((pixels / 3) ** 0.5))
    hidden = state_dict["encoder.0.mlp.fc1.weight"].shape[0] if "encoder.0.mlp.fc1.weight" in state_dict else 0
    # The plain-MLP ratio whose 2/3 is that width: 4 for every published size; else the smallest that gives it.
    mlp_ratio = 4.0 if swiglu_hidden(dim, 4.0) == hidden else (math.ceil(3 * hidden / 2) + 0.5) / dim
    if swiglu_hidden(dim, mlp_ratio) != hidden:
        raise TSTError(f"4M weights: a SwiGLU width of {hidden} does not fit a {dim}-wide model")
    if image_size % patch:
        raise TSTError(f"model.image_size: {image_size} px is not a multiple of the 4M patch ({patch} px)")
    depth = lambda prefix: len({m.group(1) for k in state_dict if (m := re.match(rf"{prefix}\.(\d+)\.", k))})  # noqa: E731
    return {"dim": int(dim), "encoder_depth": depth("encoder"), "decoder_depth": depth("decoder"),
            "heads": max(1, int(dim) // HEAD_DIM), "patch": patch, "image_size": int(image_size),
            "mlp_ratio": mlp_ratio, "family": "4m"}


def _rgb_patch_embedding(keys: KeyMapper, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4M's bias-free Linear over ImageNet-normalized (ph, pw, c) patches as a Linear over TST's network
    RGB (x - RGB_MEAN) / RGB_STD: weight columns scaled by RGB_STD / std_c, bias = W (RGB_MEAN - mean_c) / std_c."""
    weight = keys.take(f"encoder_embeddings.{FOURM_RGB_PIXELS}.proj.weight", "-> input_adapters.rgb (normalization folded)")
    mean = torch.tensor(IMAGENET_MEAN).repeat(patch * patch)  # channel fastest, as the patches are laid out
    std = torch.tensor(IMAGENET_STD).repeat(patch * patch)
    return weight * (RGB_STD / std), weight @ ((RGB_MEAN - mean) / std)


def map_4m_model(state_dict: dict[str, torch.Tensor], model: MultimodalMaskedModel
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """(our tensors, published key -> what became of it, our keys left at their fresh init)."""
    keys = KeyMapper(state_dict, "4M")
    ours = model.state_dict()
    dim = model.config.dim

    def attention(published: str, mine: str, fused: bool) -> None:
        if fused:
            qkv = keys.take(f"{published}.qkv.weight", f"-> {mine}.q/kv.weight")
            split_qkv(keys, mine, qkv, torch.zeros(qkv.shape[0]))
        else:
            keys.linear(f"{published}.q", f"{mine}.q")
            keys.linear(f"{published}.kv", f"{mine}.kv")
        keys.linear(f"{published}.proj", f"{mine}.out")

    def mlp(published: str, mine: str) -> None:
        for fc in ("fc1", "fc2", "fc3"):
            keys.linear(f"{published}.{fc}", f"{mine}.{fc}")

    for i in range(model.config.encoder_depth):
        p, o = f"encoder.{i}", f"encoder.{i}"
        keys.norm(f"{p}.norm1", f"{o}.norm1")
        attention(f"{p}.attn", f"{o}.attn", fused=True)
        keys.norm(f"{p}.norm2", f"{o}.norm2")
        mlp(f"{p}.mlp", f"{o}.mlp")
    for i in range(model.config.decoder_depth):
        p, o = f"decoder.{i}", f"decoder.{i}"
        keys.norm(f"{p}.norm1", f"{o}.norm1")
        attention(f"{p}.self_attn", f"{o}.attn", fused=True)
        keys.norm(f"{p}.query_norm", f"{o}.norm_cross")
        attention(f"{p}.cross_attn", f"{o}.cross_attn", fused=False)
        keys.norm(f"{p}.context_norm", f"{o}.norm_memory")
        keys.norm(f"{p}.norm2", f"{o}.norm2")
        mlp(f"{p}.mlp", f"{o}.mlp")
    keys.norm("encoder_norm", "encoder_norm")
    keys.norm("decoder_norm", "decoder_norm")
    keys.linear("decoder_proj_context", "context_projection")
    keys.put("mask_token", keys.take("mask_token", "-> mask_token").reshape(dim))

    inputs, targets = ours["modality_embedding"].clone(), ours["target_modality_embedding"].clone()
    mapped_embeddings = []
    for index, name in enumerate(model.names):
        target_name = FOURM_NAMES.get(name)
        input_name = FOURM_RGB_PIXELS if name == "rgb" else target_name
        for table, published in ((inputs, f"encoder_embeddings.{input_name}.mod_emb"),
                                 (targets, f"decoder_embeddings.{target_name}.mod_emb")):
            if target_name is not None and keys.has(published):
                table[index] = keys.take(published, f"-> {'target_' if table is targets else ''}modality_embedding"
                                                    f"[{name}]").reshape(dim)
                mapped_embeddings.append(published)
    keys.put("modality_embedding", inputs)
    keys.put("target_modality_embedding", targets)
    if "rgb" in model.names and model.modalities[model.names.index("rgb")].reads == "pixels":
        weight, bias = _rgb_patch_embedding(keys, model.config.patch)
        keys.put("input_adapters.rgb.weight", weight)
        keys.put("input_adapters.rgb.bias", bias)

    # Everything else: named with the reason it has no place in TST's model (module docstring).
    keys.drop_matching(r"(encoder|decoder)_embeddings\.[^.]+\.pos_emb", "fixed sin-cos positions, recomputed")
    keys.drop_matching(r"(encoder|decoder)_embeddings\.[^.]+\.(token_emb|to_logits|emb_proj)\..+",
                       "4M's own token vocabulary (its VQ tokenizers' codes or words): TST feeds and predicts its own")
    keys.drop_matching(r"(encoder|decoder)_embeddings\.[^.]+\.(mod_emb|proj\.weight)",
                       "a 4M modality this TST model does not have")
    keys.drop_matching(r"encoder_embeddings\.[^.]+\.proj\.bias", "a 4M modality this TST model does not have")
    mapped, accounted = keys.finish()
    check_mapped(mapped, ours, "4M weights", complete=False)  # what is left out starts fresh (below)
    fresh = sorted(k for k in ours if k not in mapped)
    return mapped, accounted, fresh


def load_adapted(model: MultimodalMaskedModel, state_dict: dict[str, torch.Tensor]) -> dict:
    """Map `state_dict` onto `model` in place; returns {"mapped": count, "fresh": [our keys left at init],
    "dropped": count of published keys with no place}."""
    mapped, accounted, fresh = map_4m_model(state_dict, model)
    model.load_state_dict(mapped, strict=False)
    return {"mapped": len(mapped), "fresh": fresh,
            "dropped": sum(note.startswith("dropped") for note in accounted.values())}
