"""The synthetic Broden generator: format, statistics, content, determinism."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netdissect.data import synthetic as S
from netdissect.data.labelpng import read_label_png
from netdissect.errors import NetDissectError

N_IMAGES, SIZE = 12, 64


def read_csv(path: Path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def read_dicts(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return S.generate_synthetic(tmp_path_factory.mktemp("syn") / "broden", images=N_IMAGES,
                                size=SIZE, seed=0, workers=1)


@pytest.fixture(scope="module")
def index(data):
    return read_dicts(data / "index.csv")


def test_vocabulary_meets_requirements():
    counts = {c: len(S.CATEGORY_LABELS[c]) for c in S.CATEGORIES}
    assert counts["color"] == 11 and set(S.COLOR_NAMES) == {
        "black", "blue", "brown", "green", "grey", "orange", "pink", "purple", "red", "white",
        "yellow"}
    assert counts["texture"] >= 10 and counts["material"] >= 5 and counts["object"] >= 10
    assert counts["scene"] >= 5
    assert len({o for objs in S.PART_OF.values() for o in objs}) >= 3
    numbers = [S.LABELS[n] for n, _ in S.VOCABULARY]
    assert numbers == list(range(1, len(S.VOCABULARY) + 1))
    assert all(set(objs) <= set(S.OBJECT_NAMES) for objs in S.PART_OF.values())


def test_layout_and_files(data, index):
    header, _ = read_csv(data / "index.csv")
    assert header == ["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part",
                      "material", "scene", "texture"]
    assert len(index) == N_IMAGES
    assert {r["split"] for r in index} == {"train", "val"}
    assert sum(r["split"] == "val" for r in index) == N_IMAGES // 5
    listed = set()
    for row in index:
        ih, iw, sh, sw = (int(row[k]) for k in ("ih", "iw", "sh", "sw"))
        assert (ih, iw, sh, sw) == (SIZE, SIZE, SIZE // 2, SIZE // 2)
        with Image.open(data / "images" / row["image"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (iw, ih)
        listed.add(row["image"])
        assert row["color"], "every image has a colour mask"
        for cat in S.PIXEL_CATEGORIES:
            for name in filter(None, row[cat].split(";")):
                assert read_label_png(data / "images" / name).shape == (sh, sw)
                listed.add(name)
    on_disk = {p.name for p in (data / "images").iterdir()}
    assert on_disk == listed, "no stray files, none missing"
    assert not list(data.parent.glob(".broden.*")), "temporary directories are cleaned up"


def test_labels_belong_to_their_category(data, index):
    labels = {int(r["number"]): r for r in read_dicts(data / "label.csv")}
    cat_of = {n: r["category"].split("(")[0] for n, r in labels.items()}
    for row in index:
        for cat in S.PIXEL_CATEGORIES:
            for name in filter(None, row[cat].split(";")):
                found = set(np.unique(read_label_png(data / "images" / name)).tolist()) - {0}
                assert found <= set(labels), (name, found - set(labels))
                assert {cat_of[n] for n in found} <= {cat}, name
        for cat in S.IMAGE_CATEGORIES:
            for text in filter(None, row[cat].split(";")):
                assert cat_of[int(text)] == cat


def test_tables_are_consistent_and_statistics_real(data, index):
    labels = read_dicts(data / "label.csv")
    cats = read_dicts(data / "category.csv")
    assert [c["name"] for c in cats] == list(S.CATEGORIES)
    assert [int(r["number"]) for r in labels] == list(range(1, len(S.VOCABULARY) + 1))
    # recompute frequency / coverage from the files
    freq, cover, cat_freq = {}, {}, {c: 0 for c in S.CATEGORIES}
    for row in index:
        npix = int(row["sh"]) * int(row["sw"])
        for cat in S.CATEGORIES:
            if not row[cat]:
                continue
            cat_freq[cat] += 1
            if cat in S.PIXEL_CATEGORIES:
                plane = read_label_png(data / "images" / row[cat])
                vals, cnt = np.unique(plane, return_counts=True)
                for v, c in zip(vals.tolist(), cnt.tolist()):
                    if v:
                        freq[v] = freq.get(v, 0) + 1
                        cover[v] = cover.get(v, 0.0) + c / npix
            else:
                for v in map(int, row[cat].split(";")):
                    freq[v] = freq.get(v, 0) + 1
                    cover[v] = cover.get(v, 0.0) + 1.0
    for r in labels:
        n = int(r["number"])
        name, cat = S.VOCABULARY[n - 1]
        assert r["name"] == name
        assert r["category"] == f"{cat}({freq.get(n, 0)})"
        assert int(r["frequency"]) == freq.get(n, 0)
        assert float(r["coverage"]) == pytest.approx(cover.get(n, 0.0), abs=2e-6)
        assert float(r["coverage"]) <= int(r["frequency"]) + 1e-9
    by_number = {int(r["number"]): r for r in labels}
    for c in cats:
        rows = read_dicts(data / f"c_{c['name']}.csv")
        assert [int(r["code"]) for r in rows] == list(range(1, len(rows) + 1))
        numbers = [int(r["number"]) for r in rows]
        assert numbers == list(S.CATEGORY_LABELS[c["name"]])
        assert (int(c["first"]), int(c["last"]), int(c["count"])) == (
            min(numbers), max(numbers), len(numbers))
        assert int(c["frequency"]) == cat_freq[c["name"]]
        for r in rows:
            lab = by_number[int(r["number"])]
            assert (r["name"], r["frequency"], r["coverage"]) == (
                lab["name"], lab["frequency"], lab["coverage"])


def test_content_is_rich(data, index):
    scenes = [r["scene"] for r in index]
    assert all(r["texture"] for r in index), "every image has a texture"
    assert any(scenes), "some images have a scene"
    objects_per_image = []
    for row in index:
        if row["object"]:
            plane = read_label_png(data / "images" / row["object"])
            objects_per_image.append(len(set(np.unique(plane).tolist()) - {0}))
    assert max(objects_per_image) >= 3
    assert np.mean(objects_per_image) >= 2


def test_parts_lie_on_their_objects(data, index):
    seen = 0
    for row in index:
        if not row["part"]:
            continue
        part = read_label_png(data / "images" / row["part"])
        obj = read_label_png(data / "images" / row["object"])
        assert part.any(), "a part file is written only when parts are visible"
        for p in set(np.unique(part).tolist()) - {0}:
            owners = {S.LABELS[o] for o in S.PART_OF[S.VOCABULARY[p - 1][0]]}
            on = obj[part == p]
            assert np.isin(on, list(owners)).all(), S.VOCABULARY[p - 1][0]
            seen += 1
    assert seen > 0


def test_scene_labels_follow_the_rule(data, index):
    """Necessary conditions of scene_rule, checked on the written masks."""
    for row in index:
        if not row["scene"]:
            continue
        scene = S.VOCABULARY[int(row["scene"]) - 1][0]
        obj = read_label_png(data / "images" / row["object"])
        mat = read_label_png(data / "images" / row["material"])
        present = {S.VOCABULARY[v - 1][0] for v in np.unique(obj).tolist() if v}
        frac = {m: float((mat == S.LABELS[m]).mean()) for m in S.MATERIAL_NAMES}
        need = {"seaside": {"boat"}, "street": {"car", "house"}, "forest": {"tree"},
                "playground": {"person", "ball"}, "sky": {"cloud"}}.get(scene, set())
        assert need <= present, (row["image"], scene, present)
        if scene == "seaside":
            assert frac["water"] >= S.SURFACE_FRACTION
        if scene == "garden":
            assert frac["grass"] >= S.SURFACE_FRACTION and present & {"tree", "flower"}
        if scene == "sky":
            assert present & {"kite", "bird"}


def test_scene_rule_priorities():
    assert S.scene_rule({"boat": 1, "car": 1, "house": 1}, {"water": 0.3}) == "seaside"
    assert S.scene_rule({"boat": 1, "car": 1, "house": 1}, {"water": 0.05}) == "street"
    assert S.scene_rule({"tree": 4}, {"grass": 0.5}) == "forest"
    assert S.scene_rule({"tree": 3}, {"grass": 0.5}) == "garden"
    assert S.scene_rule({"flower": 1}, {"grass": 0.05}) is None
    assert S.scene_rule({"person": 2, "ball": 1}, {}) == "playground"
    assert S.scene_rule({"cloud": 1, "bird": 1}, {}) == "sky"
    assert S.scene_rule({"cloud": 1, "sun": 1}, {}) is None


def test_color_naming_of_pure_colors():
    names = {"red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 255),
             "yellow": (255, 255, 0), "white": (255, 255, 255), "black": (0, 0, 0),
             "grey": (128, 128, 128), "orange": (255, 140, 0), "pink": (255, 170, 200),
             "purple": (128, 0, 128), "brown": (120, 70, 30)}
    rgb = np.array([list(names.values())], dtype=np.uint8)
    got = [S.COLOR_NAMES[i - 1] for i in S.name_colors(rgb)[0]]
    assert got == list(names)
    for name, proto in S.COLOR_PROTOTYPES.items():
        assert S.COLOR_NAMES[S.name_colors(np.array([[proto]], np.uint8))[0, 0] - 1] == name
    assert S.name_colors(np.array([[[0, 255, 255]]], np.uint8), max_distance=1.0)[0, 0] == 0


def test_planted_colors_mean_what_they_mean_in_broden():
    """The synthetic rule (nearest prototype) and Broden's w2color table (data/colors.py) use the
    same 11 names and name every prototype the same; only the label order differs."""
    from netdissect.data.colors import COLOR_NAMES as BRODEN_NAMES
    from netdissect.data.colors import color_codes
    assert sorted(S.COLOR_NAMES) == sorted(BRODEN_NAMES)
    protos = np.array([list(S.COLOR_PROTOTYPES.values())], dtype=np.uint8)
    assert [BRODEN_NAMES[c - 1] for c in color_codes(protos)[0]] == list(S.COLOR_PROTOTYPES)


def test_color_mask_matches_pixels_through_jpeg():
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (255, 0, 0)
    img[:, 32:] = (0, 0, 255)
    _, decoded = S.encode_jpeg(img)
    colors = S.color_label_map(decoded, (32, 32))
    assert (colors[:, :15] == S.LABELS["red"]).all()
    assert (colors[:, 17:] == S.LABELS["blue"]).all()


def test_written_color_masks_match_the_jpeg(data, index):
    for row in index[:4]:
        with Image.open(data / "images" / row["image"]) as im:
            rgb = np.asarray(im.convert("RGB"))
        mask = read_label_png(data / "images" / row["color"])
        assert (mask == S.color_label_map(rgb, mask.shape)).all()
        assert mask.min() >= 1 and mask.max() <= 11


def test_masks_agree_with_rendering():
    """The label maps line up with the drawn pixels: a uniformly coloured object's pixels
    (away from its edges) have that colour's name."""
    out = S.render_image(0, 3, 128)
    seg = out["object"]
    small = np.asarray(Image.fromarray(out["rgb"]).resize(seg.shape[::-1], Image.BOX))
    named = S.name_colors(small)
    agree = []
    for v in set(np.unique(seg).tolist()) - {0}:
        m = seg == v
        # erode by one pixel to skip the edges
        inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        if inner.sum() > 20:
            vals = named[1:-1, 1:-1][inner]
            agree.append(np.bincount(vals).max() / vals.size)
    assert agree and np.median(agree) > 0.5


