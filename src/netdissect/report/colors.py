"""Colours shared by the figures, the image strips and the HTML pages.

Category colours come from the Okabe-Ito palette (safe for the common forms of colour
blindness) and are fixed per Broden category name, so a category looks the same in every chart
and on every card. Categories with other names take the remaining colours in order.
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

# Okabe & Ito (2008), "Color Universal Design".
OKABE_ITO = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "black": "#000000",
}

FIXED_CATEGORY_COLORS = {
    "object": OKABE_ITO["blue"],
    "part": OKABE_ITO["bluish_green"],
    "scene": OKABE_ITO["orange"],
    "texture": OKABE_ITO["reddish_purple"],
    "material": OKABE_ITO["vermillion"],
    "color": OKABE_ITO["sky_blue"],
}

# For category names outside Broden's six: still distinguishable, then greys.
EXTRA_COLORS = ["#6F4E9C", "#8C6D31", "#4D4D4D", "#999999", "#B8860B", "#2F4F4F"]

# Strip overlays: the unit's region (translucent fill, solid contour) and the label's
# ground-truth region (dashed, sky blue alternating with near-black). Magenta: not a colour of
# most image content, not the label's sky blue (also under colour-vision deficiencies), and
# not the yellow of the concept "yellow".
UNIT_REGION_RGB: Tuple[int, int, int] = (232, 28, 170)
UNIT_FILL_ALPHA = 90                                       # a large region: translucent
SPECK_ALPHA = 235                                          # parts too small for a contour
DIM_RGBA: Tuple[int, int, int, int] = (12, 14, 18, 120)    # over the image outside the region
LABEL_REGION_RGB: Tuple[int, int, int] = (86, 180, 233)    # Okabe-Ito sky blue
LABEL_DARK_RGB: Tuple[int, int, int] = (20, 22, 26)
UNIT_REGION_HEX = "#E81CAA"
LABEL_REGION_HEX = "#56B4E9"
NONE_COLOR = "#9A9A9A"


# The house style of the matplotlib figures (the experiments; the report draws its own: report.charts).
MPL_RC = {
    "svg.fonttype": "none",            # text stays text: editable, searchable, small
    "svg.hashsalt": "netdissect",      # deterministic ids
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.edgecolor": "#444444",
    "axes.labelcolor": "#222222",
    "xtick.color": "#333333",
    "ytick.color": "#333333",
    "legend.frameon": False,
}


def category_colors(categories: Iterable[str]) -> Dict[str, str]:
    """Map each category name to a hex colour, stable for Broden's names."""
    colors: Dict[str, str] = {}
    extra = iter(EXTRA_COLORS)
    for name in categories:
        if name in colors:
            continue
        if name in FIXED_CATEGORY_COLORS:
            colors[name] = FIXED_CATEGORY_COLORS[name]
        else:
            colors[name] = next(extra, NONE_COLOR)
    return colors


def text_color_on(hex_color: str) -> str:
    """Black or white, whichever reads better on the given background."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    return "#000000" if lum > 0.22 else "#FFFFFF"
