"""What the compiled tally kernel (tally/_kernel.c) gains over the torch path, on real maps.

    python benchmarks/tally_kernel.py [--images 200]

Dissects MobileNetV2 at features.3/10/18 (bilinear, the mode the kernel serves) twice on the
same images: with the kernel, and with it switched off (the torch path: F.interpolate, compare,
bincount). Prints the CPU time spent in the final tally of each layer both ways, the whole
dissection's time, and whether the IoU matrices are bit-identical.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from overhead import LAYERS, ensure_data  # noqa: E402


def run(loaded, ds, batch_size, workers, fused: bool):
    from netdissect.engine import pipeline
    from netdissect.engine.final_tally import LayerTally
    from netdissect.tally import kernel
    spent = defaultdict(float)
    original_add, original_exact = LayerTally.add, kernel.exact_for

    def timed_add(self, chunk):
        start = time.process_time()
        original_add(self, chunk)
        spent[self.name] += time.process_time() - start

    original_init = LayerTally.__init__

    def named_init(self, stream, *args, **kwargs):
        original_init(self, stream, *args, **kwargs)
        self.name = stream.name

    LayerTally.add, LayerTally.__init__ = timed_add, named_init
    if not fused:
        kernel.exact_for = lambda native, size: False
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = pipeline.dissect(loaded, LAYERS, ds, out=Path(out) / "run", batch_size=batch_size,
                                      workers=workers, progress=False)
            return time.perf_counter() - start, dict(spent), result
    finally:
        LayerTally.add, LayerTally.__init__ = original_add, original_init
        kernel.exact_for = original_exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--data", type=Path, default=Path("runs/bench-data"))
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from netdissect.data.broden import BrodenDataset
    from netdissect.models.specs import load_model
    from netdissect.tally import kernel
    if not kernel.available():
        raise SystemExit("the C kernel is not compiled here (pip install -e . builds it)")
    ds = BrodenDataset(ensure_data(args.data, args.images), limit=args.images)
    loaded = load_model("torchvision:mobilenet_v2", weights="IMAGENET1K_V1")
    wall_k, tally_k, res_k = run(loaded, ds, args.batch_size, args.workers, fused=True)
    wall_t, tally_t, res_t = run(loaded, ds, args.batch_size, args.workers, fused=False)
    print(f"{len(ds)} images, MobileNetV2, bilinear; CPU seconds in the final tally (all threads)")
    print(f"{'layer':12s} {'kernel':>8s} {'torch':>8s} {'torch/kernel':>12s}  IoU identical")
    for layer in LAYERS:
        same = np.array_equal(res_k[layer].iou, res_t[layer].iou)
        print(f"{layer:12s} {tally_k.get(layer, 0):8.2f} {tally_t.get(layer, 0):8.2f} "
              f"{tally_t.get(layer, 0) / max(tally_k.get(layer, 0), 1e-9):12.2f}  {same}")
    total_k, total_t = sum(tally_k.values()), sum(tally_t.values())
    print(f"{'all':12s} {total_k:8.2f} {total_t:8.2f} {total_t / max(total_k, 1e-9):12.2f}")
    print(f"whole dissection (wall): kernel {wall_k:.1f} s, torch {wall_t:.1f} s ({wall_t / wall_k:.2f}x)")


if __name__ == "__main__":
    main()
