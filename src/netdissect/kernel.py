"""The optional compiled tally kernel (see _tallykernel.c), with a bit-exactness guard.

``fused_tally`` upsamples, thresholds and counts in one pass over each pair's pixels, without
materializing the upsampled maps. It is used only for shapes on which its upsampling equals
the package's one upsampler (``upsample.bilinear``) bit for bit on this machine (checked on
first use); otherwise, or when the kernel was not compiled, callers use the torch path.
"""
from __future__ import annotations

import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import torch

from .upsample import bilinear

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


@functools.lru_cache(maxsize=1)
def _library() -> Optional[ctypes.CDLL]:
    try:
        from . import _tallykernel
    except ImportError:
        return None
    lib = ctypes.CDLL(_tallykernel.__file__)
    lib.upsample_bilinear.argtypes = [_ptr, _i64, _i64, _i64, _i64, _i64, _ptr]
    lib.tally_bilinear.argtypes = [_ptr, _i64, _i64, _ptr, _ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr,
                                   _i64, _i64]
    return lib


def kernel_upsample(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    lib = _library()
    maps = maps.contiguous().float()
    out = torch.empty((maps.shape[0],) + tuple(size), dtype=torch.float32)
    if lib.upsample_bilinear(maps.data_ptr(), maps.shape[0], maps.shape[1], maps.shape[2],
                             size[0], size[1], out.data_ptr()):
        raise MemoryError("tally kernel: out of memory")
    return out


@functools.lru_cache(maxsize=64)
def exact_for(native: Tuple[int, int], size: Tuple[int, int]) -> bool:
    """Whether the kernel's upsampling equals upsample.bilinear bit for bit for this shape."""
    if _library() is None:
        return False
    gen = torch.Generator().manual_seed(1)
    maps = torch.randn((64,) + tuple(native), generator=gen) * 3
    maps[::2] = maps[::2].relu()  # ties at zero as after a ReLU
    return bool(torch.equal(kernel_upsample(maps, size), bilinear(maps, size)))


def fused_tally(maps: torch.Tensor, thresholds: torch.Tensor, images: torch.Tensor,
                combo_ids: torch.Tensor, size: Tuple[int, int], max_combos: int):
    """Per pair: active pixels per combination id (p, max_combos) and in all (p,)."""
    lib = _library()
    maps = maps.contiguous().float()
    thresholds = thresholds.contiguous().float()
    images = images.contiguous().to(torch.int64)
    combo_ids = combo_ids.contiguous().to(torch.int32)
    p, h, w = maps.shape
    per_combo = torch.zeros((p, max_combos), dtype=torch.int64)
    act = torch.zeros(p, dtype=torch.int64)
    threads = max(1, min(torch.get_num_threads(), p // 64 or 1))
    bounds = [p * t // threads for t in range(threads + 1)]

    def run(t: int) -> int:
        return lib.tally_bilinear(maps.data_ptr(), h, w, thresholds.data_ptr(), images.data_ptr(),
                                  combo_ids.data_ptr(), size[0], size[1], max_combos,
                                  per_combo.data_ptr(), act.data_ptr(), bounds[t], bounds[t + 1])

    if threads == 1:
        codes = [run(0)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            codes = list(pool.map(run, range(threads)))
    if any(codes):
        raise MemoryError("tally kernel: out of memory")
    return per_combo, act
