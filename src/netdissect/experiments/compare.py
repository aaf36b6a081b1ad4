"""Several run directories side by side: layers of one model, several models, training tasks.

Reads only each run's ``summary.json`` (counts) and ``config.json`` (what was dissected), so it
works on runs from any machine. One column per (run, layer): a table (compare.csv, printed) and
a figure with grouped bars of unique detectors per category and of the share of units that are
detectors (compare.svg / compare.png).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from netdissect.errors import NetDissectError, RunError
from netdissect.runs import read_run


def default_names(paths: Sequence[Path]) -> List[str]:
    """Directory names, lengthened with their parents until they are distinct."""
    paths = [Path(p).resolve() for p in paths]
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > max(len(p.parts) for p in paths):
            return names
        depth += 1


def compare_rows(runs: Sequence, names: Optional[Sequence[str]] = None,
                 layers: Optional[Sequence[str]] = None) -> List[dict]:
    """One row per (run, layer): counts per category, detector share; rows keep run order and
    each run's layer order."""
    paths = [Path(r) for r in runs]
    if not paths:
        raise NetDissectError("give at least one run directory")
    if names is not None and len(names) != len(paths):
        raise NetDissectError(f"--names gives {len(names)} name(s) for {len(paths)} run directories; "
                              "give one name per run directory")
    names = list(names) if names is not None else default_names(paths)
    rows = []
    for path, name in zip(paths, names):
        run = read_run(path)
        available = list(run["summary"]["layers"])
        chosen = available if not layers else [lay for lay in layers if lay in available]
        if layers and not chosen:
            raise RunError(f"{path}: has none of the layers {', '.join(layers)} (it has {', '.join(available)})")
        model = (run["config"].get("manifest", {}).get("model", {}) or {})
        for layer in chosen:
            s = run["summary"]["layers"][layer]
            units = int(s["units"])
            label = name if len(chosen) == 1 else f"{name}:{layer}"
            rows.append({
                "name": label, "run": str(path), "layer": layer,
                "model": model.get("spec", ""), "checkpoint": model.get("checkpoint") or "",
                "units": units, "detectors": int(s["detectors"]),
                "detector_share": s["detectors"] / units if units else 0.0,
                "unique_detectors": int(s["unique_detectors"]),
                "unique_per_category": dict(s.get("unique_per_category", {})),
                "detectors_per_category": dict(s.get("detectors_per_category", {})),
                "iou_threshold": s.get("iou_threshold"),
                "images": run["summary"].get("images"),
            })
    thresholds = {r["iou_threshold"] for r in rows}
    if len(thresholds) > 1:
        import warnings
        warnings.warn(f"the runs use different IoU thresholds ({sorted(thresholds)}): their counts are not "
                      "directly comparable", stacklevel=2)
    return rows


def row_categories(rows: Sequence[dict]) -> List[str]:
    from netdissect.experiments.style import ordered_categories
    cats: List[str] = []
    for r in rows:
        cats += list(r["unique_per_category"]) + list(r["detectors_per_category"])
    return ordered_categories(cats)


def table(rows: Sequence[dict], categories: Sequence[str]):
    header = ["name", "layer", "model", "units", "detectors", "detector_share", "unique_detectors"] + \
        [f"unique_{c}" for c in categories] + [f"detectors_{c}" for c in categories] + ["run"]
    body = [[r["name"], r["layer"], r["model"], r["units"], r["detectors"], r["detector_share"],
             r["unique_detectors"]] + [r["unique_per_category"].get(c, 0) for c in categories]
            + [r["detectors_per_category"].get(c, 0) for c in categories] + [r["run"]] for r in rows]
    return header, body


def run_compare(runs: Sequence, out, names: Optional[Sequence[str]] = None,
                layers: Optional[Sequence[str]] = None, title: Optional[str] = None) -> dict:
    """Write compare.csv, compare.json and the compare.svg/.png figure into ``out``."""
    from netdissect.atomic import atomic_write_json
    from netdissect.experiments.common import write_csv
    out = Path(out)
    rows = compare_rows(runs, names, layers)
    cats = row_categories(rows)
    header, body = table(rows, cats)
    write_csv(out / "compare.csv", header, body)
    atomic_write_json(out / "compare.json", {"categories": cats, "rows": rows})
    plot_compare(rows, cats, out, title=title)
    return {"rows": rows, "categories": cats, "header": header, "body": body}


