"""Tiny fixtures in the exact on-disk formats of the sources the `data` builders read.

Every image is H x W = 32 x 48 (not square, so the builder's no-crop resize shows). Regions
are 8-pixel aligned and the JPEGs are quality 100, 4:4:4, so the decoded pixels keep their
color name: "left" is columns 0..23, "right" 24..47, "top" rows 0..15, "bottom" 16..31.
With --size 16 the masks are 8 x 8 and nearest sampling reads source rows 4i + 2 and
columns 6j + 3: left = mask columns 0..3, right 4..7, top = mask rows 0..3, bottom 4..7.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

H, W = 32, 48
RED, BLUE, WHITE, GREEN = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 255, 0)


def region(name: str) -> np.ndarray:
    """'all', 'left', 'top', 'bottom-right', ... as an (H, W) bool mask."""
    rows = {"top": slice(0, 16), "bottom": slice(16, 32)}
    cols = {"left": slice(0, 24), "right": slice(24, 48)}
    r, c = slice(None), slice(None)
    for part in name.split("-"):
        if part in rows:
            r = rows[part]
        elif part in cols:
            c = cols[part]
        elif part != "all":
            raise ValueError(f"unknown region {name!r}")
    m = np.zeros((H, W), dtype=bool)
    m[r, c] = True
    return m


def class_map(**regions: int) -> np.ndarray:
    """class_map(left=1, right=2) -> (H, W) int map; keys are region names ('_' for '-')."""
    out = np.zeros((H, W), dtype=np.int64)
    for name, value in regions.items():
        out[region(name.replace("_", "-"))] = value
    return out


def picture(**regions) -> np.ndarray:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    for name, color in regions.items():
        rgb[region(name.replace("_", "-"))] = color
    return rgb


def save_jpeg(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=100, subsampling=0)
    return path


def ade_class_png(path: Path, classes: np.ndarray, instances: Optional[np.ndarray] = None) -> None:
    """ADE's coding: class = (R // 10) * 256 + G; R's last digit and B carry instance data."""
    rgb = np.zeros(classes.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = (classes // 256) * 10 + np.where(classes > 0, 3, 0)
    rgb[..., 1] = classes % 256
    rgb[..., 2] = 0 if instances is None else instances
    Image.fromarray(rgb).save(path)


# ---------------------------------------------------------------------------------------------
# ADE20K 2021 full release

ADE_NAMES = {1: "wall", 2: "car, auto, automobile", 6: "door", 300: "window, windowpane"}
ADE_FOLDER = "ADE20K_2021_17_01/images/ADE/training/urban/street"


def _ade_objectnames():
    return [ADE_NAMES.get(i, f"thing {i}") for i in range(1, 301)]


def write_ade20k_2021(root: Path, with_index: bool = True) -> Path:
    """Three downloaded images (one without any label) and one listed but not downloaded.

    img 1 (street): objects left wall, right car; parts level 1 bottom-right window (class
    300, so R > 10), level 2 top-right door; pixels left red, right blue.
    img 2 (street): objects left car, right window; all white.
    img 3 (kitchen): no class anywhere, scene unlabeled: dropped.
    """
    street = root / ADE_FOLDER
    kitchen = root / "ADE20K_2021_17_01/images/ADE/validation/home/kitchen"
    imgs = [(street, "ADE_train_00000001", picture(left=RED, right=BLUE),
             class_map(left=1, right=2), [class_map(bottom_right=300), class_map(top_right=6)],
             ["outdoor", "urban", "street"], "street"),
            (street, "ADE_train_00000002", picture(all=WHITE), class_map(left=2, right=300), [],
             ["outdoor", "urban", "street"], "street"),
            (kitchen, "ADE_val_00000003", picture(all=GREEN), class_map(), [], [], "~unlabeled")]
    for folder, stem, rgb, objects, parts, scene_list, _ in imgs:
        folder.mkdir(parents=True, exist_ok=True)
        save_jpeg(folder / f"{stem}.jpg", rgb)
        ade_class_png(folder / f"{stem}_seg.png", objects, instances=(objects > 0) * 7)
        for level, p in enumerate(parts, start=1):
            ade_class_png(folder / f"{stem}_parts_{level}.png", p)
        objs = []
        for level, plane in enumerate([objects] + parts):
            for code in sorted(set(np.unique(plane).tolist()) - {0}):
                objs.append({"id": len(objs), "name": ADE_NAMES[code], "name_ndx": code,
                             "raw_name": ADE_NAMES[code].split(",")[0],
                             "parts": {"part_level": level, "ispartof": [], "hasparts": []},
                             "polygon": {"x": [0], "y": [0]}})
        (folder / f"{stem}.json").write_text(json.dumps({"annotation": {
            "filename": f"{stem}.jpg", "folder": str(folder.relative_to(root)),
            "imsize": [H, W, 3], "scene": scene_list, "object": objs}}))
    if with_index:
        folders = [str(f.relative_to(root)) for f, *_ in imgs] + [ADE_FOLDER]
        index = {"filename": [f"{s}.jpg" for _, s, *_ in imgs] + ["ADE_train_00000009.jpg"],
                 "folder": folders,
                 "scene": [s for *_, s in imgs] + ["street"],
                 "objectnames": _ade_objectnames(),
                 "objectPresence": np.zeros((300, 4), dtype=np.int64),
                 "description": {"filename": "names"}}
        with open(root / "ADE20K_2021_17_01" / "index_ade20k.pkl", "wb") as f:
            pickle.dump(index, f)
    return root


def write_ade_challenge(root: Path) -> Path:
    """ADEChallengeData2016: 2 images; classes 1 wall, 2 building;edifice, 3 sky."""
    base = root / "ADEChallengeData2016"
    (base / "annotations" / "training").mkdir(parents=True)
    (base / "annotations" / "validation").mkdir(parents=True)
    (base / "objectInfo150.csv").write_text(
        "Idx,Ratio,Train,Val,Name\n1,0.1576,11664,1172,wall\n2,0.1072,6046,612,building;edifice\n"
        "3,0.0878,8265,796,sky\n")
    (base / "sceneCategories.txt").write_text(
        "ADE_train_00000001 airport_terminal\nADE_val_00000001 art_gallery\n")
    for split, stem, rgb, classes in (
            ("training", "ADE_train_00000001", picture(all=BLUE), class_map(top=3, bottom=2)),
            ("validation", "ADE_val_00000001", picture(all=WHITE), class_map(left=1))):
        save_jpeg(base / "images" / split / f"{stem}.jpg", rgb)
        Image.fromarray(classes.astype(np.uint8), mode="L").save(
            base / "annotations" / split / f"{stem}.png")
    return base


# ---------------------------------------------------------------------------------------------
# PASCAL VOC, Pascal-Context, COCO panoptic, class folders

def voc_palette() -> list:
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def save_palette_png(path: Path, classes: np.ndarray) -> None:
    im = Image.fromarray(classes.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def write_voc(root: Path) -> Path:
    """VOCdevkit/VOC2012: img a: left person (15), right void (255), bottom-left void border;
    img b: left background, right aeroplane (1)."""
    base = root / "VOCdevkit" / "VOC2012"
    a = class_map(left=15, right=255)
    b = class_map(right=1)
    for stem, rgb, classes in (("2007_000001", picture(left=RED, right=WHITE), a),
                               ("2007_000002", picture(left=BLUE, right=BLUE), b)):
        save_jpeg(base / "JPEGImages" / f"{stem}.jpg", rgb)
        save_palette_png(base / "SegmentationClass" / f"{stem}.png", classes)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "trainval.txt").write_text("2007_000001\n2007_000002\n")
    return root / "VOCdevkit"


def write_labelme_voc(root: Path) -> Path:
    """labelme's VOC export: class_names.txt with _background_ first, custom classes."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "class_names.txt").write_text("_background_\nCat\ndog\n")
    save_jpeg(root / "JPEGImages" / "x1.jpg", picture(all=WHITE))
    save_palette_png(root / "SegmentationClass" / "x1.png", class_map(left=1, right=2))
    return root


