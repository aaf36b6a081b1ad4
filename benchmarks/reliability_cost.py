"""What the reliability checks of issue 8 cost, measured in one run.

1. The dataset digest: stat of every image and mask file (the default) and a full content
   hash (--verify-content), against reading the index (the digest there was before).
2. The checkpoint without pickle (statefile: .npz + JSON) against torch.save / torch.load of
   the same state, for a state shaped like a real one (per-image label tables, one layer's
   exact-quantile buffer, top-k maps, pair chunks).

    python benchmarks/reliability_cost.py [--images 300] [--units 1280]
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def state_like_a_run(images: int, units: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    keep = max(1, int(images * 7 * 7 * 0.005)) + 1
    chunks = [{"unit": torch.randint(0, units, (2000,), generator=g), "image": torch.randint(0, images, (2000,), generator=g),
               "max": torch.rand(2000, generator=g), "maps": torch.rand(2000, 7, 7, generator=g)} for _ in range(4)]
    return {
        "manifest": {"model": {"spec": "torchvision:mobilenet_v2", "weights_digest": "0" * 16}, "layers": ["features.18"]},
        "done": images,
        "layers": {"features.18": {
            "quantile": {"values": torch.rand(units, keep, generator=g), "count": images * 49, "keep": keep,
                         "level": 0.995, "expected_n": images * 49},
            "topk": {"score": torch.rand(units, 8, generator=g), "index": torch.randint(0, images, (units, 8), generator=g),
                     "maps": torch.rand(units, 8, 7, 7, generator=g)},
            "pairs": {"chunks": chunks, "spilled": ["features.18.pairs00000.pt"]}}},
        "store": {"concept_pixels": rng.integers(0, 10 ** 6, 1200),
                  "tables": [rng.integers(-1, 1200, (int(rng.integers(5, 40)), 4)) for _ in range(images)],
                  "image_concepts": [rng.integers(0, 1200, int(rng.integers(3, 20))) for _ in range(images)]},
        "skipped": [],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--units", type=int, default=1280)
    args = ap.parse_args()
    from netdissect.data.broden import _index_digest, open_dataset
    from netdissect.data.synthetic import generate_synthetic
    from netdissect.runs import statefile

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic(Path(tmp) / "data", images=args.images, size=224, workers=2)
        ds = open_dataset(data)
        files = len(ds.files())
        index = best_of(lambda: _index_digest(ds.root))
        stats = best_of(ds.file_stats)
        hashes = best_of(ds.content_hashes, repeat=1)
        print(f"dataset digest, {args.images} images, {files} files:")
        print(f"  index files only (before): {index * 1e3:8.1f} ms")
        print(f"  + size and mtime of every file (default): {stats * 1e3:8.1f} ms "
              f"({stats / args.images * 1e6:.0f} us per image; ~{stats / args.images * 63305:.1f} s for Broden's 63,305)")
        print(f"  content hash (--verify-content): {hashes * 1e3:8.1f} ms ({hashes / stats:.0f}x the stat check)")

    state = state_like_a_run(args.images, args.units)
    data = statefile.dumps(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    pickled = buf.getvalue()
    dump_sf = best_of(lambda: statefile.dumps(state))
    load_sf = best_of(lambda: statefile.loads(data))

    def torch_save():
        b = io.BytesIO()
        torch.save(state, b)

    dump_pt = best_of(torch_save)
    load_pt = best_of(lambda: torch.load(io.BytesIO(pickled), weights_only=False))
    print(f"checkpoint of {args.images} images x {args.units} units: statefile {len(data) / 2**20:.1f} MiB, "
          f"torch.save {len(pickled) / 2**20:.1f} MiB")
    print(f"  save: statefile {dump_sf * 1e3:.0f} ms, torch.save {dump_pt * 1e3:.0f} ms (ratio {dump_sf / dump_pt:.2f})")
    print(f"  load: statefile {load_sf * 1e3:.0f} ms, torch.load {load_pt * 1e3:.0f} ms (ratio {load_sf / load_pt:.2f})")


if __name__ == "__main__":
    main()
