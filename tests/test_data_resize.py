"""`netdissect data resize`: masks equal a hand-computed nearest resize, the result validates,
an interrupted run resumes to the same bytes as an uninterrupted one."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from broden_fixtures import build_broden, default_images
from PIL import Image

from netdissect.cli.commands import main
from netdissect.data import resize as resize_module
from netdissect.data.broden import BrodenDataset, check_dataset
from netdissect.data.labelpng import read_label_png
from netdissect.data.resize import nearest_resize, resize_broden
from netdissect.errors import NetDissectError


def test_nearest_resize_by_hand():
    labels = np.arange(16).reshape(4, 4)
    # 4 -> 6: output i takes floor((i + 1/2) * 4 / 6) = 0 1 1 2 3 3
    rows = [0, 1, 1, 2, 3, 3]
    assert nearest_resize(labels, 6, 6).tolist() == [[4 * r + c for c in rows] for r in rows]
    # 4 -> 2: floor((i + 1/2) * 2) = 1 3
    assert nearest_resize(labels, 2, 2).tolist() == [[5, 7], [13, 15]]
    # 4 -> 3 (rows) x 5 (cols): floor((i + 1/2) * 4/3) = 0 2 3; floor((j + 1/2) * 4/5) = 0 1 2 2 3
    assert nearest_resize(labels, 3, 5).tolist() == [[4 * r + c for c in [0, 1, 2, 2, 3]]
                                                     for r in [0, 2, 3]]
    assert nearest_resize(labels, 4, 4).tolist() == labels.tolist()


@pytest.fixture
def source(tmp_path):
    return build_broden(tmp_path / "src")


def read_index(root: Path):
    return list(csv.reader(io.StringIO((root / "index.csv").read_text(encoding="utf-8"))))


@pytest.mark.parametrize("size, picks", [
    (12, [0, 1, 1, 2, 3, 3]),        # 8 px images, 4 px masks -> 12 px, masks 6 (4 -> 6 above)
    (5, [1, 3]),                     # masks 5 // 2 = 2 (the 227 -> 113 rule of Broden)
])
def test_resize_masks_images_and_index(source, tmp_path, size, picks):
    out = tmp_path / f"r{size}"
    result = resize_broden(source.root, out, size, workers=2)
    assert result.report.ok, result.report.summary_text()
    assert (result.images, result.written, result.reused) == (3, 10, 0)
    for i, image in enumerate(default_images()):
        with Image.open(out / "images" / image.name) as img:
            assert img.size == (size, size) and img.format == ("PNG" if image.name.endswith(".png") else "JPEG")
        for cat, planes in image.masks.items():
            for name, plane in zip(image.mask_names(cat), planes):
                expected = [[int(plane[r][c]) for c in picks] for r in picks]
                assert read_label_png(out / "images" / name).tolist() == expected, name
    # index.csv: only the four sizes changed; the label tables are copied byte for byte.
    before, after = read_index(source.root), read_index(out)
    assert after[0] == before[0]
    for old, new in zip(before[1:], after[1:]):
        assert new[2:6] == [str(size), str(size), str(size // 2), str(size // 2)]
        assert new[:2] + new[6:] == old[:2] + old[6:]
    for name in ["label.csv", "category.csv", "c_object.csv", "c_part.csv", "c_texture.csv"]:
        assert (out / name).read_bytes() == (source.root / name).read_bytes()
    ds = BrodenDataset(out)
    seg = ds.load_segmentation(0)
    assert seg.pixel.shape == (4, size // 2, size // 2)   # color, object, part x2
    assert ds.load_image(2).shape == (size, size, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src", out.name])


def test_png_image_pixels_are_bilinear(source, tmp_path):
    out = tmp_path / "r16"
    resize_broden(source.root, out, 16)
    with Image.open(source.image_path(1)) as img:                 # a/img1.png: lossless
        expected = np.asarray(img.convert("RGB").resize((16, 16), Image.BILINEAR))
    with Image.open(out / "images" / "a" / "img1.png") as img:
        assert np.array_equal(np.asarray(img), expected)


def test_same_size_copies_bytes(source, tmp_path):
    out = tmp_path / "same"
    result = resize_broden(source.root, out, 8)
    assert result.report.ok
    for path in (source.root / "images").rglob("*.*"):
        assert (out / "images" / path.relative_to(source.root / "images")).read_bytes() == \
            path.read_bytes()


def test_interrupted_resize_resumes_to_the_same_result(source, tmp_path, monkeypatch):
    reference = resize_broden(source.root, tmp_path / "ref", 12, workers=1)
    calls = {"n": 0}
    original = resize_module._resize_record

    def dies_on_the_third(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(*args, **kw)

    monkeypatch.setattr(resize_module, "_resize_record", dies_on_the_third)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        resize_broden(source.root, out, 12, workers=1)
    assert not out.exists() and (tmp_path / ".out.resizing").is_dir()
    monkeypatch.setattr(resize_module, "_resize_record", original)
    result = resize_broden(source.root, out, 12, workers=1)
    assert result.report.ok
    assert result.reused == 8 and result.written == 2     # img0 (1 + 4 masks), img1 (1 + 2)
    assert any("resumed" in note for note in result.notes)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(reference.path) for p in reference.path.rglob("*")
                           if p.is_file())
    for f in files:
        assert (out / f).read_bytes() == (reference.path / f).read_bytes(), f
    assert not (tmp_path / ".out.resizing").exists()

    # A work directory left for another size is ours: started afresh, not reused.
    monkeypatch.setattr(resize_module, "_resize_record", dies_on_the_third)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        resize_broden(source.root, tmp_path / "other", 12, workers=1)
    monkeypatch.setattr(resize_module, "_resize_record", original)
    result = resize_broden(source.root, tmp_path / "other", 10, workers=1)
    assert result.reused == 0 and result.report.ok


def test_refusals(source, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(NetDissectError, match="not an empty directory"):
        resize_broden(source.root, tmp_path / "full", 12)
    with pytest.raises(NetDissectError, match="inside the source"):
        resize_broden(source.root, source.root / "sub", 12)
    with pytest.raises(NetDissectError, match=r"--size 1 must be"):
        resize_broden(source.root, tmp_path / "x", 1)
    (tmp_path / ".y.resizing").mkdir()
    with pytest.raises(NetDissectError, match="was not made by"):
        resize_broden(source.root, tmp_path / "y", 12)
    (tmp_path / ".y.resizing" / ".netdissect-resize.json").write_text("not json")  # no proof it is ours
    with pytest.raises(NetDissectError, match="was not made by"):
        resize_broden(source.root, tmp_path / "y", 12)
    assert (tmp_path / ".y.resizing" / ".netdissect-resize.json").read_text() == "not json"
    assert (tmp_path / "full" / "x").read_text() == "mine"


def test_cli(source, tmp_path, capsys):
    out = tmp_path / "r10"
    assert main(["data", "resize", str(source.root), "--size", "10", "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "OK: no problems found" in printed and "3 images at 10 px (masks 5 px)" in printed
    assert check_dataset(out).ok
    assert main(["data", "resize", str(tmp_path / "missing"), "--size", "10", "--out",
                 str(tmp_path / "r")]) == 1
    assert "not a Broden dataset" in capsys.readouterr().err


def test_corrupt_source_mask_names_file_and_line_then_resumes(source, tmp_path):
    from netdissect.errors import DatasetError
    mask = source.mask_path(1, "material")
    good = mask.read_bytes()
    mask.write_bytes(good[:40])
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"img1_material_1.png: .*corrupt.*index.csv line 3"):
        resize_broden(source.root, out, 12, workers=1)
    assert not out.exists()
    mask.write_bytes(good)
    result = resize_broden(source.root, out, 12, workers=1)
    assert result.report.ok and result.reused > 0
