"""The HTML report: rendered from a small fake-but-consistent run, checked as files and in
headless Chromium (DevTools protocol over --remote-debugging-pipe: no extra dependency).

Screenshots go to test-artifacts/ (git-ignored).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
from PIL import Image

from netdissect.errors import RunError
from netdissect.report import render_report
from netdissect.report import strips as strips_mod
from netdissect.report.colors import FIXED_CATEGORY_COLORS, category_colors
from netdissect.report.rundir import layer_dirname, load_run

from run_fixture import DEFAULT_LAYERS, build_run

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _chromium() -> Optional[str]:
    env = os.environ.get("CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    out = build_run(base / "run", extra_warnings=["a warning recorded by the run"],
                    skipped=[{"line": 1001, "image": "000999.jpg", "error": "truncated JPEG"}])
    render_report(out, top_k=5)
    return out


# ----------------------------------------------------------------------------- files

class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: List[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and v is not None:
                self.refs.append(v)


def test_report_files_and_contract(run_dir: Path):
    rep = run_dir / "report"
    assert (rep / "index.html").is_file()
    assert (rep / "concepts.html").is_file()
    for name, units, _ in DEFAULT_LAYERS:
        d = layer_dirname(name)
        assert (rep / f"layer-{d}.html").is_file()
        for u in range(units):
            paper = run_dir / d / f"unit_{u}.jpg"
            inside = rep / "strips" / d / f"unit_{u}.jpg"
            assert paper.is_file() and inside.is_file()
            assert paper.read_bytes() == inside.read_bytes()
        assert (run_dir / "figures" / f"{d}_unique_per_category.svg").is_file()
        assert (rep / "figures" / f"{d}_unique_per_category.svg").is_file()
    assert (run_dir / "figures" / "layers_unique_per_category.svg").is_file()
    assert not list(run_dir.glob(".report-*")), "staging folders must be cleaned up"


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
    for css in (rep / "assets").iterdir():
        text = css.read_text(encoding="utf-8")
        assert "http" not in text and "@import" not in text and "url(" not in text


def test_strip_shows_unit_region_and_label_outline(run_dir: Path):
    """A strong detector's strip: bright region with yellow contour, dimmed rest."""
    run = load_run(run_dir)
    layer = run.layers[0]
    best = max(layer.units, key=lambda u: u.iou)
    im = np.asarray(Image.open(run_dir / layer.dirname / f"unit_{best.unit}.jpg").convert("RGB"))
    assert im.shape[0] == 128
    kk = min(5, layer.topk_index.shape[1])
    assert im.shape[1] == kk * 128 + (kk - 1) * strips_mod.GAP
    yellow = (np.abs(im.astype(int) - np.array([240, 228, 66])).sum(-1) < 60)
    assert yellow.sum() > 50, "the unit's region contour is drawn"


def test_bilinear_matches_reference_rule():
    # align_corners=False with clamping: a 2-pixel row upsampled to 4
    m = strips_mod.bilinear_matrix(2, 4)
    np.testing.assert_allclose(m @ np.array([0.0, 1.0]), [0.0, 0.25, 0.75, 1.0])
    # identity when sizes agree
    np.testing.assert_allclose(strips_mod.bilinear_matrix(5, 5), np.eye(5), atol=1e-6)
    a = strips_mod.area_matrix(4, 2)
    np.testing.assert_allclose(a @ np.array([1.0, 0.0, 1.0, 1.0]), [0.5, 1.0])


def test_region_coverage_thresholds_strictly():
    maps = np.array([[[0.0, 1.0], [1.0, 0.0]]], np.float32)
    cov = strips_mod.region_coverage(maps, np.array([1.0], np.float32), (8, 8), (8, 8))
    assert cov.max() < 0.5                       # nothing strictly above 1.0
    cov = strips_mod.region_coverage(maps, np.array([0.5], np.float32), (8, 8), (8, 8))
    assert 0.2 < cov.mean() < 0.8


def test_category_colors_are_stable():
    a = category_colors(["object", "scene", "weird"])
    b = category_colors(["weird", "scene", "object", "part"])
    assert a["object"] == b["object"] == FIXED_CATEGORY_COLORS["object"]
    assert a["scene"] == b["scene"]
    assert len(set(category_colors(["color", "object", "part", "material", "scene", "texture"]).values())) == 6


def test_overview_content(run_dir: Path):
    text = (run_dir / "report" / "index.html").read_text(encoding="utf-8")
    assert "a warning recorded by the run" in text           # summary warnings are shown
    assert "000999.jpg" in text and "1 image(s) were skipped" in text
    assert "images labeled" in text                          # category image counts
    summary = json.loads((run_dir / "summary.json").read_text())
    for name, info in summary["layers"].items():
        assert name in text
    assert text.count("<tr><th scope=\"row\"><a href=\"layer-") == len(DEFAULT_LAYERS)


