"""Formula search on combination counts (netdissect.formulas.search) against the dense-mask strategy.

    python benchmarks/formulas_vs_dense.py [--images 200] [--layer features.14] [--units 8]
                                           [--length 3] [--beam 10] [--data runs/bench-data]
                                           [--overhead]

Both sides search the same units of one dissection (torchvision's MobileNetV2, IMAGENET1K_V1, on
the first N images of a synthetic Broden-format set) with the same semantics and beam rules
(docs/formulas.md), so they must return the same formulas with the same exact IoU.

- netdissect: the dissection's tally already counted each unit's active pixels per dataset-wide
  label combination; a formula is a boolean function of the combination, its counts are sums.
- dense (the strategy of the published implementations, re-implemented in tests/formulas_dense.py):
  a boolean mask per concept over every pixel of every image, each unit's mask from its
  upsampled, thresholded activations, and every candidate formula's mask materialized from its
  parent's and counted.

Printed: the one-time preparation of each side (dense: concept masks and unit masks, the latter
needing a forward pass; netdissect: the search's index over the saved counts), the search time
per unit of each, the ratio, and whether the formulas and IoUs are equal. With --overhead, also
the dissection's time with and without collecting the combination counts (best of 2 alternating
runs each).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from formulas_dense import DenseConcepts, dense_beam_search  # noqa: E402
from overhead import ensure_data  # noqa: E402

MODEL, WEIGHTS = "torchvision:mobilenet_v2", "IMAGENET1K_V1"


def dense_unit_masks(loaded, ds, layer, thresholds, units, batch_size=32):
    """(U, N, P) bool masks with netdissect's own forward-pass preparation (bit-identical maps)."""
    from netdissect.engine.forward import Normalizer, prepare_model
    from netdissect.models.capture import LayerCapture
    module = prepare_model(loaded, torch.device("cpu"))
    normalize = Normalizer(loaded.mean, loaded.std, torch.device("cpu"))
    rec = ds.records[0]
    thr = torch.from_numpy(thresholds[units])[:, None, None]
    out = []
    with torch.no_grad(), LayerCapture(module, [layer]) as capture:
        for s in range(0, len(ds), batch_size):
            images = torch.stack([torch.from_numpy(ds.load_image(i)) for i in range(s, min(len(ds), s + batch_size))])
            acts = capture(normalize(images))[layer].float()[:, units]
            up = F.interpolate(acts, size=(rec.sh, rec.sw), mode="bilinear", align_corners=False)
            out.append((up > thr[None]).reshape(up.shape[0], len(units), -1).permute(1, 0, 2).numpy())
    return np.concatenate(out, axis=1)


