"""The report in headless Chromium, as its users see it: opened from a zipped copy, every
page's detector counts equal summary.json, no link lacks its target, cards filter (also from
clicks on the category bars), the unit view opens with its images, heat maps and raw toggle,
search finds units across layers and runner-up labels. Screenshots go to test-artifacts/."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from chromium_driver import Chromium, find_chromium
from run_fixture import DEFAULT_LAYERS, build_run, nudge_to_threshold

from netdissect.report import render_report

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# every link of the page as the browser resolved it (the DOM after the script ran)
LINKS = "Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k == "id" and v:
                self.ids.add(v)


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium); "
                    "the browser checks of the report are skipped")
    b = Chromium(exe)
    try:
        b.open_page()
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A rendered report, zipped alone and unpacked elsewhere: it must work by itself."""
    base = tmp_path_factory.mktemp("browser")
    out = build_run(base / "run", extra_warnings=["a warning recorded by the run"])
    nudge_to_threshold(out, DEFAULT_LAYERS[1][0])
    render_report(out, top_k=5)
    archive = shutil.make_archive(str(base / "report"), "zip", root_dir=out, base_dir="report")
    with zipfile.ZipFile(archive) as z:
        z.extractall(base / "x")
    shutil.copy(out / "summary.json", base / "x" / "summary.json")
    return base / "x" / "report"


def _summary(report: Path) -> dict:
    return json.loads((report.parent / "summary.json").read_text())


def _check_links(browser: Chromium, report: Path, links) -> None:
    """Each link leads somewhere: a file of the report, and the anchor on that page."""
    ids_of = {}
    for href in links:
        assert href.startswith("file://"), href
        path, _, frag = href[len("file://"):].partition("#")
        target = Path(unquote(path))
        assert target.exists(), f"no file for {href}"
        assert report.resolve() in target.resolve().parents, f"{href} leaves the report"
        if not frag or target.suffix != ".html":
            continue
        frag = unquote(frag)
        if target.name.startswith("layer-"):
            # routes of the layer page's script: a unit's card or view, or filters
            assert frag.startswith(("unit-", "view-", "cat=", "det=")), href
            continue
        if target not in ids_of:
            parser = _Ids()
            parser.feed(target.read_text(encoding="utf-8"))
            ids_of[target] = parser.ids
        assert frag in ids_of[target], f"{href}: no element #{frag} on {target.name}"


def test_layer_page(browser: Chromium, report: Path):
    name, units, _ = DEFAULT_LAYERS[1]
    info = _summary(report)["layers"][name]
    page = report / f"layer-{name}.html"
    since = len(browser.events)
    browser.navigate(page.as_uri())
    assert browser.evaluate("document.querySelectorAll('nav.top a').length") == 2 + len(DEFAULT_LAYERS)
    assert browser.evaluate("window.ndReport.units") == units
    assert browser.evaluate("window.ndReport.detectors") == info["detectors"]
    shown = browser.evaluate("document.querySelectorAll('#cards .card').length")
    assert shown == min(units, 50)
    # each card shows its top images: dataset image and overlay, both from local files
    tiles = browser.evaluate("document.querySelectorAll('#cards .card')[0].querySelectorAll('.tile').length")
    assert tiles == 5
    backgrounds = browser.evaluate(
        "Array.from(document.querySelectorAll('#cards .tile > div')).slice(0, 10).map(d => getComputedStyle(d).backgroundImage)")
    assert any("images/atlas-" in b for b in backgrounds) and any("overlay-" in b for b in backgrounds)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "report-layer.png")
    _check_links(browser, report, browser.evaluate(LINKS))

    # detectors only: the count equals summary.json (the flag comes from Python)
    browser.evaluate("window.ndReport.setFilter({det: true})")
    assert browser.evaluate("window.ndReport.matching") == info["detectors"]
    assert browser.evaluate("window.ndReport.visibleUnits().every(c => c.detector)")

    # a category bar filters to that category's detectors
    cats = {c: n for c, n in info["detectors_per_category"].items() if n}
    cat = max(cats, key=cats.get)
    browser.evaluate(f"document.querySelector('.catbar[data-cat=\"{cat}\"]').click()")
    browser.wait_for(f"window.ndReport.matching === {cats[cat]}")
    after = browser.evaluate("window.ndReport.visibleUnits()")
    assert {c["cat"] for c in after} == {cat} and all(c["detector"] for c in after)
    browser.screenshot(ARTIFACTS / "report-layer-filtered.png")

    # runner-up labels count in the search when asked
    data = json.loads(browser.evaluate("document.getElementById('nd-data').textContent"))
    runner = next(r[0] for u in data["units"] for r in u["r"])
    top_only = sum(runner.lower() in v["l"].lower() for v in data["units"])
    with_runners = sum(runner.lower() in v["l"].lower() or any(runner.lower() in r[0].lower() for r in v["r"])
                       for v in data["units"])
    assert with_runners > top_only
    browser.evaluate("document.getElementById('f-reset').click()")
    assert browser.evaluate(f"window.ndReport.setFilter({{q: {json.dumps(runner)}}}).matching") == top_only
    assert browser.evaluate(f"window.ndReport.setFilter({{q: {json.dumps(runner)}, runners: true}}).matching") == with_runners
    browser.evaluate("document.getElementById('f-reset').click()")
    assert browser.evaluate("window.ndReport.matching") == units

    # raw images: the overlays hide
    browser.choose("f-view", "raw")
    assert browser.evaluate("getComputedStyle(document.querySelector('#cards .tile .ovl')).display") == "none"
    browser.choose("f-view", "regions")

    # a unit link from the concepts page lands on the right card
    browser.navigate("about:blank")
    browser.navigate(page.as_uri() + f"#unit-{units - 1}")
    assert browser.evaluate(f"document.getElementById('unit-{units - 1}').classList.contains('targeted')")
    assert browser.problems(since) == []