def plot_compare(rows: Sequence[dict], categories: Sequence[str], out: Path, stem: str = "compare",
                 title: Optional[str] = None, extra: Optional[Dict[str, Sequence[float]]] = None):
    """Top: unique detectors per category. Bottom: share of units that are detectors, per
    category (the group's total share is written above it). ``extra``: a third panel of
    named per-row values (e.g. accuracy)."""
    from netdissect.experiments.style import plotting
    with plotting():
        return _plot_compare(rows, categories, out, stem, title, extra)


def _plot_compare(rows, categories, out, stem, title, extra):
    from netdissect.experiments.style import TOTAL_COLOR, grouped_bars, integer_yaxis, new_figure, save_figure
    groups = [r["name"] for r in rows]
    shown = [c for c in categories if any(r["unique_per_category"].get(c, 0) or r["detectors_per_category"].get(c, 0)
                                          for r in rows)] or list(categories)
    panels = 3 if extra else 2
    width = min(max(6.0, 1.1 * len(groups) * max(len(shown), 1) * 0.35 + 2.5), 22.0)
    fig, axes = new_figure(width, 3.3 * 2 + (2.2 if extra else 0), nrows=panels,
                           gridspec_kw={"height_ratios": [3.3, 3.3, 2.2][:panels]})
    ax1, ax2 = axes[0], axes[1]
    grouped_bars(ax1, groups, shown, [[r["unique_per_category"].get(c, 0) for c in shown] for r in rows])
    for i, r in enumerate(rows):
        ax1.annotate(f"{r['unique_detectors']} unique", (i, 1.0), xycoords=("data", "axes fraction"),
                     ha="center", va="bottom", fontsize=8, color=TOTAL_COLOR)
    integer_yaxis(ax1)
    ax1.set_ylabel("unique detectors")
    ax1.set_title("Unique detectors per category", pad=16)
    ax1.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    shares = [[100.0 * r["detectors_per_category"].get(c, 0) / r["units"] if r["units"] else 0.0 for c in shown]
              for r in rows]
    grouped_bars(ax2, groups, shown, shares, fmt="{:.1f}")
    for i, r in enumerate(rows):
        ax2.annotate(f"{100 * r['detector_share']:.0f}% of {r['units']}", (i, 1.0),
                     xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8, color=TOTAL_COLOR)
    ax2.set_ylabel("% of units that are detectors")
    ax2.set_title("Detectors per category, as a share of the layer's units", pad=16)
    if extra:
        from netdissect.experiments.style import NEUTRAL_COLOR
        ax3 = axes[2]
        name, values = next(iter(extra.items()))
        ax3.bar(range(len(groups)), values, color=NEUTRAL_COLOR, width=0.5)
        for i, v in enumerate(values):
            ax3.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax3.set_xticks(range(len(groups)), groups)
        ax3.set_ylim(0, max(1.0, max(values, default=0) * 1.1))
        ax3.set_ylabel(name)
        ax3.set_title(name.capitalize())
        ax3.grid(False, axis="x")
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    return save_figure(fig, out, stem)


def command(args) -> int:
    from netdissect.experiments.common import format_table, publish
    result = run_compare(args.runs, args.out, names=args.names, layers=args.layers)
    cats = result["categories"]
    header = ["name", "units", "detectors", "share", "unique"] + cats
    print(format_table(header, [[r["name"], r["units"], r["detectors"], r["detector_share"], r["unique_detectors"]]
                                + [r["unique_per_category"].get(c, 0) for c in cats] for r in result["rows"]]))
    print(f"(category columns: unique detectors)\nwrote {Path(args.out) / 'compare.csv'}, compare.svg, compare.png")
    publish(args.out, "Comparison of runs", "unique detectors per category and share of units that are detectors")
    return 0
