"""iPhone depth frames (depth.bin): zlib- or lz4-compressed 16-bit millimetre images."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from tst.errors import TSTError

from tst.envs.scannetpp.files import require_file

IPHONE_DEPTH_SHAPE = (192, 256)  # height, width of iPhone depth frames


def _inflate(data: bytes) -> bytes | None:
    """Raw-deflate (zlib wbits=-15, as the toolkit writes) `data` entirely, or None when it is not that."""
    try:
        inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
        out = inflater.decompress(data) + inflater.flush()
    except zlib.error:
        return None
    return out if inflater.eof and not inflater.unused_data else None


def iter_iphone_depth(path: str | Path, shape: tuple[int, int] = IPHONE_DEPTH_SHAPE) -> Iterator[np.ndarray]:
    """Depth frames (H, W) float32 metres from an iPhone depth.bin, in both encodings the toolkit
    (`iphone/prepare_iphone_data.py`, extract_depth) reads:

    (a) the whole file one raw-deflate stream (zlib, wbits=-15) of float32 metres, frames back to back;
    (b) per-frame records: a 4-byte little-endian byte count, then that many bytes of one frame,
        lz4-block-compressed uint16 millimetres or raw-deflate float32 metres.
    """
    path = require_file(Path(path), "iPhone depth")
    height, width = shape
    data = path.read_bytes()
    whole = _inflate(data)
    if whole is not None and len(whole) % (height * width * 4) == 0 and whole:
        depth = np.frombuffer(whole, dtype="<f4").reshape(-1, height, width)
        yield from (frame.astype(np.float32) for frame in depth)
        return
    offset, index = 0, 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise TSTError(f"{path}: truncated record header at byte {offset}; expected a 4-byte length")
        size = int.from_bytes(data[offset:offset + 4], "little")
        record = data[offset + 4:offset + 4 + size]
        if len(record) != size:
            raise TSTError(f"{path}: frame {index} claims {size} bytes but only {len(record)} remain")
        offset += 4 + size
        yield _decode_depth_record(record, shape, f"{path}: frame {index}")
        index += 1


def _decode_depth_record(record: bytes, shape: tuple[int, int], where: str) -> np.ndarray:
    height, width = shape
    lz4_error = None
    try:
        import lz4.block

        raw = lz4.block.decompress(record, uncompressed_size=height * width * 2)
        if len(raw) == height * width * 2:
            return np.frombuffer(raw, dtype="<u2").reshape(height, width).astype(np.float32) / 1000.0
    except ImportError:
        lz4_error = "the lz4 package is not installed (pip install lz4)"
    except Exception:  # lz4 raises LZ4BlockError for data that is not lz4
        pass
    raw = _inflate(record)
    if raw is not None and len(raw) == height * width * 4:
        return np.frombuffer(raw, dtype="<f4").reshape(height, width).astype(np.float32)
    hint = f"; {lz4_error}" if lz4_error else ""
    raise TSTError(f"{where}: not an lz4 uint16 or zlib float32 {width}x{height} depth frame{hint}")


def read_iphone_depth(path: str | Path, shape: tuple[int, int] = IPHONE_DEPTH_SHAPE) -> np.ndarray:
    """All frames of an iPhone depth.bin as (N, H, W) float32 metres (0 = no depth)."""
    frames = list(iter_iphone_depth(path, shape))
    return np.stack(frames) if frames else np.zeros((0, *shape), np.float32)


# --------------------------------------------------------------------------- DSLR images
