"""Run directories: atomic result files, the manifest, checkpoints to resume from.

Every file is written under a temporary name and renamed, so a crash never leaves a file that
looks complete. ``summary.json`` is written last: its presence marks a finished run. The
checkpoint records the manifest it was made under and is only resumed when that matches.

Ownership: a directory netdissect creates carries a marker file (``.netdissect-run``), and the
tool deletes or replaces files only in a directory with that marker, so ``--out`` pointed at a
user's folder cannot wipe it. Checkpoints hold arrays and JSON (``statefile``), never pickle.
"""
from netdissect.runs.directory import (InterruptFlag, RunDirectory, die_with_parent, worker_init)
from netdissect.runs.files import (CHECKPOINT, DATASET_FILES, LEGACY_CHECKPOINT, RESERVED_FOLDERS,
    SCRATCH, layer_dir, layer_dirnames, load_layer, load_result, read_json, read_run, safe_name,
    units_csv, write_results)
from netdissect.runs.ownership import (LOCK, MARKER, check_directory, claim_directory, owns)
from netdissect.runs.reuse import (diff_manifests, finished_changes, finished_summary, input_changes,
    reuse_finished, rewrite_finished)

__all__ = ['CHECKPOINT', 'DATASET_FILES', 'InterruptFlag', 'LEGACY_CHECKPOINT', 'LOCK', 'MARKER', 'RESERVED_FOLDERS', 'RunDirectory', 'SCRATCH', 'check_directory', 'claim_directory', 'die_with_parent', 'diff_manifests', 'finished_changes', 'finished_summary', 'input_changes', 'layer_dir', 'layer_dirnames', 'load_layer', 'load_result', 'owns', 'read_json', 'read_run', 'reuse_finished', 'rewrite_finished', 'safe_name', 'units_csv', 'worker_init', 'write_results']
