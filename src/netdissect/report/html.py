"""The report's pages, from Jinja2 templates (report/templates/, autoescaped).

Pages are static files that work from file:// with no server: the data a page's script needs is
embedded as JSON (<script type="application/json">), style sheet and script are local files
under assets/, images are local files. Every number a page shows or filters on (detector status,
counts) is computed here in Python, once, from the run's own statistics.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from netdissect.report.colors import LABEL_REGION_HEX, UNIT_REGION_HEX, category_colors, text_color_on
from netdissect.report.runview import LayerView, RunView
from netdissect.report.tiles import Atlas, LayerTiles

TEMPLATES = Path(__file__).with_name("templates")


def layer_page(layer: LayerView) -> str:
    return f"layer-{layer.dirname}.html"


def concept_slug(label: str, category: str) -> str:
    """The id of a concept's section on concepts.html (report.js builds the same)."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", f"{category}-{label}").strip("-").lower()
    return "c-" + (s or "x")


def _num(x: Any, digits: int = 4) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return round(v, digits) if math.isfinite(v) else None


def json_script(obj: Any, elem_id: str) -> Markup:
    """Data for the page's script; <, > and & escaped so no text can close the element."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return Markup(f'<script id="{elem_id}" type="application/json">{text}</script>')


def plural(n: int, word: str, words: Optional[str] = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


_ENV: Optional[Environment] = None


def environment() -> Environment:
    global _ENV
    if _ENV is None:
        _ENV = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                           autoescape=select_autoescape(["html"]), trim_blocks=True,
                           lstrip_blocks=True, keep_trailing_newline=True)
        _ENV.filters["plural"] = plural
        _ENV.globals.update(json_script=json_script, layer_page=layer_page,
                            concept_slug=concept_slug, text_color_on=text_color_on,
                            unit_hex=UNIT_REGION_HEX, label_hex=LABEL_REGION_HEX)
    return _ENV


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


# ----------------------------------------------------------------------------- shared context

def iou_scale(run: RunView) -> float:
    """One IoU axis for every card of every layer (0 to the best IoU of the run, in 0.05 steps)."""
    best = max([u.iou for l in run.layers for u in l.units if math.isfinite(u.iou)] + [0.0])
    return max(0.1, math.ceil(max(best, run.iou_threshold * 2) * 20) / 20)


def quantile_text(run: RunView) -> str:
    q = run.quantile
    if q is None:
        return "top 0.5% of its activations over the dataset"
    top = q if q < 0.5 else 1.0 - q
    return f"top {top * 100:.3g}% of its activations over the dataset"


def common(run: RunView, active: str, version: str) -> Dict[str, Any]:
    colors = category_colors(run.categories + sorted(
        {u.category for l in run.layers for u in l.units if u.category} - set(run.categories)))
    return {"run": run, "active": active, "thr": run.iou_threshold, "colors": colors,
            "version": version, "layers": run.layers,
            "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}


def category_data(colors: Dict[str, str]) -> List[Dict[str, str]]:
    """Each category's colour and the text colour that reads on it, for the page's script."""
    return [{"name": c, "color": col, "text": text_color_on(col)} for c, col in colors.items()]


def atlas_data(atlas: Optional[Atlas], used: Optional[set] = None, names: Sequence[str] = ()) -> Dict[str, Any]:
    """The images a page's tiles need: atlas files and each image's slot and file name."""
    if atlas is None or not atlas.files:
        return {}
    keys = sorted(atlas.slot) if used is None else sorted(i for i in used if i in atlas.slot)
    return {"files": atlas.files, "cols": atlas.cols, "ih": atlas.image_hw[0], "iw": atlas.image_hw[1],
            "slot": {str(i): list(atlas.slot[i]) + [names[i] if i < len(names) else ""] for i in keys}}


def tiles_layout(tiles: Optional[LayerTiles]) -> Dict[str, Any]:
    if tiles is None:
        return {}
    return {"sheets": tiles.sheets, "per": tiles.units_per_sheet, "k": tiles.k,
            "sh": tiles.seg_hw[0], "sw": tiles.seg_hw[1], "placement": tiles.placement,
            "fsheets": tiles.formula_sheets}


def unit_tiles(tiles: Optional[LayerTiles], k: int) -> List[list]:
    """[image, column, max activation, label present, region share] per tile of unit k."""
    if tiles is None:
        return []
    out = []
    for j, t in enumerate(tiles.tiles.get(k, [])):
        out.append([t.image, j, _num(t.score, 4), t.has_label, _num(t.region_frac, 4)])
    return out


# ----------------------------------------------------------------------------- layer page

def layer_data(run: RunView, layer: LayerView, tiles: Optional[LayerTiles], atlas: Optional[Atlas],
               names: Sequence[str], colors: Dict[str, str], scale: float,
               image_level: Sequence[str], top_k: int, concepts: set) -> Dict[str, Any]:
    """The layer page's data. ``concepts``: the (label, category) pairs with a section on
    concepts.html (a label links there only then)."""
    units = []
    used = set()
    for u in layer.units:
        d: Dict[str, Any] = {"u": u.unit, "l": u.label, "c": u.category, "i": _num(u.iou),
                             "d": 1 if u.detector else 0,
                             "r": [[lab, cat, _num(v), int((lab, cat) in concepts)]
                                   for lab, cat, v in u.runners_up],
                             "b": [[cat, lab, _num(v), int((lab, cat) in concepts)]
                                   for cat, (lab, v) in u.per_category.items()],
                             "t": _num(layer.result.thresholds[u.unit], 5)}
        formulas = getattr(layer.result, "formulas", None)
        if formulas is not None:   # compositional explanation (netdissect.formulas.search)
            d["f"] = formulas.text(u.unit)
            d["fi"] = _num(formulas.iou[u.unit])
            d["fo"] = sorted(set(formulas.operators(u.unit)))
        x = unit_tiles(tiles, u.unit)
        if x:
            d["x"] = x
            used.update(t[0] for t in x)
            if tiles is not None and u.unit in tiles.heat_max:
                d["hm"] = _num(tiles.heat_max[u.unit], 5)
        units.append(d)
    stats = layer.stats
    return {
        "page": "layer", "layer": layer.name, "thr": run.iou_threshold, "scale": scale,
        "topk": top_k, "imageLevel": list(image_level), "categories": category_data(colors),
        "units": units, "atlas": atlas_data(atlas, used, names), "tiles": tiles_layout(tiles),
        "mapShape": (tiles.heat_shape if tiles is not None and tiles.heat_shape
                     else [int(v) for v in layer.result.map_shape]),
        "stats": {"units": stats["units"], "detectors": stats["detectors"],
                  "unique": stats["unique_detectors"]},
        "formulas": formula_info(layer),
    }


def formula_info(layer: LayerView) -> Optional[Dict[str, Any]]:
    """The layer's formula search settings and means, when it has formulas."""
    f = getattr(layer.result, "formulas", None)
    if f is None:
        return None
    s = f.summary(layer.result.iou_threshold)
    return {"length": s["length"], "beam": s["beam"], "meanSingle": s["mean_single_iou"],
            "mean": s["mean_iou"], "improved": s["units_improved"], "detectors": s["detectors"],
            "operators": s["units_with_operator"]}


