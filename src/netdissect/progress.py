"""Progress bars: the one place netdissect makes them (tqdm, on stderr).

A disabled bar is still a bar (tqdm's own no-op), so callers update and close it without
checking whether progress was asked for.
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional

__all__ = ["progress_bar", "track"]


def progress_bar(enabled: bool, total: Optional[int] = None, desc: str = "", unit: str = "img",
                 initial: int = 0):
    """A tqdm bar on stderr (disabled, not None, when ``enabled`` is false). Unit "B" counts bytes
    with binary prefixes."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled,
                unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                file=sys.stderr, dynamic_ncols=True)


def track(iterable: Iterable, total: Optional[int], enabled: bool, desc: str, unit: str = "img"):
    """``iterable``, shown as a bar while it is consumed when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
