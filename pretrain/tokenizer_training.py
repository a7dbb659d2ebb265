"""`tst pretrain tokenizers` and `tst pretrain tokens`: train the per-modality tokenizers of the
`fourm` objective on the pretrain split, and precompute the split's codes."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress, TextColumn
from rich.table import Table
from safetensors.torch import save_file

from tst.determinism import deterministic_kernels
from tst.modalities import from_network, tokenized
from tst.sheets import grid_image
from tst.stage import publish
from tst.workspace import fingerprint

from tst.collect.dataset import FrameDataset, RandomResizedCropFlip, collate
from tst.pretrain.data import ResumableSampler, SeededSamples
from tst.pretrain.run import _eval_batch, _modalities, _space_name, _tokenizer_dir, dataset_dir, load_tokenizers
from tst.pretrain.tokenizer import Tokenizer, TokenizerConfig
from tst.pretrain.tokenizer_quality import measure
from tst.pretrain.tokens import precompute_tokens, whole_frame
from tst.pretrain.visualize import to_uint8

console = Console(stderr=True)


def _train(tokenizers: dict[str, Tokenizer], loader, steps: int, lr: float) -> None:
    """Every tokenizer on the same `steps` batches of the endless `loader` (one pass over the data serves
    all modalities), AdamW with a short warmup and a cosine decay."""
    parameters = [p for t in tokenizers.values() for p in t.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    with Progress(*Progress.get_default_columns(), TextColumn("{task.fields[losses]}"), console=console) as progress:
        task = progress.add_task("tokenizers", total=steps, losses="")
        for _, batch in zip(range(steps), loader):  # the loader is endless (a ResumableSampler)
            losses = {name: t.loss(batch[name], t(batch[name])[0]) for name, t in tokenizers.items()}
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            scheduler.step()
            progress.update(task, advance=1, losses=" ".join(f"{n} {v.item():.3f}" for n, v in losses.items()))


def quality_table(quality: dict[str, dict]) -> Table:
    """The console table of tokenizer_quality.measure's figures."""
    table = Table(title=f"tokenizer quality over the {next(iter(quality.values()))['split']} split")
    for column in ("modality", "codes used", "perplexity", "error", "patch-mean baseline", "beats baseline"):
        table.add_column(column)
    for name, q in quality.items():
        table.add_row(name, f"{q['codes_used']}/{q['codebook']}", f"{q['perplexity']:.1f}",
                      f"{q['error']:.4f} ({q['metric']})", f"{q['baseline_error']:.4f}",
                      "yes" if q["error"] < q["baseline_error"] else "[red]no[/red]")
    return table


def train_tokenizers(cfg: DictConfig) -> Path:
    """One FSQ tokenizer per sensor modality on the pretrain split; writes weights, reconstruction PNGs
    and per-modality quality over the whole eval split (codes used, perplexity, reconstruction error
    next to the patch-mean baseline) to <space>/pretrain/tokenizers (or pretrain.tokenizers)."""
    data = dataset_dir(cfg)
    modalities = [m for m in _modalities(cfg) if m in tokenized()]
    t = cfg.pretrain.tokenizer
    config = TokenizerConfig(tuple(int(v) for v in t.levels), int(cfg.model.patch), int(t.hidden))
    out = _tokenizer_dir(cfg)
    size = int(cfg.model.image_size)
    seed = int(cfg.pretrain.seed)
    torch.manual_seed(seed)  # before any weight exists
    deterministic_kernels(cfg.trainer.get("deterministic", True))
    frames = FrameDataset(data, "pretrain", modalities, transform=RandomResizedCropFlip(size, tuple(cfg.data.crop_scale)))
    loader = torch.utils.data.DataLoader(SeededSamples(frames, seed), batch_size=int(cfg.data.batch_size),
                                         sampler=ResumableSampler(len(frames), seed),
                                         num_workers=int(cfg.data.num_workers), collate_fn=collate)
    tokenizers = {name: Tokenizer(name, config) for name in modalities}
    _train(tokenizers, loader, int(t.steps), float(t.lr))
    eval_frames = FrameDataset(data, "eval", modalities, transform=whole_frame(size))
    quality = measure(tokenizers, torch.utils.data.DataLoader(eval_frames, batch_size=32, collate_fn=collate), "eval")
    console.print(quality_table(quality))
    held_out = _eval_batch(data, modalities, size, 4)
    def write(folder: Path) -> dict:
        rows = []
        for name, tokenizer in tokenizers.items():
            save_file({k: v.contiguous() for k, v in tokenizer.state_dict().items()}, str(folder / f"{name}.safetensors"))
            with torch.no_grad():
                decoded = from_network(name, tokenizer.decode(tokenizer.encode(held_out[name])))
            rows += [[to_uint8(name, truth), to_uint8(name, image)] for truth, image in zip(held_out[name], decoded)]
        grid_image(rows, ["eval frame", "tokenized + decoded"],
                   [f"{m} #{b}" for m in modalities for b in range(4)]).save(folder / "reconstructions.png")
        return {"reconstructions": "reconstructions.png", "dataset": str(data), "dataset_fingerprint": fingerprint(data),
                "modalities": modalities, "levels": list(config.levels), "patch": config.patch, "hidden": config.hidden,
                "vocab": config.vocab, "image_size": size, "quality": quality,
                "reconstruction_error": {m: q["error"] for m, q in quality.items()}}

    metrics = {f"{key}_{m}": q[key] for m, q in quality.items() for key in ("error", "baseline_error", "perplexity",
                                                                            "codes_used")}
    # A finished set replaces the old one whole (the folder is the one pretrain.tokenizers names).
    publish(cfg, "pretrain.tokenizers", _space_name(cfg), out, write, {"dataset": data}, metrics,
            images=("reconstructions.png",), replace=True)
    console.print(f"[green]tokenizers[/green] {out}")
    return out


def tokens(cfg: DictConfig) -> Path:
    """`tst pretrain tokens`: precompute the pretrain split's codes with the trained tokenizers."""
    data = dataset_dir(cfg)
    directory = _tokenizer_dir(cfg)
    modalities = [m for m in _modalities(cfg) if m in tokenized()]
    tokenizers = load_tokenizers(directory, data, modalities, int(cfg.model.patch))
    return precompute_tokens(directory, data, tokenizers, int(cfg.model.image_size))
