"""Pascal-Context (459 classes on PASCAL VOC 2010 images) as Broden object labels.

Layout: ``labels.txt`` (``1: accordion`` per line) and ``trainval/X.mat``, a MATLAB file
whose ``LabelMap`` gives the class of each pixel (0 = unlabeled), read with
scipy.io.loadmat. The photographs are VOC 2010's ``JPEGImages/X.jpg``: ``--images DIR``, or
found under SRC (``JPEGImages``, ``VOC2010/JPEGImages``, ``VOCdevkit/VOC2010/JPEGImages``)
or beside it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from netdissect.data.ade20k import read_image
from netdissect.data.writer import Annotation, SourceItem
from netdissect.errors import NetDissectError

SOURCE = "pascal"  # Broden's folder for its PASCAL images: same paths, same hash split


def read_label_map(path: Path) -> np.ndarray:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise NetDissectError("Pascal-Context's .mat files need scipy: pip install scipy")
    try:
        mat = loadmat(str(path))
    except Exception as exc:
        raise NetDissectError(f"{path}: cannot be read as a MATLAB file ({exc}); download it again")
    if "LabelMap" not in mat:
        raise NetDissectError(f"{path}: has no LabelMap (keys: "
                              f"{', '.join(k for k in mat if not k.startswith('__'))})")
    return np.asarray(mat["LabelMap"]).astype(np.int64)


def load_context(jpg: str, mat: str, names: Dict[int, str]) -> Annotation:
    classes = read_label_map(Path(mat))
    bad = sorted(set(np.unique(classes).tolist()) - set(names) - {0})
    if bad:
        raise NetDissectError(f"{mat}: class values {bad[:10]} are not in labels.txt")
    ann = Annotation(rgb=read_image(Path(jpg)))
    ann.pixel["object"] = [(classes, names)]
    return ann


def read_labels(path: Path) -> Dict[int, str]:
    names: Dict[int, str] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(.+?)\s*", line)
        if not m:
            raise NetDissectError(f"{path}, line {line_no}: expected 'number: name', got {line!r}")
        names[int(m.group(1))] = m.group(2).lower()
    return names


def _images_dir(root: Path, images: Optional[str]) -> Path:
    if images:
        path = Path(images)
        if not path.is_dir():
            raise NetDissectError(f"--images {path}: not a directory")
        return path
    for cand in (root / "JPEGImages", root / "VOC2010" / "JPEGImages",
                 root / "VOCdevkit" / "VOC2010" / "JPEGImages",
                 root.parent / "VOC2010" / "JPEGImages",
                 root.parent / "VOCdevkit" / "VOC2010" / "JPEGImages"):
        if cand.is_dir():
            return cand
    raise NetDissectError(f"{root}: VOC 2010's JPEGImages not found; pass --images DIR")


def pascal_context_items(src, images: Optional[str] = None) -> Tuple[List[SourceItem], str]:
    root = Path(src)
    labels = root / "labels.txt"
    if not labels.is_file():
        raise NetDissectError(f"{root}: no labels.txt; give the folder of Pascal-Context's "
                              "trainval.tar.gz (labels.txt, trainval/)")
    names = read_labels(labels)
    jpegs = _images_dir(root, images)
    mats = sorted((root / "trainval").glob("*.mat")) if (root / "trainval").is_dir() \
        else sorted(root.glob("*.mat"))
    items = []
    for mat in mats:
        jpg = jpegs / f"{mat.stem}.jpg"
        if not jpg.is_file():
            raise NetDissectError(f"{mat}: its image {jpg} is missing; is --images VOC 2010's "
                                  "JPEGImages?")
        items.append(SourceItem(f"{SOURCE}/{mat.stem}", load_context, (str(jpg), str(mat), names),
                                str(jpg)))
    if not items:
        raise NetDissectError(f"{root}: no .mat label maps in trainval/")
    return items, f"Pascal-Context at {root}: {len(items)} images, {len(names)} classes"
