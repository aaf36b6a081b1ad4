"""Broden's color labels: every pixel named with one of 11 colors through the w2color table.

Broden computed its color category from the pixels of every image with a lookup table of the
color-naming model of van de Weijer et al. (IEEE TIP 2009): ``w2color[R // 8, G // 8, B // 8]``
is an index into :data:`COLOR_NAMES`. Using the same table (shipped as package data, MIT
licence in ``w2color-LICENSE.md`` beside it) keeps ``red-c`` meaning what it means in Broden.

This is the colour naming of every dataset built from real annotations (data/writer.py). The
synthetic generator names its planted colours by their own prototypes instead
(:mod:`netdissect.data.synthetic.colors` says why); both use these 11 names.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Tuple

import numpy as np

from netdissect.errors import NetDissectError

#: the 11 names in the table's index order.
COLOR_NAMES: Tuple[str, ...] = ("black", "blue", "brown", "grey", "green", "orange", "pink",
                                "purple", "red", "white", "yellow")
#: Broden's suffix for color labels (``red-c``).
COLOR_SUFFIX = "-c"
TABLE_FILE = Path(__file__).with_name("w2color.npy")


@lru_cache(maxsize=1)
def color_table() -> np.ndarray:
    """The (32, 32, 32) uint8 table of color-name indices, checked once."""
    try:
        table = np.load(TABLE_FILE, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise NetDissectError(f"{TABLE_FILE}: cannot read the color table ({exc}); "
                              "reinstall netdissect") from exc
    if table.shape != (32, 32, 32) or table.dtype != np.uint8 or table.max() >= len(COLOR_NAMES):
        raise NetDissectError(f"{TABLE_FILE}: not a (32, 32, 32) table of indices < 11; "
                              "reinstall netdissect")
    return table


def color_label_names() -> Tuple[str, ...]:
    """Label names of the color category, code k + 1 = name k (``black-c`` .. ``yellow-c``)."""
    return tuple(name + COLOR_SUFFIX for name in COLOR_NAMES)


def color_codes(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 pixels (or (h, w) grey) -> (h, w) uint8 codes 1..11 (0 never occurs)."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (h, w, 3) uint8 pixels, got {rgb.shape} {rgb.dtype}")
    q = rgb[..., :3] >> 3
    return color_table()[q[..., 0], q[..., 1], q[..., 2]] + np.uint8(1)
