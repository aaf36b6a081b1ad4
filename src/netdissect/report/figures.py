"""Figures: SVG, and on request a PNG twin (150 dpi), written to OUT/figures/ for papers and
copied into the report, where each is linked for download.

Every figure uses the same category colours as the cards (colors.category_colors). Counts come
from the layer's statistics (LayerResult.summary(), as in summary.json). Drawn with the
report's own chart kit (report.charts): the layout is measured text and simple arithmetic, so
a figure costs milliseconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from netdissect.report.charts import (
    Axes,
    Canvas,
    Dot,
    Line,
    Rect,
    Text,
    legend,
    nice_ticks,
    save,
    text_width,
    tick_label,
)
from netdissect.report.colors import NONE_COLOR, OKABE_ITO, category_colors
from netdissect.report.runview import LayerView

MARGIN = 12.0
TITLE_SIZE = 11.0
LABEL_SIZE = 10.0
TICK_SIZE = 9.0
TOP = 34.0              # room for the title above the plot


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _title(canvas: Canvas, text: str) -> None:
    canvas.title = text
    canvas.add(Text(MARGIN, MARGIN + TITLE_SIZE, text, size=TITLE_SIZE, bold=True))


def _fit_width(canvas: Canvas, *rights: float) -> None:
    """Widen the canvas to what was drawn (the title, a legend) plus the margin."""
    canvas.width = max([canvas.width, MARGIN + text_width(canvas.title, TITLE_SIZE, True) + MARGIN]
                       + [r + MARGIN for r in rights])


def _ylabel(canvas: Canvas, ax: Axes, text: str, tick_width: float) -> None:
    canvas.add(Text(ax.x - tick_width - 14, ax.y + ax.h / 2, text, size=LABEL_SIZE, anchor="middle",
                    valign="baseline", rotate=90))


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _max_width(labels: Sequence[str], size: float) -> float:
    return max([text_width(s, size) for s in labels] + [0.0])


def _y_axis_room(ticks: Sequence[float]) -> Tuple[float, float]:
    """(width of the widest tick label, x of the plot's left edge): room for the rotated axis
    label and the tick labels left of a vertical axis."""
    tick_w = _max_width([tick_label(t) for t in ticks], TICK_SIZE)
    return tick_w, MARGIN + LABEL_SIZE + 14 + tick_w + 8


def _legend_right(canvas: Canvas, ax: Axes, items) -> None:
    """A legend right of the plot, the canvas grown to hold it."""
    lw, lh = legend(canvas, ax.x + ax.w + 16, ax.y, items)
    canvas.height = max(canvas.height, ax.y + lh + MARGIN)
    _fit_width(canvas, ax.x + ax.w + 16 + lw)


def unique_per_category(layer: LayerView, categories: Sequence[str], thr: float, path: Path,
                        png: bool = False) -> Path:
    """Horizontal bars: unique detectors per category (distinct top labels of the detectors),
    with the per-category count (distinct best labels per category) as dashed outlines."""
    colors = category_colors(categories)
    cats = list(categories)
    stats = layer.stats
    top = [int(stats["unique_per_category"].get(c, 0)) for c in cats]
    best = [int(stats["unique_best_per_category"].get(c, 0)) for c in cats]
    row = 26.0
    left = MARGIN + _max_width(cats, LABEL_SIZE) + 10
    ax = Axes(left, TOP, max(560 - left - 40, 240), row * max(len(cats), 1), (0, 1), (0, 1))
    xmax = max(top + best + [1])
    ticks = nice_ticks(xmax, integer=True)
    ax.xlim = (0, max(xmax * 1.18, ticks[-1]))
    canvas = Canvas(ax.x + ax.w + 40, ax.y + ax.h + 66)
    _title(canvas, f"{layer.name}: {_plural(stats['unique_detectors'], 'unique detector')} "
                   f"({stats['detectors']}/{stats['units']} units, IoU > {thr:g})")
    ax.xticks(canvas, ticks, size=TICK_SIZE)
    for i, (c, t, b) in enumerate(zip(cats, top, best)):
        y = ax.y + i * row + row * 0.14
        h = row * 0.72
        canvas.add(Rect(ax.x, y, ax.px(t) - ax.x, h, fill=colors[c],
                        tip=f"{c}: {_plural(t, 'distinct top label')} of detectors"))
        if b:
            canvas.add(Rect(ax.x, y, ax.px(b) - ax.x, h, stroke=colors[c], stroke_width=1.2, dash=(3, 2),
                            tip=f"{c}: {_plural(b, 'distinct best label')}"))
        canvas.add(Text(ax.x - 8, y + h / 2, c, size=LABEL_SIZE, anchor="end", valign="middle"))
        canvas.add(Text(ax.px(max(t, b)) + 5, y + h / 2, f"{t}" + (f"  ({b})" if b != t else ""),
                        size=TICK_SIZE, valign="middle"))
    ax.frame(canvas)
    bottom = ax.y + ax.h
    canvas.add(Text(ax.x + ax.w / 2, bottom + 34, "unique detectors", size=LABEL_SIZE, anchor="middle"))
    grey = "#777777"
    lw, _ = legend(canvas, ax.x, bottom + 44, [
        ("distinct top labels of detectors", Rect(0, 0, 0, 0, fill=grey)),
        ("distinct best label per category", Rect(0, 0, 0, 0, stroke=grey, stroke_width=1.2, dash=(3, 2)))],
        columns=2)
    _fit_width(canvas, ax.x + lw)
    return save(canvas, path, png)


def concepts(layer: LayerView, categories: Sequence[str], thr: float, path: Path, png: bool = False) -> Path:
    """The paper's figure: number of detector units per concept, grouped by category."""
    per_concept = layer.units_per_concept()
    colors = category_colors(list(categories) + sorted({c for _, c in per_concept}))
    order = {c: i for i, c in enumerate(categories)}
    items: List[Tuple[str, str, int]] = [(lab, cat, n) for (lab, cat), n in per_concept.items()]
    items.sort(key=lambda t: (order.get(t[1], len(order)), -t[2], t[0]))
    n = len(items)
    title = f"{layer.name}: detector units per concept ({_plural(n, 'concept')}, IoU > {thr:g})"
    if n == 0:
        canvas = Canvas(550, TOP + 60)
        _title(canvas, title)
        canvas.add(Text(275, TOP + 30, f"no detector (IoU > {thr:g}) in this layer", size=LABEL_SIZE,
                        fill="#555555", anchor="middle", valign="middle"))
        _fit_width(canvas)
        return save(canvas, path, png)
    ymax = max(t[2] for t in items)
    ticks = nice_ticks(ymax, integer=True)
    tick_w, left = _y_axis_room(ticks)
    step = 17.0
    label_h = _max_width([t[0] for t in items], 8.0)
    ax = Axes(left, TOP, step * n + 6, 220, (-0.7, n - 0.3), (0, ticks[-1] if ticks[-1] >= ymax else ymax))
    canvas = Canvas(ax.x + ax.w + MARGIN, ax.y + ax.h + 10 + label_h + MARGIN)
    _title(canvas, title)
    ax.yticks(canvas, ticks, size=TICK_SIZE)
    bottom = ax.y + ax.h
    for i, (label, cat, count) in enumerate(items):
        x = ax.px(i)
        canvas.add(Rect(x - step * 0.4, ax.py(count), step * 0.8, bottom - ax.py(count), fill=colors[cat],
                        tip=f"{label} ({cat}): {_plural(count, 'unit')}"))
        canvas.add(Text(x, bottom + 5, label, size=8.0, anchor="end", valign="middle", rotate=90))
    ax.frame(canvas)
    _ylabel(canvas, ax, "detector units", tick_w)
    present = [c for c in categories if any(t[1] == c for t in items)]
    present += [c for c in dict.fromkeys(t[1] for t in items) if c not in present]
    _legend_right(canvas, ax, [
        (f"{c} ({_plural(sum(1 for t in items if t[1] == c), 'concept')})", Rect(0, 0, 0, 0, fill=colors[c]))
        for c in present])
    return save(canvas, path, png)


def iou_histogram(layer: LayerView, categories: Sequence[str], thr: float, path: Path, png: bool = False) -> Path:
    """Distribution of the units' best IoU, stacked by category, with the detector threshold."""
    colors = category_colors(categories)
    ious = np.array([u.iou for u in layer.units], dtype=np.float64)
    finite = ious[np.isfinite(ious)]
    hi = max(float(finite.max()) if len(finite) else 0.0, thr * 2, 0.05)
    edges = np.linspace(0.0, hi * 1.02, 41)
    groups = [(c, colors[c], np.array([u.category == c for u in layer.units], dtype=bool)) for c in categories]
    groups.append(("other", NONE_COLOR, np.array([u.category not in categories for u in layer.units], dtype=bool)))
    counts = [(c, color, np.histogram(_finite(ious[mask]), bins=edges)[0]) for c, color, mask in groups]
    counts = [(c, color, k) for c, color, k in counts if k.sum()]
    stacked = np.sum([k for _, _, k in counts], axis=0) if counts else np.zeros(len(edges) - 1)
    yticks = nice_ticks(max(int(stacked.max()), 1), integer=True)
    tick_w, left = _y_axis_room(yticks)
    ax = Axes(left, TOP, 560 - left - MARGIN, 190, (0, edges[-1]), (0, yticks[-1] * 1.08))
    canvas = Canvas(560, ax.y + ax.h + 52)
    _title(canvas, f"{layer.name}: IoU of each unit's best concept")
    ax.yticks(canvas, yticks, size=TICK_SIZE)
    ax.xticks(canvas, [t for t in nice_ticks(edges[-1]) if t <= edges[-1]], grid=False, size=TICK_SIZE)
    base = np.zeros(len(edges) - 1)
    for c, color, k in counts:
        for b in np.nonzero(k)[0]:
            x0, x1 = ax.px(edges[b]), ax.px(edges[b + 1])
            y0, y1 = ax.py(base[b] + k[b]), ax.py(base[b])
            canvas.add(Rect(x0, y0, x1 - x0, y1 - y0, fill=color,
                            tip=f"{c}: {_plural(int(k[b]), 'unit')} with IoU {edges[b]:.3f}-{edges[b + 1]:.3f}"))
        base += k
    x = ax.px(thr)
    canvas.add(Line(x, ax.y, x, ax.y + ax.h, stroke="#000000", width=1.2, dash=(4, 3)))
    canvas.add(Text(x + 4, ax.y + 2, f"detector threshold {thr:g}", size=8.0, valign="top"))
    ax.frame(canvas)
    _ylabel(canvas, ax, "units", tick_w)
    canvas.add(Text(ax.x + ax.w / 2, ax.y + ax.h + 36, "IoU of the unit's label", size=LABEL_SIZE, anchor="middle"))
    if counts:
        items = [(c, Rect(0, 0, 0, 0, fill=color)) for c, color, _ in counts]
        width = max(text_width(c, 8.5) for c, _ in items) + 17
        legend(canvas, ax.x + ax.w - width - 8, ax.y + 16, items)
    _fit_width(canvas)
    return save(canvas, path, png)


def layers_unique(layers: Sequence[LayerView], categories: Sequence[str], thr: float,
                  path: Path, png: bool = False) -> Path:
    """Unique detectors per category across the dissected layers: one group of bars per layer,
    one bar per category, the layer's total above each group."""
    colors = category_colors(categories)
    cats = list(categories)
    names = [layer.name for layer in layers]
    stats = [layer.stats for layer in layers]
    nl, nc = len(names), max(len(cats), 1)
    top = max([max(s["unique_per_category"].values(), default=0) for s in stats] + [1])
    ticks = nice_ticks(top, integer=True)
    tick_w, left = _y_axis_room(ticks)
    heads = [(f"{s['unique_detectors']} unique", f"{s['detectors']}/{s['units']} units") for s in stats]
    group = max(12.0 * nc + 20, _max_width([t for h in heads for t in h], 8.0) + 10)
    name_w = _max_width(names, TICK_SIZE)
    slanted = name_w > group - 6       # names that would run into each other: at 30 degrees
    label_h = (name_w * 0.5 + 14) if slanted else 18
    ax = Axes(left, TOP + 26, group * nl, 200, (-0.5, nl - 0.5), (0, max(top, ticks[-1])))
    canvas = Canvas(ax.x + ax.w + MARGIN, ax.y + ax.h + label_h + MARGIN)
    _title(canvas, f"Unique detectors per category across layers (IoU > {thr:g})")
    ax.yticks(canvas, ticks, size=TICK_SIZE)
    bottom = ax.y + ax.h
    width = 0.8 / nc
    for li, (name, s) in enumerate(zip(names, stats)):
        for ci, c in enumerate(cats):
            v = int(s["unique_per_category"].get(c, 0))
            x0 = ax.px(li - 0.4 + width * ci)
            x1 = ax.px(li - 0.4 + width * (ci + 0.92))
            if v:
                canvas.add(Rect(x0, ax.py(v), x1 - x0, bottom - ax.py(v), fill=colors[c],
                                tip=f"{name}, {c}: {_plural(v, 'unique detector')}"))
        x = ax.px(li)
        canvas.add(Text(x, ax.y - 16, heads[li][0], size=8.0, anchor="middle"))
        canvas.add(Text(x, ax.y - 5, heads[li][1], size=8.0, anchor="middle"))
        if slanted:
            canvas.add(Text(x, bottom + 6, name, size=TICK_SIZE, anchor="end", valign="top", rotate=30))
        else:
            canvas.add(Text(x, bottom + 6, name, size=TICK_SIZE, anchor="middle", valign="top"))
    ax.frame(canvas)
    _ylabel(canvas, ax, "unique detectors", tick_w)
    _legend_right(canvas, ax, [(c, Rect(0, 0, 0, 0, fill=colors[c])) for c in cats])
    return save(canvas, path, png)


# one colour a layer in the formula figure (layers are not categories: Okabe-Ito, in order)
LAYER_COLORS = [OKABE_ITO[c] for c in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple",
                                       "sky_blue", "black", "yellow")]


