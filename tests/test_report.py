"""The HTML report as files: rendered from a small fake-but-consistent run (run_fixture) and
from real dissections; what the pages say is checked against summary.json and the saved arrays.
The browser checks are in test_report_browser.py, the rf-mode region check in test_report_rf.py."""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from run_fixture import DEFAULT_LAYERS, build_run, nudge_to_threshold

from netdissect.errors import RunError
from netdissect.report import render_report
from netdissect.report import tiles as tiles_mod
from netdissect.report.colors import FIXED_CATEGORY_COLORS, category_colors
from netdissect.report.runview import load_run


def page_data(page: Path, elem: str = "nd-data"):
    text = page.read_text(encoding="utf-8")
    blob = re.search(rf'<script id="{elem}" type="application/json">(.*?)</script>', text, re.S).group(1)
    return json.loads(blob)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    out = build_run(base / "run", extra_warnings=["a warning recorded by the run"],
                    skipped=[{"line": 1001, "image": "000999.jpg", "error": "truncated JPEG"}])
    nudge_to_threshold(out, DEFAULT_LAYERS[1][0])
    render_report(out, top_k=5)
    return out


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: List[str] = []
        self.ids: List[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and v is not None:
                self.refs.append(v)
            if k == "id" and v:
                self.ids.append(v)


# ----------------------------------------------------------------------------- files

def test_report_files_and_contract(run_dir: Path):
    rep = run_dir / "report"
    assert (rep / "index.html").is_file() and (rep / "concepts.html").is_file()
    assert list((rep / "images").glob("atlas-*.jpg"))
    for name, units, _ in DEFAULT_LAYERS:
        assert (rep / f"layer-{name}.html").is_file()
        sheets = sorted((rep / "strips" / name).glob("overlay-*.png"))
        assert len(sheets) == math.ceil(units / tiles_mod.UNITS_PER_SHEET)
        for stem in (f"{name}_unique_per_category", f"{name}_iou_histogram"):
            assert (run_dir / "figures" / (stem + ".svg")).is_file()
            assert (rep / "figures" / (stem + ".svg")).is_file()
            assert not (rep / "figures" / (stem + ".png")).exists(), "PNG twins only on request"
        assert (rep / "data" / name / "units.csv").read_bytes() == (run_dir / name / "units.csv").read_bytes()
    assert (rep / "data" / "summary.json").read_bytes() == (run_dir / "summary.json").read_bytes()
    assert not list(run_dir.glob(".report-*")), "staging folders must be cleaned up"
    files = [p for p in rep.rglob("*") if not p.is_dir()]
    assert all(not p.is_symlink() and p.stat().st_nlink == 1 for p in files), "no links: the folder travels alone"


def test_report_references_stay_inside(run_dir: Path):
    rep = run_dir / "report"
    for page in rep.glob("*.html"):
        parser = _Refs()
        text = page.read_text(encoding="utf-8")
        parser.feed(text)
        for ref in parser.refs:
            if ref.startswith("#") or ref.startswith("data:"):
                continue
            assert not re.match(r"^[a-z]+:", ref), f"{page.name}: external reference {ref}"
            target = (rep / ref.split("#")[0]).resolve()
            assert rep.resolve() in target.parents or target == rep.resolve()
            assert target.exists(), f"{page.name}: broken reference {ref}"
        assert "http://" not in re.sub(r'xmlns(:\w+)?="http://www\.w3\.org/[^"]*"', "", text)
        assert "https://" not in text
    css = (rep / "assets" / "style.css").read_text(encoding="utf-8")
    assert "http" not in css and "@import" not in css and "url(" not in css
    assert "http" not in (rep / "assets" / "report.js").read_text(encoding="utf-8")


def test_pages_escape_what_they_show(tmp_path: Path):
    """A label with markup in it is text on every page, never markup (Jinja2 autoescape)."""
    out = build_run(tmp_path / "run", images=12, size=64, layers=(("conv5", 10, 6),), k=3)
    z = dict(np.load(out / "conv5" / "iou.npz"))
    best = z["iou"].argmax(1)[0]
    z["labels"] = z["labels"].astype("<U64")
    z["labels"][best] = '<img src=x onerror="alert(1)">'
    np.savez(out / "conv5" / "iou.npz", **z)
    render_report(out, top_k=3)
    for page in (out / "report").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert '<img src=x' not in text, page.name


def test_overlay_region_is_the_thresholded_upsampled_map(run_dir: Path):
    """The drawn region of the strongest unit, read back from the overlay sheet, equals its
    stored map upsampled as the run did (bilinear here) and thresholded strictly."""
    run = load_run(run_dir)
    layer = run.layers[0]
    best = max(layer.units, key=lambda u: u.iou)
    data = page_data(run_dir / "report" / f"layer-{layer.dirname}.html")
    unit = next(u for u in data["units"] if u["u"] == best.unit)
    per = data["tiles"]["per"]
    sheet = np.asarray(Image.open(run_dir / "report" / data["tiles"]["sheets"][best.unit // per]))
    sh, sw = data["tiles"]["sh"], data["tiles"]["sw"]
    res = layer.result
    r = best.unit % per
    drawn_any = False
    for image, j, *_ in unit["x"]:
        assert image == int(res.topk_index[best.unit, j])
        cell = sheet[r * sh:(r + 1) * sh, j * sw:(j + 1) * sw]
        drawn = np.isin(cell, tiles_mod.IN_REGION)
        amap = torch.from_numpy(res.topk_maps[best.unit, j].astype(np.float32))[None, None]
        scored = (F.interpolate(amap, size=(sh, sw), mode="bilinear", align_corners=False)[0, 0]
                  > float(res.thresholds[best.unit])).numpy()
        np.testing.assert_array_equal(drawn, scored)
        drawn_any |= bool(drawn.any())
        assert (cell[~scored] != tiles_mod.FILL).all()
    assert drawn_any
    label_edges = np.isin(sheet[r * sh:(r + 1) * sh], [tiles_mod.LABEL, tiles_mod.LABEL_ALT,
                                                      tiles_mod.LABEL_IN, tiles_mod.LABEL_ALT_IN])
    assert label_edges.any(), "the label's ground truth is outlined"


def test_contour_only_around_parts_large_enough_to_see():
    region = np.zeros((1, 40, 40), bool)
    region[0, 5:25, 5:25] = True          # a large part: contoured, translucent inside
    region[0, 33, 33] = True              # specks: no ring, drawn nearly opaque
    region[0, 36, 8] = True
    out = tiles_mod.compose_overlays(region, np.zeros_like(region), radius=2)[0]
    assert (out[5:25, 5:25] == tiles_mod.FILL).all()
    assert out[33, 33] == tiles_mod.SPECK and out[36, 8] == tiles_mod.SPECK
    ring = out == tiles_mod.CONTOUR
    assert ring[4, 5:25].all() and ring[25, 5:25].all() and ring[5:25, 4].all()
    assert not ring[30:, :].any() and not ring[:, 30:].any(), "no ring around the specks"
    assert (out[~region[0] & ~ring] == tiles_mod.DIM).all()


def test_category_colors_are_stable():
    a = category_colors(["object", "scene", "weird"])
    b = category_colors(["weird", "scene", "object", "part"])
    assert a["object"] == b["object"] == FIXED_CATEGORY_COLORS["object"]
    assert len(set(category_colors(["color", "object", "part", "material", "scene", "texture"]).values())) == 6


def test_overview_numbers_are_summary_json(run_dir: Path):
    text = (run_dir / "report" / "index.html").read_text(encoding="utf-8")
    assert "a warning recorded by the run" in text
    assert "000999.jpg" in text and "1 image(s) were skipped" in text
    assert "images labeled" in text
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = re.findall(r'<tr data-layer="([^"]+)" data-units="(\d+)" data-detectors="(\d+)" data-unique="(\d+)"', text)
    assert len(rows) == len(DEFAULT_LAYERS)
    for name, units, det, uniq in rows:
        info = summary["layers"][name]
        assert (int(units), int(det), int(uniq)) == (info["units"], info["detectors"], info["unique_detectors"])
        page = (run_dir / "report" / f"layer-{name}.html").read_text(encoding="utf-8")
        head = re.search(r'<header class="page-head" data-layer="[^"]+" data-units="(\d+)" data-detectors="(\d+)" data-unique="(\d+)"', page)
        assert tuple(map(int, head.groups())) == (info["units"], info["detectors"], info["unique_detectors"])
    for link in ("data/summary.json", f"data/{DEFAULT_LAYERS[0][0]}/units.csv",
                 f"figures/{DEFAULT_LAYERS[0][0]}_unique_per_category.svg"):
        assert f'href="{link}"' in text
    assert ".png\" download" not in text, "no link to a PNG twin that was not written"


def test_figure_png_twins_on_request(run_dir: Path, tmp_path: Path):
    """netdissect report OUT --figure-png: each figure also as PNG, in OUT/figures/ and the
    report, and linked next to its SVG."""
    from netdissect.cli.commands import main
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report", "figures"))
    assert main(["report", str(copy), "--figure-png", "--quiet"]) == 0
    svgs = sorted(p.name for p in (copy / "report" / "figures").glob("*.svg"))
    assert len(svgs) == 3 * len(DEFAULT_LAYERS) + 1
    text = "".join(p.read_text(encoding="utf-8") for p in (copy / "report").glob("*.html"))
    for name in svgs:
        png = name[:-4] + ".png"
        with Image.open(copy / "report" / "figures" / png) as im:
            assert im.format == "PNG" and im.width > 300
        assert (copy / "figures" / png).read_bytes() == (copy / "report" / "figures" / png).read_bytes()
        if "units_per_concept" not in name:     # shown only where a layer has detectors
            assert f'href="figures/{png}" download' in text


def test_detector_status_is_decided_once_in_python(run_dir: Path):
    """IoU 0.040022 shows as 0.04 but is a detector: the flag comes from Python, and the flags
    add up to summary.json's count (they disagreed when the page compared rounded IoUs)."""
    name, units, _ = DEFAULT_LAYERS[1]
    data = page_data(run_dir / "report" / f"layer-{name}.html")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sum(u["d"] for u in data["units"]) == summary["layers"][name]["detectors"]
    edge = [u for u in data["units"] if u["i"] == 0.04]
    assert edge and all(u["d"] == 1 for u in edge)
    rows = list(csv.DictReader(open(run_dir / name / "units.csv")))
    for u in data["units"]:
        row = rows[u["u"]]
        assert u["l"] == row["label"] and u["c"] == row["category"]
        assert abs(u["i"] - float(row["iou"])) < 1e-4
        assert u["d"] == int(float(row["iou"]) > summary["parameters"]["iou_threshold"] or u["i"] == 0.04)


def test_one_iou_scale_for_every_layer(run_dir: Path):
    scales = {page_data(run_dir / "report" / f"layer-{n}.html")["scale"] for n, _, _ in DEFAULT_LAYERS}
    assert len(scales) == 1


def test_every_top_label_has_a_concept_section(run_dir: Path):
    parser = _Refs()
    parser.feed((run_dir / "report" / "concepts.html").read_text(encoding="utf-8"))
    ids = set(parser.ids)
    from netdissect.report.html import concept_slug
    run = load_run(run_dir)
    for layer in run.layers:
        for u in layer.units:
            assert concept_slug(u.label, u.category) in ids, (layer.name, u.unit, u.label)
            if u.detector:
                assert f'href="layer-{layer.dirname}.html#unit-{u.unit}"' in \
                    (run_dir / "report" / "concepts.html").read_text(encoding="utf-8")
        data = page_data(run_dir / "report" / f"layer-{layer.dirname}.html")
        for u in data["units"]:
            for lab, cat, _, linked in u["r"]:
                assert bool(linked) == (concept_slug(lab, cat) in ids)


def test_rerender_without_the_dataset_says_why(run_dir: Path, tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report"))
    cfg = json.loads((copy / "config.json").read_text())
    cfg["dataset"]["path"] = str(tmp_path / "nowhere")
    (copy / "config.json").write_text(json.dumps(cfg))
    index = render_report(copy)
    assert "not found" in index.read_text(encoding="utf-8")
    data = page_data(copy / "report" / f"layer-{DEFAULT_LAYERS[0][0]}.html")
    assert all("x" not in u for u in data["units"])


def test_paper_strips_on_request(run_dir: Path, tmp_path: Path):
    """netdissect report OUT --strips: OUT/<layer>/unit_<n>.jpg, the images with their overlays."""
    from netdissect.cli.commands import main
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report"))
    assert main(["report", str(copy), "--top-k", "4", "--strips", "--quiet"]) == 0
    name, units, _ = DEFAULT_LAYERS[0]
    strips = sorted((copy / name).glob("unit_*.jpg"))
    assert len(strips) == units
    run = load_run(copy)
    best = max(run.layers[0].units, key=lambda u: u.iou)
    im = np.asarray(Image.open(copy / name / f"unit_{best.unit}.jpg").convert("RGB")).astype(int)
    assert im.shape[:2] == (128, 4 * 128 + 3 * 3)
    magenta = np.abs(im - np.array([232, 28, 170])).sum(-1) < 90
    assert magenta.sum() > 50, "the unit's contour is drawn"


def test_missing_config_is_a_clear_error(tmp_path: Path):
    with pytest.raises(RunError, match="config.json"):
        render_report(tmp_path)


def test_report_of_a_real_dissection(tmp_path: Path):
    """End to end with the engine on a split + limit selection: the tiles show the images the
    run selected (indices into that selection), each image once in the atlases."""
    from run_fixture import make_dataset

    import netdissect
    from netdissect.data.broden import BrodenDataset

    data = make_dataset(tmp_path / "data", images=20, size=64, seed=3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.MaxPool2d(4), torch.nn.Conv2d(8, 12, 3, padding=1),
                                torch.nn.ReLU())
    out = tmp_path / "run"
    netdissect.dissect(model, ["3"], data, out=out, progress=False, split="train", limit=10,
                       top_k=4, batch_size=4, workers=0, device="cpu", min_category_images=0)
    render_report(out, top_k=4)
    blob = page_data(out / "report" / "layer-3.html")
    assert len(blob["units"]) == 12
    ds = BrodenDataset(data, split="train", limit=10)
    topk = np.load(out / "3" / "topk.npz")
    for u in blob["units"]:
        shown = [blob["atlas"]["slot"][str(t[0])][3] for t in u["x"]]
        assert shown == [ds.records[i].image for i in topk["image_index"][u["u"]][:4]]
    slots = [tuple(v[:3]) for v in blob["atlas"]["slot"].values()]
    assert len(slots) == len(set(slots))


def _demo_shaped_run(out: Path, dataset: Path, layers, k: int = 8, seed: int = 0) -> Path:
    """A run directory of the given layer shapes over ``dataset``, written with the run
    format's own writers: random IoU and smooth random top-k maps (the report's cost and size
    depend on the shapes, not on what the units detect)."""
    from netdissect.data.broden import BrodenDataset
    from netdissect.engine.pipeline import LayerResult
    from netdissect.runs import units_csv
    ds = BrodenDataset(dataset)
    rng = np.random.default_rng(seed)
    concepts = list(ds.concepts)
    cats = list(ds.categories)
    summary = {"layers": {}, "categories": cats, "category_image_counts": ds.category_image_counts(),
               "images": len(ds), "skipped_images": [], "warnings": [],
               "parameters": {"quantile": 0.005, "iou_threshold": 0.04, "upsample": "bilinear", "top_k": k}}
    for name, units, h in layers:
        coarse = rng.normal(size=(units, k, max(2, h // 4), max(2, h // 4))).astype(np.float32)
        maps = F.interpolate(torch.from_numpy(coarse), size=(h, h), mode="bilinear", align_corners=False).numpy()
        maps = np.maximum(maps + 0.3 * rng.normal(size=maps.shape), 0).astype(np.float32)
        result = LayerResult(
            name=name, thresholds=np.quantile(maps.reshape(units, -1), 0.97, axis=1).astype(np.float32),
            iou=(rng.random((units, len(concepts))) ** 6 * 0.12).astype(np.float32),
            concepts=np.array(concepts, np.int64), concept_names=[ds.labels[c].name for c in concepts],
            concept_categories=[ds.labels[c].category for c in concepts], categories=cats,
            iou_threshold=0.04, map_shape=(h, h),
            topk_index=np.stack([rng.choice(len(ds), k, replace=False) for _ in range(units)]),
            topk_score=maps.reshape(units, k, -1).max(-1), topk_maps=maps)
        d = out / name
        d.mkdir(parents=True)
        np.save(d / "thresholds.npy", result.thresholds)
        np.savez(d / "iou.npz", iou=result.iou, label_numbers=result.concepts,
                 labels=np.array(result.concept_names), categories=np.array(result.concept_categories))
        np.savez(d / "topk.npz", image_index=result.topk_index, score=result.topk_score,
                 maps=result.topk_maps.astype(np.float16))
        (d / "units.csv").write_text(units_csv(result))
        summary["layers"][name] = dict(result.summary(), directory=name)
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "config.json").write_text(json.dumps({"manifest": {"model": {"spec": "demo-shaped"}},
                                                 "dataset": {"path": str(dataset)}}))
    return out


DEMO_LAYERS = (("features.3", 24, 56), ("features.7", 64, 28), ("features.14", 160, 14),
               ("features.18", 1280, 7))


def test_demo_shaped_report_stays_within_its_size_budget(tmp_path: Path):
    """The demo's layers (MobileNetV2 features.3/7/14/18: 24/64/160/1,280 units with 56/28/14/7
    maps, top 8 of 224 px synthetic images): the file count is the demo's, and the bytes per
    image and per unit extrapolate to the demo (at most 1,000 distinct images) under 25 MB."""
    from run_fixture import make_dataset
    images = 48
    data = make_dataset(tmp_path / "data", images=images, size=224, seed=1)
    out = _demo_shaped_run(tmp_path / "run", data, DEMO_LAYERS)
    render_report(out, workers=1)
    rep = out / "report"
    files = [p for p in rep.rglob("*") if p.is_file()]
    atlases = list((rep / "images").glob("atlas-*.jpg"))
    image_bytes = sum(p.stat().st_size for p in atlases)
    rest = sum(p.stat().st_size for p in files) - image_bytes
    # the demo shows up to 1,000 images: 16 atlases instead of this run's
    demo_files = len(files) - len(atlases) + math.ceil(1000 / tiles_mod.ATLAS_COLS ** 2)
    assert demo_files < 400
    assert len(list((rep / "strips" / "features.18").glob("overlay-*.png"))) == 1280 // tiles_mod.UNITS_PER_SHEET
    data = page_data(rep / "layer-features.18.html")
    assert len(data["units"]) == 1280 and all(len(u["x"]) == 8 for u in data["units"])
    demo_bytes = image_bytes / images * 1000 + rest
    assert demo_bytes < 25e6, f"{demo_bytes / 1e6:.1f} MB"
    assert all(p.stat().st_nlink == 1 for p in files)


def test_workers_render_the_same_report(tmp_path: Path):
    """Forked workers (images decoded and atlases written in workers, overlay sheets drawn in
    workers) write the same files, byte for byte, as one process."""
    from run_fixture import make_dataset
    data = make_dataset(tmp_path / "data", images=90, size=64, seed=2)
    one = _demo_shaped_run(tmp_path / "one", data, (("features.9", 160, 8),), seed=4)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    render_report(one, workers=1)
    render_report(two, workers=2)
    files = sorted(p.relative_to(one / "report") for p in (one / "report").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two / "report") for p in (two / "report").rglob("*") if p.is_file())
    assert len([f for f in files if f.parts[0] == "images"]) == 2      # > 64 images: the workers decode
    assert len([f for f in files if f.parts[0] == "strips"]) == 10     # >= 4 sheets per worker: they draw
    for f in files:
        assert (one / "report" / f).read_bytes() == (two / "report" / f).read_bytes(), f


def test_an_image_error_in_a_worker_stops_the_report(tmp_path: Path):
    """A missing image, met by a forked worker: the error names it, no worker waits forever for
    masks that will not come, nothing of the report stays behind."""
    import signal

    from run_fixture import make_dataset

    from netdissect.data.broden import BrodenDataset
    from netdissect.errors import DatasetError
    data = make_dataset(tmp_path / "data", images=90, size=64, seed=2)
    out = _demo_shaped_run(tmp_path / "run", data, (("features.9", 160, 8),), seed=4)
    victim = BrodenDataset(data).records[70].image
    (data / "images" / victim).unlink()

    def hung(*_):
        raise AssertionError("render_report hung after a worker's error")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        with pytest.raises(DatasetError, match=re.escape(victim)):
            render_report(out, workers=2)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not (out / "report").exists() and not list(out.glob(".report-*"))


def test_experiment_page_escapes_its_tables(tmp_path: Path):
    from netdissect.report.experiments import write_experiment_page
    (tmp_path / "numbers.csv").write_text('name,value\n<b onclick="x()">unit</b>,1\n')
    page = write_experiment_page(tmp_path, "A <title>", "desc & more").read_text(encoding="utf-8")
    assert "<b onclick" not in page and "&lt;b onclick=" in page
    assert "<title>A &lt;title&gt;</title>" in page and "desc &amp; more" in page


def test_heat_maps_of_large_maps_are_averaged_down():
    maps = np.zeros((2, 56, 56), np.float32)
    maps[0, :2, :2] = 4.0                  # one 2 x 2 block: averaged into one cell
    maps[1, 10, 20] = 2.0
    q, top = tiles_mod.heat_maps(maps)
    assert q.shape == (2, 28, 28) and top == 4.0
    assert q[0, 0, 0] == 255 and q[1, 5, 10] == 32    # mean 0.5 of 4.0 -> 255 / 8, rounded
    small, _ = tiles_mod.heat_maps(maps[:, :7, :7])
    assert small.shape == (2, 7, 7)


def test_label_outline_leaves_small_objects_visible():
    labels = np.zeros((1, 20, 20), bool)
    labels[0, 8:10, 8:10] = True           # a 2 x 2 object
    labels[0, 15:, 15:] = True             # a part at the image's corner
    out = tiles_mod.compose_overlays(np.zeros_like(labels), labels, radius=2)[0]
    outline = np.isin(out, [tiles_mod.LABEL, tiles_mod.LABEL_ALT])
    assert not outline[8:10, 8:10].any(), "the object itself is not painted over"
    assert outline[7, 8:10].all() and outline[10, 8:10].all() and outline[8:10, 7].all()
    assert outline[19, 15:].all() and outline[15:, 19].all(), "on the image's edge where it meets it"
