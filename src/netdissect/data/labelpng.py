"""Broden label PNGs: a label number per pixel stored as R + 256 * G (B unused, 0 = unlabeled)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from netdissect.errors import DatasetError

MAX_LABEL = 256 * 256 - 1


def encode_labels(labels: np.ndarray) -> np.ndarray:
    """Label numbers (h x w ints) -> h x w x 3 uint8 RGB with number = R + 256 * G."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"label numbers must lie in [0, {MAX_LABEL}]")
    labels = labels.astype(np.int64)
    rgb = np.zeros(labels.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    return rgb


def decode_labels(rgb: np.ndarray) -> np.ndarray:
    """h x w x 3 (or 4) uint8 -> h x w int32 label numbers."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"a label PNG must be RGB, got shape {rgb.shape}")
    return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)


def write_label_png(path: Union[str, Path], labels: np.ndarray) -> None:
    Image.fromarray(encode_labels(labels), mode="RGB").save(path, format="PNG", optimize=False)


def read_label_png(path: Union[str, Path]) -> np.ndarray:
    """Decode a label PNG; a missing, truncated or non-PNG file raises DatasetError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError("label PNG is missing; re-extract the dataset or fix index.csv", path)
    except OSError as exc:
        raise DatasetError(f"cannot read label PNG ({exc})", path)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("RGB", "RGBA"):
                img = img.convert("RGB")
            return decode_labels(np.asarray(img))
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DatasetError(f"label PNG cannot be decoded ({exc.__class__.__name__}: {exc}); "
                           "the file is corrupt or truncated: re-extract it", path)
