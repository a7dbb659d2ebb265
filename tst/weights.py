"""Reading torch checkpoint files without ever unpickling arbitrary objects."""

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
