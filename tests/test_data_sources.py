"""`netdissect data SOURCE SRC`: each builder on a fixture in its source's exact format.

Expected tables are worked out by hand from the fixtures (see data_sources.py for the
geometry): statistics count at source resolution (a half is 0.5, a quarter 0.25), numbers go
by frequency, then coverage, then name.
"""
from __future__ import annotations

import csv
import hashlib
import pickle
from pathlib import Path

import data_sources as F
import numpy as np
import pytest

from netdissect.cli.commands import main
from netdissect.data.broden import BrodenDataset
from netdissect.data.labelpng import read_label_png
from netdissect.errors import NetDissectError

LEFT = np.zeros((8, 8), dtype=bool)
LEFT[:, :4] = True
TOP = np.zeros((8, 8), dtype=bool)
TOP[:4, :] = True


def rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def labels(root: Path):
    return {r["name"]: r for r in rows(root / "label.csv")}


def build(capsys, *args) -> str:
    assert main(["data", *map(str, args), "--size", "16", "--workers", "1", "--quiet"]) == 0
    return capsys.readouterr().out


def md5_order(paths):
    return sorted(paths, key=lambda p: int.from_bytes(hashlib.md5(p.encode()).digest()[:8], "big"))


def mask(root: Path, row: dict, category: str, k: int = 0) -> np.ndarray:
    return read_label_png(root / "images" / row[category].split(";")[k])


# ---------------------------------------------------------------------------------------------
# ADE20K

ADE_LABELS = [  # number, name, category field, frequency, coverage, syns
    ("1", "street-s", "scene(2)", "2", "2.000000", ""),
    ("2", "car", "object(2)", "2", "1.000000", "auto;automobile"),
    ("3", "window", "object(1);part(1)", "2", "0.750000", "windowpane"),
    ("4", "white-c", "color(1)", "1", "1.000000", ""),
    ("5", "blue-c", "color(1)", "1", "0.500000", ""),
    ("6", "red-c", "color(1)", "1", "0.500000", ""),
    ("7", "wall", "object(1)", "1", "0.500000", ""),
    ("8", "door", "part(1)", "1", "0.250000", ""),
]


@pytest.fixture(scope="module")
def ade_src(tmp_path_factory):
    return F.write_ade20k_2021(tmp_path_factory.mktemp("ade") / "download")


def test_ade20k_2021_with_index(ade_src, tmp_path, capsys):
    out = tmp_path / "broden"
    text = build(capsys, "ade20k", ade_src, "--out", out)
    assert [tuple(r.values()) for r in rows(out / "label.csv")] == ADE_LABELS
    assert [tuple(r.values()) for r in rows(out / "category.csv")] == [
        ("scene", "1", "1", "1", "2"), ("object", "2", "7", "3", "4"),
        ("part", "3", "8", "2", "2"), ("color", "4", "6", "3", "3")]
    assert [(r["code"], r["number"], r["frequency"]) for r in rows(out / "c_object.csv")] == [
        ("1", "2", "2"), ("2", "3", "1"), ("3", "7", "1")]
    assert [(r["number"], r["coverage"]) for r in rows(out / "c_part.csv")] == [
        ("3", "0.250000"), ("8", "0.250000")]
    index = rows(out / "index.csv")
    paths = ["ade20k/ADE_train_00000001.jpg", "ade20k/ADE_train_00000002.jpg"]
    assert [r["image"] for r in index] == md5_order(paths), "kitchen image had no label: dropped"
    first = next(r for r in index if r["image"] == paths[0])
    assert (first["ih"], first["iw"], first["sh"], first["sw"]) == ("16", "16", "8", "8")
    assert first["scene"] == "1" and first["texture"] == first["material"] == ""
    assert first["part"] == "ade20k/ADE_train_00000001_part_1.png;ade20k/ADE_train_00000001_part_2.png"
    np.testing.assert_array_equal(mask(out, first, "object"), np.where(LEFT, 7, 2))
    np.testing.assert_array_equal(mask(out, first, "part", 0), np.where(~TOP & ~LEFT, 3, 0))
    np.testing.assert_array_equal(mask(out, first, "part", 1), np.where(TOP & ~LEFT, 8, 0))
    np.testing.assert_array_equal(mask(out, first, "color"), np.where(LEFT, 6, 5))
    ds = BrodenDataset(out)
    assert ds.labels[3].category == "object", "window: larger coverage as an object"
    assert ds.load_image(0).shape == (16, 16, 3)
    assert "OK: no problems found" in text and "wrote 2 images" in text
    assert "1 images dropped: no labels" in text
    assert not list(tmp_path.glob(".broden.*")), "work directory removed"


