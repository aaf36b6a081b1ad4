"""A run's manifest: everything its numbers were computed from. A rerun compares manifests
(netdissect.runs) to reuse, relabel or recompute; how a run runs (batch size, workers, device, memory
budget, label cache) is left out, since it changes no number."""
from __future__ import annotations

from dataclasses import asdict
from typing import Optional

import torch

from netdissect.config import DissectConfig
from netdissect.data.broden import BrodenDataset, digest_of
from netdissect.models.specs import LoadedModel


def manifest(loaded: LoadedModel, ds: BrodenDataset, config: DissectConfig,
             files: Optional[dict] = None) -> dict:
    """What the numbers were computed from: a changed entry means they must be recomputed."""
    from netdissect import __version__
    labeling = ("iou_threshold", "min_category_images")
    how_it_runs = ("batch_size", "workers", "device", "memory_budget_mb", "layers", "label_cache")
    model = {"spec": loaded.spec, "weights": loaded.weights, "checkpoint": loaded.checkpoint,
             "weights_digest": loaded.digest(), "mean": list(loaded.mean), "std": list(loaded.std)}
    if loaded.weights is None and loaded.extra.get("seed") is not None:
        model["seed"] = loaded.extra["seed"]  # a random init: its seed reproduces it
    dataset = {"index_digest": ds.index_digest(), "images": len(ds)}
    if files is None:
        files = {"stats": ds.file_stats()}
    dataset["files_digest"] = digest_of(files["stats"])
    if "hashes" in files:
        dataset["content_digest"] = digest_of(files["hashes"])
    return {
        "model": model,
        "dataset": dataset,
        "layers": list(config.layers),
        "parameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()
                       if k not in how_it_runs + labeling},
        "labeling": {k: getattr(config, k) for k in labeling},
        "netdissect": __version__,
        "torch": torch.__version__,
    }
