"""The synthetic set's vocabulary: Broden's six categories and the names in each.

Part of the synthetic Broden generator (see netdissect.data.synthetic)."""
from __future__ import annotations

from typing import Dict, Tuple

from netdissect.data.broden import IMAGE_CATEGORIES, PIXEL_CATEGORIES

CATEGORIES: Tuple[str, ...] = PIXEL_CATEGORIES + IMAGE_CATEGORIES   # Broden's six, from data/broden.py
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
