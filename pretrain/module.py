"""The LightningModule: token selection, the objective's losses, AdamW with warmup + cosine."""

from __future__ import annotations

import math
import time

import lightning as L
import numpy as np
import torch
from torch import nn

from tst.errors import TSTError
from tst.layers import ModelConfig

from tst.pretrain.masking import MixtureComponent, select_tokens
from tst.pretrain.model import MultimodalMaskedModel
from tst.pretrain.objectives import PixelObjective, TokenObjective
from tst.pretrain.teacher import TeacherTargets
from tst.pretrain.tokenizer import Tokenizer


def mixture_from_config(entries: list[dict], modalities: list[str], target_only: tuple[str, ...] = ()) -> list[MixtureComponent]:
    """Config entries {weight, inputs: {modality or "all": alpha}, targets: {...}} -> components over
    the trained modalities (modalities not named get alpha 0; "all" sets every modality). `target_only`
    modalities (a teacher's features) are never inputs."""

    def alphas(spec: dict, inputs: bool) -> dict[str, float]:
        out = {m: float(spec["all"]) for m in modalities} if "all" in spec else {}
        out.update({m: float(a) for m, a in spec.items() if m != "all" and m in modalities})
        return {m: 0.0 if inputs and m in target_only else a for m, a in out.items()}

    components = [MixtureComponent(float(e["weight"]), alphas(e["inputs"], True), alphas(e["targets"], False))
                  for e in entries]
    components = [c for c in components if any(c.input_alphas.values()) and any(c.target_alphas.values())]
    if not components:
        raise TSTError(f"pretrain.mixture: no component has inputs and targets among {modalities}")
    return components


class PretrainModule(L.LightningModule):
    """config: the resolved run config as a plain dict (model, pretrain, data sections).
    tokenizers: frozen per-modality tokenizers (objective fourm only). modalities: what the data loader
    reads; with pretrain.teacher the model also predicts that teacher's features (see teacher.py)."""

    def __init__(self, config: dict, modalities: list[str], num_classes: int = 0,
                 tokenizers: dict[str, Tokenizer] | None = None):
        super().__init__()
        self.config = config
        p = config["pretrain"]
        model_config = ModelConfig(**config["model"])
        self.modalities = modalities
        if p["objective"] == "fourm":
            self.tokenizers = nn.ModuleDict(tokenizers)
            self.tokenizers.requires_grad_(False)
            self.objective = TokenObjective(dict(self.tokenizers), model_config.patch)
        else:
            self.objective = PixelObjective(modalities, model_config.patch, num_classes,
                                            bool(p.get("rgb_patch_norm", True)))
        self.teacher = p.get("teacher")
        if self.teacher and p["objective"] == "mae":
            raise TSTError("pretrain.teacher: mae is the RGB-only baseline and takes no teacher; "
                           "use it with multimae or fourm, or set pretrain.teacher=null")
        if self.teacher:
            self.objective = TeacherTargets(self.objective, self.teacher)
        self.model = MultimodalMaskedModel(model_config, self.objective.io())
        self.targets = self.model.names  # the modalities token budgets are drawn over (the data's, plus a teacher's)
        N = model_config.tokens_per_modality
        if p["objective"] == "mae":
            self.input_budget = int(round(N * (1 - float(p["mae_mask_ratio"]))))
            self.target_budget = N - self.input_budget
            self.mixture = [MixtureComponent(1.0, {"rgb": 1.0}, {"rgb": 1.0})]
        else:
            self.input_budget, self.target_budget = int(p["input_budget"]), int(p["target_budget"])
            self.mixture = mixture_from_config(p["mixture"], self.targets, (self.teacher,) if self.teacher else ())
        if self.input_budget + self.target_budget > N * len(self.targets):
            raise TSTError(f"pretrain budgets: {self.input_budget} + {self.target_budget} tokens exceed the "
                           f"{N * len(self.targets)} tokens of {len(self.targets)} modalities at {N} each")
        for index, component in enumerate(self.mixture):
            for side, alphas, budget in (("inputs", component.input_alphas, self.input_budget),
                                         ("targets", component.target_alphas, self.target_budget)):
                available = N * sum(1 for a in alphas.values() if a > 0)
                if budget > available:
                    raise TSTError(f"pretrain.mixture[{index}].{side}: a budget of {budget} tokens exceeds the "
                                   f"{available} tokens of its modalities ({N} each)")
        self._last_time: float | None = None

    def train(self, mode: bool = True) -> "PretrainModule":
        """Lightning switches every submodule to training mode; the frozen tokenizers stay in eval mode,
        so their latent standardization keeps its trained statistics and the codes do not drift."""
        super().train(mode)
        if hasattr(self, "tokenizers"):
            self.tokenizers.eval()
        return self

    def selection(self, batch_size: int, step: int):
        generator = torch.Generator().manual_seed(
            int(np.random.default_rng([self.config["pretrain"]["seed"], step, self.global_rank]).integers(2**62)))
        return select_tokens(batch_size, self.targets, self.model.config.tokens_per_modality,
                             self.input_budget, self.target_budget, self.mixture, generator)

    def losses(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        batch_size = len(batch["key"])
        selection = self.selection(batch_size, step)
        selection = type(selection)(*(t.to(self.device) for t in (selection.inputs, selection.targets,
                                                                   selection.target_modality, selection.input_modality)))
        outputs = self.model(self.objective.inputs(batch), selection)
        return self.objective.losses(outputs, batch)

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        losses = self.losses(batch, self.global_step)
        bad = [name for name, value in losses.items() if not torch.isfinite(value)]
        if bad:
            raise TSTError(f"pretrain: non-finite loss at step {self.global_step} in {', '.join(bad)}; "
                           "lower pretrain.lr or check the data")
        loss = sum(losses.values())
        batch_size = len(batch["key"])
        self.log_dict({f"loss/{name}": value for name, value in losses.items()}, batch_size=batch_size)
        self.log("loss/total", loss, prog_bar=True, batch_size=batch_size)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        now = time.perf_counter()
        if self._last_time is not None:
            seconds = now - self._last_time
            world = self.trainer.world_size
            self.log("samples_per_s", batch_size * world / seconds, prog_bar=True, batch_size=batch_size)
            self.log("tokens_per_s", batch_size * world * (self.input_budget + self.target_budget) / seconds,
                     batch_size=batch_size)
        self._last_time = now
        return loss

    def configure_optimizers(self):
        p = self.config["pretrain"]
        decay = [w for n, w in self.model.named_parameters() if w.ndim >= 2 and "embedding" not in n]
        no_decay = [w for n, w in self.model.named_parameters() if w.ndim < 2 or "embedding" in n]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": float(p["weight_decay"])},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=float(p["lr"]),
                                      betas=(0.9, 0.95))
        warmup, total = int(p["warmup_steps"]), int(p["steps"])

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
