"""A run directory while a run writes it: claimed through ``ownership``, the lock (per process,
with the holder's pid), checkpoints (npz + JSON, never pickle) and scratch files, data-loader
workers that die with the run, and SIGINT / SIGTERM turned into a saved checkpoint."""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Optional

from netdissect.errors import RunError
from netdissect.runs.files import CHECKPOINT, LEGACY_CHECKPOINT, SCRATCH
from netdissect.runs.ownership import LOCK, MARKER, claim_directory, owns
from netdissect.runs.reuse import input_changes

try:
    import fcntl
except ImportError:  # not POSIX: a pid file stands in for the lock
    fcntl = None

_HELD_LOCKS: set = set()  # POSIX record locks do not exclude the process that holds them


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
        self.two_pass: list = []
        self._lock = None
        if rank > 0:  # rank 0 claimed and locked the directory (and cleared it with force) before this rank came
            if not owns(self.path):  # unless this rank's machine does not share rank 0's --out: its own one
                claim_directory(self.path, MARKER, "run", "--out")
            return
        claim_directory(self.path, MARKER, "run", "--out")
        self._lock = _RunLock(self.path / LOCK)
        # nothing is deleted here, --force or not: prepare() drops stale files once the layers,
        # the device and the free space have been checked (each rank its own; finish() the rest)

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

    def prepare(self, two_pass=()) -> None:
        """Read the checkpoint to resume from, or drop a stale one, before the scratch files
        of this run are set up (a stale checkpoint's scratch is removed with it)."""
        if self._prepared:
            return
        self._prepared = True
        self.two_pass = sorted(two_pass)  # layers whose thresholds take two passes in this run
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
        from netdissect.runs import statefile
        try:
            state = statefile.load(path)
            if not isinstance(state, dict) or not isinstance(state.get("done"), int):
                raise statefile.StateFileError("no 'done' count")
        except statefile.StateFileError as exc:
            self.log(f"netdissect: ignoring unreadable checkpoint {path} ({exc}); starting over")
            clear()
            return
        changed = input_changes(state.get("manifest", {}), self.manifest, ignore=("labeling",))
        if sorted(state.get("two_pass", [])) != self.two_pass:
            changed.append("which layers take two passes (--memory-budget)")
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
            where = " of the second pass" if state.get("phase", 1) == 2 else ""
            self.log(f"netdissect: resuming from checkpoint after {state['done']} images{where}")
        return state

    def checkpoint_due(self) -> bool:
        self._batches += 1
        return self.checkpoint_every > 0 and self._batches % self.checkpoint_every == 0

    def save_checkpoint(self, done: int, streams: Dict, store, skipped, phase: int = 1) -> None:
        """The state after ``done`` images of pass ``phase`` (2: the second pass of layers whose
        thresholds take two)."""
        from netdissect.runs import statefile
        for stream in streams.values():
            stream.pairs.spill()  # the buffers go to scratch files; the checkpoint names them
        state = {"manifest": self.manifest, "shard": self.shard, "done": done, "phase": phase,
                 "two_pass": self.two_pass,
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
