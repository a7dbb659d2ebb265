"""Token budgets (4M): each sample's input and target budgets split across modalities by a Dirichlet
draw, with input and target tokens of a modality disjoint."""

from __future__ import annotations

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


def split_budget(alphas: torch.Tensor, budget: int, capacity: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Integer counts per modality that sum to exactly `budget`, drawn around Dirichlet(alphas)
    proportions, never above `capacity` (M,) and zero where alpha is 0.

    Rounding: floor of the proportions, then the remainder one token at a time to the modalities with
    room left, largest fractional part first; repeated while capped modalities hand back tokens.
    """
    active = alphas > 0
    if int(capacity[active].sum()) < budget:
        raise TSTError(f"token budget {budget} exceeds the {int(capacity[active].sum())} tokens available")
    gamma = torch._standard_gamma(torch.where(active, alphas, torch.ones_like(alphas)).double(), generator=generator)
    proportions = torch.where(active, gamma, torch.zeros_like(gamma))
    proportions = proportions / proportions.sum()
    counts = torch.minimum(torch.floor(proportions * budget).long(), capacity)
    while int(counts.sum()) < budget:
        room = active & (counts < capacity)
        share = torch.where(room, proportions * budget - counts, torch.full_like(proportions, -torch.inf))
        counts[int(torch.argmax(share))] += 1
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
    inputs, targets = [], []
    for _ in range(batch_size):
        component = mixture[int(torch.multinomial(weights, 1, generator=generator))]
        a_in = torch.tensor([float(component.input_alphas.get(m, 0.0)) for m in modalities])
        a_out = torch.tensor([float(component.target_alphas.get(m, 0.0)) for m in modalities])
        n_in = split_budget(a_in, input_budget, torch.full((M,), N), generator)
        n_out = split_budget(a_out, target_budget, N - n_in, generator)
        sample_in, sample_out = [], []
        for m in range(M):
            order = torch.randperm(N, generator=generator) + m * N
            sample_in.append(order[: n_in[m]])
            sample_out.append(order[n_in[m]: n_in[m] + n_out[m]])
        inputs.append(torch.cat(sample_in))
        targets.append(torch.cat(sample_out))
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
