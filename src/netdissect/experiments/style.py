"""One look for every experiment figure: category colours, fonts, and atomic SVG + PNG output.

Category colours are the Okabe-Ito palette (safe for the common forms of colour blindness),
fixed per Broden category name, so "object" is the same blue in every chart of every command.
Other category names take the remaining colours in order of first use.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no global state, no
GUI backend) and written through :func:`netdissect.atomic.atomic_write_bytes`.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

from netdissect.report.colors import FIXED_CATEGORY_COLORS as CATEGORY_COLORS
from netdissect.report.colors import MPL_RC, category_colors

#: Broden's categories in the order the figures list them (the paper's order).
CATEGORY_ORDER = ("object", "scene", "part", "material", "texture", "color")

#: totals (all categories together) are drawn in this colour.
TOTAL_COLOR = "#222222"
#: a control condition (e.g. random units) is drawn in this colour.
CONTROL_COLOR = "#9A9A9A"
#: a baseline condition (e.g. nothing ablated) is drawn in this colour.
BASELINE_COLOR = "#4D4D4D"
#: a neutral series colour (when no category applies).
NEUTRAL_COLOR = "#0072B2"

RC = {**MPL_RC, "axes.grid": True, "axes.axisbelow": True, "grid.color": "#E3E3E3",
      "grid.linewidth": 0.8}


def category_color(name: str) -> str:
    return CATEGORY_COLORS.get(name, "#999999")


def ordered_categories(categories: Iterable[str]) -> List[str]:
    """Broden's categories in CATEGORY_ORDER, then any others in order of first appearance."""
    seen: List[str] = []
    for c in categories:
        if c not in seen:
            seen.append(c)
    known = [c for c in CATEGORY_ORDER if c in seen]
    return known + [c for c in seen if c not in CATEGORY_ORDER]


def plotting():
    """Context manager: the house style for everything drawn inside it."""
    import matplotlib
    return matplotlib.rc_context(RC)


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kw):
    """(fig, axes) with the house style (draw inside ``with plotting():``); axes is a list when
    there are several."""
    from matplotlib.figure import Figure

    with plotting():
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    flat = [ax for row in axes for ax in row]
    for ax in flat:
        _style_axes(ax)
    return fig, (flat[0] if len(flat) == 1 else flat)


def _style_axes(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.set_axisbelow(True)
    ax.grid(True, color=RC["grid.color"], linewidth=RC["grid.linewidth"])


def save_figure(fig, out_dir, stem: str) -> List[Path]:
    """Write ``stem.svg`` and ``stem.png`` (150 dpi) into out_dir, atomically; returns the paths."""
    import matplotlib

    from netdissect.atomic import atomic_write_bytes

    out_dir = Path(out_dir)
    paths = []
    with matplotlib.rc_context(RC):
        for fmt, kw in (("svg", {"metadata": {"Date": None}}), ("png", {"dpi": 150, "metadata": {"Software": None}})):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, facecolor="white", **kw)
            path = out_dir / f"{stem}.{fmt}"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    return paths


def integer_yaxis(ax) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def line_chart(ax, x: Sequence[float], series: Dict[str, Sequence[float]], total: Sequence[float] = None,
               total_label: str = "all categories", markers: bool = True) -> None:
    """One line per category (category colours) and an optional dashed total line."""
    colors = category_colors(series)
    for name, values in series.items():
        ax.plot(x, values, color=colors[name], marker="o" if markers else None, markersize=4,
                linewidth=1.8, label=name)
    if total is not None:
        ax.plot(x, total, color=TOTAL_COLOR, linestyle="--", marker="s" if markers else None,
                markersize=4, linewidth=1.6, label=total_label)
    integer_yaxis(ax)
    top = max([v for values in series.values() for v in values] + list(total or []) + [0])
    ax.set_ylim(0, None if top > 0 else 1)  # all zero: still an integer axis


def grouped_bars(ax, groups: Sequence[str], categories: Sequence[str],
                 values: Sequence[Sequence[float]], fmt: str = "{:g}", label_bars: bool = True) -> None:
    """Bars grouped by ``groups`` (x axis), one bar per category inside each group.

    values[g][c] is the height of category c in group g.
    """
    import numpy as np

    colors = category_colors(categories)
    n_groups, n_cats = len(groups), max(len(categories), 1)
    width = 0.8 / n_cats
    x = np.arange(n_groups)
    top = max([v for row in values for v in row] + [0])
    for c, cat in enumerate(categories):
        heights = [values[g][c] for g in range(n_groups)]
        pos = x - 0.4 + width * (c + 0.5)
        ax.bar(pos, heights, width=width * 0.92, color=colors[cat], label=cat)
        if label_bars and n_groups * n_cats <= 24:
            for px, h in zip(pos, heights):
                if h:
                    ax.text(px, h + top * 0.01, fmt.format(h), ha="center", va="bottom", fontsize=7,
                            color="#333333")
    ax.set_xticks(x, list(groups), rotation=20 if max((len(g) for g in groups), default=0) > 10 else 0,
                  ha="right" if max((len(g) for g in groups), default=0) > 10 else "center")
    ax.grid(False, axis="x")
    ax.set_ylim(0, top * 1.12 if top else 1)
