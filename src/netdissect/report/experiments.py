"""Experiment pages: each experiment's figures and tables as one self-contained HTML file.

Every experiment command ends with ``write_experiment_page(out_dir, title)``: the SVG figures
are inlined, PNG-only figures embedded as data, CSV tables rendered, the report's stylesheet
inlined, so ``experiment.html`` opens anywhere on its own. A run directory's report lists and
copies the experiment pages found under it (explain, ablate, rotation, ...).
"""
from __future__ import annotations

import base64
import csv
import html
import shutil
from pathlib import Path
from typing import List, Tuple

PAGE = "experiment.html"
MAX_ROWS = 200


def _table(path: Path) -> str:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows[1:MAX_ROWS + 1])
    more = (f'<p class="note">{len(rows) - 1 - MAX_ROWS} more rows in {html.escape(path.name)}</p>'
            if len(rows) - 1 > MAX_ROWS else "")
    return (f'<section><h2>{html.escape(path.name)}</h2><div class="table-wrap"><table>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{more}</section>")


def _figure(path: Path) -> str:
    if path.suffix == ".svg":
        svg = path.read_text(encoding="utf-8")
        svg = svg[svg.find("<svg"):]  # drop the XML prologue: inline SVG
        body = svg
    else:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        body = f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
    return f'<figure class="fig">{body}<figcaption>{html.escape(path.name)}</figcaption></figure>'


def write_experiment_page(out_dir, title: str, description: str = "") -> Path:
    """Write ``out_dir/experiment.html`` from the figures and CSV tables in ``out_dir``."""
    from ..runs import atomic_write_text
    out_dir = Path(out_dir)
    figures = sorted(out_dir.glob("*.svg"))
    svg_stems = {p.stem for p in figures}
    figures += sorted(p for p in out_dir.glob("*.png") if p.stem not in svg_stems)
    css_path = Path(__file__).parent / "assets" / "style.css"
    css = css_path.read_text(encoding="utf-8") if css_path.exists() else ""
    parts = [f"<header class=\"page-head\"><h1>{html.escape(title)}</h1>"
             f"<p class=\"sub\">{html.escape(description)}</p></header>"]
    parts += [_figure(p) for p in figures]
    parts += [_table(p) for p in sorted(out_dir.glob("*.csv"))]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><link rel="icon" href="data:,">
<style>{css}
figure.fig svg {{ max-width: 100%; height: auto; }}
.table-wrap {{ overflow-x: auto; }}</style></head>
<body><main>{''.join(parts)}</main>
<footer>Written by netdissect from the files of {html.escape(out_dir.name)}/; works offline.</footer>
</body></html>
"""
    path = out_dir / PAGE
    atomic_write_text(path, page)
    return path


def find_experiment_pages(run_dir: Path) -> List[Tuple[str, Path]]:
    """(name, page) of every experiment page under a run directory, outside its report."""
    run_dir = Path(run_dir)
    found = []
    for page in sorted(list(run_dir.rglob(PAGE)) + list(run_dir.rglob("explain.html"))):
        rel = page.relative_to(run_dir)
        if rel.parts[0] in ("report", ".scratch"):
            continue
        found.append(("/".join(rel.parts[:-1]) or page.stem, page))
    return found


def copy_experiment_pages(run_dir: Path, stage: Path) -> List[Tuple[str, str]]:
    """Copy the experiment pages into the report being staged; (name, relative link) each."""
    links = []
    for i, (name, page) in enumerate(find_experiment_pages(run_dir)):
        target = stage / "experiments" / f"{i:03d}-{page.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, target)
        links.append((name, f"experiments/{target.name}"))
    return links
