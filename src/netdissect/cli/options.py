"""Command-line options shared by `netdissect dissect` and the experiment commands.

One definition, so that every command that dissects takes the same options with the same
defaults. Imports nothing heavy: `netdissect --help` stays fast.
"""
from __future__ import annotations

from netdissect.config import default  # the defaults of DissectConfig: one definition for API and CLI


def add_model_args(p, weights_default: str = "default", checkpoint: bool = True) -> None:
    p.add_argument("--model", required=True,
                   help="torchvision:NAME | timm:NAME | path/to/program.pt2 (torch.export) | "
                        "path/to/torchscript.pt | package.module:factory")
    p.add_argument("--weights", default=weights_default,
                   help="torchvision weights enum name (e.g. IMAGENET1K_V1), 'default', or 'none' for "
                        f"random init (default: {weights_default}); for timm also a pretrained tag or a "
                        "local weights file (model.safetensors)")
    if checkpoint:
        p.add_argument("--checkpoint", help="a state_dict file to load into the model")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                   help="input normalization mean, pixels scaled to [0, 1] (default: from the weights, else ImageNet)")
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="input normalization std")


def add_layout_arg(p) -> None:
    p.add_argument("--layout", choices=("auto", "nchw", "nhwc", "tokens"), default="auto",
                   help="how a layer's output holds unit maps: auto (default: decided by which dimensions "
                        "follow the input size), nchw (N x K x h x w), nhwc (N x h x w x K, Swin/ConvNeXt "
                        "stages), tokens (N x tokens x K of a vision transformer, prefix tokens dropped)")


