"""Which directories netdissect may change: the ones it made, marked with ``.netdissect-run``
(or an older run's manifest). A non-empty directory without the mark is refused, never
cleared, so ``--out`` pointed at a user's folder cannot wipe it."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from netdissect.atomic import atomic_write_json
from netdissect.errors import RunError, WriteError

LOCK = ".lock"
MARKER = ".netdissect-run"


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
            from netdissect import __version__
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
