"""PASCAL VOC segmentation as Broden object labels (plus colors from the pixels).

Layout: ``VOCdevkit/VOC20xx/JPEGImages/X.jpg`` and ``SegmentationClass/X.png``, a palette
PNG whose indices are the classes (0 = background, 255 = void: both unlabeled). The 20
class names are VOC's own, unless the folder has a ``class_names.txt`` (one name per line,
background first, as labelme's VOC export writes it). SRC may be the VOCdevkit folder, a
VOC20xx folder, or any folder with JPEGImages and SegmentationClass.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from netdissect.data.ade20k import read_image
from netdissect.data.voc_example import VOC_CLASSES
from netdissect.data.writer import Annotation, SourceItem
from netdissect.errors import NetDissectError

SOURCE = "voc"
VOID = 255


def read_class_png(path: Path) -> np.ndarray:
    """Class indices of a VOC PNG (palette or grey); a colour image is refused."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise NetDissectError(f"{path}: mode {im.mode} is not a class map (VOC's are "
                                      "palette PNGs); use SegmentationClass, not a visualization")
            return np.asarray(im).astype(np.int64)
    except NetDissectError:
        raise
    except Exception as exc:
        raise NetDissectError(f"{path}: cannot be decoded ({exc}); download it again")


def load_voc(jpg: str, png: str, names: Dict[int, str]) -> Annotation:
    classes = read_class_png(Path(png))
    classes[classes == VOID] = 0
    bad = sorted(set(np.unique(classes).tolist()) - set(names) - {0})
    if bad:
        raise NetDissectError(f"{png}: class values {bad} are not among the {len(names)} classes; "
                              "add a class_names.txt beside JPEGImages")
    ann = Annotation(rgb=read_image(Path(jpg)))
    ann.pixel["object"] = [(classes, names)]
    return ann


def find_voc_root(src: Path) -> Path:
    if (src / "JPEGImages").is_dir() and (src / "SegmentationClass").is_dir():
        return src
    found = sorted(p.parent for p in src.glob("*/SegmentationClass")) + \
        sorted(p.parent for p in src.glob("*/*/SegmentationClass"))
    found = [p for p in found if (p / "JPEGImages").is_dir()]
    if not found:
        raise NetDissectError(f"{src}: no JPEGImages + SegmentationClass folders found; give the "
                              "VOCdevkit or VOC20xx folder")
    if len(found) > 1:
        raise NetDissectError(f"{src}: several VOC releases found ({', '.join(map(str, found))}); "
                              "give one of them")
    return found[0]


def class_names(root: Path) -> Dict[int, str]:
    path = root / "class_names.txt"
    if path.is_file():
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return {i: n.lower() for i, n in enumerate(lines) if i > 0}
    return {i: n for i, n in enumerate(VOC_CLASSES, start=1)}


def voc_items(src) -> Tuple[List[SourceItem], str]:
    root = find_voc_root(Path(src))
    names = class_names(root)
    items = []
    for png in sorted((root / "SegmentationClass").glob("*.png")):
        jpg = root / "JPEGImages" / f"{png.stem}.jpg"
        if not jpg.is_file():
            raise NetDissectError(f"{png}: its image {jpg} is missing; extract the whole archive")
        items.append(SourceItem(f"{SOURCE}/{png.stem}", load_voc, (str(jpg), str(png), names),
                                str(jpg)))
    if not items:
        raise NetDissectError(f"{root / 'SegmentationClass'}: no PNG annotations")
    return items, f"PASCAL VOC at {root}: {len(items)} segmented images, {len(names)} classes"
