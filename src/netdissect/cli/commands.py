"""The ``netdissect`` command line: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

from netdissect import __version__
from netdissect.cli.options import (
    OneLineParser,
    add_dissect_args,
    add_formula_args,
    add_layout_arg,
    add_model_args,
    dissect_params,
    validate_args,
)
from netdissect.errors import NetDissectError

DEMO_LAYERS = ("features.3", "features.7", "features.14", "features.18")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="netdissect",
        description="Network Dissection: label the units of a CNN layer with visual concepts.")
    parser.add_argument("--version", action="version", version=f"netdissect {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("dissect", help="dissect layers of a model on a Broden-format dataset")
    add_model_args(p)
    p.add_argument("--layer", action="append", required=True, dest="layers",
                   help="dotted module name; repeat for several layers (one pass over the data)")
    add_dissect_args(p)
    add_formula_args(p, default_length=0)
    p.add_argument("--out", required=True, help="run directory to write (resumed if interrupted)")
    p.add_argument("--no-report", action="store_true", help="do not render the HTML report")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the model's construction: the random init of --weights none (default 0)")
    p.add_argument("--verify-content", action="store_true",
                   help="hash every image and mask file to decide whether a finished run is still "
                        "valid (default: their size and modification time)")
    p.set_defaults(func=cmd_dissect)

    p = sub.add_parser("formulas", help="search each unit's best formula of concepts (AND, OR, AND NOT) "
                                        "in a finished run directory")
    p.add_argument("run", help="a run directory written by `netdissect dissect`")
    p.add_argument("--layer", action="append", dest="layers", help="layer to search (default: every layer)")
    add_formula_args(p)
    p.add_argument("--force", action="store_true", help="search again even when done with the same settings")
    p.add_argument("--top-k", type=int, default=8, help="top images per unit in the re-rendered report")
    p.add_argument("--no-report", action="store_true", help="do not re-render the HTML report")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_formulas)

    p = sub.add_parser("layers", help="list a model's layers with their output shapes")
    add_model_args(p)
    p.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"),
                   help="input size of the dummy forward pass (default 224 224)")
    add_layout_arg(p)
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("data", help="build datasets in the Broden format")
    data_sub = p.add_subparsers(dest="data_command", metavar="KIND")
    d = data_sub.add_parser("synthetic", help="generate a synthetic dataset with all six categories")
    d.add_argument("--out", required=True)
    d.add_argument("--images", type=int, default=1000)
    d.add_argument("--size", type=int, default=224)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workers", type=int)
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_data_synthetic)
    from netdissect.data.commands import add_data_commands
    add_data_commands(data_sub)
    from netdissect.data.fetch_commands import add_fetch_commands
    add_fetch_commands(data_sub)
    p.set_defaults(func=lambda args: _usage(p))

    p = sub.add_parser("check", help="validate a Broden-format dataset end to end")
    p.add_argument("dataset")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("report", help="render the HTML report of a run directory")
    p.add_argument("run")
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--strips", action="store_true",
                   help="also write OUT/<layer>/unit_<n>.jpg: each unit's images with its regions, for papers")
    p.add_argument("--figure-png", action="store_true",
                   help="also write each figure as PNG (150 dpi) next to its SVG in OUT/figures/ and the report")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("cache", help="list (or clear) the label cache: datasets' labels encoded by earlier runs")
    p.add_argument("dir", nargs="?",
                   help="the cache directory (default: $NETDISSECT_LABEL_CACHE, else ~/.cache/netdissect/labels)")
    p.add_argument("--clear", action="store_true", help="remove every entry (runs encode their labels again)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("demo", help="the embedded default: ImageNet MobileNetV2 on a generated synthetic set")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", default="runs/demo-data", help="where the synthetic dataset is generated (reused)")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--workers", type=int)
    p.add_argument("--force", action="store_true")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--quiet", action="store_true")
    add_formula_args(p)
    p.set_defaults(func=cmd_demo)

    try:
        from netdissect.experiments import add_commands
    except ImportError:
        add_commands = None
    if add_commands is not None:
        add_commands(sub)
    return parser


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def cmd_layers(args) -> int:
    from netdissect.models.capture import list_layers
    from netdissect.models.specs import load_model
    loaded = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint)
    rows = list_layers(loaded.module, tuple(args.size), layout=args.layout)
    width = max((len(r.name) for r in rows), default=10)
    shapes = [" x ".join(str(s) for s in r.shape) if r.shape else "-" for r in rows]
    shape_w = max((len(s) for s in shapes), default=10)
    type_w = max((len(r.type) for r in rows), default=4)
    print(f"{'layer':<{width}}  {'type':<{type_w}}  {'output shape (batch of 1)':<{shape_w}}  dissected as")
    # timm names the stages it offers as features (feature_info): the usual layers to dissect
    features = {f.get("module") for f in getattr(loaded.module, "feature_info", None) or []
                if isinstance(f, dict)}
    for r, shape in zip(rows, shapes):
        mark = r.layout if r.layout else f"cannot be dissected: {r.why}"
        if r.layout and r.name in features:
            mark += "  [timm feature stage]"
        print(f"{r.name:<{width}}  {r.type:<{type_w}}  {shape:<{shape_w}}  {mark}")
    return 0


def cmd_dissect(args) -> int:
    from netdissect.engine.pipeline import dissect
    result = dissect(args.model, args.layers, args.dataset, out=args.out, weights=args.weights,
                     checkpoint=args.checkpoint, mean=args.mean, std=args.std,
                     progress=not args.quiet, force=args.force, seed=args.seed,
                     verify_content=args.verify_content, formula_length=args.formula_length,
                     beam=args.beam, keep_report_images=not args.no_report, **dissect_params(args))
    from netdissect.engine.distributed import is_primary
    if not is_primary():  # a sharded run (torchrun): rank 0 reports
        return 0
    if not args.no_report:
        _render_report(result.out, args.top_k, args.quiet, images=result.report_images)
    print_summary(result)
    print_formulas(result)
    return 0


def cmd_formulas(args) -> int:
    from netdissect.formulas.rundir import explain_run
    result = explain_run(args.run, layers=args.layers, length=args.formula_length, beam=args.beam,
                         progress=not args.quiet, force=args.force)
    if not args.no_report:
        _render_report(args.run, args.top_k, args.quiet)
    print_formulas(result, args.layers)
    return 0


def print_formulas(result, layers=None, examples: int = 3) -> None:
    """Per layer: mean IoU of the labels and of the formulas, and the best formulas."""
    import numpy as np
    rows = [(n, l) for n, l in result.layers.items() if l.formulas is not None and (not layers or n in layers)]
    if not rows:
        return
    print()
    print("Formulas (best of AND / OR / AND NOT over concepts; IoU as the dissection's):")
    for name, layer in rows:
        f = layer.formulas
        s = f.summary(layer.iou_threshold)
        print(f"{name}: length <= {f.length}, beam {f.beam}: mean IoU {s['mean_single_iou']:.4f} (label) -> "
              f"{s['mean_iou']:.4f} (formula), {s['units_improved']}/{f.units} units improved, "
              f"{s['detectors']} above {layer.iou_threshold} ({f.seconds:.1f} s)")
        for k in np.argsort(-f.iou, kind="stable")[:examples]:
            print(f"  unit {k}: {f.text(k)}  IoU {f.iou[k]:.4f} (label {layer.concept_names[f.single[k]]} "
                  f"{f.single_iou[k]:.4f})")


def _render_report(out, top_k: int, quiet: bool, strips: bool = False, figure_png: bool = False,
                   images=None) -> Optional[Path]:
    try:
        from netdissect.report import render_report
    except ImportError:
        print("netdissect: the report module is not available; skipping the report", file=sys.stderr)
        return None
    return render_report(out, top_k=top_k, progress=not quiet, paper_strips=strips, figure_png=figure_png,
                         images=images)


def print_summary(result) -> None:
    """The per-layer table printed at the end of a run."""
    layers = result.layers
    if not layers:
        return
    cats = next(iter(layers.values())).categories
    name_w = max(len("layer"), *(len(n) for n in layers))
    head = f"{'layer':<{name_w}}  {'units':>5}  {'detectors':>9}  {'unique':>6}  " + \
        "  ".join(f"{c:>8}" for c in cats)
    print()
    print(f"Unique detectors per category (IoU > {result.config.iou_threshold}, "
          f"{result.images} images):")
    print(head)
    print("-" * len(head))
    for name, layer in layers.items():
        s = layer.summary()
        print(f"{name:<{name_w}}  {s['units']:>5}  {s['detectors']:>9}  {s['unique_detectors']:>6}  "
              + "  ".join(f"{s['unique_per_category'][c]:>8}" for c in cats))
    if result.out is not None:
        out = Path(result.out)
        print(f"\nResults: {out}/summary.json, {out}/<layer>/units.csv")
        if (out / "report" / "index.html").exists():
            print(f"Report:  {(out / 'report' / 'index.html').resolve().as_uri()}")
    for message in result.warnings:
        print(f"warning: {message}", file=sys.stderr)


def cmd_data_synthetic(args) -> int:
    from netdissect.data.synthetic import generate_synthetic
    path = generate_synthetic(args.out, images=args.images, size=args.size, seed=args.seed,
                              workers=args.workers, progress=not args.quiet, overwrite=args.overwrite)
    print(f"wrote {args.images} images to {path}")
    return 0


def cmd_check(args) -> int:
    from netdissect.data.broden import check_dataset
    report = check_dataset(args.dataset, workers=args.workers, progress=not args.quiet)
    print(report.summary_text())
    return 0 if report.ok else 1


def cmd_report(args) -> int:
    from netdissect.runs import read_json
    read_json(Path(args.run) / "summary.json")  # a clear error when the run is not finished
    path = _render_report(args.run, args.top_k, args.quiet, args.strips, args.figure_png)
    if path is not None:
        print(f"report: {Path(path).resolve().as_uri()}")
    return 0


def cmd_cache(args) -> int:
    from netdissect.tally.labelcache import clear, default_root, entries
    root = Path(args.dir).expanduser() if args.dir else default_root()
    if args.dir and not root.is_dir():
        raise NetDissectError(f"{args.dir}: not a directory; name the label cache directory (or none: "
                              "$NETDISSECT_LABEL_CACHE, else ~/.cache/netdissect/labels)")
    if root is None:
        print("netdissect: the label cache is off ($NETDISSECT_LABEL_CACHE); name its directory to list one")
        return 0
    found = entries(root)
    if args.clear:
        removed = clear(root)
        print(f"netdissect: removed {len(removed)} label cache entr{'y' if len(removed) == 1 else 'ies'} "
              f"({sum(e['bytes'] for e in removed) / 2**20:.0f} MiB) from {root}")
        return 0
    if not found:
        print(f"netdissect: the label cache {root} is empty")
        return 0
    print(f"label cache {root}: {len(found)} entr{'y' if len(found) == 1 else 'ies'}, "
          f"{sum(e['bytes'] for e in found) / 2**20:.0f} MiB")
    for e in sorted(found, key=lambda e: -e["used"]):
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["used"]))
        print(f"  {Path(e['path']).name[:12]}  {e['images']:>7} images  {e['bytes'] / 2**20:8.1f} MiB  "
              f"last used {used}  {e['dataset']}")
    return 0


def cmd_demo(args) -> int:
    """MobileNetV2 (ImageNet weights, offline) at four depths on a generated synthetic set."""
    from netdissect.data.synthetic import check_output_dir, generate_synthetic
    from netdissect.engine.pipeline import dissect
    from netdissect.runs import check_directory
    data = Path(args.data)
    check_directory(Path(args.out))  # before generating data: a bad --out fails at once
    if not (data / "index.csv").exists():
        check_output_dir(data, overwrite=True)  # a folder netdissect did not make is never replaced
        print(f"netdissect: generating {args.images} synthetic images in {data} ...", file=sys.stderr)
        generate_synthetic(data, images=args.images, size=224, seed=0, progress=not args.quiet,
                           overwrite=True)
    result = dissect("torchvision:mobilenet_v2", list(DEMO_LAYERS), data, out=args.out,
                     weights="IMAGENET1K_V1", progress=not args.quiet, force=args.force,
                     batch_size=args.batch_size, workers=args.workers, limit=args.images,
                     formula_length=args.formula_length, beam=args.beam, keep_report_images=not args.no_report)
    if not args.no_report:
        _render_report(result.out, 8, args.quiet, images=result.report_images)
    print_summary(result)
    print_formulas(result)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    validate_args(args, parser)
    from netdissect.errors import DissectionWarning
    warnings.simplefilter("ignore", DissectionWarning)  # printed with the run's summary instead
    try:
        return int(args.func(args) or 0)
    except NetDissectError as exc:
        print(f"netdissect: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permission, a path that is a file: one line, naming it
        from netdissect.errors import WriteError
        print(f"netdissect: error: {_one_line(WriteError.of(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"\nnetdissect: {exc or 'interrupted'}", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")).strip()


if __name__ == "__main__":
    sys.exit(main())
