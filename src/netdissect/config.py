"""The parameters of a dissection and their defaults, defined once.

``DissectConfig`` is what ``dissect()`` validates and records in config.json; the command line
takes its defaults from here (cli/options.py), so a default changes in one place. Light on purpose
(no torch at import): the CLI's option parsing reads it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Optional, Tuple

from netdissect.errors import NetDissectError

__all__ = ["DissectConfig", "NO_COMPILED", "compiled_code_allowed", "default"]

NO_COMPILED = "NETDISSECT_NO_KERNEL"   # "1": every compiled extension's numpy/torch twin instead


def compiled_code_allowed() -> bool:
    """False when NETDISSECT_NO_KERNEL=1: the threshold state, the tally kernel, the label hashing
    and the report's overlays then take their numpy/torch paths (the tests compare the two)."""
    return os.environ.get(NO_COMPILED) != "1"


@dataclass(frozen=True)
class DissectConfig:
    """Parameters of a dissection (everything that changes its numbers, and how it runs)."""

    layers: Tuple[str, ...]
    quantile: float = 0.005
    iou_threshold: float = 0.04
    upsample: str = "bilinear"
    categories: Optional[Tuple[str, ...]] = None
    split: Optional[str] = None
    limit: Optional[int] = None
    top_k: int = 8
    batch_size: int = 32
    workers: Optional[int] = None
    device: str = "auto"
    min_category_images: int = 20
    memory_budget_mb: float = 1024
    on_bad_image: str = "fail"
    layout: str = "auto"  # auto | nchw | nhwc | tokens: how layer outputs hold unit maps (models/layouts.py)
    label_cache: Optional[str] = None  # a directory, "off", or None: $NETDISSECT_LABEL_CACHE / ~/.cache (tally/labelcache.py)

    def __post_init__(self):
        if self.label_cache is not None and not isinstance(self.label_cache, str):
            object.__setattr__(self, "label_cache", os.fspath(self.label_cache))   # a Path, as text
        if not 0.0 < self.quantile < 1.0:
            raise NetDissectError(f"--quantile is the top fraction, in (0, 1); got {self.quantile}")
        if not 0.0 <= self.iou_threshold < 1.0:
            raise NetDissectError(f"--iou-threshold must be in [0, 1); got {self.iou_threshold}")
        from netdissect.tally.upsample import MODES
        if self.upsample not in MODES:
            raise NetDissectError(f"--upsample must be one of {', '.join(MODES)}; got {self.upsample!r}")
        if self.batch_size < 1:
            raise NetDissectError(f"--batch-size must be positive; got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise NetDissectError(f"--limit must be positive; got {self.limit}")
        if self.on_bad_image not in ("fail", "skip"):
            raise NetDissectError(f"--on-bad-image must be fail or skip; got {self.on_bad_image!r}")
        if self.top_k < 1:
            raise NetDissectError(f"--top-k must be positive; got {self.top_k}")
        if self.workers is not None and self.workers < 0:
            raise NetDissectError(f"--workers must be 0 (load in this process) or more; got {self.workers}")
        if not self.memory_budget_mb > 0 or self.memory_budget_mb == float("inf"):
            raise NetDissectError(f"--memory-budget must be a positive number of MiB; got {self.memory_budget_mb}")
        if self.min_category_images < 0:
            raise NetDissectError(f"--min-category-images must be 0 or more; got {self.min_category_images}")
        if self.layout not in ("auto", "nchw", "nhwc", "tokens"):
            raise NetDissectError(f"--layout must be auto, nchw, nhwc or tokens; got {self.layout!r}")

    @property
    def level(self) -> float:
        return 1.0 - self.quantile


def default(name: str):
    """The default of one DissectConfig field (what an option left out means)."""
    return next(f.default for f in fields(DissectConfig) if f.name == name)
