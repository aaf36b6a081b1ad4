"""COCO panoptic segmentation (things and stuff) as Broden object labels.

Layout: ``annotations/panoptic_<split>.json`` with its PNG folder
``annotations/panoptic_<split>/`` (unzip ``panoptic_<split>.zip`` first) and the photographs in
``<split>/`` (``val2017/``). A PNG pixel's segment id is R + 256 G + 65536 B (0 = void,
unlabeled); the JSON's ``segments_info`` maps it to a category, whose name becomes the label.
COCO's stuff names carry merge suffixes (``wall-other-merged``): ``-merged`` and ``-other``
are removed (``wall``), so names meet those of other sources.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from netdissect.data.ade20k import _read_rgb, read_image
from netdissect.data.writer import Annotation, SourceItem
from netdissect.errors import NetDissectError

SOURCE = "coco"


def coco_name(raw: str) -> str:
    name = str(raw).strip().lower()
    while True:
        stripped = re.sub(r"-(merged|other|stuff)$", "", name)
        if stripped == name:
            return name
        name = stripped


def load_panoptic(jpg: str, png: str, segments: Dict[int, str]) -> Annotation:
    rgb = _read_rgb(Path(png)).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    unknown = sorted(set(np.unique(ids).tolist()) - set(segments) - {0})
    if unknown:
        raise NetDissectError(f"{png}: segment ids {unknown[:10]} are not in the JSON's "
                              "segments_info of this image; is the JSON from the same release?")
    ann = Annotation(rgb=read_image(Path(jpg)))
    ann.pixel["object"] = [(ids, segments)]
    return ann


def _find_jsons(root: Path) -> List[Path]:
    found = sorted(root.glob("panoptic_*.json")) + sorted(root.glob("annotations/panoptic_*.json"))
    return found


def coco_items(src, images: Optional[str] = None) -> Tuple[List[SourceItem], str]:
    root = Path(src)
    jsons = _find_jsons(root)
    if not jsons:
        raise NetDissectError(f"{root}: no panoptic_*.json (in it or in annotations/); give the "
                              "COCO folder")
    items = []
    parts = []
    for jpath in jsons:
        split = jpath.stem[len("panoptic_"):]
        pngs = jpath.with_suffix("")
        if not pngs.is_dir():
            hint = " (unzip " + pngs.name + ".zip first)" if pngs.with_suffix(".zip").is_file() else ""
            raise NetDissectError(f"{jpath}: its PNG folder {pngs} is missing{hint}")
        imgdir = Path(images) if images else next(
            (c for c in (root / split, root / "images" / split, root.parent / split) if c.is_dir()),
            None)
        if imgdir is None or not imgdir.is_dir():
            raise NetDissectError(f"{jpath}: the images folder {root / split} is missing; "
                                  "pass --images DIR")
        try:
            data = json.loads(jpath.read_text(encoding="utf-8"))
            categories = {int(c["id"]): coco_name(c["name"]) for c in data["categories"]}
            image_files = {int(im["id"]): im["file_name"] for im in data["images"]}
            annotations = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NetDissectError(f"{jpath}: not a COCO panoptic annotation file ({exc})")
        for ann in annotations:
            try:
                segments = {int(s["id"]): categories[int(s["category_id"])]
                            for s in ann["segments_info"]}
                jpg = imgdir / image_files[int(ann["image_id"])]
                png = pngs / ann["file_name"]
            except (KeyError, TypeError, ValueError) as exc:
                raise NetDissectError(f"{jpath}: annotation of image {ann.get('image_id')} refers "
                                      f"to an unknown image or category ({exc})")
            if not jpg.is_file():
                raise NetDissectError(f"{png}: its image {jpg} is missing")
            items.append(SourceItem(f"{SOURCE}/{jpg.stem}", load_panoptic,
                                    (str(jpg), str(png), segments), str(jpg)))
        parts.append(f"{jpath.name}: {len(annotations)} images")
    return items, f"COCO panoptic at {root}: " + ", ".join(parts)
