"""Reading weight files (torch checkpoints without ever unpickling arbitrary objects, safetensors) with
one-line errors naming the file."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from tst.errors import TSTError


def read_torch_file(path: str | Path) -> Any:
    """The tensors (and plain containers and numbers) stored in a torch file at `path`, read with
    `weights_only=True`, so a file that would run code or build arbitrary objects when unpickled is refused;
    a one-line TSTError names the file when it is missing, truncated, not a torch file, or such a pickle."""
    path = Path(path)
    if not path.is_file():
        raise TSTError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0][:160]
        raise TSTError(f"{path}: refused: not a weights-only torch file ({reason}); TST never unpickles "
                       "arbitrary objects") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise TSTError(f"{path}: not a readable torch checkpoint ({str(error).strip().splitlines()[0][:160]})") from None


def load_safetensors(path: Path, expected: str = "safetensors weights") -> dict:
    """Tensors of a .safetensors file; a one-line TSTError naming the file when it is missing,
    truncated or not safetensors (safetensors' own errors are caught)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TSTError(f"{path}: missing; expected {expected}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TSTError(f"{path}: truncated or not a safetensors file ({reason}); expected {expected}") from None
