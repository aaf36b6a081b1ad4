"""Test-session settings shared by every test module."""
from __future__ import annotations

import os
import shutil
import tempfile


def pytest_configure(config):
    # the label cache of this session (inherited by the CLI and torchrun subprocesses), not the
    # user's ~/.cache: later runs in the suite read what earlier ones wrote, as a user's do
    if "NETDISSECT_LABEL_CACHE" not in os.environ:
        config._label_cache_dir = tempfile.mkdtemp(prefix="netdissect-test-labels-")
        os.environ["NETDISSECT_LABEL_CACHE"] = config._label_cache_dir


def pytest_unconfigure(config):
    path = getattr(config, "_label_cache_dir", None)
    if path is not None:
        os.environ.pop("NETDISSECT_LABEL_CACHE", None)
        shutil.rmtree(path, ignore_errors=True)
