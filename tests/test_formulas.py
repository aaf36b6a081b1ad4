"""Compositional explanations: the combination-count engine against dense masks, by hand, end to end."""
from __future__ import annotations

import csv
import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from engine_data import TinyNet, make_dataset
from formulas_dense import DenseConcepts, all_formulas, dense_beam_search, unit_masks

import netdissect
from netdissect.cli.commands import main
from netdissect.config import NO_COMPILED
from netdissect.data.broden import BrodenDataset
from netdissect.errors import NetDissectError, RunError
from netdissect.formulas.search import (
    AND,
    AND_NOT,
    OR,
    FormulaSearch,
    LayerFormulas,
    explain_layer,
    formula_text,
    parse_formula,
)
from netdissect.models.specs import IMAGENET_MEAN, IMAGENET_STD
from netdissect.tally import combinations as combinations_mod
from netdissect.tally.combinations import LayerCombinations

LAYERS = ["relu1", "relu2", "conv3"]


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    """A dissection of TinyNet (some images without part labels; 'door' is an object that also
    appears in part planes; texture only on every other image), with its dense reference masks."""
    root = make_dataset(tmp_path_factory.mktemp("formulas") / "data", n_images=12)
    model = TinyNet()
    with pytest.warns(UserWarning):
        result = netdissect.dissect(model, LAYERS, root, progress=False, workers=0, quantile=0.05)
    ds = BrodenDataset(root)
    dense = DenseConcepts(ds)
    masks = {name: unit_masks(model, ds, name, result[name].thresholds, IMAGENET_MEAN, IMAGENET_STD)
             for name in LAYERS}
    return result, ds, dense, masks


def _searcher(layer, length=3, beam=5):
    cats = list(layer.combinations.categories)
    return FormulaSearch(layer.combinations, np.array([cats.index(c) for c in layer.concept_categories]),
                         length=length, beam=beam)


def test_single_concepts_equal_the_dissection(dissected):
    result = dissected[0]
    for name in LAYERS:
        layer = result[name]
        search = _searcher(layer)
        for k in range(layer.units):
            ious = [Fraction(*search.score(k, (c,))) if search.score(k, (c,))[1] else 0
                    for c in range(len(layer.concepts))]
            np.testing.assert_array_equal(np.array([float(v) for v in ious], dtype=np.float32), layer.iou[k])
        formulas = explain_layer(layer, length=3, beam=5)
        np.testing.assert_array_equal(formulas.single, layer.best)
        np.testing.assert_array_equal(formulas.single_iou.astype(np.float32), layer.best_iou)
        assert (formulas.gain >= 0).all()


def test_every_formula_counts_as_dense_masks(dissected):
    """|M AND F| and the union of every formula of up to 2 concepts (a sample of length 3),
    against dense masks with the documented semantics."""
    result, _, dense, masks = dissected
    formulas = all_formulas(dense.n_concepts, 2)
    rng = np.random.default_rng(0)
    longer = all_formulas(dense.n_concepts, 3)[len(formulas):]
    formulas += [longer[i] for i in rng.choice(len(longer), 300, replace=False)]
    for name in LAYERS:
        search = _searcher(result[name])
        for k in range(result[name].units):
            for tokens in formulas:
                assert search.score(k, tokens) == dense.counts(masks[name][k], tokens), (name, k, tokens)


def test_beam_search_equals_dense_beam_search(dissected):
    result, _, dense, masks = dissected
    for name in LAYERS:
        layer = result[name]
        search = _searcher(layer, length=3, beam=4)
        for k in range(layer.units):
            beam = []
            best = search.search_unit(k, final_beam=beam)
            ref_best, ref_beam = dense_beam_search(dense, masks[name][k], length=3, beam=4)
            assert [e.tokens for e in best] == [t for t, _ in ref_best], (name, k)
            assert [Fraction(e.inter, e.union) if e.union else 0 for e in best] == [r for _, r in ref_best]
            assert [e.tokens for e in beam] == ref_beam


