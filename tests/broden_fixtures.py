"""A tiny Broden-format dataset written by the tests themselves.

`build_broden(root)` writes three 8x8 images (segmentation 4x4) with hand-made masks:

    line 2  a/img0.jpg  train  color: 1 red, 2 green   object: 3 dog, 4 wheel
                               part: two planes (4 wheel / 10 leg)   scene: 7 street
    line 3  a/img1.png  train  color: 1 red   material: 6 wood, 11 glass   scene: 8   texture: 9
    line 4  b/img2.jpg  val    object: 5 car, 12 tie                      texture: 9

Label 4 (wheel) is in object and part; c_part gives it the larger coverage, so its primary
category is part.  Label 12 (tie) has equal coverage in c_color and c_object: color comes first
in category.csv.  Label 11 (glass) is in no c_ file; label.csv says material(1);object(3).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from netdissect.data.labelpng import write_label_png

CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
PIXEL = ["color", "object", "part", "material"]
IMAGE = ["scene", "texture"]
INDEX_HEADER = ["image", "split", "ih", "iw", "sh", "sw"] + CATEGORIES

# number, name, category field, frequency, coverage
LABELS: List[Tuple[int, str, str, int, float]] = [
    (1, "red", "color(2)", 2, 0.5),
    (2, "green", "color(1)", 1, 0.25),
    (3, "dog", "object(1)", 1, 0.3),
    (4, "wheel", "object(1);part(2)", 3, 0.4),
    (5, "car", "object(1)", 1, 0.2),
    (6, "wood", "material(1)", 1, 0.4),
    (7, "street", "scene(1)", 1, 1.0),
    (8, "kitchen", "scene(1)", 1, 1.0),
    (9, "striped", "texture(2)", 2, 1.0),
    (10, "leg", "part(1)", 1, 0.1),
    (11, "glass", "material(1);object(3)", 4, 0.2),
    (12, "tie", "color(1);object(1)", 2, 0.2),
]

# category -> [(label number, coverage)]
CFILES: Dict[str, List[Tuple[int, float]]] = {
    "color": [(1, 0.5), (2, 0.25), (12, 0.2)],
    "object": [(3, 0.3), (4, 0.1), (5, 0.2), (12, 0.2)],
    "part": [(4, 0.3), (10, 0.1)],
    "material": [(6, 0.4)],
    "scene": [(7, 1.0), (8, 1.0)],
    "texture": [(9, 1.0)],
}

EXPECTED_PRIMARY = {1: "color", 2: "color", 3: "object", 4: "part", 5: "object",
                    6: "material", 7: "scene", 8: "scene", 9: "texture", 10: "part",
                    11: "object", 12: "color"}


def _plane(spec: Sequence[Sequence[int]]) -> np.ndarray:
    return np.asarray(spec, dtype=np.int32)


@dataclass
class FixtureImage:
    name: str                                        # path under images/
    split: str
    masks: Dict[str, List[np.ndarray]] = field(default_factory=dict)
    image_labels: Dict[str, List[int]] = field(default_factory=dict)
    ih: int = 8
    iw: int = 8
    sh: int = 4
    sw: int = 4

    def mask_names(self, category: str) -> List[str]:
        stem = self.name.rsplit(".", 1)[0]
        return [f"{stem}_{category}_{k + 1}.png" for k in range(len(self.masks.get(category, [])))]


def default_images() -> List[FixtureImage]:
    return [
        FixtureImage("a/img0.jpg", "train", masks={
            "color": [_plane([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 2, 2], [0, 0, 0, 0]])],
            "object": [_plane([[3, 3, 0, 0], [3, 3, 0, 0], [0, 4, 4, 0], [0, 4, 4, 0]])],
            "part": [_plane([[0, 0, 0, 0], [0, 0, 0, 0], [0, 4, 4, 0], [0, 0, 0, 0]]),
                     _plane([[10, 0, 0, 0], [10, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])],
        }, image_labels={"scene": [7]}),
        FixtureImage("a/img1.png", "train", masks={
            "color": [_plane([[1] * 4] * 4)],
            "material": [_plane([[6, 6, 11, 11]] * 4)],
        }, image_labels={"scene": [8], "texture": [9]}),
        FixtureImage("b/img2.jpg", "val", masks={
            "object": [_plane([[5, 5, 5, 5], [5, 5, 5, 5], [12, 12, 0, 0], [0, 0, 0, 0]])],
        }, image_labels={"texture": [9]}),
    ]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)


def index_row(image: FixtureImage, categories: Sequence[str] = CATEGORIES) -> List[str]:
    row = [image.name, image.split, str(image.ih), str(image.iw), str(image.sh), str(image.sw)]
    for cat in categories:
        if cat in IMAGE:
            row.append(";".join(str(n) for n in image.image_labels.get(cat, [])))
        else:
            row.append(";".join(image.mask_names(cat)))
    return row


def write_tables(root: Path, labels=LABELS, cfiles=CFILES,
                 categories: Sequence[str] = CATEGORIES) -> None:
    """category.csv, label.csv and the c_<category>.csv files."""
    names = {n: name for n, name, *_ in labels}
    write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
              [[c, 0, 0, len(cfiles.get(c, [])), 0] for c in categories])
    write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
              [[n, name, cats, freq, cov, ""] for n, name, cats, freq, cov in labels])
    for cat, rows in cfiles.items():
        write_csv(root / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
                  [[code + 1, n, names.get(n, "?"), 1, cov] for code, (n, cov) in enumerate(rows)])


def write_image(path: Path, height: int, width: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    else:
        Image.fromarray(pixels).save(path, format="PNG")


@dataclass
class Fixture:
    root: Path
    images: List[FixtureImage]

    @property
    def index(self) -> Path:
        return self.root / "index.csv"

    def image_path(self, i: int) -> Path:
        return self.root / "images" / self.images[i].name

    def mask_path(self, i: int, category: str, k: int = 0) -> Path:
        return self.root / "images" / self.images[i].mask_names(category)[k]

    def index_lines(self) -> List[str]:
        return self.index.read_text(encoding="utf-8").splitlines()

    def write_index_lines(self, lines: Sequence[str]) -> None:
        self.index.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_broden(root: Path, images: Optional[List[FixtureImage]] = None,
                 labels=LABELS, cfiles=CFILES) -> Fixture:
    """Write a complete Broden-format dataset under root (created if needed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    images = default_images() if images is None else images
    write_tables(root, labels, cfiles)
    for i, image in enumerate(images):
        write_image(root / "images" / image.name, image.ih, image.iw, seed=i)
        for cat, planes in image.masks.items():
            for name, plane in zip(image.mask_names(cat), planes):
                write_label_png(root / "images" / name, plane)
    write_csv(root / "index.csv", INDEX_HEADER, [index_row(im) for im in images])
    return Fixture(root, images)
