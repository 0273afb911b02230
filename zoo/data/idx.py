"""Reader for the idx(.gz) files of MNIST-format datasets, with errors that name the file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from zoo.errors import DataError

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def _read(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"Cannot read '{path}': {err}. The file is truncated or not gzip; reinstall it.") from err


def read_idx_images(path: Path) -> np.ndarray:
    """N x H x W uint8 images from an idx3 file."""
    data = _read(path)
    if len(data) < 16:
        raise DataError(f"'{path}' is truncated: {len(data)} bytes, shorter than an idx3 header.")
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != _IMAGES_MAGIC:
        raise DataError(f"'{path}' is not an idx3 image file (magic {magic}, expected {_IMAGES_MAGIC}).")
    expected = 16 + n * rows * cols
    if len(data) != expected:
        raise DataError(f"'{path}' is truncated or padded: {len(data)} bytes, the header promises {expected}.")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_idx_labels(path: Path, num_classes: int) -> np.ndarray:
    """N int64 labels from an idx1 file, each checked to lie in [0, num_classes)."""
    data = _read(path)
    if len(data) < 8:
        raise DataError(f"'{path}' is truncated: {len(data)} bytes, shorter than an idx1 header.")
    magic, n = struct.unpack(">II", data[:8])
    if magic != _LABELS_MAGIC:
        raise DataError(f"'{path}' is not an idx1 label file (magic {magic}, expected {_LABELS_MAGIC}).")
    if len(data) != 8 + n:
        raise DataError(f"'{path}' is truncated or padded: {len(data)} bytes, the header promises {8 + n}.")
    labels = np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)
    if labels.size and labels.max() >= num_classes:
        raise DataError(f"'{path}' holds label {labels.max()}, outside 0..{num_classes - 1}: it is mislabelled.")
    return labels
