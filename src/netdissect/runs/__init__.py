"""The run directory: its only writer and reader, one face over four modules.

- ``files``: the result files (units.csv, thresholds.npy, iou.npz, topk.npz, summary.json,
  config.json) in layer folders named once; each written atomically, summary.json last, so its
  presence marks a finished run.
- ``reuse``: whether finished results can be reused, relabeled or must be recomputed (the
  manifests compared; one rule for dissect and the experiments).
- ``directory``: a run in progress: the lock, checkpoints (``statefile``: arrays and JSON, never
  pickle) and scratch files, workers that die with the run, signals that save a checkpoint.
- ``ownership``: a directory netdissect creates carries ``.netdissect-run``; the tool deletes or
  replaces files only where it is, so ``--out`` pointed at a user's folder cannot wipe it.
"""
from netdissect.runs.directory import InterruptFlag, RunDirectory, die_with_parent, worker_init
from netdissect.runs.files import (
                                   CHECKPOINT,
                                   DATASET_FILES,
                                   LEGACY_CHECKPOINT,
                                   RESERVED_FOLDERS,
                                   SCRATCH,
                                   layer_dir,
                                   layer_dirnames,
                                   load_layer,
                                   load_result,
                                   read_json,
                                   read_run,
                                   safe_name,
                                   units_csv,
                                   write_results,
)
from netdissect.runs.ownership import LOCK, MARKER, check_directory, claim_directory, owns
from netdissect.runs.reuse import (
                                   diff_manifests,
                                   finished_changes,
                                   finished_summary,
                                   input_changes,
                                   reuse_finished,
                                   rewrite_finished,
)

__all__ = [
    "CHECKPOINT", "DATASET_FILES", "LEGACY_CHECKPOINT", "LOCK", "MARKER", "RESERVED_FOLDERS", "SCRATCH",
    "InterruptFlag", "RunDirectory", "check_directory", "claim_directory", "die_with_parent", "diff_manifests",
    "finished_changes", "finished_summary", "input_changes", "layer_dir", "layer_dirnames", "load_layer",
    "load_result", "owns", "read_json", "read_run", "reuse_finished", "rewrite_finished", "safe_name",
    "units_csv", "worker_init", "write_results",
]
