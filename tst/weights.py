"""Reading weight files (torch checkpoints without ever unpickling arbitrary objects, safetensors) with
one-line errors naming the file; finding published weights in $TST_WEIGHTS_DIR and mapping their keys
onto ours (the transfer stage's generalists and adapted TST's 4M-21 both use KeyMapper)."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
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


# ------------------------------------------------------------------------------ published weights

WEIGHTS_ENV = "TST_WEIGHTS_DIR"  # the directory published weight files are read from (never downloaded)


def published_weights_file(files: tuple[str, ...], key: str, weights_dir: str | Path | None = None) -> Path:
    """The first of `files` (names accepted for one published model) in `weights_dir`, else in
    $TST_WEIGHTS_DIR; a one-line TSTError naming `key` (the setting that asked for it), the directory,
    the environment variable and the expected file otherwise."""
    expected = files[0]
    directory = weights_dir if weights_dir is not None else os.environ.get(WEIGHTS_ENV)
    if not directory:
        raise TSTError(f"{key} needs its published weights: set {WEIGHTS_ENV} to a directory holding {expected}")
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise TSTError(f"{key}: weights directory {directory} ({WEIGHTS_ENV}) does not exist; it should hold {expected}")
    for name in files:
        if (directory / name).is_file():
            return directory / name
    raise TSTError(f"{key}: {expected} not found in {directory} (the weights directory: {WEIGHTS_ENV})")


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a `code/` folder (OpenAI's CLIP files are); torch.save writes
    zips without one."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.startswith("code/") or "/code/" in name for name in archive.namelist())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file, a TorchScript archive (its parameters and buffers), or a torch-saved state dict."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    state_dict = read_torch_file(path)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise TSTError(f"{path}: not a state dict of tensors")
    return state_dict


class KeyMapper:
    """Maps a published state dict onto ours key by key and records what happened to every published key
    (`accounted`): taken, dropped with a reason, or (at `finish`) an error naming an unknown one."""

    def __init__(self, state_dict: dict[str, torch.Tensor], model: str):
        self.state_dict, self.model = state_dict, model
        self.accounted: dict[str, str] = {}
        self.out: dict[str, torch.Tensor] = {}

    def has(self, key: str) -> bool:
        return key in self.state_dict

    def take(self, key: str, note: str) -> torch.Tensor:
        if key not in self.state_dict:
            raise TSTError(f"{self.model} weights: missing key '{key}'")
        self.accounted[key] = note
        return self.state_dict[key].detach().float()

    def put(self, ours: str, tensor: torch.Tensor) -> None:
        self.out[ours] = tensor

    def copy(self, key: str, ours: str) -> None:
        self.put(ours, self.take(key, f"-> {ours}"))

    def norm(self, key: str, ours: str) -> None:
        """A LayerNorm `key` -> `ours`; a bias-free one (ml-4m saves a zero `bias` buffer, or nothing) gets
        a zero bias."""
        weight = self.take(f"{key}.weight", f"-> {ours}.weight")
        self.put(f"{ours}.weight", weight)
        self.put(f"{ours}.bias", self.take(f"{key}.bias", f"-> {ours}.bias") if self.has(f"{key}.bias")
                 else torch.zeros_like(weight))

    def linear(self, key: str, ours: str) -> None:
        """A Linear `key` -> `ours`; a bias-free one gets a zero bias."""
        weight = self.take(f"{key}.weight", f"-> {ours}.weight")
        self.put(f"{ours}.weight", weight)
        self.put(f"{ours}.bias", self.take(f"{key}.bias", f"-> {ours}.bias") if self.has(f"{key}.bias")
                 else torch.zeros(weight.shape[0]))

    def drop(self, key: str, reason: str) -> None:
        self.accounted[key] = f"dropped: {reason}"

    def drop_matching(self, pattern: str, reason: str) -> None:
        expression = re.compile(pattern)
        for key in self.state_dict:
            if key not in self.accounted and expression.fullmatch(key):
                self.drop(key, reason)

    def blocks(self, prefix: str) -> int:
        """Number of blocks `prefix.N.` in the state dict (N = 0..depth-1, checked contiguous)."""
        indices = {int(m.group(1)) for k in self.state_dict if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
        if not indices:
            raise TSTError(f"{self.model} weights: no '{prefix}.N.' keys (is this the right file?)")
        for index in range(max(indices) + 1):
            if index not in indices:
                raise TSTError(f"{self.model} weights: missing key '{prefix}.{index}.*'")
        return len(indices)

    def finish(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        unknown = [k for k in self.state_dict if k not in self.accounted]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise TSTError(f"{self.model} weights: unknown key '{unknown[0]}'{more}")
        return self.out, self.accounted


def split_qkv(keys: KeyMapper, ours: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """A fused [q; k; v] projection (3D, D) -> our separate q (D, D) and kv (2D, D): rows 0..D-1 are q,
    then k, then v, in DINOv2, CLIP and 4M alike, and our `kv` reads k first, then v."""
    dim = weight.shape[1]
    keys.put(f"{ours}.q.weight", weight[:dim])
    keys.put(f"{ours}.kv.weight", weight[dim:])
    keys.put(f"{ours}.q.bias", bias[:dim])
    keys.put(f"{ours}.kv.bias", bias[dim:])


def check_mapped(mapped: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str,
                 complete: bool = True) -> None:
    """A one-line TSTError naming the first mapped key the model (its state dict `expected`) does not
    have or holds in another shape, and with `complete` the first model key the mapping left out."""
    if complete:
        for key in expected:
            if key not in mapped:
                raise TSTError(f"{what}: mapped weights lack '{key}'")
    for key, tensor in mapped.items():
        if key not in expected:
            raise TSTError(f"{what}: mapped weights have unexpected '{key}'")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise TSTError(f"{what}: '{key}' has shape {tuple(tensor.shape)} in the file, the model expects "
                           f"{tuple(expected[key].shape)}")
