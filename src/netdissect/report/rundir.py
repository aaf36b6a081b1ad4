"""Reading a run directory's saved artefacts for the report (read-only, no recomputation).

The report is tolerant: a missing optional artefact becomes a warning shown in the report, not a
crash. Only what the report cannot do without (config.json, and per layer iou.npz or units.csv)
raises RunError.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import RunError

DEFAULT_IOU_THRESHOLD = 0.04
PIXEL_CATEGORIES = ("color", "object", "part", "material")
IMAGE_CATEGORIES = ("scene", "texture")


def layer_dirname(layer: str) -> str:
    """The run-directory folder of a layer: characters outside [A-Za-z0-9._-] become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", layer)


def _read_json(path: Path, required: bool) -> Dict[str, Any]:
    if not path.exists():
        if required:
            raise RunError(f"{path}: missing; is this a run directory written by netdissect?")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: cannot be read as JSON ({exc}); the run may have been interrupted")
    if not isinstance(value, dict):
        raise RunError(f"{path}: expected a JSON object")
    return value


@dataclass
class DatasetSettings:
    path: Optional[Path]
    split: Optional[str] = None
    categories: Optional[List[str]] = None
    limit: Optional[int] = None
    index_digest: Optional[str] = None


@dataclass
class Unit:
    unit: int
    label: str
    category: str
    iou: float
    label_number: Optional[int]        # None when the label is not a column of iou.npz
    column: Optional[int]              # column in iou.npz
    per_category: Dict[str, tuple] = field(default_factory=dict)   # cat -> (label, iou)


@dataclass
class LayerData:
    name: str
    dirname: str
    path: Path
    units: List[Unit]
    iou: Optional[np.ndarray]          # (K, C) float32
    label_numbers: Optional[np.ndarray]
    labels: Optional[np.ndarray]       # str (C,)
    label_categories: Optional[np.ndarray]
    thresholds: Optional[np.ndarray]   # (K,) float32
    topk_index: Optional[np.ndarray]   # (K, k) int64
    topk_score: Optional[np.ndarray]   # (K, k) float32
    topk_maps: Optional[np.ndarray]    # (K, k, h, w) float16
    summary: Dict[str, Any]
    warnings: List[str]

    @property
    def size(self) -> int:
        return len(self.units)


@dataclass
class RunData:
    root: Path
    config: Dict[str, Any]
    summary: Dict[str, Any]
    layers: List[LayerData]
    categories: List[str]
    category_image_counts: Dict[str, int]
    iou_threshold: float
    dataset: DatasetSettings
    warnings: List[str]                # recorded by the run (summary.json)
    report_warnings: List[str]         # found while rendering the report


def _as_float(value: Any, default: float = float("nan")) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out


