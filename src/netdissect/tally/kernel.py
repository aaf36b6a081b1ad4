"""The optional compiled tally kernel (the extension module tally/_kernel.c), with a bit-exactness guard.

``fused_tally`` upsamples, thresholds and counts in one pass over each pair's pixels, without
materializing the upsampled maps. It is used only for shapes on which its upsampling equals
the package's one upsampler (``upsample.bilinear``) bit for bit on this machine (checked on
first use); otherwise, or when the kernel was not compiled, callers use the torch path.
The extension checks its arguments (dtype, shape, contiguity, writability) and raises on a
mismatch; it releases the GIL while counting, so slices of pairs run in parallel threads (OpenMP
threads where it was built with OpenMP: see _kernel.c).
``add_pair_counts`` adds a chunk's counts to IoUTally in one C loop (the torch path without it).
"""
from __future__ import annotations

import functools
import os
from typing import Optional, Tuple, Union

import numpy as np
import torch

from netdissect.config import compiled_code_allowed
from netdissect.tally.upsample import bilinear

try:
    from netdissect.tally import _kernel
except ImportError:  # not compiled (a C compiler was missing at install): the torch path
    _kernel = None
if not all(hasattr(_kernel, name) for name in ("tally_bilinear", "distinct_keys", "add_pair_counts", "openmp",
                                              "pack_maps", "unpack_maps")):
    _kernel = None  # built from an older source (rebuild: pip install -e .): the torch path
_OPENMP = _kernel is not None and _kernel.openmp()

_PAIRS_PER_SLICE = 64  # fewer pairs than this per thread: the thread costs more than it saves


def available() -> bool:
    """Whether the extension module was compiled and imports (NETDISSECT_NO_KERNEL=1: as if not)."""
    return _kernel is not None and compiled_code_allowed()


def unique_keys(keys: np.ndarray):
    """numpy.unique(keys, return_index=True, return_inverse=True) of int64 keys, by hashing (the
    label combinations of an image: a few distinct keys among its pixels), else numpy's sort."""
    if not available():
        return np.unique(keys, return_index=True, return_inverse=True)
    keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
    inverse = np.empty(keys.shape[0], np.int32)
    distinct, first = np.empty(keys.shape[0], np.int64), np.empty(keys.shape[0], np.int64)
    n = _kernel.distinct_keys(keys, inverse, distinct, first)
    return distinct[:n], first[:n], inverse.astype(np.int64)


