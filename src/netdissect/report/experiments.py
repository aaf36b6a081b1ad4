"""Experiment pages: each experiment's figures and tables as one self-contained HTML file.

Every experiment command ends with ``write_experiment_page(out_dir, title)``: the SVG figures
are inlined, PNG-only figures embedded as data, CSV tables rendered (templates/experiment.html,
autoescaped), the report's stylesheet inlined, so ``experiment.html`` opens anywhere on its own. A run directory's report lists and
copies the experiment pages found under it (explain, ablate, rotation, ...).
"""
from __future__ import annotations

import base64
import csv
import shutil
from pathlib import Path
from typing import List, Tuple

from markupsafe import Markup

PAGE = "experiment.html"
MAX_ROWS = 200


def _table(path: Path) -> dict:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}
    return {"name": path.name, "head": rows[0], "rows": rows[1:MAX_ROWS + 1],
            "more": max(0, len(rows) - 1 - MAX_ROWS)}


def _figure(path: Path) -> dict:
    if path.suffix == ".svg":
        svg = path.read_text(encoding="utf-8")
        # our own matplotlib output, inlined as markup: drop the XML prologue
        return {"name": path.name, "stem": path.stem, "svg": Markup(svg[svg.find("<svg"):])}
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"name": path.name, "stem": path.stem, "data_uri": f"data:image/png;base64,{data}"}


def write_experiment_page(out_dir, title: str, description: str = "") -> Path:
    """Write ``out_dir/experiment.html`` from the figures and CSV tables in ``out_dir``."""
    from netdissect.atomic import atomic_write_text
    from netdissect.report.html import render
    out_dir = Path(out_dir)
    figures = sorted(out_dir.glob("*.svg"))
    svg_stems = {p.stem for p in figures}
    figures += sorted(p for p in out_dir.glob("*.png") if p.stem not in svg_stems)
    css_path = Path(__file__).parent / "assets" / "style.css"
    css = css_path.read_text(encoding="utf-8") if css_path.exists() else ""
    tables = [t for t in (_table(p) for p in sorted(out_dir.glob("*.csv"))) if t]
    page = render("experiment.html", title=title, description=description, css=Markup(css),
                  figures=[_figure(p) for p in figures], tables=tables, folder=out_dir.name)
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
