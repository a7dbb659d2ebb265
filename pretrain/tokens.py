"""Tokens computed once: every pretrain frame (whole frame at the model's size) encoded by the
tokenizers and stored beside them, so `fourm` training skips the tokenizer encoders.

Trade-off: precomputed tokens fix the view, so training on them uses whole frames (no random crops or
flips); `pretrain.precomputed_tokens=true` opts in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import save_file

from tst.errors import TSTError
from tst.weights import load_safetensors
from tst.workspace import atomic_write_json, fingerprint

from tst.collect.dataset import FrameDataset, RandomResizedCropFlip, collate

console = Console(stderr=True)
TOKENS = "tokens-pretrain.safetensors"
KEYS = "tokens-pretrain.json"


def whole_frame(size: int) -> RandomResizedCropFlip:
    """The deterministic view tokens are computed on: the whole (square) frame resized, no flip."""
    return RandomResizedCropFlip(size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0)


def precompute_tokens(directory: Path, data: Path, tokenizers: dict, size: int, batch_size: int = 32) -> Path:
    """Encode every pretrain frame; writes <directory>/tokens-pretrain.safetensors (modality -> (F, N)
    int32 codes) and tokens-pretrain.json (frame keys in row order, dataset fingerprint)."""
    frames = FrameDataset(data, "pretrain", list(tokenizers), transform=whole_frame(size))
    loader = torch.utils.data.DataLoader(frames, batch_size=batch_size, collate_fn=collate)
    codes: dict[str, list[torch.Tensor]] = {name: [] for name in tokenizers}
    keys: list[str] = []
    with torch.no_grad():
        for batch in loader:
            keys += batch["key"]
            for name, tokenizer in tokenizers.items():
                codes[name].append(tokenizer.encode(batch[name]).int())
    save_file({name: torch.cat(parts) for name, parts in codes.items()}, str(directory / TOKENS))
    atomic_write_json(directory / KEYS, {"keys": keys, "dataset_fingerprint": fingerprint(data), "size": size})
    console.print(f"[green]tokens[/green] {len(keys)} frames x {len(tokenizers)} modalities -> {directory / TOKENS}")
    return directory / TOKENS


def load_tokens(directory: Path, data: Path, size: int) -> dict[str, dict[str, torch.Tensor]]:
    """frame key -> modality -> (N,) codes, checked against the dataset and the model size."""
    if not (directory / TOKENS).is_file():
        raise TSTError(f"{directory}: no precomputed tokens; run tst pretrain tokens first")
    meta = json.loads((directory / KEYS).read_text())
    if meta["dataset_fingerprint"] != fingerprint(data) or meta["size"] != size:
        raise TSTError(f"{directory / TOKENS}: computed for another dataset or size ({meta['size']} px); "
                       "run tst pretrain tokens again")
    codes = load_safetensors(directory / TOKENS, "the codes written by tst pretrain tokens")
    return {key: {name: table[row].long() for name, table in codes.items()} for row, key in enumerate(meta["keys"])}
