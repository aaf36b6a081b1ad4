"""A small chart kit for the report's figures: shapes laid out once, written as SVG (always) or
drawn as PNG (on request).

matplotlib took 0.7 s of a 1.9 s report (0.4 s of it the import) for four bar charts; these
take milliseconds. Layout measures text with the font the figures name (DejaVu Sans, from
matplotlib's own data folder, else Pillow's default), so labels neither overlap nor clip, and
the PNG twin is drawn from the same shapes as the SVG, not from a second description.
"""
from __future__ import annotations

import functools
import html
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from netdissect.atomic import atomic_path, atomic_write_bytes

FONT_FAMILY = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif"
INK = "#222222"         # text
AXIS = "#444444"        # axis lines and ticks
GRID = "#E6E6E6"


@functools.lru_cache(maxsize=None)
def _font_path(bold: bool) -> Optional[str]:
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / \
        ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    return str(path) if path.is_file() else None


@functools.lru_cache(maxsize=64)
def font(size: float, bold: bool = False):
    """A Pillow font of ``size`` px: DejaVu Sans where matplotlib ships it, else Pillow's own."""
    from PIL import ImageFont
    path = _font_path(bold)
    if path is None:
        try:
            return ImageFont.load_default(size)
        except TypeError:                                   # Pillow before 10.1: one bitmap size
            return ImageFont.load_default()
    try:
        return ImageFont.truetype(path, size)              # fractional sizes: Pillow 10.1 and later
    except (TypeError, ValueError):
        return ImageFont.truetype(path, max(1, round(size)))


def text_width(s: str, size: float, bold: bool = False) -> float:
    """Advance width of ``s`` at ``size`` px: measured at 100 px and scaled, so fractional
    sizes measure exactly on any Pillow."""
    return float(font(100.0, bold).getlength(s)) * size / 100.0


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: Optional[str] = None
    stroke: Optional[str] = None
    stroke_width: float = 1.0
    dash: Optional[Tuple[float, float]] = None
    tip: Optional[str] = None       # hover text in the SVG


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str = AXIS
    width: float = 1.0
    dash: Optional[Tuple[float, float]] = None


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    r: float
    fill: str
    tip: Optional[str] = None


@dataclass(frozen=True)
class Text:
    x: float
    y: float
    s: str
    size: float = 10.0
    fill: str = INK
    anchor: str = "start"           # start | middle | end (along the text)
    valign: str = "baseline"        # baseline | middle | top
    rotate: float = 0.0             # degrees, counter-clockwise, about (x, y)
    bold: bool = False


_SVG_ANCHOR = {"start": "start", "middle": "middle", "end": "end"}
_SVG_BASELINE = {"baseline": "", "middle": ' dominant-baseline="central"', "top": ' dominant-baseline="hanging"'}
_PIL_ANCHOR = {("start", "baseline"): "ls", ("middle", "baseline"): "ms", ("end", "baseline"): "rs",
               ("start", "middle"): "lm", ("middle", "middle"): "mm", ("end", "middle"): "rm",
               ("start", "top"): "lt", ("middle", "top"): "mt", ("end", "top"): "rt"}


def _n(v: float) -> str:
    """A coordinate, short and deterministic."""
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


