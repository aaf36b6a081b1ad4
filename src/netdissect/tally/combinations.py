"""Dataset-wide label combinations, and each unit's active pixels counted over them.

The tally already reduces every pixel to the id of its label combination within its image.
Compositional explanations (netdissect.formulas.search) need the same thing across the dataset: a
pixel's *global combination* is the set of concepts at that pixel (its pixel-level concepts
and its image's image-level concepts) together with the set of categories labeled in its
image. Any formula over concepts, and the set of images it is scored on, is a function of the
global combination, so its mask never has to be materialized:

    |M_k AND F| = sum over combinations g where F(g) of unit_count[k, g]
    |F|         = sum over combinations g where F(g) of pixels[g]

Both are exact integers. The counts are collected in the dissection's own tally (no second
forward pass) and saved as OUT/<layer>/combinations.npz (plain arrays, no pickle).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
import torch

from netdissect.errors import RunError
from netdissect.tally import kernel

FILE = "combinations.npz"
DENSE_LIMIT = 1 << 23   # units x combinations up to this (64 MiB): one dense counter, else sparse batches


@dataclass
class CombinationIndex:
    """The dataset's distinct (labeled categories, concept set) pairs, and each image's map to them."""

    table: np.ndarray       # (n, W) int32 concept indices of each combination, ascending, -1 padded
    pattern: np.ndarray     # (n,) int64 bit g set when category g is labeled in the combination's images
    pixels: np.ndarray      # (n,) int64 pixels of the dataset in each combination
    lookup: np.ndarray      # (sum of local combinations,) int64 global id of each image's local ids
    offset: np.ndarray      # (N,) int64 start of each image's local ids in ``lookup`` (-1: skipped)
    n_local: np.ndarray     # (N,) int64 local combinations of each image

    @property
    def size(self) -> int:
        return len(self.pattern)

    @classmethod
    def from_store(cls, store) -> "CombinationIndex":
        """Built once after the pass from the segmentation store's per-image tables."""
        n_images = store.n_images
        labeled = np.asarray(store.labeled, dtype=bool)
        bits = (labeled.astype(np.int64) << np.arange(labeled.shape[1], dtype=np.int64)).sum(axis=1) \
            if labeled.size else np.zeros(n_images, dtype=np.int64)
        # one row per (image, local combination): the image's labeled-category bits, the
        # combination's concepts, the image's own concepts; all images at once, not row by row
        present = [i for i in range(n_images) if store.tables[i] is not None]   # None: a skipped image
        tables = [store.tables[i] for i in present]
        offset = np.full(n_images, -1, dtype=np.int64)
        n_local = np.zeros(n_images, dtype=np.int64)
        n_local[present] = [t.shape[0] for t in tables]
        starts = np.cumsum(n_local[present]) - n_local[present]
        offset[present] = starts
        start = int(n_local.sum())
        planes = max((t.shape[1] for t in tables), default=0)
        own = [store.image_concepts[i] for i in present]
        extra = max((len(c) for c in own), default=0)
        keys = np.full((start, 1 + planes + extra), -1, dtype=np.int64)
        if present:
            image_of_row = np.repeat(np.arange(len(present)), n_local[present])
            keys[:, 0] = bits[present][image_of_row]
            if all(t.shape[1] == planes for t in tables):
                keys[:, 1:1 + planes] = np.concatenate(tables)
            else:
                for at, t in zip(starts, tables):
                    keys[at:at + t.shape[0], 1:1 + t.shape[1]] = t
            if extra:
                per_image = np.full((len(present), extra), -1, dtype=np.int64)
                for j, c in enumerate(own):
                    per_image[j, :len(c)] = c
                keys[:, 1 + planes:] = per_image[image_of_row]
        weights = [store.pixels_per_combination(i) for i in present]
        width = keys.shape[1] - 1
        body = keys[:, 1:]
        if width:
            # a set of concepts, whatever plane or image label it came from: sorted, each once
            big = np.iinfo(np.int64).max
            body[:] = np.sort(np.where(body < 0, big, body), axis=1)
            dup = np.zeros_like(body, dtype=bool)
            dup[:, 1:] = body[:, 1:] == body[:, :-1]
            body[dup] = big
            body[:] = np.sort(body, axis=1)
            body[body == big] = -1
        unique, inverse = unique_rows(keys)
        pixels = np.bincount(inverse, weights=np.concatenate(weights) if weights else None,
                             minlength=len(unique))
        table = unique[:, 1:]
        used = int((table >= 0).sum(axis=1).max()) if len(table) else 0
        return cls(table=table[:, :used].astype(np.int32), pattern=unique[:, 0].copy(),
                   pixels=np.rint(pixels).astype(np.int64), lookup=inverse.astype(np.int64),
                   offset=offset, n_local=n_local)

    def local_to_global(self, images: torch.Tensor, width: int) -> torch.Tensor:
        """(n, width) int64 global id of each of the given images' local combination ids."""
        img = images.numpy()
        cols = np.arange(width, dtype=np.int64)
        valid = cols[None, :] < self.n_local[img][:, None]
        idx = np.where(valid, self.offset[img][:, None] + cols[None, :], 0)
        return torch.from_numpy(np.where(valid, self.lookup[idx], 0))


