"""The modality registry: one entry per modality owns everything that differs between modalities.

An entry says what the modality is (kind, channels, unit, tier) and carries its behaviour: how it is
stored (codec), what tensors the reader makes of it, how crops resample it, how networks see it
(scaling), its pretraining loss, whether it has a tokenizer, how it is computed from a rendered frame
when it is derived, and its picture. Stages loop over the registry (`by_tier`, `pixel_maps`) instead of
naming modalities, so adding one is one `register` call with these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from tst import visualize
from tst.codecs import DEPTH_PNG16, GRAY8_PNG, JPEG_RGB, JSON, LABELS_PNG16, NORMALS_PNG8, PNG_RGB, Codec
from tst.errors import TSTError

Kind = Literal["image", "depth", "normals", "label_map", "boxes", "text"]
Tier = Literal["sensor", "label"]

DEPTH_SCALE = 5.0  # metres mapped to 1.0 for the networks
RGB_MEAN, RGB_STD = 0.45, 0.25


@dataclass(frozen=True)
class Scaling:
    """How networks see a pixel modality: reader units -> roughly zero-centred, unit-scale values, and
    network outputs (for edges: logits) -> reader units. Both map (B, C, H, W) to (B, C, H, W)."""

    to_network: Callable[[torch.Tensor], torch.Tensor]
    from_network: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ErrorMeasure:
    """How a reconstruction of a pixel modality is scored (tokenizer quality): `metric` names it in
    reports; `measure(decoded, truth)` over (B, C, H, W) reader units -> (summed error, weight), so
    errors add up over the batches of a split as sum / weight."""

    metric: str
    measure: Callable[[torch.Tensor, torch.Tensor], tuple[float, float]]


def _absolute_error(decoded: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    return float((decoded - truth).abs().sum()), truth.numel()


def _depth_error(decoded: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Metres, over pixels with a hit."""
    hit = truth > 0
    return float((decoded - truth).abs()[hit].sum()), int(hit.sum())