def kernel_upsample(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """The kernel's bilinear upsampling of (p, h, w) maps, for checking it against torch."""
    maps = maps.detach().cpu().contiguous().float()
    out = torch.empty((maps.shape[0],) + tuple(size), dtype=torch.float32)
    _kernel.upsample_bilinear(maps.numpy(), out.numpy())
    return out


def exact_for(native: Tuple[int, int], size: Tuple[int, int]) -> bool:
    """Whether the kernel's upsampling equals upsample.bilinear bit for bit for this shape (the
    switch is read on every call; the comparison is made once per shape)."""
    return available() and _equals_torch(tuple(native), tuple(size))


@functools.lru_cache(maxsize=64)
def _equals_torch(native: Tuple[int, int], size: Tuple[int, int]) -> bool:
    gen = torch.Generator().manual_seed(1)
    maps = torch.randn((64,) + tuple(native), generator=gen) * 3
    maps[::2] = maps[::2].relu()  # ties at zero as after a ReLU
    return bool(torch.equal(kernel_upsample(maps, size), bilinear(maps, size)))


@functools.lru_cache(maxsize=4)
def _pool(threads: int, pid: int):
    """Threads kept across calls (one call per chunk or batch); a forked child makes its own."""
    from concurrent.futures import ThreadPoolExecutor
    return ThreadPoolExecutor(threads, thread_name_prefix="netdissect-compiled")


def threads_for(work: int, per_thread: int) -> int:
    """torch's number of threads, fewer where ``work`` gives some less than ``per_thread`` items
    (there a thread costs more than it saves); at least one."""
    return max(1, min(torch.get_num_threads(), work // per_thread))


def run_in_slices(fn, n: int, threads: int, args_of):
    """``fn(*args_of(start, stop))`` over [0, n) cut into ``threads`` slices: slices 1.. in kept
    pool threads, slice 0 in this one (``fn`` releases the GIL). Waits for every slice,
    re-raises the first error, and returns slice 0's result."""
    cuts = [n * t // threads for t in range(threads + 1)]
    others = [_pool(threads - 1, os.getpid()).submit(fn, *args_of(a, b))
              for a, b in zip(cuts[1:-1], cuts[2:])]
    try:
        return fn(*args_of(cuts[0], cuts[1]))
    finally:
        for other in others:
            other.result()  # waits for it, and re-raises its error


def fused_tally(maps: torch.Tensor, thresholds: torch.Tensor, images: torch.Tensor,
                combo_ids: Union[torch.Tensor, np.ndarray], size: Tuple[int, int], max_combos: int):
    """Per pair: active pixels per combination id (p, max_combos) and in all (p,).

    maps (p, h, w); thresholds, images (p,); combo_ids (n, size[0] * size[1]) per image, indexed
    by ``images``: a tensor (converted here, as other inputs of other dtypes or layouts are), or a
    C-contiguous uint16 or int32 numpy array read where it lies (the label store's rows, uncopied).
    """
    if combo_ids.ndim != 2 or combo_ids.shape[1] != size[0] * size[1]:
        raise ValueError(f"fused_tally: combo_ids of shape {tuple(combo_ids.shape)} do not hold "
                         f"{size[0]} x {size[1]} labels per image")
    maps = maps.detach().cpu().contiguous().float()
    p = maps.shape[0]
    thr = thresholds.detach().cpu().contiguous().float()
    images = images.detach().cpu().contiguous().to(torch.int64)
    if isinstance(combo_ids, np.ndarray):
        ids = combo_ids.reshape(-1, size[0], size[1])
    else:
        ids = combo_ids.detach().cpu().contiguous().to(torch.int32).view(-1, size[0], size[1]).numpy()
    per_combo = torch.empty((p, max_combos), dtype=torch.int64)  # every row written by the kernel
    act = torch.empty(p, dtype=torch.int64)
    arrays = (maps.numpy(), thr.numpy(), images.numpy(), ids, per_combo.numpy(), act.numpy())
    threads = threads_for(p, _PAIRS_PER_SLICE)
    if _OPENMP:   # the slices on torch's OpenMP threads (see _kernel.c)
        _kernel.tally_bilinear(*arrays, threads=threads)
    else:
        run_in_slices(_kernel.tally_bilinear, p, threads, lambda start, stop: (*arrays, start, stop))
    return per_combo, act


def add_pair_counts(inter: torch.Tensor, active: torch.Tensor, per_combo: torch.Tensor, act: torch.Tensor,
                    units: torch.Tensor, images: torch.Tensor, tables: torch.Tensor,
                    image_concepts: torch.Tensor, labeled: torch.Tensor) -> None:
    """IoUTally.add_counts into its contiguous int64 CPU ``inter`` and ``active``, by the
    extension (see its docstring); the other arguments are converted here."""
    arrays = [t.detach().cpu().contiguous().to(torch.int64).numpy()
              for t in (per_combo, act, units, images, tables, image_concepts, labeled)]
    _kernel.add_pair_counts(*arrays, inter.numpy(), active.numpy())


def combination_counts(per_combo: torch.Tensor, units: torch.Tensor, rows: torch.Tensor, lut: np.ndarray,
                       size: int, dense: Optional[torch.Tensor] = None):
    """UnitCombinationCounts.add's counts by the extension (see its docstring): added to ``dense``
    (K * size,) int64, or returned as (keys, counts) int64 of the nonzero ones."""
    arrays = [np.ascontiguousarray(t.numpy() if isinstance(t, torch.Tensor) else t, dtype=np.int64)
              for t in (per_combo, units, rows, lut)]
    if dense is not None:
        _kernel.combination_counts(*arrays, size, dense=dense.numpy())
        return None
    keys, counts = np.empty(arrays[0].size, np.int64), np.empty(arrays[0].size, np.int64)
    n = _kernel.combination_counts(*arrays, size, keys=keys, counts=counts)
    return torch.from_numpy(keys[:n].copy()), torch.from_numpy(counts[:n].copy())


_MAPS_PER_SLICE = 64   # fewer maps than this per thread: the thread costs more than it saves


def pack_maps(maps: torch.Tensor, bounds: torch.Tensor, images: Optional[torch.Tensor] = None,
              units: Optional[torch.Tensor] = None) -> dict:
    """Candidate maps packed by the extension (see pack_maps in _kernel.c), each kept while its
    unit's threshold had the lower bound ``bounds`` (p,): the map's pixels within one row and
    column of a pixel above the kernel's skip value of that bound, the rest read as that value,
    so the tally at any threshold from the bound up counts the same pixels.

    ``maps`` (p, h, w); or with ``images`` and ``units`` (p,), a batch (B, K, h, w) in any memory
    format whose maps ``maps[images[i], units[i]]`` are packed where they lie (no gathered copy).
    {"fill" (p,), "count" (p,), "need" (p, ceil(h*w/8)) bits, "values" (sum count,)}."""
    if images is not None and maps.device.type != "cpu":   # gathered on the device: only they are copied
        maps, images = maps[images, units], None
    maps = maps.detach().cpu().float()
    if images is None:
        maps = maps.contiguous()[:, None]
        images = torch.arange(maps.shape[0])
        units = torch.zeros_like(images)
    p, (h, w) = images.shape[0], maps.shape[2:]
    need = np.empty((p, (h * w + 7) // 8), np.uint8)
    count, fill = np.empty(p, np.int64), np.empty(p, np.float32)
    values = np.empty(p * h * w, np.float32)
    pairs = [np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.int64) for t in (images, units)]
    bounds = bounds.detach().cpu().contiguous().float()
    threads = threads_for(p, _MAPS_PER_SLICE) if _OPENMP else 1
    n = _kernel.pack_maps(maps.numpy(), *pairs, bounds.numpy(), need, count, fill, values, threads)
    return {"fill": torch.from_numpy(fill), "count": torch.from_numpy(count),
            "need": torch.from_numpy(need), "values": torch.from_numpy(values[:n].copy())}


def unpack_maps(packed: dict, map_shape: Tuple[int, int], pairs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The (p, h, w) maps of pack_maps' output: kept pixels as they were, the others the fill.
    ``pairs`` (n,) int64: only those maps, in that order (n, h, w)."""
    h, w = map_shape
    arrays = [np.ascontiguousarray(packed[key].numpy()) for key in ("fill", "count", "need", "values")]
    if pairs is not None:
        pairs = np.ascontiguousarray(pairs.numpy(), dtype=np.int64)
    maps = np.empty((arrays[0].shape[0] if pairs is None else pairs.shape[0], h, w), np.float32)
    threads = threads_for(maps.shape[0], _MAPS_PER_SLICE) if _OPENMP else 1
    _kernel.unpack_maps(*arrays, maps, pairs, threads)
    return torch.from_numpy(maps)