def unique_rows(rows: np.ndarray):
    """numpy.unique(rows, axis=0, return_inverse=True) of a 2-D int64 array, the inverse flat:
    a lexsort of the columns, 2-3x as fast as numpy's sort of the rows as opaque records."""
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    inverse = np.empty(len(rows), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], inverse


class UnitCombinationCounts:
    """Accumulates, for every unit of a layer, its active pixels per global combination."""

    def __init__(self, units: int, index: CombinationIndex):
        self.units = units
        self.index = index
        self.dense = torch.zeros(units * index.size, dtype=torch.int64) \
            if units * index.size <= DENSE_LIMIT else None
        # the sparse keys in 4 bytes where they fit: half the bytes to buffer, sort and merge
        self.key_dtype = torch.int32 if units * index.size < 2 ** 31 else torch.int64
        self.keys: List[torch.Tensor] = []
        self.counts: List[torch.Tensor] = []
        self.buffered = 0

    def add(self, per_combo: torch.Tensor, units: torch.Tensor, images: torch.Tensor,
            local: torch.Tensor) -> None:
        """per_combo: (p, width) active pixels of each pair per local combination id; units,
        local: (p,) the pairs' unit and image, as a position in images (their distinct dataset
        image indices, ascending)."""
        if per_combo.numel() == 0 or self.index.size == 0:   # no pairs, or no combinations to count in
            return
        lut = self.index.local_to_global(images, per_combo.shape[1])
        if kernel.available():   # one loop over the nonzero counts
            found = kernel.combination_counts(per_combo, units, local, lut.numpy(), self.index.size, self.dense)
            if found is None:
                return
            keys, counts = found
        else:
            pair, column = torch.nonzero(per_combo, as_tuple=True)
            if pair.numel() == 0:
                return
            counts = per_combo[pair, column]
            keys = units[pair] * self.index.size + lut[local[pair], column]
            if self.dense is not None:
                self.dense.index_add_(0, keys, counts)
                return
        if keys.numel() == 0:
            return
        self.keys.append(keys.to(self.key_dtype))
        self.counts.append(counts)
        self.buffered += keys.numel()
        if self.buffered > DENSE_LIMIT:
            self._compact()

    def _compact(self) -> None:
        """Sum the counts of equal keys (one batch holds several images of one combination)."""
        if not self.keys:
            return
        keys, inverse = torch.unique(torch.cat(self.keys), return_inverse=True)
        counts = torch.zeros(keys.numel(), dtype=torch.int64).index_add_(0, inverse, torch.cat(self.counts))
        self.keys, self.counts, self.buffered = [keys], [counts], keys.numel()

    def result(self, label_numbers: np.ndarray, categories: List[str]) -> "LayerCombinations":
        if self.dense is not None:
            keys = torch.nonzero(self.dense).reshape(-1)
            counts = self.dense[keys]
        else:
            self._compact()
            keys = self.keys[0] if self.keys else torch.zeros(0, dtype=torch.int64)
            counts = self.counts[0] if self.counts else torch.zeros(0, dtype=torch.int64)
        keys, counts = keys.numpy().astype(np.int64), counts.numpy()
        unit = keys // max(self.index.size, 1)
        indptr = np.zeros(self.units + 1, dtype=np.int64)
        np.cumsum(np.bincount(unit, minlength=self.units), out=indptr[1:])
        return LayerCombinations(table=self.index.table, pattern=self.index.pattern,
                                 pixels=self.index.pixels, unit_indptr=indptr,
                                 unit_combo=(keys % max(self.index.size, 1)).astype(np.int32),
                                 unit_count=counts.astype(np.int64),
                                 label_numbers=np.asarray(label_numbers, dtype=np.int64),
                                 categories=list(categories))


