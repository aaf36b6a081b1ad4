"""Run directories: atomic result files, the manifest, checkpoints to resume from.

Every file is written under a temporary name and renamed, so a crash never leaves a file that
looks complete. ``summary.json`` is written last: its presence marks a finished run. The
checkpoint records the manifest it was made under and is only resumed when that matches.

Ownership: a directory netdissect creates carries a marker file (``.netdissect-run``), and the
tool deletes or replaces files only in a directory with that marker, so ``--out`` pointed at a
user's folder cannot wipe it. Checkpoints hold arrays and JSON (``statefile``), never pickle.
"""
from __future__ import annotations

import csv
import errno
import functools
import io
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .atomic import (atomic_save_npy, atomic_save_npz, atomic_write_bytes,  # noqa: F401  (re-exported)
                     atomic_write_json, atomic_write_text)
from .errors import NetDissectError, RunError, WriteError

try:
    import fcntl
except ImportError:  # not POSIX: a pid file stands in for the lock
    fcntl = None

CHECKPOINT = "checkpoint.npz"
LEGACY_CHECKPOINT = "checkpoint.pt"  # pickled by older versions: never loaded
SCRATCH = ".scratch"
LOCK = ".lock"
MARKER = ".netdissect-run"
DATASET_FILES = "dataset-files.json"  # size and mtime (and hash) of each file: says which changed

_HELD_LOCKS: set = set()  # POSIX record locks do not exclude the process that holds them


def safe_name(layer: str) -> str:
    """A layer's directory name: its dotted name with characters outside [A-Za-z0-9._-] replaced
    by "_" (portable on every file system). The one rule for layer folders; readers take the
    name recorded in summary.json ("directory"), so a run stays readable if this ever changes."""
    name = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "._-" else "_" for ch in layer) or "_"
    return "_" if name in (".", "..") else name


