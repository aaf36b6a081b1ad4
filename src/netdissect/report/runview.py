"""The report's view of a finished run, read through netdissect.runs (the one reader of the format).

Nothing here re-derives the run's statistics: detector status and counts come from
``LayerResult.summary()``, the same function that wrote summary.json, so the pages, the filters
and summary.json cannot disagree. What is added is only what a page needs to show a unit: its
runners-up, its best label per category, and how its maps were placed on the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from netdissect.data.broden import IMAGE_CATEGORIES  # noqa: F401  (image-level labels: the whole image is the region)
from netdissect.errors import RunError
from netdissect.runs import layer_dir, load_layer, read_json


@dataclass
class DatasetSettings:
    path: Optional[Path]
    split: Optional[str] = None
    categories: Optional[List[str]] = None
    limit: Optional[int] = None
    index_digest: Optional[str] = None


@dataclass
class UnitView:
    unit: int
    label: str
    category: str
    iou: float
    detector: bool                     # iou > the run's threshold, decided once here
    column: Optional[int]              # the label's column in the IoU matrix (None: no concept)
    label_number: Optional[int]
    runners_up: List[Tuple[str, str, float]] = field(default_factory=list)
    per_category: Dict[str, Tuple[str, float]] = field(default_factory=dict)


@dataclass
class LayerView:
    name: str
    dirname: str
    result: Any                        # netdissect.engine.pipeline.LayerResult
    stats: Dict[str, Any]              # LayerResult.summary(): what summary.json holds
    units: List[UnitView]

    @property
    def size(self) -> int:
        return len(self.units)

    def units_per_concept(self) -> Dict[Tuple[str, str], int]:
        """Detector units per (label, category): the paper's per-concept bar chart."""
        out: Dict[Tuple[str, str], int] = {}
        for u in self.units:
            if u.detector:
                out[(u.label, u.category)] = out.get((u.label, u.category), 0) + 1
        return out


@dataclass
class RunView:
    root: Path
    config: Dict[str, Any]
    summary: Dict[str, Any]
    layers: List[LayerView]
    categories: List[str]
    category_image_counts: Dict[str, int]
    iou_threshold: float
    upsample: str
    quantile: Optional[float]
    dataset: DatasetSettings
    warnings: List[str]                # recorded by the run (summary.json)
    report_warnings: List[str] = field(default_factory=list)   # found while rendering


def collect_warnings(summary: Dict[str, Any]) -> List[str]:
    """Every warning recorded in summary.json, and the images the run skipped."""
    out = [str(w) for w in summary.get("warnings") or []]
    skipped = summary.get("skipped_images") or []
    if skipped:
        shown = ", ".join(f"{s.get('image')} (index.csv line {s.get('line')})" for s in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        out.append(f"{len(skipped)} image(s) were skipped during the run: {shown}{more}")
    return list(dict.fromkeys(out))


def _unit_views(result, n_runners: int = 3) -> List[UnitView]:
    labels = result.unit_labels()
    best = result.best
    detectors = result.best_iou > result.iou_threshold
    iou = result.iou
    per_cat = {cat: result.best_in_category(cat) for cat in result.categories}
    order = np.argsort(-iou, axis=1, kind="stable")[:, : n_runners + 1] if iou.shape[1] else None
    numbers = np.asarray(result.concepts)
    units = []
    for k, (label, category, value) in enumerate(labels):
        has = iou.shape[1] > 0
        col = int(best[k]) if has else None
        runners = []
        if order is not None:
            for c in order[k]:
                if c == col or len(runners) >= n_runners or not iou[k, c] > 0:
                    continue
                runners.append((result.concept_names[c], result.concept_categories[c], float(iou[k, c])))
        cats = {}
        for cat, (idx, val) in per_cat.items():
            if idx[k] >= 0:
                cats[cat] = (result.concept_names[idx[k]], float(val[k]))
        units.append(UnitView(k, label, category, float(value), bool(detectors[k]), col,
                              int(numbers[col]) if col is not None else None, runners, cats))
    return units


def dataset_settings(config: Dict[str, Any]) -> DatasetSettings:
    info = config.get("dataset") or {}
    path = Path(info["path"]).expanduser() if info.get("path") else None
    return DatasetSettings(path, info.get("split") or None, info.get("categories") or None,
                           info.get("limit") or None, info.get("index_digest") or None)


def load_run(root) -> RunView:
    """The run in ``root`` (a finished run directory), read through netdissect.runs."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"{root}: run directory not found")
    config = read_json(root / "config.json")
    summary = read_json(root / "summary.json")
    names = list(summary.get("layers") or {})
    if not names:
        raise RunError(f"{root / 'summary.json'}: no dissected layer recorded; re-run the dissection")
    layers = []
    for name in names:
        try:
            result = load_layer(root, name)
        except (OSError, KeyError, ValueError) as exc:
            raise RunError(f"{root}: the files of layer {name!r} cannot be read ({exc}); "
                           "re-run the dissection into this directory") from None
        dirname = layer_dir(root, name, summary).name
        layers.append(LayerView(name, dirname, result, result.summary(), _unit_views(result)))
    params = summary.get("parameters") or {}
    thr = float(params.get("iou_threshold", layers[0].result.iou_threshold))
    quantile = params.get("quantile")
    counts = {str(k): int(v) for k, v in (summary.get("category_image_counts") or {}).items()}
    return RunView(root, config, summary, layers, [str(c) for c in summary.get("categories") or []],
                   counts, thr, str(params.get("upsample", "bilinear")),
                   float(quantile) if quantile is not None and math.isfinite(float(quantile)) else None,
                   dataset_settings(config), collect_warnings(summary))