@dataclass
class Canvas:
    """A figure's shapes in pixels (y down), kept in drawing order."""

    width: float
    height: float
    title: str = ""
    shapes: list = field(default_factory=list)

    def add(self, shape) -> None:
        self.shapes.append(shape)

    def svg(self) -> str:
        w, h = math.ceil(self.width), math.ceil(self.height)
        label = f' role="img" aria-label="{html.escape(self.title)}"' if self.title else ""
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
               f'font-family="{FONT_FAMILY}"{label}>',
               f"<title>{html.escape(self.title)}</title>" if self.title else "",
               f'<rect width="{w}" height="{h}" fill="#FFFFFF"/>']
        for s in self.shapes:
            if isinstance(s, Rect):
                paint = f' fill="{s.fill or "none"}"'
                if s.stroke:
                    paint += f' stroke="{s.stroke}" stroke-width="{_n(s.stroke_width)}"'
                    if s.dash:
                        paint += f' stroke-dasharray="{_n(s.dash[0])} {_n(s.dash[1])}"'
                tip = f"<title>{html.escape(s.tip)}</title>" if s.tip else ""
                body = f'<rect x="{_n(s.x)}" y="{_n(s.y)}" width="{_n(s.w)}" height="{_n(s.h)}"{paint}'
                out.append(body + (f">{tip}</rect>" if tip else "/>"))
            elif isinstance(s, Dot):
                tip = f"<title>{html.escape(s.tip)}</title>" if s.tip else ""
                body = f'<circle cx="{_n(s.x)}" cy="{_n(s.y)}" r="{_n(s.r)}" fill="{s.fill}"'
                out.append(body + (f">{tip}</circle>" if tip else "/>"))
            elif isinstance(s, Line):
                dash = f' stroke-dasharray="{_n(s.dash[0])} {_n(s.dash[1])}"' if s.dash else ""
                out.append(f'<line x1="{_n(s.x1)}" y1="{_n(s.y1)}" x2="{_n(s.x2)}" y2="{_n(s.y2)}" '
                           f'stroke="{s.stroke}" stroke-width="{_n(s.width)}"{dash}/>')
            else:
                rot = f' transform="rotate({_n(-s.rotate)} {_n(s.x)} {_n(s.y)})"' if s.rotate else ""
                weight = ' font-weight="bold"' if s.bold else ""
                out.append(f'<text x="{_n(s.x)}" y="{_n(s.y)}" font-size="{_n(s.size)}" fill="{s.fill}" '
                           f'text-anchor="{_SVG_ANCHOR[s.anchor]}"{_SVG_BASELINE[s.valign]}{weight}{rot}>'
                           f"{html.escape(s.s)}</text>")
        out.append("</svg>\n")
        return "\n".join(part for part in out if part)

    def png(self, scale: float = 1.5):
        """The same shapes drawn by Pillow, ``scale`` pixels per SVG pixel (an RGB image)."""
        from PIL import Image, ImageDraw
        size = (math.ceil(self.width * scale), math.ceil(self.height * scale))
        image = Image.new("RGB", size, "#FFFFFF")
        draw = ImageDraw.Draw(image)
        for s in self.shapes:
            if isinstance(s, Rect):
                box = [s.x * scale, s.y * scale, (s.x + s.w) * scale, (s.y + s.h) * scale]
                if s.fill:
                    draw.rectangle(box, fill=s.fill)
                if s.stroke:
                    x0, y0, x1, y1 = box
                    for seg in ((x0, y0, x1, y0), (x1, y0, x1, y1), (x1, y1, x0, y1), (x0, y1, x0, y0)):
                        _line(draw, seg, s.stroke, s.stroke_width * scale, s.dash, scale)
            elif isinstance(s, Dot):
                draw.ellipse([(s.x - s.r) * scale, (s.y - s.r) * scale, (s.x + s.r) * scale,
                              (s.y + s.r) * scale], fill=s.fill)
            elif isinstance(s, Line):
                _line(draw, (s.x1 * scale, s.y1 * scale, s.x2 * scale, s.y2 * scale), s.stroke,
                      s.width * scale, s.dash, scale)
            else:
                _text(image, draw, s, scale)
        return image


def _line(draw, seg, color: str, width: float, dash, scale: float) -> None:
    x0, y0, x1, y1 = seg
    w = max(1, round(width))
    if not dash:
        draw.line(seg, fill=color, width=w)
        return
    on, off = dash[0] * scale, dash[1] * scale
    length = math.hypot(x1 - x0, y1 - y0)
    if length == 0:
        return
    dx, dy = (x1 - x0) / length, (y1 - y0) / length
    t = 0.0
    while t < length:
        end = min(t + on, length)
        draw.line((x0 + dx * t, y0 + dy * t, x0 + dx * end, y0 + dy * end), fill=color, width=w)
        t = end + off


def _text(image, draw, s: Text, scale: float) -> None:
    f = font(s.size * scale, s.bold)
    anchor = _PIL_ANCHOR[(s.anchor, s.valign)]
    x, y = s.x * scale, s.y * scale
    if not s.rotate:
        draw.text((x, y), s.s, fill=s.fill, font=f, anchor=anchor)
        return
    from PIL import Image, ImageDraw
    left, top, right, bottom = f.getbbox(s.s, anchor=anchor)
    pad = 2
    tile = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (255, 255, 255, 0))
    ImageDraw.Draw(tile).text((pad - left, pad - top), s.s, fill=s.fill, font=f, anchor=anchor)
    # the anchor point sits at (pad - left, pad - top) in the tile; follow it through the rotation
    cx, cy = tile.width / 2, tile.height / 2
    turned = tile.rotate(s.rotate, resample=Image.BICUBIC, expand=True)
    a = math.radians(s.rotate)
    vx, vy = pad - left - cx, pad - top - cy
    rx, ry = vx * math.cos(a) + vy * math.sin(a), -vx * math.sin(a) + vy * math.cos(a)
    ax, ay = turned.width / 2 + rx, turned.height / 2 + ry
    image.paste(turned, (round(x - ax), round(y - ay)), turned)


