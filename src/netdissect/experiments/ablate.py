"""Ablation: zero chosen units of a layer and measure the change in classification accuracy.

The units are chosen from the dissection (``--category object``: the layer's detectors whose
label is an object; ``--label car``; ``--top N``: the N units with the highest IoU), at random
(``--random N --seed S``) or by number (``--units``). The same number of other units, drawn at
random, is ablated as a control (``--controls`` sets, averaged), so a drop can be told apart
from the effect of removing any units at all.

The labeled images are a Broden-format dataset's image-level scene labels (the synthetic scene
task of ``netdissect experiment conditions``; class index = position of the scene label among
the dataset's scene labels in label-number order) or an ImageFolder-style directory (one
folder per class: named by class index, by the model's class name, or in the model's class order).
Output: ablate.csv / ablate.json and ablate.svg / ablate.png.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from netdissect.errors import NetDissectError

# --------------------------------------------------------------------------- choosing units


def select_units(units: int, layer=None, *, category: Optional[str] = None, label: Optional[str] = None,
                 top: Optional[int] = None, random: Optional[int] = None, explicit: Optional[Sequence[int]] = None,
                 seed: int = 0, where: str = "the run") -> Tuple[List[int], str]:
    """(sorted unit indices, a short tag describing the choice)."""
    given = [v is not None for v in (category, label, top, random, explicit)]
    if sum(given) != 1:
        raise NetDissectError("choose the units one way: --category, --label, --top, --random or --units")
    if (category is not None or label is not None or top is not None) and layer is None:
        raise NetDissectError("--category, --label and --top choose units by their dissection: pass --run")
    if layer is not None and layer.units != units:
        raise NetDissectError(f"{where}: the layer was dissected with {layer.units} units but the model's layer has "
                              f"{units}; pass the run directory of this model")
    if category is not None or label is not None:
        labels = layer.unit_labels()
        detectors = [k for k, (_, _, iou) in enumerate(labels) if iou > layer.iou_threshold]
        field, what, value = (1, "category", category) if category is not None else (0, "label", label)
        chosen = [k for k in detectors if labels[k][field] == value]
        if not chosen:
            have = sorted({labels[k][field] for k in detectors})
            raise NetDissectError(f"{where}: no detector of {what} {value!r} in layer {layer.name!r} "
                                  f"(detected {what} values: {', '.join(have[:20]) or 'none'})")
        return sorted(chosen), f"{what}_{value}"
    if top is not None:
        _check_count(top, units)
        best = layer.best_iou
        order = sorted(range(units), key=lambda k: (-float(best[k]), k))
        return sorted(order[:top]), f"top_{top}"
    if random is not None:
        _check_count(random, units)
        rng = np.random.default_rng(seed)
        return sorted(int(k) for k in rng.choice(units, size=random, replace=False)), f"random_{random}_seed{seed}"
    bad = [k for k in explicit if not 0 <= k < units]
    if bad:
        raise NetDissectError(f"unit {bad[0]} does not exist: the layer has units 0..{units - 1}")
    chosen = sorted(set(int(k) for k in explicit))
    return chosen, "units_" + "_".join(str(k) for k in chosen[:8]) + ("_etc" if len(chosen) > 8 else "")


def _check_count(n: int, units: int) -> None:
    if not 1 <= n <= units:
        raise NetDissectError(f"cannot choose {n} units: the layer has {units}")


def control_sets(units: int, chosen: Sequence[int], n_sets: int, seed: int) -> List[List[int]]:
    """Random sets of len(chosen) units, drawn from the units not chosen (all units when too few)."""
    if n_sets <= 0 or not chosen:
        return []
    rest = [k for k in range(units) if k not in set(chosen)]
    pool = rest if len(rest) >= len(chosen) else list(range(units))
    rng = np.random.default_rng(seed + 7919)
    return [sorted(int(k) for k in rng.choice(pool, size=len(chosen), replace=False)) for _ in range(n_sets)]


# --------------------------------------------------------------------------- evaluating

@contextmanager
def zeroed(module: torch.nn.Module, layer: str, units: Sequence[int], layout=None):
    """Within the block, ``layer``'s output has ``units`` set to 0 (a forward hook), in the
    layer's own layout (``layouts.Layout``; default N x K x ...): a unit of a token or NHWC map
    is its channel, zeroed at every position (every token, the class token too)."""
    from netdissect.models.layouts import Layout, replace_selected, select_output, split_layer
    if not units:
        yield
        return
    target = dict(module.named_modules())[split_layer(layer)[0]]
    index = torch.tensor(list(units), dtype=torch.int64)
    layout = layout or Layout("nchw")

    def hook(mod, inputs, output):
        value = select_output(output, layer)
        if value.dim() < 2:
            raise NetDissectError(f"layer {layer!r} does not output a N x K (x h x w) tensor; ablate a "
                                  "layer that `netdissect layers` marks dissectable")
        return replace_selected(output, layer, layout.zero_units(value, index))

    handle = target.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def evaluate(loaded, layer: str, labeled, conditions: Dict[str, Sequence[int]], batch_size: int = 32,
             device: str = "auto", progress: bool = False) -> Dict[str, dict]:
    """Accuracy (overall and per class) of the model with each condition's units zeroed."""
    from netdissect.engine.forward import Normalizer, resolve_device
    from netdissect.models.capture import check_layer_names, layer_layout
    dev = resolve_device(device)
    module = loaded.module.eval().to(dev)
    check_layer_names(module, [layer])
    normalize = Normalizer(loaded.mean, loaded.std, dev)
    n_classes = len(labeled.class_names)
    stats = {name: {"correct": 0, "class_correct": np.zeros(n_classes, np.int64)} for name in conditions}
    class_total = np.zeros(n_classes, np.int64)
    from netdissect.experiments.common import batches
    with torch.no_grad():
        layout = None
        for images, targets in batches(labeled, batch_size):
            x = normalize(images)
            if layout is None:
                layout = layer_layout(module, layer, tuple(x.shape[-2:]))
            t = targets.to(dev)
            class_total += np.bincount(targets.numpy(), minlength=n_classes)[:n_classes]
            for name, units in conditions.items():
                with zeroed(module, layer, units, layout):
                    logits = module(x)
                if logits.dim() != 2 or logits.shape[1] != n_classes:
                    raise NetDissectError(f"the model outputs shape {tuple(logits.shape)} but the labeled set has "
                                          f"{n_classes} classes ({labeled.source}); evaluate a classifier of "
                                          "these classes")
                hit = (logits.argmax(1) == t).cpu().numpy()
                stats[name]["correct"] += int(hit.sum())
                stats[name]["class_correct"] += np.bincount(targets.numpy()[hit], minlength=n_classes)[:n_classes]
    total = int(class_total.sum())
    out = {}
    for name, s in stats.items():
        per_class = {labeled.class_names[c]: (float(s["class_correct"][c] / class_total[c]) if class_total[c] else None)
                     for c in range(n_classes)}
        out[name] = {"units": list(conditions[name]), "accuracy": s["correct"] / total if total else 0.0,
                     "correct": s["correct"], "images": total, "per_class": per_class}
    out["_class_images"] = {labeled.class_names[c]: int(class_total[c]) for c in range(n_classes)}
    return out


