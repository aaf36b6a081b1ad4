"""The HTML report of a run directory.

    from netdissect.report import render_report
    index = render_report("runs/resnet18")   # -> runs/resnet18/report/index.html

Renders from the run directory's saved files alone (read through netdissect.runs) plus the
dataset's images and segmentations: no model, no recomputation. Writes

    OUT/report/        self-contained: index.html, concepts.html, layer-<layer>.html, assets/,
                       images/ (each shown dataset image once, JPEG atlases),
                       strips/<layer>/ (the units' overlays, PNG sheets),
                       figures/ (SVG; PNG too with figure_png), data/ (summary.json,
                       <layer>/units.csv)
    OUT/figures/       the same figures, for papers

The folder opens from disk (file://), can be zipped alone, makes no network request and holds
no hard link.
"""
from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

from netdissect.errors import NetDissectError, RunError
from netdissect.report import figures as _figures
from netdissect.report.experiments import copy_experiment_pages
from netdissect.report.html import (
    atlas_data,
    category_bars,
    category_data,
    common,
    concept_sections,
    formula_info,
    heat_data,
    iou_scale,
    layer_data,
    layer_page,
    quantile_text,
    render,
    search_index,
    tiles_layout,
    unit_tiles,
)
from netdissect.report.imagework import ImageWork
from netdissect.report.runview import IMAGE_CATEGORIES, RunView, load_run
from netdissect.report.tiles import LayerTiles, progress_bar, wanted_images, write_paper_strips
from netdissect.runs import DATASET_FILES, read_json
from netdissect.tally.labelcache import open_selection

__all__ = ["render_report"]

ASSETS = Path(__file__).with_name("assets")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("netdissect")
    except Exception:
        return "unknown"


class _Clock:
    """Seconds per stage, into the caller's dict (or nowhere)."""

    def __init__(self, into: Optional[Dict[str, float]]):
        self.into = into
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self.into is not None:
            self.into[stage] = self.into.get(stage, 0.0) + now - self.last
        self.last = now


def _open_dataset(run: RunView) -> Tuple[Any, str]:
    """The run's dataset selection, or (None, why not)."""
    ds = run.dataset
    if ds.path is None:
        return None, "config.json records no dataset path, so the images cannot be shown"
    if not ds.path.exists():
        return None, f"dataset {ds.path} not found (moved or deleted?): the images cannot be shown"
    from netdissect.data.broden import BrodenDataset
    try:
        dataset = BrodenDataset(ds.path, split=ds.split, categories=ds.categories, limit=ds.limit)
    except NetDissectError as exc:
        return None, f"dataset {ds.path} cannot be read: {exc}"
    note = ""
    if ds.index_digest:
        try:
            digest = dataset.index_digest()
        except Exception:
            digest = None
        if digest and digest != ds.index_digest:
            note = (f"the dataset at {ds.path} changed since the run (index digest differs): "
                    "the images may not match the statistics")
    if len(dataset) and len({(r.ih, r.iw, r.sh, r.sw) for r in dataset.records}) != 1:
        return None, f"dataset {ds.path} holds images of several sizes: the images cannot be shown"
    return dataset, note


def _recorded_files(root: Path) -> Optional[dict]:
    """The run's dataset-files.json (each file's size and time when it was dissected), or None."""
    try:
        return read_json(root / DATASET_FILES)
    except (RunError, OSError):
        return None


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)      # a copy, never a link: the folder must travel alone


class FigureFiles(NamedTuple):
    """A figure in the report: its SVG and, where one was written, its PNG twin (paths in the report)."""
    svg: str
    png: Optional[str]


