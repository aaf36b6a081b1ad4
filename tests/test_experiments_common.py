"""Planted-unit models and the small Broden sets they read, for the experiment commands' tests.

A planted model reads a concept code from the red channel (a PNG, so exactly): unit k fires
(value 1) exactly where the image shows concept k. Green and blue hold uniform noise that a
fixed random convolution turns into per-unit noise of a chosen size (sigma 0: none).
Its head is global average pooling + nn.Linear, like resnet / mobilenet heads.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from netdissect.data.labelpng import write_label_png

CODE_STEP = 3  # red value of concept k = CODE_STEP * (k + 1)


def write_broden(root: Path, images: Sequence[dict], labels: Sequence[Tuple[int, str, str]],
                 categories: Sequence[str]) -> Path:
    """images: dicts with 'rgb' (H, W, 3) uint8, optional 'split', pixel categories -> label map
    (sh, sw) ints, image categories -> list of label numbers. labels: (number, name, category)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    pixel = [c for c in categories if c not in ("scene", "texture")]
    rows = []
    freq: Dict[int, int] = {n: 0 for n, _, _ in labels}
    cover: Dict[int, float] = {n: 0.0 for n, _, _ in labels}
    for i, im in enumerate(images):
        name = f"im{i:04d}"
        Image.fromarray(im["rgb"]).save(root / "images" / f"{name}.png")
        h, w = im["rgb"].shape[:2]
        sh, sw = h // 2, w // 2
        row = [f"{name}.png", im.get("split", "train"), h, w, sh, sw]
        for cat in categories:
            value = im.get(cat)
            if cat in pixel:
                if value is None:
                    row.append("")
                    continue
                write_label_png(root / "images" / f"{name}_{cat}.png", np.asarray(value, dtype=np.int64))
                row.append(f"{name}_{cat}.png")
                for n in np.unique(value):
                    if n:
                        freq[int(n)] += 1
                        cover[int(n)] += float((value == n).mean())
            else:
                value = value or []
                row.append(";".join(str(v) for v in value))
                for n in value:
                    freq[n] += 1
                    cover[n] += 1.0
        rows.append(row)

    def write(path, header, body):
        with open(root / path, "w", newline="") as f:
            wr = csv.writer(f, lineterminator="\n")
            wr.writerow(header)
            wr.writerows(body)

    write("index.csv", ["image", "split", "ih", "iw", "sh", "sw"] + list(categories), rows)
    write("category.csv", ["name", "first", "last", "count", "frequency"],
          [[c, min(n for n, _, cc in labels if cc == c), max(n for n, _, cc in labels if cc == c),
            sum(1 for _, _, cc in labels if cc == c), len(images)] for c in categories])
    write("label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
          [[n, name, f"{c}({freq[n]})", freq[n], f"{cover[n]:.4f}", ""] for n, name, c in labels])
    for c in categories:
        write(f"c_{c}.csv", ["code", "number", "name", "frequency", "coverage"],
              [[j + 1, n, name, freq[n], f"{cover[n]:.4f}"]
               for j, (n, name, _) in enumerate([lab for lab in labels if lab[2] == c])])
    return root


