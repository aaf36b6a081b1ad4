"""Cost of rendering the report against the dissection it shows, and the report's size.

    python benchmarks/report_cost.py [--images 1000] [--layers features.18] [--repeats 1]

Dissects MobileNetV2 (ImageNet weights) at --layers (default features.18: 1,280 units) over
--images synthetic 224 px images without a report, then renders the report of that run, both
in this one process, and prints both times, the ratio (target: <= 0.10), where the report's
time goes, and the report's size, file count and hard links (target: < 25 MB, < 400 files,
none). Twice: a first run (an empty label cache, which the dissection writes and its report
reads) and a later run (the labels already cached: a faster dissection, the same report). Best
of --repeats for each. Wall times on a shared machine move with its load, so the CPU seconds of
each (this process and its workers) are printed too.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import ensure_data  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (loader and render workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=Path("runs/bench-data"))
    parser.add_argument("--layers", nargs="+", default=["features.18"])
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import torch

    from netdissect.data.broden import BrodenDataset
    from netdissect.engine.pipeline import dissect
    from netdissect.models.specs import load_model
    from netdissect.report import render_report

    data = ensure_data(args.data, args.images)
    ds = BrodenDataset(data, limit=args.images)
    loaded = load_model("torchvision:mobilenet_v2", weights="IMAGENET1K_V1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MobileNetV2 "
          f"{', '.join(args.layers)} over {len(ds)} images")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        for name, later in (("first run", False), ("later run", True)):
            dis, rep, dis_cpu, rep_cpu, parts = [], [], [], [], None
            for r in range(args.repeats):
                cache = Path(tmp) / ("labels" if later else f"labels-{r}")   # a first run: an empty cache
                if later and r == 0:
                    dissect(loaded, args.layers, ds, out=out, batch_size=args.batch_size, workers=args.workers,
                            progress=False, force=True, label_cache=cache)
                start, cpu = time.perf_counter(), cpu_seconds()
                result = dissect(loaded, args.layers, ds, out=out, batch_size=args.batch_size,
                                 workers=args.workers, progress=False, force=True, label_cache=cache,
                                 keep_report_images=True)
                dis.append(time.perf_counter() - start)
                dis_cpu.append(cpu_seconds() - cpu)
                timings: dict = {}
                start, cpu = time.perf_counter(), cpu_seconds()
                render_report(out, timings=timings, images=result.report_images)
                rep.append(time.perf_counter() - start)
                rep_cpu.append(cpu_seconds() - cpu)
                if parts is None or rep[-1] == min(rep):
                    parts = timings
            d, r = min(dis), min(rep)
            units = sum(layer.units for layer in result.layers.values())
            print(f"{name}: dissection ({units} units, no report) {d:5.1f} s, report {r:5.1f} s "
                  f"({', '.join(f'{k} {v:.1f} s' for k, v in parts.items())})")
            print(f"  ratio report / dissection (target <= 0.10): {r / d:5.3f}; CPU seconds: dissection "
                  f"{min(dis_cpu):.1f}, report {min(rep_cpu):.1f}, ratio {min(rep_cpu) / min(dis_cpu):5.3f}")
        files = [p for p in (out / "report").rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        links = sum(1 for p in files if p.stat().st_nlink > 1 or p.is_symlink())
        print(f"report: {size / 1e6:.1f} MB in {len(files)} files, {links} links "
              "(targets: < 25 MB, < 400 files, no links)")


if __name__ == "__main__":
    main()
