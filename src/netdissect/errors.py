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


class DownloadError(NetDissectError):
    """A file cannot be downloaded (offline, server down, wrong size or checksum)."""
