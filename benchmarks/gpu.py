"""The CUDA path on a GPU machine, as one short script: throughput and agreement with the CPU.

    python benchmarks/gpu.py [--images 1000] [--cpu-images 200] [--batch-size 64] [--workers 8]

1. Throughput: a full dissection (statistics, tally, result files; no report) of MobileNetV2 at
   features.3/10/18 on the GPU against a bare forward pass on the GPU over the same images,
   layers, hooks, batch size and data loader: a first run (labels decoded and encoded by the
   loader workers) and a later one (labels from the label cache). Prints images/s and ratios.
2. Agreement: the same dissection of the first --cpu-images images on the CPU and on the GPU:
   units with the same label, largest relative threshold difference (float32 rounding of the
   convolutions differs between the devices), largest IoU difference.

ImageNet weights are used when torchvision finds them offline, else random ones (the speed is
the same; the agreement is then measured on random features). Data: a generated synthetic set.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import LAYERS, bare_pass, ensure_data  # noqa: E402


def dissect_timed(loaded, ds, device, batch_size, workers, label_cache=None):
    """A dissection with the label cache in ``label_cache`` (None: an empty one, written)."""
    from netdissect.engine.pipeline import dissect
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = dissect(loaded, LAYERS, ds, out=Path(out) / "run", batch_size=batch_size, workers=workers,
                         device=device, progress=False, label_cache=label_cache or Path(out) / "labels")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, result


def load(weights):
    from netdissect.errors import NetDissectError
    from netdissect.models.specs import load_model
    try:
        return load_model("torchvision:mobilenet_v2", weights=weights), weights
    except NetDissectError:
        return load_model("torchvision:mobilenet_v2", weights="none"), "none (random: not found offline)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--cpu-images", type=int, default=200)
    parser.add_argument("--data", type=Path, default=Path("runs/bench-data"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--weights", default="IMAGENET1K_V1")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on a GPU machine")
    from netdissect.data.broden import BrodenDataset
    data = ensure_data(args.data, max(args.images, args.cpu_images))
    loaded, weights = load(args.weights)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {torch.get_num_threads()} CPU threads, "
          f"batch {args.batch_size}, workers {args.workers}, layers {', '.join(LAYERS)}, weights {weights}")

    ds = BrodenDataset(data, limit=args.images)
    bare_pass(loaded, BrodenDataset(data, limit=2 * args.batch_size), LAYERS, args.batch_size, args.workers,
              "cuda")  # warm-up: CUDA context, cuDNN autotuning
    bare = bare_pass(loaded, ds, LAYERS, args.batch_size, args.workers, "cuda")
    full, _ = dissect_timed(loaded, ds, "cuda", args.batch_size, args.workers)
    with tempfile.TemporaryDirectory() as cache:      # a later run: the labels already cached
        dissect_timed(loaded, ds, "cuda", args.batch_size, args.workers, cache)
        later, _ = dissect_timed(loaded, ds, "cuda", args.batch_size, args.workers, cache)
    n = len(ds)
    print(f"bare forward pass on cuda, {n} images:   {bare:7.1f} s  {n / bare:8.1f} images/s")
    print(f"first run on cuda (labels encoded):      {full:7.1f} s  {n / full:8.1f} images/s  "
          f"ratio {full / bare:5.2f}")
    print(f"later run on cuda (labels from the cache): {later:5.1f} s  {n / later:8.1f} images/s  "
          f"ratio {later / bare:5.2f}")

    small = BrodenDataset(data, limit=args.cpu_images)
    cpu_s, cpu = dissect_timed(loaded, small, "cpu", args.batch_size, args.workers)
    gpu_s, gpu = dissect_timed(loaded, small, "cuda", args.batch_size, args.workers)
    print(f"{len(small)} images: cpu {cpu_s:.1f} s, cuda {gpu_s:.1f} s ({cpu_s / gpu_s:.1f}x)")
    for layer in LAYERS:
        a, b = cpu[layer], gpu[layer]
        same = sum(x[:2] == y[:2] for x, y in zip(a.unit_labels(), b.unit_labels()))
        rel = np.abs(b.thresholds - a.thresholds) / np.maximum(np.abs(a.thresholds), 1e-12)
        print(f"{layer:12s} same label {same}/{a.units} units; thresholds max rel diff {rel.max():.2e}; "
              f"IoU max abs diff {np.abs(b.iou - a.iou).max():.2e}; detectors cpu "
              f"{a.summary()['detectors']} cuda {b.summary()['detectors']}")


if __name__ == "__main__":
    main()
