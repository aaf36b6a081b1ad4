"""Training dynamics: dissect a series of checkpoints of one architecture.

Every checkpoint is dissected with the same dataset and the same threshold procedure into its
own run directory (``OUT/runs/step_<N>``); a finished run whose manifest (model weights digest,
dataset, parameters) matches is reused, so adding checkpoints to a series only dissects the new
ones. The training step of a file is the last integer in its name (``ckpt_epoch2_step1200.pth``
-> 1200) unless ``--steps`` gives them. Writes checkpoints.csv / .json and a figure of unique
detectors per category against the step (checkpoints.svg / .png).
"""
from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import List, Optional, Sequence

from netdissect.errors import ModelError, NetDissectError

_GLOB_CHARS = re.compile(r"[*?\[]")


def parse_step(path) -> Optional[int]:
    """The last integer in the file name (its extension left out), or None."""
    name = Path(path).name
    stem = name.split(".")[0] if "." in name else name
    numbers = re.findall(r"\d+", stem) or re.findall(r"\d+", name)
    return int(numbers[-1]) if numbers else None


def expand_checkpoints(items: Sequence[str]) -> List[Path]:
    """Files and glob patterns (expanded here, so quoting them is fine) -> existing files."""
    files: List[Path] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            matches = [path]
        elif _GLOB_CHARS.search(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True) if Path(m).is_file())
            if not matches:
                raise ModelError(f"{item}: the pattern matches no checkpoint file")
        elif path.is_dir():
            raise ModelError(f"{item}: is a directory; give the files, or a pattern such as '{item}/*.pth'")
        else:
            raise ModelError(f"{item}: checkpoint file not found")
        for m in matches:
            if m not in files:
                files.append(m)
    if not files:
        raise ModelError("no checkpoint files given")
    return files


def assign_steps(files: Sequence[Path], steps: Optional[Sequence[int]] = None) -> List[int]:
    if steps is not None:
        if len(steps) != len(files):
            raise NetDissectError(f"--steps gives {len(steps)} step(s) for {len(files)} checkpoint file(s); "
                                  "give one step per file, in the order of the files")
        out = [int(s) for s in steps]
    else:
        out = []
        for f in files:
            step = parse_step(f)
            if step is None:
                raise NetDissectError(f"{f}: no integer in the file name to read the training step from; "
                                      "pass --steps with one step per file")
            out.append(step)
    seen = {}
    for f, s in zip(files, out):
        if s in seen:
            raise NetDissectError(f"{seen[s]} and {f} have the same training step {s}; rename them or pass --steps")
        seen[s] = f
    return out


def dissect_series(model_spec, files: Sequence[Path], steps: Sequence[int], layers: Sequence[str], dataset,
                   runs_dir, *, weights: Optional[str] = None, mean=None, std=None, progress: bool = True,
                   force: bool = False, log=None, **params) -> List[dict]:
    """Dissect each checkpoint (or reuse its finished run): one summary row per (step, layer)."""
    import torch

    from netdissect.data.broden import BrodenDataset, open_dataset
    from netdissect.engine.pipeline import DissectConfig, dissect, manifest
    from netdissect.experiments.common import log as default_log
    from netdissect.models.specs import load_model
    from netdissect.runs import finished_summary

    log = log or (lambda msg: default_log(msg, quiet=not progress))
    if params.get("categories") is not None:
        params["categories"] = tuple(params["categories"])
    ds = dataset if isinstance(dataset, BrodenDataset) else open_dataset(
        dataset, split=params.get("split"), categories=params.get("categories"), limit=params.get("limit"))
    checkpoint_every = params.pop("checkpoint_every", 50)
    config = DissectConfig(layers=tuple(layers), **params)
    rows = []
    for f, step in sorted(zip(files, steps), key=lambda fs: fs[1]):
        spec = model_spec
        if callable(model_spec) and not isinstance(model_spec, (str, torch.nn.Module)):
            spec = model_spec()  # a factory: a fresh module per checkpoint
        loaded = load_model(spec, weights=weights, checkpoint=f, mean=mean, std=std)
        run_dir = Path(runs_dir) / f"step_{step}"
        summary = None if force else finished_summary(run_dir, manifest(loaded, ds, config))
        if summary is None:
            log(f"dissecting {f} (step {step}) -> {run_dir}")
            summary = dissect(loaded, list(layers), ds, run_dir, progress=progress, force=force,
                              checkpoint_every=checkpoint_every, **params).summary()
        else:
            log(f"reusing the finished run {run_dir} (step {step})")
        for layer in layers:
            s = summary["layers"][layer]
            rows.append({"step": step, "checkpoint": str(f), "layer": layer, "run": str(run_dir),
                         "units": s["units"], "detectors": s["detectors"],
                         "unique_detectors": s["unique_detectors"],
                         "unique_per_category": s["unique_per_category"],
                         "detectors_per_category": s["detectors_per_category"],
                         "iou_threshold": s["iou_threshold"]})
    return rows