class PlantedNet(nn.Module):
    """Unit k = 1 exactly where the image's red channel holds concept k's code, plus noise."""

    def __init__(self, units: int, classes: int = 2, sigma: float = 0.0, seed: int = 0,
                 fc_weight: Optional[np.ndarray] = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.k = units
        self.sigma = sigma
        self.register_buffer("noise_w", torch.randn(units, 2, 2, 2, generator=g) * sigma * (12 / 8) ** 0.5)
        self.gain = nn.Parameter(torch.ones(units))
        self.units = nn.Identity()
        self.fc = nn.Linear(units, classes)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            if fc_weight is not None:
                self.fc.weight.copy_(torch.as_tensor(fc_weight, dtype=torch.float32))

    def forward(self, x):
        # inputs are pixels / 255 (mean 0, std 1 normalization)
        red = F.avg_pool2d(x[:, :1].float(), 2) * 255.0
        code = torch.round(red / CODE_STEP) - 1
        onehot = (code == torch.arange(self.k, device=x.device).view(1, -1, 1, 1)).float()
        if self.sigma:
            onehot = onehot + F.conv2d(x[:, 1:3].float() - 0.5, self.noise_w, stride=2)
        a = self.units(onehot * self.gain.view(1, -1, 1, 1))
        return self.fc(a.mean(dim=(2, 3)))


def paint(red: np.ndarray, label: np.ndarray, concept: int, number: int, y: int, x: int, s: int = 2) -> None:
    """Concept ``concept`` (unit index) as an s x s square at segmentation cell (y, x)."""
    red[2 * y:2 * (y + s), 2 * x:2 * (x + s)] = CODE_STEP * (concept + 1)
    label[y:y + s, x:x + s] = number


def make_rotation_set(root: Path, concepts: int = 64, images: int = 60, per_image: int = 16,
                      size: int = 32, seed: int = 0) -> Path:
    """``concepts`` objects, each a 2 x 2 square (segmentation cells) in random images; green and
    blue hold uniform noise."""
    rng = np.random.default_rng(seed)
    s = size // 2
    cells = (s // 2) ** 2
    out = []
    for i in range(images):
        rgb = np.zeros((size, size, 3), dtype=np.uint8)
        rgb[..., 1:] = rng.integers(0, 256, (size, size, 2))
        lab = np.zeros((s, s), dtype=np.int64)
        red = np.zeros((size, size), dtype=np.uint8)
        for cell, k in zip(rng.choice(cells, per_image, replace=False), rng.integers(0, concepts, per_image)):
            cy, cx = divmod(int(cell), s // 2)
            paint(red, lab, int(k), int(k) + 1, 2 * cy, 2 * cx)
        rgb[..., 0] = red
        out.append({"rgb": rgb, "object": lab})
    labels = [(k + 1, f"thing{k:02d}", "object") for k in range(concepts)]
    return write_broden(root, out, labels, ["object"])


SCENE_LABELS = [(1, "car", "object"), (2, "tree", "object"), (3, "wood", "material"),
                (4, "street", "scene"), (5, "forest", "scene")]


def make_scene_set(root: Path, images: int = 16, size: int = 64, seed: int = 0) -> Path:
    """Even images: street (a car, unit 0); odd: forest (a tree, unit 1); every third: wood
    (unit 2). Each concept is one 2 x 2 square, 0.4% of an image: below the 0.5% quantile,
    so the planted units' IoU is exactly 1."""
    rng = np.random.default_rng(seed)
    s = size // 2
    out = []
    for i in range(images):
        rgb = np.zeros((size, size, 3), dtype=np.uint8)
        red = np.zeros((size, size), dtype=np.uint8)
        obj = np.zeros((s, s), dtype=np.int64)
        mat = np.zeros((s, s), dtype=np.int64)
        y, x = (int(v) for v in rng.integers(0, s // 2 - 2, 2))
        if i % 2 == 0:
            paint(red, obj, 0, 1, y, x)
        else:
            paint(red, obj, 1, 2, y, x)
        if i % 3 == 0:
            paint(red, mat, 2, 3, y + s // 2, x + s // 2)
        rgb[..., 0] = red
        out.append({"rgb": rgb, "object": obj, "material": mat, "scene": [4 if i % 2 == 0 else 5],
                    "split": "val" if i % 4 == 3 else "train"})
    return write_broden(root, out, SCENE_LABELS, ["object", "material", "scene"])


def scene_net() -> PlantedNet:
    """6 units (car, tree, wood, three silent ones); class street <- car, forest <- tree."""
    w = np.zeros((2, 6))
    w[0, 0] = 1.0
    w[1, 1] = 1.0
    net = PlantedNet(6, classes=2, fc_weight=w)
    net.class_names = ["street", "forest"]
    return net


def identity_norm():
    return dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


# --------------------------------------------------------------------------- the helpers' own tests

def dissected_scene_run(root: Path, images: int):
    """A scene set and the dissection of the planted scene net's 'units' layer on it."""
    import netdissect
    data = make_scene_set(root / "data", images=images)
    netdissect.dissect(scene_net(), ["units"], data, root / "run", progress=False, workers=0,
                       min_category_images=1, **identity_norm())
    return data, root / "run"


def test_planted_units_fire_exactly_on_their_concepts(tmp_path):
    import netdissect
    root = make_scene_set(tmp_path / "scene", images=8)
    r = netdissect.dissect(scene_net(), ["units"], root, progress=False, workers=0, min_category_images=1,
                           **identity_norm())
    layer = r.layers["units"]
    labels = layer.unit_labels()
    assert [lab[0] for lab in labels[:3]] == ["car", "tree", "wood"]
    assert [lab[2] for lab in labels[:3]] == [1.0, 1.0, 1.0]
    assert all(lab[2] == 0.0 for lab in labels[3:])


def test_tables(tmp_path):
    from netdissect.experiments.common import csv_text, format_table, write_csv
    text = format_table(["name", "n"], [["a", 1], ["bb", 2.5]])
    assert text.splitlines()[0].startswith("name")
    assert "2.500" in text
    write_csv(tmp_path / "t.csv", ["a", "b"], [[1, 0.5]])
    assert (tmp_path / "t.csv").read_text() == csv_text(["a", "b"], [[1, 0.5]]) == "a,b\n1,0.5\n"


def test_style_colors_are_fixed_per_category():
    from netdissect.experiments.style import CATEGORY_COLORS, category_colors, ordered_categories
    assert category_colors(["scene", "object"])["object"] == CATEGORY_COLORS["object"]
    assert category_colors(["object", "other"])["other"] not in CATEGORY_COLORS.values()
    assert ordered_categories(["color", "extra", "object"]) == ["object", "color", "extra"]


def test_add_commands_registers_every_subcommand():
    import argparse

    from netdissect.experiments import add_commands
    parser = argparse.ArgumentParser(prog="netdissect")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    for argv in (["rotate", "--model", "m", "--layer", "l", "--dataset", "d", "--out", "o"],
                 ["compare", "a", "b", "--out", "o"],
                 ["checkpoints", "--model", "m", "--checkpoints", "c", "--layer", "l", "--dataset", "d", "--out", "o"],
                 ["experiment", "conditions", "--out", "o", "--quick"],
                 ["explain", "--model", "m", "--layer", "l", "--run", "r", "--image", "i.jpg"],
                 ["ablate", "--model", "m", "--layer", "l", "--run", "r", "--dataset", "d", "--top", "3"]):
        args = parser.parse_args(argv)
        assert callable(args.func), argv
    with pytest.raises(SystemExit):
        parser.parse_args(["ablate", "--model", "m", "--layer", "l", "--run", "r", "--dataset", "d",
                           "--top", "3", "--random", "2"])
