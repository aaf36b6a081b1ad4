"""The paper's experiments, one command each.

=============  ===============================================================================
rotate         dissect a layer in randomly rotated bases Q^alpha (rotation.py)
compare        several run directories side by side: table and grouped bar charts (compare.py)
checkpoints    dissect a series of state_dict files, detectors vs training step (checkpoints.py)
experiment     ``experiment conditions``: train small CNNs under the paper's training
               conditions on the synthetic scene task and dissect them (conditions.py)
explain        a prediction's top contributing units, their labels and heat maps (explain.py)
ablate         zero chosen units, report the accuracy change beside a random control (ablate.py)
=============  ===============================================================================

``add_commands(subparsers)`` registers them on the ``netdissect`` parser. This module imports
nothing heavy: each handler imports its experiment when it runs.
"""
from __future__ import annotations

import importlib
import sys

from netdissect.cli.options import add_dissect_args, add_model_args

__all__ = ["add_commands"]


def _handler(module: str):
    def run(args) -> int:
        return importlib.import_module(f"{__name__}.{module}").command(args)
    run.__name__ = f"run_{module}"
    return run


def add_commands(subparsers) -> None:
    """Register rotate, compare, checkpoints, experiment, explain and ablate; each sets ``func``."""
    _rotate(subparsers)
    _compare(subparsers)
    _checkpoints(subparsers)
    _experiment(subparsers)
    _explain(subparsers)
    _ablate(subparsers)


def _rotate(sub) -> None:
    p = sub.add_parser(
        "rotate", help="dissect a layer in randomly rotated bases Q^alpha (all alphas in one pass)",
        description="Apply a uniform random rotation Q (and its fractional powers Q^alpha) to the "
                    "layer's unit space at every spatial position and dissect every alpha in one pass "
                    "over the data. Writes rotation.csv/.json/.svg/.png and the dissection run in "
                    "OUT/dissection.")
    add_model_args(p)
    p.add_argument("--layer", required=True, help="the layer to rotate (dotted module name)")
    add_dissect_args(p)
    p.add_argument("--alpha", type=float, nargs="+", default=[0, 0.2, 0.4, 0.6, 0.8, 1.0],
                   help="rotation fractions (default 0 0.2 0.4 0.6 0.8 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random rotation (default 0)")
    p.add_argument("--method", choices=("auto", "schur", "symmetric"), default="auto",
                   help="fractional power: scipy's real Schur form ('auto' when scipy is installed) "
                        "or the numpy-only method ('symmetric')")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_handler("rotation"))


def _compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare run directories: table and grouped bar charts",
        description="Put several run directories side by side (layers of one model, several models, "
                    "training tasks): unique detectors per category and the share of units that are "
                    "detectors. Reads only each run's summary.json and config.json.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by netdissect dissect")
    p.add_argument("--names", nargs="+", help="a display name per run directory (default: the directory name)")
    p.add_argument("--layer", action="append", dest="layers",
                   help="compare only this layer (repeatable; default: every layer of every run)")
    p.add_argument("--out", required=True, help="output directory for compare.csv and the figures")
    p.set_defaults(func=_handler("compare"))


def _checkpoints(sub) -> None:
    p = sub.add_parser(
        "checkpoints", help="dissect a series of checkpoints: detectors vs training step",
        description="Dissect state_dict files of one architecture with the same dataset and threshold "
                    "procedure, and plot unique detectors per category against the training step "
                    "(the last integer in each file name, or --steps). Finished runs are reused.")
    add_model_args(p, weights_default="none", checkpoint=False)
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="FILE_OR_GLOB",
                   help="state_dict files, or quoted glob patterns such as 'ckpt/*.pth'")
    p.add_argument("--steps", type=int, nargs="+", help="the training step of each file (default: parsed from the names)")
    p.add_argument("--layer", action="append", dest="layers", required=True,
                   help="dotted module name; repeat for several layers")
    add_dissect_args(p)
    p.add_argument("--out", required=True, help="output directory (one run directory per checkpoint in OUT/runs)")
    p.set_defaults(func=_handler("checkpoints"))


