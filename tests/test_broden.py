"""The Broden reader and checker on small datasets written by the tests."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from broden_fixtures import CATEGORIES, EXPECTED_PRIMARY, LABELS, FixtureImage, build_broden, default_images
from PIL import Image

from netdissect.data.broden import (
    BrodenDataset,
    CheckReport,
    ImageRecord,
    Label,
    Segmentation,
    check_dataset,
    open_dataset,
)
from netdissect.data.labelpng import write_label_png
from netdissect.errors import DatasetError


@pytest.fixture
def fx(tmp_path):
    return build_broden(tmp_path / "broden")


# --- parsing -----------------------------------------------------------------------------------


def test_parses_tables(fx):
    ds = BrodenDataset(fx.root)
    assert ds.root == fx.root
    assert len(ds) == 3
    assert ds.categories == CATEGORIES
    assert ds.pixel_categories == ["color", "object", "part", "material"]
    assert ds.image_categories == ["scene", "texture"]
    assert len(ds.labels) == 13
    assert ds.labels[0].number == 0 and ds.labels[0].category == ""
    assert ds.label_names[1:] == [name for _, name, *_ in LABELS]
    for number, name, _, freq, cov in LABELS:
        label = ds.labels[number]
        assert isinstance(label, Label)
        assert (label.number, label.name, label.frequency, label.coverage) == (number, name,
                                                                               freq, cov)
    assert ds.labels[4].categories == {"object": 1, "part": 2}
    assert ds.concepts == list(range(1, 13))
    assert ds.concept_categories == [EXPECTED_PRIMARY[n] for n in ds.concepts]
    assert ds.splits == {"train": 2, "val": 1}
    assert ds.max_masks_per_image == 4


def test_records(fx):
    ds = BrodenDataset(fx.root)
    r0, r1, r2 = ds.records
    assert isinstance(r0, ImageRecord)
    assert (r0.line, r0.image, r0.split, r0.ih, r0.iw, r0.sh, r0.sw) == (
        2, "a/img0.jpg", "train", 8, 8, 4, 4)
    assert r0.masks == {"color": ("a/img0_color_1.png",), "object": ("a/img0_object_1.png",),
                        "part": ("a/img0_part_1.png", "a/img0_part_2.png"), "material": ()}
    assert r0.image_labels == {"scene": (7,), "texture": ()}
    assert r1.line == 3 and r1.image_labels == {"scene": (8,), "texture": (9,)}
    assert r2.line == 4 and r2.split == "val"


def test_primary_category(fx):
    ds = BrodenDataset(fx.root)
    for number, category in EXPECTED_PRIMARY.items():
        assert ds.labels[number].category == category, ds.labels[number]


def test_primary_category_without_cfile(tmp_path):
    # with no c_ files at all the label.csv counts decide: wheel is object(1);part(2) -> part
    fx = build_broden(tmp_path / "b", cfiles={})
    ds = BrodenDataset(fx.root)
    assert ds.labels[4].category == "part"
    assert ds.labels[11].category == "object"
    assert ds.labels[12].category == "color"     # tie on counts: category.csv order


def test_load_segmentation(fx):
    ds = BrodenDataset(fx.root)
    images = default_images()
    seg = ds.load_segmentation(0)
    assert isinstance(seg, Segmentation)
    assert seg.pixel.dtype == np.int32 and seg.pixel.shape == (4, 4, 4)
    expected = images[0].masks["color"] + images[0].masks["object"] + images[0].masks["part"]
    for plane, want in zip(seg.pixel, expected):
        np.testing.assert_array_equal(plane, want)
    assert seg.plane_category.tolist() == [0, 1, 2, 2]
    assert seg.image_labels.dtype == np.int32 and seg.image_labels.tolist() == [7]
    assert seg.labeled.dtype == bool
    assert seg.labeled.tolist() == [True, True, True, False, True, False]

    seg = ds.load_segmentation(1)
    assert seg.pixel.shape == (2, 4, 4)
    assert seg.image_labels.tolist() == [8, 9]
    assert seg.labeled.tolist() == [True, False, False, True, True, True]


def test_load_segmentation_of_some_categories(fx):
    """Only the planes of the asked pixel categories are decoded (the report's selection);
    image labels and labeled are those of the whole selection; an unknown name is refused."""
    ds = BrodenDataset(fx.root)
    images = default_images()
    seg = ds.load_segmentation(0, categories=["part"])
    assert seg.pixel.shape == (2, 4, 4) and seg.plane_category.tolist() == [2, 2]
    for plane, want in zip(seg.pixel, images[0].masks["part"]):
        np.testing.assert_array_equal(plane, want)
    full = ds.load_segmentation(0)
    assert seg.image_labels.tolist() == full.image_labels.tolist()
    assert seg.labeled.tolist() == full.labeled.tolist()
    assert ds.load_segmentation(0, categories=[]).pixel.shape == (0, 4, 4)
    with pytest.raises(ValueError, match="scene"):
        ds.load_segmentation(0, categories=["scene"])      # an image-level category


def test_category_selection(fx):
    ds = BrodenDataset(fx.root, categories=["texture", "object"])
    assert ds.categories == ["object", "texture"]          # category.csv order
    assert ds.pixel_categories == ["object"] and ds.image_categories == ["texture"]
    assert ds.concepts == [3, 5, 9, 11]          # wheel (4) is primarily a part, tie (12) color
    assert ds.records[0].masks == {"object": ("a/img0_object_1.png",)}
    assert ds.records[0].image_labels == {"texture": ()}
    seg = ds.load_segmentation(0)
    assert seg.pixel.shape == (1, 4, 4) and seg.image_labels.size == 0
    assert seg.labeled.tolist() == [True, False]
    assert ds.max_masks_per_image == 1
    assert ds.category_image_counts() == {"object": 2, "texture": 2}


def test_category_image_counts(fx):
    ds = BrodenDataset(fx.root)
    assert ds.category_image_counts() == {"color": 2, "object": 2, "part": 1, "material": 1,
                                          "scene": 2, "texture": 2}


def test_split_and_limit(fx):
    assert [r.image for r in BrodenDataset(fx.root, split="val").records] == ["b/img2.jpg"]
    assert len(BrodenDataset(fx.root, split="train")) == 2
    assert len(BrodenDataset(fx.root, split=["train", "val"])) == 3
    ds = BrodenDataset(fx.root, split="train", limit=1)
    assert [r.image for r in ds.records] == ["a/img0.jpg"]
    assert len(BrodenDataset(fx.root, limit=10)) == 3
    with pytest.raises(ValueError):
        BrodenDataset(fx.root, limit=0)


def test_load_image(fx):
    ds = BrodenDataset(fx.root)
    for i in range(3):
        image = ds.load_image(i)
        assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
    np.testing.assert_array_equal(ds.load_image(1), np.asarray(Image.open(fx.image_path(1))))


def test_pickle(fx):
    ds = BrodenDataset(fx.root, categories=["object", "scene"], split="train")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.records == ds.records and clone.concepts == ds.concepts
    np.testing.assert_array_equal(clone.load_segmentation(0).pixel, ds.load_segmentation(0).pixel)


def test_index_digest(fx):
    first = BrodenDataset(fx.root).index_digest()
    assert len(first) == 64 and first == BrodenDataset(fx.root).index_digest()
    lines = fx.index_lines()
    fx.write_index_lines(lines[:-1])
    assert BrodenDataset(fx.root).index_digest() != first


def test_gapped_label_numbers(tmp_path):
    # label.csv may skip numbers; the gap is a placeholder, and is unknown in masks
    labels = [lab for lab in LABELS if lab[0] != 2]
    images = default_images()
    images[0].masks["color"] = [np.ones((4, 4), dtype=np.int32)]
    fx = build_broden(tmp_path / "b", images=images, labels=labels,
                      cfiles={"color": [(1, 0.5)]})
    ds = BrodenDataset(fx.root)
    assert ds.labels[2].name == "-" and 2 not in ds.concepts
    ds.load_segmentation(0)
    write_label_png(fx.mask_path(0, "color"), np.full((4, 4), 2))
    with pytest.raises(DatasetError, match="label number 2 not in label.csv"):
        ds.load_segmentation(0)


# --- errors ------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="not a Broden dataset.*does not exist.*synthetic"):
        open_dataset(tmp_path / "nope")


def test_missing_index(fx):
    fx.index.unlink()
    with pytest.raises(DatasetError, match="not a Broden dataset.*no index.csv.*broden1_224"):
        open_dataset(fx.root)
    with pytest.raises(DatasetError, match="no index.csv"):
        check_dataset(fx.root)


def test_missing_label_csv(fx):
    (fx.root / "label.csv").unlink()
    with pytest.raises(DatasetError, match="label.csv is missing"):
        BrodenDataset(fx.root)


def test_missing_image(fx):
    fx.image_path(1).unlink()
    ds = BrodenDataset(fx.root)
    with pytest.raises(DatasetError, match=r"img1.png: image file is missing.*index.csv line 3") \
            as info:
        ds.load_image(1)
    assert info.value.path == fx.image_path(1)
    assert info.value.index_line == 3


def test_missing_mask(fx):
    fx.mask_path(0, "part", 1).unlink()
    ds = BrodenDataset(fx.root)
    with pytest.raises(DatasetError, match=r"img0_part_2.png: label PNG is missing.*line 2"):
        ds.load_segmentation(0)


def test_wrong_column_count(fx):
    lines = fx.index_lines()
    lines[2] = lines[2] + ",extra"
    fx.write_index_lines(lines)
    with pytest.raises(DatasetError, match=r"index.csv, line 3: row has 13 fields, expected 12") \
            as info:
        BrodenDataset(fx.root)
    assert info.value.line == 3 and info.value.path.name == "index.csv"


def test_missing_category_column(fx):
    lines = fx.index_lines()
    fx.write_index_lines([",".join(lines[0].split(",")[:-1])] + lines[1:])
    with pytest.raises(DatasetError, match=r"line 1: the header lacks column\(s\) texture"):
        BrodenDataset(fx.root)


def test_bad_size_field(fx):
    lines = fx.index_lines()
    lines[1] = lines[1].replace(",8,8,4,4,", ",8,x,4,4,")
    fx.write_index_lines(lines)
    with pytest.raises(DatasetError, match=r"line 2: iw = 'x' is not an integer"):
        BrodenDataset(fx.root)


def test_unknown_scene_label(fx):
    lines = fx.index_lines()
    lines[3] = lines[3][:-1] + "99"                        # texture column: 9 -> 99
    fx.write_index_lines(lines)
    with pytest.raises(DatasetError, match=r"index.csv, line 4: column 'texture': label number "
                                           r"99 is not in label.csv"):
        BrodenDataset(fx.root)


def test_unknown_label_in_png(fx):
    write_label_png(fx.mask_path(2, "object"), np.array([[5, 5, 500, 5]] * 4))
    ds = BrodenDataset(fx.root)
    ds.load_segmentation(0)
    with pytest.raises(DatasetError, match=r"img2_object_1.png: label number 500 not in "
                                           r"label.csv.*index.csv line 4"):
        ds.load_segmentation(2)


def test_mask_wrong_size(fx):
    write_label_png(fx.mask_path(1, "material"), np.full((5, 4), 6))
    ds = BrodenDataset(fx.root)
    with pytest.raises(DatasetError, match=r"img1_material_1.png: mask is 5x4 .* sh x sw = 4x4 "
                                           r"\(listed in index.csv line 3\)"):
        ds.load_segmentation(1)


def test_image_wrong_size(fx):
    Image.new("RGB", (9, 8)).save(fx.image_path(1))
    ds = BrodenDataset(fx.root)
    with pytest.raises(DatasetError, match=r"img1.png: image is 8x9 .* ih x iw = 8x8"):
        ds.load_image(1)


def test_truncated_jpeg(fx):
    path = fx.image_path(0)
    path.write_bytes(path.read_bytes()[:200])
    ds = BrodenDataset(fx.root)
    with pytest.raises(DatasetError, match=r"img0.jpg: image cannot be decoded.*corrupt or "
                                           r"truncated \(listed in index.csv line 2\)"):
        ds.load_image(0)


def test_truncated_png(fx):
    path = fx.mask_path(0, "object")
    path.write_bytes(path.read_bytes()[:-30])
    ds = BrodenDataset(fx.root)
    with pytest.raises(DatasetError, match=r"img0_object_1.png: label PNG cannot be decoded.*"
                                           r"line 2"):
        ds.load_segmentation(0)
    image = fx.image_path(1)
    image.write_bytes(image.read_bytes()[:-30])
    with pytest.raises(DatasetError, match=r"img1.png: image cannot be decoded"):
        ds.load_image(1)


@pytest.mark.parametrize("name", ["/etc/hosts", "../outside.jpg", "a/../../x.jpg"])
def test_file_names_stay_under_images(fx, name):
    lines = fx.index_lines()
    lines[2] = lines[2].replace("a/img1.png", name, 1)
    fx.write_index_lines(lines)
    with pytest.raises(DatasetError, match=r"line 3: bad image file name .* relative path"):
        BrodenDataset(fx.root)
    lines[2] = lines[2].replace("a/img1_color_1.png", name)
    fx.write_index_lines(lines[:2] + [lines[2].replace(name, "a/img1.png", 1)] + lines[3:])
    with pytest.raises(DatasetError, match=r"line 3: column 'color': bad mask file name"):
        BrodenDataset(fx.root)


def test_empty_dataset(fx):
    fx.write_index_lines(fx.index_lines()[:1])
    with pytest.raises(DatasetError, match="empty dataset"):
        BrodenDataset(fx.root)


def test_empty_split(fx):
    with pytest.raises(DatasetError, match=r"no images in split 'test'; the splits present are: "
                                           r"train \(2 images\), val \(1 images\)"):
        BrodenDataset(fx.root, split="test")


def test_unknown_category(fx):
    with pytest.raises(DatasetError, match=r"unknown category 'objects'; this dataset has: "
                                           r"color, object, part, material, scene, texture"):
        BrodenDataset(fx.root, categories=["objects"])


def test_not_utf8_index(fx):
    fx.index.write_bytes(fx.index.read_bytes() + b"\xff\xfe,\n")
    with pytest.raises(DatasetError, match=r"index.csv, line 5: index.csv is not UTF-8"):
        BrodenDataset(fx.root)


# --- checker -----------------------------------------------------------------------------------


def test_check_ok(fx):
    report = check_dataset(fx.root, workers=2)
    assert isinstance(report, CheckReport)
    assert report.ok, report.problems
    assert report.images == 3 and report.files_checked == 3 + 7
    assert report.images_labeled == {"color": 2, "object": 2, "part": 1, "material": 1,
                                     "scene": 2, "texture": 2}
    assert report.labels_seen == {"color": 2, "object": 4, "part": 2, "material": 2,
                                  "scene": 2, "texture": 1}
    assert report.labels_defined == {"color": 3, "object": 3, "part": 2, "material": 1,
                                     "scene": 2, "texture": 1}
    text = report.summary_text()
    assert "OK" in text and "3 images" in text and "object" in text


def test_check_collects_all_problems(fx):
    lines = fx.index_lines()
    lines[3] = lines[3][:-1] + "99"                        # unknown texture label, line 4
    lines.append("c/extra.jpg,train,8,8,4,4,,,,,")          # wrong column count, line 5
    fx.write_index_lines(lines)
    fx.image_path(1).unlink()                               # missing image
    path = fx.image_path(0)
    path.write_bytes(path.read_bytes()[:100])               # truncated JPEG
    fx.mask_path(0, "part", 1).unlink()                     # missing mask
    write_label_png(fx.mask_path(1, "material"), np.full((3, 4), 6))        # wrong size
    write_label_png(fx.mask_path(2, "object"), np.array([[5, 700, 0, 0]] * 4))  # unknown label
    (fx.root / "c_scene.csv").unlink()
    report = check_dataset(fx.root, workers=3)
    assert not report.ok
    text = "\n".join(report.problems)
    expected = ["index.csv, line 4: column 'texture': label number 99",
                "index.csv, line 5: row has 11 fields, expected 12",
                "img1.png: image file is missing (listed in index.csv line 3)",
                "img0.jpg: image cannot be decoded",
                "img0_part_2.png: label PNG is missing (listed in index.csv line 2)",
                "img1_material_1.png: mask is 3x4",
                "img2_object_1.png: label number 700 not in label.csv",
                "c_scene.csv is missing"]
    for want in expected:
        assert want in text, (want, text)
    assert len(report.problems) == len(expected)
    summary = report.summary_text(max_problems=3)
    assert "8 problems" in summary and "and 5 more" in summary


def test_check_stops_cleanly_on_broken_tables(fx):
    (fx.root / "category.csv").write_text("nom\nx\n")
    report = check_dataset(fx.root)
    assert not report.ok and "no 'name' column" in report.problems[0]


def test_check_progress(fx, capsys):
    assert check_dataset(fx.root, workers=1, progress=True).ok
    assert "checking" in capsys.readouterr().err


def test_check_with_different_image_names(tmp_path):
    images = [FixtureImage("x y/évé,1.png", "train",
                           masks={"object": [np.full((4, 4), 3, dtype=np.int32)]})]
    fx = build_broden(tmp_path / "b", images=images)
    ds = BrodenDataset(fx.root)
    assert ds.records[0].image == "x y/évé,1.png"
    assert ds.load_segmentation(0).pixel.shape == (1, 4, 4)
    assert check_dataset(fx.root).ok


def test_the_file_table_digest_is_the_json_one_earlier_runs_recorded():
    """digest_of writes [size, mtime] pairs itself: the bytes (so the manifests and label cache
    keys of earlier runs) stay those of json.dumps."""
    import hashlib
    import json

    from netdissect.data.broden import digest_of
    table = {"b/c.png": [345, 1700000000123456789], "a.jpg": [-1, -1], "h.jpg": "ab12", "t.jpg": [1, True]}
    h = hashlib.sha256()
    for name in sorted(table):
        h.update(name.encode() + b"\0" + json.dumps(table[name]).encode() + b"\n")
    assert digest_of(table) == h.hexdigest()
