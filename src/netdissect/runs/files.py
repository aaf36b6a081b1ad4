"""The run directory's result files, their only writer and reader: units.csv, thresholds.npy,
iou.npz, topk.npz, summary.json, config.json, in layer folders named once (``layer_dirnames``).
Every file is written atomically; summary.json last, so its presence marks a finished run."""
from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from netdissect.atomic import atomic_save_npy, atomic_save_npz, atomic_write_json, atomic_write_text
from netdissect.errors import RunError
from netdissect.runs.ownership import MARKER, owns

CHECKPOINT = "checkpoint.npz"
LEGACY_CHECKPOINT = "checkpoint.pt"  # pickled by older versions: never loaded
SCRATCH = ".scratch"
DATASET_FILES = "dataset-files.json"  # size and mtime (and hash) of each file: says which changed


def safe_name(layer: str) -> str:
    """A layer's directory name: its dotted name with characters outside [A-Za-z0-9._-] replaced
    by "_" (portable on every file system). The one rule for layer folders; readers take the
    name recorded in summary.json ("directory"), so a run stays readable if this ever changes."""
    name = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "._-" else "_" for ch in layer) or "_"
    return "_" if name in (".", "..") else name


def read_run(path) -> dict:
    """summary.json and config.json of a finished run directory (config is {} when unreadable):
    what the readers that need only counts (compare) take from a run."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: not a directory; give run directories written by `netdissect dissect --out`")
    summary = read_json(path / "summary.json")
    try:
        config = read_json(path / "config.json")
    except RunError:
        config = {}
    if not isinstance(summary.get("layers"), dict) or not summary["layers"]:
        raise RunError(f"{path / 'summary.json'}: lists no layers; is it a netdissect run directory?")
    return {"summary": summary, "config": config}


def load_result(out, config):
    """A DissectionResult of ``config.layers`` read back from a finished run directory."""
    from netdissect.results import DissectionResult
    out = Path(out)
    summary = read_json(out / "summary.json")
    saved = read_json(out / "config.json")
    layers = {}
    for name in config.layers:
        layer = load_layer(out, name)
        layer.iou_threshold = config.iou_threshold
        layers[name] = layer
    return DissectionResult(config=config, layers=layers,
                            category_image_counts=summary.get("category_image_counts", {}),
                            images=summary.get("images", 0), skipped=summary.get("skipped_images", []),
                            warnings=summary.get("warnings", []), manifest=saved.get("manifest", {}),
                            seconds=summary.get("seconds", 0.0), out=out, dataset_path=saved.get("dataset", {}).get("path"))


RESERVED_FOLDERS = ("report", "figures")   # a run directory's own folders beside the layers'


def layer_dirnames(layers) -> Dict[str, str]:
    """Each layer's folder in a run directory: ``safe_name``, made unique ("-2", "-3", ...) when
    two layers give the same name or a layer's name is one of the run's own folders."""
    taken, names = set(RESERVED_FOLDERS), {}
    for layer in layers:
        base = name = safe_name(layer)
        n = 1
        while name.lower() in taken:   # case-insensitive file systems
            n += 1
            name = f"{base}-{n}"
        taken.add(name.lower())
        names[layer] = name
    return names


def write_results(out: Path, result) -> None:
    """Write a DissectionResult to its run directory; summary.json goes last."""
    out = Path(out)
    from dataclasses import asdict
    if not owns(out):  # every caller claimed it (RunDirectory): the files replaced below are ours
        raise RunError(f"{out}: no {MARKER} marker, so netdissect writes no results here; "
                       "dissect into a new or empty --out")
    previous = _result_directories(out)
    # until the new summary.json lands, the directory must not look finished (old + new files)
    (out / "summary.json").unlink(missing_ok=True)
    for stale in ("report", "figures"):  # they describe the old numbers: never beside new ones
        shutil.rmtree(out / stale, ignore_errors=True)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(result.config).items()}
    dataset = {"path": result.dataset_path, "index_digest": result.manifest.get("dataset", {}).get("index_digest"),
               "split": config["split"], "categories": config["categories"], "limit": config["limit"]}
    atomic_write_json(out / "config.json", {"manifest": result.manifest, "config": config,
                                            "dataset": dataset, "layers": list(result.layers),
                                            "layouts": {n: l.layout for n, l in result.layers.items()},
                                            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    dirnames = layer_dirnames(result.layers)
    # the files two at a time (deflate releases the GIL), the largest first: a late layer's
    # combinations.npz takes as long as all the others together, so it runs beside them
    jobs = [job for name, layer in result.layers.items() for job in _layer_files(out / dirnames[name], layer)]
    jobs.sort(key=lambda job: -job[0])
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="netdissect-write") as pool:
        for future in [pool.submit(write) for _, write in jobs]:
            future.result()     # re-raises a file's WriteError
    summary = result.summary()
    for name in summary["layers"]:
        summary["layers"][name]["directory"] = dirnames[name]
        formulas = getattr(result.layers[name], "formulas", None)
        if formulas is not None:
            summary["layers"][name]["formulas"] = formulas.summary(result.layers[name].iou_threshold)
    atomic_write_json(out / "summary.json", summary)
    for name in previous - set(dirnames.values()):  # the new result is complete: the old one's other layers go
        target = out / name
        if target.is_dir() and target.resolve().parent == out.resolve():
            shutil.rmtree(target, ignore_errors=True)


def _layer_files(d: Path, layer) -> list:
    """One layer's result files in its directory ``d``: (bytes to encode, a function that writes
    the file) each, so that the writer can start the largest first."""
    jobs = [(layer.thresholds.nbytes, partial(atomic_save_npy, d / "thresholds.npy",
                                              layer.thresholds.astype(np.float32))),
            (layer.iou.nbytes, partial(atomic_save_npz, d / "iou.npz", iou=layer.iou.astype(np.float32),
                                       label_numbers=np.asarray(layer.concepts, dtype=np.int64),
                                       labels=np.asarray(layer.concept_names, dtype=str),
                                       categories=np.asarray(layer.concept_categories, dtype=str))),
            (layer.iou.shape[0] * 100, lambda: atomic_write_text(d / "units.csv", units_csv(layer)))]
    if layer.topk_index is not None:
        jobs.append((layer.topk_maps.size * 2, partial(
            atomic_save_npz, d / "topk.npz", image_index=layer.topk_index.astype(np.int64),
            score=layer.topk_score.astype(np.float32), maps=layer.topk_maps.astype(np.float16))))
    combinations = getattr(layer, "combinations", None)
    if combinations is not None:
        jobs.append((combinations.nbytes, partial(combinations.save, d / "combinations.npz")))
    formulas = getattr(layer, "formulas", None)
    if formulas is not None:
        jobs.append((0, partial(formulas.save, d / "formulas.npz")))
    return jobs


def _result_directories(out: Path) -> set:
    """The layer directories of the finished run in ``out`` (empty when there is none)."""
    try:
        layers = json.loads((out / "summary.json").read_text())["layers"]
        return {str(v.get("directory", safe_name(k))) for k, v in layers.items()} - {"", ".", ".."}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def units_csv(layer) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["unit", "label", "category", "iou"]
    for cat in layer.categories:
        header += [f"{cat}_label", f"{cat}_iou"]
    formulas = getattr(layer, "formulas", None)
    if formulas is not None:  # compositional explanations (netdissect.formulas.search)
        header += ["formula", "formula_length", "formula_iou", "formula_gain"]
        f_iou, f_gain = formulas.iou, formulas.gain
    writer.writerow(header)
    per_cat = {cat: layer.best_in_category(cat) for cat in layer.categories}
    for unit, (label, category, iou) in enumerate(layer.unit_labels()):
        row = [unit, label, category, f"{iou:.6f}"]
        for cat in layer.categories:
            idx, val = per_cat[cat]
            row += [layer.concept_names[idx[unit]] if idx[unit] >= 0 else "", f"{val[unit]:.6f}"]
        if formulas is not None:
            tokens = formulas.unit_tokens(unit)
            row += [formulas.text(unit), (len(tokens) + 1) // 2, f"{f_iou[unit]:.6f}", f"{f_gain[unit]:.6f}"]
        writer.writerow(row)
    return buf.getvalue()


def layer_dir(out, layer: str, summary: Optional[dict] = None) -> Path:
    """The folder of one layer's files in a finished run: the name summary.json recorded (older
    runs: ``safe_name``)."""
    out = Path(out)
    summary = read_json(out / "summary.json") if summary is None else summary
    if layer not in summary["layers"]:
        raise RunError(f"{out}: no layer {layer!r} in this run (it has {', '.join(summary['layers'])})")
    return out / summary["layers"][layer].get("directory", safe_name(layer))


def load_layer(out, layer: str):
    """A LayerResult read back from a run directory."""
    from netdissect.results import LayerResult
    out = Path(out)
    summary = read_json(out / "summary.json")
    d = layer_dir(out, layer, summary)
    iou = np.load(d / "iou.npz")
    topk = np.load(d / "topk.npz") if (d / "topk.npz").exists() else None
    formulas = None
    if (d / "formulas.npz").exists():
        from netdissect.formulas.search import LayerFormulas
        formulas = LayerFormulas.load(d / "formulas.npz")
    return LayerResult(
        name=layer, thresholds=np.load(d / "thresholds.npy"), iou=iou["iou"],
        concepts=iou["label_numbers"], concept_names=[str(s) for s in iou["labels"]],
        concept_categories=[str(s) for s in iou["categories"]], categories=list(summary["categories"]),
        iou_threshold=float(summary["layers"][layer]["iou_threshold"]),
        map_shape=tuple(summary["layers"][layer]["map_shape"]),
        topk_index=None if topk is None else topk["image_index"],
        topk_score=None if topk is None else topk["score"],
        topk_maps=None if topk is None else topk["maps"].astype(np.float32), formulas=formulas,
        layout=summary["layers"][layer].get("layout"),  # kept when a reloaded run is rewritten
        receptive_field=_receptive_field(summary["layers"][layer].get("receptive_field")))


def _receptive_field(saved):
    """The rf-mode placement recorded in summary.json (None in bilinear mode)."""
    from netdissect.tally.upsample import ReceptiveField
    if not saved:
        return None
    return ReceptiveField(offset=tuple(float(v) for v in saved["offset"]),
                          stride=tuple(float(v) for v in saved["stride"]))


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        hint = " (the run did not finish: rerun the same command to resume it)" \
            if (path.parent / CHECKPOINT).exists() else ""
        raise RunError(f"{path}: not found; is {path.parent} a netdissect run directory?{hint}")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None
