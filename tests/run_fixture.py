"""A small, fake-but-consistent run directory for the report's tests.

`build_run(out)` writes a dataset (netdissect.data.synthetic's generator when available, else a tiny
Broden set of simple scenes written here: `use_synthetic=False`), then fakes a dissection over
it, with the files laid out as netdissect.runs writes them:

  * each unit of each fake layer "prefers" one concept: its native map is the concept's mask
    averaged down to the layer's resolution, times a gain, plus noise; a few units are noise;
  * thresholds are the run's quantile of each unit's activations, IoU is computed honestly
    (bilinear upsampling to the segmentation size, strict >, dataset-wide sums, the union
    counted only in images where the concept's category is labeled);
  * units.csv, iou.npz, thresholds.npy, topk.npz, summary.json and config.json follow the
    run-directory contract of docs/design.md.

So the labels, IoUs, strips and outlines the report shows agree with each other.
"""
from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from netdissect.data.labelpng import write_label_png

CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
PIXEL = ["color", "object", "part", "material"]

# number, name, category
TINY_LABELS: List[Tuple[int, str, str]] = [
    (1, "red", "color"), (2, "green", "color"), (3, "blue", "color"), (4, "yellow", "color"),
    (5, "ball", "object"), (6, "box", "object"), (7, "sky", "object"), (8, "floor", "object"),
    (9, "lid", "part"),
    (10, "wood", "material"), (11, "sand", "material"),
    (12, "beach", "scene"), (13, "room", "scene"),
    (14, "striped", "texture"), (15, "dotted", "texture"),
]
COLOR_RGB = {1: (205, 45, 40), 2: (50, 160, 70), 3: (45, 85, 200), 4: (235, 200, 40)}

DEFAULT_LAYERS: Tuple[Tuple[str, int, int], ...] = (("features.8", 20, 8), ("layer4.1", 32, 4))


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy + 0.5) / h - cy) ** 2 + ((xx + 0.5) / w - cx) ** 2 <= r * r


