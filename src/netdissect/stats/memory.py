"""``--memory-budget``: one number for the whole run's statistics, split once, up front.

The budget bounds what a dissection holds besides the model and one batch: for every layer its
top-k images (maps included), its threshold state and its candidate maps (the (unit, image)
maps that may still exceed the threshold, kept in memory until they spill to scratch files),
then the final tally's working chunk. ``plan_memory`` splits it before the pass:

1. Top-k images come first: the report needs them, so they are never traded away.
2. Of the rest R, a quarter holds candidate maps, split between layers by the size of one
   image's maps (a layer of larger maps finds more candidates); a buffer spills to disk when full.
3. Half holds the threshold states: a layer's exact one-pass state when it fits (smallest
   first), else the two-pass radix counts (``quantile.RadixQuantile``, 65,536 bins a unit, still
   exact) when they are smaller; they take a second forward pass.
4. The last quarter bounds the final tally's working chunk (upsampled masks, the encoded labels
   of the chunk's images), which runs after the pass.

When the top-k maps and the smaller threshold state of each layer alone exceed the budget, the
run still goes ahead with that minimum, and says so: nothing smaller gives exact thresholds.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

from netdissect.stats.quantile import BINS, exact_memory_bytes

__all__ = ["LayerShare", "MemoryPlan", "plan_memory", "release_before_fork", "release_free_memory",
           "reuse_freed_memory"]

SYSTEM_MALLOC = "NETDISSECT_SYSTEM_MALLOC"   # "1": leave the C allocator as the process has it

MIB = 2 ** 20
MIN_CANDIDATES = 4096  # bytes: a buffer smaller than one map would spill on every batch
# "1": every layer takes the two-pass thresholds, whatever they cost (the tests of that path use
# it on datasets far too small to need it)
FORCE_TWO_PASS = "NETDISSECT_TWO_PASS"


@dataclass(frozen=True)
class LayerShare:
    """One layer's part of the budget, in bytes."""

    top_images: int
    thresholds: int
    candidates: int
    two_pass: bool      # thresholds from the radix counts (a second forward pass)
    exact_need: int     # what the one-pass exact state would have needed
    least_thresholds: int  # the smaller of the exact state and the radix counts
    forced: bool = False   # two passes because NETDISSECT_TWO_PASS=1 asked for them


@dataclass(frozen=True)
class MemoryPlan:
    budget: int
    layers: Dict[str, LayerShare]
    tally: int          # bytes of upsampled masks the final tally works on at a time

    @property
    def minimum(self) -> int:
        """What the statistics need whatever the budget: the top-k maps and the smaller of
        each layer's two threshold states."""
        return sum(s.top_images + s.least_thresholds for s in self.layers.values())

    @property
    def held(self) -> int:
        """The most the pass holds at once: top-k maps, threshold states, candidate buffers."""
        return sum(s.top_images + s.thresholds + s.candidates for s in self.layers.values())

    def describe(self) -> str:
        parts = [f"{name}: {s.thresholds / MIB:.1f} MiB thresholds ({'two passes' if s.two_pass else 'exact'}), "
                 f"{s.candidates / MIB:.1f} MiB candidates, {s.top_images / MIB:.1f} MiB top images"
                 for name, s in self.layers.items()]
        return "; ".join(parts) + f"; tally chunks {self.tally / MIB:.1f} MiB"


def top_images_bytes(units: int, top_k: int, map_shape: Tuple[int, int]) -> int:
    """TopKImages: scores, indices and float32 maps, plus one update's copy of the maps."""
    h, w = map_shape
    return units * top_k * (4 + 8 + 2 * 4 * h * w)


def radix_bytes(units: int, values: int) -> int:
    """RadixQuantile: 65,536 counts per unit (int64 beyond 2**31 values), one pass at a time."""
    return units * BINS * (4 if values < 2 ** 31 else 8)


