"""A class-per-folder image tree (DTD, or any) as image-level texture or scene labels.

``SRC/<class>/<image>`` (or ``SRC/images/<class>/<image>``, DTD's layout): every image gets
its folder's name as label; with ``--category scene`` the name gets Broden's scene suffix
``-s``. When DTD's joint annotation ``labels/labels_joint_anno.txt`` is present (``banded/
banded_0002.jpg banded striped``), its labels are used instead: several per image, the
folder's first, as Broden did. Colors come from the pixels as for every source.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from netdissect.data.ade20k import SCENE_SUFFIX, read_image
from netdissect.data.writer import Annotation, SourceItem
from netdissect.errors import NetDissectError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CATEGORIES = ("texture", "scene")


def label_name(folder: str, category: str) -> str:
    name = folder.strip().lower()
    return name + SCENE_SUFFIX if category == "scene" else name


def load_labeled_image(path: str, category: str, names: List[str]) -> Annotation:
    ann = Annotation(rgb=read_image(Path(path)))
    ann.image[category] = list(names)
    return ann


def _joint_labels(root: Path) -> Optional[Dict[str, List[str]]]:
    path = root / "labels" / "labels_joint_anno.txt"
    if not path.is_file():
        return None
    out: Dict[str, List[str]] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise NetDissectError(f"{path}, line {line_no}: expected 'path label [label ...]'")
        out[fields[0]] = fields[1:]
    return out


def folder_items(src, category: str = "texture") -> Tuple[List[SourceItem], str]:
    if category not in CATEGORIES:
        raise NetDissectError(f"--category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    root = Path(src)
    if not root.is_dir():
        raise NetDissectError(f"{root}: not a directory")
    tree = root / "images" if (root / "images").is_dir() else root
    joint = _joint_labels(root)
    source = root.name.lower() or "folder"
    items = []
    classes = set()
    for folder in sorted(p for p in tree.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            rel = path.relative_to(tree).as_posix()
            raw = [folder.name]
            if joint is not None and rel in joint:
                raw = [folder.name] + [n for n in joint[rel] if n != folder.name]
            names = list(dict.fromkeys(label_name(n, category) for n in raw))
            classes.update(names)
            key = f"{source}/{rel.rsplit('.', 1)[0]}"
            items.append(SourceItem(key, load_labeled_image, (str(path), category, names),
                                    str(path)))
    if not items:
        raise NetDissectError(f"{tree}: no images in class folders ({tree}/<class>/<image>)")
    how = " (DTD joint annotation)" if joint is not None else ""
    return items, (f"{len(items)} images in {len(classes)} {category} classes under {tree}{how}")
