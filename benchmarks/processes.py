"""One dissection run by 1, 2 (and 4 where the cores allow) processes, side by side, in one run.

    python benchmarks/processes.py [--images 200] [--procs 1 2 4]

MobileNetV2 at features.3/10/18 on the same synthetic images. Each sharded run is launched
with torchrun (gloo) on this machine; the cores are split evenly between the processes (torch
threads and data loader workers), so the runs use the same hardware. Prints wall time, images/s,
the peak resident memory of each process, and whether the result files are byte-identical to the
one-process run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from overhead import LAYERS, ensure_data  # noqa: E402

RESULT_FILES = ("thresholds.npy", "iou.npz", "topk.npz", "units.csv")


def worker(args) -> None:
    """One rank (or the single process): dissect, then report its peak memory."""
    import warnings
    warnings.simplefilter("ignore")
    from netdissect.engine.pipeline import dissect
    dissect("torchvision:mobilenet_v2", LAYERS, args.data, out=args.out, weights="IMAGENET1K_V1",
            limit=args.images, batch_size=args.batch_size, workers=args.workers, progress=False,
            force=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loaders = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("RESULT " + json.dumps({"rank": int(os.environ.get("RANK", 0)), "peak_mib": peak,
                                  "loader_peak_mib": loaders}), flush=True)


def launch(procs: int, args, out: Path) -> dict:
    cores = os.cpu_count() or 1
    threads, workers = max(1, cores // procs), max(1, cores // procs)
    worker_args = [str(Path(__file__).resolve()), "--worker", "--data", str(args.data), "--out", str(out),
                   "--images", str(args.images), "--batch-size", str(args.batch_size),
                   "--workers", str(workers)]
    if procs == 1:
        command = [sys.executable] + worker_args
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(procs)] + worker_args
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-4000:])
    ranks = sorted((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")),
                   key=lambda r: r["rank"])
    return {"seconds": seconds, "ranks": ranks, "threads": threads, "workers": workers}


def same_bytes(a: Path, b: Path) -> bool:
    return all((a / layer / name).read_bytes() == (b / layer / name).read_bytes()
               for layer in LAYERS for name in RESULT_FILES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--data", type=Path, default=Path("runs/bench-data"))
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--procs", type=int, nargs="+")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    cores = os.cpu_count() or 1
    procs = args.procs or [p for p in (1, 2, 4) if p <= max(cores, 2)]
    ensure_data(args.data, args.images)
    print(f"{cores} cores; MobileNetV2 {', '.join(LAYERS)}; {args.images} images, batch {args.batch_size}; "
          "includes process start-up and model loading")
    print(f"{'procs':>5}  {'threads+loaders':>15}  {'wall s':>7}  {'images/s':>8}  "
          f"{'peak MiB per process (main)':>28}  identical to 1")
    with tempfile.TemporaryDirectory() as tmp:
        first = None
        for p in procs:
            out = Path(tmp) / f"procs{p}"
            r = launch(p, args, out)
            first = first or out
            peaks = ", ".join(f"{x['peak_mib']:.0f}" for x in r["ranks"])
            print(f"{p:5d}  {r['threads']:>7d}+{r['workers']:<7d}  {r['seconds']:7.1f}  "
                  f"{args.images / r['seconds']:8.2f}  {peaks:>28}  {same_bytes(first, out)}", flush=True)


if __name__ == "__main__":
    main()
