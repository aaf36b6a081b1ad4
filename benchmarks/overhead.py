"""Cost of a dissection against a bare forward pass, and memory growth with the dataset size.

    python benchmarks/overhead.py [--images 1000] [--memory-images 1000 4000] [--skip-memory]

1. Time: a full dissection (statistics, tally, result files; no report) of MobileNetV2 at three
   layers over N images, against a bare pass over the same images with the same model, layers
   (captured by the same hooks), batch size, data loader, threads and allocator policy
   (netdissect.stats.memory.reuse_freed_memory). Two dissections: a first run (its labels
   decoded and encoded, and written to an empty label cache: tally/labelcache.py) and a later
   run (its labels read from that cache). Prints each one's ratio to the bare pass (the CPU-time
   ratios too); the statistics' target, <= 1.1, is the later run's: a first run also decodes the
   dataset's labels, once per dataset. All are measured in this one run, alternating:
   a warm-up round, then --repeats rounds; the median of the rounds' ratios.
2. Memory: peak resident memory of a dissection subprocess (main process plus its data loader
   workers) at two dataset sizes, the median of --memory-repeats runs of each. Prints the ratio
   (target: < 1.2).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

LAYERS = ["features.3", "features.10", "features.18"]


def ensure_data(path: Path, images: int) -> Path:
    from netdissect.data.synthetic import generate_synthetic
    index = path / "index.csv"
    if not index.exists() or len(index.read_text().splitlines()) - 1 < images:
        print(f"generating {images} synthetic images in {path} ...", flush=True)
        generate_synthetic(path, images=images, size=224, seed=0, overwrite=True)
    return path


def bare_pass(loaded, ds, layers, batch_size, workers, device="cpu") -> float:
    """Decode images, normalize, run the model up to the last layer with the same hooks."""
    from netdissect.engine.forward import Normalizer, prepare_model
    from netdissect.engine.loading import ImagesAndLabels, make_loader
    from netdissect.models.capture import LayerCapture
    device = torch.device(device)
    module = prepare_model(loaded, device)
    normalize = Normalizer(loaded.mean, loaded.std, device)
    data = ImagesAndLabels(ds, None, 0, skip_bad=False, with_labels=False)
    start = time.perf_counter()
    with torch.no_grad(), LayerCapture(module, layers) as capture:
        for _, images, _, _ in make_loader(data, batch_size, workers):
            outputs = capture(normalize(images))
            for out in outputs.values():
                out.float()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def full_dissection(loaded, ds, layers, batch_size, workers, label_cache=None) -> float:
    """A dissection with the label cache in ``label_cache`` (None: an empty one, written)."""
    from netdissect.engine.pipeline import dissect
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        dissect(loaded, layers, ds, out=Path(out) / "run", batch_size=batch_size, workers=workers,
                progress=False, label_cache=label_cache or Path(out) / "labels")
        return time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the data loader workers): on a
    machine shared with other jobs it varies less than the wall time."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measured(fn, *args):
    cpu = cpu_seconds()
    wall = fn(*args)
    return wall, cpu_seconds() - cpu


MEMORY_CHILD = """
import json, resource, sys, warnings, tempfile
warnings.simplefilter("ignore")
from netdissect.engine.pipeline import dissect
data, images, batch, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with tempfile.TemporaryDirectory() as out:
    dissect("torchvision:mobilenet_v2", %r, data, out=out + "/run", weights="IMAGENET1K_V1",
            limit=images, batch_size=batch, workers=workers, progress=False, label_cache=out + "/labels")
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"main_kib": own, "worker_kib": kids}))
""" % (LAYERS,)


def peak_memory(data: Path, images: int, batch_size: int, workers: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(data), str(images), str(batch_size),
                           str(workers)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=Path("runs/bench-data"))
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--memory-images", type=int, nargs=2, default=(1000, 4000))
    parser.add_argument("--memory-repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-time", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from netdissect.data.broden import BrodenDataset
    from netdissect.models.specs import load_model
    from netdissect.stats.memory import reuse_freed_memory
    # the allocator policy every dissection sets, for the bare pass too (it halves a CPU forward
    # pass here): the ratio compares the statistics with the same forward pass
    print(f"glibc keeps freed memory for reuse: {reuse_freed_memory()}")
    total = max(args.images, *(args.memory_images if not args.skip_memory else (0,)))
    data = ensure_data(args.data, total)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"workers {args.workers}, layers {', '.join(LAYERS)}")
    if not args.skip_time:
        loaded = load_model("torchvision:mobilenet_v2", weights="IMAGENET1K_V1")
        ds = BrodenDataset(data, limit=args.images)
        bare, first, later = [], [], []
        cache = tempfile.TemporaryDirectory(prefix="netdissect-bench-labels-")
        # round 0 warms up (caches, the allocator's pools) and writes the later runs' label cache
        for r in range(args.repeats + 1):
            bare.append(measured(bare_pass, loaded, ds, LAYERS, args.batch_size, args.workers))
            first.append(measured(full_dissection, loaded, ds, LAYERS, args.batch_size, args.workers))
            later.append(measured(full_dissection, loaded, ds, LAYERS, args.batch_size, args.workers, cache.name))
            print(f"{'warm-up' if r == 0 else f'round {r}'}: bare {bare[-1][0]:5.1f} s ({bare[-1][1]:5.1f} s CPU); "
                  f"first run {first[-1][0]:5.1f} s ({first[-1][1]:5.1f}); later run {later[-1][0]:5.1f} s "
                  f"({later[-1][1]:5.1f}); ratios {first[-1][0] / bare[-1][0]:.2f}, {later[-1][0] / bare[-1][0]:.2f}",
                  flush=True)
        cache.cleanup()
        bare, first, later = bare[1:], first[1:], later[1:]
        print(f"bare forward pass over {len(ds)} images: {statistics.median(w for w, _ in bare):7.1f} s "
              f"({statistics.median(c for _, c in bare):.1f} s CPU), median of {len(bare)}")
        for name, full, target in (("first run (labels encoded, cached)", first, " (labels decoded once)"),
                                   ("later run (cached labels)", later, " (target <= 1.1)")):
            wall = statistics.median(f / b for (b, _), (f, _) in zip(bare, full))
            cpu = statistics.median(f / b for (_, b), (_, f) in zip(bare, full))
            print(f"{name + ':':<37} {statistics.median(w for w, _ in full):5.1f} s "
                  f"({statistics.median(c for _, c in full):.1f} s CPU); ratio to the bare pass{target}: "
                  f"wall {wall:4.2f}, CPU {cpu:4.2f}")
    if not args.skip_memory:
        small, large = args.memory_images
        # the peak of one process moves by +-100 MiB from run to run (where the allocator's
        # pools land): the median of --memory-repeats runs, alternating the sizes
        runs = {small: [], large: []}
        for _ in range(args.memory_repeats):
            for n in (small, large):
                runs[n].append(peak_memory(data, n, args.batch_size, args.workers))
        mem = {n: {key: statistics.median(m[key] for m in found) for key in ("main_kib", "worker_kib")}
               for n, found in runs.items()}
        for n, m in mem.items():
            print(f"peak memory at {n:5d} images: main {m['main_kib'] / 1024:7.0f} MiB "
                  f"({', '.join('%.0f' % (r['main_kib'] / 1024) for r in runs[n])}), "
                  f"largest worker {m['worker_kib'] / 1024:5.0f} MiB")
        ratio = mem[large]["main_kib"] / mem[small]["main_kib"]
        print(f"memory growth {small} -> {large} images (target < 1.2): {ratio:5.2f}")


if __name__ == "__main__":
    main()