def _experiment(sub) -> None:
    p = sub.add_parser("experiment", help="multi-step experiments of the paper (conditions)")
    esub = p.add_subparsers(dest="experiment", metavar="NAME")
    c = esub.add_parser(
        "conditions", help="train small CNNs under the paper's training conditions and dissect them",
        description="Generate the synthetic dataset (OUT/data, if absent), train a small CNN on its "
                    "scene labels under several conditions (baseline, no dropout, batch norm, wide, "
                    "second initialization), save checkpoints, dissect each final model and write "
                    "the comparison with each model's held-out accuracy. Re-running reuses finished steps.")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--quick", action="store_true", help="a tiny version (seconds): for tests and a first look")
    c.add_argument("--conditions", nargs="+", metavar="NAME",
                   help="run only these conditions (baseline no_dropout batchnorm wide seed1)")
    c.add_argument("--images", type=int, help="images to generate (default 4000; quick: 120)")
    c.add_argument("--size", type=int, help="image size in pixels (default 96; quick: 48)")
    c.add_argument("--epochs", type=int, help="training epochs (default 30; quick: 2)")
    c.add_argument("--width", type=int, help="units of the last conv layer in the baseline (default 64; quick: 16)")
    c.add_argument("--seed", type=int, default=0, help="seed of the dataset and of the baseline initialization")
    c.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    c.add_argument("--force", action="store_true", help="recompute every step")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    c.set_defaults(func=_handler("conditions"))
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def _explain(sub) -> None:
    p = sub.add_parser(
        "explain", help="explain a prediction by its top contributing labeled units",
        description="For a classifier whose layer feeds global average pooling and a linear classifier "
                    "(resnet / mobilenet_v2 style heads), show the predicted class, the units that "
                    "contribute most to it (class weight x mean activation) with their dissection "
                    "labels and heat maps: an HTML page and a PNG.")
    add_model_args(p)
    p.add_argument("--layer", required=True, help="the last convolutional layer (feeding the pooled classifier)")
    p.add_argument("--run", required=True, help="the run directory where this layer was dissected")
    p.add_argument("--image", required=True, nargs="+", help="image file(s) to explain")
    p.add_argument("--out", help="output directory (default: RUN/explain/<image name>)")
    p.add_argument("--units", type=int, default=8, help="top units to show (default 8)")
    p.add_argument("--class", dest="target", help="explain this class (index or name) instead of the prediction")
    p.add_argument("--size", type=int, default=224,
                   help="resize the shorter side to SIZE and centre-crop (default 224; 0: use the image as is)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(func=_handler("explain"))


def _ablate(sub) -> None:
    p = sub.add_parser(
        "ablate", help="zero chosen units and measure the change in accuracy, beside a random control",
        description="Zero units of a layer (forward hook) and report the classification accuracy before and "
                    "after, on a labeled image set: a Broden-format dataset's scene labels (the synthetic "
                    "scene task) or an ImageFolder-style directory. A random set of other units of the same "
                    "size is ablated as a control.")
    add_model_args(p)
    p.add_argument("--layer", required=True, help="dotted module name of the layer whose units are zeroed")
    p.add_argument("--run", help="the run directory where this layer was dissected (needed by --category and --top)")
    p.add_argument("--dataset", required=True,
                   help="Broden-format dataset (scene labels) or ImageFolder-style directory (class folders)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--category", help="ablate the detectors whose label is of this category (e.g. object)")
    how.add_argument("--label", help="ablate the detectors of this concept label (e.g. car)")
    how.add_argument("--top", type=int, metavar="N", help="ablate the N units with the highest IoU")
    how.add_argument("--random", type=int, metavar="N", help="ablate N random units")
    how.add_argument("--units", type=int, nargs="+", metavar="K", help="ablate these units (0-based)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    p.add_argument("--controls", type=int, default=3, help="random control sets to average (default 3; 0: none)")
    p.add_argument("--split", help="Broden split to evaluate on (default: all images)")
    p.add_argument("--limit", type=int, help="evaluate on the first N labeled images (per class folder)")
    p.add_argument("--size", type=int, default=224,
                   help="ImageFolder images: shorter side resized to SIZE and centre-cropped (default 224)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", help="output directory (default: RUN/ablate/<selection>)")
    p.set_defaults(func=_handler("ablate"))
