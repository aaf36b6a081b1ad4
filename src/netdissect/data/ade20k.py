"""ADE20K as Broden's object, part and scene categories (plus colors from the pixels).

Two releases are understood:

* the 2021 full release (``ADE20K_2021_17_01``): per image ``X.jpg``, ``X_seg.png`` (object
  class = (R // 10) * 256 + G, B = instances), ``X_parts_N.png`` (parts of level N, same
  coding) and ``X.json``. Class c is ``objectnames[c - 1]`` of ``index_ade20k.pkl``, which
  also gives every image's folder and scene. Without the pickle (only some folders were
  downloaded), the names come from each image's JSON (``name`` of the objects whose
  ``name_ndx`` is c) and the scene from its ``scene`` list; classes without a name there
  become unlabeled. ADE names are WordNet-like lists (``car, auto, automobile``): the first
  is the label, the rest go to label.csv's syns column, as in Broden.
* ``ADEChallengeData2016`` (150 classes): ``annotations/*/X.png`` (class per pixel, 0 =
  other), names from ``objectInfo150.csv`` (``building;edifice``), scenes from
  ``sceneCategories.txt``. No parts.

Scenes get Broden's suffix ``-s`` (``street-s``); see :func:`scene_name`. Names starting
with '~' mean unlabeled.
"""
from __future__ import annotations

import csv
import json
import pickle
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from netdissect.data.writer import Annotation, SourceItem
from netdissect.errors import NetDissectError

SOURCE = "ade20k"
SCENE_SUFFIX = "-s"
INDEX_FILE = "index_ade20k.pkl"


def split_names(text: str, sep: str = ",") -> Tuple[str, List[str]]:
    """'car, auto, automobile' -> ('car', ['auto', 'automobile']) (lowercased)."""
    parts = [p.strip().lower() for p in re.split(rf"{re.escape(sep)}\s*", str(text))]
    parts = [p for p in parts if p and p != "-"]
    if not parts:
        return "", []
    return parts[0], parts[1:]


def scene_name(raw) -> str:
    """A scene value -> Broden scene label name ('' when unlabeled).

    The index's strings are normalized as Broden did (' - ' -> '-', '/' -> '-', so
    ``parking_garage/indoor`` -> ``parking_garage-indoor-s``, a leading '/' dropped). An
    image JSON's list (``['outdoor', 'urban', 'street']``: indoor/outdoor, group, scene) is
    read from its third level on, joined the same way.
    """
    if isinstance(raw, (list, tuple, np.ndarray)):
        parts = [str(p) for p in raw]
        raw = "/".join(parts[2:] if len(parts) > 2 else parts[-1:])
    text = str(raw).strip().replace(" - ", "-").strip("/").replace("/", "-").lower()
    if not text or text.startswith("~") or text == "-":
        return ""
    return text + SCENE_SUFFIX