def test_hand_computed_example():
    """Two categories (object: bit 0, part: bit 1); concepts a, b (object), p (part).
    Combinations: {a} and {b} and {a, p} in images labeling both; {} and {a} in images labeling
    objects only. The unit fires on 6 pixels of {a}, 5 of {a, p}, 4 of {} (object-only images)."""
    combos = LayerCombinations(
        table=np.array([[0, -1], [1, -1], [0, 2], [-1, -1], [0, -1]], dtype=np.int32),
        pattern=np.array([3, 3, 3, 1, 1]), pixels=np.array([10, 10, 5, 20, 5]),
        unit_indptr=np.array([0, 3]), unit_combo=np.array([0, 2, 3], dtype=np.int32),
        unit_count=np.array([6, 5, 4]), label_numbers=np.array([1, 2, 3]), categories=["object", "part"])
    search = FormulaSearch(combos, np.array([0, 0, 1]), length=2, beam=3)
    # a: inter 6 + 5; its domain (object-labeled images) holds all 15 active pixels; |a| = 20
    assert search.score(0, (0,)) == (11, 15 + 20 - 11)
    # p: only the images labeling parts count: 11 active pixels; |p| = 5
    assert search.score(0, (2,)) == (5, 11)
    # a AND NOT p: 6 of 15 pixels; NOT p asks nothing of the part category: domain stays object
    assert search.score(0, (0, AND_NOT, 2)) == (6, 15 + 15 - 6)
    # p AND a: the domain grows to every image labeling object or part
    assert search.score(0, (2, AND, 0)) == (5, 15 + 5 - 5)
    # a OR b: 11 of the unit's pixels, |a OR b| = 30
    assert search.score(0, (0, OR, 1)) == (11, 15 + 30 - 11)
    beam = []
    best = search.search_unit(0, final_beam=beam)
    assert best[0].tokens == (0,) and Fraction(best[0].inter, best[0].union) == Fraction(11, 24)
    assert best[1].tokens == (2, OR, 0) or Fraction(best[1].inter, best[1].union) >= Fraction(11, 24)
    masks = [search.truth(e.tokens).tobytes() + search.domain_images(e.domain) for e in beam]
    assert len(set(masks)) == len(masks)  # no two beam entries share a mask and a domain


def test_duplicates_take_no_beam_slot_and_ties_prefer_short():
    """c never meets a: a AND NOT c has a's mask and domain, so it must not fill a slot, and at
    equal IoU the shorter formula wins."""
    combos = LayerCombinations(
        table=np.array([[0], [1], [2]], dtype=np.int32), pattern=np.array([1, 1, 1]),
        pixels=np.array([4, 4, 4]), unit_indptr=np.array([0, 1]), unit_combo=np.array([0], dtype=np.int32),
        unit_count=np.array([4]), label_numbers=np.array([1, 2, 3]), categories=["object"])
    search = FormulaSearch(combos, np.array([0, 0, 0]), length=2, beam=3)
    beam = []
    best = search.search_unit(0, final_beam=beam)
    assert best[-1].tokens == (0,)
    assert (0, AND_NOT, 1) not in [e.tokens for e in beam] and (0, AND_NOT, 2) not in [e.tokens for e in beam]


def test_formula_text_round_trip():
    names = ["water", "river", "blue-c", "sky blue"]
    tokens = (0, OR, 1, AND_NOT, 2)
    assert formula_text(tokens, names) == "(water OR river) AND NOT blue-c"
    assert formula_text((0, AND, 3, AND_NOT, 1), names) == "water AND sky blue AND NOT river"
    assert formula_text((0, AND, 1, OR, 3), names) == "(water AND river) OR sky blue"
    for t in [tokens, (3,), (0, AND, 3, AND_NOT, 1), (3, OR, 0, OR, 1)]:
        assert parse_formula(formula_text(t, names), names) == t
    with pytest.raises(NetDissectError, match="unknown concept"):
        parse_formula("water AND lake", names)