@dataclass
class LayerCombinations:
    """What a layer's formulas are searched from (OUT/<layer>/combinations.npz)."""

    table: np.ndarray         # (n, W) int32 concept indices (into the run's concepts), -1 padded
    pattern: np.ndarray       # (n,) int64 labeled-category bits (bit g: categories[g])
    pixels: np.ndarray        # (n,) int64 dataset pixels per combination
    unit_indptr: np.ndarray   # (K + 1,) int64 unit k's entries are [indptr[k], indptr[k + 1])
    unit_combo: np.ndarray    # (nnz,) int32 combination ids, ascending within a unit
    unit_count: np.ndarray    # (nnz,) int64 the unit's active pixels in that combination
    label_numbers: np.ndarray  # (C,) the concepts' label numbers (as iou.npz)
    categories: List[str]

    @property
    def units(self) -> int:
        return len(self.unit_indptr) - 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.table, self.pattern, self.pixels, self.unit_indptr, self.unit_combo,
                                      self.unit_count))

    def unit(self, k: int):
        """(combination ids, counts) of unit k's active pixels."""
        s, e = self.unit_indptr[k], self.unit_indptr[k + 1]
        return self.unit_combo[s:e].astype(np.int64), self.unit_count[s:e]

    def save(self, path: Path) -> None:
        from netdissect.atomic import atomic_save_npz
        # the counts in 4 bytes where they fit (a unit's pixels in one combination: below 2**32
        # up to 85,000 images of 224 x 224): half the bytes to deflate, 0.18 -> 0.1 s at 1,280 units
        count = self.unit_count
        if count.size and 0 <= count.min() and count.max() < 2 ** 32:
            count = count.astype(np.uint32)
        # the ids in 2 bytes where the dataset has no more combinations (its thousands, not more)
        combo = self.unit_combo.astype(np.uint16) if len(self.pixels) <= 2 ** 16 else self.unit_combo
        atomic_save_npz(path, table=self.table, pattern=self.pattern, pixels=self.pixels,
                        unit_indptr=self.unit_indptr, unit_combo=combo,
                        unit_count=count, label_numbers=self.label_numbers,
                        categories=np.asarray(self.categories, dtype=str))

    @classmethod
    def load(cls, path: Path) -> "LayerCombinations":
        path = Path(path)
        if not path.exists():
            raise RunError(f"{path}: not found; this run was made before formulas were supported: "
                           "rerun `netdissect dissect` with --force into this directory")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(table=z["table"], pattern=z["pattern"], pixels=z["pixels"],
                           unit_indptr=z["unit_indptr"], unit_combo=z["unit_combo"].astype(np.int32),
                           unit_count=z["unit_count"].astype(np.int64), label_numbers=z["label_numbers"],
                           categories=[str(c) for c in z["categories"]])
        except (OSError, ValueError, KeyError) as exc:
            raise RunError(f"{path}: unreadable ({exc}); rerun the dissection with --force") from None

