"""Formulas of a dissection's layers, searched from its counts or from a run directory
(`netdissect formulas OUT`, `dissect --formulas`).

The search itself is formulas/search.py, which knows nothing of run directories; this module joins it
to netdissect.runs (where the combination counts and the results are read and written).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from netdissect import runs
from netdissect.config import DissectConfig
from netdissect.errors import RunError
from netdissect.formulas.search import explain_layer
from netdissect.report.figures import write_gain_figure
from netdissect.tally.combinations import FILE as COMBINATIONS_FILE
from netdissect.tally.combinations import LayerCombinations

__all__ = ["add_formulas", "explain_run"]


def add_formulas(result, length: int = 3, beam: int = 10, progress: bool = False, out=None,
                 layers: Optional[Sequence[str]] = None) -> bool:
    """Search the formulas of a DissectionResult's layers (from their counts, or from the run
    directory ``out``); layers already searched with the same settings are kept. True when
    anything was searched."""
    changed = False
    for name, layer in result.layers.items():
        if layers is not None and name not in layers:
            continue
        done = layer.formulas
        if done is not None and done.length == length and done.beam == beam:
            continue
        combos = layer.combinations
        if combos is None and out is not None:
            combos = LayerCombinations.load(runs.layer_dir(out, name) / COMBINATIONS_FILE)
        layer.formulas = explain_layer(layer, length, beam, combos=combos, progress=progress)
        changed = True
    if changed and out is not None:
        result.out = Path(out)
    return changed


def explain_run(out, layers: Optional[Sequence[str]] = None, length: int = 3, beam: int = 10,
                progress: bool = True, force: bool = False):
    """`netdissect formulas OUT`: search a finished run's formulas from its files alone."""
    out = Path(out)
    summary = runs.read_json(out / "summary.json")
    saved = runs.read_json(out / "config.json")
    names = list(layers) if layers else list(summary["layers"])
    unknown = [n for n in names if n not in summary["layers"]]
    if unknown:
        raise RunError(f"{out}: no layer {unknown[0]!r} in this run (it has {', '.join(summary['layers'])})")
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved["config"].items()
              if k in DissectConfig.__dataclass_fields__}
    fields["layers"] = tuple(summary["layers"])   # all of them: the rewritten files keep every layer
    fields["iou_threshold"] = float(summary["layers"][names[0]]["iou_threshold"])
    config = DissectConfig(**fields)
    run = runs.RunDirectory(out, saved.get("manifest", {}))
    try:
        result = runs.load_result(out, config)
        if force:
            for layer in result.layers.values():
                layer.formulas = None
        if add_formulas(result, length, beam, progress=progress, out=out, layers=names):
            runs.write_results(out, result)
            write_gain_figure(out, runs.read_json(out / "summary.json"))
    finally:
        run.release()
    return result