def _figures_of(run: RunView, root: Path, stage: Path, png: bool) \
        -> Tuple[Dict[str, Dict[str, FigureFiles]], Optional[FigureFiles], Optional[FigureFiles]]:
    """Each layer's figures, the figure across layers (several layers) and the formula figure
    (formulas searched), drawn into OUT/figures/ and copied into the report."""
    fig_dir = root / "figures"

    def fig(name: str, make) -> Optional[FigureFiles]:
        path = make(fig_dir / name)
        if path is None:        # nothing to draw
            return None
        _copy(path, stage / "figures" / path.name)
        if png:
            _copy(path.with_suffix(".png"), stage / "figures" / path.with_suffix(".png").name)
        return FigureFiles(f"figures/{name}", f"figures/{path.with_suffix('.png').name}" if png else None)

    cats, thr = run.categories, run.iou_threshold
    figs: Dict[str, Dict[str, FigureFiles]] = {}
    for layer in run.layers:
        d = layer.dirname
        figs[layer.name] = {
            "unique": fig(f"{d}_unique_per_category.svg",
                          lambda p: _figures.unique_per_category(layer, cats, thr, p, png)),
            "concepts": fig(f"{d}_units_per_concept.svg", lambda p: _figures.concepts(layer, cats, thr, p, png)),
            "hist": fig(f"{d}_iou_histogram.svg", lambda p: _figures.iou_histogram(layer, cats, thr, p, png)),
        }
    cross = None
    if len(run.layers) > 1:
        cross = fig("layers_unique_per_category.svg",
                    lambda p: _figures.layers_unique(run.layers, cats, thr, p, png))
    gain = fig("formula_gain.svg", lambda p: _figures.summary_gain(run.summary, p, png))
    return figs, cross, gain


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


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while rendering, on again after (if it was on).
    The report makes many short-lived objects, possibly in a process that holds hundreds of
    thousands (a dissection's, as in benchmarks/report_cost.py): each full collection walks them
    all (0.3 s, now and then). Forked workers inherit it off, so they do not walk, and copy,
    the parent's memory either."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def render_report(run_dir: Union[str, os.PathLike], top_k: int = 8, progress: bool = False,
                  *, workers: Optional[int] = None, timings: Optional[Dict[str, float]] = None,
                  paper_strips: bool = False, figure_png: bool = False, images: Any = None) -> Path:
    """Render OUT/report/ from run directory OUT; return the path of OUT/report/index.html.

    top_k: images per unit (at most the k stored in topk.npz). workers: processes decoding
    images and drawing overlays (default: up to 4, never more than the CPUs). timings: filled
    with the seconds each stage took (benchmarks/report_cost.py). paper_strips: also write
    OUT/<layer>/unit_<n>.jpg, each unit's images with its regions side by side, for papers.
    figure_png: also write each figure as PNG (150 dpi) next to its SVG, and link it (a third
    of the figures' time). images: the ``report_images`` of the DissectionResult that wrote the
    run, when it was dissected with keep_report_images=True: the images it kept are not decoded
    again (the same files either way)."""
    with _collector_paused():
        return _render(run_dir, top_k, progress, workers, timings, paper_strips, figure_png, images)


