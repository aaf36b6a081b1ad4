"""netdissect against a re-implementation of NetDissect-Lite's strategy: time, memory, agreement.

    python benchmarks/vs_lite.py [--images 200] [--layers features.7 features.18] [--repeats 2]
                                 [--data runs/bench-data] [--batch-size 32] [--workers 2] [--no-skip]

Both sides dissect torchvision's MobileNetV2 (IMAGENET1K_V1) at the same layers over the same
first N images of a Broden-format dataset, each in its own subprocess (so ru_maxrss is its own
peak), with the same forward-pass preparation (netdissect's `prepare_model` and `Normalizer`,
same batch size and loader workers), so the activations are bit-identical and the comparison is
about the algorithm only.

"lite" is this file's own re-implementation of the NetDissect-Lite *strategy* (no code taken from
it), as described in the spec:
  1. one forward pass of the whole model per batch, every feature map of every layer written to a
     float64 np.memmap on disk (N x K x h x w per layer);
  2. per unit, the threshold from the dumped features. Lite uses an approximate quantile (a
     sketch with ~1000 read-out points); here it is the *exact* `numpy.quantile(a_k, 0.995)`
     (linear interpolation, float64) over the unit's values read back from the dump, a block of
     units at a time (<= 256 MiB per block), so the thresholds can be compared with netdissect's;
  3. per layer, a second pass over the dump and the labels: per image, per unit, a Python loop
     that skips the map when its native maximum is <= the threshold (Lite does this too; turn it
     off with --no-skip), else upsamples it with F.interpolate(bilinear, align_corners=False) to
     the segmentation size, thresholds it (strict >) and counts, with numpy, its active pixels
     and its intersections with every label present (np.bincount over the mask planes at the
     active pixels; image-level scene/texture labels as full-image masks).
  IoU uses netdissect's definition: union restricted to images where the concept's (primary)
  category is labeled, label 0 excluded, a label found in two planes at one pixel counted once.

Printed: wall time of each (inside the subprocess, model loading excluded, best of --repeats runs
alternating the two sides; and the subprocess as a whole), peak resident memory of each (main process, and the largest DataLoader worker), the
size of Lite's feature dump on disk, the ratios, and the agreement (thresholds, IoU, unit labels).
Lite's dump is memory-mapped, so the pages of it that are touched count in its ru_maxrss (as they
would for Lite).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from overhead import ensure_data  # benchmarks/ is the script's directory, hence on sys.path

MODEL = "torchvision:mobilenet_v2"
WEIGHTS = "IMAGENET1K_V1"
LEVEL = 0.995   # 1 - quantile: netdissect's default --quantile 0.005


# --------------------------------------------------------------------------- shared helpers

def warm_page_cache(ds) -> None:
    """Read every file of the selection once, so neither side pays the cold disk reads."""
    root = Path(ds.root) / "images"
    for record in ds.records:
        names = [record.image] + [n for cat in ds.pixel_categories for n in record.masks[cat]]
        for name in names:
            (root / name).read_bytes()


def peak_rss_mib() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"main_mib": own, "worker_mib": kids}


# --------------------------------------------------------------------------- netdissect side

def run_netdissect(args, result_path: Path) -> dict:
    from netdissect.data.broden import BrodenDataset
    from netdissect.engine.pipeline import dissect
    from netdissect.models.specs import load_model
    loaded = load_model(MODEL, weights=WEIGHTS)
    ds = BrodenDataset(args.data, limit=args.images)
    start = time.perf_counter()
    result = dissect(loaded, args.layers, ds, out=None, batch_size=args.batch_size,
                     workers=args.workers, progress=False, quantile=1 - LEVEL)
    seconds = time.perf_counter() - start
    arrays = {"concepts": np.asarray(result[args.layers[0]].concepts)}
    for name in args.layers:
        layer = result[name]
        arrays[f"{name}/thr"] = layer.thresholds
        arrays[f"{name}/iou"] = layer.iou
    np.savez(result_path, **arrays)
    return {"seconds": seconds, "dump_bytes": 0}


# --------------------------------------------------------------------------- Lite side

class _Images:
    """Decoded images (in DataLoader workers)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        import torch
        return torch.from_numpy(self.ds.load_image(i))


