"""What a strip draws is what the dissection scored, in rf mode too.

A small model with unpadded convolutions (so receptive-field placement differs from bilinear
stretching) whose activations are multiples of 1/8 (so the float16 top-k maps the report reads
hold exactly the values that were scored), dissected with --upsample rf, top-k = every image:
the unit regions read back from the report's overlay sheets give, with the dataset's labels,
exactly the IoU matrix the engine saved. Bilinear regions would not."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from engine_data import make_dataset
from PIL import Image

import netdissect
from netdissect.data.broden import BrodenDataset
from netdissect.report import render_report
from netdissect.report import tiles as tiles_mod


class Eighths(torch.nn.Module):
    """Rounds to multiples of 1/8 (exact in float16); gradients pass straight through, so the
    receptive field can still be measured by back-propagation."""

    def forward(self, x):
        return x + (torch.round(x * 8) / 8 - x).detach()


def unpadded_net() -> torch.nn.Module:
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 5), torch.nn.ReLU(), Eighths(),
                               torch.nn.Conv2d(6, 7, 3, stride=2), torch.nn.ReLU(), Eighths()).eval()


def drawn_regions(out: Path, layer: str):
    """unit -> [(image, bool (sh, sw) region)] read back from the report's overlay sheets."""
    page = (out / "report" / f"layer-{layer}.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script id="nd-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    t = data["tiles"]
    sheets = [np.asarray(Image.open(out / "report" / s)) for s in t["sheets"]]
    regions = {}
    for u in data["units"]:
        sheet, r = sheets[u["u"] // t["per"]], u["u"] % t["per"]
        regions[u["u"]] = [(image, np.isin(sheet[r * t["sh"]:(r + 1) * t["sh"], j * t["sw"]:(j + 1) * t["sw"]],
                                           tiles_mod.IN_REGION)) for image, j, *_ in u["x"]]
    return regions


def iou_from_regions(regions, ds: BrodenDataset, concepts, n_units: int) -> np.ndarray:
    """The method's IoU, counted by hand from per-image unit regions."""
    cats = list(ds.categories)
    cat_of = [cats.index(ds.labels[c].category) for c in concepts]
    inter = np.zeros((n_units, len(concepts)), np.int64)
    active = np.zeros((n_units, len(cats)), np.int64)
    label_pixels = np.zeros(len(concepts), np.int64)
    masks = {}
    for x in range(len(ds)):
        seg = ds.load_segmentation(x)
        size = (ds.records[x].sh, ds.records[x].sw)
        ms = []
        for c in concepts:
            m = np.ones(size, bool) if c in seg.image_labels else (np.asarray(seg.pixel) == c).any(axis=0)
            ms.append(m)
            label_pixels[len(ms) - 1] += m.sum()
        masks[x] = (ms, np.asarray(seg.labeled))
    for u in range(n_units):
        for image, region in regions[u]:
            ms, labeled = masks[image]
            active[u, labeled] += region.sum()
            for ci, m in enumerate(ms):
                inter[u, ci] += (region & m).sum()
    union = active[:, cat_of] + label_pixels[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def test_rf_strip_regions_are_the_scored_masks(tmp_path: Path):
    data = make_dataset(tmp_path / "data", n_images=8, size=32, seed=5)
    model = unpadded_net()
    out = tmp_path / "run"
    netdissect.dissect(model, ["5"], data, out=out, upsample="rf", quantile=0.05, top_k=8,
                       batch_size=4, workers=0, device="cpu", progress=False, min_category_images=0)
    summary = json.loads((out / "summary.json").read_text())
    field = summary["layers"]["5"]["receptive_field"]
    assert field["offset"] != [0.0, 0.0] or field["stride"] != [1.0, 1.0]
    render_report(out, top_k=8, workers=1)

    ds = BrodenDataset(data)
    saved = np.load(out / "5" / "iou.npz")
    regions = drawn_regions(out, "5")
    assert all(len(v) == len(ds) for v in regions.values()), "every image is in every unit's top-k"
    assert any(r.any() for v in regions.values() for _, r in v)
    iou = iou_from_regions(regions, ds, list(saved["label_numbers"]), len(regions))
    np.testing.assert_allclose(iou, saved["iou"], rtol=0, atol=1e-6)

    # the check can fail: bilinear stretching of the same maps draws other regions
    topk = np.load(out / "5" / "topk.npz")
    thresholds = np.load(out / "5" / "thresholds.npy")
    sh, sw = ds.records[0].sh, ds.records[0].sw
    differs = 0
    for u, tiles in regions.items():
        for j, (image, region) in enumerate(tiles):
            amap = torch.from_numpy(topk["maps"][u, j].astype(np.float32))[None, None]
            stretched = (F.interpolate(amap, size=(sh, sw), mode="bilinear", align_corners=False)[0, 0]
                         > float(thresholds[u])).numpy()
            differs += int((stretched != region).sum())
    assert differs > 0