def add_dissect_args(p, dataset_required: bool = True) -> None:
    p.add_argument("--dataset", required=dataset_required, help="a Broden-format dataset directory")
    p.add_argument("--categories", nargs="+", help="categories to use (default: every category the dataset has)")
    p.add_argument("--split", help="dataset split to use (default: all images)")
    p.add_argument("--limit", type=int, help="use only the first N images: a quick look")
    p.add_argument("--quantile", type=float, default=default("quantile"),
                   help=f"top fraction of activations that is active (default {default('quantile')})")
    p.add_argument("--iou-threshold", type=float, default=default("iou_threshold"),
                   help=f"IoU above which a unit is a detector (default {default('iou_threshold')})")
    p.add_argument("--upsample", choices=("bilinear", "rf"), default=default("upsample"),
                   help="bilinear (default, as NetDissect-Lite) or rf (receptive-field aligned, as the original)")
    p.add_argument("--top-k", type=int, default=default("top_k"),
                   help=f"top images kept per unit for the report (default {default('top_k')})")
    p.add_argument("--batch-size", type=int, default=default("batch_size"))
    p.add_argument("--workers", type=int, help="data loading processes (default: min(4, cores))")
    p.add_argument("--device", default=default("device"), help="auto | cpu | cuda | cuda:N")
    p.add_argument("--min-category-images", type=int, default=default("min_category_images"),
                   help="warn when a category is labeled in fewer images than this "
                        f"(default {default('min_category_images')})")
    p.add_argument("--memory-budget", type=float, default=default("memory_budget_mb"), dest="memory_budget_mb",
                   help=f"MiB for the whole run's statistics (default {default('memory_budget_mb'):g}): "
                        "top-k maps first, then a quarter of the rest for candidate maps (beyond it they spill "
                        "to disk), half for the threshold states (a layer whose exact state does not fit "
                        "takes a second, still exact, pass) and a quarter for the final tally; see "
                        "netdissect/stats/memory.py")
    p.add_argument("--on-bad-image", choices=("fail", "skip"), default=default("on_bad_image"),
                   help="an unreadable image stops the run (fail, default) or is skipped and listed (skip)")
    p.add_argument("--label-cache", metavar="DIR|off",
                   help="where encoded labels are kept between runs, so a dataset's masks are decoded once "
                        "(default: $NETDISSECT_LABEL_CACHE, else ~/.cache/netdissect/labels; off: no cache). "
                        "List or clear it with `netdissect cache [DIR]`")
    p.add_argument("--force", action="store_true",
                   help="recompute everything, ignoring finished results and checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                   help="save a checkpoint to resume from every N batches (default 50; 0: never)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_layout_arg(p)


def dissect_params(args) -> dict:
    """The keyword arguments of netdissect.dissect() from add_dissect_args' options."""
    return dict(quantile=args.quantile, iou_threshold=args.iou_threshold, upsample=args.upsample,
                categories=args.categories, split=args.split, limit=args.limit, top_k=args.top_k,
                batch_size=args.batch_size, workers=args.workers, device=args.device,
                min_category_images=args.min_category_images, memory_budget_mb=args.memory_budget_mb,
                on_bad_image=args.on_bad_image, checkpoint_every=args.checkpoint_every,
                layout=getattr(args, "layout", "auto"), label_cache=getattr(args, "label_cache", None))


def add_formula_args(p, default_length: int = 3) -> None:
    """Compositional explanations (netdissect.formulas.search): formula length and beam width."""
    p.add_argument("--formula-length", type=int, default=default_length, metavar="L",
                   help="search each unit's best formula of up to L concepts joined by AND, OR, AND NOT "
                        + (f"(default {default_length})" if default_length else
                           "(default: no formulas; 3 is the usual choice)"))
    p.add_argument("--beam", type=int, default=10, help="beam width of the formula search (default 10)")


# --------------------------------------------------------------------------- validation

import argparse  # noqa: E402  (below the option definitions they validate)
import math  # noqa: E402
import sys  # noqa: E402

_BIG = 10 ** 7  # no option needs more: larger counts are typos that would run for days


class OneLineParser(argparse.ArgumentParser):
    """argparse, except that a bad command line is one line on stderr (and exit status 2):
    the error and where to read the usage, not a usage dump above it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(lo: int, hi: int = _BIG):
    def check(name, v):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            return f"must be an integer in [{lo}, {hi}]"
    return check


def _real(lo: float, hi: float, lo_open: bool, hi_open: bool):
    def check(name, v):
        ok = isinstance(v, (int, float)) and math.isfinite(v) and \
            (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
        if not ok:
            return f"must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return check


def _each(rule):
    def check(name, values):
        for v in values if isinstance(values, (list, tuple)) else [values]:
            problem = rule(name, v)
            if problem:
                return problem
    return check


# One table for every command (dissect, data, check, report, demo and the experiments): an
# option's destination name means the same thing wherever it appears.
RULES = {
    "quantile": _real(0, 1, True, True),
    "iou_threshold": _real(0, 1, False, True),
    "top_k": _count(1, 10_000),
    "batch_size": _count(1, 65_536),
    "limit": _count(1),
    "workers": _count(0, 256),
    "min_category_images": _count(0),
    "memory_budget_mb": _real(0, 1e9, True, False),
    "checkpoint_every": _count(0),
    "images": _count(1),
    "size": _each(_count(1, 8192)),
    "seed": _count(0, 2 ** 63 - 1),
    "epochs": _count(1, 100_000),
    "width": _count(1, 65_536),
    "threads": _count(1, 1024),
    "controls": _count(0, 1000),
    "top": _count(1, _BIG),
    "random": _count(1, _BIG),
    "steps": _each(_count(0, 2 ** 62)),
    "alpha": _each(_real(0, 1, False, False)),
    "mean": _each(_real(-1e6, 1e6, False, False)),
    "std": _each(_real(0, 1e6, True, False)),
    "min_images": _count(0),
    "quality": _count(1, 100),
    "retries": _count(0, 100),
    "backoff": _real(0, 3600, False, False),
    "timeout": _real(0, 86400, True, False),
    "formula_length": _count(0, 20),
    "beam": _count(1, 10_000),
}


def _units_rule(name, v):
    if isinstance(v, list):  # ablate --units K ...: unit numbers
        return _each(_count(0, _BIG))(name, v)
    return _count(1, 100_000)(name, v)  # explain --units N: how many to show


RULES["units"] = _units_rule


def validate_args(args, parser: argparse.ArgumentParser) -> None:
    """Check every option value against RULES; the first bad one is a one-line usage error."""
    for dest, rule in RULES.items():
        value = getattr(args, dest, None)
        if value is None or isinstance(value, str) or \
                (isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value)):
            continue  # a name or a path that happens to share the destination (data --images DIR)
        problem = rule(dest, value)
        if problem:
            option = "--" + dest.replace("_mb", "").replace("_", "-")
            command = " ".join(filter(None, [parser.prog, getattr(args, "command", None),
                                             getattr(args, "data_command", None),
                                             getattr(args, "experiment", None)]))
            shown = value if not isinstance(value, (list, tuple)) else " ".join(map(str, value))
            print(f"{command}: error: {option} {problem}; got {shown}", file=sys.stderr)
            raise SystemExit(2)
