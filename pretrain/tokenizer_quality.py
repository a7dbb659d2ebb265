"""How good a tokenizer is, measured over a whole split: codebook usage, perplexity and reconstruction
error next to the trivial baseline that replaces every patch by its mean.

A tokenizer that does not beat the patch mean, or that uses a sliver of its codebook, gives `fourm`
targets that carry less than a blurred image does; `tst pretrain pretrain.objective=fourm` refuses such
tokenizers (see `check_quality`).

Errors are in reader units (tst.collect.dataset), each modality's own `error` measure from the registry:
rgb and normals mean absolute error, depth in metres over pixels with a hit, edges the *balanced* mean
absolute error (the mean of the error on edge and on non-edge pixels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tst.errors import TSTError
from tst.modalities import from_network, get

from tst.pretrain.tokenizer import Tokenizer

def patch_mean(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> the same shape, every patch x patch block replaced by its mean."""
    return F.interpolate(F.avg_pool2d(x, patch), scale_factor=patch, mode="nearest")


class QualityMeter:
    """Accumulates one tokenizer's figures over the batches of a split."""

    def __init__(self, name: str, tokenizer: Tokenizer):
        self.name, self.tokenizer = name, tokenizer
        self.counts = torch.zeros(tokenizer.config.vocab, dtype=torch.long)
        self.error = self.baseline = self.weight = 0.0

    @torch.no_grad()
    def update(self, truth: torch.Tensor) -> None:
        """truth: (B, C, H, W) in reader units."""
        codes = self.tokenizer.encode(truth)
        self.counts += torch.bincount(codes.flatten(), minlength=self.counts.numel())
        decoded = from_network(self.name, self.tokenizer.decode(codes))
        measure = get(self.name).error.measure
        error, weight = measure(decoded, truth)
        baseline, _ = measure(patch_mean(truth, self.tokenizer.config.patch), truth)
        self.error, self.baseline, self.weight = self.error + error, self.baseline + baseline, self.weight + weight

    def result(self, split: str) -> dict:
        """codes_used, codebook, perplexity (exp of the code entropy), metric, error, baseline_error."""
        total = int(self.counts.sum())
        p = self.counts[self.counts > 0].double() / max(1, total)
        weight = max(self.weight, 1.0)
        return {"codes_used": int((self.counts > 0).sum()), "codebook": int(self.counts.numel()),
                "perplexity": float(math.exp(float(-(p * p.log()).sum()))) if total else 0.0,
                "metric": get(self.name).error.metric, "error": self.error / weight,
                "baseline_error": self.baseline / weight, "split": split, "patches": total}


def measure(tokenizers: dict[str, Tokenizer], batches, split: str) -> dict[str, dict]:
    """Every tokenizer's figures over `batches` (an iterable of reader batches) -> name -> result()."""
    meters = {name: QualityMeter(name, t.eval()) for name, t in tokenizers.items()}
    for batch in batches:
        for name, meter in meters.items():
            meter.update(batch[name])
    return {name: meter.result(split) for name, meter in meters.items()}


def weaknesses(quality: dict[str, dict], min_code_share: float) -> list[str]:
    """One phrase per failing tokenizer: error not below the patch-mean baseline, or fewer codes used
    than `min_code_share` of the codebook."""
    problems = []
    for name, q in quality.items():
        if q["error"] >= q["baseline_error"]:
            problems.append(f"{name} reconstructs worse than the patch mean ({q['metric']} {q['error']:.4f} vs "
                            f"{q['baseline_error']:.4f})")
        if q["codes_used"] < min_code_share * q["codebook"]:
            problems.append(f"{name} uses {q['codes_used']} of {q['codebook']} codes "
                            f"(< {min_code_share:.0%} of the codebook)")
    return problems


def check_quality(quality: dict[str, dict] | None, min_code_share: float, source: str) -> None:
    """Refuse weak tokenizers (one line naming each modality and figure); quality None = tokenizers
    trained before quality was measured."""
    if quality is None:
        raise TSTError(f"{source}: these tokenizers carry no quality figures; train them again with "
                       "tst pretrain tokenizers, or set pretrain.allow_weak_tokenizers=true")
    problems = weaknesses(quality, min_code_share)
    if problems:
        raise TSTError(f"{source}: weak tokenizers: {'; '.join(problems)}; train them longer (pretrain.tokenizer.steps) "
                       "or set pretrain.allow_weak_tokenizers=true")