def nice_ticks(top: float, integer: bool = False, most: int = 6) -> List[float]:
    """Ticks 0, step, 2 step, ... up to ``top`` with a step of 1, 2 or 5 times a power of ten (at
    least 1 for integer axes), at most ``most`` + 1 of them; the axis itself may run past the last."""
    top = max(float(top), 1e-12)
    raw = top / most
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, round(step))
    count = int(math.floor(top / step + 1e-9))
    return [round(i * step, 10) for i in range(count + 1)]


def tick_label(v: float) -> str:
    return f"{v:g}"


def save(canvas: Canvas, path: Path, png: bool = False) -> Path:
    """path (.svg) and, with png, its .png twin (150 dpi), each written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, canvas.svg().encode("utf-8"))
    if png:
        with atomic_path(path.with_suffix(".png")) as tmp:
            canvas.png().save(tmp, format="PNG", optimize=False)
    return path


@dataclass
class Axes:
    """Data to pixels for a plot box at (x, y) of size w x h; y grows upwards in data."""

    x: float
    y: float
    w: float
    h: float
    xlim: Tuple[float, float]
    ylim: Tuple[float, float]

    def px(self, v: float) -> float:
        lo, hi = self.xlim
        return self.x + (v - lo) / ((hi - lo) or 1.0) * self.w

    def py(self, v: float) -> float:
        lo, hi = self.ylim
        return self.y + self.h - (v - lo) / ((hi - lo) or 1.0) * self.h

    def frame(self, canvas: Canvas) -> None:
        """The left and bottom spines."""
        canvas.add(Line(self.x, self.y, self.x, self.y + self.h))
        canvas.add(Line(self.x, self.y + self.h, self.x + self.w, self.y + self.h))

    def yticks(self, canvas: Canvas, ticks: Sequence[float], grid: bool = True, size: float = 9.0) -> None:
        for t in ticks:
            y = self.py(t)
            if grid and t:
                canvas.add(Line(self.x, y, self.x + self.w, y, stroke=GRID))
            canvas.add(Line(self.x - 4, y, self.x, y))
            canvas.add(Text(self.x - 6, y, tick_label(t), size=size, anchor="end", valign="middle"))

    def xticks(self, canvas: Canvas, ticks: Sequence[float], grid: bool = True, size: float = 9.0) -> None:
        bottom = self.y + self.h
        for t in ticks:
            x = self.px(t)
            if grid and t:
                canvas.add(Line(x, self.y, x, bottom, stroke=GRID))
            canvas.add(Line(x, bottom, x, bottom + 4))
            canvas.add(Text(x, bottom + 6, tick_label(t), size=size, anchor="middle", valign="top"))


def legend(canvas: Canvas, x: float, y: float, items: Sequence[Tuple[str, Rect]], size: float = 8.5,
           columns: int = 1, gap: float = 14.0) -> Tuple[float, float]:
    """Swatches with labels from (x, y), in ``columns`` columns; each item's Rect gives the
    swatch's paint (its position is ignored). Returns the legend's width and height."""
    row_h = size + 6
    widths = [12 + 5 + text_width(label, size) for label, _ in items]
    col_w = [max(widths[c::columns], default=0) for c in range(columns)]
    for i, (label, paint) in enumerate(items):
        col, row = i % columns, i // columns
        sx = x + sum(col_w[:col]) + gap * col
        sy = y + row * row_h
        canvas.add(Rect(sx, sy + 1, 12, size, fill=paint.fill, stroke=paint.stroke,
                        stroke_width=paint.stroke_width, dash=paint.dash))
        canvas.add(Text(sx + 17, sy + 1 + size / 2, label, size=size, valign="middle"))
    rows = math.ceil(len(items) / columns)
    return sum(col_w) + gap * (columns - 1), rows * row_h
