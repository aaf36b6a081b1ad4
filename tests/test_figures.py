"""The report's figures (report.figures on report.charts): what each bar, tick and label says,
read back from the SVG, against counts made by hand; the PNG twin drawn from the same shapes."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from netdissect.report import figures
from netdissect.report.charts import Canvas, Line, Rect, Text, nice_ticks, save, text_width
from netdissect.report.runview import LayerView, UnitView

NS = {"s": "http://www.w3.org/2000/svg"}
CATS = ["color", "object", "part", "material", "scene", "texture"]


def _unit(i: int, label: str, cat: str, iou: float) -> UnitView:
    return UnitView(unit=i, label=label, category=cat, iou=iou, detector=iou > 0.04, column=None,
                    label_number=None)


@pytest.fixture()
def layer() -> LayerView:
    units = [_unit(0, "dog", "object", 0.30), _unit(1, "dog", "object", 0.12), _unit(2, "cat", "object", 0.05),
             _unit(3, "wood", "material", 0.09), _unit(4, "red", "color", 0.02), _unit(5, "leg", "part", 0.01),
             _unit(6, "sky", "object", float("nan"))]
    stats = {"units": 7, "detectors": 4, "unique_detectors": 3,
             "unique_per_category": {"object": 2, "material": 1},
             "unique_best_per_category": {"object": 2, "material": 1, "part": 3}}
    return LayerView(name="layer4", dirname="layer4", result=None, stats=stats, units=units)


def _svg(path: Path):
    return ET.parse(path).getroot()


def _tips(root):
    return [(r, r.find("s:title", NS).text) for r in root.iter("{http://www.w3.org/2000/svg}rect")
            if r.find("s:title", NS) is not None]


def _texts(root):
    return [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_nice_ticks_by_hand():
    assert nice_ticks(6, integer=True) == [0, 1, 2, 3, 4, 5, 6]
    assert nice_ticks(80, integer=True) == [0, 20, 40, 60, 80]
    assert nice_ticks(81, integer=True) == [0, 20, 40, 60, 80]     # the axis then runs to the data
    assert nice_ticks(0.1837) == [0, 0.05, 0.1, 0.15]
    assert nice_ticks(1, integer=True) == [0, 1]
    assert nice_ticks(3, integer=True, most=6) == [0, 1, 2, 3]      # never a fractional step


def test_unique_per_category_bars_match_the_counts(layer, tmp_path):
    root = _svg(figures.unique_per_category(layer, CATS, 0.04, tmp_path / "u.svg"))
    tips = dict((t, r) for r, t in _tips(root))
    obj = tips["object: 2 distinct top labels of detectors"]
    mat = tips["material: 1 distinct top label of detectors"]
    part_best = tips["part: 3 distinct best labels"]
    width = {k: float(v.get("width")) for k, v in [("obj", obj), ("mat", mat), ("part", part_best)]}
    assert width["obj"] == pytest.approx(2 * width["mat"], rel=1e-3)
    assert width["part"] == pytest.approx(3 * width["mat"], rel=1e-3)
    assert part_best.get("fill") == "none" and part_best.get("stroke-dasharray")
    texts = _texts(root)
    assert "layer4: 3 unique detectors (4/7 units, IoU > 0.04)" in texts
    assert root.get("aria-label") == root.find("s:title", NS).text == texts[0]     # named for screen readers
    assert "0  (3)" in texts and "2" in texts            # part: 0 top labels, 3 best labels
    assert all(c in texts for c in CATS)


def test_concepts_one_bar_per_concept_in_category_order(layer, tmp_path):
    root = _svg(figures.concepts(layer, CATS, 0.04, tmp_path / "c.svg"))
    tips = [t for _, t in _tips(root)]
    assert tips == ["dog (object): 2 units", "cat (object): 1 unit", "wood (material): 1 unit"]
    heights = [float(r.get("height")) for r, _ in _tips(root)]
    assert heights[0] == pytest.approx(2 * heights[1], rel=1e-3) and heights[1] == pytest.approx(heights[2])
    assert "object (2 concepts)" in _texts(root) and "material (1 concept)" in _texts(root)


def test_concepts_without_detectors_says_so(tmp_path):
    empty = LayerView(name="conv1", dirname="conv1", result=None,
                      stats={"units": 1, "detectors": 0, "unique_detectors": 0, "unique_per_category": {},
                             "unique_best_per_category": {}},
                      units=[_unit(0, "red", "color", 0.01)])
    root = _svg(figures.concepts(empty, CATS, 0.04, tmp_path / "c.svg"))
    assert "no detector (IoU > 0.04) in this layer" in _texts(root)


def test_histogram_stacks_every_finite_unit_once(layer, tmp_path):
    root = _svg(figures.iou_histogram(layer, CATS, 0.04, tmp_path / "h.svg"))
    counted = {}
    for _, tip in _tips(root):
        m = re.match(r"(\w+): (\d+) units? with IoU", tip)
        counted[m.group(1)] = counted.get(m.group(1), 0) + int(m.group(2))
    assert counted == {"color": 1, "object": 3, "part": 1, "material": 1}   # the NaN unit is not drawn
    assert "detector threshold 0.04" in _texts(root)


def test_layers_figure_slants_names_only_when_they_would_collide(layer, tmp_path):
    short = _svg(figures.layers_unique([layer, layer], CATS, 0.04, tmp_path / "a.svg"))
    assert not any("rotate" in (t.get("transform") or "") and t.text == "layer4"
                   for t in short.iter("{http://www.w3.org/2000/svg}text"))
    long_name = LayerView(name="model.encoder.blocks.11.mlp.fc2", dirname="x", result=None,
                          stats=layer.stats, units=layer.units)
    slanted = _svg(figures.layers_unique([long_name] * 3, CATS, 0.04, tmp_path / "b.svg"))
    names = [t for t in slanted.iter("{http://www.w3.org/2000/svg}text") if t.text == long_name.name]
    assert len(names) == 3 and all("rotate(-30" in t.get("transform") for t in names)


def test_text_stays_inside_the_canvas(layer, tmp_path):
    """Unrotated text, measured with the figure's font, lies within the figure's width (a long
    layer name too)."""
    long_name = LayerView(name="model.encoder.layers.encoder_layer_11.mlp.fc2.activation_post_process", dirname="x", result=None,
                          stats=layer.stats, units=layer.units)
    for make, layer in [(m, v) for m in (figures.unique_per_category, figures.concepts, figures.iou_histogram)
                        for v in (layer, long_name)]:
        root = _svg(make(layer, CATS, 0.04, tmp_path / f"{make.__name__}.svg"))
        width = float(root.get("width"))
        for t in root.iter("{http://www.w3.org/2000/svg}text"):
            if t.get("transform"):
                continue
            w = text_width(t.text, float(t.get("font-size")), t.get("font-weight") == "bold")
            x = float(t.get("x"))
            left = {"start": x, "middle": x - w / 2, "end": x - w}[t.get("text-anchor")]
            assert 0 <= left and left + w <= width + 0.5, (make.__name__, t.text)


def test_png_twin_drawn_from_the_same_shapes(tmp_path):
    canvas = Canvas(200, 100, title="t")
    canvas.add(Rect(10, 10, 50, 30, fill="#0072B2"))
    canvas.add(Rect(100, 10, 50, 30, stroke="#D55E00", dash=(3, 2)))
    canvas.add(Line(0, 90, 200, 90, stroke="#000000"))
    canvas.add(Text(100, 70, "label", rotate=90, anchor="end", valign="middle"))
    image = canvas.png(scale=2)
    assert image.size == (400, 200)
    assert image.getpixel((70, 50)) == (0, 114, 178)             # inside the filled bar
    assert image.getpixel((250, 50)) == (255, 255, 255)          # inside the outline: empty
    assert image.getpixel((200, 180)) == (0, 0, 0)               # the line
    figures_png = save(canvas, tmp_path / "f.svg", png=True)
    with Image.open(figures_png.with_suffix(".png")) as im:
        assert im.size == (300, 150)
    assert ET.parse(figures_png).getroot().get("width") == "200"


def test_degenerate_layers_still_draw(tmp_path):
    """No units, only NaN IoUs, no categories: every figure is still written, with its title."""
    stats = {"units": 0, "detectors": 0, "unique_detectors": 0, "unique_per_category": {},
             "unique_best_per_category": {}}
    empty = LayerView(name="none", dirname="none", result=None, stats=stats, units=[])
    nan = LayerView(name="nan", dirname="nan", result=None, stats=dict(stats, units=2),
                    units=[_unit(0, "dog", "object", float("nan")), _unit(1, "-", "", float("nan"))])
    for layer in (empty, nan):
        for cats in (CATS, []):
            for make in (figures.unique_per_category, figures.concepts, figures.iou_histogram):
                root = _svg(make(layer, cats, 0.04, tmp_path / f"{layer.name}_{len(cats)}_{make.__name__}.svg"))
                assert root.find("s:title", NS).text.startswith(layer.name)
                assert not _tips(root) or make is figures.unique_per_category
            root = _svg(figures.layers_unique([layer], cats, 0.04, tmp_path / f"{layer.name}_{len(cats)}_x.svg"))
            assert "0 unique" in _texts(root)


def test_formula_gain_one_line_per_layer(tmp_path):
    """A dot per (layer, length) at its mean gain, the same colour along a layer's line."""
    rows = [("conv1", [0.0, 0.01, 0.03]), ("conv2", [0.0, 0.02])]
    root = _svg(figures.formula_gain(rows, 5, tmp_path / "g.svg", png=True))
    dots = [(c, c.find("s:title", NS).text) for c in root.iter("{http://www.w3.org/2000/svg}circle")]
    assert [t for _, t in dots] == ["conv1, length <= 1: mean gain 0.0000", "conv1, length <= 2: mean gain 0.0100",
                                    "conv1, length <= 3: mean gain 0.0300", "conv2, length <= 1: mean gain 0.0000",
                                    "conv2, length <= 2: mean gain 0.0200"]
    y = [float(c.get("cy")) for c, _ in dots]
    assert y[0] - y[2] == pytest.approx(3 * (y[0] - y[1]), rel=1e-3)     # heights in proportion to the gain
    assert y[3] - y[4] == pytest.approx(2 * (y[0] - y[1]), rel=1e-3)
    assert len({c.get("fill") for c, _ in dots[:3]}) == 1 and dots[0][0].get("fill") != dots[3][0].get("fill")
    assert "Formulas (beam 5)" in _texts(root) and (tmp_path / "g.png").is_file()
