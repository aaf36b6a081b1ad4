"""Scenes: the plan of an image (ground, horizon, objects) and its scene label by rule.

Part of the synthetic Broden generator (see netdissect.data.synthetic)."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from netdissect.data.synthetic.geometry import _Below, _Everything
from netdissect.data.synthetic.materials import _material_fill
from netdissect.data.synthetic.objects import _OBJECTS, _Canvas
from netdissect.data.synthetic.textures import _Palette, _texture_fill
from netdissect.data.synthetic.vocabulary import (
    LABELS,
    MATERIAL_NAMES,
    OBJECT_NAMES,
    SCENE_NAMES,
    TEXTURE_NAMES,
    VOCABULARY,
)
from netdissect.errors import NetDissectError

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