def run_checkpoints(model_spec, checkpoints: Sequence, layers: Sequence[str], dataset, out,
                    steps: Optional[Sequence[int]] = None, **kw) -> dict:
    """Dissect a checkpoint series and write checkpoints.csv / .json / .svg / .png into ``out``."""
    from netdissect.atomic import atomic_write_json
    from netdissect.experiments.common import write_csv
    from netdissect.experiments.compare import row_categories

    if isinstance(layers, str):
        layers = [layers]
    out = Path(out)
    files = expand_checkpoints([str(c) for c in checkpoints])
    steps = assign_steps(files, steps)
    rows = dissect_series(model_spec, files, steps, layers, dataset, out / "runs", **kw)
    cats = row_categories(rows)
    header = ["step", "layer", "units", "detectors", "unique_detectors"] + [f"unique_{c}" for c in cats] + \
        [f"detectors_{c}" for c in cats] + ["checkpoint"]
    write_csv(out / "checkpoints.csv", header,
              [[r["step"], r["layer"], r["units"], r["detectors"], r["unique_detectors"]]
               + [r["unique_per_category"].get(c, 0) for c in cats]
               + [r["detectors_per_category"].get(c, 0) for c in cats] + [r["checkpoint"]] for r in rows])
    info = {"model": str(model_spec), "layers": list(layers), "categories": cats, "rows": rows}
    atomic_write_json(out / "checkpoints.json", info)
    plot_checkpoints(rows, list(layers), cats, out, title=f"{model_spec}: training dynamics")
    return info


def plot_checkpoints(rows: Sequence[dict], layers: Sequence[str], categories: Sequence[str], out: Path,
                     stem: str = "checkpoints", title: Optional[str] = None, step_label: str = "training step"):
    from netdissect.experiments.style import plotting
    with plotting():
        return _plot(rows, layers, categories, out, stem, title, step_label)


def _plot(rows, layers, categories, out, stem, title, step_label):
    from netdissect.experiments.style import line_chart, new_figure, save_figure
    fig, axes = new_figure(6.2 * len(layers), 4.0, ncols=len(layers))
    axes = axes if isinstance(axes, list) else [axes]
    for ax, layer in zip(axes, layers):
        sub = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["step"])
        x = [r["step"] for r in sub]
        shown = [c for c in categories if any(r["unique_per_category"].get(c, 0) for r in sub)] or list(categories)
        line_chart(ax, x, {c: [r["unique_per_category"].get(c, 0) for r in sub] for c in shown},
                   total=[r["unique_detectors"] for r in sub], total_label="all categories")
        positive = [s for s in x if s > 0]
        if positive and max(positive) / min(positive) >= 100:
            ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xlabel(step_label)
        ax.set_ylabel("unique detectors")
        units = sub[0]["units"] if sub else 0
        ax.set_title(f"{layer} ({units} units)")
        acc = [r.get("val_accuracy") for r in sub]
        if sub and all(a is not None for a in acc):  # the task's accuracy on a second axis
            from netdissect.experiments.style import CONTROL_COLOR
            twin = ax.twinx()
            twin.plot(x, acc, color=CONTROL_COLOR, linestyle=":", marker="^", markersize=4, linewidth=1.6,
                      label="held-out accuracy (right axis)")
            twin.set_ylim(0, 1)
            twin.set_ylabel("held-out accuracy", color="#666666")
            twin.grid(False)
            twin.spines["top"].set_visible(False)
            handles = ax.get_legend_handles_labels()
            more = twin.get_legend_handles_labels()
            ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", bbox_to_anchor=(1.2, 1.0),
                      fontsize=8)
    if not ax.get_legend():
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    return save_figure(fig, out, stem)


def command(args) -> int:
    from netdissect.cli.options import dissect_params
    from netdissect.experiments.common import format_table, publish
    weights = None if str(args.weights).lower() == "none" else args.weights
    info = run_checkpoints(args.model, args.checkpoints, args.layers, args.dataset, args.out, steps=args.steps,
                           weights=weights, mean=args.mean, std=args.std, progress=not args.quiet,
                           force=args.force, **dissect_params(args))
    cats = info["categories"]
    print(format_table(["step", "layer", "detectors", "unique"] + cats,
                       [[r["step"], r["layer"], r["detectors"], r["unique_detectors"]]
                        + [r["unique_per_category"].get(c, 0) for c in cats] for r in info["rows"]]))
    print(f"(category columns: unique detectors)\nwrote {Path(args.out) / 'checkpoints.csv'}, checkpoints.svg, "
          f"checkpoints.png; run directories in {Path(args.out) / 'runs'}")
    publish(args.out, "Training dynamics", "unique detectors per category against the training step")
    return 0
