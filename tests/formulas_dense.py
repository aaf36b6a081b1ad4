"""The dense-mask strategy of formula search, as the published implementations do it.

A boolean mask per concept over every pixel of every image (N x P), a unit's mask from its
upsampled, thresholded activations, and every candidate formula's mask materialized and
counted. The semantics and the beam rules are the ones netdissect.formulas.search documents, written
independently here (plain numpy over dense masks, exact Fractions), so the tests and
benchmarks/formulas_vs_dense.py can check the combination-count engine against it.
"""
from __future__ import annotations

from fractions import Fraction
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

OR, AND, AND_NOT = 0, 1, 2


class DenseConcepts:
    """Dense concept masks (C, N, P), which categories each image labels, each concept's category."""

    def __init__(self, ds, images: Sequence[int] = None):
        images = range(len(ds)) if images is None else images
        concepts = list(ds.concepts)
        self.categories = list(ds.categories)
        self.concept_category = np.array([self.categories.index(ds.labels[c].category) for c in concepts])
        masks, labeled = [], []
        for x in images:
            seg = ds.load_segmentation(x)
            rec = ds.records[x]
            size = rec.sh * rec.sw
            planes = seg.pixel.reshape(seg.pixel.shape[0], size)
            per = np.zeros((len(concepts), size), dtype=bool)
            for i, c in enumerate(concepts):
                per[i] = (planes == c).any(axis=0) | (c in set(seg.image_labels.tolist()))
            masks.append(per)
            labeled.append(seg.labeled)
        self.masks = np.stack(masks, axis=1)              # (C, N, P)
        self.labeled = np.array(labeled, dtype=bool)       # (N, G)
        self.present = self.masks.reshape(len(concepts), -1).any(axis=1)

    @property
    def n_concepts(self) -> int:
        return self.masks.shape[0]

    def mask(self, tokens: Tuple[int, ...]) -> np.ndarray:
        m = self.masks[tokens[0]].copy()
        for op, c in zip(tokens[1::2], tokens[2::2]):
            if op == OR:
                m |= self.masks[c]
            elif op == AND:
                m &= self.masks[c]
            else:
                m &= ~self.masks[c]
        return m

    def domain(self, tokens: Tuple[int, ...]) -> np.ndarray:
        """(N,) images where a positively used concept's category is labeled."""
        positive = [tokens[0]] + [c for op, c in zip(tokens[1::2], tokens[2::2]) if op != AND_NOT]
        return self.labeled[:, sorted({int(self.concept_category[c]) for c in positive})].any(axis=1)

    def counts(self, unit_mask: np.ndarray, tokens: Tuple[int, ...]) -> Tuple[int, int]:
        """(|M AND F|, |M in D(F)| + |F| - |M AND F|) for a unit mask (N, P)."""
        f = self.mask(tokens)
        inter = int((unit_mask & f).sum())
        active = int(unit_mask[self.domain(tokens)].sum())
        return inter, active + int(f.sum()) - inter


def dense_beam_search(dc: DenseConcepts, unit_mask: np.ndarray, length: int, beam: int):
    """The documented beam rules over dense masks. Returns (best per step, final beam): formulas
    with their exact IoU as Fractions. Every candidate's mask is materialized from its parent's
    (kept for the formulas in the beam) and counted."""
    kept_masks = {}

    def mask(t):
        if len(t) == 1:
            return dc.masks[t[0]]
        parent, op, c = kept_masks[t[:-2]], t[-2], dc.masks[t[-1]]
        return parent | c if op == OR else (parent & c if op == AND else parent & ~c)

    def ratio(t):
        f = mask(t)
        inter = int(np.count_nonzero(unit_mask & f))
        union = int(np.count_nonzero(unit_mask[dc.domain(t)])) + int(np.count_nonzero(f)) - inter
        return Fraction(inter, union) if union > 0 else Fraction(0)

    def select(cands):
        scores = {t: ratio(t) for t in cands}
        kept, seen = [], set()
        for t in sorted(cands, key=lambda t: (-scores[t], (len(t) + 1) // 2, t)):
            m = mask(t)
            key = (m.tobytes(), dc.domain(t).tobytes())
            if key in seen:
                continue
            seen.add(key)
            kept.append((t, scores[t], m))
            if len(kept) == beam:
                break
        return kept

    current = select([(c,) for c in range(dc.n_concepts)])
    kept_masks.update({t: m for t, _, m in current})
    best = [current[0][:2]]
    fresh = [t for t, _, _ in current]
    for step in range(2, length + 1):
        parents = [t for t in fresh if (len(t) + 1) // 2 == step - 1]
        new = [p + (op, c) for p in parents for op in (OR, AND, AND_NOT) for c in range(dc.n_concepts)
               if c not in p[0::2] and dc.present[c]]
        previous = [t for t, _, _ in current]
        current = select(previous + new)
        kept_masks.update({t: m for t, _, m in current})
        fresh = [t for t, _, _ in current if t not in previous]
        best.append(current[0][:2])
    return best, [t for t, _, _ in current]


def unit_masks(model, ds, layer: str, thresholds: np.ndarray, mean, std) -> np.ndarray:
    """(K, N, P) bool: each unit's activation upsampled bilinearly to the segmentation size and
    thresholded (strict >), image by image."""
    module = dict(model.named_modules())[layer]
    out = []
    captured = {}
    handle = module.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o.detach()))
    try:
        for x in range(len(ds)):
            img = ds.load_image(x).astype(np.float32) / 255.0
            t = torch.from_numpy(((img - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32))
                                 .transpose(2, 0, 1).copy())[None]
            with torch.no_grad():
                model(t)
            rec = ds.records[x]
            up = F.interpolate(captured["a"].float(), size=(rec.sh, rec.sw), mode="bilinear", align_corners=False)
            out.append((up[0] > torch.from_numpy(thresholds)[:, None, None]).reshape(up.shape[1], -1).numpy())
    finally:
        handle.remove()
    return np.stack(out, axis=1)


def all_formulas(n_concepts: int, length: int) -> List[Tuple[int, ...]]:
    """Every left-deep formula of up to ``length`` distinct concepts."""
    result = [(c,) for c in range(n_concepts)]
    frontier = list(result)
    for _ in range(length - 1):
        frontier = [t + (op, c) for t in frontier for op in (OR, AND, AND_NOT) for c in range(n_concepts)
                    if c not in t[0::2]]
        result += frontier
    return result
