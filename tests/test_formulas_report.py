"""Formulas in the report: each card's formula, its region drawn on the strips, a filter by operator."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from engine_data import TinyNet, make_dataset
from PIL import Image

import netdissect
from netdissect.data.broden import BrodenDataset
from netdissect.formulas.search import formula_mask
from netdissect.report import render_report
from netdissect.report.tiles import IN_REGION, compose_overlays, visible_radius
from netdissect.runs import load_layer

LAYER = "relu2"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("formulas-report")
    root = make_dataset(base / "data", n_images=10, seed=4)
    out = base / "run"
    netdissect.dissect(TinyNet(), [LAYER, "conv3"], root, out=out, progress=False, workers=0, quantile=0.05,
                       min_category_images=0, formula_length=2, beam=3)
    render_report(out, top_k=4)
    return out


def _data(page):
    text = re.search(r'<script id="nd-data" type="application/json">(.*?)</script>', page.read_text(), re.S).group(1)
    return json.loads(text)


def _cell(sheet: np.ndarray, row: int, col: int, hw):
    return sheet[row * hw[0]:(row + 1) * hw[0], col * hw[1]:(col + 1) * hw[1]]


def test_cards_carry_the_formula_and_its_region(report):
    layer = load_layer(report, LAYER)
    formulas = layer.formulas
    data = _data(report / "report" / f"layer-{LAYER}.html")
    assert data["formulas"]["length"] == 2
    tiles = data["tiles"]
    assert len(tiles["fsheets"]) == len(tiles["sheets"])
    ds = BrodenDataset(json.loads((report / "config.json").read_text())["dataset"]["path"])
    hw = (tiles["sh"], tiles["sw"])
    radius = visible_radius(hw)
    checked = 0
    for u in data["units"]:
        k = u["u"]
        assert u["f"] == formulas.text(k) and abs(u["fi"] - formulas.iou[k]) < 1e-4
        assert u["fo"] == sorted(set(formulas.operators(k)))
        sheet = np.asarray(Image.open(report / "report" / tiles["sheets"][k // tiles["per"]]))
        fsheet = np.asarray(Image.open(report / "report" / tiles["fsheets"][k // tiles["per"]]))
        for image, col, *_ in u.get("x", []):
            drawn = _cell(fsheet, k % tiles["per"], col, hw)
            region = np.isin(_cell(sheet, k % tiles["per"], col, hw), IN_REGION)
            seg = ds.load_segmentation(image)
            shape = formula_mask(formulas.unit_tokens(k), seg.pixel, seg.image_labels, layer.concepts)
            np.testing.assert_array_equal(drawn, compose_overlays(region[None], shape[None], radius)[0])
            checked += 1
    assert checked > 0
    overview = (report / "report" / "index.html").read_text()
    assert "figures/formula_gain.svg" in overview and (report / "report" / "figures" / "formula_gain.svg").exists()


def test_layer_page_filters_by_operator(report):
    from chromium_driver import Chromium, find_chromium
    exe = find_chromium()
    if exe is None:
        pytest.skip("headless Chromium not installed: the browser check of the formula filter is skipped")
    formulas = load_layer(report, LAYER).formulas
    browser = Chromium(exe)
    try:
        browser.open_page()
        browser.navigate((report / "report" / f"layer-{LAYER}.html").as_uri())
        browser.wait_for("window.ndReport.ready === true")
        for op in ("AND", "OR", "AND NOT"):
            want = sum(op in formulas.operators(k) for k in range(formulas.units))
            assert browser.evaluate(f"window.ndReport.setFilter({{op: {json.dumps(op)}}}).matching") == want
        single = sum(not formulas.operators(k) for k in range(formulas.units))
        assert browser.evaluate("window.ndReport.setFilter({op: 'single'}).matching") == single
        browser.evaluate("window.ndReport.setFilter({op: ''})")
        assert browser.evaluate("window.ndReport.matching") == formulas.units
        text = browser.evaluate("document.querySelector('#cards .card .formula code').textContent")
        assert text in {formulas.text(k) for k in range(formulas.units)}
        browser.choose("f-view", "formula")
        assert browser.evaluate("getComputedStyle(document.querySelector('#cards .tile .fovl')).display") == "block"
        assert browser.evaluate("getComputedStyle(document.querySelector('#cards .tile .ovl')).display") == "none"
    finally:
        browser.close()


def test_formula_figure_png_twin_only_on_request(report):
    """The formula figure follows --figure-png like the others: drawn by the report from
    summary.json, SVG always, the PNG twin (and its link) only when asked."""
    summary = json.loads((report / "summary.json").read_text())
    gains = {name: s["formulas"]["mean_gain_by_length"] for name, s in summary["layers"].items()}
    svg = (report / "report" / "figures" / "formula_gain.svg").read_text()
    for name, values in gains.items():
        for n, g in enumerate(values, start=1):
            assert f"{name}, length &lt;= {n}: mean gain {g:.4f}" in svg
    assert not (report / "report" / "figures" / "formula_gain.png").exists()
    assert "formula_gain.png" not in (report / "report" / "index.html").read_text()
    render_report(report, top_k=4, figure_png=True)
    assert (report / "report" / "figures" / "formula_gain.png").is_file()
    assert 'href="figures/formula_gain.png" download' in (report / "report" / "index.html").read_text()
    render_report(report, top_k=4)          # back as the module's other tests expect it
