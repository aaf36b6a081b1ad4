"""Units built by hand to fire on known concepts get those labels, with hand-computed IoU."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import netdissect
from netdissect.data.labelpng import write_label_png

SIZE, SEG = 32, 16
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def block_origins(i):
    """Top-left segmentation cells of image i's two red 4x4 blocks (they may overlap)."""
    return [(2 * ((i + 3 * b) % 4), 8 + 2 * ((i + b) % 3)) for b in range(2)]


def red_cells(i):
    red = np.zeros((SEG, SEG), bool)
    for y, x in block_origins(i):
        red[y:y + 4, x:x + 4] = True
    return red


def make_planted_dataset(root: Path, n_images: int = 8) -> Path:
    """Each image: two red 8x8-pixel blocks (4x4 at segmentation size) on a background that is
    blue for 'street' images (even) and white for 'forest' images (odd). Lossless PNG images."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n_images):
        street = i % 2 == 0
        img = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        img[:] = BLUE if street else WHITE
        color = np.zeros((SEG, SEG), dtype=np.int64)
        obj = np.zeros((SEG, SEG), dtype=np.int64)
        for y, x in block_origins(i):
            img[2 * y:2 * y + 8, 2 * x:2 * x + 8] = RED
            color[y:y + 4, x:x + 4] = 1          # red
        obj[0:8, 0:4] = 2                          # a 'post' covering 32 cells, left edge
        Image.fromarray(img).save(root / "images" / f"p{i}.png")
        write_label_png(root / "images" / f"p{i}_color.png", color)
        write_label_png(root / "images" / f"p{i}_object.png", obj)
        rows.append([f"p{i}.png", "train", SIZE, SIZE, SEG, SEG, f"p{i}_color.png", f"p{i}_object.png",
                     "", "", "3" if street else "4", ""])
    _csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part",
                              "material", "scene", "texture"], rows)
    _csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
         [["color", 1, 1, 1, n_images], ["object", 2, 2, 1, n_images], ["scene", 3, 4, 2, n_images]])
    labels = [(1, "red", "color"), (2, "post", "object"), (3, "street", "scene"), (4, "forest", "scene")]
    _csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
         [[n, name, f"{cat}({n_images})", n_images, 0.1, ""] for n, name, cat in labels])
    for cat in ("color", "object", "scene"):
        _csv(root / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
             [[j + 1, n, name, n_images, 0.1] for j, (n, name, c) in
              enumerate([lab for lab in labels if lab[2] == cat])])
    return root


class Planted(nn.Module):
    """Pixels in [0, 1] (mean 0, std 1). 'detect' is 3 units at 16x16 (2x2 average of pixels):
    unit 0 = relu(R - G - B): red; unit 1 = relu(B - R - G): blue background = street images;
    unit 2 = a constant 0 (never a detector)."""

    def __init__(self):
        super().__init__()
        self.detect = nn.Conv2d(3, 3, kernel_size=2, stride=2, bias=False)
        w = torch.zeros(3, 3, 2, 2)
        w[0, 0], w[0, 1], w[0, 2] = 0.25, -0.25, -0.25
        w[1, 2], w[1, 0], w[1, 1] = 0.25, -0.25, -0.25
        with torch.no_grad():
            self.detect.weight.copy_(w)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.detect(x))


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    root = make_planted_dataset(tmp_path_factory.mktemp("planted"))
    # top 60% active: both detectors' thresholds fall on their 0 plateau, so mask = unit > 0
    return netdissect.dissect(Planted(), ["relu"], root, quantile=0.6, mean=(0, 0, 0), std=(1, 1, 1),
                              batch_size=3, workers=0, progress=False, min_category_images=0)


def test_red_unit_is_labeled_red_with_iou_one(planted_run):
    layer = planted_run["relu"]
    label, category, iou = layer.unit_labels()[0]
    assert (label, category) == ("red", "color")
    assert iou == pytest.approx(1.0)
    # against the 'post' object (32 cells per image, of which red covers some): hand count
    post = layer.concept_names.index("post")
    inter = union = 0
    for i in range(8):
        red = red_cells(i)
        obj = np.zeros((SEG, SEG), bool)
        obj[0:8, 0:4] = True
        inter += (red & obj).sum()
        union += (red | obj).sum()
    assert layer.iou[0, post] == pytest.approx(inter / union)


def test_blue_unit_is_a_whole_image_street_detector(planted_run):
    layer = planted_run["relu"]
    label, category, iou = layer.unit_labels()[1]
    assert (label, category) == ("street", "scene")
    # active on the blue background of street images: every cell that is not red
    blue = sum(SEG * SEG - red_cells(i).sum() for i in range(0, 8, 2))
    assert iou == pytest.approx(blue / (4 * SEG * SEG))
    assert layer.iou[1, layer.concept_names.index("forest")] == 0.0


def test_constant_unit_detects_nothing(planted_run):
    layer = planted_run["relu"]
    assert layer.best_iou[2] == 0.0
    summary = layer.summary()
    assert summary["detectors"] == 2
    assert summary["unique_detectors"] == 2
    assert summary["unique_per_category"] == {"color": 1, "object": 0, "scene": 1}
