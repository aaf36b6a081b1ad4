"""Colour naming of the synthetic set (and of netdissect.data.voc_example's sample): nearest prototype in CIE L*a*b*.

Not Broden's rule. Real images get their colour labels from the w2color table
(:mod:`netdissect.data.colors`, used by every dataset builder). The synthetic generator plants
its colours: it paints regions around :data:`COLOR_PROTOTYPES`, so the naming must give back
the planted name, and it names by the same prototypes. The two rules agree on every prototype
(tests/test_synthetic.py checks it) and on about 91% of the synthetic set's colour pixels, but
not on all, and the label numbers differ (the vocabulary lists green before grey, w2color grey
before green): naming the synthetic set with w2color would change the published dataset.
What the two share is the 11 names.

Part of the synthetic Broden generator (see netdissect.data.synthetic)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

from netdissect.data.synthetic.vocabulary import COLOR_NAMES

#: sRGB prototype of each colour name; rendering draws colours around these, naming picks
#: the nearest one in CIE L*a*b*.
COLOR_PROTOTYPES: Dict[str, Tuple[int, int, int]] = {
    "black": (18, 18, 18), "blue": (35, 75, 215), "brown": (120, 72, 35),
    "green": (45, 160, 55), "grey": (128, 128, 128), "orange": (240, 135, 25),
    "pink": (240, 150, 190), "purple": (125, 50, 160), "red": (210, 30, 35),
    "white": (240, 240, 240), "yellow": (240, 220, 40)}
assert tuple(COLOR_PROTOTYPES) == COLOR_NAMES
#: extra naming prototypes (lighter, darker and desaturated variants), so that e.g. sky blue
#: is "blue" and tan skin is "brown" or "pink" rather than "white" or "grey".
COLOR_VARIANTS: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("blue", (135, 175, 230)), ("blue", (25, 35, 110)), ("blue", (40, 130, 150)),
    ("green", (145, 205, 140)), ("green", (25, 85, 35)), ("green", (110, 135, 45)),
    ("brown", (175, 130, 95)), ("brown", (75, 48, 30)),
    ("pink", (230, 175, 165)), ("pink", (200, 90, 140)),
    ("purple", (185, 150, 215)), ("purple", (60, 25, 80)),
    ("red", (125, 20, 25)), ("orange", (225, 155, 95)), ("yellow", (230, 220, 145)),
    ("grey", (85, 85, 85)), ("grey", (175, 175, 175)))


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in 0..255 -> CIE L*a*b* (D65), float32 (..., 3)."""
    c = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    c = np.where(c <= 0.04045, c / np.float32(12.92), ((c + np.float32(0.055)) / np.float32(1.055)) ** np.float32(2.4))
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / np.float32(0.95047)
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / np.float32(1.08883)
    eps, kappa = 216.0 / 24389.0, 24389.0 / 27.0

    def f(t):
        return np.where(t > eps, np.cbrt(np.maximum(t, 0)), (kappa * t + 16.0) / 116.0)

    fx, fy, fz = f(x), f(y), f(z)
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1).astype(np.float32)


_NAMING = [(COLOR_NAMES.index(n), rgb) for n, rgb in COLOR_PROTOTYPES.items()] + \
    [(COLOR_NAMES.index(n), rgb) for n, rgb in COLOR_VARIANTS]
_PROTOTYPE_LAB = srgb_to_lab(np.array([rgb for _, rgb in _NAMING], dtype=np.float32))
_PROTOTYPE_NAME = np.array([i + 1 for i, _ in _NAMING], dtype=np.int32)


def name_colors(rgb: np.ndarray, max_distance: Optional[float] = None) -> np.ndarray:
    """Name every pixel of an (h, w, 3) sRGB image: int32 (h, w) with 1 + index into
    :data:`COLOR_NAMES` of the nearest prototype in CIE L*a*b* (CIE76 distance), among
    :data:`COLOR_PROTOTYPES` and :data:`COLOR_VARIANTS`.

    With ``max_distance`` (in Lab units), pixels farther than that from every prototype get
    0 (unlabeled); the default (None) names every pixel, which is what the generated
    datasets use. Note that in the synthetic and VOC datasets colour label number ==
    1 + index into COLOR_NAMES, so the result is directly a label map.
    """
    lab = srgb_to_lab(rgb)
    best = np.full(lab.shape[:-1], np.inf, dtype=np.float32)
    names = np.zeros(lab.shape[:-1], dtype=np.int32)
    for k in range(len(_PROTOTYPE_LAB)):
        diff = lab - _PROTOTYPE_LAB[k]
        d2 = diff[..., 0] ** 2 + diff[..., 1] ** 2 + diff[..., 2] ** 2
        closer = d2 < best
        best = np.where(closer, d2, best)
        names[closer] = _PROTOTYPE_NAME[k]
    if max_distance is not None:
        names[best > np.float32(max_distance) ** 2] = 0
    return names


def color_label_map(rgb: np.ndarray, seg_shape: Tuple[int, int],
                    max_distance: Optional[float] = None) -> np.ndarray:
    """Colour mask of an (ih, iw, 3) uint8 image at segmentation size (sh, sw): the image is
    box-averaged (PIL BOX resampling) to (sh, sw), then :func:`name_colors`."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    sh, sw = seg_shape
    if rgb.shape[:2] != (sh, sw):
        rgb = np.asarray(Image.fromarray(rgb, mode="RGB").resize((sw, sh), Image.BOX))
    return name_colors(rgb, max_distance=max_distance)