def plan_memory(budget_bytes: int, shapes: Dict[str, Tuple[int, int, int]], images: int, level: float,
                top_k: int) -> MemoryPlan:
    """Split ``budget_bytes`` between the layers ``shapes`` (name -> units, h, w) for ``images``."""
    names: Sequence[str] = list(shapes)
    top = {name: top_images_bytes(k, top_k, (h, w)) for name, (k, h, w) in shapes.items()}
    rest = max(budget_bytes - sum(top.values()), 0)
    # candidates: a quarter of the rest, by the size of one image's maps
    per_image = {name: k * h * w for name, (k, h, w) in shapes.items()}
    total = sum(per_image.values()) or 1
    candidates = {name: max(rest // 4 * per_image[name] // total, MIN_CANDIDATES) for name in names}
    # thresholds: the exact state while it fits in half the rest, smallest first; the radix
    # counts only where they are the smaller (on a small dataset the exact state always is)
    exact = {name: exact_memory_bytes(k, images * h * w, level) for name, (k, h, w) in shapes.items()}
    radix = {name: radix_bytes(k, images * h * w) for name, (k, h, w) in shapes.items()}
    forced = os.environ.get(FORCE_TWO_PASS) == "1"
    room = rest // 2
    two_pass = {}
    for name in sorted(names, key=lambda n: (exact[n] > radix[n], exact[n], names.index(n))):
        two_pass[name] = forced or (exact[name] > room and exact[name] > radix[name])
        room -= radix[name] if two_pass[name] else exact[name]
    layers = {}
    for name in names:
        k, h, w = shapes[name]
        thresholds = radix[name] if two_pass[name] else exact[name]
        layers[name] = LayerShare(top[name], thresholds, candidates[name], two_pass[name], exact[name],
                                  min(exact[name], radix[name]), forced)
    tally = max(rest // 4, MIN_CANDIDATES)
    return MemoryPlan(budget_bytes, layers, tally)


@functools.lru_cache(maxsize=4)
def _glibc(function: str):
    """glibc's ``function`` (malloc_trim, mallopt), or None under another C library."""
    import ctypes
    try:
        return getattr(ctypes.CDLL("libc.so.6"), function)
    except (OSError, AttributeError):  # not glibc
        return None


def reuse_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of unmapping it (process-wide; once).

    A CPU forward pass allocates and frees the same large activations every batch (hundreds of
    MB for a batch of 50). glibc serves each block above 32 MB with a fresh mmap and unmaps it on
    free, so every batch faults every page in again: on the project's machine that was half of
    the forward pass's CPU time (8.8 million page faults over 1,000 images; 19 s against 7 s).
    With mmap off and no trimming of the heap's top, the blocks are reused and resident memory
    stays at the high-water mark of one batch (``release_free_memory`` then trims nothing).
    NETDISSECT_SYSTEM_MALLOC=1 leaves the allocator alone; other C libraries (musl, macOS):
    nothing to do. Returns whether the policy is in force."""
    global _REUSING
    if not _REUSING and os.environ.get(SYSTEM_MALLOC) != "1":
        mallopt = _glibc("mallopt")
        m_trim_threshold, m_mmap_max = -1, -4
        _REUSING = (mallopt is not None and bool(mallopt(m_mmap_max, 0))
                    and bool(mallopt(m_trim_threshold, 2 ** 31 - 1)))
    return _REUSING


_REUSING = False   # whether reuse_freed_memory's policy is in force in this process


def release_free_memory() -> None:
    """Give freed heap pages back to the system (glibc keeps them otherwise), under the system's
    allocator policy only.

    The candidate buffers allocate and free many large tensors; under glibc's default policy the
    resident size would keep every high-water mark and outgrow the budget as the number of
    images grows. Under ``reuse_freed_memory`` the freed blocks are exactly what the next batch
    and the next candidates reuse (resident memory then stays flat: 2,193 MiB at 1,000 images,
    2,371 MiB at 4,000), and trimming them would make the next forward pass fault them all in
    again.
    """
    if not _REUSING:
        _malloc_trim()


def release_before_fork() -> None:
    """Give the heap's free pages back before forking data loader workers (any allocator policy).

    A forked worker shares every page of this process copy-on-write for as long as it lives,
    so while a pass runs, each write into a page the heap held at the fork copies that page.
    Under ``reuse_freed_memory`` a process that already ran a pass (a benchmark, an experiment's
    second dissection, a sketched layer's second pass) holds its freed batch memory and reuses
    it: measured here, the next bare forward pass over 1,000 images took 9.0 -> 10.6 -> 11.3 s
    (240,000 page copies each). Trimmed first, the pages come back as fresh zero pages, which
    only the parent maps: 9.1, 9.3, 9.5 s.
    """
    _malloc_trim()


def _malloc_trim() -> None:
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)
