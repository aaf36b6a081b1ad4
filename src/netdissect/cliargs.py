"""Command-line options shared by `netdissect dissect` and the experiment commands.

One definition, so that every command that dissects takes the same options with the same
defaults. Imports nothing heavy: `netdissect --help` stays fast.
"""
from __future__ import annotations


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
    p.add_argument("--quantile", type=float, default=0.005,
                   help="top fraction of activations that is active (default 0.005)")
    p.add_argument("--iou-threshold", type=float, default=0.04,
                   help="IoU above which a unit is a detector (default 0.04)")
    p.add_argument("--upsample", choices=("bilinear", "rf"), default="bilinear",
                   help="bilinear (default, as NetDissect-Lite) or rf (receptive-field aligned, as the original)")
    p.add_argument("--top-k", type=int, default=8, help="top images kept per unit for the report (default 8)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, help="data loading processes (default: min(4, cores))")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--min-category-images", type=int, default=20,
                   help="warn when a category is labeled in fewer images than this (default 20)")
    p.add_argument("--memory-budget", type=float, default=1024, dest="memory_budget_mb",
                   help="MiB for the streaming statistics (default 1024): the exact thresholds must fit "
                        "in it (else a quantile sketch is used), and a quarter of it holds candidate maps "
                        "in memory before they spill to disk")
    p.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail",
                   help="an unreadable image stops the run (fail, default) or is skipped and listed (skip)")
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
                layout=getattr(args, "layout", "auto"))


def add_formula_args(p, default_length: int = 3) -> None:
    """Compositional explanations (netdissect.formulas): formula length and beam width."""
    p.add_argument("--formula-length", type=int, default=default_length, metavar="L",
                   help="search each unit's best formula of up to L concepts joined by AND, OR, AND NOT "
                        + (f"(default {default_length})" if default_length else
                           "(default: no formulas; 3 is the usual choice)"))
    p.add_argument("--beam", type=int, default=10, help="beam width of the formula search (default 10)")
