"""Compositional explanations: the logical formula of concepts that best matches each unit.

Mu & Andreas (NeurIPS 2020) label a unit with a formula such as ``(water OR river) AND NOT
blue-c`` found by beam search. Here a formula is a boolean function of the dataset-wide label
combination of a pixel (netdissect.tally.combinations), so its counts are sums over combinations,
never a materialized mask, and its IoU is an exact integer ratio like the dissection's.

Semantics (docs/formulas.md):
- A concept is true at a pixel when the pixel carries it or its image carries it as an
  image-level label (scene, texture: full-image masks); a label that is both is their OR.
  Where the concept's category is not labeled, the concept is false; ``NOT c`` is its
  complement over every pixel of every image.
- Formulas are left-deep: a concept, then repeatedly ``F OR c``, ``F AND c``, ``F AND NOT c``.
- IoU(k, F) = |M_k AND F| / (|M_k in D(F)| + |F| - |M_k AND F|), where the domain D(F) is the
  set of images in which the category of at least one concept used positively in F (not under
  NOT) is labeled. For one concept this is exactly the dissection's IoU (the unit's active
  pixels enter the union only where the concept's category is labeled); adding ``AND c`` or
  ``OR c`` never takes images out of the union, and ``AND NOT c`` asks nothing of c's category.

Beam search (width B, maximum length L): the beam starts as the B best single concepts; each
step extends the formulas that entered the beam at the previous step by every concept not in
them that occurs in the dataset, with each operator, and the new beam is the best B among the
old beam and the extensions. Ranking: the exact ratio (integer cross-multiplication), then the
shorter formula, then the formula's tokens in order (concept index, operator OR < AND < AND
NOT). A candidate with the same mask and domain as a better-ranked one is a duplicate and takes
no slot. The unit's formula is the best of the final beam; it is never worse than its label.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from netdissect.errors import NetDissectError, RunError
from netdissect.tally.combinations import FILE as COMBINATIONS_FILE
from netdissect.tally.combinations import LayerCombinations

OR, AND, AND_NOT = 0, 1, 2
OPERATORS = ("OR", "AND", "AND NOT")
FILE = "formulas.npz"

Tokens = Tuple[int, ...]   # (c0, op1, c1, op2, c2, ...): concept indices and operator codes


def formula_length(tokens: Sequence[int]) -> int:
    return (len(tokens) + 1) // 2


def formula_concepts(tokens: Sequence[int]) -> Tuple[int, ...]:
    return tuple(tokens[0::2])


def formula_operators(tokens: Sequence[int]) -> Tuple[str, ...]:
    return tuple(OPERATORS[op] for op in tokens[1::2])


def formula_text(tokens: Sequence[int], names: Sequence[str]) -> str:
    """Left-deep formula as text; the left side is parenthesized where OR meets AND."""
    text = names[tokens[0]]
    previous = None
    for op, c in zip(tokens[1::2], tokens[2::2]):
        family = op == OR
        if previous is not None and previous != family:
            text = f"({text})"
        text = f"{text} {OPERATORS[op]} {names[c]}"
        previous = family
    return text


def parse_formula(text: str, names: Sequence[str]) -> Tokens:
    """The inverse of formula_text for left-deep formulas (names may contain spaces)."""
    index = {n: i for i, n in enumerate(names)}
    words = text.replace("(", " ").replace(")", " ").split()
    tokens: List[int] = []
    i, pending = 0, []

    def flush():
        name = " ".join(pending)
        if name not in index:
            raise NetDissectError(f"formula {text!r}: unknown concept {name!r}")
        tokens.append(index[name])
        pending.clear()

    while i < len(words):
        if words[i] in ("OR", "AND"):
            flush()
            if words[i] == "AND" and i + 1 < len(words) and words[i + 1] == "NOT":
                tokens.append(AND_NOT)
                i += 2
                continue
            tokens.append(OR if words[i] == "OR" else AND)
        else:
            pending.append(words[i])
        i += 1
    flush()
    return tuple(tokens)


def formula_mask(tokens: Sequence[int], pixel: np.ndarray, image_labels: Sequence[int],
                 label_numbers: Sequence[int]) -> np.ndarray:
    """(sh, sw) bool: the formula's region in one image, for drawing. ``pixel`` is the image's
    (M, sh, sw) label planes, ``image_labels`` its image-level labels, ``label_numbers`` the run's
    concepts (as iou.npz)."""
    image_level = set(int(v) for v in image_labels)
    shape = pixel.shape[1:]

    def concept(c: int) -> np.ndarray:
        label = int(label_numbers[c])
        if label in image_level:
            return np.ones(shape, dtype=bool)
        return (pixel == label).any(axis=0) if pixel.shape[0] else np.zeros(shape, dtype=bool)

    mask = concept(tokens[0])
    for op, c in zip(tokens[1::2], tokens[2::2]):
        other = concept(c)
        mask = mask | other if op == OR else (mask & other if op == AND else mask & ~other)
    return mask


class _LRU:
    """A small least-recently-used cache bounded by the bytes of its arrays."""

    def __init__(self, budget: int):
        self.budget, self.bytes, self.items = budget, 0, OrderedDict()

    def get(self, key):
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key, value: np.ndarray) -> np.ndarray:
        self.items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes
        return value


@dataclass
class _Entry:
    tokens: Tokens
    inter: int
    pixels: int      # |F|
    active: int      # the unit's active pixels in D(F)
    domain: int      # bit g: category g's concepts are used positively

    @property
    def union(self) -> int:
        return self.active + self.pixels - self.inter


class FormulaSearch:
    """Beam search over the formulas of one layer, from its combination counts."""

    def __init__(self, combos: LayerCombinations, concept_category: np.ndarray, length: int = 3,
                 beam: int = 10, cache_bytes: int = 256 * 2 ** 20):
        if length < 1:
            raise NetDissectError(f"--formula-length must be at least 1; got {length}")
        if beam < 1:
            raise NetDissectError(f"--beam must be at least 1; got {beam}")
        if len(concept_category) == 0:
            raise NetDissectError("the run has no concepts: there is nothing to build formulas from")
        self.combos = combos
        self.length, self.beam = length, beam
        self.concept_category = np.asarray(concept_category, dtype=np.int64)
        self.n_concepts = len(self.concept_category)
        self.table = combos.table.astype(np.int64)
        self.n = self.table.shape[0]
        valid = self.table >= 0
        self.rows, self.concepts = np.nonzero(valid)[0], self.table[valid]
        self.concept_pixels = _count(self.concepts, combos.pixels[self.rows], self.n_concepts)
        order = np.argsort(self.concepts, kind="stable")
        self.concept_rows = self.rows[order]
        self.concept_ptr = np.zeros(self.n_concepts + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.concepts, minlength=self.n_concepts), out=self.concept_ptr[1:])
        self.patterns, self.pattern_of = np.unique(combos.pattern, return_inverse=True)
        self.pattern_of = self.pattern_of.reshape(-1)
        self.usable = self.concept_pixels > 0   # concepts that never occur only make duplicates
        self._truth = _LRU(cache_bytes // 2)
        self._cooc = _LRU(cache_bytes // 2)

    # ---------------------------------------------------------------- formula masks and counts

    def truth(self, tokens: Tokens) -> np.ndarray:
        """(n,) bool: the formula's value on every combination."""
        hit = self._truth.get(tokens)
        if hit is not None:
            return hit
        if len(tokens) == 1:
            value = np.zeros(self.n, dtype=bool)
            c = tokens[0]
            value[self.concept_rows[self.concept_ptr[c]:self.concept_ptr[c + 1]]] = True
        else:
            left, op, c = self.truth(tokens[:-2]), tokens[-2], tokens[-1]
            has = self.truth((c,))
            value = left | has if op == OR else (left & has if op == AND else left & ~has)
        return self._truth.put(tokens, value)

    def cooccurrence(self, tokens: Tokens) -> np.ndarray:
        """(C,) int64: |F AND c| in dataset pixels, for every concept c."""
        hit = self._cooc.get(tokens)
        if hit is not None:
            return hit
        truth = self.truth(tokens)
        flip = truth.sum() * 2 > self.n   # count over the smaller side
        rows = np.nonzero(~truth if flip else truth)[0]
        sub = self.table[rows]
        valid = sub >= 0
        counts = _count(sub[valid], np.broadcast_to(self.combos.pixels[rows][:, None], sub.shape)[valid],
                        self.n_concepts)
        return self._cooc.put(tokens, self.concept_pixels - counts if flip else counts)

    def domain_of(self, tokens: Tokens) -> int:
        """Category bits of the concepts used positively (not under NOT)."""
        bits = 1 << int(self.concept_category[tokens[0]])
        for op, c in zip(tokens[1::2], tokens[2::2]):
            if op != AND_NOT:
                bits |= 1 << int(self.concept_category[c])
        return bits

    def score(self, k: int, tokens: Tokens) -> Tuple[int, int]:
        """(|M_k AND F|, union) of any formula, directly from its truth over the combinations."""
        combo, count = self.combos.unit(k)
        truth = self.truth(tuple(tokens))
        inter = int(count[truth[combo]].sum())
        pixels = int(self.combos.pixels[truth].sum())
        in_domain = (self.combos.pattern[combo] & self.domain_of(tuple(tokens))) != 0
        return inter, int(count[in_domain].sum()) + pixels - inter

    def domain_images(self, domain: int) -> bytes:
        """Which labeled-category patterns a domain covers (equal bytes: the same images)."""
        return ((self.patterns & domain) != 0).tobytes()

    # ---------------------------------------------------------------- the search

    def search_unit(self, k: int, final_beam: Optional[list] = None) -> List[_Entry]:
        """The best formula found after each step (index l - 1: of length at most l); the final
        beam, in rank order, is appended to ``final_beam`` when given."""
        combo, count = self.combos.unit(k)
        sub = self.table[combo]
        valid = sub >= 0
        u_rows, u_concepts = np.nonzero(valid)[0], sub[valid]
        u_weights = count[u_rows]
        single = _count(u_concepts, u_weights, self.n_concepts)
        per_pattern = np.bincount(self.pattern_of[combo], weights=count, minlength=len(self.patterns))
        per_pattern = np.rint(per_pattern).astype(np.int64)

        def active_in(domain: int) -> int:
            return int(per_pattern[(self.patterns & domain) != 0].sum())

        cat_bits = np.left_shift(1, self.concept_category)
        n_cat = int(self.concept_category.max()) + 1 if self.n_concepts else 0
        active_cat = np.array([active_in(1 << g) for g in range(n_cat)], dtype=np.int64)
        C = self.n_concepts
        arange = np.arange(C)

        # step 1: single concepts (all of them, as the dissection ranks them)
        cand = _Candidates(inter=single, pixels=self.concept_pixels, active=active_cat[self.concept_category],
                           domain=cat_bits, length=np.ones(C, dtype=np.int64),
                           major=arange, op=np.full(C, -1), concept=arange, parent=np.full(C, -1))
        beam = self._select(cand, [], [])
        best = [beam[0]]
        fresh = list(beam)
        for step in range(2, self.length + 1):
            parents = sorted((e for e in fresh if formula_length(e.tokens) == step - 1), key=lambda e: e.tokens)
            if not parents:
                best.append(best[-1])
                continue
            parts = []
            for rank, p in enumerate(parents):
                truth_u = self.truth(p.tokens)[combo]
                sel = truth_u[u_rows]
                x = _count(u_concepts[sel], u_weights[sel], C)
                y = self.cooccurrence(p.tokens)
                ok = self.usable.copy()
                ok[list(formula_concepts(p.tokens))] = False
                ext = np.array([active_in(p.domain | (1 << g)) for g in range(n_cat)], dtype=np.int64)
                a_ext = ext[self.concept_category]
                dom = p.domain | cat_bits
                for op, inter, pix, act, d in (
                        (OR, p.inter + single - x, p.pixels + self.concept_pixels - y, a_ext, dom),
                        (AND, x, y, a_ext, dom),
                        (AND_NOT, p.inter - x, p.pixels - y, np.full(C, p.active), np.full(C, p.domain))):
                    idx = arange[ok]
                    parts.append(_Candidates(inter=inter[idx], pixels=pix[idx], active=act[idx], domain=d[idx],
                                             length=np.full(len(idx), step), major=np.full(len(idx), rank),
                                             op=np.full(len(idx), op), concept=idx,
                                             parent=np.full(len(idx), rank)))
            cand = _Candidates.concat(parts)
            previous = beam
            beam = self._select(cand, parents, previous)
            fresh = [e for e in beam if not any(e is q for q in previous)]
            best.append(beam[0])
        if final_beam is not None:
            final_beam.extend(beam)
        return best

    def _select(self, cand: "_Candidates", parents: List[_Entry], carried: List[_Entry]) -> List[_Entry]:
        """The best B distinct formulas among the carried beam and the candidates, in rank order."""
        carried = sorted(carried, key=lambda e: (formula_length(e.tokens), e.tokens))
        inter = np.concatenate([[e.inter for e in carried], cand.inter]).astype(np.int64)
        pixels = np.concatenate([[e.pixels for e in carried], cand.pixels]).astype(np.int64)
        active = np.concatenate([[e.active for e in carried], cand.active]).astype(np.int64)
        union = active + pixels - inter
        safe_union = np.where(union > 0, union, 1)
        inter_eff = np.where(union > 0, inter, 0)
        iou = inter_eff / safe_union
        length = np.concatenate([[formula_length(e.tokens) for e in carried], cand.length])
        major = np.concatenate([np.arange(len(carried)), cand.major])
        op = np.concatenate([np.full(len(carried), -1), cand.op])
        concept = np.concatenate([np.full(len(carried), -1), cand.concept])
        order = np.lexsort((concept, op, major, length, -iou))
        sorted_iou = iou[order]
        kept: List[_Entry] = []
        seen: Dict[tuple, List[_Entry]] = {}
        i, n = 0, len(order)
        while len(kept) < self.beam and i < n:
            j = int(np.searchsorted(-sorted_iou, -sorted_iou[i], side="right"))
            block = order[i:j]
            if len(block) > 1:
                a, b = inter_eff[block], safe_union[block]
                if not np.all(a * b[0] == a[0] * b):   # equal as floats, not as ratios: rare
                    block = np.array(sorted(block, key=lambda t: -Fraction(int(inter_eff[t]), int(safe_union[t]))))
            for t in block:
                if t < len(carried):
                    entry = carried[t]
                else:
                    c = t - len(carried)
                    p = parents[cand.parent[c]] if cand.parent[c] >= 0 else None
                    tokens = (int(cand.concept[c]),) if p is None else \
                        p.tokens + (int(cand.op[c]), int(cand.concept[c]))
                    entry = _Entry(tokens, int(cand.inter[c]), int(cand.pixels[c]), int(cand.active[c]),
                                   int(cand.domain[c]))
                key = (entry.inter, entry.pixels, entry.active, self.domain_images(entry.domain))
                twins = seen.setdefault(key, [])
                truth = self.truth(entry.tokens) if twins else None
                if any(np.array_equal(truth, self.truth(e.tokens)) for e in twins):
                    continue
                twins.append(entry)
                kept.append(entry)
                if len(kept) == self.beam:
                    break
            i = j
        return kept

    def search(self, units: Optional[Sequence[int]] = None) -> List[List[_Entry]]:
        units = range(self.combos.units) if units is None else units
        return [self.search_unit(k) for k in units]