def test_sparse_collection_equals_dense(tmp_path, monkeypatch):
    """Dense and sparse collection, by the extension's combination_counts and by torch (the
    result is the same four ways; the torch path's counts also feed the IoU, which the formulas'
    single-concept IoU checks elsewhere)."""
    root = make_dataset(tmp_path / "data", n_images=8, seed=3)
    kw = dict(progress=False, workers=0, quantile=0.05, min_category_images=0)
    found = []
    for compiled in (True, False):
        monkeypatch.setenv(NO_COMPILED, "0" if compiled else "1")
        monkeypatch.setattr(combinations_mod, "DENSE_LIMIT", 1 << 23)
        found.append(netdissect.dissect(TinyNet(), ["relu2"], root, **kw)["relu2"].combinations)
        monkeypatch.setattr(combinations_mod, "DENSE_LIMIT", 16)
        found.append(netdissect.dissect(TinyNet(), ["relu2"], root, **kw)["relu2"].combinations)
    assert found[0].unit_count.sum() > 0
    for other in found[1:]:
        for key in ("table", "pattern", "pixels", "unit_indptr", "unit_combo", "unit_count"):
            np.testing.assert_array_equal(getattr(found[0], key), getattr(other, key))


def test_combination_counts_checks_its_arguments():
    from netdissect.tally import kernel
    if not kernel.available():
        pytest.skip("the _kernel extension is not compiled")
    count = kernel._kernel.combination_counts
    per_combo, units, rows = np.array([[0, 3], [2, 0]]), np.array([1, 0]), np.array([0, 1])
    lut = np.array([[4, 5], [6, 7]])
    dense = np.zeros(2 * 8, np.int64)
    assert count(per_combo, units, rows, lut, 8, dense=dense) == 2
    assert dense[1 * 8 + 5] == 3 and dense[0 * 8 + 6] == 2 and dense.sum() == 5
    keys, counts = np.zeros(4, np.int64), np.zeros(4, np.int64)
    assert count(per_combo, units, rows, lut, 8, keys=keys, counts=counts) == 2
    assert keys[:2].tolist() == [13, 6] and counts[:2].tolist() == [3, 2]
    with pytest.raises(ValueError, match=r"lut row 0 holds combination 9, outside \[0, 8\)"):
        count(per_combo, units, rows, np.array([[4, 9], [6, 7]]), 8, dense=dense)
    with pytest.raises(ValueError, match="pair 0 has unit 2"):
        count(per_combo, np.array([2, 0]), rows, lut, 8, dense=dense)
    with pytest.raises(TypeError, match="give dense, or keys and counts"):
        count(per_combo, units, rows, lut, 8)
    assert dense.sum() == 5   # a refused call adds nothing


