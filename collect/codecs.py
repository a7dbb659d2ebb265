"""On-disk encodings of each modality (ARCHITECTURE "Data on disk"): bytes <-> numpy / python values.

rgb PNG (or JPEG); depth 16-bit PNG in millimetres; normals 8-bit PNG of (n + 1) / 2; edges 8-bit PNG;
semantic / instance 16-bit PNG; boxes, caption, camera JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from tst.errors import TSTError

MAX_DEPTH_MM = 65535


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise TSTError("could not encode a PNG")
    return data.tobytes()


def _decode_image(data: bytes, flags: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ValueError("not a decodable image")
    return image


def encode_rgb_png(rgb: np.ndarray) -> bytes:
    return _png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def encode_rgb_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data.tobytes()


def decode_rgb(data: bytes) -> np.ndarray:
    """-> (H, W, 3) uint8 RGB."""
    return cv2.cvtColor(_decode_image(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def encode_depth(depth: np.ndarray) -> bytes:
    """(H, W) float metres -> 16-bit PNG of millimetres (0 = no hit; beyond 65.535 m clipped)."""
    return _png(np.clip(np.round(depth * 1000.0), 0, MAX_DEPTH_MM).astype(np.uint16))


def decode_depth(data: bytes) -> np.ndarray:
    """-> (H, W) float32 metres."""
    return _decode_image(data, cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0


def encode_normals(normals: np.ndarray) -> bytes:
    """(H, W, 3) unit vectors -> 8-bit PNG of (n + 1) / 2 * 255 (channels x, y, z as R, G, B)."""
    quantized = np.round((normals + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    return _png(cv2.cvtColor(quantized, cv2.COLOR_RGB2BGR))


def decode_normals(data: bytes) -> np.ndarray:
    """-> (H, W, 3) float32 unit vectors; pixels without a surface (stored as grey 128) become 0."""
    values = cv2.cvtColor(_decode_image(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32)
    normals = values / 127.5 - 1.0
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    return np.where(length > 0.5, normals / np.maximum(length, 1e-6), 0.0).astype(np.float32)


def encode_gray8(image: np.ndarray) -> bytes:
    return _png(np.asarray(image, np.uint8))


def decode_gray8(data: bytes) -> np.ndarray:
    return _decode_image(data, cv2.IMREAD_UNCHANGED)


def encode_labels(labels: np.ndarray) -> bytes:
    """(H, W) integer ids -> 16-bit PNG."""
    if labels.max(initial=0) > 65535:
        raise TSTError(f"label ids up to {int(labels.max())} do not fit a 16-bit PNG (max 65535)")
    return _png(labels.astype(np.uint16))


def decode_labels(data: bytes) -> np.ndarray:
    """-> (H, W) uint16 ids."""
    return _decode_image(data, cv2.IMREAD_UNCHANGED)


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def decode_json(data: bytes) -> Any:
    return json.loads(data)


@dataclass(frozen=True)
class Codec:
    extension: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


def codecs(rgb_format: str = "png") -> dict[str, Codec]:
    """Modality name -> codec; `camera` (the frame's camera and meta) is stored like a modality."""
    if rgb_format not in ("png", "jpg"):
        raise TSTError(f"collect.rgb_format: expected png or jpg, got {rgb_format!r}")
    return {
        "rgb": Codec(rgb_format, encode_rgb_png if rgb_format == "png" else encode_rgb_jpeg, decode_rgb),
        "depth": Codec("png", encode_depth, decode_depth),
        "normals": Codec("png", encode_normals, decode_normals),
        "edges": Codec("png", encode_gray8, decode_gray8),
        "semantic": Codec("png", encode_labels, decode_labels),
        "instance": Codec("png", encode_labels, decode_labels),
        "boxes": Codec("json", encode_json, decode_json),
        "caption": Codec("json", encode_json, decode_json),
        "camera": Codec("json", encode_json, decode_json),
    }