def formula_gain(rows: Sequence[Tuple[str, Sequence[float]]], beam: int, path: Path, png: bool = False) -> Path:
    """Mean IoU gain over each unit's label against the maximum formula length, one line per
    layer: rows are (layer, gain at length 1, 2, ...)."""
    longest = max([len(g) for _, g in rows] + [1])
    top = max([float(v) for _, g in rows for v in g] + [0.0])
    ticks = nice_ticks(top) if top > 0 else [0.0]
    tick_w, left = _y_axis_room(ticks)
    ax = Axes(left, TOP, 300, 190, (0.8, longest + 0.2), (0, max(top * 1.08, ticks[-1]) or 1.0))
    canvas = Canvas(ax.x + ax.w + MARGIN, ax.y + ax.h + 52)
    _title(canvas, f"Formulas (beam {beam})")
    ax.yticks(canvas, ticks, size=TICK_SIZE)
    ax.xticks(canvas, list(range(1, longest + 1)), grid=False, size=TICK_SIZE)
    items = []
    for i, (name, gains) in enumerate(rows):
        color = LAYER_COLORS[i % len(LAYER_COLORS)]
        points = [(ax.px(n), ax.py(float(g))) for n, g in enumerate(gains, start=1)]
        for (x1, y1), (x2, y2) in zip(points, points[1:]):
            canvas.add(Line(x1, y1, x2, y2, stroke=color, width=1.8))
        for n, ((x, y), g) in enumerate(zip(points, gains), start=1):
            canvas.add(Dot(x, y, 3.2, color, tip=f"{name}, length <= {n}: mean gain {float(g):.4f}"))
        items.append((name, Rect(0, 0, 0, 0, fill=color)))
    ax.frame(canvas)
    _ylabel(canvas, ax, "mean IoU gain over the label", tick_w)
    canvas.add(Text(ax.x + ax.w / 2, ax.y + ax.h + 36, "maximum formula length", size=LABEL_SIZE,
                    anchor="middle"))
    _legend_right(canvas, ax, items)
    return save(canvas, path, png)


def summary_gain(summary: dict, path: Path, png: bool = False) -> Optional[Path]:
    """The formula figure at path from summary.json's formula means; None when no layer has
    formulas."""
    rows = [(name, s["formulas"]) for name, s in summary["layers"].items() if "formulas" in s]
    if not rows:
        return None
    return formula_gain([(name, f["mean_gain_by_length"]) for name, f in rows], rows[0][1]["beam"], path, png)


def write_gain_figure(out: Path, summary: dict) -> Optional[Path]:
    """OUT/figures/formula_gain.svg, when any layer has formulas (the report adds its PNG twin
    on request)."""
    return summary_gain(summary, Path(out) / "figures" / "formula_gain.svg")