# --------------------------------------------------------------------------- the experiment

def run_ablation(loaded, layer: str, dataset, out=None, run=None, *, category=None, label=None, top=None,
                 random=None, units=None, seed: int = 0, controls: int = 3, split=None, limit=None,
                 size: int = 224, batch_size: int = 32, device: str = "auto") -> dict:
    from netdissect.atomic import atomic_write_json
    from netdissect.experiments.common import open_labeled, write_csv
    from netdissect.experiments.rotation import layer_units
    from netdissect.runs import load_layer

    labeled = open_labeled(dataset, loaded, size=size, split=split, limit=limit)
    probe = labeled.load(labeled.items[0][0])
    k = layer_units(loaded.module, layer, probe.shape[:2])
    dissected = load_layer(run, layer) if run is not None else None
    chosen, tag = select_units(k, dissected, category=category, label=label, top=top, random=random,
                               explicit=units, seed=seed, where=str(run))
    if out is None:
        if run is None:
            raise NetDissectError("pass --out (or --run, whose ablate/ folder is the default)")
        out = Path(run) / "ablate" / tag
    out = Path(out)
    ctrl = control_sets(k, chosen, controls, seed)
    conditions = {"baseline": [], "ablated": chosen}
    for i, c in enumerate(ctrl):
        conditions[f"control_{i + 1}"] = c
    results = evaluate(loaded, layer, labeled, conditions, batch_size=batch_size, device=device)
    class_images = results.pop("_class_images")
    base = results["baseline"]["accuracy"]
    control_acc = [results[f"control_{i + 1}"]["accuracy"] for i in range(len(ctrl))]
    labels = dissected.unit_labels() if dissected is not None else None
    info = {
        "model": loaded.spec, "weights": loaded.weights, "checkpoint": loaded.checkpoint, "layer": layer,
        "units_in_layer": k, "run": None if run is None else str(run), "dataset": labeled.source,
        "images": results["baseline"]["images"], "class_images": class_images,
        "selection": {"how": tag, "category": category, "label": label, "top": top, "random": random, "seed": seed,
                      "units": chosen,
                      "labels": None if labels is None else [
                          {"unit": u, "label": labels[u][0], "category": labels[u][1], "iou": labels[u][2]}
                          for u in chosen]},
        "baseline_accuracy": base, "ablated_accuracy": results["ablated"]["accuracy"],
        "ablated_change": results["ablated"]["accuracy"] - base,
        "control_accuracy": float(np.mean(control_acc)) if control_acc else None,
        "control_change": float(np.mean(control_acc)) - base if control_acc else None,
        "control_accuracies": control_acc, "conditions": results,
    }
    rows = []
    for name, r in results.items():
        rows.append([name, len(r["units"]), r["accuracy"], r["accuracy"] - base]
                    + [r["per_class"][c] for c in labeled.class_names]
                    + [" ".join(str(u) for u in r["units"])])
    write_csv(out / "ablate.csv", ["condition", "units_zeroed", "accuracy", "change"]
              + [f"accuracy_{c}" for c in labeled.class_names] + ["units"], rows)
    atomic_write_json(out / "ablate.json", info)
    plot_ablation(info, labeled.class_names, out)
    info["out"] = str(out)
    return info