def dissection_time(loaded, ds, layer, batch_size, collect: bool):
    """(wall time of the dissection, time spent inside the collection: index, counts, result)."""
    import netdissect
    from netdissect.tally import combinations
    spent = [0.0]

    def timed(function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    index, counts = combinations.CombinationIndex, combinations.UnitCombinationCounts
    saved = (index.__dict__["from_store"], counts.add, counts.result)
    if collect:
        index.from_store = classmethod(timed(saved[0].__func__))
        counts.add, counts.result = timed(saved[1]), timed(saved[2])
    else:
        index.from_store = staticmethod(lambda store: None)
    try:
        start = time.perf_counter()
        netdissect.dissect(loaded, [layer], ds, progress=False, batch_size=batch_size, workers=2)
        return time.perf_counter() - start, spent[0]
    finally:
        index.from_store, counts.add, counts.result = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--layer", default="features.14")
    ap.add_argument("--units", type=int, default=8, help="units searched by both sides (highest label IoU)")
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--data", type=Path, default=Path("runs/bench-data"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--overhead", action="store_true", help="also time the dissection with and without collection")
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    import netdissect
    from netdissect.data.broden import BrodenDataset
    from netdissect.formulas.search import FormulaSearch, formula_text
    from netdissect.models.specs import load_model

    data = ensure_data(args.data, args.images)
    ds = BrodenDataset(data, limit=args.images)
    loaded = load_model(MODEL, weights=WEIGHTS)
    t0 = time.perf_counter()
    result = netdissect.dissect(loaded, [args.layer], ds, progress=False, batch_size=args.batch_size, workers=2)
    t_dissect = time.perf_counter() - t0
    layer = result[args.layer]
    units = [int(k) for k in np.argsort(-layer.best_iou, kind="stable")[:args.units]]
    combos = layer.combinations
    print(f"{args.images} images, {args.layer} ({layer.units} units), {len(layer.concepts)} concepts, "
          f"{len(combos.pattern)} distinct label combinations, length {args.length}, beam {args.beam}; "
          f"dissection {t_dissect:.1f} s")

    # netdissect: from the tally's counts
    t0 = time.perf_counter()
    cats = list(combos.categories)
    search = FormulaSearch(combos, np.array([cats.index(c) for c in layer.concept_categories]),
                           length=args.length, beam=args.beam)
    t_index = time.perf_counter() - t0
    ours, t_ours = [], []
    for k in units:
        t0 = time.perf_counter()
        best = search.search_unit(k)
        t_ours.append(time.perf_counter() - t0)
        ours.append([(e.tokens, Fraction(e.inter, e.union) if e.union else Fraction(0)) for e in best])
    t0 = time.perf_counter()
    for k in range(layer.units):
        search.search_unit(k)
    t_layer = time.perf_counter() - t0

    # dense masks
    t0 = time.perf_counter()
    dense = DenseConcepts(ds)
    t_concepts = time.perf_counter() - t0
    t0 = time.perf_counter()
    masks = dense_unit_masks(loaded, ds, args.layer, layer.thresholds, units, args.batch_size)
    t_units = time.perf_counter() - t0
    theirs, t_dense = [], []
    for i, k in enumerate(units):
        t0 = time.perf_counter()
        best, _ = dense_beam_search(dense, masks[i], args.length, args.beam)
        t_dense.append(time.perf_counter() - t0)
        theirs.append(best)

    equal = sum(a == b for a, b in zip(ours, theirs))
    names = layer.concept_names
    print(f"preparation: dense concept masks {t_concepts:.1f} s ({dense.masks.nbytes / 2**20:.0f} MiB) + "
          f"unit masks {t_units:.1f} s (a forward pass); netdissect index {t_index:.2f} s (counts from the tally)")
    print(f"search per unit (median of {len(units)}): dense {np.median(t_dense):.3f} s, "
          f"netdissect {np.median(t_ours):.4f} s: {np.median(t_dense) / np.median(t_ours):.0f}x")
    print(f"search of all {layer.units} units with netdissect: {t_layer:.1f} s "
          f"(dense, extrapolated: {np.median(t_dense) * layer.units:.0f} s)")
    print(f"equal formulas and exact IoUs at every length: {equal}/{len(units)} units")
    for k, best in list(zip(units, ours))[:3]:
        tokens, iou = best[-1]
        print(f"  unit {k}: {formula_text(tokens, names)}  IoU {float(iou):.4f} "
              f"(label {names[best[0][0][0]]} {float(best[0][1]):.4f})")
    if args.overhead:
        times = {True: [], False: []}
        for _ in range(2):
            for collect in (False, True):
                times[collect].append(dissection_time(loaded, ds, args.layer, args.batch_size, collect))
        off, (on, inside) = min(t for t, _ in times[False]), min(times[True])
        print(f"dissection without collecting the counts {off:.1f} s, with {on:.1f} s: {on / off:.3f}x "
              f"(best of 2 each); time inside the collection {inside:.2f} s = {inside / on:.1%} of the run")
    if equal != len(units):
        sys.exit(1)


if __name__ == "__main__":
    main()
