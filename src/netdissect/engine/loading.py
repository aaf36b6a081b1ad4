"""The dataset as batches for the pass: images decoded and labels encoded in DataLoader workers.

An unreadable image either stops the run (the reader's DatasetError names the file and its
index.csv line) or, with --on-bad-image skip, comes back as a message the pass records.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from netdissect.data.broden import BrodenDataset
from netdissect.errors import DatasetError
from netdissect.runs import worker_init
from netdissect.stats.memory import release_before_fork
from netdissect.tally.counts import encode_segmentation


class ImagesAndLabels(torch.utils.data.Dataset):
    """Decodes an image and encodes its labels (in DataLoader workers)."""

    def __init__(self, ds: BrodenDataset, concept_of_label: np.ndarray, n_concepts: int,
                 skip_bad: bool, with_labels: bool = True):
        self.ds = ds
        self.concept_of_label = concept_of_label
        self.n_concepts = n_concepts
        self.skip_bad = skip_bad
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.ds)

    def encode(self, i: int):
        """Image i's labels, encoded for the tally (DatasetError when its masks are unreadable)."""
        seg = self.ds.load_segmentation(i)
        return encode_segmentation(seg.pixel, seg.image_labels, self.concept_of_label, self.n_concepts)

    def __getitem__(self, i: int):
        try:
            image = self.ds.load_image(i)
            return i, torch.from_numpy(image), self.encode(i) if self.with_labels else None, None
        except DatasetError as exc:
            if not self.skip_bad:
                raise
            return i, None, None, str(exc)


def _collate(items):
    good = [it for it in items if it[1] is not None]
    bad = [(it[0], it[3]) for it in items if it[1] is None]
    if good:
        images = torch.stack([it[1] for it in good])
    else:
        images = None
    return (torch.tensor([it[0] for it in good], dtype=torch.int64), images,
            [it[2] for it in good], bad)


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, workers: int, start: int = 0,
                stop: Optional[int] = None):
    if workers > 0:
        release_before_fork()
    if start or (stop is not None and stop != len(dataset)):
        dataset = torch.utils.data.Subset(dataset, range(start, len(dataset) if stop is None else stop))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       num_workers=workers, collate_fn=_collate,
                                       persistent_workers=False,
                                       prefetch_factor=4 if workers > 0 else None,
                                       worker_init_fn=worker_init() if workers > 0 else None)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)