def test_determinism(tmp_path, data):
    again = S.generate_synthetic(tmp_path / "again", images=N_IMAGES, size=SIZE, seed=0, workers=2)
    other = S.generate_synthetic(tmp_path / "other", images=N_IMAGES, size=SIZE, seed=1, workers=1)

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = files(data), files(again), files(other)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), "same seed, same bytes"
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(k in c for k in jpgs)
    assert all(a[k] != c[k] for k in jpgs), "another seed, other images"


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(NetDissectError, match="not empty"):
        S.generate_synthetic(out, images=2, size=16, workers=1)
    assert (out / "keep.txt").read_text() == "mine"
    # issue 8: even --overwrite never replaces a folder netdissect did not make
    with pytest.raises(NetDissectError, match="not made by netdissect"):
        S.generate_synthetic(out, images=2, size=16, workers=1, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    S.generate_synthetic(out, images=2, size=16, workers=1)
    S.generate_synthetic(out, images=2, size=16, workers=1, overwrite=True)  # its own dataset: replaced
    assert (out / "index.csv").is_file() and (out / S.DATASET_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"], "no temporary leftovers"
    empty = tmp_path / "empty"
    empty.mkdir()
    S.generate_synthetic(empty, images=1, size=16, workers=1)  # an empty directory is fine
    with pytest.raises(NetDissectError):
        S.generate_synthetic(tmp_path / "x", images=0)


def test_reads_back_through_the_reader(data):
    broden = pytest.importorskip("netdissect.data.broden")
    ds = broden.BrodenDataset(data)
    assert ds.categories == list(S.CATEGORIES)
    assert ds.pixel_categories == list(S.PIXEL_CATEGORIES)
    assert ds.image_categories == list(S.IMAGE_CATEGORIES)
    assert len(ds) == N_IMAGES
    for n, (name, cat) in enumerate(S.VOCABULARY, start=1):
        assert (ds.labels[n].name, ds.labels[n].category) == (name, cat)
    assert ds.concepts == list(range(1, len(S.VOCABULARY) + 1))
    index = read_dicts(data / "index.csv")
    for i in range(len(ds)):
        img = ds.load_image(i)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        seg = ds.load_segmentation(i)
        row = index[i]
        files = [f for c in S.PIXEL_CATEGORIES for f in filter(None, row[c].split(";"))]
        assert seg.pixel.shape == (len(files), SIZE // 2, SIZE // 2)
        for plane, f in zip(seg.pixel, files):
            assert (plane == read_label_png(data / "images" / f)).all()
        expect = sorted(int(v) for c in S.IMAGE_CATEGORIES for v in filter(None, row[c].split(";")))
        assert seg.image_labels.tolist() == expect
        assert seg.labeled.tolist() == [bool(row[c]) for c in S.CATEGORIES]
    report = broden.check_dataset(data, workers=2)
    assert report.ok, report.summary_text()
    assert len(broden.BrodenDataset(data, split="val")) == N_IMAGES // 5
