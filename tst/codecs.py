"""On-disk encodings (ARCHITECTURE "Data on disk"): bytes <-> numpy / python values. Which modality
uses which codec is said by its entry in the modality registry (`tst.modalities`).

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
    """How one modality is stored: file extension of its shard members, value -> bytes, bytes -> value."""

    extension: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


PNG_RGB = Codec("png", encode_rgb_png, decode_rgb)
JPEG_RGB = Codec("jpg", encode_rgb_jpeg, decode_rgb)
DEPTH_PNG16 = Codec("png", encode_depth, decode_depth)
NORMALS_PNG8 = Codec("png", encode_normals, decode_normals)
GRAY8_PNG = Codec("png", encode_gray8, decode_gray8)
LABELS_PNG16 = Codec("png", encode_labels, decode_labels)
JSON = Codec("json", encode_json, decode_json)
