"""Figures (matplotlib): SVG, and on request a PNG twin (150 dpi), written to OUT/figures/ for
papers and copied into the report, where each is linked for download.

Every figure uses the same category colours as the cards (colors.category_colors). Counts come
from the layer's statistics (LayerResult.summary(), as in summary.json). Figures are built with
matplotlib.figure.Figure under the house rc settings (no pyplot: no global state changed in the
caller's process).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from netdissect.atomic import atomic_path
from netdissect.report.colors import MPL_RC, category_colors
from netdissect.report.runview import LayerView


def _house_style(draw):
    """Run a figure function under MPL_RC: rc settings apply both when artists are made and when
    the figure is saved."""
    @functools.wraps(draw)
    def styled(*args, **kwargs):
        import matplotlib
        with matplotlib.rc_context(MPL_RC):
            return draw(*args, **kwargs)
    return styled


def _figure(figsize: Tuple[float, float]):
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig, path: Path, png: bool = False) -> Path:
    """path (.svg) and, with png, its .png twin, each written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    formats = [("svg", path, {"metadata": {"Date": None}})]
    if png:
        formats.append(("png", path.with_suffix(".png"), {"dpi": 150, "metadata": {"Software": None}}))
    for fmt, target, extra in formats:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight", facecolor="white", **extra)
    return path


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@_house_style
def unique_per_category(layer: LayerView, categories: Sequence[str], thr: float, path: Path,
                        png: bool = False) -> Path:
    """Horizontal bars: unique detectors per category (distinct top labels of the detectors),
    with the per-category count (distinct best labels per category) as outlined bars."""
    colors = category_colors(categories)
    cats = list(categories)
    stats = layer.stats
    top = [stats["unique_per_category"].get(c, 0) for c in cats]
    best = [stats["unique_best_per_category"].get(c, 0) for c in cats]
    fig, ax = _figure((5.6, 0.42 * len(cats) + 1.3))
    y = np.arange(len(cats))[::-1]
    ax.barh(y, best, height=0.72, color="none", edgecolor=[colors[c] for c in cats],
            linewidth=1.2, linestyle=(0, (3, 2)), label="distinct best label per category")
    ax.barh(y, top, height=0.72, color=[colors[c] for c in cats],
            label="distinct top labels of detectors")
    xmax = max(max(top + best + [1]), 1)
    for yi, t, b in zip(y, top, best):
        ax.text(max(t, b) + xmax * 0.015, yi, f"{t}" + (f"  ({b})" if b != t else ""),
                va="center", fontsize=9, color="#222222")
    ax.set_yticks(y, cats)
    ax.set_xlim(0, xmax * 1.18)
    ax.set_xlabel("unique detectors")
    ax.set_title(f"{layer.name}: {_plural(stats['unique_detectors'], 'unique detector')} "
                 f"({stats['detectors']}/{stats['units']} units, IoU > {thr:g})")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.16 - 0.9 / (len(cats) + 3)), fontsize=8, ncol=2)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path, png)


