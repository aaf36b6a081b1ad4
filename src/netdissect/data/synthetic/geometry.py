"""Shapes: vectorized membership on pixel-centre grids (x: (1, w), y: (h, 1), relative units).

Part of the synthetic Broden generator (see netdissect.data.synthetic)."""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np


class _Shape:
    bbox: Tuple[float, float, float, float]  # x0, y0, x1, y1

    def mask(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Ellipse(_Shape):
    def __init__(self, cx, cy, rx, ry, angle=0.0):
        self.cx, self.cy, self.rx, self.ry = cx, cy, max(rx, 1e-4), max(ry, 1e-4)
        self.c, self.s = math.cos(angle), math.sin(angle)
        hx = math.hypot(rx * self.c, ry * self.s)
        hy = math.hypot(rx * self.s, ry * self.c)
        self.bbox = (cx - hx, cy - hy, cx + hx, cy + hy)

    def mask(self, x, y):
        dx, dy = x - self.cx, y - self.cy
        u = (dx * self.c + dy * self.s) / self.rx
        v = (dy * self.c - dx * self.s) / self.ry
        return u * u + v * v <= 1.0


def _circle(cx, cy, r):
    return _Ellipse(cx, cy, r, r)


class _Polygon(_Shape):
    """Even-odd rule polygon (any simple polygon)."""

    def __init__(self, points):
        self.pts = [(float(px), float(py)) for px, py in points]
        xs = [p[0] for p in self.pts]
        ys = [p[1] for p in self.pts]
        self.bbox = (min(xs), min(ys), max(xs), max(ys))

    def mask(self, x, y):
        inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        n = len(self.pts)
        for i in range(n):
            xi, yi = self.pts[i]
            xj, yj = self.pts[(i + 1) % n]
            if yi == yj:
                continue
            crosses = (yi > y) != (yj > y)
            xint = xi + (y - yi) * ((xj - xi) / (yj - yi))
            inside ^= crosses & (x < xint)
        return inside


def _rect(x0, y0, x1, y1):
    return _Polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _rot_rect(cx, cy, w, h, angle):
    c, s = math.cos(angle), math.sin(angle)
    pts = []
    for lx, ly in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        pts.append((cx + lx * c - ly * s, cy + lx * s + ly * c))
    return _Polygon(pts)


class _Capsule(_Shape):
    """All points within r of the segment p0-p1 (a thick line with round ends)."""

    def __init__(self, x0, y0, x1, y1, r):
        self.x0, self.y0, self.dx, self.dy, self.r = x0, y0, x1 - x0, y1 - y0, r
        self.l2 = max(self.dx * self.dx + self.dy * self.dy, 1e-12)
        self.bbox = (min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)

    def mask(self, x, y):
        px, py = x - self.x0, y - self.y0
        t = np.clip((px * self.dx + py * self.dy) / self.l2, 0.0, 1.0)
        ex, ey = px - t * self.dx, py - t * self.dy
        return ex * ex + ey * ey <= self.r * self.r


class _Union(_Shape):
    def __init__(self, shapes):
        self.shapes = list(shapes)
        b = np.array([s.bbox for s in self.shapes])
        self.bbox = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())

    def mask(self, x, y):
        m = self.shapes[0].mask(x, y)
        for s in self.shapes[1:]:
            m = m | s.mask(x, y)
        return m


class _Intersection(_Shape):
    def __init__(self, a, b):
        self.a, self.b = a, b
        self.bbox = (max(a.bbox[0], b.bbox[0]), max(a.bbox[1], b.bbox[1]),
                     min(a.bbox[2], b.bbox[2]), min(a.bbox[3], b.bbox[3]))

    def mask(self, x, y):
        return self.a.mask(x, y) & self.b.mask(x, y)


class _Below(_Shape):
    """The ground: everything below the wavy horizon y = h0 + amp * sin(2 pi (f x + phase))."""

    def __init__(self, h0, amp, freq, phase):
        self.h0, self.amp, self.freq, self.phase = h0, amp, freq, phase
        self.bbox = (0.0, h0 - abs(amp), 1.0, 1.0)

    def mask(self, x, y):
        return y >= self.h0 + self.amp * np.sin(2 * np.pi * (self.freq * x + self.phase))


class _Everything(_Shape):
    bbox = (0.0, 0.0, 1.0, 1.0)

    def mask(self, x, y):
        return np.ones(np.broadcast(x, y).shape, dtype=bool)
