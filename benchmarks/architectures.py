"""Time per 1,000 images of a dissection, per architecture (the README "Models" table).

    python benchmarks/architectures.py [--images 50] [--size 224] [--device cpu]

Random weights (the cost does not depend on them). Each row: one dissection of the listed
layers (statistics, tally, results; no report) over N synthetic images, scaled to 1,000 images,
and the layout that was detected. Measured in this one run, on this machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

ARCHITECTURES = [
    ("CNN (ResNet-18)", "torchvision:resnet18", ["layer4"]),
    ("ViT-Ti/16 (timm)", "timm:vit_tiny_patch16_224", ["blocks.6", "blocks.6.mlp.fc1"]),
    ("ViT-B/16 (torchvision)", "torchvision:vit_b_16", ["encoder.layers.encoder_layer_6"]),
    ("Swin-T (timm)", "timm:swin_tiny_patch4_window7_224", ["layers.2"]),
    ("ConvNeXt-T (timm)", "timm:convnext_tiny", ["stages.2", "stages.2.blocks.0.mlp.fc1"]),
]


def main() -> None:
    import netdissect
    from netdissect.data.synthetic import generate_synthetic
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic(Path(tmp) / "data", images=args.images, size=args.size, seed=0,
                                  progress=False, overwrite=True)
        print(f"{'architecture':<24} {'layers':<40} {'s / 1000 images':>16}  layout")
        for name, spec, layers in ARCHITECTURES:
            loaded = netdissect.load_model(spec, weights="none")
            start = time.perf_counter()
            result = netdissect.dissect(loaded, layers, data, batch_size=25, workers=2, device=args.device,
                                        progress=False, min_category_images=0)
            seconds = (time.perf_counter() - start) * 1000 / args.images
            layouts = "; ".join(result[l].layout["description"] for l in layers)
            print(f"{name:<24} {', '.join(layers):<40} {seconds:>16.0f}  {layouts}", flush=True)


if __name__ == "__main__":
    main()
