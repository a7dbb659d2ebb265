"""Library chatter that is not the user's business, silenced once per process (the CLI's and each
process TST spawns that trains)."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Silence library chatter that is not the user's business: Lightning's accelerator lines and its
    cloud-logging tip, a deprecation inside Lightning's own pytree helper, its note on modules in eval
    mode (fourm's frozen tokenizers are meant to be), its warning on resuming mid-epoch (pretraining's
    sampler draws by global sample index, so a resumed run continues the same sequence), and its warning
    that a checkpoint folder is not empty (a resumed run's folder holds its earlier checkpoints by design);
    the ONNX exporter's notes that torchvision's operators are not registered (TST exports none of them)
    and that graph outputs kept their initializers (the export is checked against PyTorch anyway)."""
    import logging
    import warnings

    # Lightning sets its package loggers back to INFO when it is imported (lazily, after this), so the
    # levels go on the child loggers its info lines are emitted through.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("torch.onnx._internal.exporter._registration", "onnx_ir.passes.common.initializer_deduplication"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
