"""Fills: a constant colour, or a procedural texture named after a DTD class, in two colours.

Part of the synthetic Broden generator (see netdissect.data.synthetic)."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Tuple, Union

import numpy as np

from netdissect.data.synthetic.colors import COLOR_PROTOTYPES
from netdissect.data.synthetic.vocabulary import COLOR_NAMES

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