def test_unit_view(browser: Chromium, report: Path):
    name, units, _ = DEFAULT_LAYERS[0]
    page = report / f"layer-{name}.html"
    since = len(browser.events)
    browser.navigate(page.as_uri())
    first = browser.evaluate("window.ndReport.visibleUnits()[0].unit")
    browser.evaluate("document.querySelector('#cards .card .tilelink').click()")
    browser.wait_for("window.ndReport.viewing !== null && window.ndReport.viewing !== undefined")
    assert browser.evaluate("window.ndReport.viewing") == first
    assert not browser.evaluate("document.getElementById('unit-view').hidden")
    assert browser.evaluate("document.querySelectorAll('#uv-tiles .tile').length") == 5
    width = browser.evaluate("document.querySelector('#uv-tiles .tile').getBoundingClientRect().width")
    card = browser.evaluate("document.querySelector('#cards .tile').getBoundingClientRect().width")
    assert width >= max(224, 1.5 * card), "the images at (at least) the dataset's resolution"
    rows = browser.evaluate("document.querySelectorAll('#uv-info .percat tr').length")
    assert rows == len(_summary(report)["categories"])
    browser.screenshot(ARTIFACTS / "report-unit-view.png")
    _check_links(browser, report, browser.evaluate(
        "Array.from(document.querySelectorAll('#unit-view a[href]')).map(a => a.href)"))
    browser.evaluate("window.ndReport.setMode('heat')")
    assert browser.evaluate("getComputedStyle(document.querySelector('#uv-tiles canvas.heat')).display") == "block"
    assert browser.evaluate("getComputedStyle(document.querySelector('#uv-tiles .ovl')).display") == "none"
    browser.screenshot(ARTIFACTS / "report-unit-view-heat.png")
    browser.evaluate("window.ndReport.setMode('raw')")
    assert browser.evaluate("getComputedStyle(document.querySelector('#uv-tiles canvas.heat')).display") == "none"
    browser.evaluate("document.getElementById('uv-close').click()")
    assert browser.evaluate("document.getElementById('unit-view').hidden")
    # a deep link opens the view directly
    browser.navigate("about:blank")
    browser.navigate(page.as_uri() + f"#view-{units - 1}")
    assert browser.evaluate("window.ndReport.viewing") == units - 1
    assert browser.problems(since) == []