class _Labels:
    """Per image: the mask planes with a label repeated at a pixel kept once, the image-level
    labels and which categories are labeled (in DataLoader workers)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        seg = self.ds.load_segmentation(i)
        planes = seg.pixel
        if planes.shape[0] > 1:
            planes = np.sort(planes, axis=0)
            dup = np.zeros(planes.shape, dtype=bool)
            dup[1:] = planes[1:] == planes[:-1]
            planes[dup] = 0
        return planes, seg.image_labels.astype(np.int64), seg.labeled.astype(np.int64)


def _stack(items):
    import torch
    return torch.stack(items)


def _as_list(items):
    return items


def _loader(dataset, batch_size, workers):
    import torch
    collate = _stack if isinstance(dataset, _Images) else _as_list
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       num_workers=workers, collate_fn=collate,
                                       prefetch_factor=4 if workers > 0 else None)


def lite_extract(module, normalize, ds, layers, dump_dir: Path, batch_size, workers):
    """One forward pass; every layer's features to a float64 memmap (N, K, h, w)."""
    import torch
    outputs = {}
    modules = dict(module.named_modules())
    hooks = [modules[name].register_forward_hook(
        lambda mod, inp, out, name=name: outputs.__setitem__(name, out)) for name in layers]
    dumps, start = {}, 0
    try:
        with torch.no_grad():
            for images in _loader(_Images(ds), batch_size, workers):
                module(normalize(images))
                for name in layers:
                    feats = outputs[name].detach().float().cpu().numpy()
                    if name not in dumps:
                        dumps[name] = np.memmap(dump_dir / f"{name}.mmap", dtype=np.float64, mode="w+",
                                                shape=(len(ds),) + feats.shape[1:])
                    dumps[name][start:start + len(feats)] = feats
                start += len(images)
                outputs.clear()
    finally:
        for h in hooks:
            h.remove()
    shapes = {}
    for name, mm in dumps.items():
        mm.flush()
        shapes[name] = mm.shape
        del mm
    dumps.clear()
    return shapes


