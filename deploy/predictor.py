"""The deployed multi-task predictor: raw observations in, a semantic map, boxes and a caption out, from
one encoder pass.

Runtimes: "torch" (eager, or torch.compile'd with deploy.compile=true; fp32/bf16/fp16 autocast) and
"onnx" (ONNX Runtime on the graphs written by `tst deploy export`: fp32, or the dense graph in int8).
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tst.errors import TSTError

from tst.transfer.checkpoint import TransferredModel, load_transfer

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Prediction:
    """One observation's outputs. semantic: (H, W) int64 class ids or None; boxes: (K, 4) float32 pixels
    x0, y0, x1, y1 with scores (K,) and classes (K,) int64, or None; caption: str or None, describing the
    observation of agent step `caption_step` (in the loop, captions run less often than the other heads).
    A registered task beyond these sets the attributes its `prediction_fields` names."""

    semantic: np.ndarray | None = None
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    classes: np.ndarray | None = None
    caption: str | None = None
    caption_step: int | None = None


def resolve_device(requested: str) -> torch.device:
    """cpu | cuda | auto: `cuda` without a GPU is an error, `auto` falls back to the CPU with a warning."""
    if requested not in ("cpu", "cuda", "auto"):
        raise TSTError(f"deploy.device: expected cpu, cuda or auto, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TSTError("deploy.device=cuda: no CUDA GPU is visible to torch; use deploy.device=cpu or auto")
    if requested == "auto" and not torch.cuda.is_available():
        warnings.warn("deploy.device=auto: no CUDA GPU, running on the CPU", stacklevel=2)
        return torch.device("cpu")
    return torch.device("cuda" if requested in ("cuda", "auto") else "cpu")


def check_observation(rgb, size: int) -> None:
    """A one-line error unless `rgb` is a uint8 (size, size, 3) array."""
    shape = getattr(rgb, "shape", None)
    dtype = getattr(rgb, "dtype", type(rgb).__name__)
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.shape != (size, size, 3):
        raise TSTError(f"observation rgb: expected a uint8 array of shape ({size}, {size}, 3), "
                       f"got {dtype} {tuple(shape) if shape is not None else ''}".rstrip())


def to_prediction(outputs: dict, tasks: dict) -> Prediction:
    """TransferModule.forward outputs for a batch of one -> Prediction of numpy arrays, each task (name ->
    Task) filling its own fields."""
    prediction = Prediction()
    for name, output in outputs.items():
        for field, value in tasks[name].prediction_fields(output[0]).items():
            setattr(prediction, field, value)
    return prediction


def prepare_for_inference(module: torch.nn.Module, device: torch.device, compile: bool = False,
                          mode: str | None = None) -> torch.nn.Module:
    """A TransferModule as the deployed predictor runs it: in eval mode on `device`; on the CPU its heads'
    convolutions in channels-last memory, oneDNN's faster layout (tiny@128's detection head: 7.9 ms
    against 9.4 ms on 2 cores, same outputs up to float rounding); with `compile`, the backbone and each
    head as its task compiles it (torch.compile `mode`; "reduce-overhead" = CUDA graphs)."""
    module = module.to(device).eval()
    if device.type == "cpu":
        module.heads.to(memory_format=torch.channels_last)
    if compile:
        module.backbone = torch.compile(module.backbone, mode=mode)
        for name, task in module.tasks.items():
            module.heads[name] = task.compile_for_deploy(module.heads[name], mode)
    return module


class Predictor:
    """`predictor(rgb uint8 (S, S, 3)) -> Prediction`, S = predictor.image_size."""

    def __init__(self, model: TransferredModel, device: str = "cpu", precision: str = "fp32",
                 compile: bool = False, runtime: str = "torch", export_dir: str | Path | None = None):
        if runtime not in ("torch", "onnx"):
            raise TSTError(f"deploy.runtime: expected torch or onnx, got {runtime!r}")
        if runtime == "torch" and precision not in PRECISIONS:
            raise TSTError(f"deploy.precision: the torch runtime runs fp32, bf16 or fp16, got {precision!r}"
                           + (" (int8 runs the exported graph: deploy.runtime=onnx)" if precision == "int8" else ""))
        self.model, self.image_size, self.taxonomy = model, model.image_size, model.taxonomy
        self.device = resolve_device(device)
        self.precision, self.runtime = precision, runtime
        if runtime == "onnx" and precision not in ("fp32", "int8"):
            raise TSTError(f"deploy.precision: the onnx runtime runs the fp32 export or its int8 dense graph; expected "
                           f"fp32 or int8, got {precision!r}")
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self.module = prepare_for_inference(model.module, self.device, compile and runtime == "torch", mode)
        self.onnx = None
        if runtime == "onnx":
            from tst.deploy.export import OnnxGraphs

            self.onnx = OnnxGraphs(Path(export_dir) if export_dir else model.run_dir / "export", self.module,
                                   model.run_dir, int8=precision == "int8")

    @classmethod
    def from_run(cls, run_dir: str | Path, tasks: tuple[str, ...] = ("seg", "det", "caption"), **options) -> "Predictor":
        return cls(load_transfer(run_dir, tasks), **options)

    @property
    def tasks(self) -> list[str]:
        return list(self.module.tasks)

    def to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        check_observation(rgb, self.image_size)
        return torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None].float() / 255.0

    def outputs(self, rgb: np.ndarray, skip: tuple[str, ...] = ()) -> dict:
        """TransferModule-style outputs (task -> per-image predictions) for one observation, the tasks
        in `skip` left out."""
        x = self.to_tensor(rgb)
        if self.onnx is not None:
            return self.onnx(x, skip)
        dtype = PRECISIONS[self.precision]
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with torch.inference_mode(), autocast:
            return self.module(x, skip)

    def __call__(self, rgb: np.ndarray, skip: tuple[str, ...] = ()) -> Prediction:
        outputs = self.outputs(rgb, skip)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return to_prediction(outputs, self.module.tasks)