def test_overview_and_concepts(browser: Chromium, report: Path):
    summary = _summary(report)
    since = len(browser.events)
    browser.navigate((report / "index.html").as_uri())
    rows = browser.evaluate("Array.from(document.querySelectorAll('#layer-table tbody tr')).map(r => "
                            "[r.dataset.layer, +r.dataset.detectors, +r.dataset.unique])")
    assert {r[0]: (r[1], r[2]) for r in rows} == {
        n: (v["detectors"], v["unique_detectors"]) for n, v in summary["layers"].items()}
    figs = browser.evaluate("Array.from(document.querySelectorAll('figure img')).map(i => i.complete && i.naturalWidth > 0)")
    assert figs and all(figs)
    _check_links(browser, report, browser.evaluate(LINKS))
    # search across layers: a label found in every layer that has it, runners-up included
    label = next(iter(json.loads(browser.evaluate("document.getElementById('nd-data').textContent"))["units"]))[2]
    hits = browser.evaluate(f"window.ndReport.search({json.dumps(label)}, false)")
    assert hits >= 1
    layers_hit = browser.evaluate("new Set(Array.from(document.querySelectorAll('#s-results a')).map(a => a.getAttribute('href').split('#')[0])).size")
    assert layers_hit >= 1
    _check_links(browser, report, browser.evaluate(LINKS))
    browser.screenshot(ARTIFACTS / "report-overview.png", full=True)

    browser.navigate((report / "concepts.html").as_uri())
    n = browser.evaluate("window.ndReport.concepts")
    assert n > 0
    total = sum(v["detectors"] for v in summary["layers"].values())
    assert browser.evaluate("Array.from(document.querySelectorAll('.concept')).reduce((s, c) => s + +c.dataset.detectors, 0)") == total
    assert browser.evaluate("document.querySelectorAll('.evidence .tile').length") > 0
    cat = browser.evaluate("document.querySelector('.concept').getAttribute('data-cat')")
    browser.choose("c-cat", cat)
    assert 0 < browser.evaluate("window.ndReport.shown") <= n
    _check_links(browser, report, browser.evaluate(LINKS))
    browser.screenshot(ARTIFACTS / "report-concepts.png")
    assert browser.problems(since) == []


def test_pagination_of_a_big_layer(browser: Chromium, tmp_path: Path):
    out = build_run(tmp_path / "big", images=12, size=64, layers=(("layer4", 300, 4),), k=4)
    render_report(out, workers=1)
    before = len(browser.events)
    browser.navigate((out / "report" / "layer-layer4.html").as_uri())
    assert browser.evaluate("document.querySelectorAll('#cards .card').length") == 50
    assert browser.evaluate("window.ndReport.pages") == 6
    browser.evaluate("document.querySelector('#pager-top button.on').nextElementSibling.click()")
    assert browser.evaluate("window.ndReport.page") == 1
    order = browser.evaluate("JSON.parse(document.getElementById('nd-data').textContent).units"
                             ".slice().sort((a, b) => b.i - a.i || a.u - b.u).map(u => u.u)")
    target = order[-1]
    browser.navigate("about:blank")
    browser.navigate((out / "report" / "layer-layer4.html").as_uri() + f"#unit-{target}")
    assert browser.evaluate("window.ndReport.page") == 5
    assert browser.evaluate(f"document.getElementById('unit-{target}').classList.contains('targeted')")
    assert browser.problems(before) == []


DEMO_RUN = Path(os.environ.get("ND_DEMO_RUN", Path(__file__).resolve().parent.parent / "runs" / "demo"))


@pytest.mark.skipif(not (DEMO_RUN / "report" / "index.html").exists(),
                    reason="no demo run (make demo writes runs/demo; or set ND_DEMO_RUN)")
def test_the_demo_report(browser: Chromium):
    """`make demo`'s report: within its size budget, and on every page the detector counts are
    summary.json's and every link has its target."""
    report = DEMO_RUN / "report"
    files = [p for p in report.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25e6 and len(files) < 400
    assert all(p.stat().st_nlink == 1 and not p.is_symlink() for p in files)
    summary = json.loads((DEMO_RUN / "summary.json").read_text())
    since = len(browser.events)
    browser.navigate((report / "index.html").as_uri())
    rows = browser.evaluate("Array.from(document.querySelectorAll('#layer-table tbody tr')).map(r => "
                            "[r.dataset.layer, +r.dataset.detectors])")
    assert dict(rows) == {n: v["detectors"] for n, v in summary["layers"].items()}
    _check_links(browser, report, browser.evaluate(LINKS))
    for name, info in summary["layers"].items():
        browser.navigate("about:blank")
        browser.navigate((report / f"layer-{info.get('directory', name)}.html").as_uri())
        assert browser.evaluate("window.ndReport.detectors") == info["detectors"]
        assert browser.evaluate("window.ndReport.setFilter({det: true}).matching") == info["detectors"]
        browser.evaluate("window.ndReport.setFilter({det: false})")
        _check_links(browser, report, browser.evaluate(LINKS))
        first = browser.evaluate("window.ndReport.visibleUnits()[0].unit")
        assert browser.evaluate(f"window.ndReport.openView({first})")
        _check_links(browser, report, browser.evaluate(LINKS))
    browser.navigate((report / "concepts.html").as_uri())
    total = sum(v["detectors"] for v in summary["layers"].values())
    assert browser.evaluate("Array.from(document.querySelectorAll('.concept')).reduce((s, c) => s + +c.dataset.detectors, 0)") == total
    _check_links(browser, report, browser.evaluate(LINKS))
    assert browser.problems(since) == []
