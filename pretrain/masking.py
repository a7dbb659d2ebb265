"""Token budgets (4M): each sample's input and target budgets split across modalities by a Dirichlet
draw, with input and target tokens of a modality disjoint."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tst.errors import TSTError


@dataclass(frozen=True)
class MixtureComponent:
    """One Dirichlet of a mixture: per-modality concentrations for inputs and targets (0 = never),
    and the probability of drawing this component for a sample."""

    weight: float
    input_alphas: dict[str, float]
    target_alphas: dict[str, float]


def split_budget(alphas: torch.Tensor, budget: int, capacity: list[int], generator: torch.Generator) -> list[int]:
    """Integer counts per modality that sum to exactly `budget`, drawn around Dirichlet(alphas (M,) double)
    proportions, never above `capacity` (M ints) and zero where alpha is 0.

    Rounding: floor of the proportions, then the remainder one token at a time to the modalities with
    room left, largest fractional part first; repeated while capped modalities hand back tokens.
    Only the gamma draw is a tensor op; the bookkeeping on M numbers is plain Python (it runs twice per
    sample on the training step's critical path).
    """
    active = [a > 0 for a in alphas.tolist()]
    available = sum(c for c, on in zip(capacity, active) if on)
    if available < budget:
        raise TSTError(f"token budget {budget} exceeds the {available} tokens available")
    gamma = torch._standard_gamma(torch.where(alphas > 0, alphas, torch.ones_like(alphas)), generator=generator)
    gamma = torch.where(alphas > 0, gamma, torch.zeros_like(gamma))
    proportions = (gamma / gamma.sum()).tolist()
    counts = [min(math.floor(p * budget), c) for p, c in zip(proportions, capacity)]
    while sum(counts) < budget:
        share = [p * budget - n if on and n < c else -math.inf
                 for p, n, c, on in zip(proportions, counts, capacity, active)]
        counts[share.index(max(share))] += 1
    return counts


@dataclass
class TokenSelection:
    """Index tensors into the concatenated token axis (M modalities x N tokens each):
    inputs (B, I) and targets (B, T); modality id of each target (B, T)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    target_modality: torch.Tensor
    input_modality: torch.Tensor


def select_tokens(batch_size: int, modalities: list[str], tokens_per_modality: int, input_budget: int,
                  target_budget: int, mixture: list[MixtureComponent], generator: torch.Generator) -> TokenSelection:
    """Draw, per sample, how many input and target tokens each modality gets and which ones."""
    M, N = len(modalities), tokens_per_modality
    weights = torch.tensor([c.weight for c in mixture], dtype=torch.double)
    alphas = [tuple(torch.tensor([float(side.get(m, 0.0)) for m in modalities]).double()
                    for side in (c.input_alphas, c.target_alphas)) for c in mixture]
    inputs, targets = [], []
    for _ in range(batch_size):
        a_in, a_out = alphas[int(torch.multinomial(weights, 1, generator=generator))]
        n_in = split_budget(a_in, input_budget, [N] * M, generator)
        n_out = split_budget(a_out, target_budget, [N - n for n in n_in], generator)
        orders = [torch.randperm(N, generator=generator) + m * N for m in range(M)]
        inputs.append(torch.cat([order[:n] for order, n in zip(orders, n_in)]))
        targets.append(torch.cat([order[first:first + n] for order, first, n in zip(orders, n_in, n_out)]))
    inputs_t, targets_t = torch.stack(inputs), torch.stack(targets)
    return TokenSelection(inputs_t, targets_t, targets_t // N, inputs_t // N)


def fixed_selection(batch_size: int, modalities: list[str], tokens_per_modality: int, sources: list[str],
                    destinations: list[str]) -> TokenSelection:
    """Every token of `sources` as input, every token of `destinations` as target (any-to-any prediction)."""
    N = tokens_per_modality
    ins = torch.cat([torch.arange(N) + modalities.index(m) * N for m in sources])
    outs = torch.cat([torch.arange(N) + modalities.index(m) * N for m in destinations]
                     or [torch.zeros(0, dtype=torch.long)])
    inputs, targets = ins.expand(batch_size, -1), outs.expand(batch_size, -1)
    return TokenSelection(inputs, targets, targets // N, inputs // N)
