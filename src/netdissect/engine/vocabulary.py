"""The concepts of a dataset selection, numbered 0..C-1 for the tally, and which images label
which categories (the union of a concept's IoU is taken over those images only)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

from netdissect.data.broden import BrodenDataset


@dataclass
class Vocabulary:
    """The concepts of a dataset selection, indexed 0..C-1, and which images label what."""

    concepts: np.ndarray           # (C,) label numbers
    concept_of_label: np.ndarray   # label number -> concept index, -1 when not a concept
    categories: List[str]
    concept_category: np.ndarray   # (C,) category index of each concept (its primary one)
    labeled: np.ndarray            # (N, G) category labeled in image

    @classmethod
    def of(cls, ds: BrodenDataset) -> "Vocabulary":
        concepts = np.array(ds.concepts, dtype=np.int64)
        concept_of_label = np.full(len(ds.labels), -1, dtype=np.int64)
        concept_of_label[concepts] = np.arange(len(concepts))
        categories = list(ds.categories)
        concept_category = np.array([categories.index(ds.labels[c].category) for c in concepts],
                                    dtype=np.int64)
        labeled = np.array([[bool(r.masks.get(cat)) or bool(r.image_labels.get(cat)) for cat in categories]
                            for r in ds.records], dtype=bool).reshape(len(ds.records), len(categories))
        return cls(concepts, concept_of_label, categories, concept_category, labeled)
