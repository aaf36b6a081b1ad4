"""Small random Broden-format datasets and models for the engine's tests."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image
from torch import nn

from netdissect.data.labelpng import write_label_png

CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
PIXEL = {"color", "object", "part", "material"}
# number -> (name, {category: coverage}); label 5 is in two categories (primary: object)
LABELS: Dict[int, tuple] = {
    1: ("red", {"color": 0.3}),
    2: ("blue", {"color": 0.2}),
    3: ("car", {"object": 0.2}),
    4: ("tree", {"object": 0.1}),
    5: ("door", {"object": 0.15, "part": 0.05}),
    6: ("wheel", {"part": 0.1}),
    7: ("wood", {"material": 0.1}),
    8: ("street", {"scene": 1.0}),
    9: ("forest", {"scene": 1.0}),
    10: ("striped", {"texture": 1.0}),
}


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def make_dataset(root: Path, n_images: int = 12, size: int = 32, seed: int = 0,
                 unlabeled_part_every: int = 3) -> Path:
    """Random images and random block masks; some images lack part labels."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    seg = size // 2
    rows = []
    for i in range(n_images):
        name = f"img{i:04d}"
        img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"{name}.jpg", quality=95)
        masks: Dict[str, List[str]] = {c: [] for c in PIXEL}
        plane_sets = {"color": [1, 2], "object": [3, 4, 5], "material": [7]}
        if i % unlabeled_part_every != 0:
            plane_sets["part"] = [6, 5]
        for cat, labels in plane_sets.items():
            planes = 2 if cat == "part" else 1
            for p in range(planes):
                arr = np.zeros((seg, seg), dtype=np.int64)
                for _ in range(3):
                    y, x = rng.integers(0, seg, 2)
                    hh, ww = rng.integers(2, seg // 2 + 2, 2)
                    arr[y:y + hh, x:x + ww] = rng.choice(labels)
                fname = f"{name}_{cat}{'_' + str(p + 1) if cat == 'part' else ''}.png"
                write_label_png(root / "images" / fname, arr)
                masks[cat].append(fname)
        scene = str(rng.choice([8, 9]))
        texture = "10" if i % 2 else ""
        rows.append([f"{name}.jpg", "train" if i % 4 else "val", size, size, seg, seg,
                     ";".join(masks["color"]), ";".join(masks["object"]), ";".join(masks["part"]),
                     ";".join(masks["material"]), scene, texture])
    _write_csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw"] + CATEGORIES, rows)
    cat_rows = []
    for cat in CATEGORIES:
        nums = [n for n, (_, cats) in LABELS.items() if cat in cats]
        cat_rows.append([cat, min(nums), max(nums), len(nums), n_images])
    _write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"], cat_rows)
    _write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
               [[n, name, ";".join(f"{c}({n_images})" for c in cats), n_images, max(cats.values()), ""]
                for n, (name, cats) in LABELS.items()])
    for cat in CATEGORIES:
        entries = [(n, name, cats[cat]) for n, (name, cats) in LABELS.items() if cat in cats]
        _write_csv(root / f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"],
                   [[code + 1, n, name, n_images, cov] for code, (n, name, cov) in enumerate(entries)])
    return root


class TinyNet(nn.Module):
    """Three conv stages: 32 px -> 16 -> 8 -> 4."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 5, 3, stride=2, padding=1)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        x = self.conv3(x)
        return self.head(x.mean(dim=(2, 3)))


class UnseededNet(nn.Module):
    """TinyNet's shape, initialized from the global random stream (as a random init is)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 5, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv3(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


def tiny_net() -> nn.Module:
    return TinyNet()


class SlowTinyNet(TinyNet):
    """TinyNet that takes a while per batch, so a test can interrupt a run part-way."""

    def forward(self, x):
        import time
        time.sleep(0.15)
        return super().forward(x)


def slow_tiny_net() -> nn.Module:
    return SlowTinyNet()


def tiny_net_rank1_apart() -> nn.Module:
    """TinyNet; on torchrun rank 1 the label cache is a directory of its own, as on a machine
    that does not hold rank 0's cache (tests/test_label_cache.py)."""
    import os
    if os.environ.get("RANK") == "1" and os.environ.get("NETDISSECT_LABEL_CACHE"):
        os.environ["NETDISSECT_LABEL_CACHE"] += "-rank1"
    return TinyNet()


def run_files(out: Path, layers, with_summary: bool = True) -> dict:
    """The result files of a run directory as comparable values (summary.json without its timing)."""
    arrays = {}
    for layer in layers:
        arrays[f"{layer}/thresholds"] = np.load(out / layer / "thresholds.npy")
        arrays[f"{layer}/iou"] = np.load(out / layer / "iou.npz")["iou"]
        with np.load(out / layer / "topk.npz") as topk:
            arrays.update({f"{layer}/{key}": topk[key] for key in topk.files})
        arrays[f"{layer}/units.csv"] = (out / layer / "units.csv").read_text()
    if with_summary:
        summary = json.loads((out / "summary.json").read_text())
        summary.pop("seconds")
        for layer in summary.get("layers", {}).values():   # the formula search's own timing
            if isinstance(layer, dict) and isinstance(layer.get("formulas"), dict):
                layer["formulas"].pop("seconds", None)
        arrays["summary"] = summary
    return arrays


def assert_same_run(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key