def collect_warnings(summary: Dict[str, Any]) -> List[str]:
    """Every warning recorded in summary.json, and the images the run skipped."""
    out = [str(w) for w in summary.get("warnings") or []]
    skipped = summary.get("skipped_images") or []
    if skipped:
        shown = ", ".join(f"{s.get('image')} (index.csv line {s.get('line')})" for s in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        out.append(f"{len(skipped)} image(s) were skipped during the run: {shown}{more}")
    return list(dict.fromkeys(out))  # de-duplicated, in order


def dataset_settings(root: Path, config: Dict[str, Any]) -> DatasetSettings:
    """The dataset selection recorded in config.json["dataset"] (see netdissect.runs)."""
    info = config.get("dataset") or {}
    path = Path(info["path"]).expanduser() if info.get("path") else None
    return DatasetSettings(path, info.get("split") or None, info.get("categories") or None,
                           info.get("limit") or None, info.get("index_digest") or None)


def _layer_names(summary: Dict[str, Any]) -> List[str]:
    return [str(name) for name in summary.get("layers") or {}]


def _layer_summary(summary: Dict[str, Any], name: str) -> Dict[str, Any]:
    return (summary.get("layers") or {}).get(name) or {}


def _read_units_csv(path: Path) -> List[Dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"unit", "label", "iou"} <= set(reader.fieldnames):
            raise RunError(f"{path}: expected columns unit,label,category,iou,...")
        return list(reader)


def _load_npz(path: Path, warnings: List[str], what: str) -> Optional[Dict[str, np.ndarray]]:
    if not path.exists():
        warnings.append(f"{path.name} missing: {what}")
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # a truncated or foreign file
        warnings.append(f"{path.name} cannot be read ({exc.__class__.__name__}: {exc}): {what}")
        return None


def load_layer(root: Path, name: str, summary: Dict[str, Any]) -> LayerData:
    info = _layer_summary(summary, name)
    dirname = str(info.get("directory") or layer_dirname(name))
    path = root / dirname
    warnings: List[str] = []
    if not path.is_dir():
        raise RunError(f"{path}: layer folder of '{name}' is missing from the run directory")
    iou_npz = _load_npz(path / "iou.npz", warnings, "per-concept IoU unavailable")
    iou = labels = numbers = cats = None
    if iou_npz is not None:
        iou = np.asarray(iou_npz.get("iou"), dtype=np.float32) if "iou" in iou_npz else None
        labels = iou_npz.get("labels")
        numbers = iou_npz.get("label_numbers")
        cats = iou_npz.get("categories")
        if iou is None or iou.ndim != 2 or labels is None or len(labels) != iou.shape[1]:
            warnings.append("iou.npz lacks iou (K, C) or labels (C,): per-concept IoU unavailable")
            iou = labels = numbers = cats = None
        else:
            labels = np.asarray(labels).astype(str)
            cats = (np.asarray(cats).astype(str) if cats is not None and len(cats) == len(labels)
                    else np.array([""] * len(labels)))
            numbers = (np.asarray(numbers).astype(np.int64)
                       if numbers is not None and len(numbers) == len(labels) else None)

    units: List[Unit] = []
    csv_path = path / "units.csv"
    if csv_path.exists():
        rows = _read_units_csv(csv_path)
        for row in rows:
            per_cat = {}
            for key, val in row.items():
                if key and key.endswith("_label") and key != "label":
                    cat = key[: -len("_label")]
                    per_cat[cat] = (val or "", _as_float(row.get(f"{cat}_iou")))
            units.append(Unit(int(row["unit"]), row.get("label") or "", row.get("category") or "",
                              _as_float(row.get("iou"), 0.0), None, None, per_cat))
        units.sort(key=lambda u: u.unit)
        if [u.unit for u in units] != list(range(len(units))):
            raise RunError(f"{csv_path}: units must be numbered 0..K-1, one row each")
    elif iou is not None:
        warnings.append("units.csv missing: unit labels derived from iou.npz")
        best = iou.argmax(axis=1)
        for k, col in enumerate(best):
            units.append(Unit(k, str(labels[col]), str(cats[col]), float(iou[k, col]), None, None))
    else:
        raise RunError(f"{path}: neither units.csv nor a readable iou.npz; re-run the dissection")

    if iou is not None:
        if iou.shape[0] != len(units):
            warnings.append(f"iou.npz has {iou.shape[0]} units but units.csv {len(units)}: "
                            "per-concept IoU unavailable")
            iou = labels = numbers = cats = None
    if iou is not None:
        by_name: Dict[str, List[int]] = {}
        for c, lab in enumerate(labels):
            by_name.setdefault(str(lab), []).append(c)
        for u in units:
            cols = by_name.get(u.label, [])
            if len(cols) > 1:
                match = [c for c in cols if cats[c] == u.category]
                cols = match or cols
            if cols:
                col = max(cols, key=lambda c: iou[u.unit, c])
            elif not u.label:
                col = None
            else:
                col = None
            u.column = col
            if col is not None:
                u.label_number = int(numbers[col]) if numbers is not None else None
                if not u.category:
                    u.category = str(cats[col])

    thresholds = None
    tpath = path / "thresholds.npy"
    if tpath.exists():
        try:
            thresholds = np.asarray(np.load(tpath, allow_pickle=False), dtype=np.float32).reshape(-1)
            if len(thresholds) != len(units):
                warnings.append(f"thresholds.npy has {len(thresholds)} values for {len(units)} units")
                thresholds = None
        except Exception as exc:
            warnings.append(f"thresholds.npy cannot be read ({exc})")
    else:
        warnings.append("thresholds.npy missing: unit regions cannot be drawn")

    topk = _load_npz(path / "topk.npz", warnings, "no top-activating image strips")
    t_index = t_score = t_maps = None
    if topk is not None:
        t_index = topk.get("image_index")
        t_score = topk.get("score")
        t_maps = topk.get("maps")
        if t_index is None or t_index.ndim != 2 or t_index.shape[0] != len(units):
            warnings.append("topk.npz lacks image_index (K, k): no image strips")
            t_index = t_score = t_maps = None
        else:
            t_index = t_index.astype(np.int64)
            if t_score is None or t_score.shape != t_index.shape:
                t_score = np.full(t_index.shape, np.nan, dtype=np.float32)
            if t_maps is not None and (t_maps.ndim != 4 or t_maps.shape[:2] != t_index.shape):
                warnings.append("topk.npz maps are not (K, k, h, w): unit regions cannot be drawn")
                t_maps = None
    return LayerData(name, dirname, path, units, iou, numbers, labels, cats, thresholds,
                     t_index, t_score, t_maps, _layer_summary(summary, name), warnings)


def load_run(root: Path) -> RunData:
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"{root}: run directory not found")
    config = _read_json(root / "config.json", required=True)
    summary = _read_json(root / "summary.json", required=False)
    report_warnings: List[str] = []
    if not summary:
        report_warnings.append("summary.json missing: the run may not have finished; "
                               "statistics are computed from the per-layer files")
    names = _layer_names(summary)
    if not names:
        raise RunError(f"{root}: no dissected layer found (no <layer>/units.csv)")
    layers = [load_layer(root, n, summary) for n in names]
    for layer in layers:
        report_warnings.extend(f"{layer.name}: {w}" for w in layer.warnings)

    categories = summary.get("categories")
    if not isinstance(categories, list) or not categories:
        seen: List[str] = []
        for layer in layers:
            src: Iterable[str] = (layer.label_categories if layer.label_categories is not None
                                  else [u.category for u in layer.units])
            for c in src:
                if c and c not in seen:
                    seen.append(str(c))
        order = {c: i for i, c in enumerate(PIXEL_CATEGORIES + IMAGE_CATEGORIES)}
        categories = sorted(seen, key=lambda c: (order.get(c, 99), c))
    categories = [str(c) for c in categories]
    counts_raw = summary.get("category_image_counts") or {}
    counts = {}
    if isinstance(counts_raw, dict):
        for k, v in counts_raw.items():
            try:
                counts[str(k)] = int(v)
            except (TypeError, ValueError):
                pass
    thr = _as_float((summary.get("parameters") or {}).get("iou_threshold"), DEFAULT_IOU_THRESHOLD)
    if not math.isfinite(thr):
        thr = DEFAULT_IOU_THRESHOLD
    return RunData(root, config, summary, layers, categories, counts, thr,
                   dataset_settings(root, config), collect_warnings(summary), report_warnings)


