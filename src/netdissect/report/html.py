"""HTML pages of the report: overview, one page per layer, concepts.

Pages are static files that work from file:// with no server: the data a page's script needs
is embedded in the page as JSON (<script type="application/json">), the style sheet and the
script are local files under assets/, figures and strips are local files. Nothing is fetched.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .colors import (LABEL_REGION_HEX, UNIT_REGION_HEX, category_colors, text_color_on)
from .rundir import LayerData, LayerStats, RunData
from .strips import StripInfo

e = html.escape


def layer_page(layer: LayerData) -> str:
    return f"layer-{layer.dirname}.html"


def concept_slug(label: str, category: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", f"{category}-{label}").strip("-").lower()
    return "c-" + (s or "x")


def _num(x: Any, digits: int = 4) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    return round(v, digits)


def _json_script(obj: Any, elem_id: str) -> str:
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script id="{elem_id}" type="application/json">{text}</script>'


def _cat_badge(cat: str, colors: Dict[str, str]) -> str:
    col = colors.get(cat, "#9A9A9A")
    return (f'<span class="cat" style="background:{col};color:{text_color_on(col)}">'
            f'{e(cat or "none")}</span>')


def _page(title: str, body: str, nav: str, active: str = "") -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="assets/style.css">
</head>
<body data-page="{e(active)}">
{nav}
<main>
{body}
</main>
<footer>Rendered by netdissect from the run directory's saved artefacts. Works offline; the
folder can be zipped and shared.</footer>
<script src="assets/report.js"></script>
</body>
</html>
"""


def nav_bar(run: RunData, active: str) -> str:
    items = [('index.html', 'Overview', active == 'overview'),
             ('concepts.html', 'Concepts', active == 'concepts')]
    on_attr = ' class="on"'
    links = "".join(f'<a href="{h}"{on_attr if on else ""}>{e(t)}</a>' for h, t, on in items)
    layers = "".join(
        f'<a href="{layer_page(l)}"{on_attr if active == "layer:" + l.name else ""}>'
        f'{e(l.name)}</a>' for l in run.layers)
    return (f'<nav class="top"><span class="brand">Network Dissection</span>{links}'
            f'<span class="sep">layers</span>{layers}</nav>')


def legend_html(thr: float, quantile_text: str) -> str:
    """Explains the strips: unit region (highlight, solid) vs label region (dashed)."""
    svg = f"""<svg class="legend-art" viewBox="0 0 120 80" width="120" height="80" aria-hidden="true">
<defs><linearGradient id="lg-sky" x1="0" y1="0" x2="0" y2="1"><stop offset="0" stop-color="#7d8fa3"/>
<stop offset="1" stop-color="#a89c84"/></linearGradient></defs>
<rect x="0" y="0" width="120" height="80" fill="url(#lg-sky)"/>
<rect x="0" y="0" width="120" height="80" fill="#000" fill-opacity="0.62"/>
<ellipse cx="52" cy="44" rx="30" ry="22" fill="url(#lg-sky)"/>
<ellipse cx="52" cy="44" rx="32" ry="24" fill="none" stroke="{UNIT_REGION_HEX}" stroke-width="3"/>
<rect x="30" y="26" width="58" height="42" fill="none" stroke="{LABEL_REGION_HEX}" stroke-width="3" stroke-dasharray="5 5"/>
</svg>"""
    return f"""<section class="legend" aria-label="How to read the image strips">
{svg}
<div class="legend-text">
<p><span class="key unit"></span><b>Unit region</b> (bright, solid yellow contour): where the unit's
activation map, upsampled bilinearly to the image, exceeds the unit's threshold
T<sub>k</sub> ({e(quantile_text)}). The rest of the image is dimmed; a wholly dimmed image is
among the unit's strongest but never exceeds T<sub>k</sub>.</p>
<p><span class="key label"></span><b>Label region</b> (dashed blue outline): where the dataset's
segmentation has the unit's label. Scene and texture labels are image-level: their region is the
whole image, so a dashed blue frame marks the images that carry the label.</p>
<p><b>IoU</b> of the unit with its label over the whole dataset; the unit is a
<b>detector</b> when IoU &gt; {thr:g} (tick on each bar). Images are the unit's top activating
ones, strongest first.</p>
</div>
</section>"""


def _quantile_text(run: RunData) -> str:
    q = (run.summary.get("parameters") or {}).get("quantile")
    try:
        qv = float(q)
    except (TypeError, ValueError):
        return "top 0.5% of its activations over the dataset"
    top = qv if qv < 0.5 else 1.0 - qv
    return f"top {top * 100:.3g}% of its activations over the dataset"