def heat_data(tiles: Optional[LayerTiles]) -> Dict[str, str]:
    return {} if tiles is None else {str(k): v for k, v in tiles.heat.items()}


def category_bars(layer: LayerView, categories: Sequence[str], colors: Dict[str, str]) -> List[Dict[str, Any]]:
    """Per category: detectors and unique detectors (summary.json's numbers) for the clickable
    bar chart of a layer; categories without any unit labeled in them are left out."""
    st = layer.stats
    present = {u.category for u in layer.units}
    top = max([st["detectors_per_category"].get(c, 0) for c in categories] + [1])
    bars = []
    for c in categories:
        det = st["detectors_per_category"].get(c, 0)
        if not det and c not in present:
            continue
        bars.append({"cat": c, "detectors": det, "unique": st["unique_per_category"].get(c, 0),
                     "best": st["unique_best_per_category"].get(c, 0),
                     "units": sum(1 for u in layer.units if u.category == c),
                     "width": 100.0 * det / top, "color": colors.get(c, "#9A9A9A")})
    return bars


# ----------------------------------------------------------------------------- search index

def search_index(run: RunView) -> List[list]:
    """Every unit of every layer: [layer, unit, label, category, IoU, detector, runners-up]."""
    out = []
    for li, layer in enumerate(run.layers):
        for u in layer.units:
            out.append([li, u.unit, u.label, u.category, _num(u.iou), 1 if u.detector else 0,
                        [r[0] for r in u.runners_up]])
    return out


# ----------------------------------------------------------------------------- concepts

def concept_sections(run: RunView, colors: Dict[str, str]) -> List[Dict[str, Any]]:
    """A section for every concept that some unit ranks first (detector or not), or that some
    unit exceeds the threshold for: its detector units, the units ranking it first below the
    threshold, and the other units above the threshold for it."""
    thr = run.iou_threshold
    found: Dict[Tuple[str, str], Dict[str, list]] = {}
    for li, layer in enumerate(run.layers):
        for u in layer.units:
            if not u.label:
                continue
            c = found.setdefault((u.label, u.category), {"top": [], "weak": [], "other": []})
            (c["top"] if u.detector else c["weak"]).append((li, u.unit, u.iou))
        iou = layer.result.iou
        if iou.shape[1]:
            ks, cs = np.nonzero(iou > thr)
            for k, col in zip(ks.tolist(), cs.tolist()):
                if layer.units[k].column == col:
                    continue
                key = (layer.result.concept_names[col], layer.result.concept_categories[col])
                c = found.setdefault(key, {"top": [], "weak": [], "other": []})
                c["other"].append((li, k, float(iou[k, col])))
    order = {c: i for i, c in enumerate(run.categories)}

    def best(c):
        return max([x[2] for x in c["top"] + c["weak"] + c["other"]])

    keys = sorted(found, key=lambda k: (order.get(k[1], 99), -len(found[k]["top"]), -best(found[k]), k[0]))
    sections = []
    for label, cat in keys:
        c = found[(label, cat)]
        groups = {}
        for kind in ("top", "weak", "other"):
            by_layer = []
            for li, layer in enumerate(run.layers):
                mine = sorted([(k, v) for l, k, v in c[kind] if l == li], key=lambda t: -t[1])
                if mine:
                    by_layer.append({"layer": layer, "units": mine})
            groups[kind] = by_layer
        evidence = max(c["top"], key=lambda t: t[2]) if c["top"] else None
        sections.append({"label": label, "cat": cat, "slug": concept_slug(label, cat),
                         "color": colors.get(cat, "#9A9A9A"), "detectors": len(c["top"]),
                         "weak": len(c["weak"]), "best": best(c), "groups": groups,
                         "evidence": evidence})
    return sections
