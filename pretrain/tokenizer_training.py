"""`tst pretrain tokenizers` and `tst pretrain tokens`: train the per-modality tokenizers of the
`fourm` objective on the pretrain split, and precompute the split's codes."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from safetensors.torch import save_file

from tst.sheets import grid_image
from tst.tracking import record_run
from tst.workspace import fingerprint, write_manifest

from tst.collect.dataset import FrameDataset, RandomResizedCropFlip, collate
from tst.pretrain.normalize import from_network
from tst.pretrain.run import _eval_batch, _modalities, _space_name, _tokenizer_dir, dataset_dir, load_tokenizers
from tst.pretrain.tokenizer import Tokenizer, TokenizerConfig
from tst.pretrain.tokens import precompute_tokens
from tst.pretrain.visualize import to_uint8

console = Console(stderr=True)


def train_tokenizers(cfg: DictConfig) -> Path:
    """One FSQ tokenizer per modality on the pretrain split; writes weights, reconstruction PNGs and
    per-modality reconstruction error to <space>/pretrain/tokenizers (or pretrain.tokenizers)."""
    data = dataset_dir(cfg)
    modalities = [m for m in _modalities(cfg) if m in ("rgb", "depth", "normals", "edges")]
    t = cfg.pretrain.tokenizer
    config = TokenizerConfig(tuple(int(v) for v in t.levels), int(cfg.model.patch), int(t.hidden))
    out = _tokenizer_dir(cfg)
    size = int(cfg.model.image_size)
    frames = FrameDataset(data, "pretrain", modalities, transform=RandomResizedCropFlip(size, tuple(cfg.data.crop_scale)))
    held_out = _eval_batch(data, modalities, size, 4)
    torch.manual_seed(int(cfg.pretrain.seed))
    errors, rows = {}, []
    loader = torch.utils.data.DataLoader(frames, batch_size=int(cfg.data.batch_size), shuffle=True,
                                         num_workers=int(cfg.data.num_workers), collate_fn=collate, drop_last=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in modalities:
        tokenizer = Tokenizer(name, config)
        optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=float(t.lr))
        step = 0
        with console.status(f"training the {name} tokenizer") as status:
            while step < int(t.steps):
                for batch in loader:
                    reconstruction, _ = tokenizer(batch[name])
                    loss = tokenizer.loss(batch[name], reconstruction)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    step += 1
                    if step % 20 == 0:
                        status.update(f"training the {name} tokenizer: step {step}/{t.steps}, loss {loss.item():.4f}")
                    if step >= int(t.steps):
                        break
        tokenizer.eval()
        with torch.no_grad():
            truth = held_out[name]
            decoded = from_network(name, tokenizer.decode(tokenizer.encode(truth)))
            errors[name] = float((decoded - truth).abs().mean())
            codes_used = int(torch.unique(tokenizer.encode(truth)).numel())
        save_file({k: v.contiguous() for k, v in tokenizer.state_dict().items()}, str(out / f"{name}.safetensors"))
        for b in range(len(truth)):
            rows.append([to_uint8(name, truth[b]), to_uint8(name, decoded[b])])
        console.print(f"  {name}: mean abs reconstruction error {errors[name]:.4f} (reader units), "
                      f"{codes_used} codes used on 4 held-out frames")
    image = grid_image(rows, ["eval frame", "tokenized + decoded"], [f"{m} #{b}" for m in modalities for b in range(4)])
    image.save(out / "reconstructions.png")
    write_manifest(out, "pretrain.tokenizers", cfg, {"dataset": data},
                   {"dataset": str(data), "dataset_fingerprint": fingerprint(data), "modalities": modalities,
                    "levels": list(config.levels), "patch": config.patch, "hidden": config.hidden,
                    "vocab": config.vocab, "reconstruction_mae": errors, "image_size": size})
    record_run(cfg, "pretrain.tokenizers", _space_name(cfg), out, {"dataset": str(data)},
               {"tokenizers": str(out)}, {f"reconstruction_mae_{m}": e for m, e in errors.items()},
               images=[out / "reconstructions.png"])
    console.print(f"[green]tokenizers[/green] {out}")
    return out


def tokens(cfg: DictConfig) -> Path:
    """`tst pretrain tokens`: precompute the pretrain split's codes with the trained tokenizers."""
    data = dataset_dir(cfg)
    directory = _tokenizer_dir(cfg)
    modalities = [m for m in _modalities(cfg) if m in ("rgb", "depth", "normals", "edges")]
    tokenizers = load_tokenizers(directory, data, modalities, int(cfg.model.patch))
    return precompute_tokens(directory, data, tokenizers, int(cfg.model.image_size))