def _balanced_edge_error(decoded: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """The mean of the error on edge pixels and on the others: on 1-pixel edges covering a few per cent
    of a frame a plain error is won by predicting "no edge". Each batch adds its balanced error weighted
    by its pixel count."""
    edges = truth > 0.5
    error = (decoded - edges.float()).abs()
    on, off = error[edges], error[~edges]
    balanced = 0.5 * ((on.mean() if on.numel() else 0.0) + (off.mean() if off.numel() else 0.0))
    return float(balanced) * truth.numel(), truth.numel()


ABSOLUTE_ERROR = ErrorMeasure("mae", _absolute_error)


@dataclass(frozen=True)
class Modality:
    """One modality and its behaviour.

    name: key in Frame.modalities, in samples and on disk. kind: what it is. channels: per pixel in the
    reader's tensors (0 for boxes and text). dtype/unit: stored numpy dtype and physical unit.
    encoding: the on-disk format, in words (recorded in dataset manifests). tier: `sensor` (an agent
    measures or computes it) or `label` (annotations; never pretrained on by default).
    codec: bytes <-> stored value. to_tensors: stored value -> the sample keys it becomes (boxes become
    boxes, box_classes and box_instances). from_tensor: a reader tensor of one sample -> the stored form
    (what `picture` draws). picture: (stored value, top) -> (H, W, 3) uint8, top = value at the top of
    the colour map (depth) or None. resample: how crops resize it (bilinear or nearest).
    scaling: how networks see it (None: networks do not regress it as pixels). loss: pretraining loss
    of (predicted patches, target patches), both (P, patch*patch*channels) in network units.
    tokenizer: "fsq" when `tst pretrain tokenizers` trains one for it. derive: (rendered values so far,
    collect worker settings) -> stored value, for modalities computed from others (edges from rgb).
    reorient: (resampled map (C, H, W), flipped) -> the map its values mean after a crop's resize and
    horizontal flip, for maps whose values are directions (normals: x negated, re-normalized); None: as is.
    error: how a reconstruction of it is scored (tokenizer quality; default mean absolute error).
    """

    name: str
    kind: Kind
    channels: int
    dtype: str
    unit: str
    encoding: str
    tier: Tier
    codec: Codec
    to_tensors: Callable[[Any], dict[str, Any]]
    from_tensor: Callable[[torch.Tensor], Any] | None = None
    picture: Callable[[Any, float | None], np.ndarray] | None = None
    resample: Literal["bilinear", "nearest"] = "nearest"
    scaling: Scaling | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    tokenizer: Literal["fsq"] | None = None
    derive: Callable[[dict, Any], Any] | None = None
    reorient: Callable[[torch.Tensor, bool], torch.Tensor] | None = None
    error: ErrorMeasure = ABSOLUTE_ERROR

    @property
    def is_map(self) -> bool:
        """A per-pixel map (images, depth, normals, label maps): crops, flips and contact sheets apply."""
        return self.picture is not None


# --- tensors -------------------------------------------------------------------------------------------
def _reoriented_normals(normals: torch.Tensor, flipped: bool) -> torch.Tensor:
    """(3, H, W) camera-frame unit normals after resampling: a horizontal flip mirrors the camera's x axis;
    interpolation shortens vectors, so they are re-normalized (pixels with no normal stay 0)."""
    if flipped:
        normals = torch.cat([-normals[:1], normals[1:]])
    return F.normalize(normals, dim=0) * (normals.abs().sum(0, keepdim=True) > 0)


def _channels_first(name: str, scale: float = 1.0) -> Callable[[np.ndarray], dict]:
    """(H, W, C) or (H, W) stored array -> {name: float32 (C, H, W)}, divided by `scale`."""

    def convert(value: np.ndarray) -> dict:
        x = torch.from_numpy(np.ascontiguousarray(value)).float()
        x = x.permute(2, 0, 1) if x.dim() == 3 else x[None]
        return {name: (x / scale if scale != 1.0 else x).contiguous()}

    return convert


def _edges_tensor(value: np.ndarray) -> dict:
    return {"edges": torch.from_numpy((value > 127).astype(np.float32))[None]}


def _ids(name: str) -> Callable[[np.ndarray], dict]:
    return lambda value: {name: torch.from_numpy(value.astype(np.int64))}


def _boxes_tensors(value: list) -> dict:
    boxes = np.asarray(value, dtype=np.float64).reshape(-1, 7)
    return {"boxes": torch.from_numpy(boxes[:, 2:6].astype(np.float32)),
            "box_classes": torch.from_numpy(boxes[:, 0].astype(np.int64)),
            "box_instances": torch.from_numpy(boxes[:, 1].astype(np.int64))}


def _as_is(name: str) -> Callable[[Any], dict]:
    return lambda value: {name: value}


# --- back to the stored form, for pictures --------------------------------------------------------------
def _unit_interval_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8, or (H, W) for one channel."""
    image = (x.detach().cpu().float().clamp(0, 1) * 255).numpy().astype(np.uint8)
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def _float_maps(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) float -> (H, W, C), or (H, W) for one channel."""
    x = x.detach().cpu().float()
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _id_map(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().reshape(x.shape[-2:]).numpy().astype(np.int64)


# --- network scaling ------------------------------------------------------------------------------------
RGB_SCALING = Scaling(lambda x: (x - RGB_MEAN) / RGB_STD, lambda x: (x * RGB_STD + RGB_MEAN).clamp(0, 1))
DEPTH_SCALING = Scaling(lambda x: x / DEPTH_SCALE, lambda x: (x * DEPTH_SCALE).clamp(min=0))
NORMALS_SCALING = Scaling(lambda x: x, lambda x: F.normalize(x, dim=1))  # already in [-1, 1]
EDGES_SCALING = Scaling(lambda x: 2.0 * x - 1.0, torch.sigmoid)  # outputs are logits


# --- pretraining losses on (P, patch*patch*C) network-unit patches --------------------------------------
def normalized_patch_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MAE's target: each target patch normalized by its own mean and std."""
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    return F.mse_loss(prediction, (target - mean) / (var + 1e-6).sqrt())


def edge_bce(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of edge logits against the edge pixels (target > 0 in network units)."""
    return F.binary_cross_entropy_with_logits(prediction, (target > 0).float())


def canny_edges(rgb: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) uint8 edge map, 255 on edges, from (H, W, 3) uint8 RGB (OpenCV Canny on grey)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.Canny(grey, float(low), float(high))


def _picture(draw: Callable[[Any], np.ndarray]) -> Callable[[Any, float | None], np.ndarray]:
    """A picture function that has no colour-map top."""
    return lambda value, top=None: draw(value)


MODALITIES: dict[str, Modality] = {}


def register(entry: Modality) -> Modality:
    """Add a modality to the registry; a TSTError when the name is taken."""
    if entry.name in MODALITIES or entry.name == "camera":
        raise TSTError(f"modality '{entry.name}' is already registered")
    MODALITIES[entry.name] = entry
    return entry


for _entry in [
    Modality("rgb", "image", 3, "uint8", "sRGB 0-255", "png", "sensor", PNG_RGB, _channels_first("rgb", 255.0),
             _unit_interval_to_uint8, _picture(visualize.rgb_image), "bilinear", RGB_SCALING, normalized_patch_mse, "fsq"),
    Modality("depth", "depth", 1, "float32", "metres, z-depth, 0 = no hit", "png16 millimetres", "sensor",
             DEPTH_PNG16, _channels_first("depth"), _float_maps, visualize.depth_image, "nearest", DEPTH_SCALING,
             F.l1_loss, "fsq", error=ErrorMeasure("mae_m", _depth_error)),
    Modality("normals", "normals", 3, "float32", "unit vector, camera frame", "png8 (n+1)/2", "sensor",
             NORMALS_PNG8, _channels_first("normals"), _float_maps, _picture(visualize.normals_image), "bilinear",
             NORMALS_SCALING, F.l1_loss, "fsq", reorient=_reoriented_normals),
    Modality("edges", "image", 1, "uint8", "0 or 255 (Canny on rgb)", "png", "sensor", GRAY8_PNG, _edges_tensor,
             _unit_interval_to_uint8, _picture(visualize.edges_image), "nearest", EDGES_SCALING, edge_bce, "fsq",
             derive=lambda values, settings: canny_edges(values["rgb"], *settings.edges),
             error=ErrorMeasure("balanced_mae", _balanced_edge_error)),
    Modality("semantic", "label_map", 1, "uint16", "class id, 0 = unlabeled", "png16", "label", LABELS_PNG16,
             _ids("semantic"), _id_map, _picture(visualize.label_image)),
    Modality("instance", "label_map", 1, "uint16", "instance id, 0 = none", "png16", "label", LABELS_PNG16,
             _ids("instance"), _id_map, _picture(lambda ids: visualize.label_image(ids, seed=7))),
    Modality("boxes", "boxes", 0, "object", "(class_id, instance_id, x0, y0, x1, y1, visible_pixels) px", "json",
             "label", JSON, _boxes_tensors),
    Modality("caption", "text", 0, "str", "English sentences", "json", "label", JSON, _as_is("caption")),
]:
    register(_entry)
# Registered on import, so every process has them; one registered at run time exists in its own process only.
BUILT_IN = frozenset(MODALITIES)

# What a mesh renderer produces from one ray cast.
RENDERED = ("rgb", "depth", "normals", "semantic", "instance")


def get(name: str) -> Modality:
    """The registry entry for `name`; a one-line error for an unknown name."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise TSTError(f"unknown modality '{name}': expected one of {', '.join(MODALITIES)}") from None


def by_tier(tier: Tier) -> list[str]:
    """Registered modalities of one tier, in registration order."""
    return [entry.name for entry in MODALITIES.values() if entry.tier == tier]


def pixel_maps(names) -> list[str]:
    """Those of `names` that are registered per-pixel maps (see Modality.is_map), in the given order."""
    return [name for name in names if name in MODALITIES and MODALITIES[name].is_map]


def tokenized() -> list[str]:
    """Sensor modalities that `tst pretrain tokenizers` trains a tokenizer for."""
    return [name for name in by_tier("sensor") if MODALITIES[name].tokenizer]


def manifest_entries(names) -> dict[str, dict]:
    """What a dataset manifest records of each of `names`: kind, dtype, unit, encoding and tier."""
    return {m: {k: getattr(MODALITIES[m], k) for k in ("kind", "dtype", "unit", "encoding", "tier")} for m in names}


def codec_table(rgb_format: str = "png") -> dict[str, Codec]:
    """Modality name -> codec for a dataset stored with `rgb_format`; `camera` (the frame's camera and
    meta) is stored like a modality."""
    if rgb_format not in ("png", "jpg"):
        raise TSTError(f"collect.rgb_format: expected png or jpg, got {rgb_format!r}")
    table = {name: entry.codec for name, entry in MODALITIES.items()} | {"camera": JSON}
    return table | ({"rgb": JPEG_RGB} if rgb_format == "jpg" else {})


def to_network(name: str, x: torch.Tensor) -> torch.Tensor:
    """Reader units -> network units for a modality the networks regress (see Scaling)."""
    return get(name).scaling.to_network(x)


def from_network(name: str, x: torch.Tensor) -> torch.Tensor:
    """Network outputs -> reader units (see Scaling)."""
    return get(name).scaling.from_network(x)