def _read_units(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_dissect_then_formulas(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    root = make_dataset(tmp_path / "data", n_images=10, seed=1)
    out = tmp_path / "run"
    args = ["dissect", "--model", "engine_data:tiny_net", "--layer", "relu2", "--layer", "conv3",
            "--dataset", str(root), "--out", str(out), "--quantile", "0.05", "--workers", "0", "--quiet",
            "--no-report", "--min-category-images", "0"]
    assert main(args) == 0
    plain = _read_units(out / "relu2" / "units.csv")
    assert "formula" not in plain[0] and (out / "relu2" / "combinations.npz").exists()
    before = json.loads((out / "summary.json").read_text())
    # later, from the run directory alone
    assert main(["formulas", str(out), "--formula-length", "2", "--beam", "3", "--quiet", "--no-report"]) == 0
    rows = _read_units(out / "relu2" / "units.csv")
    assert [r["label"] for r in rows] == [r["label"] for r in plain]
    assert list(rows[0])[:len(plain[0])] == list(plain[0])   # existing columns unchanged, in order
    summary = json.loads((out / "summary.json").read_text())
    for name in ("relu2", "conv3"):
        f = summary["layers"][name]["formulas"]
        assert (f["length"], f["beam"]) == (2, 3)
        assert {k: v for k, v in summary["layers"][name].items() if k != "formulas"} == before["layers"][name]
    formulas = LayerFormulas.load(out / "relu2" / "formulas.npz")
    for k, r in enumerate(rows):
        assert r["formula"] == formulas.text(k)
        assert float(r["formula_iou"]) >= float(r["iou"]) - 1e-6
        assert abs(float(r["formula_gain"]) - (float(r["formula_iou"]) - float(r["iou"]))) < 2e-6
    assert (out / "figures" / "formula_gain.svg").exists()
    # the same search with the dissection (the finished run is reused: no forward pass)
    assert main(args + ["--formula-length", "3", "--beam", "3"]) == 0
    assert json.loads((out / "summary.json").read_text())["layers"]["conv3"]["formulas"]["length"] == 3
    # a relabel keeps the formulas
    assert main(args + ["--iou-threshold", "0.03"]) == 0
    assert "formula" in _read_units(out / "conv3" / "units.csv")[0]
    # bad input: one-line errors
    assert main(["formulas", str(out), "--formula-length", "0", "--quiet"]) == 1
    assert main(["formulas", str(out), "--layer", "nope", "--quiet"]) == 1
    (out / "conv3" / "combinations.npz").unlink()
    with pytest.raises(RunError, match="combinations.npz: not found"):
        from netdissect.formulas.rundir import explain_run
        explain_run(out, layers=["conv3"], length=2, beam=3, progress=False, force=True)


def test_sketch_mode_second_pass_collects_too(tmp_path, monkeypatch):
    """With two-pass thresholds the candidates come from the second pass: so do the counts, and
    single concepts still equal the dissection."""
    from netdissect.stats.memory import FORCE_TWO_PASS
    monkeypatch.setenv(FORCE_TWO_PASS, "1")
    root = make_dataset(tmp_path / "data", n_images=8, seed=5)
    with pytest.warns(UserWarning, match="two-pass radix quantile"):
        layer = netdissect.dissect(TinyNet(), ["relu2"], root, progress=False, workers=0, quantile=0.05,
                                   min_category_images=0)["relu2"]
    formulas = explain_layer(layer, length=2, beam=3)
    np.testing.assert_array_equal(formulas.single, layer.best)
    np.testing.assert_array_equal(formulas.single_iou.astype(np.float32), layer.best_iou)


def test_index_from_an_old_checkpoint_counts_pixels_from_the_ids(tmp_path):
    """A checkpoint written before the per-combination pixel counts existed still gives the same index."""
    from netdissect.data.broden import BrodenDataset
    from netdissect.engine.vocabulary import Vocabulary
    from netdissect.tally.combinations import CombinationIndex
    from netdissect.tally.counts import encode_segmentation
    from netdissect.tally.labelstore import SegmentationStore
    ds = BrodenDataset(make_dataset(tmp_path / "data", n_images=6, seed=2))
    vocab = Vocabulary.of(ds)
    pixels = ds.records[0].sh * ds.records[0].sw
    store = SegmentationStore(len(ds), pixels, len(vocab.concepts), vocab.labeled, tmp_path)
    encoded = []
    for i in range(len(ds)):
        seg = ds.load_segmentation(i)
        encoded.append(encode_segmentation(seg.pixel, seg.image_labels, vocab.concept_of_label, len(vocab.concepts)))
    store.add(range(len(ds)), encoded)
    state = store.state_dict()
    del state["combo_pixels"]
    again = SegmentationStore(len(ds), pixels, len(vocab.concepts), vocab.labeled, tmp_path)
    again.load_state_dict(state)
    a, b = CombinationIndex.from_store(store), CombinationIndex.from_store(again)
    for key in ("table", "pattern", "pixels", "lookup", "offset", "n_local"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.pixels.sum() == len(ds) * pixels


def test_formula_mask_of_one_image_equals_the_dense_mask(dissected):
    from netdissect.formulas.search import formula_mask
    _, ds, dense, _ = dissected
    for tokens in [(0,), (2, OR, 5), (3, AND, 7), (4, AND_NOT, 0, OR, 9), (8, AND, 6)]:
        for x in range(len(ds)):
            seg = ds.load_segmentation(x)
            got = formula_mask(tokens, seg.pixel, seg.image_labels, ds.concepts)
            np.testing.assert_array_equal(got.reshape(-1), dense.mask(tokens)[x])


@pytest.mark.parametrize("shape", [(0, 4), (1, 1), (60, 1), (300, 5)])
def test_unique_rows_equal_numpy_unique(shape):
    from netdissect.tally.combinations import unique_rows
    rows = np.random.default_rng(shape[0]).integers(-2, 3, shape).astype(np.int64)  # many equal rows
    rows[::7, -1] = np.iinfo(np.int64).max
    unique, inverse = unique_rows(rows)
    expected, expected_inverse = np.unique(rows, axis=0, return_inverse=True)
    np.testing.assert_array_equal(unique, expected)
    np.testing.assert_array_equal(inverse, expected_inverse.reshape(-1))
    assert unique.dtype == np.int64 and inverse.dtype == np.int64


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_combination_index_against_one_image_at_a_time(seed):
    """CombinationIndex.from_store (all images at once) against a row-by-row reading of the
    definition: skipped images, tables of several widths, image-level concepts, a concept in
    several planes (a set: once), and combinations shared across images."""
    from types import SimpleNamespace

    from netdissect.tally.combinations import CombinationIndex
    rng = np.random.default_rng(seed)
    n, categories = 30, 4
    tables, own, pixels = [], [], []
    for i in range(n):
        if i % 7 == 3:
            tables.append(None)
            own.append(np.zeros(0, np.int64))
            pixels.append(None)
            continue
        rows, planes = int(rng.integers(0, 5)), int(rng.integers(1, 4)) if seed else 2
        tables.append(rng.integers(-1, 6, size=(rows, planes)).astype(np.int32))
        own.append(rng.choice(8, size=int(rng.integers(0, 3)), replace=False).astype(np.int64))
        pixels.append(rng.integers(1, 50, size=rows).astype(np.int64))
    labeled = rng.random((n, categories)) < 0.6
    store = SimpleNamespace(n_images=n, labeled=labeled, tables=tables, image_concepts=own,
                            pixels_per_combination=lambda i: pixels[i])
    index = CombinationIndex.from_store(store)

    rows, weight, at = [], [], {}
    for i in range(n):
        if tables[i] is None:
            continue
        bits = sum(1 << g for g in range(categories) if labeled[i, g])
        at[i] = len(rows)
        for r, combo in enumerate(tables[i]):
            rows.append((bits, tuple(sorted({int(c) for c in combo if c >= 0} | {int(c) for c in own[i]}))))
            weight.append(int(pixels[i][r]))
    width = max((len(c) for _, c in rows), default=0)
    distinct = sorted(set(rows), key=lambda row: (row[0],) + row[1] + (-1,) * (width - len(row[1])))
    number = {row: j for j, row in enumerate(distinct)}
    np.testing.assert_array_equal(index.pattern, [b for b, _ in distinct])
    np.testing.assert_array_equal(index.table, [list(c) + [-1] * (width - len(c)) for _, c in distinct])
    np.testing.assert_array_equal(index.lookup, [number[row] for row in rows])
    np.testing.assert_array_equal(index.pixels, np.bincount([number[row] for row in rows], weight,
                                                            minlength=len(distinct)).astype(np.int64))
    np.testing.assert_array_equal(index.offset, [at.get(i, -1) for i in range(n)])
    np.testing.assert_array_equal(index.n_local, [0 if t is None else len(t) for t in tables])


def test_unit_combination_counts_of_nothing_is_nothing():
    """No pairs, or an index without combinations (no image left): nothing counted, no error."""
    from netdissect.tally.combinations import CombinationIndex, UnitCombinationCounts
    empty = CombinationIndex(table=np.zeros((0, 0), np.int32), pattern=np.zeros(0, np.int64),
                             pixels=np.zeros(0, np.int64), lookup=np.zeros(0, np.int64),
                             offset=np.full(2, -1, np.int64), n_local=np.zeros(2, np.int64))
    counts = UnitCombinationCounts(3, empty)
    counts.add(torch.zeros((0, 0), dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
               torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    result = counts.result(np.zeros(0, np.int64), [])
    assert result.unit_indptr.tolist() == [0, 0, 0, 0] and result.unit_count.size == 0
