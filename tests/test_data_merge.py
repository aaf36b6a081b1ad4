"""`netdissect data merge`: names unified, rare labels dropped, renumbered; then dissected."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import data_sources as F
import numpy as np
import pytest

from netdissect.cli.commands import main
from netdissect.data.broden import BrodenDataset, check_dataset
from netdissect.data.labelpng import read_label_png
from netdissect.data.merge import NameUnifier, read_synonyms
from netdissect.data.writer import Annotation, SourceItem, build_broden

LEFT = np.zeros((8, 8), dtype=bool)
LEFT[:, :4] = True


def rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load(regions):
    """regions: [(category, region, name)]."""
    ann = Annotation(rgb=F.picture(all=F.WHITE))
    for cat, reg, name in regions:
        codes = F.class_map(**{reg: 1})
        ann.pixel.setdefault(cat, []).append((codes, {1: name}))
    return ann


def make(root: Path, images):
    items = [SourceItem(key, load, (regions,), key) for key, regions in images]
    build_broden(root, items, {"source": "test", "src": str(root)}, size=16, colors=False)
    return root


@pytest.fixture
def inputs(tmp_path):
    a = make(tmp_path / "a", [
        ("s/img1", [("object", "left", "Aeroplane"), ("object", "right", "car")]),
        ("s/img2", [("object", "all", "car")])])
    b = make(tmp_path / "b", [
        ("s/img1", [("part", "left", "car"), ("object", "right", "airplane")]),
        ("s/img4", [("object", "all", "TV")])])
    return a, b


def test_merge_unifies_filters_and_renumbers(inputs, tmp_path, capsys):
    a, b = inputs
    out = tmp_path / "m"
    assert main(["data", "merge", str(a), str(b), "--out", str(out), "--min-images", "2",
                 "--workers", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert [tuple(r.values()) for r in rows(out / "label.csv")] == [
        ("1", "car", "object(2);part(1)", "3", "2.000000", ""),
        ("2", "airplane", "object(2)", "2", "1.000000", "")]
    assert [tuple(r.values()) for r in rows(out / "category.csv")] == [
        ("object", "1", "2", "2", "4"), ("part", "1", "1", "1", "1")]
    index = {r["image"]: r for r in rows(out / "index.csv")}
    assert set(index) == {"s/img1.jpg", "s/img2.jpg", "b/s/img1.jpg"}, \
        "a shared path gets the later input's folder; img4 (only 'tv', 1 image) is dropped"
    assert (out / "images" / "s" / "img1.jpg").read_bytes() == (a / "images" / "s" / "img1.jpg").read_bytes()
    b1 = index["b/s/img1.jpg"]
    np.testing.assert_array_equal(read_label_png(out / "images" / b1["part"]), np.where(LEFT, 1, 0))
    np.testing.assert_array_equal(read_label_png(out / "images" / b1["object"]), np.where(LEFT, 0, 2))
    assert "OK: no problems found" in text and "wrote 3 images" in text


def test_synonym_file_and_default(inputs, tmp_path, capsys):
    syn = tmp_path / "syn.csv"
    syn.write_text("# mine\ntv,car\n")
    table = read_synonyms(str(syn))
    unify = NameUnifier(table)
    assert (unify("  AeroPlane "), unify("TV"), unify("red-c")) == ("airplane", "car", "red-c")
    a, b = inputs
    out = tmp_path / "m"
    assert main(["data", "merge", str(a), str(b), "--out", str(out), "--synonyms", str(syn),
                 "--workers", "1", "--quiet"]) == 1, "default --min-images 10 keeps nothing"
    assert "lower --min-images" in capsys.readouterr().err
    assert main(["data", "merge", str(a), str(b), "--out", str(out), "--synonyms", str(syn),
                 "--min-images", "1", "--workers", "1", "--quiet"]) == 0
    assert rows(out / "label.csv")[0]["category"] == "object(3);part(1)"


def test_sources_merged_and_dissected_end_to_end(tmp_path, capsys):
    """ADE20K + VOC fixtures -> builders -> merge -> check -> dissect (tiny model)."""
    pytest.importorskip("torch")
    from netdissect.engine.pipeline import dissect
    build = ["--size", "32", "--workers", "1", "--quiet"]
    assert main(["data", "ade20k", str(F.write_ade20k_2021(tmp_path / "ade")), "--out",
                 str(tmp_path / "b1"), *build]) == 0
    assert main(["data", "voc", str(F.write_voc(tmp_path / "voc")), "--out", str(tmp_path / "b2"),
                 *build]) == 0
    assert main(["data", "merge", str(tmp_path / "b1"), str(tmp_path / "b2"), "--out",
                 str(tmp_path / "m"), "--min-images", "1", "--workers", "1", "--quiet"]) == 0
    assert check_dataset(tmp_path / "m", workers=1).ok
    ds = BrodenDataset(tmp_path / "m")
    assert len(ds) == 4 and set(ds.categories) == {"scene", "object", "part", "color"}
    names = {lab.name for lab in ds.labels}
    assert {"airplane", "person", "car", "street-s", "red-c"} <= names and "aeroplane" not in names
    result = dissect("engine_data:tiny_net", ["conv2"], tmp_path / "m", out=tmp_path / "run",
                     progress=False, batch_size=2, workers=0, min_category_images=0)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["images"] == 4 and result.layers["conv2"].summary()["units"] == 8
