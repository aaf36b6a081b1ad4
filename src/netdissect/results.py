"""What a dissection produces: per layer the thresholds, the IoU matrix and the top images,
and the summary statistics derived from them (detectors, unique detectors per category).

``LayerResult.summary()`` is the one place those statistics are computed: summary.json, the
report and compare all take them from it (written and read back by netdissect.runs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from netdissect.config import DissectConfig

if TYPE_CHECKING:  # annotations only: no import at run time
    from netdissect.tally.upsample import ReceptiveField

__all__ = ["LayerResult", "DissectionResult"]


@dataclass
class LayerResult:
    """The dissection of one layer. Units are numbered from 0."""

    name: str
    thresholds: np.ndarray          # (K,) float32
    iou: np.ndarray                 # (K, C) float32
    concepts: np.ndarray            # (C,) label numbers
    concept_names: List[str]
    concept_categories: List[str]
    categories: List[str]
    iou_threshold: float
    map_shape: Tuple[int, int]
    topk_index: Optional[np.ndarray] = None   # (K, k) image indices
    topk_score: Optional[np.ndarray] = None   # (K, k)
    topk_maps: Optional[np.ndarray] = None    # (K, k, h, w)
    combinations: Optional[object] = None     # combinations.LayerCombinations, for formulas
    formulas: Optional[object] = None         # formulas.LayerFormulas, when searched
    layout: Optional[dict] = None             # how the layer's output was read as maps (models/layouts.py)
    receptive_field: Optional[ReceptiveField] = None   # rf mode: how maps were placed (the report redraws them)

    @property
    def units(self) -> int:
        return self.iou.shape[0]

    @property
    def best(self) -> np.ndarray:
        """(K,) index of each unit's best concept."""
        return self.iou.argmax(axis=1) if self.iou.shape[1] else np.zeros(self.units, dtype=np.int64)

    @property
    def best_iou(self) -> np.ndarray:
        return self.iou.max(axis=1) if self.iou.shape[1] else np.zeros(self.units, dtype=np.float32)

    def unit_labels(self) -> List[Tuple[str, str, float]]:
        """(label, category, IoU) of every unit."""
        best, best_iou = self.best, self.best_iou
        if not self.iou.shape[1]:
            return [("", "", 0.0)] * self.units
        return [(self.concept_names[c], self.concept_categories[c], float(v)) for c, v in zip(best, best_iou)]

    def best_in_category(self, category: str) -> Tuple[np.ndarray, np.ndarray]:
        """(K,) best concept index within ``category`` (-1 when it has none) and its IoU."""
        cols = np.array([i for i, c in enumerate(self.concept_categories) if c == category], dtype=np.int64)
        if len(cols) == 0:
            return np.full(self.units, -1), np.zeros(self.units, dtype=np.float32)
        sub = self.iou[:, cols]
        return cols[sub.argmax(axis=1)], sub.max(axis=1)

    def summary(self) -> dict:
        detectors = self.best_iou > self.iou_threshold
        best = self.best
        unique = sorted({int(c) for c in best[detectors]})
        per_category = {cat: 0 for cat in self.categories}
        for c in unique:
            per_category[self.concept_categories[c]] += 1
        best_per_category = {}
        for cat in self.categories:
            idx, val = self.best_in_category(cat)
            best_per_category[cat] = len({int(i) for i in idx[val > self.iou_threshold]})
        return {
            "units": int(self.units),
            "detectors": int(detectors.sum()),
            "unique_detectors": len(unique),
            "unique_per_category": per_category,
            "unique_best_per_category": best_per_category,
            "detectors_per_category": {cat: int(sum(1 for k in np.nonzero(detectors)[0]
                                                    if self.concept_categories[best[k]] == cat))
                                       for cat in self.categories},
            "map_shape": list(self.map_shape),
            "iou_threshold": self.iou_threshold,
            **({"layout": self.layout} if self.layout else {}),
            **({"receptive_field": {"offset": list(self.receptive_field.offset),
                                    "stride": list(self.receptive_field.stride)}}
               if self.receptive_field is not None else {}),
        }


@dataclass
class DissectionResult:
    config: DissectConfig
    layers: Dict[str, LayerResult]
    category_image_counts: Dict[str, int]
    images: int
    skipped: List[dict] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    seconds: float = 0.0
    out: Optional[Path] = None
    dataset_path: Optional[str] = None
    # engine.report_images.ReportImages of dissect(keep_report_images=True): memory only, never saved
    report_images: Any = field(default=None, repr=False, compare=False)

    def __getitem__(self, layer: str) -> LayerResult:
        return self.layers[layer]

    def summary(self) -> dict:
        return {
            "layers": {name: layer.summary() for name, layer in self.layers.items()},
            "categories": list(next(iter(self.layers.values())).categories) if self.layers else [],
            "category_image_counts": self.category_image_counts,
            "images": self.images,
            "skipped_images": self.skipped,
            "warnings": self.warnings,
            "parameters": {"quantile": self.config.quantile, "iou_threshold": self.config.iou_threshold,
                           "upsample": self.config.upsample, "top_k": self.config.top_k},
            "seconds": round(self.seconds, 2),
        }
