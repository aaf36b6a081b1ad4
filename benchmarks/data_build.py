"""How fast `netdissect data ade20k` converts, and where the time goes (one run, ratios).

Writes N generated images in the ADE20K 2021 format (JPEG, _seg.png, _parts_1.png, JSON) at
W x H, builds them with 1 and 2 worker processes, and times the stages of one image. Usage:

    python benchmarks/data_build.py [--images 40] [--width 1024] [--height 768]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from netdissect.data import ade20k, colors, writer


def make_source(root: Path, n: int, w: int, h: int) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "ADE20K_2021_17_01/images/ADE/training/urban/street"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        stem = f"ADE_train_{i:08d}"
        rgb = np.clip(rng.normal(128, 60, (h // 8, w // 8, 3)), 0, 255).astype(np.uint8)
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        Image.fromarray(rgb).save(folder / f"{stem}.jpg", quality=90)
        objects = 1 + ((xx * 7 // w) + 7 * (yy * 5 // h) + i) % 40
        parts = np.where((xx // 64 + yy // 64) % 3 == 0, 300 + (i % 5), 0)
        for name, classes in ((f"{stem}_seg.png", objects), (f"{stem}_parts_1.png", parts)):
            seg = np.zeros((h, w, 3), np.uint8)
            seg[..., 0] = (classes // 256) * 10
            seg[..., 1] = classes % 256
            Image.fromarray(seg).save(folder / name)
        objs = [{"name": f"thing {c}, stuff {c}", "name_ndx": int(c), "parts": {"part_level": 0}}
                for c in range(1, 41)] + \
               [{"name": f"part {c}", "name_ndx": int(c), "parts": {"part_level": 1}}
                for c in range(300, 305)]
        (folder / f"{stem}.json").write_text(json.dumps(
            {"annotation": {"scene": ["outdoor", "urban", "street"], "object": objs}}))
    return root


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=768)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nd-data-bench-"))
    try:
        src = make_source(tmp / "src", a.images, a.width, a.height)
        items, _ = ade20k.ade20k_items(src)
        times = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            writer.build_broden(tmp / f"out{workers}", items, {"source": "bench"}, size=224,
                                workers=workers, log=lambda m: None)
            times[workers] = time.perf_counter() - t0
        jpg = items[0].args[0]
        stages = {}
        t0 = time.perf_counter(); ann = ade20k.load_full_with_json(jpg); stages["read"] = time.perf_counter() - t0
        t0 = time.perf_counter(); colors.color_codes(ann.rgb); stages["colors"] = time.perf_counter() - t0
        t0 = time.perf_counter(); writer.encode_jpeg(writer.resize_image(ann.rgb, 224)); stages["resize+jpeg"] = time.perf_counter() - t0
        print(f"{a.images} images of {a.width} x {a.height} (ADE20K 2021 format, 40 objects, 1 part level)")
        for workers, t in times.items():
            print(f"  workers={workers}: {t:.2f} s, {a.images / t:.1f} images/s")
        print(f"  ratio workers 1 / 2: {times[1] / times[2]:.2f}x")
        total = sum(stages.values())
        print("  one image: " + ", ".join(f"{k} {v * 1000:.0f} ms ({v / total:.0%})" for k, v in stages.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