@_house_style
def concepts(layer: LayerView, categories: Sequence[str], thr: float, path: Path, png: bool = False) -> Path:
    """The paper's figure: number of detector units per concept, grouped by category."""
    from matplotlib.patches import Rectangle
    per_concept = layer.units_per_concept()
    colors = category_colors(list(categories) + sorted({c for _, c in per_concept}))
    order = {c: i for i, c in enumerate(categories)}
    items: List[Tuple[str, str, int]] = [(lab, cat, n) for (lab, cat), n in per_concept.items()]
    items.sort(key=lambda t: (order.get(t[1], len(order)), -t[2], t[0]))
    n = len(items)
    width = min(max(5.5, 0.17 * n + 1.6), 60.0)
    fig, ax = _figure((width, 3.6 if n else 1.2))
    if n == 0:
        ax.text(0.5, 0.5, f"no detector (IoU > {thr:g}) in this layer", ha="center",
                va="center", transform=ax.transAxes, color="#555555")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        x = np.arange(n)
        ax.bar(x, [t[2] for t in items], color=[colors[t[1]] for t in items], width=0.8)
        ax.set_xticks(x, [t[0] for t in items], rotation=90, fontsize=8)
        ax.set_xlim(-0.7, n - 0.3)
        ax.set_ylabel("detector units")
        ax.yaxis.get_major_locator().set_params(integer=True)
        present = [c for c in categories if any(t[1] == c for t in items)]
        present += [c for c in dict.fromkeys(t[1] for t in items) if c not in present]
        handles = [Rectangle((0, 0), 1, 1, color=colors[c]) for c in present]
        ax.legend(handles, [f"{c} ({_plural(sum(1 for t in items if t[1] == c), 'concept')})" for c in present],
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(f"{layer.name}: detector units per concept ({_plural(n, 'concept')}, IoU > {thr:g})")
    return _save(fig, path, png)


@_house_style
def iou_histogram(layer: LayerView, categories: Sequence[str], thr: float, path: Path, png: bool = False) -> Path:
    """Distribution of the units' best IoU, stacked by category, with the detector threshold."""
    colors = category_colors(categories)
    ious = np.array([u.iou for u in layer.units], dtype=np.float64)
    hi = max(float(np.nanmax(ious)) if len(ious) else 0.0, thr * 2, 0.05)
    bins = np.linspace(0.0, hi * 1.02, 41)
    fig, ax = _figure((5.6, 2.8))
    data, cols, labs = [], [], []
    for c in categories:
        v = ious[[u.category == c for u in layer.units]] if len(ious) else np.array([])
        if len(v):
            data.append(v)
            cols.append(colors[c])
            labs.append(c)
    other = ious[[u.category not in categories for u in layer.units]] if len(ious) else []
    if len(other):
        data.append(other)
        cols.append("#9A9A9A")
        labs.append("other")
    if data:
        ax.hist(data, bins=bins, stacked=True, color=cols, label=labs)
    ax.axvline(thr, color="#000000", linestyle=(0, (4, 3)), linewidth=1.2)
    ax.text(thr, ax.get_ylim()[1] * 0.97, f"  detector threshold {thr:g}", va="top",
            fontsize=8, color="#000000")
    ax.set_xlabel("IoU of the unit's label")
    ax.set_ylabel("units")
    ax.set_title(f"{layer.name}: IoU of each unit's best concept")
    if data:
        ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path, png)


@_house_style
def layers_unique(layers: Sequence[LayerView], categories: Sequence[str], thr: float,
                  path: Path, png: bool = False) -> Path:
    """Unique detectors per category across the dissected layers: one group of bars per layer,
    one bar per category, the layer's total above each group."""
    colors = category_colors(categories)
    cats = list(categories)
    names = [l.name for l in layers]
    stats = [l.stats for l in layers]
    nl, nc = len(names), max(len(cats), 1)
    fig, ax = _figure((min(max(5.6, nl * (0.32 * nc + 0.5) + 2.2), 30.0), 3.8))
    width = 0.8 / nc
    x = np.arange(nl)
    for i, c in enumerate(cats):
        ys = [s["unique_per_category"].get(c, 0) for s in stats]
        ax.bar(x - 0.4 + width * (i + 0.5), ys, width=width * 0.92, color=colors[c], label=c)
    top = max([max(s["unique_per_category"].values(), default=0) for s in stats] + [1])
    for xi, s in zip(x, stats):
        ax.text(xi, top * 1.06, f"{s['unique_detectors']} unique\n{s['detectors']}/{s['units']} units", ha="center",
                va="bottom", fontsize=8, color="#222222")
    ax.set_ylim(0, top * 1.32)
    ax.set_xticks(x, names, rotation=30 if nl > 5 else 0, ha="right" if nl > 5 else "center")
    ax.set_ylabel("unique detectors")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Unique detectors per category across layers (IoU > {thr:g})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path, png)