# --------------------------------------------------------------------------- statistics

@dataclass
class LayerStats:
    units: int
    detectors: int
    unique: int                               # distinct top labels among detectors
    unique_per_category: Dict[str, int]       # by the detector's (top-label) category
    unique_best_per_category: Dict[str, int]  # distinct per-category best labels with IoU > thr
    units_per_concept: Dict[tuple, int]       # (label, category) -> number of detector units


def layer_stats(layer: LayerData, categories: Sequence[str], thr: float) -> LayerStats:
    dets = [u for u in layer.units if u.iou > thr]
    top = {(u.label, u.category) for u in dets}
    per_cat = {c: len({lab for lab, cat in top if cat == c}) for c in categories}
    for _, cat in top:
        if cat not in per_cat:
            per_cat[cat] = len({lab for lab, c in top if c == cat})
    per_concept: Dict[tuple, int] = {}
    for u in dets:
        per_concept[(u.label, u.category)] = per_concept.get((u.label, u.category), 0) + 1
    best: Dict[str, int] = {}
    if layer.iou is not None and layer.labels is not None:
        for c in categories:
            cols = np.flatnonzero(layer.label_categories == c)
            if len(cols) == 0:
                best[c] = 0
                continue
            sub = layer.iou[:, cols]
            arg = sub.argmax(axis=1)
            val = sub[np.arange(sub.shape[0]), arg]
            best[c] = int(len(set(cols[arg[val > thr]].tolist())))
    else:
        for c in categories:
            labs = {u.per_category[c][0] for u in layer.units
                    if c in u.per_category and u.per_category[c][1] > thr}
            best[c] = len(labs)
    return LayerStats(len(layer.units), len(dets), len(top), per_cat, best, per_concept)
