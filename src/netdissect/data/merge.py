"""Several Broden-format datasets as one: names unified, rare labels dropped, renumbered.

Every image is copied as it is (same file, same sizes), its masks rewritten with the new
numbers. Names are unified before counting: lowercased, stripped, then mapped through the
synonym table (:data:`SYNONYMS`, which joins PASCAL VOC's and COCO's spellings to the names
ADE20K/Broden use, plus ``--synonyms FILE``: CSV lines ``name,canonical``). Labels that then
share a name are one label. A name is kept when it has at least ``min_images`` images (Broden:
10), counted over all categories; numbering, statistics and the split follow
:mod:`.writer` (the same rules as a single-source build). An image path that two inputs
share gets the later input's folder name as prefix.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from netdissect.data.labelpng import read_label_png
from netdissect.data.writer import Annotation, SourceItem
from netdissect.errors import NetDissectError

#: spelling -> the name used by ADE20K/Broden (first WordNet synonym).
SYNONYMS: Dict[str, str] = {
    "aeroplane": "airplane", "motorcycle": "motorbike", "diningtable": "table",
    "dining table": "table", "pottedplant": "plant", "potted plant": "plant",
    "tvmonitor": "television receiver", "tv": "television receiver", "couch": "sofa",
    "cell phone": "cellular telephone",
}


def read_synonyms(path: Optional[str]) -> Dict[str, str]:
    """The built-in table updated with the user's CSV file (``name,canonical`` per line)."""
    table = dict(SYNONYMS)
    if not path:
        return table
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise NetDissectError(f"{path}, line {line_no}: expected 'name,canonical'")
            table[row[0].strip().lower()] = row[1].strip().lower()
    return table


class NameUnifier:
    """Picklable name normalizer: lowercase, collapse spaces, synonym table."""

    def __init__(self, table: Dict[str, str]):
        self.table = dict(table)

    def __call__(self, name: str) -> str:
        key = " ".join(name.lower().split())
        return self.table.get(key, key)


def load_broden_image(root: str, image: str, size: Tuple[int, int], seg: Tuple[int, int],
                      masks: Dict[str, Tuple[str, ...]], image_labels: Dict[str, Tuple[int, ...]],
                      names: Dict[int, str], syns: Dict[str, List[str]]) -> Annotation:
    base = Path(root) / "images"
    try:
        data = (base / image).read_bytes()
    except OSError as exc:
        raise NetDissectError(f"{base / image}: cannot be read ({exc}); check the dataset with "
                              "`netdissect check`")
    ann = Annotation(jpeg=data, suffix=Path(image).suffix or ".jpg", size=size, seg=seg,
                     syns=syns)
    for cat, files in masks.items():
        if files:
            ann.pixel[cat] = [(read_label_png(base / f), names) for f in files]
    for cat, numbers in image_labels.items():
        if numbers:
            ann.image[cat] = [names[n] for n in numbers if n in names]
    return ann


def _read_syns(root: Path) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    with open(root / "label.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            syns = [s for s in (row.get("syns") or "").split(";") if s]
            if syns:
                out[row["name"]] = syns
    return out


def merge_items(inputs: Sequence[str]) -> Tuple[List[SourceItem], str]:
    from netdissect.data.broden import BrodenDataset
    items: List[SourceItem] = []
    used: set = set()
    lines = []
    roots = [Path(p).absolute() for p in inputs]
    if len(set(roots)) != len(roots):
        raise NetDissectError("the same dataset is given twice")
    for root in roots:
        ds = BrodenDataset(root)
        names = {lab.number: lab.name for lab in ds.labels if lab.number and lab.name != "-"}
        syns = _read_syns(root)
        for rec in ds.records:
            key = rec.image.rsplit(".", 1)[0]
            if key in used:
                key = f"{root.name}/{key}"
            if key in used:
                raise NetDissectError(f"{root}: image {rec.image} collides with another input's "
                                      "even with a prefix; rename the input folder")
            used.add(key)
            items.append(SourceItem(
                key, load_broden_image,
                (str(root), rec.image, (rec.ih, rec.iw), (rec.sh, rec.sw), dict(rec.masks),
                 dict(rec.image_labels), names, syns),
                f"{root}/images/{rec.image}"))
        lines.append(f"{root}: {len(ds.records)} images, {len(names)} labels")
    return items, "\n".join(lines)