def write_pascal_context(root: Path) -> Path:
    from scipy.io import savemat
    ctx = root / "context"
    (ctx / "trainval").mkdir(parents=True)
    (ctx / "labels.txt").write_text("1: accordion\n2: aeroplane\n3: sky\n459: wood\n")
    jpegs = root / "VOC2010" / "JPEGImages"
    save_jpeg(jpegs / "2008_000002.jpg", picture(all=BLUE))
    savemat(str(ctx / "trainval" / "2008_000002.mat"),
            {"LabelMap": class_map(top=3, bottom_left=459, bottom_right=2).astype(np.uint16)})
    save_jpeg(jpegs / "2008_000003.jpg", picture(all=WHITE))
    savemat(str(ctx / "trainval" / "2008_000003.mat"),
            {"LabelMap": class_map(left=3).astype(np.uint16)})
    return ctx


COCO_SEG = {"person": 1 + 256 * 2 + 65536 * 3, "wall": 5}


def write_coco_panoptic(root: Path) -> Path:
    """One image: left a person (segment id uses all of R, G, B), right wall-other-merged,
    bottom-right void (id 0)."""
    ann = root / "annotations"
    (ann / "panoptic_val2017").mkdir(parents=True)
    save_jpeg(root / "val2017" / "000000000139.jpg", picture(left=RED, right=GREEN))
    ids = class_map(left=COCO_SEG["person"], right=COCO_SEG["wall"])
    ids[region("bottom-right")] = 0
    rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(ann / "panoptic_val2017" / "000000000139.png")
    data = {"images": [{"id": 139, "file_name": "000000000139.jpg", "height": H, "width": W}],
            "annotations": [{"image_id": 139, "file_name": "000000000139.png", "segments_info": [
                {"id": COCO_SEG["person"], "category_id": 1, "iscrowd": 0, "area": 768},
                {"id": COCO_SEG["wall"], "category_id": 199, "iscrowd": 0, "area": 384}]}],
            "categories": [{"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
                           {"id": 199, "name": "wall-other-merged", "isthing": 0,
                            "supercategory": "wall"}]}
    (ann / "panoptic_val2017.json").write_text(json.dumps(data))
    return root


def write_dtd(root: Path) -> Path:
    """DTD layout: images/<class>/<class>_000N.jpg and labels/labels_joint_anno.txt."""
    dtd = root / "dtd"
    save_jpeg(dtd / "images" / "banded" / "banded_0001.jpg", picture(all=WHITE))
    save_jpeg(dtd / "images" / "banded" / "banded_0002.jpg", picture(all=BLUE))
    save_jpeg(dtd / "images" / "striped" / "striped_0001.jpg", picture(left=RED, right=BLUE))
    (dtd / "labels").mkdir()
    (dtd / "labels" / "labels_joint_anno.txt").write_text(
        "banded/banded_0001.jpg banded striped \nbanded/banded_0002.jpg banded \n"
        "striped/striped_0001.jpg striped \n")
    return dtd


def write_scene_folders(root: Path) -> Path:
    tree = root / "places"
    save_jpeg(tree / "Beach" / "a.jpg", picture(all=BLUE))
    rgb = picture(all=GREEN)
    (tree / "forest").mkdir(parents=True)
    Image.fromarray(rgb).save(tree / "forest" / "b.png")
    return tree
