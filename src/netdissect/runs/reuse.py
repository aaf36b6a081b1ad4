"""Whether a run directory's results can be reused: manifests compared, the one reuse rule
(``finished_changes``), applied by dissect (``reuse_finished``) and by the experiments
(``finished_summary``); relabeling or extending a finished run (``rewrite_finished``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from netdissect.errors import NetDissectError
from netdissect.runs.files import DATASET_FILES, load_result, read_json, write_results


def diff_manifests(old: dict, new: dict, prefix: str = "", ignore=()) -> list:
    """Dotted names of the entries that differ (the package version included)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        if key in ignore:
            continue
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changed += diff_manifests(a, b, name + ".")
        elif a != b:
            changed.append(name)
    return changed


def input_changes(old: dict, new: dict, ignore=()) -> list:
    """``diff_manifests``, except that a content digest is compared only when this run asked
    for one (--verify-content), so a later run without it still reuses the result."""
    changed = diff_manifests(old if isinstance(old, dict) else {}, new, ignore=ignore)
    if "content_digest" not in new.get("dataset", {}):
        changed = [c for c in changed if c != "dataset.content_digest"]
    return changed


def _which_files(run, change: str) -> str:
    """' (images/x.jpg changed)' for a changed file digest, from the saved per-file table."""
    key = {"dataset.files_digest": "stats", "dataset.content_digest": "hashes"}.get(change)
    if key is None or run.dataset_files is None or key not in run.dataset_files:
        return ""
    try:
        saved = json.loads((run.path / DATASET_FILES).read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if not isinstance(saved, dict):
        return ""
    from netdissect.data.broden import changed_files
    names = changed_files(saved, run.dataset_files[key])
    return f" ({names} changed)" if names else ""


def finished_changes(old: Optional[dict], new: dict) -> Optional[tuple]:
    """The one reuse rule: how the finished run of manifest ``old`` differs from a run of ``new``.

    None when there is no finished run; else (changed inputs, layers it lacks, changed labeling
    parameters). Nothing changed and nothing missing: the finished results are the answer as
    they are; only labeling changed: they are the answer after relabeling from the saved IoU.
    """
    if old is None:
        return None
    changed = input_changes(old, new, ignore=("labeling", "layers"))
    missing = [layer for layer in new.get("layers", []) if layer not in old.get("layers", [])]
    relabel = diff_manifests(old.get("labeling", {}), new.get("labeling", {}))
    return changed, missing, relabel


def finished_summary(path, manifest: dict) -> Optional[dict]:
    """summary.json of the finished run in ``path`` when it answers ``manifest`` as it is
    (``finished_changes`` finds nothing to recompute or relabel), else None."""
    path = Path(path)
    if not (path / "summary.json").exists():
        return None
    try:
        old = read_json(path / "config.json").get("manifest")
        summary = read_json(path / "summary.json")
    except NetDissectError:
        return None
    verdict = finished_changes(old if isinstance(old, dict) else None, manifest)
    return summary if verdict is not None and not any(verdict) else None


def reuse_finished(run, config):
    """The finished run in ``run``, when it was computed from the same inputs, else None.

    Same inputs and a subset of its layers: reused as is. Only the labeling parameters
    (IoU threshold) changed: the units are relabeled from the saved IoU, without a forward pass.
    Anything else changed: None, after one line saying what changed.
    """
    old = run.finished_manifest()
    verdict = finished_changes(old, run.manifest)
    if verdict is None:
        return None
    changed, missing, relabel = verdict
    changed = [c + _which_files(run, c) for c in changed]
    if changed or missing:
        what = changed + ([f"new layers {', '.join(missing)}"] if missing else [])
        run.log(f"netdissect: {run.path} holds a run of other inputs ({', '.join(what)}): recomputing "
                "(its results stay until the new ones are complete)")
        return None
    result = load_result(run.path, config)
    if relabel:
        run.log(f"netdissect: only {', '.join(relabel)} changed: relabeling from the saved IoU")
        result.manifest = run.manifest
        rewrite_finished(run.path, result)
    else:
        run.log(f"netdissect: {run.path} is up to date (same model, data and parameters); "
                "use --force to recompute")
    return result


def rewrite_finished(out, result) -> None:
    """Rewrite a finished run from a reused ``result`` (relabeled, or with formulas added).

    ``result`` may hold only the layers a rerun asked for; the run's other finished layers are
    read back and written with it (relabeled at the same threshold), so a rewrite of a subset
    never drops layers that were already computed.
    """
    import dataclasses
    out = Path(out)
    finished = [str(n) for n in read_json(out / "config.json").get("layers", [])]
    others = [n for n in finished if n not in result.layers]
    if not others:
        write_results(out, result)
        return
    order = finished + [n for n in result.layers if n not in finished]
    full = load_result(out, dataclasses.replace(result.config, layers=tuple(others)))
    full.layers.update(result.layers)
    full.layers = {name: full.layers[name] for name in order}
    full.config = dataclasses.replace(result.config, layers=tuple(order))
    full.manifest = {**result.manifest, "layers": list(order)}
    write_results(out, full)
