"""The dataset's labels, encoded once during the pass and read back for the final tally.

Per-pixel combination ids go to a file (a memory map), so memory does not grow with the
number of images; the small per-image tables stay in memory. A store can also come whole from
the label cache (tally.labelcache), its ids then read-only.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from netdissect.tally.counts import EncodedSegmentation


class SegmentationStore:
    def __init__(self, n_images: int, pixels: int, n_concepts: int, labeled: np.ndarray,
                 directory: Optional[Path], offset: int = 0, ids: Optional[np.ndarray] = None):
        # a sharded run stores only its own images: global image i is row i - offset
        self.n_images = n_images
        self.offset = offset
        self.pixels = pixels
        self.id_dtype = np.uint16 if pixels <= 65536 else np.int32
        self.labeled = labeled                               # (N, G) bool
        self.concept_pixels = np.zeros(n_concepts, dtype=np.int64)
        self.tables: List[Optional[np.ndarray]] = [None] * n_images
        self.image_concepts: List[Optional[np.ndarray]] = [None] * n_images
        self.combo_pixels: List[Optional[np.ndarray]] = [None] * n_images  # for formulas
        self.path = None
        self.cache_key: Optional[str] = None    # set when the labels came from the label cache
        shape = (max(n_images, 1), pixels)
        if ids is not None:
            self.ids = ids
        elif directory is not None:
            self.path = Path(directory) / "segmentation.ids"
            mode = "r+" if self.path.exists() else "w+"
            self.ids = np.memmap(self.path, dtype=self.id_dtype, mode=mode, shape=shape)
        else:
            self.ids = np.zeros(shape, dtype=self.id_dtype)

    def add(self, indices: Sequence[int], encoded: Sequence[EncodedSegmentation]) -> None:
        for i, enc in zip(indices, encoded):
            i -= self.offset
            self.ids[i] = enc.combo_ids
            self.tables[i] = enc.table
            self.image_concepts[i] = enc.image_concepts
            self.combo_pixels[i] = enc.combo_pixels
            self.concept_pixels += enc.concept_pixels

    def flush(self) -> None:
        if self.path is not None:      # the scratch file this store writes (not an entry's ids)
            self.ids.flush()

    def drop(self, rows: Sequence[int]) -> None:
        """Forget the labels of these rows (images a cached store holds but the pass skipped),
        so that they count nowhere, as if never added."""
        for r in rows:
            self.tables[r] = self.image_concepts[r] = self.combo_pixels[r] = None
        self.concept_pixels = self.count_concept_pixels()

    def gather(self, images: torch.Tensor, with_ids: bool = True):
        """Arrays of the given (sorted, distinct) images for IoUTally.add (their combination ids
        as int32; None unless ``with_ids``)."""
        labeled = torch.from_numpy(self.labeled[images.numpy()])
        idx = images.numpy() - self.offset
        combo_ids = torch.from_numpy(np.asarray(self.ids[idx]).astype(np.int32)) if with_ids else None
        tables = [self.tables[i] for i in idx]
        max_combos = max(t.shape[0] for t in tables)
        planes = max(t.shape[1] for t in tables)
        padded = np.full((len(idx), max_combos, planes), -1, dtype=np.int64)
        for j, t in enumerate(tables):
            padded[j, :t.shape[0], :t.shape[1]] = t
        concepts = [self.image_concepts[i] for i in idx]
        width = max((len(c) for c in concepts), default=0)
        image_concepts = np.full((len(idx), width), -1, dtype=np.int64)
        for j, c in enumerate(concepts):
            image_concepts[j, :len(c)] = c
        return (combo_ids, torch.from_numpy(padded), torch.from_numpy(image_concepts),
                labeled)

    def id_rows(self) -> np.ndarray:
        """(n_images, pixels) the combination ids of every image: a view of the memory map."""
        return np.asarray(self.ids)

    def state_dict(self) -> dict:
        if self.cache_key is not None:   # read again from the cache on resume
            return {"cache": self.cache_key}
        self.flush()
        return {"concept_pixels": self.concept_pixels.copy(), "tables": list(self.tables),
                "image_concepts": list(self.image_concepts), "combo_pixels": list(self.combo_pixels)}

    def load_state_dict(self, state: dict) -> None:
        self.concept_pixels = state["concept_pixels"].copy()
        self.tables = list(state["tables"])
        self.image_concepts = list(state["image_concepts"])
        # checkpoints of earlier versions lack it: counted again from the ids when needed
        self.combo_pixels = list(state.get("combo_pixels", [None] * self.n_images))

    def pixels_per_combination(self, i: int) -> np.ndarray:
        """(n_combos,) pixels of each of image i's combinations."""
        if self.combo_pixels[i] is None:
            self.combo_pixels[i] = np.bincount(np.asarray(self.ids[i]).astype(np.int64),
                                               minlength=self.tables[i].shape[0]).astype(np.int64)
        return self.combo_pixels[i]

    def count_concept_pixels(self) -> np.ndarray:
        """(C,) labeled pixels of each concept over the store's images (the sum of what
        encode_segmentation returns per image; skipped rows hold None and count nothing)."""
        rows = range(self.n_images)
        total = np.zeros(len(self.concept_pixels), dtype=np.int64)
        tables = [self.tables[r] for r in rows if self.tables[r] is not None]
        if not tables:
            return total
        counts = np.concatenate([self.pixels_per_combination(r) for r in rows if self.tables[r] is not None])
        width = max(t.shape[1] for t in tables)
        flat = np.full((len(counts), width), -1, dtype=np.int64)
        at = 0
        for t in tables:
            flat[at:at + t.shape[0], :t.shape[1]] = t
            at += t.shape[0]
        valid = flat >= 0
        # float64 weights count exactly up to 2**53 pixels
        total += np.bincount(flat[valid], np.broadcast_to(counts[:, None], flat.shape)[valid],
                             minlength=len(total)).astype(np.int64)
        image = np.concatenate([self.image_concepts[r] for r in rows if self.tables[r] is not None])
        total += np.bincount(image.astype(np.int64), minlength=len(total)) * self.pixels
        return total