def _render(run_dir, top_k: int, progress: bool, workers: Optional[int], timings: Optional[Dict[str, float]],
            paper_strips: bool, figure_png: bool, images: Any = None) -> Path:
    clock = _Clock(timings)
    root = Path(run_dir)
    if top_k < 1:
        raise RunError(f"top_k must be at least 1, got {top_k}")
    run = load_run(root)
    if workers is None:
        workers = max(1, min(4, os.cpu_count() or 1))
    dataset, dataset_note = _open_dataset(run)
    clock.lap("reading the run")
    if dataset_note:
        run.report_warnings.append(dataset_note)
    image_level = list(getattr(dataset, "image_categories", None) or IMAGE_CATEGORIES)
    version = _version()

    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)        # mkdtemp makes it private; the report is to share
    try:
        (stage / "assets").mkdir()
        for name in ("style.css", "report.js"):
            _copy(ASSETS / name, stage / "assets" / name)
        _copy(root / "summary.json", stage / "data" / "summary.json")
        for layer in run.layers:
            _copy(root / layer.dirname / "units.csv", stage / "data" / layer.dirname / "units.csv")
        tiles: Dict[str, Optional[LayerTiles]] = {l.name: None for l in run.layers}
        atlas = None
        names: List[str] = []
        layer_notes: Dict[str, List[str]] = {l.name: [] for l in run.layers}
        jobs: Dict[int, List[Tuple[int, bool]]] = {}
        with_images = dataset is not None and len(dataset) > 0
        if with_images:
            names = [r.image for r in dataset.records]
            for layer in run.layers:
                idx = layer.result.topk_index
                if idx is not None:
                    bad = int(((idx >= len(dataset)) | (idx < -1)).sum())
                    if bad:
                        run.report_warnings.append(
                            f"{layer.name}: {bad} top-k image indices lie beyond the dataset selection "
                            f"({len(dataset)} images): the dataset differs from the run's")
            jobs = wanted_images(run.layers, len(dataset), top_k, image_level)
        else:
            for layer in run.layers:
                layer_notes[layer.name].append("no images: " + (dataset_note or "the dataset is empty"))
        # the workers decode the images and draw the overlays while this process draws the figures
        # the shown images' label masks from the label cache, where it holds them: no mask decoded
        labels = open_selection(dataset, (run.config.get("config") or {}).get("label_cache"),
                                _recorded_files(root), jobs) if with_images else None
        with ImageWork(dataset, run.layers, jobs, run.upsample, top_k, stage, workers, labels, images) if with_images \
                else contextlib.nullcontext() as work:
            figs, cross, formula_fig = _figures_of(run, root, stage, figure_png)
            clock.lap("figures")
            if work is not None:
                bar = progress_bar(progress, len(jobs), "report: images", "img")
                atlas, layer_tiles = work.result(bar)
                if bar is not None:
                    bar.close()
                clock.lap("images and overlays")
        if with_images:
            for layer in run.layers:
                if layer.result.topk_index is None:
                    layer_notes[layer.name].append("the run kept no top images (topk.npz missing)")
                    continue
                lt = layer_tiles[layer.name]
                if lt.note:
                    run.report_warnings.append(lt.note)
                tiles[layer.name] = lt
                if paper_strips:
                    write_paper_strips(layer, lt, dataset, stage, root / layer.dirname)
                if progress:
                    print(f"report: {layer.name}: {layer.size} units", file=sys.stderr)
            if paper_strips:
                clock.lap("paper strips")

        scale = iou_scale(run)
        ctx = common(run, "overview", version)
        colors = ctx["colors"]
        sections = concept_sections(run, colors)
        with_section = {(s["label"], s["cat"]) for s in sections}
        for layer in run.layers:
            lctx = common(run, "layer:" + layer.name, version)
            cats_present = sorted({u.category for u in layer.units if u.category},
                                  key=lambda c: (run.categories.index(c) if c in run.categories else 99, c))
            page = render(
                "layer.html", **lctx, page_kind="layer", layer=layer,
                layer_warnings=layer_notes[layer.name], quantile_text=quantile_text(run),
                bars=category_bars(layer, run.categories, colors),
                fig_unique=figs[layer.name]["unique"], fig_hist=figs[layer.name]["hist"],
                fig_concepts=figs[layer.name]["concepts"],
                cat_options=[(c, sum(1 for u in layer.units if u.category == c)) for c in cats_present],
                data=layer_data(run, layer, tiles[layer.name], atlas, names, colors, scale, image_level, top_k, with_section),
                heat=heat_data(tiles[layer.name]), formulas=formula_info(layer))
            (stage / layer_page(layer)).write_text(page, encoding="utf-8")

        by_cat: Dict[str, list] = {}
        for s in sections:
            by_cat.setdefault(s["cat"], []).append(s)
        cats = [c for c in list(run.categories) + sorted(set(by_cat) - set(run.categories)) if c in by_cat]
        evidence = {}
        used = set()
        for s in sections:
            if s["evidence"]:
                li, k, _ = s["evidence"]
                x = unit_tiles(tiles[run.layers[li].name], k)
                evidence[f"{li}:{k}"] = x
                used.update(t[0] for t in x)
        concepts_data = {"page": "concepts", "atlas": atlas_data(atlas, used, names),
                         "layers": [{"name": l.name, "page": layer_page(l), "tiles": tiles_layout(tiles[l.name])}
                                    for l in run.layers],
                         "evidence": evidence}
        (stage / "concepts.html").write_text(render(
            "concepts.html", **common(run, "concepts", version), page_kind="concepts",
            sections=sections, by_cat=by_cat, cats=cats, data=concepts_data), encoding="utf-8")

        experiments = copy_experiment_pages(root, stage)
        counts = run.category_image_counts
        cmax = max(counts.values()) if counts else 1
        order = list(run.categories) + [c for c in counts if c not in run.categories]
        ds = run.dataset
        info = [("path", str(ds.path) if ds.path else "not recorded"), ("split", ds.split or "all"),
                ("categories", ", ".join(ds.categories) if ds.categories else "all"),
                ("limit", str(ds.limit) if ds.limit else "none")]
        if ds.index_digest:
            info.append(("index digest", ds.index_digest))
        model = ((run.config.get("manifest") or {}).get("model") or {}).get("spec")
        (stage / "index.html").write_text(render(
            "overview.html", **ctx, page_kind="overview", model=model,
            warnings=list(run.warnings) + list(run.report_warnings),
            bars={l.name: category_bars(l, run.categories, colors) for l in run.layers},
            figs=figs, cross_fig=cross, formula_fig=formula_fig, experiments=experiments,
            counts=[(c, counts[c], 100.0 * counts[c] / cmax if cmax else 0) for c in order if c in counts],
            dataset_info=info, dataset_note=dataset_note, params=_flat_params(run.config),
            data={"page": "overview", "layers": [{"name": l.name, "page": layer_page(l)} for l in run.layers],
                  "categories": category_data(colors), "units": search_index(run), "thr": run.iou_threshold}),
            encoding="utf-8")

        clock.lap("pages")
        final = root / "report"
        old = None
        if final.exists():
            old = root / f".report-old-{os.getpid()}"
            final.rename(old)
        stage.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return final / "index.html"
