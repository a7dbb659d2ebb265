"""Same seed, same weights: deterministic kernels for training on any number of threads."""

from __future__ import annotations

from contextlib import contextmanager


def deterministic_kernels(setting: bool | str) -> bool | str:
    """`trainer.deterministic` (true, false or "warn") as Lightning's Trainer takes it, and the same
    switch for torch's own loops. Two CPU threads otherwise sum some gradients in either order, so two
    runs of one seed drift apart (3.6e-5 per weight after 60 steps). In deterministic mode torch also
    fills every fresh tensor with NaN by default, which doubled an EfficientNet transfer's time and buys
    nothing here (no kernel reads memory it has not written), so that fill is turned off."""
    import torch
    import torch.utils.deterministic

    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.use_deterministic_algorithms(bool(setting), warn_only=setting == "warn")
    return setting


@contextmanager
def exact_counting():
    """Deterministic algorithms off for a block that only counts integers. torchmetrics replaces
    torch.bincount by a compare-and-sum over every (pixel, class) pair when they are on (bincount is not
    deterministic on CUDA), which took 50 of a 10-step transfer's 85 seconds; integer counts are exact in
    any order, so the result is the same."""
    import torch

    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