def decode_class_png(path: Path) -> np.ndarray:
    """ADE's class coding of an RGB PNG: (R // 10) * 256 + G."""
    rgb = _read_rgb(path)
    return (rgb[..., 0].astype(np.int64) // 10) * 256 + rgb[..., 1].astype(np.int64)


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise NetDissectError(f"{path}: missing; download the whole folder again")
    except Exception as exc:  # PIL raises many types for corrupt data
        raise NetDissectError(f"{path}: cannot be decoded ({exc.__class__.__name__}: {exc}); "
                              "download it again")


def read_image(path: Path) -> np.ndarray:
    return _read_rgb(Path(path))


# ---------------------------------------------------------------------------------------------
# The index pickle, read without running arbitrary code

class _IndexUnpickler(pickle.Unpickler):
    """Only builtins and numpy's array reconstruction: the pickle is data, never code."""
    _ALLOWED = {(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
                for name in ("_reconstruct", "scalar")} | \
        {(core, "_frombuffer") for core in ("numpy.core.numeric", "numpy._core.numeric")} | \
        {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
         ("builtins", "slice"), ("builtins", "set"), ("builtins", "frozenset"),
         ("builtins", "bytearray"), ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an ADE20K index")


def load_index(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            index = _IndexUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise NetDissectError(f"{path}: cannot read the ADE20K index ({exc}); download "
                              "index_ade20k.pkl again")
    need = ("filename", "folder", "objectnames")
    if not isinstance(index, dict) or any(k not in index for k in need):
        raise NetDissectError(f"{path}: not an ADE20K 2021 index (needs keys {', '.join(need)})")
    if len(index["filename"]) != len(index["folder"]):
        raise NetDissectError(f"{path}: filename and folder lists differ in length")
    return index


# ---------------------------------------------------------------------------------------------
# Loaders (top-level functions: they run in worker processes)

def _class_levels(jpg: Path) -> Tuple[np.ndarray, List[np.ndarray]]:
    stem = jpg.with_suffix("")
    objects = decode_class_png(Path(f"{stem}_seg.png"))
    parts = []
    level = 1
    while Path(f"{stem}_parts_{level}.png").is_file():
        parts.append(decode_class_png(Path(f"{stem}_parts_{level}.png")))
        level += 1
    return objects, parts


def load_full_with_index(jpg: str, scene: str, names: Dict[int, str],
                         syns: Dict[str, List[str]]) -> Annotation:
    objects, parts = _class_levels(Path(jpg))
    ann = Annotation(rgb=read_image(Path(jpg)), syns=syns)
    ann.pixel["object"] = [(objects, names)]
    if parts:
        ann.pixel["part"] = [(p, names) for p in parts]
    if scene:
        ann.image["scene"] = [scene]
    return ann


def load_full_with_json(jpg: str) -> Annotation:
    path = Path(jpg)
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8", errors="replace"))["annotation"]
        objects_meta = meta.get("object", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NetDissectError(f"{meta_path}: cannot read the annotation ({exc}); download it again")
    names: Dict[int, str] = {}
    syns: Dict[str, List[str]] = {}
    for obj in objects_meta:
        try:
            code = int(obj["name_ndx"])
        except (KeyError, TypeError, ValueError):
            continue
        name, alts = split_names(obj.get("name", ""))
        if name:
            names[code] = name
            syns.setdefault(name, alts)
    objects, parts = _class_levels(path)
    top = max([int(objects.max(initial=0))] + [int(p.max(initial=0)) for p in parts])
    unnamed = np.ones(top + 1, dtype=bool)         # classes without a name here: unlabeled
    unnamed[[c for c in names if c <= top]] = False
    unnamed[0] = False
    if unnamed.any():
        objects[unnamed[objects]] = 0
        for p in parts:
            p[unnamed[p]] = 0
    ann = Annotation(rgb=read_image(path), syns=syns)
    ann.pixel["object"] = [(objects, names)]
    if parts:
        ann.pixel["part"] = [(p, names) for p in parts]
    scene = scene_name(meta.get("scene", ""))
    if scene:
        ann.image["scene"] = [scene]
    return ann


def load_challenge(jpg: str, png: str, scene: str, names: Dict[int, str],
                   syns: Dict[str, List[str]]) -> Annotation:
    try:
        with Image.open(png) as im:
            classes = np.asarray(im).astype(np.int64)
    except FileNotFoundError:
        raise NetDissectError(f"{png}: missing annotation of {jpg}")
    except Exception as exc:
        raise NetDissectError(f"{png}: cannot be decoded ({exc}); download it again")
    if classes.ndim != 2:
        raise NetDissectError(f"{png}: expected a one-channel class map, got shape {classes.shape}")
    ann = Annotation(rgb=read_image(Path(jpg)), syns=syns)
    ann.pixel["object"] = [(classes, names)]
    if scene:
        ann.image["scene"] = [scene]
    return ann


# ---------------------------------------------------------------------------------------------
# Finding the images

def _find(root: Path, name: str, depth: int = 3) -> Optional[Path]:
    for d in range(depth + 1):
        hits = sorted(root.glob("/".join(["*"] * d + [name])))
        if hits:
            return hits[0]
    return None


def _resolve_folder(root: Path, folder: str) -> List[Path]:
    parts = Path(str(folder).replace("\\", "/")).parts
    bases = [root, root.parent]
    return [b.joinpath(*parts[k:]) for k in range(len(parts)) for b in bases]


def items_full_index(root: Path, index_path: Path) -> Tuple[List[SourceItem], int]:
    """Items of the 2021 release listed in the index; images not downloaded are skipped
    (their count is returned)."""
    index = load_index(index_path)
    names: Dict[int, str] = {}
    syns: Dict[str, List[str]] = {}
    for i, raw in enumerate(index["objectnames"], start=1):
        name, alts = split_names(raw)
        if name:
            names[i] = name
            syns.setdefault(name, [])
            syns[name] += [a for a in alts if a not in syns[name]]
    scenes = index.get("scene", [""] * len(index["filename"]))
    items, missing = [], 0
    folder_cache: Dict[str, Optional[Path]] = {}
    for i, (fname, folder) in enumerate(zip(index["filename"], index["folder"])):
        folder = str(folder)
        if folder not in folder_cache:
            folder_cache[folder] = next((c for c in _resolve_folder(root, folder) if c.is_dir()),
                                        None)
        base = folder_cache[folder]
        jpg = base / str(fname) if base is not None else None
        if jpg is None or not jpg.is_file():
            missing += 1
            continue
        items.append(SourceItem(f"{SOURCE}/{jpg.stem}", load_full_with_index,
                                (str(jpg), scene_name(scenes[i]), names, syns), str(jpg)))
    return items, missing


def items_full_json(root: Path) -> List[SourceItem]:
    items = []
    for seg in sorted(root.rglob("*_seg.png")):
        jpg = seg.with_name(seg.name[: -len("_seg.png")] + ".jpg")
        if jpg.is_file() and jpg.with_suffix(".json").is_file():
            items.append(SourceItem(f"{SOURCE}/{jpg.stem}", load_full_with_json, (str(jpg),),
                                    str(jpg)))
    return items


def items_challenge(root: Path) -> List[SourceItem]:
    info = root / "objectInfo150.csv"
    names: Dict[int, str] = {}
    syns: Dict[str, List[str]] = {}
    with open(info, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "Idx" not in reader.fieldnames or "Name" not in reader.fieldnames:
            raise NetDissectError(f"{info}: expected the header Idx,Ratio,Train,Val,Name")
        for line, row in enumerate(reader, start=2):
            try:
                code = int(row["Idx"])
            except (TypeError, ValueError):
                raise NetDissectError(f"{info}, line {line}: Idx {row['Idx']!r} is not a number")
            name, alts = split_names(row["Name"], sep=";")
            names[code] = name
            syns[name] = alts
    scenes: Dict[str, str] = {}
    scene_file = root / "sceneCategories.txt"
    if scene_file.is_file():
        for line in scene_file.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) >= 2:
                scenes[fields[0]] = scene_name(fields[1])
    items = []
    for png in sorted((root / "annotations").rglob("*.png")):
        rel = png.relative_to(root / "annotations").with_suffix(".jpg")
        jpg = root / "images" / rel
        if not jpg.is_file():
            raise NetDissectError(f"{png}: its image {jpg} is missing; extract the whole "
                                  "ADEChallengeData2016 archive")
        items.append(SourceItem(f"{SOURCE}/{png.stem}", load_challenge,
                                (str(jpg), str(png), scenes.get(png.stem, ""), names, syns),
                                str(jpg)))
    return items


def ade20k_items(src, index: Optional[str] = None) -> Tuple[List[SourceItem], str]:
    """The items of an ADE20K download and a line saying what was found."""
    root = Path(src)
    if not root.is_dir():
        raise NetDissectError(f"{root}: not a directory; give the folder where ADE20K was extracted")
    info = _find(root, "objectInfo150.csv", depth=1)
    if index is None and info is not None:
        items = items_challenge(info.parent)
        return items, f"ADEChallengeData2016 at {info.parent}: {len(items)} images"
    index_path = Path(index) if index else _find(root, INDEX_FILE, depth=2)
    if index_path is not None:
        items, missing = items_full_index(root, index_path)
        text = f"ADE20K 2021 index {index_path}: {len(items)} images"
        if missing:
            text += f" ({missing} listed images are not downloaded and are skipped)"
        if not items:
            raise NetDissectError(f"{index_path}: none of its images is under {root}; give the "
                                  "folder that contains ADE20K_2021_17_01")
        return items, text
    items = items_full_json(root)
    if not items:
        raise NetDissectError(f"{root}: no ADE20K images found (neither {INDEX_FILE}, nor "
                              "objectInfo150.csv, nor X.jpg with X_seg.png and X.json)")
    return items, f"ADE20K 2021 images with their JSON (no {INDEX_FILE}): {len(items)} images"
