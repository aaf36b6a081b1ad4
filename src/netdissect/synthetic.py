"""A synthetic dataset in the exact Broden on-disk format, drawn procedurally with numpy.

``generate_synthetic(out_dir, images=1000, size=224, seed=0)`` writes a complete Broden
directory (index.csv, category.csv, label.csv, c_<category>.csv for all six categories,
images/) whose every label is known exactly, so that a dissection run on it can be judged.

What an image holds
-------------------
* texture (image level): every image has a background filled with one of
  :data:`TEXTURE_NAMES`, procedural patterns named after DTD classes, in two colours, at a
  random scale and orientation. The texture label is the background's pattern. 8% of the
  images are *texture-only* (the pattern fills the whole image, like a DTD image): those are
  labeled for color and texture only; their object, part, material and scene columns are
  empty (unlabeled), as a DTD image's are in Broden.
* material (pixel level): :data:`MATERIAL_NAMES` are procedural surfaces (wood grain, brick,
  brushed metal, woven fabric, water waves, grass blades, veined marble, paving stone). They
  cover the ground strip below the horizon and some object surfaces (house walls, car
  bodies, boat hulls, boxes, tree trunks, sails, balls). The material mask is exactly where
  a material was drawn and is still visible.
* object (pixel level): :data:`OBJECT_NAMES`, several per image, drawn in painter's order
  (sky objects first, then ground objects from far to near); the later drawn wins, so the
  mask holds only visible pixels. Object colours are drawn uniformly from the 11 colour
  names, independently of the class (a purple tree is fine), avoiding the background's
  colours so that objects stay visible.
* part (pixel level): :data:`PART_NAMES`, parts of car, house, tree, flower, person, boat
  and bird (:data:`PART_OF` says which). A part mask file ``<n>_part_1.png`` is written only
  for images where at least one part pixel is visible; the part column is empty otherwise.
  Pixels of an object that belong to no part are 0 in the part mask.
* scene (image level): :data:`SCENE_NAMES`, decided by :func:`scene_rule`, a deterministic
  rule on what is visible in the final label maps (instances with at least 0.5% of the
  segmentation pixels, material fractions). Images matching no rule have an empty scene
  column. The generator picks a target scene and composes content for it, but the label
  written is always the rule's verdict on the rendered content.
* color (pixel level): computed FROM THE PIXELS of the final JPEG as decoded:
  the image is box-downsampled to the segmentation size and every pixel gets the nearest
  of the 11 colour prototypes :data:`COLOR_PROTOTYPES` in CIE L*a*b* (CIE76 distance). Every
  pixel is assigned a colour name (none is left 0): see :func:`name_colors`.

Files and statistics
--------------------
* ``images/NNNNNN.jpg`` (JPEG quality 90, 4:4:4 chroma), masks ``NNNNNN_color.png``,
  ``NNNNNN_object.png``, ``NNNNNN_part_1.png``, ``NNNNNN_material.png`` at half resolution
  (``sh = sw = size // 2``), label number = R + 256 * G (:mod:`netdissect.labelpng`).
  Segmentation pixel (i, j) is the label at the image point ((j + 0.5) / sw, (i + 0.5) / sh)
  in relative coordinates: the label maps are rendered directly at that resolution from the
  same geometry as the image.
* Label numbers are global, dense from 1, in :data:`VOCABULARY` order (color, object, part,
  material, scene, texture); 0 is unlabeled. The full vocabulary is always listed, so
  numbering does not depend on the number of images (a label may have frequency 0 in a tiny
  set). Each label belongs to exactly one category.
* frequency of a label (label.csv, c_*.csv, and the ``(count)`` in label.csv's category
  field) = the number of images in which it occurs (pixel level: at least one pixel).
* coverage of a label = the sum over images of the fraction of the image's segmentation
  pixels it covers (image-level labels count 1.0 per image), i.e. an "images' worth" of
  area; ``coverage / frequency`` is the mean fraction of an image covered where it occurs.
* category.csv: first / last = smallest / largest label number of the category, count =
  number of labels, frequency = number of images in which the category is labeled.
* split: image i is ``val`` when i % 5 == 4, else ``train`` (80/20).

Determinism: image i is drawn from ``numpy.random.default_rng([seed, i])`` alone, so the
files are byte-identical for the same seed whatever the number of workers.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import multiprocessing
import os
import secrets
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .broden import IMAGE_CATEGORIES, PIXEL_CATEGORIES
from .errors import NetDissectError
from .labelpng import write_label_png

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

CATEGORIES: Tuple[str, ...] = PIXEL_CATEGORIES + IMAGE_CATEGORIES   # Broden's six, from broden.py
INDEX_HEADER: Tuple[str, ...] = ("image", "split", "ih", "iw", "sh", "sw") + CATEGORIES

COLOR_NAMES: Tuple[str, ...] = ("black", "blue", "brown", "green", "grey", "orange", "pink",
                                "purple", "red", "white", "yellow")
OBJECT_NAMES: Tuple[str, ...] = ("car", "house", "tree", "flower", "person", "boat", "ball",
                                 "box", "sun", "cloud", "kite", "bird")
PART_NAMES: Tuple[str, ...] = ("wheel", "window", "door", "roof", "chimney", "trunk", "crown",
                               "petal", "stem", "head", "torso", "arm", "leg", "hull", "mast",
                               "sail", "wing")
MATERIAL_NAMES: Tuple[str, ...] = ("wood", "brick", "metal", "fabric", "water", "grass",
                                   "marble", "stone")
SCENE_NAMES: Tuple[str, ...] = ("seaside", "street", "forest", "garden", "playground", "sky")
TEXTURE_NAMES: Tuple[str, ...] = ("banded", "striped", "lined", "chequered", "dotted",
                                  "polka-dotted", "zigzagged", "grid", "crosshatched",
                                  "honeycombed", "spiralled", "waffled")

#: (name, category) of every label; label number = position + 1.
VOCABULARY: Tuple[Tuple[str, str], ...] = tuple(
    [(n, "color") for n in COLOR_NAMES] + [(n, "object") for n in OBJECT_NAMES]
    + [(n, "part") for n in PART_NAMES] + [(n, "material") for n in MATERIAL_NAMES]
    + [(n, "scene") for n in SCENE_NAMES] + [(n, "texture") for n in TEXTURE_NAMES])
#: label name -> global label number (names are unique across categories).
LABELS: Dict[str, int] = {name: i + 1 for i, (name, _) in enumerate(VOCABULARY)}
#: category -> label numbers of that category, ascending.
CATEGORY_LABELS: Dict[str, Tuple[int, ...]] = {
    cat: tuple(LABELS[n] for n, c in VOCABULARY if c == cat) for cat in CATEGORIES}
#: part name -> the object classes that have it.
PART_OF: Dict[str, Tuple[str, ...]] = {
    "wheel": ("car",), "window": ("car", "house"), "door": ("car", "house"),
    "roof": ("house",), "chimney": ("house",), "trunk": ("tree",), "crown": ("tree",),
    "petal": ("flower",), "stem": ("flower",), "head": ("person", "bird"),
    "torso": ("person",), "arm": ("person",), "leg": ("person",), "hull": ("boat",),
    "mast": ("boat",), "sail": ("boat",), "wing": ("bird",)}

assert len(set(LABELS)) == len(VOCABULARY), "label names must be unique"
assert set(PART_OF) == set(PART_NAMES)

# ---------------------------------------------------------------------------------------------
# Colour naming (shared with netdissect.voc)
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Shapes: vectorized membership on pixel-centre grids (x: (1, w), y: (h, 1), relative units)
# ---------------------------------------------------------------------------------------------

class _Shape:
    bbox: Tuple[float, float, float, float]  # x0, y0, x1, y1

    def mask(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Ellipse(_Shape):
    def __init__(self, cx, cy, rx, ry, angle=0.0):
        self.cx, self.cy, self.rx, self.ry = cx, cy, max(rx, 1e-4), max(ry, 1e-4)
        self.c, self.s = math.cos(angle), math.sin(angle)
        hx = math.hypot(rx * self.c, ry * self.s)
        hy = math.hypot(rx * self.s, ry * self.c)
        self.bbox = (cx - hx, cy - hy, cx + hx, cy + hy)

    def mask(self, x, y):
        dx, dy = x - self.cx, y - self.cy
        u = (dx * self.c + dy * self.s) / self.rx
        v = (dy * self.c - dx * self.s) / self.ry
        return u * u + v * v <= 1.0


def _circle(cx, cy, r):
    return _Ellipse(cx, cy, r, r)


class _Polygon(_Shape):
    """Even-odd rule polygon (any simple polygon)."""

    def __init__(self, points):
        self.pts = [(float(px), float(py)) for px, py in points]
        xs = [p[0] for p in self.pts]
        ys = [p[1] for p in self.pts]
        self.bbox = (min(xs), min(ys), max(xs), max(ys))

    def mask(self, x, y):
        inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        n = len(self.pts)
        for i in range(n):
            xi, yi = self.pts[i]
            xj, yj = self.pts[(i + 1) % n]
            if yi == yj:
                continue
            crosses = (yi > y) != (yj > y)
            xint = xi + (y - yi) * ((xj - xi) / (yj - yi))
            inside ^= crosses & (x < xint)
        return inside


def _rect(x0, y0, x1, y1):
    return _Polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _rot_rect(cx, cy, w, h, angle):
    c, s = math.cos(angle), math.sin(angle)
    pts = []
    for lx, ly in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        pts.append((cx + lx * c - ly * s, cy + lx * s + ly * c))
    return _Polygon(pts)


class _Capsule(_Shape):
    """All points within r of the segment p0-p1 (a thick line with round ends)."""

    def __init__(self, x0, y0, x1, y1, r):
        self.x0, self.y0, self.dx, self.dy, self.r = x0, y0, x1 - x0, y1 - y0, r
        self.l2 = max(self.dx * self.dx + self.dy * self.dy, 1e-12)
        self.bbox = (min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)

    def mask(self, x, y):
        px, py = x - self.x0, y - self.y0
        t = np.clip((px * self.dx + py * self.dy) / self.l2, 0.0, 1.0)
        ex, ey = px - t * self.dx, py - t * self.dy
        return ex * ex + ey * ey <= self.r * self.r


class _Union(_Shape):
    def __init__(self, shapes):
        self.shapes = list(shapes)
        b = np.array([s.bbox for s in self.shapes])
        self.bbox = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())

    def mask(self, x, y):
        m = self.shapes[0].mask(x, y)
        for s in self.shapes[1:]:
            m = m | s.mask(x, y)
        return m


class _Intersection(_Shape):
    def __init__(self, a, b):
        self.a, self.b = a, b
        self.bbox = (max(a.bbox[0], b.bbox[0]), max(a.bbox[1], b.bbox[1]),
                     min(a.bbox[2], b.bbox[2]), min(a.bbox[3], b.bbox[3]))

    def mask(self, x, y):
        return self.a.mask(x, y) & self.b.mask(x, y)


class _Below(_Shape):
    """The ground: everything below the wavy horizon y = h0 + amp * sin(2 pi (f x + phase))."""

    def __init__(self, h0, amp, freq, phase):
        self.h0, self.amp, self.freq, self.phase = h0, amp, freq, phase
        self.bbox = (0.0, h0 - abs(amp), 1.0, 1.0)

    def mask(self, x, y):
        return y >= self.h0 + self.amp * np.sin(2 * np.pi * (self.freq * x + self.phase))


class _Everything(_Shape):
    bbox = (0.0, 0.0, 1.0, 1.0)

    def mask(self, x, y):
        return np.ones(np.broadcast(x, y).shape, dtype=bool)


# ---------------------------------------------------------------------------------------------
# Fills: a constant colour, or a function (x (1, w), y (h, 1)) -> (h, w, 3) float32
# ---------------------------------------------------------------------------------------------

Fill = Union[np.ndarray, Callable[[np.ndarray, np.ndarray], np.ndarray]]


def _frac(t):
    return t - np.floor(t)


def _hash01(a, b, salt: int):
    """Deterministic pseudo-random value in [0, 1) per integer pair (vectorized)."""
    h = (np.asarray(a, dtype=np.int64) * 73856093) ^ (np.asarray(b, dtype=np.int64) * 19349663) ^ salt
    h = h & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 2246822519) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 3266489917) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFF).astype(np.float32) / np.float32(65536.0)


def _rotate(x, y, angle):
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return x * c + y * s, y * c - x * s


def _mix(c1, c2, t):
    """Blend colours c1 -> c2 by t ((h, w) in [0, 1])."""
    t = np.asarray(t, dtype=np.float32)[..., None]
    return c1 * (1 - t) + c2 * t


def _shade(color, mult):
    return np.asarray(color, dtype=np.float32) * np.asarray(mult, dtype=np.float32)[..., None]


class _Palette:
    """Colour choice: a palette index (into COLOR_NAMES) and a jittered sRGB colour."""

    def __init__(self, rng: np.random.Generator, avoid: Iterable[int] = ()):
        self.rng = rng
        self.avoid = set(avoid)

    def index(self, exclude: Iterable[int] = ()) -> int:
        ex = self.avoid | set(exclude)
        choices = [i for i in range(len(COLOR_NAMES)) if i not in ex]
        if not choices:
            choices = [i for i in range(len(COLOR_NAMES)) if i not in set(exclude)] or list(range(len(COLOR_NAMES)))
        return int(choices[self.rng.integers(len(choices))])

    def color(self, idx: int, jitter: float = 12.0) -> np.ndarray:
        base = np.array(COLOR_PROTOTYPES[COLOR_NAMES[idx]], dtype=np.float32)
        return np.clip(base + self.rng.uniform(-jitter, jitter, 3).astype(np.float32), 0, 255)

    def pick(self, exclude: Iterable[int] = ()) -> Tuple[int, np.ndarray]:
        i = self.index(exclude)
        return i, self.color(i)


def _texture_fill(rng: np.random.Generator, name: str, c1: np.ndarray, c2: np.ndarray) -> Fill:
    """A DTD-named procedural pattern in colours c1 (ground) and c2 (figure)."""
    angle = float(rng.uniform(0, math.pi))
    u01 = float(rng.uniform())

    if name == "banded":
        p = 0.16 + 0.14 * u01

        def fill(x, y):
            u, _ = _rotate(x, y, angle)
            return _mix(c1, c2, _frac(u / p) < 0.5)
    elif name == "striped":
        p = 0.045 + 0.045 * u01

        def fill(x, y):
            u, _ = _rotate(x, y, angle)
            return _mix(c1, c2, _frac(u / p) < 0.5)
    elif name == "lined":
        p = 0.05 + 0.05 * u01

        def fill(x, y):
            u, _ = _rotate(x, y, angle)
            return _mix(c1, c2, _frac(u / p) < 0.14)
    elif name == "chequered":
        p = 0.08 + 0.08 * u01

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            return _mix(c1, c2, (np.floor(u / p) + np.floor(v / p)) % 2)
    elif name == "grid":
        p = 0.07 + 0.07 * u01

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            return _mix(c1, c2, (_frac(u / p) < 0.12) | (_frac(v / p) < 0.12))
    elif name == "crosshatched":
        p = 0.028 + 0.025 * u01
        half = float(rng.uniform(0.35, 0.6))  # half the angle between the two line families

        def fill(x, y):
            u1, _ = _rotate(x, y, angle + half)
            u2, _ = _rotate(x, y, angle - half)
            return _mix(c1, c2, (_frac(u1 / p) < 0.22) | (_frac(u2 / p) < 0.22))
    elif name == "dotted":
        p = 0.035 + 0.025 * u01

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            a, b = _frac(u / p) - 0.5, _frac(v / p) - 0.5
            return _mix(c1, c2, a * a + b * b < 0.2 ** 2)
    elif name == "polka-dotted":
        p = 0.1 + 0.08 * u01

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            row = np.floor(v / p)
            a = _frac(u / p + 0.5 * (row % 2)) - 0.5
            b = _frac(v / p) - 0.5
            return _mix(c1, c2, a * a + b * b < 0.3 ** 2)
    elif name == "zigzagged":
        p = 0.05 + 0.05 * u01
        amp = float(rng.uniform(0.6, 1.2))

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            tri = np.abs(_frac(u / p) - 0.5) * 2
            return _mix(c1, c2, _frac(v / p + amp * tri) < 0.5)
    elif name == "honeycombed":
        p = 0.06 + 0.05 * u01
        sq3 = math.sqrt(3.0)

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            u, v = u / p, v / p
            ax, ay = _frac(u) - 0.5, (v - sq3 * np.floor(v / sq3)) - sq3 / 2
            bx, by = _frac(u - 0.5) - 0.5, ((v - sq3 / 2) - sq3 * np.floor((v - sq3 / 2) / sq3)) - sq3 / 2
            use_a = ax * ax + ay * ay < bx * bx + by * by
            gx, gy = np.abs(np.where(use_a, ax, bx)), np.abs(np.where(use_a, ay, by))
            hexnorm = np.maximum(gx, 0.5 * gx + (sq3 / 2) * gy)
            return _mix(c1, c2, hexnorm > 0.41)
    elif name == "spiralled":
        p = 0.06 + 0.06 * u01
        cx, cy = (float(v) for v in rng.uniform(0.25, 0.75, 2))
        arms = int(rng.integers(1, 4))
        sign = 1 if rng.random() < 0.5 else -1

        def fill(x, y):
            dx, dy = x - cx, y - cy
            r = np.sqrt(dx * dx + dy * dy)
            phi = np.arctan2(dy, dx) * sign
            return _mix(c1, c2, _frac(arms * phi / (2 * np.pi) + r / p) < 0.5)
    elif name == "waffled":
        p = 0.07 + 0.06 * u01

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            a, b = _frac(u / p), _frac(v / p)
            e = np.minimum(np.minimum(a, 1 - a), np.minimum(b, 1 - b))
            t = np.where(e < 0.1, 1.0, 0.55 * (e - 0.1) / 0.4)
            return _mix(c1, c2, t)
    else:  # pragma: no cover - guarded by TEXTURE_NAMES
        raise ValueError(name)
    return fill


#: colour names a material is drawn in (its natural range; several per material).
MATERIAL_COLORS: Dict[str, Tuple[str, ...]] = {
    "wood": ("brown", "orange", "yellow", "red"),
    "brick": ("red", "brown", "orange", "grey"),
    "metal": ("grey", "white", "blue", "black"),
    "fabric": COLOR_NAMES,
    "water": ("blue", "green", "grey"),
    "grass": ("green", "yellow", "brown"),
    "marble": ("white", "grey", "pink", "black"),
    "stone": ("grey", "brown", "white"),
}


def _material_fill(rng: np.random.Generator, name: str) -> Fill:
    cname = MATERIAL_COLORS[name][int(rng.integers(len(MATERIAL_COLORS[name])))]
    base = np.clip(np.array(COLOR_PROTOTYPES[cname], dtype=np.float32)
                   + rng.uniform(-10, 10, 3).astype(np.float32), 0, 255)
    ph = rng.uniform(0, 1, 4).astype(np.float32)
    salt = int(rng.integers(1 << 30))

    if name == "wood":
        angle = float(rng.uniform(-0.3, 0.3)) + (math.pi / 2 if rng.random() < 0.5 else 0.0)
        f = float(rng.uniform(14, 28))

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            t = v * f + 0.5 * np.sin(2 * np.pi * (u * 2.5 + ph[0])) + 0.15 * np.sin(2 * np.pi * (u * 9 + ph[1]))
            ring = _frac(t)
            return _shade(base, 0.68 + 0.42 * ring * ring)
    elif name == "brick":
        hb = float(rng.uniform(0.035, 0.065))
        wb = hb * float(rng.uniform(2.0, 2.6))
        mortar = np.array(COLOR_PROTOTYPES["white"], dtype=np.float32) * 0.85

        def fill(x, y):
            row = np.floor(y / hb)
            xo = x + (row % 2) * (wb / 2) + ph[0]
            col = np.floor(xo / wb)
            gap = (_frac(y / hb) < 0.16) | (_frac(xo / wb) < 0.07)
            brick = _shade(base, 0.82 + 0.3 * _hash01(row, col, salt))
            return np.where(gap[..., None], mortar, brick)
    elif name == "metal":
        angle = float(rng.uniform(-0.2, 0.2))
        freqs = rng.uniform(60, 260, 5).astype(np.float32)
        amps = rng.uniform(0.3, 1.0, 5).astype(np.float32)
        phases = rng.uniform(0, 1, 5).astype(np.float32)
        amps /= amps.sum()

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            streak = sum(amps[k] * np.sin(2 * np.pi * (freqs[k] * v + phases[k])) for k in range(5))
            sheen = 0.88 + 0.2 * np.cos(2 * np.pi * (0.8 * u + 0.3 * v + ph[0]))
            return _shade(base, sheen + 0.1 * streak)
    elif name == "fabric":
        p = float(rng.uniform(0.014, 0.03))
        angle = float(rng.uniform(0, math.pi))
        weft = base * np.float32(0.78)

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            a, b = _frac(u / p), _frac(v / p)
            over = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(bool)
            thread = np.where(over, np.sin(np.pi * b), np.sin(np.pi * a))
            col = np.where(over[..., None], base, weft)
            return col * (0.72 + 0.38 * thread)[..., None]
    elif name == "water":
        f = float(rng.uniform(14, 30))
        highlight = np.array(COLOR_PROTOTYPES["white"], dtype=np.float32)

        def fill(x, y):
            t = np.sin(2 * np.pi * (y * f + 0.1 * np.sin(2 * np.pi * (x * 3.0 + ph[0]))
                                   + 0.05 * np.sin(2 * np.pi * (x * 11.0 + ph[1]))))
            col = _shade(base, 0.86 + 0.14 * t)
            return np.where((t > 0.9)[..., None], 0.5 * col + 0.5 * highlight, col)
    elif name == "grass":
        f = float(rng.uniform(45, 90))

        def fill(x, y):
            t = _frac(x * f + 0.35 * np.sin(2 * np.pi * (y * 7 + ph[0])) + 0.15 * np.sin(2 * np.pi * (x * 5 + ph[1])))
            blade = np.abs(t - 0.5) * 2
            return _shade(base, 0.66 + 0.46 * blade + 0.06 * np.sin(2 * np.pi * (y * 25 + ph[2])))
    elif name == "marble":
        f = float(rng.uniform(2, 5))
        angle = float(rng.uniform(0, math.pi))
        vein_col = base * np.float32(0.45)

        def fill(x, y):
            u, v = _rotate(x, y, angle)
            turb = (0.5 * np.sin(2 * np.pi * (x * 3 + y * 2 + ph[0]))
                    + 0.25 * np.sin(2 * np.pi * (x * 7 - y * 5 + ph[1]))
                    + 0.12 * np.sin(2 * np.pi * (x * 13 + y * 11 + ph[2])))
            vein = np.abs(np.sin(2 * np.pi * (u * f + turb)))
            t = np.clip(vein / 0.22, 0, 1)
            return _mix(vein_col, base, t)
    elif name == "stone":
        p = float(rng.uniform(0.055, 0.1))

        def fill(x, y):
            row = np.floor(y / p)
            xo = x + _hash01(row, row * 7 + 3, salt) * p
            col = np.floor(xo / p)
            gap = (_frac(y / p) < 0.09) | (_frac(xo / p) < 0.09)
            speck = 0.05 * np.sin(2 * np.pi * (x * 97 + y * 41)) * np.sin(2 * np.pi * (x * 37 - y * 89))
            cell = _shade(base, 0.72 + 0.36 * _hash01(row, col, salt) + speck)
            return np.where(gap[..., None], base * np.float32(0.35), cell)
    else:  # pragma: no cover
        raise ValueError(name)
    return fill


# ---------------------------------------------------------------------------------------------
# Canvas: the image (full resolution) and label planes (segmentation resolution)
# ---------------------------------------------------------------------------------------------

_PLANES = ("object", "part", "material", "instance")


class _Canvas:
    def __init__(self, size: int, seg: int):
        self.size, self.seg = size, seg
        self.rgb = np.zeros((size, size, 3), dtype=np.float32)
        full = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
        half = ((np.arange(seg, dtype=np.float32) + 0.5) / seg).astype(np.float32)
        self.full, self.half = full, half
        self.planes = {p: np.zeros((seg, seg), dtype=np.int32) for p in _PLANES}

    @staticmethod
    def _window(bbox, n):
        x0, y0, x1, y1 = bbox
        c0 = max(0, int(math.floor(x0 * n - 0.5)))
        c1 = min(n, int(math.ceil(x1 * n - 0.5)) + 1)
        r0 = max(0, int(math.floor(y0 * n - 0.5)))
        r1 = min(n, int(math.ceil(y1 * n - 0.5)) + 1)
        return r0, r1, c0, c1

    def paint(self, shape: _Shape, fill: Fill, obj: int = 0, part: int = 0,
              material: int = 0, instance: int = 0) -> None:
        """Draw shape with fill; set every label plane under it (later drawn wins)."""
        r0, r1, c0, c1 = self._window(shape.bbox, self.size)
        if r1 > r0 and c1 > c0:
            xs, ys = self.full[None, c0:c1], self.full[r0:r1, None]
            m = np.broadcast_to(shape.mask(xs, ys), (r1 - r0, c1 - c0))
            if m.any():
                region = self.rgb[r0:r1, c0:c1]
                if callable(fill):
                    colors = np.broadcast_to(fill(xs, ys), (r1 - r0, c1 - c0, 3))
                    region[m] = colors[m]
                else:
                    region[m] = fill
        r0, r1, c0, c1 = self._window(shape.bbox, self.seg)
        if r1 > r0 and c1 > c0:
            m = np.broadcast_to(shape.mask(self.half[None, c0:c1], self.half[r0:r1, None]),
                                (r1 - r0, c1 - c0))
            for name, value in zip(_PLANES, (obj, part, material, instance)):
                self.planes[name][r0:r1, c0:c1][m] = value


class _Piece:
    """One drawn shape of an object: its fill, and optionally a part and a material."""
    __slots__ = ("shape", "fill", "part", "material")

    def __init__(self, shape, fill, part=None, material=None):
        self.shape, self.fill, self.part, self.material = shape, fill, part, material


# ---------------------------------------------------------------------------------------------
# Objects. Each returns the pieces to draw in order. Coordinates are relative (0..1), y down.
# ---------------------------------------------------------------------------------------------

def _maybe_material(rng, choices: Sequence[Optional[str]], solid: np.ndarray):
    mat = choices[int(rng.integers(len(choices)))]
    return (mat, _material_fill(rng, mat)) if mat else (None, solid)


def _obj_car(rng, pal, cx, by, w):
    d = 1.0 if rng.random() < 0.5 else -1.0
    r = 0.11 * w
    body_i, body_c = pal.pick()
    mat, body_fill = _maybe_material(rng, ("metal", None), body_c)
    yb = by - 0.55 * r
    hb = 0.2 * w
    yt = yb - hb
    X = lambda lx: cx + d * lx  # noqa: E731
    body = _Polygon([(X(-0.5 * w), yb), (X(0.5 * w), yb), (X(0.5 * w), yt + 0.4 * hb),
                     (X(0.4 * w), yt), (X(-0.5 * w), yt)])
    ct = yt - 0.17 * w
    cabin = _Polygon([(X(-0.4 * w), yt + 0.01 * w), (X(0.24 * w), yt + 0.01 * w), (X(0.1 * w), ct),
                      (X(-0.32 * w), ct)])
    win_i, win_c = pal.pick(exclude=[body_i])
    inset = 0.025 * w
    win_rear = _Polygon([(X(-0.36 * w), yt - 0.005 * w), (X(-0.1 * w), yt - 0.005 * w),
                         (X(-0.1 * w), ct + inset), (X(-0.29 * w), ct + inset)])
    win_front = _Polygon([(X(-0.06 * w), yt - 0.005 * w), (X(0.19 * w), yt - 0.005 * w),
                          (X(0.075 * w), ct + inset), (X(-0.06 * w), ct + inset)])
    door_i, door_c = pal.pick(exclude=[body_i])
    door = _rect(min(X(-0.12 * w), X(0.14 * w)), yt + 0.12 * hb, max(X(-0.12 * w), X(0.14 * w)), yb - 0.1 * hb)
    wheel_i, wheel_c = pal.pick(exclude=[body_i])
    hub_c = pal.color(pal.index(exclude=[wheel_i]))
    pieces = [_Piece(cabin, body_fill, None, mat), _Piece(body, body_fill, None, mat),
              _Piece(win_rear, win_c, "window"), _Piece(win_front, win_c, "window"),
              _Piece(door, door_c, "door")]
    for lx in (-0.3 * w, 0.3 * w):
        pieces.append(_Piece(_circle(X(lx), by - r, r), wheel_c, "wheel"))
        pieces.append(_Piece(_circle(X(lx), by - r, 0.45 * r), hub_c, "wheel"))
    return pieces


def _obj_house(rng, pal, cx, by, w):
    hw = w * float(rng.uniform(0.6, 1.0))
    wall_i, wall_c = pal.pick()
    mat, wall_fill = _maybe_material(rng, ("brick", "wood", "stone", None), wall_c)
    x0, x1, ytop = cx - w / 2, cx + w / 2, by - hw
    roof_h = w * float(rng.uniform(0.3, 0.55))
    roof_i, roof_c = pal.pick(exclude=[wall_i])
    pieces = []
    if rng.random() < 0.6:
        chim_i, chim_c = pal.pick(exclude=[roof_i])
        chx = cx + (0.22 if rng.random() < 0.5 else -0.32) * w
        pieces.append(_Piece(_rect(chx, ytop - roof_h * 0.9, chx + 0.12 * w, ytop), chim_c, "chimney"))
    roof = _Polygon([(x0 - 0.07 * w, ytop + 0.005), (x1 + 0.07 * w, ytop + 0.005), (cx, ytop - roof_h)])
    pieces += [_Piece(_rect(x0, ytop, x1, by), wall_fill, None, mat), _Piece(roof, roof_c, "roof")]
    door_w = 0.2 * w
    door_x = cx + float(rng.uniform(-0.35, 0.15)) * w
    door_i, door_c = pal.pick(exclude=[wall_i])
    pieces.append(_Piece(_rect(door_x, by - 0.45 * hw, door_x + door_w, by), door_c, "door"))
    win_i, win_c = pal.pick(exclude=[wall_i])
    bar_c = pal.color(pal.index(exclude=[win_i]))
    nwin = int(rng.integers(1, 4))
    ws = 0.17 * w
    wy = ytop + 0.15 * hw
    slots = np.linspace(x0 + 0.08 * w, x1 - 0.08 * w - ws, 4)
    for sx in slots[np.sort(rng.choice(4, nwin, replace=False))]:
        if sx + ws > door_x - 0.02 * w and sx < door_x + door_w + 0.02 * w and wy + ws > by - 0.45 * hw:
            continue
        pieces.append(_Piece(_rect(sx, wy, sx + ws, wy + ws), win_c, "window"))
        pieces.append(_Piece(_rect(sx + ws * 0.45, wy, sx + ws * 0.55, wy + ws), bar_c, "window"))
        pieces.append(_Piece(_rect(sx, wy + ws * 0.45, sx + ws, wy + ws * 0.55), bar_c, "window"))
    return pieces


def _obj_tree(rng, pal, cx, by, h):
    trunk_i, trunk_c = pal.pick()
    mat, trunk_fill = _maybe_material(rng, ("wood", None), trunk_c)
    tw = h * float(rng.uniform(0.07, 0.12))
    crown_i, crown_c = pal.pick(exclude=[trunk_i])
    pieces = [_Piece(_rect(cx - tw / 2, by - 0.45 * h, cx + tw / 2, by), trunk_fill, "trunk", mat)]
    if rng.random() < 0.5:  # round crown: a few overlapping disks
        cr = 0.28 * h
        cy = by - h + cr
        disks = [_circle(cx, cy, cr)]
        for _ in range(int(rng.integers(2, 4))):
            ox, oy = rng.uniform(-0.6, 0.6) * cr, rng.uniform(0.0, 0.5) * cr
            disks.append(_circle(cx + ox, cy + oy, cr * float(rng.uniform(0.6, 0.85))))
        crown = _Union(disks)
    else:  # conifer: stacked triangles
        tiers = int(rng.integers(2, 4))
        tris = []
        top, bottom = by - h, by - 0.3 * h
        for k in range(tiers):
            t0 = top + (bottom - top) * k / (tiers + 0.5)
            t1 = top + (bottom - top) * (k + 1.5) / (tiers + 0.5)
            half = 0.18 * h * (k + 1.5) / tiers
            tris.append(_Polygon([(cx, t0), (cx + half, t1), (cx - half, t1)]))
        crown = _Union(tris)
    pieces.append(_Piece(crown, crown_c, "crown"))
    return pieces


def _obj_flower(rng, pal, cx, by, h):
    stem_i, stem_c = pal.pick()
    hx, hy = cx + float(rng.uniform(-0.15, 0.15)) * h, by - 0.72 * h
    pieces = [_Piece(_Capsule(cx, by, hx, hy, 0.035 * h), stem_c, "stem")]
    petal_i, petal_c = pal.pick(exclude=[stem_i])
    n = int(rng.integers(5, 9))
    rot = float(rng.uniform(0, 2 * math.pi))
    pl = 0.13 * h
    petals = []
    for k in range(n):
        a = rot + 2 * math.pi * k / n
        petals.append(_Ellipse(hx + math.cos(a) * pl, hy + math.sin(a) * pl, pl, 0.45 * pl, a))
    pieces.append(_Piece(_Union(petals), petal_c, "petal"))
    center_c = pal.color(pal.index(exclude=[petal_i]))
    pieces.append(_Piece(_circle(hx, hy, 0.07 * h), center_c))
    return pieces


def _obj_person(rng, pal, cx, by, h):
    skin_i, skin_c = pal.pick()
    shirt_i, shirt_c = pal.pick(exclude=[skin_i])
    legs_i, legs_c = pal.pick(exclude=[shirt_i])
    hip, shoulder = by - 0.47 * h, by - 0.8 * h
    lw = 0.045 * h
    pieces = []
    for side in (-1, 1):
        fx = cx + side * float(rng.uniform(0.02, 0.14)) * h
        pieces.append(_Piece(_Capsule(cx + side * 0.05 * h, hip, fx, by - lw, lw), legs_c, "leg"))
    pieces.append(_Piece(_Polygon([(cx - 0.11 * h, shoulder), (cx + 0.11 * h, shoulder),
                                   (cx + 0.09 * h, hip + 0.02 * h), (cx - 0.09 * h, hip + 0.02 * h)]),
                         shirt_c, "torso"))
    for side in (-1, 1):
        a = float(rng.uniform(-1.2, 1.4))  # 0 = hanging down, >0 = raised outwards
        l = 0.3 * h
        sx, sy = cx + side * 0.12 * h, shoulder + 0.03 * h
        pieces.append(_Piece(_Capsule(sx, sy, sx + side * l * math.sin(a), sy + l * math.cos(a), 0.035 * h),
                             skin_c, "arm"))
    pieces.append(_Piece(_circle(cx, shoulder - 0.1 * h, 0.1 * h), skin_c, "head"))
    return pieces


def _obj_boat(rng, pal, cx, wl, w):
    hull_i, hull_c = pal.pick()
    mat, hull_fill = _maybe_material(rng, ("wood", "metal", None), hull_c)
    d = 1.0 if rng.random() < 0.5 else -1.0
    sail_i, sail_c = pal.pick(exclude=[hull_i])
    smat, sail_fill = _maybe_material(rng, ("fabric", None, None), sail_c)
    mast_c = pal.color(pal.index(exclude=[sail_i]))
    top = wl - 0.75 * w
    deck = wl - 0.1 * w
    pieces = [_Piece(_Capsule(cx, deck, cx, top, 0.018 * w), mast_c, "mast"),
              _Piece(_Polygon([(cx + d * 0.025 * w, top + 0.03 * w), (cx + d * 0.025 * w, deck - 0.05 * w),
                               (cx + d * 0.4 * w, deck - 0.05 * w)]), sail_fill, "sail", smat)]
    if rng.random() < 0.5:
        pieces.append(_Piece(_Polygon([(cx - d * 0.025 * w, top + 0.12 * w), (cx - d * 0.025 * w, deck - 0.05 * w),
                                       (cx - d * 0.28 * w, deck - 0.05 * w)]), sail_fill, "sail", smat))
    pieces.append(_Piece(_Polygon([(cx - 0.5 * w, deck), (cx + 0.5 * w, deck), (cx + 0.34 * w, wl + 0.05 * w),
                                   (cx - 0.34 * w, wl + 0.05 * w)]), hull_fill, "hull", mat))
    return pieces


def _obj_ball(rng, pal, cx, cy, r):
    ball_i, ball_c = pal.pick()
    mat, fill = _maybe_material(rng, ("fabric", None, None), ball_c)
    disk = _circle(cx, cy, r)
    pieces = [_Piece(disk, fill, None, mat)]
    if mat is None and rng.random() < 0.6:
        band_c = pal.color(pal.index(exclude=[ball_i]))
        band = _rot_rect(cx, cy, 2.2 * r, 0.5 * r, float(rng.uniform(0, math.pi)))
        pieces.append(_Piece(_Intersection(disk, band), band_c))
    return pieces


def _obj_box(rng, pal, cx, by, s):
    box_i, box_c = pal.pick()
    mat, fill = _maybe_material(rng, ("wood", "metal", "marble", "fabric", None), box_c)
    if callable(fill):
        f0 = fill
        top_fill = lambda x, y: f0(x, y) * np.float32(1.15)  # noqa: E731
        side_fill = lambda x, y: f0(x, y) * np.float32(0.75)  # noqa: E731
    else:
        top_fill, side_fill = fill * np.float32(1.15), fill * np.float32(0.75)
    d = 1.0 if rng.random() < 0.5 else -1.0
    x0, x1, y0 = cx - s / 2, cx + s / 2, by - s
    dx, dy = 0.3 * s * d, 0.25 * s
    fx = x1 if d > 0 else x0
    top = _Polygon([(x0, y0), (x1, y0), (x1 + dx, y0 - dy), (x0 + dx, y0 - dy)])
    side = _Polygon([(fx, by), (fx, y0), (fx + dx, y0 - dy), (fx + dx, by - dy)])
    return [_Piece(top, top_fill, None, mat), _Piece(side, side_fill, None, mat),
            _Piece(_rect(x0, y0, x1, by), fill, None, mat)]


def _obj_sun(rng, pal, cx, cy, r):
    disk_i, disk_c = pal.pick()
    ray_c = pal.color(pal.index()) if rng.random() < 0.5 else disk_c
    n = int(rng.integers(8, 15))
    rot = float(rng.uniform(0, 2 * math.pi))
    outer = r * float(rng.uniform(1.4, 1.8))
    pts = []
    for k in range(2 * n):
        a = rot + math.pi * k / n
        rr = outer if k % 2 == 0 else r * 1.05
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return [_Piece(_Polygon(pts), ray_c), _Piece(_circle(cx, cy, r), disk_c)]


def _obj_cloud(rng, pal, cx, cy, w):
    _, c = pal.pick()
    blobs = [_Ellipse(cx, cy + 0.08 * w, 0.5 * w, 0.14 * w)]
    n = int(rng.integers(3, 6))
    for k in range(n):
        bx = cx + (k / (n - 1) - 0.5) * 0.65 * w
        br = w * float(rng.uniform(0.13, 0.24))
        blobs.append(_circle(bx, cy + 0.08 * w - br * 0.7, br))
    return [_Piece(_Union(blobs), c)]


def _obj_kite(rng, pal, cx, cy, s):
    kite_i, kite_c = pal.pick()
    bar_c = pal.color(pal.index(exclude=[kite_i]))
    a = float(rng.uniform(-0.6, 0.6))
    ca, sa = math.cos(a), math.sin(a)

    def P(lx, ly):
        return (cx + lx * ca - ly * sa, cy + lx * sa + ly * ca)

    diamond = _Polygon([P(0, -0.6 * s), P(0.4 * s, -0.1 * s), P(0, 0.6 * s), P(-0.4 * s, -0.1 * s)])
    pieces = [_Piece(diamond, kite_c)]
    t = 0.02 * s
    pieces.append(_Piece(_Intersection(diamond, _Capsule(*P(0, -0.6 * s), *P(0, 0.6 * s), t)), bar_c))
    pieces.append(_Piece(_Intersection(diamond, _Capsule(*P(-0.4 * s, -0.1 * s), *P(0.4 * s, -0.1 * s), t)), bar_c))
    px, py = P(0, 0.6 * s)
    tail_c = pal.color(pal.index())
    for k in range(4):
        nx = px + float(rng.uniform(-0.15, 0.15)) * s
        ny = py + 0.22 * s
        pieces.append(_Piece(_Capsule(px, py, nx, ny, 0.018 * s), tail_c))
        pieces.append(_Piece(_Ellipse(nx, ny, 0.07 * s, 0.035 * s, float(rng.uniform(0, math.pi))), tail_c))
        px, py = nx, ny
    return pieces


def _obj_bird(rng, pal, cx, cy, s):
    d = 1.0 if rng.random() < 0.5 else -1.0
    body_i, body_c = pal.pick()
    wing_i, wing_c = pal.pick(exclude=[body_i])
    head_c = pal.color(pal.index(exclude=[body_i]))
    tip = cy + float(rng.uniform(-0.65, 0.45)) * s  # wing tip height: flapping up or down
    pieces = [_Piece(_Polygon([(cx - d * 0.3 * s, cy), (cx - d * 0.55 * s, cy - 0.12 * s),
                               (cx - d * 0.55 * s, cy + 0.12 * s)]), body_c),
              _Piece(_Ellipse(cx, cy, 0.36 * s, 0.14 * s), body_c),
              _Piece(_Polygon([(cx - 0.17 * s, cy - 0.03 * s), (cx + 0.17 * s, cy - 0.03 * s),
                               (cx - d * 0.12 * s, tip)]), wing_c, "wing"),
              _Piece(_circle(cx + d * 0.36 * s, cy - 0.08 * s, 0.12 * s), head_c, "head"),
              _Piece(_Polygon([(cx + d * 0.45 * s, cy - 0.12 * s), (cx + d * 0.45 * s, cy - 0.03 * s),
                               (cx + d * 0.62 * s, cy - 0.07 * s)]), head_c, "head")]
    return pieces


# name -> (draw function, size range (relative), where it stands)
_OBJECTS: Dict[str, Tuple[Callable, Tuple[float, float], str]] = {
    "car": (_obj_car, (0.2, 0.48), "ground"),      # size = width
    "house": (_obj_house, (0.2, 0.42), "ground"),  # width
    "tree": (_obj_tree, (0.25, 0.6), "ground"),    # height
    "flower": (_obj_flower, (0.14, 0.34), "ground"),
    "person": (_obj_person, (0.2, 0.5), "ground"),
    "boat": (_obj_boat, (0.2, 0.45), "ground"),    # width; stands on its waterline
    "ball": (_obj_ball, (0.04, 0.11), "ground"),   # radius
    "box": (_obj_box, (0.08, 0.25), "ground"),     # edge
    "sun": (_obj_sun, (0.05, 0.12), "sky"),         # radius
    "cloud": (_obj_cloud, (0.15, 0.4), "sky"),     # width
    "kite": (_obj_kite, (0.1, 0.22), "sky"),
    "bird": (_obj_bird, (0.1, 0.25), "sky"),
}
assert tuple(_OBJECTS) == OBJECT_NAMES


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------

#: minimum visible share of the segmentation pixels for an instance to count as present.
VISIBLE_FRACTION = 0.005
#: minimum share of the image a material must cover to count as the image's surface.
SURFACE_FRACTION = 0.10


def scene_rule(counts: Mapping[str, int], fractions: Mapping[str, float]) -> Optional[str]:
    """The scene an image shows, from visible object instance counts and material fractions.

    Checked in this order; the first that holds wins, None when none does:

    * seaside: water covers >= 10% of the image and a boat is visible
    * street: a car and a house are visible
    * forest: at least 4 trees are visible
    * garden: grass covers >= 10% and a tree or a flower is visible
    * playground: a person and a ball are visible
    * sky: a cloud and a kite or a bird are visible
    """
    n = lambda k: counts.get(k, 0)  # noqa: E731
    f = lambda k: fractions.get(k, 0.0)  # noqa: E731
    if f("water") >= SURFACE_FRACTION and n("boat") >= 1:
        return "seaside"
    if n("car") >= 1 and n("house") >= 1:
        return "street"
    if n("tree") >= 4:
        return "forest"
    if f("grass") >= SURFACE_FRACTION and (n("tree") >= 1 or n("flower") >= 1):
        return "garden"
    if n("person") >= 1 and n("ball") >= 1:
        return "playground"
    if n("cloud") >= 1 and (n("kite") >= 1 or n("bird") >= 1):
        return "sky"
    return None


TEXTURE_ONLY_SHARE = 0.08
NO_SCENE_SHARE = 0.08


def _plan(rng: np.random.Generator):
    """Choose what an image shows: (target, ground material or None, horizon, object names)."""
    u = rng.random()
    if u < TEXTURE_ONLY_SHARE:
        return "texture-only", None, 1.0, []
    if u < TEXTURE_ONLY_SHARE + NO_SCENE_SHARE:
        target = None
    else:
        target = SCENE_NAMES[int(rng.integers(len(SCENE_NAMES)))]
    ri = lambda a, b: int(rng.integers(a, b + 1))  # noqa: E731
    objs: List[str] = []
    ground_choices: List[Optional[str]] = list(MATERIAL_NAMES) + [None]
    if target == "seaside":
        ground = "water"
        objs += ["boat"] * ri(1, 2)
    elif target == "garden":
        ground = "grass"
        nt = ri(0, 2)
        objs += ["tree"] * nt + ["flower"] * ri(1 if nt == 0 else 0, 4)
    elif target == "sky":
        ground = None
        objs += ["cloud"] * ri(1, 3)
        objs += [("kite", "bird")[int(rng.integers(2))] for _ in range(ri(1, 3))]
    else:
        ground = ground_choices[int(rng.integers(len(ground_choices)))]
        if target == "street":
            objs += ["car"] * ri(1, 2) + ["house"] * ri(1, 2)
        elif target == "forest":
            objs += ["tree"] * ri(4, 6)
        elif target == "playground":
            objs += ["person"] * ri(1, 3) + ["ball"] * ri(1, 2)
    horizon = float(rng.uniform(0.45, 0.72)) if ground else 1.0
    fractions = {ground: 1.0 - horizon} if ground else {}

    def counts(names):
        out: Dict[str, int] = {}
        for k in names:
            out[k] = out.get(k, 0) + 1
        return out

    want = ri(1, 4) if target else ri(1, 5)
    tries = 0
    while want > 0 and tries < 40:
        tries += 1
        cand = OBJECT_NAMES[int(rng.integers(len(OBJECT_NAMES)))]
        if scene_rule(counts(objs + [cand]), fractions) == target:
            objs.append(cand)
            want -= 1
    return target, ground, horizon, objs


def _compose(rng: np.random.Generator, canvas: _Canvas, ground: Optional[str], horizon: float,
             objs: Sequence[str], avoid: Sequence[int]) -> List[str]:
    """Draw the ground and the objects; returns the object name of each instance id - 1."""
    if ground:
        amp = float(rng.uniform(0.0, 0.03))
        canvas.paint(_Below(horizon, amp, float(rng.uniform(0.5, 2.5)), float(rng.uniform())),
                     _material_fill(rng, ground), material=LABELS[ground])
    placed = []
    for name in objs:
        fn, (lo, hi), where = _OBJECTS[name]
        size = float(rng.uniform(lo, hi))
        cx = float(rng.uniform(0.05, 0.95))
        if where == "sky":
            top = max(0.12, horizon - 0.1) if ground else 0.8
            y = float(rng.uniform(0.06, top))
            order = (0, OBJECT_NAMES.index(name), y)
        else:
            y = float(rng.uniform(horizon + 0.03, 0.99)) if ground else float(rng.uniform(0.5, 0.99))
            order = (1, y, 0)  # painter's order: farther (higher up) first
            if name == "ball":  # y is where it touches the ground; 30% are in the air
                y = y - size - (0.0 if rng.random() < 0.7 else float(rng.uniform(0.05, 0.3)))
        placed.append((order, name, fn, cx, y, size))
    placed.sort(key=lambda p: p[0])
    instances: List[str] = []
    pal = _Palette(rng, avoid)
    for _, name, fn, cx, y, size in placed:
        pieces = fn(rng, pal, cx, y, size)
        instances.append(name)
        inst = len(instances)
        for pc in pieces:
            canvas.paint(pc.shape, pc.fill, obj=LABELS[name],
                         part=LABELS[pc.part] if pc.part else 0,
                         material=LABELS[pc.material] if pc.material else 0, instance=inst)
    return instances


def render_image(seed: int, index: int, size: int = 224) -> dict:
    """Draw image ``index`` of the dataset with this seed (no files written).

    Returns a dict with ``rgb`` (size, size, 3) uint8 before JPEG encoding, label maps
    ``object``, ``part``, ``material`` (int32, (size // 2, size // 2), global label numbers),
    ``scene`` (label number or None), ``texture`` (label number), and ``kind``
    ('scene' or 'texture-only'). Colour masks are computed later, from the encoded JPEG.
    """
    if size < 8:
        raise NetDissectError(f"image size {size} is too small; use at least 8 pixels")
    rng = np.random.default_rng([int(seed), int(index)])
    seg = size // 2
    canvas = _Canvas(size, seg)
    target, ground, horizon, objs = _plan(rng)
    tex = TEXTURE_NAMES[int(rng.integers(len(TEXTURE_NAMES)))]
    pal = _Palette(rng)
    i1 = pal.index()
    i2 = pal.index(exclude=[i1])
    canvas.paint(_Everything(), _texture_fill(rng, tex, pal.color(i1), pal.color(i2)))
    instances = _compose(rng, canvas, ground, horizon, objs, avoid=(i1, i2))
    noise = rng.normal(0.0, 3.0, canvas.rgb.shape).astype(np.float32)
    rgb = np.clip(np.rint(canvas.rgb + noise), 0, 255).astype(np.uint8)
    planes = canvas.planes
    scene = None
    if target != "texture-only":
        npix = seg * seg
        min_pix = max(2, int(round(VISIBLE_FRACTION * npix)))
        vis = np.bincount(planes["instance"].ravel(), minlength=len(instances) + 1)
        counts: Dict[str, int] = {}
        for i, name in enumerate(instances, start=1):
            if vis[i] >= min_pix:
                counts[name] = counts.get(name, 0) + 1
        mat = np.bincount(planes["material"].ravel(), minlength=len(VOCABULARY) + 1)
        fractions = {m: mat[LABELS[m]] / npix for m in MATERIAL_NAMES}
        s = scene_rule(counts, fractions)
        scene = LABELS[s] if s else None
    return {"rgb": rgb, "object": planes["object"], "part": planes["part"],
            "material": planes["material"], "scene": scene, "texture": LABELS[tex],
            "kind": "texture-only" if target == "texture-only" else "scene"}


# ---------------------------------------------------------------------------------------------
# Writing a Broden directory
# ---------------------------------------------------------------------------------------------

def _label_counts(plane: np.ndarray) -> Dict[int, int]:
    vals, cnt = np.unique(plane, return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, cnt) if v != 0}


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> Tuple[bytes, np.ndarray]:
    """JPEG bytes of an RGB image (4:4:4 chroma) and the pixels as decoded from them."""
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        decoded = np.asarray(im.convert("RGB"))
    return data, decoded


def _write_image(args) -> dict:
    """Worker: render image i, write its files into images_dir, return its index row + stats."""
    images_dir, seed, index, size = args
    out = render_image(seed, index, size)
    seg = size // 2
    stem = f"{index:06d}"
    data, decoded = encode_jpeg(out["rgb"])
    (Path(images_dir) / f"{stem}.jpg").write_bytes(data)
    planes = {"color": color_label_map(decoded, (seg, seg))}
    if out["kind"] == "scene":
        planes["object"] = out["object"]
        if out["part"].any():
            planes["part"] = out["part"]
        planes["material"] = out["material"]
    masks: Dict[str, List[str]] = {}
    counts: Dict[str, Dict[int, int]] = {}
    for cat, plane in planes.items():
        fname = f"{stem}_{'part_1' if cat == 'part' else cat}.png"
        write_label_png(Path(images_dir) / fname, plane)
        masks[cat] = [fname]
        counts[cat] = _label_counts(plane)
    image_labels = {"texture": [out["texture"]]}
    if out["scene"] is not None:
        image_labels["scene"] = [out["scene"]]
    return {"image": f"{stem}.jpg", "split": "val" if index % 5 == 4 else "train",
            "ih": size, "iw": size, "sh": seg, "sw": seg, "masks": masks,
            "image_labels": image_labels, "counts": counts}


def _fmt(x: float) -> str:
    return f"{x:.6f}"


def write_tables(root: Path, vocabulary: Sequence[Tuple[str, str]], categories: Sequence[str],
                 records: Sequence[dict]) -> None:
    """Write index.csv, category.csv, label.csv and c_<category>.csv from per-image records.

    vocabulary: (name, category) per label, label number = position + 1.
    categories: the categories to list (in order); index.csv always has all six columns.
    records: dicts with image, split, ih, iw, sh, sw, masks {category: [png names]},
    image_labels {category: [label numbers]}, counts {category: {label: pixels}}.
    Statistics: see the module docstring.
    """
    root = Path(root)
    nlab = len(vocabulary)
    freq = {c: np.zeros(nlab + 1, dtype=np.int64) for c in categories}
    cover = {c: np.zeros(nlab + 1, dtype=np.float64) for c in categories}
    cat_freq = {c: 0 for c in categories}
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(INDEX_HEADER)
        for r in records:
            row = [r["image"], r["split"], r["ih"], r["iw"], r["sh"], r["sw"]]
            npix = float(r["sh"] * r["sw"])
            for cat in CATEGORIES:
                if cat in PIXEL_CATEGORIES:
                    row.append(";".join(r["masks"].get(cat, [])))
                else:
                    row.append(";".join(str(n) for n in r["image_labels"].get(cat, [])))
            w.writerow(row)
            for cat in categories:
                if cat in PIXEL_CATEGORIES:
                    if not r["masks"].get(cat):
                        continue
                    cat_freq[cat] += 1
                    for lab, cnt in sorted(r["counts"].get(cat, {}).items()):
                        freq[cat][lab] += 1
                        cover[cat][lab] += cnt / npix
                else:
                    labs = r["image_labels"].get(cat, [])
                    if not labs:
                        continue
                    cat_freq[cat] += 1
                    for lab in sorted(set(labs)):
                        freq[cat][lab] += 1
                        cover[cat][lab] += 1.0
    numbers = {c: [i + 1 for i, (_, cc) in enumerate(vocabulary) if cc == c] for c in categories}
    for c in categories:
        stray = [n for n in range(1, nlab + 1) if freq[c][n] and n not in numbers[c]]
        if stray:
            raise NetDissectError(f"labels {stray} occur in category {c} but are not in its vocabulary")
    with open(root / "category.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["name", "first", "last", "count", "frequency"])
        for c in categories:
            w.writerow([c, min(numbers[c]), max(numbers[c]), len(numbers[c]), cat_freq[c]])
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for i, (name, c) in enumerate(vocabulary):
            n = i + 1
            w.writerow([n, name, f"{c}({freq[c][n]})", freq[c][n], _fmt(cover[c][n]), ""])
    for c in categories:
        with open(root / f"c_{c}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, n in enumerate(numbers[c], start=1):
                w.writerow([code, n, vocabulary[n - 1][0], freq[c][n], _fmt(cover[c][n])])


DATASET_MARKER = ".netdissect-dataset"  # in every directory a builder made: it may be replaced


def check_output_dir(out_dir: Union[str, Path], overwrite: bool = False) -> Path:
    """Refuse (NetDissectError) an out_dir that a builder must not replace: a file, a non-empty
    directory without overwrite, or one without the marker of a dataset netdissect made (so
    ``--overwrite`` or ``demo --data .`` never deletes a user's folder)."""
    out = Path(out_dir).absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise NetDissectError(f"{out} exists and is not a directory; choose another output path")
        if any(out.iterdir()):
            if not overwrite:
                raise NetDissectError(f"{out} exists and is not empty; pass overwrite=True "
                                      "(--overwrite) to replace it, or choose another directory")
            if not (out / DATASET_MARKER).is_file():
                raise NetDissectError(f"{out} is not empty and was not made by netdissect (no "
                                      f"{DATASET_MARKER} marker), so it is never replaced; choose "
                                      "another directory or empty this one yourself")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NetDissectError(f"{parent} is not a directory, so {out} cannot be made there; "
                                      "choose another output path")
            break
    return out


@contextmanager
def atomic_output_dir(out_dir: Union[str, Path], overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory next to out_dir; on success it replaces out_dir.

    Refuses (NetDissectError, see ``check_output_dir``) to replace a directory netdissect did
    not make. The new directory carries the marker. On an exception the temporary directory
    is removed and out_dir is untouched.
    """
    out = check_output_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # unlike mkdtemp, honours the umask (the result is a normal directory)
    try:
        yield tmp
        (tmp / DATASET_MARKER).write_text(json.dumps({"made_by": "netdissect", "kind": "dataset"}) + "\n")
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _progress(iterable, total: int, enabled: bool, desc: str):
    from .progress import track
    return track(iterable, total, enabled, desc)


def generate_synthetic(out_dir: Union[str, Path], images: int = 1000, size: int = 224,
                       seed: int = 0, workers: Optional[int] = None, progress: bool = False,
                       overwrite: bool = False) -> Path:
    """Write a complete synthetic Broden dataset to out_dir and return its path.

    images: number of images; size: image side in pixels (segmentation side = size // 2);
    seed: same seed -> byte-identical files; workers: processes (default os.cpu_count(),
    1 = in this process); overwrite: replace a non-empty existing out_dir (otherwise
    NetDissectError). The directory is built next to out_dir and renamed into place.
    See the module docstring for the content and the statistics.
    """
    if images < 1:
        raise NetDissectError(f"images must be at least 1, got {images}")
    if size < 8:
        raise NetDissectError(f"size must be at least 8 pixels, got {size}")
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    workers = min(workers, images)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        images_dir = tmp / "images"
        images_dir.mkdir()
        jobs = [(str(images_dir), int(seed), i, int(size)) for i in range(images)]
        if workers == 1:
            records = [_write_image(j) for j in _progress(jobs, images, progress, "synthetic")]
        else:
            ctx = multiprocessing.get_context()
            with ctx.Pool(workers) as pool:
                chunk = max(1, min(16, images // (workers * 8)))
                it = pool.imap(_write_image, jobs, chunksize=chunk)
                records = list(_progress(it, images, progress, "synthetic"))
        write_tables(tmp, VOCABULARY, CATEGORIES, records)
    return Path(out_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m netdissect.synthetic",
                                description="Write a synthetic dataset in the Broden format.")
    p.add_argument("out_dir")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        generate_synthetic(a.out_dir, a.images, a.size, a.seed, a.workers, progress=True,
                           overwrite=a.overwrite)
    except NetDissectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {a.images} images to {a.out_dir} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
