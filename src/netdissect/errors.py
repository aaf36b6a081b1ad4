"""One exception family, so callers (and the CLI) can tell our diagnoses from crashes.

Every message names the thing at fault (file and line, layer, unit) and says what to do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class NetDissectError(Exception):
    """Base class of every error this package raises on purpose."""


class DatasetError(NetDissectError):
    """A Broden-format dataset is missing, malformed or inconsistent."""

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None,
                 line: Optional[int] = None):
        self.path = None if path is None else Path(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)


class ModelError(NetDissectError):
    """A model spec, checkpoint or weights cannot be loaded."""


class LayerError(NetDissectError):
    """A requested layer does not exist or does not produce N x K x h x w activations."""


class ActivationError(NetDissectError):
    """Activations that cannot be dissected (NaN or inf)."""


class RunError(NetDissectError):
    """A run directory cannot be written, resumed or read."""


class WriteError(RunError):
    """A file cannot be written (disk full, permission, read-only file system).

    The message names the path and says what to free or fix, so a full disk is one line,
    not a traceback from deep inside numpy or torch.
    """

    @classmethod
    def of(cls, exc: OSError, path: Optional[Union[str, Path]] = None) -> "WriteError":
        import errno
        import shutil
        where = Path(path if path is not None else (exc.filename or "?"))
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            try:
                probe = next(p for p in [where, *where.parents] if p.exists())
                free = f" ({shutil.disk_usage(probe).free / 2**20:.0f} MiB free there)"
            except (OSError, StopIteration):
                free = ""
            todo = f"free space on the disk holding {where.parent}{free} or choose another --out"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            todo = f"fix the permissions of {where.parent} or choose another --out"
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            todo = "check the path"
        else:
            todo = "check the disk and the path, then rerun (finished work is kept)"
        verb = "cannot write" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "failed"
        return cls(f"{where}: {verb} ({reason}); {todo}")


class DownloadError(NetDissectError):
    """A file cannot be downloaded (offline, server down, wrong size or checksum)."""


class DissectionWarning(UserWarning):
    """A warning the dissection records in its result (summary.json) and the CLI prints with
    its summary: the CLI silences these, and only these, where Python would print them."""
