"""Intersection and union counts of unit masks with concept masks, vectorized.

A pixel of a segmentation can carry several labels at once (an object, a part, a material,
a color). Each image's pixels are encoded as ids of the distinct label *combinations* that
occur in it, with a small table from combination to concepts. Counting then needs one gather
per active pixel, whatever the number of mask planes, and a label found in two planes at the
same pixel is counted once.

All counts are exact integers summed over the dataset:
    IoU(k, c) = inter[k, c] / (active[k, cat(c)] + label_pixels[c] - inter[k, c])
where active[k, g] counts unit k's active pixels over images in which category g is labeled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from netdissect.tally.kernel import add_pair_counts, available, unique_keys

NO_CONCEPT = -1


@dataclass
class EncodedSegmentation:
    """One image's labels in the form the tally consumes."""

    combo_ids: np.ndarray        # (P,) uint16/int32: combination id of each pixel
    table: np.ndarray            # (n_combos, M) int32 concept indices, NO_CONCEPT where none
    image_concepts: np.ndarray   # (I,) int32 concept indices of image-level labels
    concept_pixels: np.ndarray   # (C,) int64 pixels of each concept in this image
    combo_pixels: Optional[np.ndarray] = None  # (n_combos,) int64 pixels of each combination


def encode_segmentation(planes: np.ndarray, image_labels: np.ndarray, concept_of_label: np.ndarray,
                        n_concepts: int) -> EncodedSegmentation:
    """planes: (M, sh, sw) label numbers; concept_of_label: label number -> concept index or -1."""
    m = planes.shape[0]
    pixels = planes.shape[1] * planes.shape[2] if planes.ndim == 3 else 0
    id_dtype = np.uint16 if pixels <= 65536 else np.int32
    concept_pixels = np.zeros(n_concepts, dtype=np.int64)
    image_concepts = concept_of_label[np.asarray(image_labels, dtype=np.int64)] if len(image_labels) else \
        np.zeros(0, dtype=np.int32)
    image_concepts = np.unique(image_concepts[image_concepts >= 0]).astype(np.int32)
    concept_pixels[image_concepts] += pixels
    if m == 0:
        return EncodedSegmentation(np.zeros(pixels, dtype=id_dtype), np.zeros((1, 0), dtype=np.int32),
                                   image_concepts, concept_pixels, np.array([pixels], dtype=np.int64))
    # concept index + 1 per plane and pixel (0: none); an int32 table makes numpy's take 3x as
    # fast as indexing with the int64 one
    shifted = np.take((concept_of_label + 1).astype(np.int32), planes.reshape(m, -1))   # (M, P)
    bits = int(n_concepts + 1).bit_length()
    key = shifted[0].astype(np.int64)
    if m * bits <= 63:  # one integer key per pixel: all planes packed side by side (in place)
        for row in shifted[1:]:
            key <<= bits
            key |= row
    else:  # too many planes to pack: rank the combinations plane by plane
        for row in shifted[1:]:
            _, key = np.unique(key, return_inverse=True)
            key = key.astype(np.int64) * (n_concepts + 1) + row
    _, first, combo_ids = unique_keys(key)
    table = (shifted[:, first] - 1).T.copy()                 # (n_combos, M) int32
    if m > 1:  # a concept present in two planes at one pixel counts once
        ordered = np.sort(table, axis=1)
        dup = np.zeros_like(ordered, dtype=bool)
        dup[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        ordered[dup] = NO_CONCEPT
        table = ordered
    counts = np.bincount(combo_ids.reshape(-1), minlength=len(first))
    valid = table >= 0
    np.add.at(concept_pixels, table[valid], np.broadcast_to(counts[:, None], table.shape)[valid])
    return EncodedSegmentation(combo_ids.reshape(-1).astype(id_dtype), table, image_concepts,
                               concept_pixels, counts.astype(np.int64))


class IoUTally:
    """Accumulates inter[k, c] and active[k, category] from thresholded unit masks."""

    def __init__(self, units: int, n_concepts: int, n_categories: int):
        self.inter = torch.zeros(units, n_concepts, dtype=torch.int64)
        self.active = torch.zeros(units, n_categories, dtype=torch.int64)

    def add(self, masks: torch.Tensor, units: torch.Tensor, images: torch.Tensor,
            combo_ids: torch.Tensor, tables: torch.Tensor, image_concepts: torch.Tensor,
            labeled: torch.Tensor) -> None:
        """Add a chunk of (unit, image) pairs given their thresholded masks.

        masks: (p, P) bool, the pairs' thresholded upsampled maps.
        units, images: (p,) int64; ``images`` index the chunk's image arrays below.
        combo_ids: (n, P) combination id per pixel of each image of the chunk.
        tables: (n, max_combos, M) int64 concept per combination and plane (-1: none).
        image_concepts: (n, I) int64 image-level concepts (-1 padded).
        labeled: (n, G) bool, category labeled in the image.
        """
        per_combo, act = combination_counts(masks, images, combo_ids, tables.shape[1])
        self.add_counts(per_combo, act, units, images, tables, image_concepts, labeled)

    def add_counts(self, per_combo: torch.Tensor, act: torch.Tensor, units: torch.Tensor,
                   images: torch.Tensor, tables: torch.Tensor, image_concepts: torch.Tensor,
                   labeled: torch.Tensor) -> None:
        """Add pairs given their active pixels per combination (p, max_combos) and in all (p,)."""
        if act.shape[0] == 0:
            return
        if available():
            add_pair_counts(self.inter, self.active, per_combo, act, units, images, tables, image_concepts,
                            labeled)
            return
        n_concepts = self.inter.shape[1]
        self.active.index_add_(0, units, act[:, None] * labeled[images].to(act.dtype))
        # image-level concepts: the unit's whole active area intersects the full-image mask
        ic = image_concepts[images]                                       # (p, I)
        if ic.numel():
            valid = ic >= 0
            flat = (units[:, None] * n_concepts + ic)[valid]
            self.inter.view(-1).index_add_(0, flat, act[:, None].expand_as(ic)[valid])
        if tables.shape[2] == 0:
            return
        # pixel-level concepts: from the combinations hit to the concepts they hold
        pair_c, combo_c = torch.nonzero(per_combo, as_tuple=True)
        counts = per_combo[pair_c, combo_c]
        concepts = tables[images[pair_c], combo_c]                        # (hits, M)
        valid = concepts >= 0
        flat = (units[pair_c][:, None] * n_concepts + concepts)[valid]
        self.inter.view(-1).index_add_(0, flat, counts[:, None].expand_as(concepts)[valid])

    def iou(self, concept_pixels: torch.Tensor, concept_category: torch.Tensor) -> torch.Tensor:
        """(K, C) float64 IoU; 0 where the union is empty."""
        union = self.active[:, concept_category] + concept_pixels[None, :] - self.inter
        iou = self.inter.to(torch.float64) / union.clamp(min=1).to(torch.float64)
        return torch.where(union > 0, iou, torch.zeros_like(iou))


def combination_counts(masks: torch.Tensor, images: torch.Tensor, combo_ids: torch.Tensor,
                       max_combos: int):
    """Active pixels of each pair per combination id (p, max_combos), and in all (p,)."""
    n_pairs, n_pixels = masks.shape
    pair_idx, pix = torch.nonzero(masks, as_tuple=True)
    act = torch.bincount(pair_idx, minlength=n_pairs)
    combo = combo_ids.reshape(-1)[images[pair_idx] * n_pixels + pix].long()
    per_combo = torch.bincount(pair_idx * max_combos + combo, minlength=n_pairs * max_combos)
    return per_combo.view(n_pairs, max_combos), act