def plot_ablation(info: dict, class_names: Sequence[str], out: Path):
    from netdissect.experiments.style import plotting
    with plotting():
        return _plot(info, class_names, out)


def _plot(info, class_names, out):
    from netdissect.experiments.style import (
        BASELINE_COLOR,
        CONTROL_COLOR,
        NEUTRAL_COLOR,
        category_color,
        new_figure,
        save_figure,
    )
    sel = info["selection"]
    color = category_color(sel["category"]) if sel["category"] else NEUTRAL_COLOR
    per_class = len(class_names) <= 30
    fig, axes = new_figure(4.5 + (0.5 * len(class_names) + 2.5 if per_class else 0), 4.0,
                           ncols=2 if per_class else 1,
                           gridspec_kw={"width_ratios": [1.3, max(1.5, 0.35 * len(class_names))]} if per_class else {})
    axes = axes if isinstance(axes, list) else [axes]
    ax = axes[0]
    n = len(sel["units"])
    names = ["baseline", f"ablated\n{n} units"]
    values = [info["baseline_accuracy"], info["ablated_accuracy"]]
    colors = [BASELINE_COLOR, color]
    ctrl = info["control_accuracies"]
    if ctrl:
        names.append(f"random\n{n} units" + (f" x{len(ctrl)}" if len(ctrl) > 1 else ""))
        values.append(info["control_accuracy"])
        colors.append(CONTROL_COLOR)
    bars = ax.bar(range(len(values)), values, color=colors, width=0.6)
    if ctrl and len(ctrl) > 1:
        ax.errorbar([2], [info["control_accuracy"]], yerr=[[info["control_accuracy"] - min(ctrl)],
                                                          [max(ctrl) - info["control_accuracy"]]],
                    color="#333333", capsize=4, linewidth=1)
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(values)), names, fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.grid(False, axis="x")
    what = sel["how"].replace("_", " ")
    ax.set_title(f"{info['layer']}: {what}")
    if per_class:
        ax2 = axes[1]
        x = np.arange(len(class_names))
        conds = [("baseline", BASELINE_COLOR, "baseline"), ("ablated", color, "ablated")]
        series = {"baseline": [info["conditions"]["baseline"]["per_class"][c] or 0 for c in class_names],
                  "ablated": [info["conditions"]["ablated"]["per_class"][c] or 0 for c in class_names]}
        if ctrl:
            series["control"] = [float(np.mean([info["conditions"][f"control_{i + 1}"]["per_class"][c] or 0
                                                for i in range(len(ctrl))])) for c in class_names]
            conds.append(("control", CONTROL_COLOR, "random control (mean)"))
        w = 0.8 / len(conds)
        for i, (key, col, lab) in enumerate(conds):
            ax2.bar(x - 0.4 + w * (i + 0.5), series[key], width=w * 0.92, color=col, label=lab)
        ax2.set_xticks(x, class_names, rotation=30 if len(class_names) > 6 else 0,
                       ha="right" if len(class_names) > 6 else "center", fontsize=8)
        ax2.set_ylim(0, 1.08)
        ax2.set_ylabel("accuracy per class")
        ax2.set_title("Per class")
        ax2.grid(False, axis="x")
        ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.suptitle(f"{info['model']}: zeroing units ({info['images']} images)", fontsize=10, x=0.01, ha="left")
    return save_figure(fig, out, "ablate")


def command(args) -> int:
    from netdissect.experiments.common import format_table, load_model_args, publish
    loaded = load_model_args(args)
    info = run_ablation(loaded, args.layer, args.dataset, args.out, args.run, category=args.category,
                        label=args.label, top=args.top, random=args.random, units=args.units, seed=args.seed,
                        controls=args.controls, split=args.split, limit=args.limit, size=args.size,
                        batch_size=args.batch_size, device=args.device)
    rows = [["baseline", 0, info["baseline_accuracy"], 0.0],
            [f"ablated ({info['selection']['how']})", len(info["selection"]["units"]), info["ablated_accuracy"],
             info["ablated_change"]]]
    if info["control_accuracy"] is not None:
        rows.append([f"random control (mean of {len(info['control_accuracies'])})", len(info["selection"]["units"]),
                     info["control_accuracy"], info["control_change"]])
    print(format_table(["condition", "units", "accuracy", "change"], rows))
    print(f"units zeroed: {' '.join(str(u) for u in info['selection']['units'])}")
    print(f"wrote {Path(info['out']) / 'ablate.csv'}, ablate.json, ablate.svg, ablate.png")
    publish(info["out"], "Ablation", f"layer {args.layer}: accuracy with chosen units zeroed, beside "
            "random controls of the same size", run_dir=args.run)
    return 0
