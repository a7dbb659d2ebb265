"""`tst pretrain predict`: any subset of modalities to any other on eval frames, with errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console

from tst.errors import TSTError
from tst.sheets import grid_image
from tst.workspace import atomic_write_json

from tst.pretrain.masking import fixed_selection
from tst.pretrain.run import _eval_batch, load_run
from tst.pretrain.visualize import to_uint8

console = Console(stderr=True)


def modality_errors(name: str, predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Errors in reader units: depth abs-rel and mean abs (m), normals mean angle (degrees), edges F1
    and rgb mean abs error / PSNR."""
    if name == "depth":
        valid = truth > 0
        return {"abs_rel": float(((predicted - truth).abs()[valid] / truth[valid]).mean()),
                "mae_m": float((predicted - truth).abs()[valid].mean())}
    if name == "normals":
        valid = truth.norm(dim=1) > 0.5
        cosine = (torch.nn.functional.normalize(predicted, dim=1) * truth).sum(1).clamp(-1, 1)
        return {"mean_angle_deg": float(torch.rad2deg(torch.acos(cosine))[valid].mean())}
    if name == "edges":
        p, t = predicted > 0.5, truth > 0.5
        tp = float((p & t).sum())
        precision, recall = tp / max(1.0, float(p.sum())), tp / max(1.0, float(t.sum()))
        return {"f1": 2 * precision * recall / max(1e-9, precision + recall)}
    mse = float(((predicted - truth) ** 2).mean())
    return {"mae": float((predicted - truth).abs().mean()), "psnr": float(10 * np.log10(1.0 / max(mse, 1e-10)))}


def predict(cfg: DictConfig) -> dict:
    """Predict cfg.to from cfg.from on eval frames; PNGs next to the truth and per-modality errors."""
    if not cfg.get("ckpt"):
        raise TSTError("ckpt: missing; expected a pretraining run folder (ckpt=<workspace>/<space>/pretrain/<run>)")
    module, config, data = load_run(Path(str(cfg.ckpt)))
    sources, targets = list(cfg["from"]), list(cfg["to"])
    for name in sources + targets:
        if name not in module.modalities:
            raise TSTError(f"from/to: '{name}' is not a modality of this model ({', '.join(module.modalities)})")
    if set(sources) & set(targets):
        raise TSTError(f"from/to: {sorted(set(sources) & set(targets))} are on both sides")
    batch = _eval_batch(data, module.modalities, config["model"]["image_size"], int(cfg.predict_frames))
    B = len(batch["key"])
    selection = fixed_selection(B, module.modalities, module.model.config.tokens_per_modality, sources, targets)
    with torch.no_grad():
        outputs = module.model(module.objective.inputs(batch), selection)
    run_dir = Path(str(cfg.ckpt))
    run_dir = run_dir.parent.parent if run_dir.is_file() else run_dir
    out = run_dir / "predict" / f"{'+'.join(sources)}-to-{'+'.join(targets)}"
    out.mkdir(parents=True, exist_ok=True)
    metrics, rows = {}, []
    N = module.model.config.tokens_per_modality
    images = {}
    for name in targets:
        prediction, where = outputs[name]
        grid = prediction.reshape(B, N, -1)
        images[name] = module.objective.images(name, grid, batch)
        metrics[name] = modality_errors(name, images[name].float(), batch[name].float())
    for b in range(B):
        row = [to_uint8(s, batch[s][b]) for s in sources]
        for name in targets:
            top = float(batch[name][b].max()) if name == "depth" else None
            row += [to_uint8(name, images[name][b], top), to_uint8(name, batch[name][b], top)]
        rows.append(row)
    titles = [f"input {s}" for s in sources] + [t for name in targets for t in (f"predicted {name}", f"true {name}")]
    grid_image(rows, titles, batch["key"]).save(out / "predictions.png")
    atomic_write_json(out / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    console.print(f"[green]predictions[/green] {out / 'predictions.png'}")
    return metrics