# ----------------------------------------------------------------------------- overview

def _flat_params(cfg: Any, prefix: str = "") -> List[Tuple[str, str]]:
    out: List[Tuple[str, str]] = []
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.extend(_flat_params(v, key + "."))
            elif isinstance(v, (list, tuple)):
                if all(not isinstance(x, (dict, list)) for x in v):
                    s = ", ".join(str(x) for x in v)
                    out.append((key, s if len(s) < 160 else s[:157] + "..."))
            else:
                out.append((key, "" if v is None else str(v)))
    return out


def overview_page(run: RunData, stats: Sequence[LayerStats], figs: Dict[str, Dict[str, str]],
                  cross_fig: Optional[str], version: str, dataset_note: str,
                  experiments: Sequence[Tuple[str, str]] = ()) -> str:
    colors = category_colors(run.categories)
    thr = run.iou_threshold
    model = ((run.config.get("manifest") or {}).get("model") or {}).get("spec")
    parts = [f'<header class="page-head"><h1>Network Dissection report</h1>'
             f'<p class="sub">{e(str(model)) if model else "model not recorded"}'
             f' &middot; {len(run.layers)} layer{"s" if len(run.layers) != 1 else ""}'
             f' &middot; detector: IoU &gt; {thr:g}'
             f' &middot; generated {e(_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))}'
             f' by netdissect {e(version)}</p></header>']

    warns = list(run.warnings) + list(run.report_warnings)
    if warns:
        items = "".join(f"<li>{e(w)}</li>" for w in warns)
        parts.append(f'<section class="warnings" id="warnings"><h2>Warnings</h2><ul>{items}</ul></section>')

    # layers table
    head = "".join(f'<th class="num"><span class="dot" style="background:{colors[c]}"></span>{e(c)}</th>'
                   for c in run.categories)
    rows = []
    for layer, st in zip(run.layers, stats):
        cells = []
        for c in run.categories:
            t = st.unique_per_category.get(c, 0)
            b = st.unique_best_per_category.get(c, 0)
            extra = f' <span class="alt" title="distinct best labels of this category with IoU &gt; {thr:g}">({b})</span>' if b != t else ""
            cells.append(f'<td class="num">{t}{extra}</td>')
        pct = 100.0 * st.detectors / st.units if st.units else 0.0
        rows.append(f'<tr><th scope="row"><a href="{layer_page(layer)}">{e(layer.name)}</a></th>'
                    f'<td class="num">{st.units}</td>'
                    f'<td class="num">{st.detectors} <span class="alt">({pct:.0f}%)</span></td>'
                    f'<td class="num strong">{st.unique}</td>{"".join(cells)}</tr>')
    parts.append(f"""<section><h2>Layers</h2>
<div class="tablewrap"><table class="stats" id="layer-table">
<thead><tr><th>layer</th><th class="num">units</th><th class="num">detectors</th>
<th class="num">unique detectors</th>{head}</tr></thead>
<tbody>{''.join(rows)}</tbody></table></div>
<p class="note">Detectors: units whose best concept has IoU &gt; {thr:g}. Unique detectors: distinct
concepts among the detectors' top labels, overall and per category (the count of the paper). In
parentheses where it differs: distinct best labels per category with IoU &gt; {thr:g}, where one
unit can count in several categories.</p></section>""")

    if cross_fig:
        parts.append(f'<section><h2>Across layers</h2><figure class="fig"><img src="{cross_fig}" '
                     f'alt="Unique detectors per category across layers"></figure></section>')
    for layer in run.layers:
        f = figs.get(layer.name, {})
        imgs = []
        if "unique" in f:
            imgs.append(f'<figure class="fig"><img src="{f["unique"]}" alt="Unique detectors per category, {e(layer.name)}"></figure>')
        if "concepts" in f:
            imgs.append(f'<figure class="fig wide"><div class="figscroll"><img src="{f["concepts"]}" alt="Detector units per concept, {e(layer.name)}"></div></figure>')
        parts.append(f'<section><h2>Layer <a href="{layer_page(layer)}">{e(layer.name)}</a></h2>'
                     f'<div class="figrow">{"".join(imgs)}</div></section>')

    # dataset
    counts = run.category_image_counts
    ds_rows = []
    if counts:
        cmax = max(counts.values()) if counts else 1
        order = list(run.categories) + [c for c in counts if c not in run.categories]
        for c in order:
            if c not in counts:
                continue
            n = counts[c]
            w = 100.0 * n / cmax if cmax else 0
            col = colors.get(c, "#9A9A9A")
            ds_rows.append(f'<tr><th scope="row"><span class="dot" style="background:{col}"></span>{e(c)}</th>'
                           f'<td class="num">{n:,}</td><td class="barcell"><span class="bar" '
                           f'style="width:{w:.1f}%;background:{col}"></span></td></tr>')
    ds = run.dataset
    ds_info = [("path", str(ds.path) if ds.path else "not recorded"), ("split", ds.split or "all"),
               ("categories", ", ".join(ds.categories) if ds.categories else "all"),
               ("limit", str(ds.limit) if ds.limit else "none")]
    if ds.index_digest:
        ds_info.append(("index digest", ds.index_digest))
    info_rows = "".join(f"<tr><th scope=\"row\">{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in ds_info)
    count_table = (f'<table class="stats counts"><thead><tr><th>category</th><th class="num">images labeled</th>'
                   f'<th></th></tr></thead><tbody>{"".join(ds_rows)}</tbody></table>'
                   if ds_rows else '<p class="note">No per-category image counts recorded in summary.json.</p>')
    if experiments:
        items = "".join(f'<li><a href="{e(link)}">{e(name)}</a></li>' for name, link in experiments)
        parts.append(f'<section id="experiments"><h2>Experiments on this run</h2><ul>{items}</ul>'
                     '<p class="note">Pages written by netdissect explain, ablate, rotate and the other '
                     'experiment commands into this run directory; each is self-contained.</p></section>')
    parts.append(f"""<section><h2>Dataset</h2>
<div class="two">{count_table}
<table class="kv"><tbody>{info_rows}</tbody></table></div>
{f'<p class="note">{e(dataset_note)}</p>' if dataset_note else ''}</section>""")

    params = _flat_params(run.config)
    prow = "".join(f"<tr><th scope=\"row\">{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in params)
    parts.append(f"""<section><h2>Run configuration</h2>
<details><summary>{len(params)} settings from config.json</summary>
<table class="kv"><tbody>{prow}</tbody></table></details></section>""")
    return _page("Network Dissection report", "\n".join(parts), nav_bar(run, "overview"), "overview")


# ----------------------------------------------------------------------------- layer pages

def _runner_ups(layer: LayerData, k: int, n: int = 3) -> List[list]:
    if layer.iou is None:
        return []
    row = layer.iou[k]
    if row.size == 0:
        return []
    top = np.argsort(-row, kind="stable")[: n + 1]
    out = []
    col = layer.units[k].column
    for c in top:
        if col is not None and c == col:
            continue
        if len(out) >= n:
            break
        if not row[c] > 0:
            break
        out.append([str(layer.labels[c]), str(layer.label_categories[c]), _num(row[c])])
    return out


def layer_data(run: RunData, layer: LayerData, stats: LayerStats,
               strips: Dict[int, StripInfo], image_level: Sequence[str], top_k: int) -> Dict[str, Any]:
    colors = category_colors(run.categories + sorted({u.category for u in layer.units} - set(run.categories)))
    units = []
    for u in layer.units:
        s = strips.get(u.unit)
        d: Dict[str, Any] = {"u": u.unit, "l": u.label, "c": u.category, "i": _num(u.iou),
                             "r": _runner_ups(layer, u.unit)}
        if layer.thresholds is not None:
            d["t"] = _num(layer.thresholds[u.unit], 5)
        if s is not None:
            d["s"] = s.file
            d["w"] = s.width
            d["h"] = s.height
            if s.cells:
                d["x"] = [[x, w, c.image, _num(c.score, 3), c.has_label, _num(c.region_frac, 3)]
                          for x, w, c in zip(s.cell_x, s.cell_w, s.cells)]
        units.append(d)
    ious = [u.iou for u in layer.units if math.isfinite(u.iou)]
    iou_max = max(ious) if ious else 0.0
    scale = max(0.1, math.ceil(max(iou_max, run.iou_threshold * 2) * 20) / 20)
    return {
        "page": "layer",
        "layer": layer.name,
        "thr": run.iou_threshold,
        "scale": scale,
        "topk": top_k,
        "imageLevel": list(image_level),
        "categories": [{"name": c, "color": colors[c], "text": text_color_on(colors[c])}
                       for c in colors],
        "units": units,
        "stats": {"units": stats.units, "detectors": stats.detectors, "unique": stats.unique},
    }


def layer_html(run: RunData, layer: LayerData, stats: LayerStats, data: Dict[str, Any],
               figs: Dict[str, str], has_strips: bool, dataset_note: str) -> str:
    colors = category_colors(run.categories)
    thr = run.iou_threshold
    cats_present = []
    for u in layer.units:
        if u.category and u.category not in cats_present:
            cats_present.append(u.category)
    order = {c: i for i, c in enumerate(run.categories)}
    cats_present.sort(key=lambda c: order.get(c, 99))
    opts = "".join(f'<option value="{e(c)}">{e(c)} ({sum(1 for u in layer.units if u.category == c)})</option>'
                   for c in cats_present)
    per_cat = " ".join(f'{_cat_badge(c, colors)} {stats.unique_per_category.get(c, 0)}'
                       for c in run.categories if stats.unique_per_category.get(c, 0))
    warn = ""
    lw = [w for w in layer.warnings]
    if not has_strips:
        lw.append("no image strips: " + (dataset_note or "topk.npz or the dataset is unavailable"))
    if lw:
        warn = '<section class="warnings"><ul>' + "".join(f"<li>{e(w)}</li>" for w in lw) + "</ul></section>"
    fig_html = ""
    if figs:
        fig_html = '<div class="figrow">' + "".join(
            f'<figure class="fig"><img src="{src}" alt="{e(alt)}"></figure>'
            for src, alt in ((figs.get("unique"), "unique detectors per category"),
                             (figs.get("hist"), "IoU histogram")) if src) + "</div>"
        fig_html = f'<details class="figs"><summary>Charts for this layer</summary>{fig_html}</details>'
    body = f"""<header class="page-head"><h1>Layer <code>{e(layer.name)}</code></h1>
<p class="sub">{stats.units} units &middot; <b>{stats.detectors}</b> detectors (IoU &gt; {thr:g})
&middot; <b>{stats.unique}</b> unique detectors &nbsp; {per_cat}</p></header>
{warn}
{legend_html(thr, _quantile_text(run))}
{fig_html}
<section class="controls" aria-label="Filter and sort units">
<label>Category <select id="f-cat"><option value="">all</option>{opts}</select></label>
<label>Label <input id="f-q" type="search" placeholder="e.g. dog, or #12" autocomplete="off"></label>
<label>IoU from <input id="f-min" type="number" step="0.01" min="0" max="1" inputmode="decimal"></label>
<label>to <input id="f-max" type="number" step="0.01" min="0" max="1" inputmode="decimal"></label>
<label class="check"><input id="f-det" type="checkbox"> detectors only</label>
<label>Sort <select id="f-sort">
<option value="iou-desc">IoU, high to low</option><option value="iou-asc">IoU, low to high</option>
<option value="unit">unit number</option><option value="label">label</option>
<option value="cat">category, then IoU</option></select></label>
<label>Per page <select id="f-per"><option>25</option><option selected>50</option><option>100</option><option>200</option></select></label>
<button id="f-reset" type="button">Reset</button>
</section>
<div class="status"><span id="count" aria-live="polite"></span><nav class="pager" id="pager-top"></nav></div>
<div id="cards" class="cards"></div>
<nav class="pager" id="pager-bottom"></nav>
<noscript><p class="warnings">The unit cards need JavaScript; the strips are under strips/.</p></noscript>
{_json_script(data, "nd-data")}"""
    return _page(f"{layer.name} · Network Dissection", body, nav_bar(run, "layer:" + layer.name), "layer")


# ----------------------------------------------------------------------------- concepts page

def concepts_html(run: RunData, stats: Sequence[LayerStats],
                  strip_files: Optional[Dict[str, Dict[int, str]]] = None) -> str:
    """One section per concept with a unit at IoU > threshold: its detector units (top label)
    and the other units above the threshold, each linking to the unit's card; the strip of
    the concept's best detector is shown as evidence."""
    strip_files = strip_files or {}
    thr = run.iou_threshold
    colors = category_colors(run.categories)
    concepts: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for layer in run.layers:
        # top-label detectors
        for u in layer.units:
            if u.iou > thr:
                c = concepts.setdefault((u.label, u.category), {"top": [], "other": []})
                c["top"].append((layer, u.unit, u.iou))
        # other units above the threshold for the concept (not their top label)
        if layer.iou is not None:
            ks, cs = np.nonzero(layer.iou > thr)
            for k, col in zip(ks.tolist(), cs.tolist()):
                u = layer.units[k]
                if u.column == col:
                    continue
                key = (str(layer.labels[col]), str(layer.label_categories[col]))
                c = concepts.setdefault(key, {"top": [], "other": []})
                c["other"].append((layer, k, float(layer.iou[k, col])))
    order = {c: i for i, c in enumerate(run.categories)}
    keys = sorted(concepts, key=lambda k: (order.get(k[1], 99), -len(concepts[k]["top"]),
                                           -max([x[2] for x in concepts[k]["top"] + concepts[k]["other"]]),
                                           k[0]))

    def chip(l: LayerData, k: int, iou: float) -> str:
        return (f'<a class="chip" href="{layer_page(l)}#unit-{k}" title="{e(l.name)} unit {k}: '
                f'IoU {iou:.3f}">#{k}<span class="chip-iou">{iou:.3f}</span></a>')

    def chips(items: List[tuple], shown: int = 24) -> str:
        """Chips grouped by layer (in run order), the best first; long lists fold."""
        out = []
        for layer in run.layers:
            mine = sorted([t for t in items if t[0] is layer], key=lambda t: -t[2])
            if not mine:
                continue
            head = "".join(chip(*t) for t in mine[:shown])
            rest = ""
            if len(mine) > shown:
                rest = (f'<details class="more"><summary>{len(mine) - shown} more</summary>'
                        f'<div class="chips">{"".join(chip(*t) for t in mine[shown:])}</div></details>')
            out.append(f'<div class="lg"><span class="lg-name">{e(layer.name)}</span>'
                       f'<div class="chips">{head}</div>{rest}</div>')
        return "".join(out)

    by_cat: Dict[str, List[str]] = {}
    sections = []
    for key in keys:
        label, cat = key
        info = concepts[key]
        slug = concept_slug(label, cat)
        by_cat.setdefault(cat, []).append(f'<a href="#{slug}">{e(label)}</a>')
        other = ""
        if info["other"]:
            other = (f'<details class="others"><summary>{len(info["other"])} other unit'
                     f'{"s" if len(info["other"]) != 1 else ""} with IoU &gt; {thr:g} for {e(label)}, '
                     f'whose top label is another concept</summary>{chips(info["other"], 10 ** 9)}</details>')
        best = max([x[2] for x in info["top"] + info["other"]])
        top = (chips(info["top"]) if info["top"]
               else '<p class="note">No unit has this concept as its top label.</p>')
        evidence = ""
        if info["top"]:
            bl, bk, biou = max(info["top"], key=lambda t: t[2])
            src = strip_files.get(bl.name, {}).get(bk)
            if src:
                evidence = (f'<a class="evidence" href="{layer_page(bl)}#unit-{bk}" '
                            f'title="{e(bl.name)} unit {bk}, IoU {biou:.3f}: its top images">'
                            f'<img src="{e(src)}" loading="lazy" alt="top images of {e(bl.name)} unit {bk}">'
                            f'<span>best detector: {e(bl.name)} unit {bk} &middot; IoU {biou:.3f}</span></a>')
        sections.append(
            f'<section class="concept" id="{slug}" data-label="{e(label.lower())}" data-cat="{e(cat)}">'
            f'<h3>{e(label)} {_cat_badge(cat, colors)} <span class="meta">{len(info["top"])} detector unit'
            f'{"s" if len(info["top"]) != 1 else ""} &middot; best IoU {best:.3f}</span></h3>'
            f'<div class="concept-body">{evidence}<div class="concept-units">{top}{other}</div></div></section>')
    index = "".join(
        f'<p class="cat-index">{_cat_badge(c, colors)} {len(by_cat[c])} concept{"s" if len(by_cat[c]) != 1 else ""}: '
        f'{", ".join(by_cat[c])}</p>' for c in sorted(by_cat, key=lambda c: order.get(c, 99)))
    opts = "".join(f'<option value="{e(c)}">{e(c)}</option>' for c in sorted(by_cat, key=lambda c: order.get(c, 99)))
    body = f"""<header class="page-head"><h1>Concepts</h1>
<p class="sub">{len(keys)} concepts with at least one unit at IoU &gt; {thr:g}. Each chip is a unit
(#number, with its IoU for the concept) and links to the unit's card; the strip is the top images
of the concept's best detector.</p></header>
<section class="controls"><label>Category <select id="c-cat"><option value="">all</option>{opts}</select></label>
<label>Concept <input id="c-q" type="search" placeholder="filter concepts" autocomplete="off"></label>
<span id="c-count"></span></section>
<section class="index">{index or '<p class="note">No detector in any layer.</p>'}</section>
<div id="concepts">{''.join(sections)}</div>
{_json_script({"page": "concepts"}, "nd-data")}"""
    return _page("Concepts · Network Dissection", body, nav_bar(run, "concepts"), "concepts")
