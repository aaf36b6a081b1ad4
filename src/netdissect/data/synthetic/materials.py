"""Material fills: each material drawn in its natural colours and pattern.

Part of the synthetic Broden generator (see netdissect.data.synthetic)."""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

from netdissect.data.synthetic.colors import COLOR_PROTOTYPES
from netdissect.data.synthetic.textures import Fill, _frac, _hash01, _mix, _rotate, _shade
from netdissect.data.synthetic.vocabulary import COLOR_NAMES

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