@dataclass
class _Candidates:
    inter: np.ndarray
    pixels: np.ndarray
    active: np.ndarray
    domain: np.ndarray
    length: np.ndarray
    major: np.ndarray
    op: np.ndarray
    concept: np.ndarray
    parent: np.ndarray

    @classmethod
    def concat(cls, parts: List["_Candidates"]) -> "_Candidates":
        return cls(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__})


def _count(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Exact integer bincount (float64 weights are exact below 2**53)."""
    return np.rint(np.bincount(index, weights=weights, minlength=size)).astype(np.int64)


# -------------------------------------------------------------------- results of a layer

@dataclass
class LayerFormulas:
    """Every unit's best formula (OUT/<layer>/formulas.npz)."""

    length: int
    beam: int
    tokens: np.ndarray          # (K, 2L - 1) int64, -1 padded
    inter: np.ndarray           # (K,) int64
    union: np.ndarray           # (K,) int64
    by_length: np.ndarray       # (K, L, 2) int64 (inter, union) of the best formula of length <= l
    single: np.ndarray          # (K,) int64 the best single concept (the dissection's label)
    concept_names: List[str]
    seconds: float = 0.0

    @property
    def units(self) -> int:
        return self.tokens.shape[0]

    def unit_tokens(self, k: int) -> Tokens:
        return tuple(int(t) for t in self.tokens[k] if t >= 0)

    def text(self, k: int) -> str:
        return formula_text(self.unit_tokens(k), self.concept_names)

    @property
    def iou(self) -> np.ndarray:
        return _ratio(self.inter, self.union)

    @property
    def iou_by_length(self) -> np.ndarray:
        return _ratio(self.by_length[..., 0], self.by_length[..., 1])

    @property
    def single_iou(self) -> np.ndarray:
        return self.iou_by_length[:, 0]

    @property
    def gain(self) -> np.ndarray:
        return self.iou - self.single_iou

    def operators(self, k: int) -> Tuple[str, ...]:
        return formula_operators(self.unit_tokens(k))

    def summary(self, iou_threshold: float) -> dict:
        iou, gain = self.iou, self.gain
        by_len = self.iou_by_length
        ops = {name: 0 for name in OPERATORS}
        lengths = {str(l): 0 for l in range(1, self.length + 1)}
        for k in range(self.units):
            for name in set(self.operators(k)):
                ops[name] += 1
            lengths[str(formula_length(self.unit_tokens(k)))] += 1
        return {
            "length": self.length, "beam": self.beam,
            "mean_iou": _mean(iou), "mean_single_iou": _mean(self.single_iou), "mean_gain": _mean(gain),
            "units_improved": int((gain > 0).sum()),
            "detectors": int((iou > iou_threshold).sum()),
            "mean_iou_by_length": [_mean(by_len[:, l]) for l in range(self.length)],
            "mean_gain_by_length": [_mean(by_len[:, l] - by_len[:, 0]) for l in range(self.length)],
            "units_with_operator": ops, "units_by_length": lengths,
            "seconds": round(self.seconds, 2),
        }

    def save(self, path: Path) -> None:
        from netdissect.atomic import atomic_save_npz
        atomic_save_npz(path, length=np.int64(self.length), beam=np.int64(self.beam), tokens=self.tokens,
                        inter=self.inter, union=self.union, by_length=self.by_length, single=self.single,
                        concept_names=np.asarray(self.concept_names, dtype=str),
                        seconds=np.float64(self.seconds))

    @classmethod
    def load(cls, path: Path) -> "LayerFormulas":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(length=int(z["length"]), beam=int(z["beam"]), tokens=z["tokens"], inter=z["inter"],
                           union=z["union"], by_length=z["by_length"], single=z["single"],
                           concept_names=[str(s) for s in z["concept_names"]], seconds=float(z["seconds"]))
        except (OSError, ValueError, KeyError) as exc:
            raise RunError(f"{path}: unreadable ({exc}); run `netdissect formulas` on the run again") from None


def _ratio(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _mean(values: np.ndarray) -> float:
    return round(float(values.mean()), 6) if values.size else 0.0


def explain_layer(layer, length: int = 3, beam: int = 10, combos: Optional[LayerCombinations] = None,
                  progress: bool = False) -> LayerFormulas:
    """Search every unit's formula for a LayerResult (its combination counts, or ``combos``)."""
    combos = combos if combos is not None else layer.combinations
    if combos is None:
        raise RunError(f"layer {layer.name!r} has no combination counts; dissect it again with this version")
    if not np.array_equal(np.asarray(combos.label_numbers), np.asarray(layer.concepts)):
        raise RunError(f"layer {layer.name!r}: {COMBINATIONS_FILE} and iou.npz list different concepts; "
                       "rerun the dissection with --force")
    categories = list(combos.categories)
    concept_category = np.array([categories.index(c) for c in layer.concept_categories], dtype=np.int64)
    start = time.time()
    searcher = FormulaSearch(combos, concept_category, length=length, beam=beam)
    K = combos.units
    tokens = np.full((K, 2 * length - 1), -1, dtype=np.int64)
    inter = np.zeros(K, dtype=np.int64)
    union = np.zeros(K, dtype=np.int64)
    by_length = np.zeros((K, length, 2), dtype=np.int64)
    single = np.zeros(K, dtype=np.int64)
    bar = _progress(K, f"formulas {layer.name}", progress)
    for k in range(K):
        best = searcher.search_unit(k)
        for l, e in enumerate(best):
            by_length[k, l] = (e.inter, e.union)
        final = best[-1]
        single[k] = best[0].tokens[0]
        tokens[k, :len(final.tokens)] = final.tokens
        inter[k], union[k] = final.inter, final.union
        bar.update(1)
    bar.close()
    return LayerFormulas(length=length, beam=beam, tokens=tokens, inter=inter, union=union,
                         by_length=by_length, single=single, concept_names=list(layer.concept_names),
                         seconds=time.time() - start)


def _progress(total: int, desc: str, enabled: bool):
    from netdissect.progress import progress_bar
    return progress_bar(enabled, total, desc, "unit")
