"""`netdissect data broden` and `netdissect data resize`: registered on the `data` subparser.

Kept apart from cli/commands.py so the command line stays a thin list of entry points; the heavy
modules are imported only when a command runs.
"""
from __future__ import annotations

import argparse


def add_fetch_commands(data_sub) -> None:
    """Add the `broden` and `resize` subcommands to the `data` subparsers."""
    from netdissect.data.download import BRODEN_VERSIONS

    d = data_sub.add_parser(
        "broden", help="download a Broden release (resumable, verified, safely extracted)",
        description="Download a Broden release, verify it, extract it safely into --out and "
                    "validate it as `netdissect check` does. An interrupted download resumes "
                    "from OUT.zip.part on the next run.")
    d.add_argument("--version", choices=BRODEN_VERSIONS, default="broden1_224",
                   help="release: images of 224, 227 or 384 px (default broden1_224)")
    d.add_argument("--out", required=True, help="dataset directory to create")
    source = d.add_mutually_exclusive_group()
    source.add_argument("--url", help="download from this mirror instead of the official server")
    source.add_argument("--zip", dest="zip_path", metavar="FILE",
                        help="use a Broden zip fetched by other means (no download)")
    d.add_argument("--sha256", help="expected sha256 of the zip (checked before extraction)")
    d.add_argument("--keep-zip", action="store_true",
                   help="keep the downloaded zip as OUT.zip (default: delete it once extracted)")
    d.add_argument("--retries", type=int, default=5,
                   help="retries after failed attempts in a row before giving up (default 5)")
    d.add_argument("--backoff", type=float, default=1.0, metavar="SECONDS",
                   help="wait before the first retry, doubled after each (default 1)")
    d.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="socket timeout of a connect or read (default 30)")
    d.add_argument("--workers", type=int, default=8, help="threads of the final validation")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_data_broden)

    d = data_sub.add_parser(
        "resize", help="an existing Broden-format dataset at another size",
        description="Write SRC at --size px (images bilinear to size x size, masks nearest to "
                    "size // 2, as Broden) into --out, then validate it. Resumes when "
                    "interrupted.")
    d.add_argument("src", help="a Broden-format dataset directory")
    d.add_argument("--size", type=int, required=True, help="image side in pixels, e.g. 299")
    d.add_argument("--out", required=True, help="dataset directory to create")
    d.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    d.add_argument("--workers", type=int, help="threads (default: CPU count, at most 8)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_data_resize)


def _finish(report, notes, done: str) -> int:
    for note in notes:
        print(f"note: {note}")
    print(report.summary_text())
    if report.ok:
        print(done)
        return 0
    return 1


def cmd_data_broden(args: argparse.Namespace) -> int:
    from netdissect.data.download import RetryPolicy, fetch_broden
    policy = RetryPolicy(retries=max(0, args.retries), backoff=max(0.0, args.backoff),
                         timeout=args.timeout)
    result = fetch_broden(args.out, version=args.version, url=args.url, zip_path=args.zip_path,
                          sha256=args.sha256, keep_zip=args.keep_zip, policy=policy,
                          progress=not args.quiet, workers=args.workers)
    return _finish(result.report, result.notes, f"Broden from {result.source} is in "
                   f"{result.path}")


def cmd_data_resize(args: argparse.Namespace) -> int:
    from netdissect.data.resize import resize_broden
    result = resize_broden(args.src, args.out, args.size, workers=args.workers,
                           quality=args.quality, progress=not args.quiet)
    notes = list(result.notes)
    if result.reused:
        notes.append(f"{result.reused} files reused from the interrupted run, "
                     f"{result.written} written")
    return _finish(result.report, notes, f"{result.images} images at {args.size} px "
                   f"(masks {args.size // 2} px) are in {result.path}")
