"""The canvas (image and label planes) and the objects drawn on it, with their parts.

Part of the synthetic Broden generator (see netdissect.data.synthetic)."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from netdissect.data.synthetic.geometry import (
    _Capsule,
    _circle,
    _Ellipse,
    _Intersection,
    _Polygon,
    _rect,
    _rot_rect,
    _Shape,
    _Union,
)
from netdissect.data.synthetic.materials import _material_fill
from netdissect.data.synthetic.textures import Fill
from netdissect.data.synthetic.vocabulary import OBJECT_NAMES

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