class RunDirectory:
    """The output directory of a dissection: checked writable before the long work starts.

    Opening one deletes nothing: stale checkpoints are dropped by ``prepare()``, which the
    engine calls only after every check (layers, device, free space) passed, and old results
    are replaced by ``write_results`` only once the new ones are complete.
    """

    def __init__(self, path, manifest: dict, force: bool = False, checkpoint_every: int = 50,
                 log=None, rank: int = 0, world: int = 1):
        self.path = Path(path)
        self.manifest = manifest
        # a sharded run: rank 0 claims, locks and writes the results; every rank keeps its own
        # checkpoint and scratch files, so that a rerun with the same ranks resumes each shard
        self.rank, self.world = rank, world
        self.force = force
        self.checkpoint_every = checkpoint_every
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self._batches = 0
        self._resume: Optional[dict] = None
        self.dataset_files: Optional[dict] = None  # this run's {"stats": ..., "hashes": ...}
        self._prepared = False
        self._lock = None
        if rank > 0:  # rank 0 claimed and locked the directory (and cleared it with force) before this rank came
            if not owns(self.path):  # unless this rank's machine does not share rank 0's --out: its own one
                claim_directory(self.path, MARKER, "run", "--out")
            return
        claim_directory(self.path, MARKER, "run", "--out")
        self._lock = _RunLock(self.path / LOCK)
        if force and world > 1:
            self.clear()  # before the other ranks set up their scratch files

    def release(self) -> None:
        """Let other processes write here again (also happens when this process dies)."""
        if self._lock is not None:
            self._lock.release()

    @property
    def scratch(self) -> Path:
        path = self.path / SCRATCH if self.world == 1 else self.path / SCRATCH / f"rank{self.rank}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def checkpoint_path(self) -> Path:
        if self.world == 1:
            return self.path / CHECKPOINT
        return self.path / CHECKPOINT.replace(".", f".rank{self.rank}.", 1)

    @property
    def shard(self) -> dict:
        return {"rank": self.rank, "world": self.world}

    def clear(self) -> None:
        """Forget the checkpoint and scratch files (results are replaced when the run ends).

        Rank 0 (or a single process) clears every rank's; another rank only its own."""
        if self.rank == 0:
            for path in self.path.glob(CHECKPOINT.replace(".", ".rank*.", 1)):
                path.unlink(missing_ok=True)
            (self.path / CHECKPOINT).unlink(missing_ok=True)
            shutil.rmtree(self.path / SCRATCH, ignore_errors=True)
        else:
            self._clear_own()

    def prepare(self) -> None:
        """Read the checkpoint to resume from, or drop a stale one, before the scratch files
        of this run are set up (a stale checkpoint's scratch is removed with it)."""
        if self._prepared:
            return
        self._prepared = True
        legacy = self.path / LEGACY_CHECKPOINT
        if legacy.exists():
            self.log(f"netdissect: ignoring {legacy} (a pickled checkpoint of an older version is "
                     "never loaded); starting over")
        # a single process clears everything; a rank of a sharded run only its own files
        clear = self.clear if self.world == 1 else self._clear_own
        if self.force:
            clear()  # a rank of a sharded run: its own files again, in case its --out is not rank 0's
            return
        path = self.checkpoint_path
        if not path.exists():
            clear()  # scratch files without a checkpoint cannot be resumed
            return
        from . import statefile
        try:
            state = statefile.load(path)
            if not isinstance(state, dict) or not isinstance(state.get("done"), int):
                raise statefile.StateFileError("no 'done' count")
        except statefile.StateFileError as exc:
            self.log(f"netdissect: ignoring unreadable checkpoint {path} ({exc}); starting over")
            clear()
            return
        changed = input_changes(state.get("manifest", {}), self.manifest, ignore=("labeling",))
        if state.get("shard", {"rank": 0, "world": 1}) != self.shard:
            changed.append("number of processes")
        if changed:
            self.log(f"netdissect: inputs changed since the checkpoint ({', '.join(changed)}): starting over")
            clear()
            return
        self._resume = state

    def _clear_own(self) -> None:
        self.checkpoint_path.unlink(missing_ok=True)
        # not self.scratch: that creates the directory again when rank 0 removed it already
        shutil.rmtree(self.path / SCRATCH / f"rank{self.rank}", ignore_errors=True)

    def finished_manifest(self) -> Optional[dict]:
        """The manifest of a finished run in this directory, if any."""
        if not (self.path / "summary.json").exists():
            return None
        try:
            return json.loads((self.path / "config.json").read_text())["manifest"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def load_checkpoint(self) -> Optional[dict]:
        """The state to resume from (read by ``prepare``), or None."""
        self.prepare()
        state, self._resume = self._resume, None
        if state is not None:
            self.log(f"netdissect: resuming from checkpoint after {state['done']} images")
        return state

    def checkpoint_due(self) -> bool:
        self._batches += 1
        return self.checkpoint_every > 0 and self._batches % self.checkpoint_every == 0

    def save_checkpoint(self, done: int, streams: Dict, store, skipped) -> None:
        from . import statefile
        for stream in streams.values():
            stream.pairs.spill()  # the buffers go to scratch files; the checkpoint names them
        state = {"manifest": self.manifest, "shard": self.shard, "done": done,
                 "layers": {name: s.state_dict() for name, s in streams.items()},
                 "store": store.state_dict(), "skipped": list(skipped)}
        statefile.save(self.checkpoint_path, state)

    def finish(self) -> None:
        self.clear()
        if self.rank > 0:  # a --out of this machine alone keeps no empty .scratch (every rank is done)
            try:
                (self.path / SCRATCH).rmdir()
            except OSError:
                pass  # not empty: other ranks' files on a shared --out, which rank 0 removes


def claim_directory(path: Path, marker: str, what: str, option: str) -> None:
    """Create ``path`` (or adopt it when empty or already ours) and mark it as made by netdissect.

    A non-empty directory without the marker is the user's: refused, so that nothing in it is
    ever replaced or deleted.
    """
    check_directory(path, marker, what, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
        if not (path / marker).exists():
            from . import __version__
            atomic_write_json(path / marker, {"made_by": "netdissect", "version": __version__,
                                              "kind": what, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    except OSError as exc:
        raise RunError(f"{path}: output directory is not writable ({exc.strerror or exc}); "
                       f"choose another {option} or fix its permissions") from None
    except WriteError as exc:
        raise RunError(f"{path}: output directory is not writable ({exc}); "
                       f"choose another {option} or fix its permissions") from None


def check_directory(path: Path, marker: str = MARKER, what: str = "run", option: str = "--out") -> None:
    """Raise RunError unless ``claim_directory`` may use ``path``; writes nothing (so a command
    can check its output before long work such as generating a dataset)."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise RunError(f"{path}: exists and is not a directory; choose another {option}")
        if path.is_dir() and not (path / marker).exists() \
                and any(not _startup_leftover(p.name, marker) for p in path.iterdir()) \
                and not (marker == MARKER and _older_run(path)):
            raise RunError(f"{path}: not empty and not a netdissect {what} directory (no {marker} "
                           f"marker), so it is left alone; choose a new or empty {option}")
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise RunError(f"{path}: {parent} is a file, so the directory cannot be made; choose another {option}")
    except OSError as exc:
        raise RunError(f"{path}: cannot be used as {option} ({exc.strerror or exc}); choose another") from None


def _startup_leftover(name: str, marker: str) -> bool:
    """What a run killed while claiming a directory leaves before its marker lands."""
    return name == LOCK or name.startswith(".write-test") or name.startswith(f".{marker}.tmp")


def _older_run(path: Path) -> bool:
    """A run directory of a version before the marker: its config.json holds our manifest."""
    try:
        manifest = json.loads((path / "config.json").read_text())["manifest"]
        return isinstance(manifest, dict) and "netdissect" in manifest and "dataset" in manifest
    except (OSError, ValueError, KeyError, TypeError):
        return False


def owns(path: Path, marker: str = MARKER) -> bool:
    """Whether netdissect made ``path`` (it carries the marker)."""
    return (Path(path) / marker).is_file()


class _RunLock:
    """One writer per run directory.

    A POSIX record lock (``lockf``), not ``flock``: a record lock belongs to the process, so
    data-loader workers forked from it do not inherit it and a ``kill -9`` of the run frees
    the directory at once. The holder's pid is written in the file for the message, and on
    systems without ``fcntl`` the pid file itself is the lock (stale when that pid is gone).
    """

    def __init__(self, path: Path):
        self.path = path
        self._file = None
        self._key = None
        key = str(path.resolve())
        if key in _HELD_LOCKS:
            raise self._busy(os.getpid())
        if fcntl is not None:
            f = open(path, "a+")
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip()
                f.close()
                raise self._busy(holder) from None
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            self._file = f
        else:
            self._pidfile_lock()
        self._key = key
        _HELD_LOCKS.add(key)

    def _pidfile_lock(self) -> None:
        try:
            holder = int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            holder = 0
        if holder and holder != os.getpid() and _pid_alive(holder):
            raise self._busy(holder)
        self.path.write_text(f"{os.getpid()}\n")

    def _busy(self, holder) -> RunError:
        who = f" (pid {holder})" if str(holder).strip().isdigit() else ""
        return RunError(f"{self.path.parent}: another netdissect process{who} is writing to this "
                        "directory; wait for it to finish or choose another --out")

    def release(self) -> None:
        if self._key is None:
            return
        _HELD_LOCKS.discard(self._key)
        self._key = None
        if self._file is not None:
            try:
                fcntl.lockf(self._file, fcntl.LOCK_UN)
            finally:
                self._file.close()
        else:
            try:
                self.path.unlink()
            except OSError:
                pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def die_with_parent(parent: int, _worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker exits when the run that forked it dies, so an
    orphan never keeps decoding images (nor holds files) after a ``kill -9``."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            _watch_parent(parent)
    else:
        _watch_parent(parent)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _watch_parent(parent: int) -> None:
    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, name="netdissect-parent-watch", daemon=True).start()


def worker_init(parent: Optional[int] = None):
    """The ``worker_init_fn`` for a DataLoader started by this process."""
    return functools.partial(die_with_parent, os.getpid() if parent is None else parent)


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


def _which_files(run: "RunDirectory", change: str) -> str:
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
    from .broden import changed_files
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


def reuse_finished(run: "RunDirectory", config):
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


def load_result(out, config):
    """A DissectionResult of ``config.layers`` read back from a finished run directory."""
    from .results import DissectionResult
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


class InterruptFlag:
    """Turns SIGINT/SIGTERM into a request that the pass honours between two batches.

    Saving from inside the signal handler could catch a batch half-applied; instead the loop
    calls ``check()`` after each batch, which saves and stops. A second signal stops at once.
    """

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: no handlers
            self._previous = {}
        return self

    def _handler(self, signum, frame):
        self.signal = signum
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def check(self, save) -> None:
        if self.signal is not None:
            save()
            raise KeyboardInterrupt(f"interrupted by signal {self.signal}; a checkpoint was saved: "
                                    "rerun the same command to resume")

    def __exit__(self, *exc):
        for sig, old in self._previous.items():
            signal.signal(sig, old)


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
    previous = _result_directories(out)
    # until the new summary.json lands, the directory must not look finished (old + new files)
    (out / "summary.json").unlink(missing_ok=True)
    if owns(out):  # the report and figures describe the old numbers: never leave them beside new ones
        for stale in ("report", "figures"):
            shutil.rmtree(out / stale, ignore_errors=True)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(result.config).items()}
    dataset = {"path": result.dataset_path, "index_digest": result.manifest.get("dataset", {}).get("index_digest"),
               "split": config["split"], "categories": config["categories"], "limit": config["limit"]}
    atomic_write_json(out / "config.json", {"manifest": result.manifest, "config": config,
                                            "dataset": dataset, "layers": list(result.layers),
                                            "layouts": {n: l.layout for n, l in result.layers.items()},
                                            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    dirnames = layer_dirnames(result.layers)
    for name, layer in result.layers.items():
        d = out / dirnames[name]
        atomic_save_npy(d / "thresholds.npy", layer.thresholds.astype(np.float32))
        atomic_save_npz(d / "iou.npz", iou=layer.iou.astype(np.float32),
                        label_numbers=np.asarray(layer.concepts, dtype=np.int64),
                        labels=np.asarray(layer.concept_names, dtype=str),
                        categories=np.asarray(layer.concept_categories, dtype=str))
        if layer.topk_index is not None:
            atomic_save_npz(d / "topk.npz", image_index=layer.topk_index.astype(np.int64),
                            score=layer.topk_score.astype(np.float32),
                            maps=layer.topk_maps.astype(np.float16))
        if getattr(layer, "combinations", None) is not None:
            layer.combinations.save(d / "combinations.npz")
        if getattr(layer, "formulas", None) is not None:
            layer.formulas.save(d / "formulas.npz")
        atomic_write_text(d / "units.csv", units_csv(layer))
    summary = result.summary()
    for name in summary["layers"]:
        summary["layers"][name]["directory"] = dirnames[name]
        formulas = getattr(result.layers[name], "formulas", None)
        if formulas is not None:
            summary["layers"][name]["formulas"] = formulas.summary(result.layers[name].iou_threshold)
    atomic_write_json(out / "summary.json", summary)
    if owns(out):  # the new result is complete: the old one's other layers go
        for name in previous - set(dirnames.values()):
            target = out / name
            if target.is_dir() and target.resolve().parent == out.resolve():
                shutil.rmtree(target, ignore_errors=True)


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
    if formulas is not None:  # compositional explanations (netdissect.formulas)
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
    from .results import LayerResult
    out = Path(out)
    summary = read_json(out / "summary.json")
    d = layer_dir(out, layer, summary)
    iou = np.load(d / "iou.npz")
    topk = np.load(d / "topk.npz") if (d / "topk.npz").exists() else None
    formulas = None
    if (d / "formulas.npz").exists():
        from .formulas import LayerFormulas
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
    from .upsample import ReceptiveField
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