def test_layer_data_matches_units_csv(run_dir: Path):
    name, units, _ = DEFAULT_LAYERS[1]
    page = (run_dir / "report" / f"layer-{layer_dirname(name)}.html").read_text(encoding="utf-8")
    blob = re.search(r'<script id="nd-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    data = json.loads(blob)
    assert len(data["units"]) == units
    import csv
    rows = list(csv.DictReader(open(run_dir / layer_dirname(name) / "units.csv")))
    for u, row in zip(sorted(data["units"], key=lambda d: d["u"]), rows):
        assert u["l"] == row["label"] and u["c"] == row["category"]
        assert abs(u["i"] - float(row["iou"])) < 1e-3
        assert u["s"] == f"strips/{layer_dirname(name)}/unit_{u['u']}.jpg"


def test_concepts_page_links_units(run_dir: Path):
    text = (run_dir / "report" / "concepts.html").read_text(encoding="utf-8")
    run = load_run(run_dir)
    for layer in run.layers:
        for u in layer.units:
            if u.iou > run.iou_threshold:
                assert f'href="layer-{layer.dirname}.html#unit-{u.unit}"' in text


def test_rerender_reuses_strips_without_dataset(run_dir: Path, tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report"))
    cfg = json.loads((copy / "config.json").read_text())
    cfg["dataset"]["path"] = str(tmp_path / "nowhere")
    (copy / "config.json").write_text(json.dumps(cfg))
    index = render_report(copy)
    text = index.read_text(encoding="utf-8")
    assert "not found" in text
    assert (copy / "report" / "strips" / layer_dirname(DEFAULT_LAYERS[0][0]) / "unit_0.jpg").is_file()


def test_missing_config_is_a_clear_error(tmp_path: Path):
    with pytest.raises(RunError, match="config.json"):
        render_report(tmp_path)


def test_strips_of_a_wide_layer_are_all_written(tmp_path: Path):
    """1,280 units: one strip per unit. (Speed is measured by benchmarks, not by tests.)"""
    out = build_run(tmp_path / "wide", images=16, size=64, layers=(("blocks.6", 1280, 7),), k=8)
    render_report(out, workers=1)
    assert len(list((out / "blocks.6").glob("unit_*.jpg"))) == 1280


# ----------------------------------------------------------------------------- browser

def _high_fd(fd: int) -> int:
    import fcntl
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


class Chromium:
    """Headless Chromium driven by the DevTools protocol over a pipe (fds 3 and 4)."""

    def __init__(self, exe: str, width: int = 1400, height: int = 1800):
        self.profile = tempfile.mkdtemp(prefix="nd-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # the child's ends move above 9 so that bash's "3<&N 4>&M" cannot clobber them
        to_child_r, from_child_w = (_high_fd(to_child_r), _high_fd(from_child_w))
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                 f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                 f"--window-size={width},{height}", "about:blank"]
        script = f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}'
        self.proc = subprocess.Popen(["bash", "-c", script, exe] + flags,
                                     pass_fds=(to_child_r, from_child_w),
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.profile, "..", os.path.basename(self.profile) + ".log"), "wb"))
        os.close(to_child_r)
        os.close(from_child_w)
        self._next = 0
        self._lock = threading.Condition()
        self._responses: Dict[int, Dict[str, Any]] = {}
        self.events: List[Dict[str, Any]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.width, self.height = width, height
        self.session: Optional[str] = None

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._lock:
                    if "id" in msg:
                        self._responses[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._lock.notify_all()

    def send(self, method: str, params: Optional[dict] = None, session: Any = "default",
             timeout: float = 30.0) -> Dict[str, Any]:
        self._next += 1
        mid = self._next
        msg: Dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        sid = self.session if session == "default" else session
        if sid:
            msg["sessionId"] = sid
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while mid not in self._responses:
                if self._closed:
                    raise RuntimeError(f"chromium exited while waiting for {method}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to {method} within {timeout}s")
                self._lock.wait(left)
            resp = self._responses.pop(mid)
        if "error" in resp:
            raise RuntimeError(f"{method}: {resp['error']}")
        return resp.get("result", {})

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=None)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=None)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    def wait_event(self, method: str, since: int, timeout: float = 30.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for ev in self.events[since:]:
                    if ev.get("method") == method and ev.get("sessionId") == self.session:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise TimeoutError(f"no {method} within {timeout}s")
                self._lock.wait(left)

    def navigate(self, url: str) -> None:
        since = len(self.events)
        res = self.send("Page.navigate", {"url": url})
        if "errorText" in res:
            raise RuntimeError(f"{url}: {res['errorText']}")
        if res.get("loaderId"):           # a new document (not a same-document hash change)
            self.wait_event("Page.loadEventFired", since)
        if url != "about:blank":
            self.wait_for("window.ndReport && window.ndReport.ready === true")
        self.settle(since)

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def choose(self, select_id: str, value: str) -> None:
        """Pick an option of a <select> as a user would (fires 'change')."""
        self.evaluate(f"(() => {{ const s = document.getElementById({json.dumps(select_id)}); "
                      f"s.value = {json.dumps(value)}; s.dispatchEvent(new Event('change')); }})()")

    def wait_for(self, expression: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"!!({expression})"):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{expression} never became true")

    def settle(self, since: int = 0, quiet: float = 0.4, timeout: float = 15.0) -> None:
        """Wait until no request started since event `since` is pending (lazy images of the
        viewport included): requests of a page navigated away from may never finish."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                events = self.events[since:]
                started = {e["params"]["requestId"] for e in events
                           if e.get("method") == "Network.requestWillBeSent"}
                ended = {e["params"]["requestId"] for e in events
                         if e.get("method") in ("Network.loadingFinished", "Network.loadingFailed")}
            n = len(self.events)
            time.sleep(quiet)
            if started <= ended and len(self.events) == n:
                return

    def problems(self, since: int = 0) -> List[str]:
        """Console errors, uncaught exceptions, failed requests, and any non-local request
        among the events from index `since` on."""
        out = []
        with self._lock:
            events = list(self.events[since:])
        for ev in events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('exception', {}).get('description') or p['exceptionDetails'].get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"failed request: {p.get('errorText')} {p.get('type')}")
            elif m == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not (url.startswith("file://") or url.startswith("data:") or url == "about:blank"):
                    out.append(f"non-local request: {url}")
        return out

    def screenshot(self, path: Path, full: bool = False) -> None:
        params: Dict[str, Any] = {"format": "png"}
        if full:
            h = self.evaluate("document.documentElement.scrollHeight")
            params.update({"captureBeyondViewport": True,
                           "clip": {"x": 0, "y": 0, "width": self.width, "height": min(int(h), 12000), "scale": 1}})
        data = self.send("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            if not self._closed and self.proc.poll() is None:
                self.send("Browser.close", session=None, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
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
def zipped_report(run_dir: Path, tmp_path_factory) -> Path:
    """The report folder zipped alone and unpacked elsewhere: it must work by itself."""
    base = tmp_path_factory.mktemp("unzipped")
    archive = shutil.make_archive(str(base / "report"), "zip", root_dir=run_dir, base_dir="report")
    with zipfile.ZipFile(archive) as z:
        z.extractall(base / "x")
    return base / "x" / "report"


def test_browser_layer_page(browser: Chromium, zipped_report: Path):
    name, units, _ = DEFAULT_LAYERS[1]
    page = zipped_report / f"layer-{layer_dirname(name)}.html"
    since = len(browser.events)
    browser.navigate(page.as_uri())
    assert browser.evaluate("document.querySelectorAll('nav.top a').length") == 2 + len(DEFAULT_LAYERS)
    total = browser.evaluate("window.ndReport.units")
    assert total == units
    shown = browser.evaluate("document.querySelectorAll('#cards .card').length")
    assert shown == min(units, 50)
    loaded = browser.evaluate(
        "Array.from(document.querySelectorAll('#cards img')).slice(0, 3).every(i => i.complete && i.naturalWidth > 0)")
    assert loaded, "the first strips load from file://"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "report-layer.png")

    # filter by category: only that category's cards remain, and fewer of them
    cats = browser.evaluate("Array.from(new Set(window.ndReport.visibleUnits().map(c => c.cat)))")
    assert len(cats) > 1
    cat = cats[0]
    browser.choose("f-cat", cat)
    after = browser.evaluate("window.ndReport.visibleUnits()")
    assert 0 < len(after) < shown
    assert {c["cat"] for c in after} == {cat}
    browser.screenshot(ARTIFACTS / "report-layer-filtered.png")

    # detectors only + reset
    browser.evaluate("window.ndReport.setFilter({cat: '', det: true})")
    thr = browser.evaluate("JSON.parse(document.getElementById('nd-data').textContent).thr")
    ious = browser.evaluate("Array.from(document.querySelectorAll('#cards .iouval')).map(e => +e.textContent)")
    assert ious and min(ious) > thr - 1e-3
    browser.evaluate("document.getElementById('f-reset').click()")
    assert browser.evaluate("window.ndReport.matching") == units

    # a unit link from the concepts page lands on the right card
    browser.navigate("about:blank")
    browser.navigate(page.as_uri() + f"#unit-{units - 1}")
    assert browser.evaluate(f"document.getElementById('unit-{units - 1}').classList.contains('targeted')")
    assert browser.problems(since) == []


def test_browser_pagination_of_a_big_layer(browser: Chromium, tmp_path: Path):
    out = build_run(tmp_path / "big", images=12, size=64, layers=(("layer4", 300, 4),), k=4)
    render_report(out, workers=1)
    before = len(browser.events)
    browser.navigate((out / "report" / "layer-layer4.html").as_uri())
    assert browser.evaluate("document.querySelectorAll('#cards .card').length") == 50
    assert browser.evaluate("window.ndReport.pages") == 6
    browser.evaluate("document.querySelector('#pager-top button.on').nextElementSibling.click()")
    assert browser.evaluate("window.ndReport.page") == 1
    lazy = browser.evaluate("Array.from(document.querySelectorAll('#cards img')).every(i => i.loading === 'lazy')")
    assert lazy
    # a link to a unit on another page than the first opens that page
    order = browser.evaluate("JSON.parse(document.getElementById('nd-data').textContent).units"
                             ".slice().sort((a, b) => b.i - a.i || a.u - b.u).map(u => u.u)")
    target = order[-1]
    browser.navigate("about:blank")
    browser.navigate((out / "report" / "layer-layer4.html").as_uri() + f"#unit-{target}")
    assert browser.evaluate("window.ndReport.page") == 5
    assert browser.evaluate(f"document.getElementById('unit-{target}').classList.contains('targeted')")
    browser.screenshot(ARTIFACTS / "report-layer-big-last-page.png")
    assert browser.problems(before) == []


def test_browser_overview_and_concepts(browser: Chromium, zipped_report: Path):
    since = len(browser.events)
    browser.navigate((zipped_report / "index.html").as_uri())
    rows = browser.evaluate("document.querySelectorAll('#layer-table tbody tr').length")
    assert rows == len(DEFAULT_LAYERS)
    figs = browser.evaluate("Array.from(document.querySelectorAll('figure img')).map(i => i.complete && i.naturalWidth > 0)")
    assert figs and all(figs)
    browser.screenshot(ARTIFACTS / "report-overview.png", full=True)
    browser.navigate((zipped_report / "concepts.html").as_uri())
    n = browser.evaluate("window.ndReport.concepts")
    assert n > 0
    cat = browser.evaluate("document.querySelector('.concept').getAttribute('data-cat')")
    browser.choose("c-cat", cat)
    assert 0 < browser.evaluate("window.ndReport.shown") <= n
    browser.screenshot(ARTIFACTS / "report-concepts.png")
    assert browser.problems(since) == []


def test_report_of_the_tiny_scenes_fixture(tmp_path: Path):
    """The fixture's own tiny Broden set (used when no synthetic generator is installed)."""
    out = build_run(tmp_path / "tiny", images=12, size=64, layers=(("conv5", 10, 6),), k=4,
                    use_synthetic=False)
    index = render_report(out, top_k=3)
    assert index == out / "report" / "index.html"
    im = Image.open(out / "conv5" / "unit_0.jpg")
    assert im.size == (3 * 128 + 2 * strips_mod.GAP, 128)


def test_report_of_a_real_dissection(tmp_path: Path):
    """End to end with the engine: a tiny CNN dissected on a split + limit selection; the
    report's strips must show the images the run selected (indices into that selection)."""
    torch = pytest.importorskip("torch")
    import netdissect
    from netdissect.broden import BrodenDataset
    from run_fixture import make_dataset

    data = make_dataset(tmp_path / "data", images=20, size=64, seed=3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.MaxPool2d(4), torch.nn.Conv2d(8, 12, 3, padding=1),
                                torch.nn.ReLU())
    out = tmp_path / "run"
    netdissect.dissect(model, ["3"], data, out=out, progress=False, split="train", limit=10,
                       top_k=4, batch_size=4, workers=0, device="cpu",
                       min_category_images=0)
    index = render_report(out, top_k=4)
    assert index.is_file()
    page = (out / "report" / "layer-3.html").read_text(encoding="utf-8")
    data_blob = json.loads(re.search(r'<script id="nd-data" type="application/json">(.*?)</script>',
                                     page, re.S).group(1))
    assert len(data_blob["units"]) == 12
    ds = BrodenDataset(data, split="train", limit=10)
    topk = np.load(out / "3" / "topk.npz")
    for u in data_blob["units"]:
        names = [c[2] for c in u.get("x", [])]
        expected = [ds.records[i].image for i in topk["image_index"][u["u"]][:4] if 0 <= i < len(ds)]
        assert names == expected
        assert (out / "3" / f"unit_{u['u']}.jpg").is_file()