def test_ade20k_json_only_gives_the_same_tables(ade_src, tmp_path, capsys):
    (ade_src / "ADE20K_2021_17_01" / "index_ade20k.pkl").rename(tmp_path / "index.pkl")
    try:
        build(capsys, "ade20k", ade_src, "--out", tmp_path / "json")
        build(capsys, "ade20k", ade_src, "--index", tmp_path / "index.pkl", "--out", tmp_path / "pkl")
    finally:
        (tmp_path / "index.pkl").rename(ade_src / "ADE20K_2021_17_01" / "index_ade20k.pkl")
    for name in ("label.csv", "category.csv", "index.csv", "c_object.csv", "c_part.csv"):
        assert (tmp_path / "json" / name).read_bytes() == (tmp_path / "pkl" / name).read_bytes()


def test_ade20k_json_only_class_without_name_is_unlabeled(tmp_path, capsys):
    src = F.write_ade20k_2021(tmp_path / "ade", with_index=False)
    seg = src / F.ADE_FOLDER / "ADE_train_00000002_seg.png"
    F.ade_class_png(seg, F.class_map(left=2, right=300, bottom_left=7))   # 7: not in its JSON
    out = tmp_path / "broden"
    build(capsys, "ade20k", src, "--out", out)
    lab = labels(out)
    assert not any(n.startswith("thing") for n in lab)
    row = next(r for r in rows(out / "index.csv") if "00000002" in r["image"])
    expect = np.where(LEFT, int(lab["car"]["number"]), int(lab["window"]["number"]))
    expect[~TOP & LEFT] = 0
    np.testing.assert_array_equal(mask(out, row, "object"), expect)
    assert lab["car"]["coverage"] == "0.750000", "car: 0.5 in image 1, 0.25 in image 2"


def test_ade20k_scene_names():
    from netdissect.data.ade20k import scene_name
    assert scene_name("/street") == scene_name(["outdoor", "urban", "street"]) == "street-s"
    assert scene_name("parking_garage/indoor") == "parking_garage-indoor-s"
    assert scene_name("bus_station - indoor") == "bus_station-indoor-s"
    assert scene_name(np.str_("kitchen")) == scene_name(["kitchen"]) == "kitchen-s"
    assert scene_name("~not labeled") == scene_name([]) == scene_name("") == ""


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_ade20k_index_with_arrays_loads_in_every_protocol(tmp_path, protocol):
    from netdissect.data.ade20k import load_index
    index = {"filename": ["a.jpg"], "folder": ["f"], "objectnames": ["wall"],
             "objectPresence": np.arange(6).reshape(3, 2), "scene": [np.str_("street")],
             "wordnet_level1": [np.int64(3)]}
    path = tmp_path / "index_ade20k.pkl"
    path.write_bytes(pickle.dumps(index, protocol=protocol))
    back = load_index(path)
    np.testing.assert_array_equal(back["objectPresence"], index["objectPresence"])
    assert back["scene"] == ["street"] and back["wordnet_level1"] == [3]


def test_ade20k_index_is_data_not_code(tmp_path):
    from netdissect.data.ade20k import load_index

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "index_ade20k.pkl"
    path.write_bytes(pickle.dumps({"filename": [Evil()], "folder": ["x"], "objectnames": []}))
    with pytest.raises(NetDissectError, match="not allowed"):
        load_index(path)


def test_ade_challenge_2016(tmp_path, capsys):
    src = F.write_ade_challenge(tmp_path)
    out = tmp_path / "broden"
    build(capsys, "ade20k", src, "--out", out, "--no-colors")
    assert [tuple(r.values()) for r in rows(out / "label.csv")] == [
        ("1", "airport_terminal-s", "scene(1)", "1", "1.000000", ""),
        ("2", "art_gallery-s", "scene(1)", "1", "1.000000", ""),
        ("3", "building", "object(1)", "1", "0.500000", "edifice"),
        ("4", "sky", "object(1)", "1", "0.500000", ""),
        ("5", "wall", "object(1)", "1", "0.500000", "")]
    assert not (out / "c_color.csv").exists()
    row = next(r for r in rows(out / "index.csv") if "train" in r["image"])
    np.testing.assert_array_equal(mask(out, row, "object"), np.where(TOP, 4, 3))
    assert row["color"] == ""