def _rect(h: int, w: int, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    y, x = (yy + 0.5) / h, (xx + 0.5) / w
    return (y >= y0) & (y < y1) & (x >= x0) & (x < x1)


def write_tiny_broden(root: Path, images: int = 24, size: int = 96, seed: int = 0) -> Path:
    """A Broden-format set of simple scenes (beach / room, a ball, a box with a lid, stripes or
    dots). Images size x size, segmentations size/2, every category present."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    S, s = size, size // 2
    rows = []
    freq = {n: 0 for n, _, _ in TINY_LABELS}
    cover = {n: 0.0 for n, _, _ in TINY_LABELS}
    for i in range(images):
        beach = i % 2 == 0
        horizon = rng.uniform(0.45, 0.62)
        tex = ["striped", "dotted", None][i % 3]
        ball = dict(cy=rng.uniform(0.55, 0.8), cx=rng.uniform(0.2, 0.8), r=rng.uniform(0.1, 0.2),
                    color=int(rng.choice([1, 2, 3, 4])))
        has_box = rng.random() < 0.6
        bx = rng.uniform(0.05, 0.55)
        bw = rng.uniform(0.22, 0.38)
        by = rng.uniform(0.3, 0.5)
        box = dict(y0=by, x0=bx, y1=min(by + bw, 0.95), x1=bx + bw,
                   color=int(rng.choice([c for c in (1, 2, 3, 4) if c != ball["color"]])))

        def scene(h: int, w: int):
            top = _rect(h, w, 0, 0, horizon, 1)
            bottom = ~top
            d = _disk(h, w, ball["cy"], ball["cx"], ball["r"])
            b = _rect(h, w, box["y0"], box["x0"], box["y1"], box["x1"]) if has_box else np.zeros((h, w), bool)
            lid = (_rect(h, w, box["y0"], box["x0"], box["y0"] + 0.25 * (box["y1"] - box["y0"]), box["x1"])
                   if has_box else np.zeros((h, w), bool))
            b_vis = b & ~d
            lid &= ~d
            d_vis = d
            return top & ~b_vis & ~d_vis, bottom & ~b_vis & ~d_vis, d_vis, b_vis, lid

        # the picture
        top, bottom, d, b, lid = scene(S, S)
        img = np.zeros((S, S, 3), np.float32)
        yy, xx = np.mgrid[0:S, 0:S]
        img[top] = (125, 170, 225) if beach else (205, 190, 165)
        img[bottom] = (220, 195, 145) if beach else (135, 92, 55)
        if not beach:   # wood grain
            img[bottom] *= (0.9 + 0.1 * np.sin(xx[bottom] * 0.9 + yy[bottom] * 0.15))[:, None]
        if tex == "striped":
            img[top] *= np.where(((yy[top] // max(2, S // 24)) % 2) == 0, 0.78, 1.0)[:, None]
        elif tex == "dotted":
            dots = (((yy % max(4, S // 10)) - S // 20) ** 2 + ((xx % max(4, S // 10)) - S // 20) ** 2) < (S / 60) ** 2 + 1
            img[top & dots] *= 0.65
        shade = 0.75 + 0.25 * np.clip(1 - (((yy + 0.5) / S - ball["cy"] + ball["r"] / 2) ** 2 +
                                           ((xx + 0.5) / S - ball["cx"] + ball["r"] / 2) ** 2) / (ball["r"] ** 2 * 2), 0, 1)
        img[d] = np.array(COLOR_RGB[ball["color"]], np.float32) * shade[d][:, None]
        img[b] = COLOR_RGB[box["color"]]
        img[lid] = np.array(COLOR_RGB[box["color"]], np.float32) * 0.7
        img += rng.normal(0, 4, img.shape)
        name = f"tiny/img_{i:03d}.jpg"
        (root / "images" / "tiny").mkdir(exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / name, quality=92)

        # segmentations at half size
        top, bottom, d, b, lid = scene(s, s)
        planes: Dict[str, np.ndarray] = {c: np.zeros((s, s), np.int32) for c in PIXEL}
        planes["object"][top] = 7
        planes["object"][bottom] = 8
        planes["object"][d] = 5
        planes["object"][b] = 6
        planes["color"][d] = ball["color"]
        planes["color"][b] = box["color"]
        if beach:
            planes["color"][top] = 3
            planes["material"][bottom] = 11
        else:
            planes["material"][bottom] = 10
            planes["material"][b] = 10
        planes["part"][lid] = 9
        stem = name.rsplit(".", 1)[0]
        masks = {}
        for c in PIXEL:
            if c == "part" and not has_box:
                masks[c] = ""
                continue
            fname = f"{stem}_{c}.png"
            write_label_png(root / "images" / fname, planes[c])
            masks[c] = fname
            for n in np.unique(planes[c]):
                if n:
                    freq[int(n)] += 1
                    cover[int(n)] += float((planes[c] == n).mean())
        scene_label = 12 if beach else 13
        freq[scene_label] += 1
        cover[scene_label] += 1.0
        tex_label = {"striped": 14, "dotted": 15}.get(tex or "", "")
        if tex_label:
            freq[tex_label] += 1
            cover[tex_label] += 1.0
        rows.append([name, "train", S, S, s, s, masks["color"], masks["object"], masks["part"],
                     masks["material"], scene_label, tex_label])

    _write_csv(root / "index.csv", ["image", "split", "ih", "iw", "sh", "sw"] + CATEGORIES, rows)
    _write_csv(root / "category.csv", ["name", "first", "last", "count", "frequency"],
               [[c, 0, 0, sum(1 for _, _, cc in TINY_LABELS if cc == c), 0] for c in CATEGORIES])
    _write_csv(root / "label.csv", ["number", "name", "category", "frequency", "coverage", "syns"],
               [[n, name, f"{cat}({freq[n]})", freq[n], round(cover[n] / max(freq[n], 1), 4), ""]
                for n, name, cat in TINY_LABELS])
    for c in CATEGORIES:
        _write_csv(root / f"c_{c}.csv", ["code", "number", "name", "frequency", "coverage"],
                   [[k + 1, n, name, freq[n], round(cover[n] / max(freq[n], 1), 4)]
                    for k, (n, name, _) in enumerate([t for t in TINY_LABELS if t[2] == c])])
    return root


def make_dataset(root: Path, images: int = 24, size: int = 96, seed: int = 0,
                 use_synthetic: Optional[bool] = None) -> Path:
    """netdissect.data.synthetic's dataset when the module exists (or use_synthetic=True), else
    the tiny set above."""
    if use_synthetic is not False:
        try:
            from netdissect.data.synthetic import generate_synthetic
        except ImportError:
            if use_synthetic:
                raise
        else:
            try:
                generate_synthetic(root, images=images, size=size, seed=seed, workers=1)
            except TypeError:          # an older signature without workers
                generate_synthetic(root, images=images, size=size, seed=seed)
            return Path(root)
    return write_tiny_broden(root, images=images, size=size, seed=seed)


# ----------------------------------------------------------------------------- fake dissection

@lru_cache(maxsize=None)
def _bilinear(src: int, dst: int) -> np.ndarray:
    m = np.zeros((dst, src), np.float64)
    pos = np.maximum((np.arange(dst) + 0.5) * src / dst - 0.5, 0)
    i0 = np.minimum(np.floor(pos).astype(int), src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    w1 = pos - i0
    w1[i0 == i1] = 0
    np.add.at(m, (np.arange(dst), i0), 1 - w1)
    np.add.at(m, (np.arange(dst), i1), w1)
    return m


@lru_cache(maxsize=None)
def _area(src: int, dst: int) -> np.ndarray:
    m = np.zeros((dst, src), np.float64)
    step = src / dst
    for j in range(dst):
        a, b = j * step, (j + 1) * step
        for i in range(int(np.floor(a)), min(int(np.ceil(b)), src)):
            m[j, i] = max(0.0, min(b, i + 1) - max(a, i)) / step
    return m


def build_run(out: Path, dataset: Optional[Path] = None, *, images: int = 24, size: int = 96,
              layers: Sequence[Tuple[str, int, int]] = DEFAULT_LAYERS, k: int = 6,
              quantile: float = 0.06, iou_threshold: float = 0.04, seed: int = 0,
              use_synthetic: Optional[bool] = None, extra_warnings: Sequence[str] = (),
              skipped: Sequence[dict] = ()) -> Path:
    """Write a run directory under `out` (and its dataset under out/../dataset unless given).

    layers: (name, units, native map size). quantile: the top fraction used for thresholds
    (larger than the method's 0.005 so that a 24-image set shows visible regions)."""
    from netdissect.data.broden import BrodenDataset
    from netdissect.engine.pipeline import LayerResult

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        dataset = out.parent / (out.name + "-dataset")
        if not (dataset / "index.csv").exists():
            make_dataset(dataset, images=images, size=size, seed=seed, use_synthetic=use_synthetic)
    ds = BrodenDataset(dataset)
    n = len(ds)
    rng = np.random.default_rng(seed + 1)
    concepts = list(ds.concepts)
    C = len(concepts)
    col_of = {c: j for j, c in enumerate(concepts)}
    cats = list(ds.categories)
    lab_cat = [ds.labels[c].category for c in concepts]
    cat_index = {c: i for i, c in enumerate(cats)}

    # ground truth per image: (C, sh, sw) bool, and which categories are labeled
    segs = []
    for i in range(n):
        seg = ds.load_segmentation(i)
        r = ds.records[i]
        m = np.zeros((C, r.sh, r.sw), bool)
        for plane in np.asarray(seg.pixel):
            for v in np.unique(plane):
                if int(v) in col_of:
                    m[col_of[int(v)]] |= plane == v
        for v in np.asarray(seg.image_labels):
            if int(v) in col_of:
                m[col_of[int(v)]] = True
        segs.append((m, np.asarray(seg.labeled, bool)))

    native_cache: Dict[int, np.ndarray] = {}

    def gt_native(i: int, col: int, h: int) -> np.ndarray:
        """The concept's mask averaged down to h x h (all concepts of image i at once, cached)."""
        key = i * 10000 + h
        if key not in native_cache:
            m = segs[i][0].astype(np.float64)
            sh, sw = m.shape[1:]
            native_cache[key] = np.einsum("ab,cbd,ed->cae", _area(sh, h), m, _area(sw, h))
        return native_cache[key][col]

    # concepts that occur in this (small) set: the units prefer those
    present = [j for j in range(C) if any(m[j].any() for m, _ in segs)]
    layer_names = [name for name, _, _ in layers]
    summary_layers = {}
    for li, (name, K, h) in enumerate(layers):
        prefs = []
        for u in range(K):
            if u % 5 == 4:
                prefs.append(None)                       # a noise unit
            else:
                prefs.append(present[(u * 7 + li * 3) % len(present)])
        acts = np.zeros((K, n, h, h), np.float32)
        for u, pref in enumerate(prefs):
            gain = rng.uniform(1.0, 3.0)
            for i in range(n):
                base = gt_native(i, pref, h) * gain if pref is not None else 0.0
                acts[u, i] = base + rng.normal(0, 0.35, (h, h))
        acts = np.maximum(acts, 0)                       # ReLU-like
        flat = acts.reshape(K, -1)
        thresholds = np.quantile(flat, 1 - quantile, axis=1).astype(np.float32)

        inter = np.zeros((K, C))
        unit_area = np.zeros((K, C))
        label_area = np.zeros(C)
        for i in range(n):
            m, labeled = segs[i]
            sh, sw = m.shape[1:]
            up = np.einsum("ab,kbc,dc->kad", _bilinear(h, sh), acts[:, i].astype(np.float64),
                           _bilinear(h, sw))
            active = up > thresholds[:, None, None]
            a_flat = active.reshape(K, -1).astype(np.float64)
            m_flat = m.reshape(C, -1).astype(np.float64)
            inter += a_flat @ m_flat.T
            lab_ok = np.array([labeled[cat_index[c]] for c in lab_cat], bool)
            unit_area += a_flat.sum(1)[:, None] * lab_ok[None, :]
            label_area += m_flat.sum(1)
        union = unit_area + label_area[None, :] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)

        folder = out / name
        folder.mkdir(exist_ok=True)
        np.save(folder / "thresholds.npy", thresholds)
        np.savez(folder / "iou.npz", iou=iou, label_numbers=np.array(concepts, np.int64),
                 labels=np.array([ds.labels[c].name for c in concepts]),
                 categories=np.array(lab_cat))
        best = iou.argmax(1)
        header = ["unit", "label", "category", "iou"]
        for c in cats:
            header += [f"{c}_label", f"{c}_iou"]
        rows = []
        for u in range(K):
            row = [u, ds.labels[concepts[best[u]]].name, lab_cat[best[u]], f"{iou[u, best[u]]:.6f}"]
            for c in cats:
                cols = [j for j in range(C) if lab_cat[j] == c]
                if cols:
                    j = max(cols, key=lambda jj: iou[u, jj])
                    row += [ds.labels[concepts[j]].name, f"{iou[u, j]:.6f}"]
                else:
                    row += ["", ""]
            rows.append(row)
        _write_csv(folder / "units.csv", header, rows)

        kk = min(k, n)
        peak = acts.reshape(K, n, -1).max(-1)
        order = np.argsort(-peak, axis=1, kind="stable")[:, :kk]
        np.savez(folder / "topk.npz", image_index=order.astype(np.int64),
                 score=np.take_along_axis(peak, order, 1).astype(np.float32),
                 maps=acts[np.arange(K)[:, None], order].astype(np.float16))

        # the layer's statistics as a real run writes them (LayerResult.summary())
        summary_layers[name] = LayerResult(
            name=name, thresholds=thresholds, iou=iou, concepts=np.array(concepts, np.int64),
            concept_names=[ds.labels[c].name for c in concepts], concept_categories=lab_cat,
            categories=cats, iou_threshold=iou_threshold, map_shape=(h, h)).summary()

    counts = ds.category_image_counts()
    warnings = [f"category '{c}' is labeled in only {v} of {n} images"
                for c, v in counts.items() if 0 < v < n * 0.75]
    warnings += list(extra_warnings)
    params = {"quantile": quantile, "iou_threshold": iou_threshold, "upsample": "bilinear",
              "top_k": k}
    for name in summary_layers:
        summary_layers[name]["directory"] = name
    (out / "summary.json").write_text(json.dumps({
        "layers": summary_layers, "categories": cats, "category_image_counts": counts,
        "images": n, "skipped_images": list(skipped), "warnings": warnings, "parameters": params,
    }, indent=2))
    digest = ds.index_digest()
    (out / "config.json").write_text(json.dumps({
        "manifest": {"model": {"spec": "fixture:fake-cnn", "weights": None},
                     "dataset": {"index_digest": digest}, "package_version": "0.1.0"},
        "config": dict(params, split=None, categories=None, limit=None, batch_size=8,
                       device="cpu"),
        "dataset": {"path": str(Path(dataset).resolve()), "index_digest": digest,
                    "split": None, "categories": None, "limit": None},
        "layers": layer_names,
    }, indent=2))
    return out


def nudge_to_threshold(run_dir: Path, layer: str, value: float = 0.040022) -> int:
    """Give one unit a best IoU just above the threshold (rounds to 0.0400 at 4 decimals) and
    rewrite units.csv and summary.json as a run would: the page must still call it a detector."""
    from netdissect.runs import load_layer, units_csv
    d = run_dir / layer
    z = dict(np.load(d / "iou.npz"))
    iou = z["iou"]
    best = iou.argmax(1)
    second = np.sort(iou, axis=1)[:, -2]
    unit = int(np.flatnonzero(second < 0.039)[0])
    iou[unit, best[unit]] = np.float32(value)
    np.savez(d / "iou.npz", **z)
    result = load_layer(run_dir, layer)
    (d / "units.csv").write_text(units_csv(result))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["layers"][layer] = dict(result.summary(), directory=layer)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return unit
