"""The HTML report of a run directory.

    from netdissect.report import render_report
    index = render_report("runs/resnet18")   # -> runs/resnet18/report/index.html

Renders from the run directory's saved artefacts alone (config.json, summary.json, and per layer
units.csv, iou.npz, thresholds.npy, topk.npz) plus the dataset's images and segmentations for
the image strips: no model, no recomputation. Writes

    OUT/report/                 self-contained: index.html, concepts.html, layer-<layer>.html,
                                assets/, figures/*.svg, strips/<layer>/unit_<n>.jpg
    OUT/<layer>/unit_<n>.jpg    one strip per unit (the same files as in the report)
    OUT/figures/*.svg           figures for papers

The report folder opens from disk (file://) in any browser and can be zipped alone: no server,
no file outside it, no network request.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ..errors import NetDissectError, RunError
from .experiments import copy_experiment_pages
from . import figures as _figures
from .html import concepts_html, layer_data, layer_html, layer_page, overview_page
from .rundir import IMAGE_CATEGORIES, RunData, layer_stats, load_run
from .strips import render_layer_strips, reuse_layer_strips

__all__ = ["render_report"]

ASSETS = Path(__file__).with_name("assets")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("netdissect")
    except Exception:
        return "unknown"


def _open_dataset(run: RunData) -> Tuple[Any, str]:
    """The run's dataset selection, or (None, why not)."""
    ds = run.dataset
    if ds.path is None:
        return None, "config.json records no dataset path, so the images cannot be shown"
    if not ds.path.exists():
        return None, (f"dataset {ds.path} not found (moved or deleted?); "
                      "image strips rendered earlier are reused where present")
    try:
        from ..broden import BrodenDataset
    except ImportError as exc:  # pragma: no cover - the package ships broden.py
        return None, f"the Broden reader is unavailable ({exc})"
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
                    "image strips may not match the statistics")
    return dataset, note


def _write_assets(report: Path) -> None:
    dst = report / "assets"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("style.css", "report.js"):
        shutil.copyfile(ASSETS / name, dst / name)


def render_report(run_dir: Union[str, os.PathLike], top_k: int = 8, progress: bool = False,
                  *, cell: int = 128, quality: int = 85,
                  workers: Optional[int] = None) -> Path:
    """Render OUT/report/ from run directory OUT; return the path of OUT/report/index.html.

    top_k: images per strip (at most the k stored in topk.npz). cell: strip image height in
    pixels. workers: processes loading images (default: up to 4, never more than the CPUs).
    """
    root = Path(run_dir)
    run = load_run(root)
    if top_k < 1:
        raise RunError(f"top_k must be at least 1, got {top_k}")
    if workers is None:
        workers = max(1, min(4, os.cpu_count() or 1))

    dataset, dataset_note = _open_dataset(run)
    if dataset_note:
        run.report_warnings.append(dataset_note)
    image_level = list(getattr(dataset, "image_categories", None) or IMAGE_CATEGORIES) \
        if dataset is not None else list(IMAGE_CATEGORIES)

    stats = [layer_stats(l, run.categories, run.iou_threshold) for l in run.layers]

    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)        # mkdtemp makes it private; the report is to share
    try:
        _write_assets(stage)
        fig_dir = root / "figures"
        figs: Dict[str, Dict[str, str]] = {}

        def fig(name: str, make) -> str:
            path = make(fig_dir / name)
            (stage / "figures").mkdir(exist_ok=True)
            shutil.copyfile(path, stage / "figures" / name)
            return f"figures/{name}"

        cats = run.categories
        thr = run.iou_threshold
        for layer, st in zip(run.layers, stats):
            figs[layer.name] = {
                "unique": fig(f"{layer.dirname}_unique_per_category.svg",
                              lambda p: _figures.unique_per_category(layer, st, cats, thr, p)),
                "concepts": fig(f"{layer.dirname}_units_per_concept.svg",
                                lambda p: _figures.concepts(layer, st, cats, thr, p)),
                "hist": fig(f"{layer.dirname}_iou_histogram.svg",
                            lambda p: _figures.iou_histogram(layer, cats, thr, p)),
            }
        cross = None
        if len(run.layers) > 1:
            cross = fig("layers_unique_per_category.svg",
                        lambda p: _figures.layers_unique([l.name for l in run.layers], stats,
                                                         cats, thr, p))

        strip_files: Dict[str, Dict[int, str]] = {}
        for layer, st in zip(run.layers, stats):
            strips = {}
            note = dataset_note
            if dataset is not None and layer.topk_index is not None:
                bad = int(((layer.topk_index >= len(dataset))).sum())
                if bad:
                    msg = (f"{layer.name}: {bad} top-k image indices lie beyond the dataset "
                           f"selection ({len(dataset)} images): the dataset differs from the run's")
                    run.report_warnings.append(msg)
                strips = render_layer_strips(dataset, layer, root, stage, image_level, top_k=top_k,
                                             cell=cell, quality=quality, workers=workers,
                                             progress=progress)
            elif layer.topk_index is not None:
                strips = reuse_layer_strips(layer, root, stage)
            strip_files[layer.name] = {u: s.file for u, s in strips.items()}
            data = layer_data(run, layer, st, strips, image_level, top_k)
            page = layer_html(run, layer, st, data, figs[layer.name], bool(strips), note)
            (stage / layer_page(layer)).write_text(page, encoding="utf-8")
            if progress:
                print(f"report: {layer.name}: {len(strips)} strips", file=sys.stderr)

        (stage / "concepts.html").write_text(concepts_html(run, stats, strip_files), encoding="utf-8")
        experiments = copy_experiment_pages(root, stage)
        (stage / "index.html").write_text(
            overview_page(run, stats, figs, cross, _version(), dataset_note, experiments), encoding="utf-8")

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