# ---------------------------------------------------------------------------------------------
# VOC, Pascal-Context, COCO panoptic

def test_voc_devkit(tmp_path, capsys):
    src = F.write_voc(tmp_path)
    out = tmp_path / "broden"
    build(capsys, "voc", src, "--out", out)
    lab = labels(out)
    assert set(lab) == {"person", "aeroplane", "red-c", "white-c", "blue-c"}
    assert (lab["blue-c"]["number"], lab["blue-c"]["coverage"]) == ("1", "1.000000")
    assert lab["person"]["coverage"] == lab["aeroplane"]["coverage"] == "0.500000"
    a = next(r for r in rows(out / "index.csv") if "000001" in r["image"])
    np.testing.assert_array_equal(mask(out, a, "object"),
                                  np.where(LEFT, int(lab["person"]["number"]), 0))


def test_voc_labelme_class_names(tmp_path, capsys):
    out = tmp_path / "broden"
    build(capsys, "voc", F.write_labelme_voc(tmp_path / "labelme"), "--out", out, "--no-colors")
    assert [(r["name"], r["category"]) for r in rows(out / "label.csv")] == [
        ("cat", "object(1)"), ("dog", "object(1)")]


def test_pascal_context(tmp_path, capsys):
    src = F.write_pascal_context(tmp_path)
    out = tmp_path / "broden"
    build(capsys, "pascal-context", src, "--out", out, "--no-colors")
    assert [tuple(r.values())[:5] for r in rows(out / "label.csv")] == [
        ("1", "sky", "object(2)", "2", "1.000000"),
        ("2", "aeroplane", "object(1)", "1", "0.250000"),
        ("3", "wood", "object(1)", "1", "0.250000")]
    row = next(r for r in rows(out / "index.csv") if "000002" in r["image"])
    np.testing.assert_array_equal(mask(out, row, "object"),
                                  np.where(TOP, 1, np.where(LEFT, 3, 2)))


def test_coco_panoptic(tmp_path, capsys):
    src = F.write_coco_panoptic(tmp_path)
    out = tmp_path / "broden"
    build(capsys, "coco-panoptic", src, "--out", out)
    lab = labels(out)
    assert (lab["person"]["coverage"], lab["wall"]["coverage"]) == ("0.500000", "0.250000")
    assert set(lab) == {"person", "wall", "red-c", "green-c"}
    row = rows(out / "index.csv")[0]
    expect = np.where(LEFT, int(lab["person"]["number"]), int(lab["wall"]["number"]))
    expect[~TOP & ~LEFT] = 0
    np.testing.assert_array_equal(mask(out, row, "object"), expect)


# ---------------------------------------------------------------------------------------------
# Class folders

def test_dtd_folder_uses_the_joint_annotation(tmp_path, capsys):
    out = tmp_path / "broden"
    build(capsys, "folder", F.write_dtd(tmp_path), "--out", out, "--category", "texture")
    lab = labels(out)
    assert (lab["banded"]["frequency"], lab["striped"]["frequency"]) == ("2", "2")
    assert lab["banded"]["category"] == "texture(2)"
    by_image = {r["image"]: r["texture"] for r in rows(out / "index.csv")}
    b, s = lab["banded"]["number"], lab["striped"]["number"]
    assert by_image == {"dtd/banded/banded_0001.jpg": f"{b};{s}", "dtd/banded/banded_0002.jpg": b,
                        "dtd/striped/striped_0001.jpg": s}
    ds = BrodenDataset(out)
    assert ds.image_categories == ["texture"] and "color" in ds.pixel_categories


def test_plain_folder_as_scenes(tmp_path, capsys):
    out = tmp_path / "broden"
    build(capsys, "folder", F.write_scene_folders(tmp_path), "--out", out, "--category", "scene")
    lab = labels(out)
    assert {n for n in lab if n.endswith("-s")} == {"beach-s", "forest-s"}
    assert {r["image"] for r in rows(out / "index.csv")} == {"places/Beach/a.jpg", "places/forest/b.jpg"}


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "ade20k", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "no ADE20K images found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