def lite_quantile(dump: np.ndarray, block_bytes: int = 256 * 2 ** 20) -> np.ndarray:
    """Exact per-unit numpy.quantile over the dumped features, a block of units at a time."""
    n, k, h, w = dump.shape
    per_unit = n * h * w * 8
    step = max(1, block_bytes // per_unit)
    thr = np.empty(k, dtype=np.float64)
    for k0 in range(0, k, step):
        block = np.asarray(dump[:, k0:k0 + step])                   # (n, kb, h, w) float64
        values = block.transpose(1, 0, 2, 3).reshape(block.shape[1], -1)
        thr[k0:k0 + step] = np.quantile(values, LEVEL, axis=1)
        del block, values
    return thr


def lite_tally(dump: np.ndarray, thr: np.ndarray, ds, seg_size, batch_size, workers, skip: bool):
    """Per image, per unit: upsample, threshold, count. Returns the (K, C) IoU over ds.concepts."""
    import torch
    import torch.nn.functional as F
    n, k_units, h, w = dump.shape
    sh, sw = seg_size
    n_labels = len(ds.labels)
    n_cat = len(ds.categories)
    both = np.zeros((k_units, n_labels), dtype=np.int64)       # intersections, by label number
    units_cat = np.zeros((k_units, n_cat), dtype=np.int64)     # active pixels where cat labeled
    label_pixels = np.zeros(n_labels, dtype=np.int64)
    i = 0
    for batch in _loader(_Labels(ds), batch_size, workers):
        for planes, image_labels, labeled in batch:
            feats = np.asarray(dump[i])                           # (K, h, w) float64
            i += 1
            if planes.shape[0]:
                label_pixels += np.bincount(planes.ravel(), minlength=n_labels)
            label_pixels[image_labels] += sh * sw
            for k in range(k_units):
                fmap = feats[k]
                if skip and fmap.max() <= thr[k]:
                    continue
                up = F.interpolate(torch.from_numpy(fmap.astype(np.float32))[None, None], size=(sh, sw),
                                   mode="bilinear", align_corners=False)[0, 0].numpy()
                mask = up > thr[k]
                active = int(mask.sum())
                if active == 0:
                    continue
                units_cat[k] += active * labeled
                if planes.shape[0]:
                    both[k] += np.bincount(planes[:, mask].ravel(), minlength=n_labels)
                both[k, image_labels] += active
    concepts = np.asarray(ds.concepts, dtype=np.int64)
    cat_of = np.array([ds.categories.index(ds.labels[c].category) for c in concepts], dtype=np.int64)
    inter = both[:, concepts]
    union = units_cat[:, cat_of] + label_pixels[concepts][None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou


def run_lite(args, result_path: Path) -> dict:
    import torch

    from netdissect.data.broden import BrodenDataset
    from netdissect.engine.forward import Normalizer, prepare_model
    from netdissect.models.specs import load_model
    loaded = load_model(MODEL, weights=WEIGHTS)
    ds = BrodenDataset(args.data, limit=args.images)
    seg_size = (ds.records[0].sh, ds.records[0].sw)
    dump_dir = Path(tempfile.mkdtemp(prefix="lite-dump-", dir=args.scratch))
    try:
        start = time.perf_counter()
        module = prepare_model(loaded, torch.device("cpu"))
        normalize = Normalizer(loaded.mean, loaded.std, torch.device("cpu"))
        shapes = lite_extract(module, normalize, ds, args.layers, dump_dir, args.batch_size, args.workers)
        t_extract = time.perf_counter() - start
        dump_bytes = sum(p.stat().st_size for p in dump_dir.iterdir())
        arrays = {"concepts": np.asarray(ds.concepts, dtype=np.int64)}
        t_quantile = t_tally = 0.0
        for name in args.layers:
            dump = np.memmap(dump_dir / f"{name}.mmap", dtype=np.float64, mode="r", shape=shapes[name])
            t0 = time.perf_counter()
            thr = lite_quantile(dump)
            t1 = time.perf_counter()
            iou = lite_tally(dump, thr, ds, seg_size, args.batch_size, args.workers, skip=not args.no_skip)
            t2 = time.perf_counter()
            t_quantile += t1 - t0
            t_tally += t2 - t1
            arrays[f"{name}/thr"] = thr
            arrays[f"{name}/iou"] = iou
            del dump
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(dump_dir, ignore_errors=True)
    np.savez(result_path, **arrays)
    return {"seconds": seconds, "dump_bytes": dump_bytes, "extract_s": t_extract,
            "quantile_s": t_quantile, "tally_s": t_tally}


# --------------------------------------------------------------------------- driver

def child(args) -> None:
    warnings.simplefilter("ignore")
    run = run_netdissect if args.child == "netdissect" else run_lite
    info = run(args, Path(args.result))
    info.update(peak_rss_mib())
    print("RESULT " + json.dumps(info), flush=True)


def spawn(side: str, args, result: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", side, "--result", str(result),
           "--images", str(args.images), "--data", str(args.data), "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "--scratch", str(args.scratch), "--layers", *args.layers]
    if args.no_skip:
        cmd.append("--no-skip")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    info = json.loads(line[len("RESULT "):])
    info["process_s"] = wall
    return info


def compare(args, nd_path: Path, lite_path: Path) -> None:
    nd, lite = np.load(nd_path), np.load(lite_path)
    assert np.array_equal(nd["concepts"], lite["concepts"]), "concept order differs"
    for name in args.layers:
        t_nd, t_lite = nd[f"{name}/thr"], lite[f"{name}/thr"]
        i_nd, i_lite = nd[f"{name}/iou"].astype(np.float64), lite[f"{name}/iou"]
        rel = np.abs(t_nd.astype(np.float64) - t_lite) / np.maximum(np.abs(t_lite), 1e-30)
        same32 = int((t_lite.astype(np.float32) == t_nd).sum())
        lab_nd, lab_lite = i_nd.argmax(axis=1), i_lite.argmax(axis=1)
        best_nd, best_lite = i_nd.max(axis=1), i_lite.max(axis=1)
        det_nd, det_lite = int((best_nd > 0.04).sum()), int((best_lite > 0.04).sum())
        uniq_nd = len(set(lab_nd[best_nd > 0.04].tolist()))
        uniq_lite = len(set(lab_lite[best_lite > 0.04].tolist()))
        k = len(t_nd)
        print(f"  {name} ({k} units, {i_nd.shape[1]} concepts):")
        print(f"    thresholds: max relative difference {rel.max():.2e}; equal after rounding Lite's "
              f"float64 to float32: {same32}/{k}")
        print(f"    IoU: max abs difference {np.abs(i_nd - i_lite).max():.2e}; identical unit labels "
              f"{int((lab_nd == lab_lite).sum())}/{k}; detectors {det_nd} vs {det_lite}; "
              f"unique detectors {uniq_nd} vs {uniq_lite}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--data", type=Path, default=None,
                        help="Broden-format dataset (default: runs/bench-data if it has enough "
                             "images, else runs/bench-data-lite, generated when absent)")
    parser.add_argument("--layers", nargs="+", default=["features.7", "features.18"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each side, alternating; the best time is reported")
    parser.add_argument("--no-skip", action="store_true",
                        help="Lite: upsample every (unit, image) map, without the native-maximum check")
    parser.add_argument("--scratch", type=Path, default=Path("runs"),
                        help="where Lite's feature dump is written (a disk, not tmpfs)")
    parser.add_argument("--child", choices=["netdissect", "lite"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    warnings.simplefilter("ignore")
    if args.data is None:
        bench = Path("runs/bench-data")
        index = bench / "index.csv"
        if index.exists() and len(index.read_text().splitlines()) - 1 >= args.images:
            args.data = bench
        else:
            args.data = Path("runs/bench-data-lite")
    ensure_data(args.data, args.images)
    args.scratch.mkdir(parents=True, exist_ok=True)
    from netdissect.data.broden import BrodenDataset
    ds = BrodenDataset(args.data, limit=args.images)
    warm_page_cache(ds)
    import torch
    print(f"{MODEL} ({WEIGHTS}) at {', '.join(args.layers)}; {len(ds)} images of {args.data} "
          f"({ds.records[0].ih} px, labels {ds.records[0].sh}x{ds.records[0].sw}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch_size}, workers {args.workers}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        nd_path, lite_path = Path(tmp) / "nd.npz", Path(tmp) / "lite.npz"
        runs = {"netdissect": [], "lite": []}
        for _ in range(args.repeats):  # alternating, so both see the same machine load
            runs["netdissect"].append(spawn("netdissect", args, nd_path))
            runs["lite"].append(spawn("lite", args, lite_path))
        nd, lite = (min(runs[side], key=lambda r: r["seconds"]) for side in ("netdissect", "lite"))
        for side in runs:  # peak memory: the largest over the repeats
            best = min(runs[side], key=lambda r: r["seconds"])
            best["main_mib"] = max(r["main_mib"] for r in runs[side])
            best["worker_mib"] = max(r["worker_mib"] for r in runs[side])
        every = lambda side: ", ".join(f"{r['seconds']:.1f}" for r in runs[side])
        print(f"netdissect: {nd['seconds']:7.1f} s (best of {every('netdissect')}; process "
              f"{nd['process_s']:.1f} s), peak RSS {nd['main_mib']:6.0f} MiB (largest worker "
              f"{nd['worker_mib']:.0f} MiB)", flush=True)
        print(f"lite:       {lite['seconds']:7.1f} s (best of {every('lite')}; process {lite['process_s']:.1f} s; "
              f"extract {lite['extract_s']:.1f} s, quantile {lite['quantile_s']:.1f} s, tally "
              f"{lite['tally_s']:.1f} s), peak RSS {lite['main_mib']:6.0f} MiB (largest worker "
              f"{lite['worker_mib']:.0f} MiB), float64 feature dump {lite['dump_bytes'] / 2**20:.0f} MiB "
              "on disk", flush=True)
        print(f"ratio lite / netdissect: time {lite['seconds'] / nd['seconds']:.2f}x, peak RSS "
              f"{lite['main_mib'] / nd['main_mib']:.2f}x")
        print("agreement (netdissect vs lite with the exact quantile):")
        compare(args, nd_path, lite_path)


if __name__ == "__main__":
    main()
