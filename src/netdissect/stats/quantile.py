"""Exact streaming top quantile of every unit's activations.

The threshold T_k is numpy.quantile(all values of unit k, 1 - top) with linear interpolation.
It depends only on the largest ``n - floor(level * (n - 1))`` values, where n (images x h x w)
is known before the pass. Keeping that many values per unit is cheap for a 0.5% top fraction,
and gives the exact answer in one pass.

The smallest kept value is also, at every point of the pass, a lower bound of the final
threshold that only rises: the dissection uses it to drop (unit, image) pairs early.

On the CPU the kept values are selected by the compiled ``_topvalues`` (about one comparison
per activation once a unit has seen enough); elsewhere, or when it was not compiled, by
torch.topk over the kept and new values. Both keep the same values.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from netdissect.config import compiled_code_allowed
from netdissect.tally.kernel import run_in_slices, threads_for

try:
    from netdissect.stats import _topvalues
except ImportError:  # not compiled (no C compiler at install): torch.topk
    _topvalues = None
# built with OpenMP: it slices the units itself, on torch's threads (see _topvalues.c)
_TOPVALUES_OPENMP = bool(getattr(_topvalues, "openmp", lambda: False)())

_VALUES_PER_SLICE = 1 << 18   # fewer values than this per thread: the thread costs more than it saves


def compiled_available() -> bool:
    return _topvalues is not None and compiled_code_allowed()


def top_count(n: int, level: float) -> int:
    """How many of the largest values numpy.quantile(level, 'linear') can touch among n."""
    if n <= 0:
        return 0
    lo = math.floor(level * (n - 1))
    return n - lo


def exact_memory_bytes(units: int, n: int, level: float) -> int:
    """Memory the exact state needs: the kept values plus one batch's working copy."""
    return units * top_count(n, level) * 4 * 3


class ExactTopQuantile:
    """Keeps the ``top_count(expected_n, level)`` largest values of each of K units.

    ``expected_n`` may only shrink afterwards (skipped images): the kept values then still
    hold every value the smaller quantile needs, and the lower bound stays valid.
    """

    def __init__(self, units: int, expected_n: int, level: float = 0.995, device="cpu"):
        if not 0.0 < level < 1.0:
            raise ValueError(f"quantile level must be in (0, 1), got {level}")
        self.units = units
        self.level = level
        self.expected_n = expected_n
        self.keep = top_count(expected_n, level)
        self.count = 0
        self.compiled = torch.device(device).type == "cpu" and compiled_available() and self.keep > 0
        if self.compiled:   # the first ``filled`` columns are in use; as many again for new values
            self._rows = torch.empty(units, 2 * self.keep, dtype=torch.float32)
            self._filled = 0
            self._roots = None   # (K,) float32: each full row's smallest value, as push_values left it
        else:
            self._values = torch.empty(units, 0, dtype=torch.float32, device=device)

    @property
    def values(self) -> torch.Tensor:
        """(K, n) the kept values, in no particular order (n <= keep)."""
        return self._rows[:, :self._filled] if self.compiled else self._values

    @values.setter
    def values(self, values: torch.Tensor) -> None:
        if self.compiled:
            n = values.shape[1]
            self._rows[:, :n] = values
            self._filled = n
            self._roots = None
        else:
            self._values = values

    def add(self, values: torch.Tensor) -> None:
        """values: (K, m) float32, all m new values of every unit."""
        if values.shape[0] != self.units:
            raise ValueError(f"expected {self.units} units, got {values.shape[0]}")
        self.add_maps(values[None, :, None, :])

    def add_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """maps: (B, K, h, w) float32, finite (any memory format). Returns their maxima (B, K)."""
        if maps.shape[1] != self.units:
            raise ValueError(f"expected {self.units} units, got {maps.shape[1]}")
        self.count += maps.shape[0] * maps.shape[2] * maps.shape[3]
        if self.compiled:
            maxima = torch.empty(maps.shape[:2], dtype=torch.float32)
            rows, values, out = self._rows.numpy(), maps.detach().float().numpy(), maxima.numpy()
            # the pass is waiting: the units in slices, one per torch thread (the GIL is released)
            threads = min(self.units, threads_for(values.size, _VALUES_PER_SLICE))
            roots = self._full_row_minima()
            if _TOPVALUES_OPENMP:   # the units in ranges on torch's OpenMP threads
                self._filled = _topvalues.push_values(rows, self.keep, self._filled, values, out, threads, roots)
            else:
                self._filled = run_in_slices(_topvalues.push_values, self.units, threads, lambda a, b: (
                    rows[a:b], self.keep, self._filled, values[:, a:b], out[:, a:b], 1, roots[a:b]))
            return maxima
        maxima = maps.amax(dim=(2, 3))
        merged = torch.cat([self._values, maps.transpose(0, 1).reshape(self.units, -1).to(self._values.dtype)],
                           dim=1)
        if merged.shape[1] > self.keep:
            merged = torch.topk(merged, self.keep, dim=1, sorted=False).values
        self._values = merged
        return maxima

    def merge_ranks(self, group) -> None:
        """The state of the whole dataset from every rank's: the largest ``keep`` values of the
        union of the ranks' kept values are the largest of all values (exact)."""
        values = group.gather(self.values, dim=1)
        self.count = sum(group.gather_objects(self.count))
        if values.shape[1] > self.keep:
            values = torch.topk(values, self.keep, dim=1, sorted=False).values
        self.values = values.to(self.values.device)

    def _full_row_minima(self) -> np.ndarray:
        """The compiled state's (K,) entry bars: each full row's smallest value (-inf before the
        rows fill), kept between batches by push_values instead of read off the rows."""
        if self._roots is None:
            self._roots = (self._rows[:, :self.keep].amin(dim=1).numpy().copy() if self._filled == self.keep
                           else np.full(self.units, -np.inf, np.float32))
        return self._roots

    def lower_bound(self) -> torch.Tensor:
        """(K,) a value the final threshold cannot fall below; -inf until enough is seen."""
        if self.values.shape[1] < self.keep:
            return torch.full((self.units,), -math.inf, device=self.values.device)
        if self.compiled:   # the smallest kept values, without reading the rows
            return torch.from_numpy(self._full_row_minima().copy())
        return self.values.min(dim=1).values

    def threshold(self, n: int | None = None) -> np.ndarray:
        """(K,) float32 thresholds, equal to numpy.quantile(values, level) per unit."""
        n = self.count if n is None else n
        if n != self.count:
            raise ValueError(f"{self.count} values were added but n={n} was asked")
        if n == 0:
            raise ValueError("no values were added")
        lo = math.floor(self.level * (n - 1))
        need = n - lo  # ranks from the top: j = n-1-lo (value at lo) and j-1 (value at lo+1)
        values = self.values
        held = values.shape[1]
        if held < need:
            raise ValueError("the state holds fewer values than the quantile needs")
        # the need-th and (need-1)-th largest, selected (not a sort of every kept value)
        v_lo = torch.kthvalue(values, held - need + 1, dim=1).values.cpu().numpy()
        v_hi = torch.kthvalue(values, held - need + 2, dim=1).values.cpu().numpy() if need >= 2 else v_lo
        gamma = self.level * (n - 1) - lo
        # numpy.quantile on the pair [v_lo, v_hi] at level gamma performs exactly the same
        # interpolation (same gamma, same dtype rules) as on the whole sorted array.
        pair = np.stack([v_lo, v_hi], axis=1)
        return np.quantile(pair, gamma, axis=1).astype(np.float32)

    def state_dict(self) -> dict:
        return {"values": self.values.cpu().clone(), "count": self.count, "keep": self.keep,
                "level": self.level, "expected_n": self.expected_n}

    def load_state_dict(self, state: dict) -> None:
        if state["keep"] != self.keep or state["level"] != self.level:
            raise ValueError("saved quantile state was made with other parameters")
        self.values = state["values"].to(self.values.device)
        self.count = int(state["count"])


# ------------------------------------------------------------------ two passes, little memory

BITS = 16                 # each pass resolves 16 of the 32 bits of a float32's order key
BINS = 1 << BITS


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns ordered like the floats: key = bits + 2**31 (>= 0), ~bits (< 0).

    Returned as int32 with the top bit flipped back (so that the arithmetic stays in int32):
    the high and low halves below are taken from it. -0.0 is counted as +0.0.
    """
    bits = (values + 0.0).contiguous().view(torch.int32)
    return torch.where(bits >= 0, bits, ~bits ^ torch.iinfo(torch.int32).min)


def _halves(values: torch.Tensor):
    key = order_keys(values)  # as uint32, key ^ 0x80000000; the high half is shifted back below
    high = ((key >> BITS) & (BINS - 1)) ^ (BINS >> 1)
    return high, key & (BINS - 1)


def key_to_float(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """The float32 whose order key has these high and low halves."""
    key = (high.to(torch.int64) << BITS) | low.to(torch.int64)      # unsigned order key
    bits = torch.where(key >= 2 ** 31, key - 2 ** 31, -1 - key).to(torch.int32)
    return bits.view(torch.float32)


class RadixQuantile:
    """The exact quantile of every unit in two passes, in K x 65,536 counts of memory.

    For layers whose exact one-pass state (``ExactTopQuantile``) does not fit the budget. Pass 1
    counts each unit's values by the high 16 bits of their order key; that finds the bin holding
    the value at rank ``lo`` (and ``lo + 1``). Pass 2 counts the values of that bin by their low
    16 bits (and keeps the smallest value of the ``lo + 1`` bin when it is another one), which
    gives both values exactly; the threshold is then interpolated as numpy.quantile does. Counts
    are integers: shards merge by summing them, in any order, to the same bits.
    """

    def __init__(self, units: int, expected_n: int, level: float = 0.995, device="cpu"):
        if not 0.0 < level < 1.0:
            raise ValueError(f"quantile level must be in (0, 1), got {level}")
        self.units = units
        self.level = level
        self.dtype = torch.int32 if expected_n < 2 ** 31 else torch.int64
        self.counts = torch.zeros(units, BINS, dtype=self.dtype, device=device)
        self.count = 0
        self.low_counts = None    # pass 2
        self.next_min = None

    def _offsets(self, bins: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.units, device=bins.device, dtype=torch.int32)[:, None] * BINS + bins

    def add(self, values: torch.Tensor) -> None:
        """Pass 1. values: (K, m) float32."""
        self.count += values.shape[1]
        high, _ = _halves(values)
        flat = self._offsets(high).reshape(-1)
        self.counts.view(-1).index_add_(0, flat, torch.ones(1, dtype=self.dtype,
                                                            device=flat.device).expand(flat.numel()))

    def lower_bound(self) -> torch.Tensor:
        """(K,) after pass 1: the smallest float of the threshold's bin (a value below it cannot
        be active); -inf during pass 1."""
        if self.low_counts is None:
            return torch.full((self.units,), -math.inf, device=self.counts.device)
        return key_to_float(self.bin_lo, torch.zeros_like(self.bin_lo))

    def start_second_pass(self) -> None:
        """Find the bins of ranks lo and lo + 1 from the pass-1 counts (merged over shards)."""
        if self.count == 0:
            raise ValueError("no values were added")
        self.lo = math.floor(self.level * (self.count - 1))
        cum = torch.cumsum(self.counts, dim=1, dtype=torch.int64)
        target = torch.tensor([[self.lo, min(self.lo + 1, self.count - 1)]], device=cum.device)
        where = torch.searchsorted(cum, target.expand(self.units, 2).contiguous(), right=True)
        self.bin_lo, self.bin_hi = where[:, 0], where[:, 1]
        before = torch.where(self.bin_lo > 0, cum.gather(1, (self.bin_lo - 1).clamp(min=0)[:, None])[:, 0],
                             torch.zeros_like(self.bin_lo))
        self.rank_in_bin = self.lo - before        # rank of v_lo among the values of its bin
        self.counts = None                          # pass 1's memory goes
        self.low_counts = torch.zeros(self.units, BINS, dtype=self.dtype, device=cum.device)
        self.next_min = torch.full((self.units,), math.inf, device=cum.device)

    def refine(self, values: torch.Tensor) -> None:
        """Pass 2. values: (K, m) float32, the same values as pass 1 (any batches, any order)."""
        high, low = _halves(values)
        in_lo = high == self.bin_lo[:, None].to(high.dtype)
        flat = self._offsets(low)[in_lo]
        self.low_counts.view(-1).index_add_(0, flat, torch.ones(1, dtype=self.dtype,
                                                                device=flat.device).expand(flat.numel()))
        in_hi = high == self.bin_hi[:, None].to(high.dtype)
        smallest = torch.where(in_hi, values, torch.full_like(values, math.inf)).amin(dim=1)
        self.next_min = torch.minimum(self.next_min, smallest + 0.0)

    def merge_ranks(self, group) -> None:
        """Sum the counts of every shard (pass 1, or pass 2 with the smallest values)."""
        if self.low_counts is None:
            self.count = sum(group.gather_objects(self.count))
            self.counts = group.sum_(self.counts.cpu()).to(self.counts.device)
        else:
            self.low_counts = group.sum_(self.low_counts.cpu()).to(self.low_counts.device)
            self.next_min = group.gather(self.next_min[None]).amin(dim=0).to(self.next_min.device)

    def threshold(self, n: int | None = None) -> np.ndarray:
        """(K,) float32 after both passes: numpy.quantile(values, level) per unit."""
        cum = torch.cumsum(self.low_counts, dim=1, dtype=torch.int64)
        low = torch.searchsorted(cum, self.rank_in_bin[:, None].contiguous(), right=True)[:, 0]
        v_lo = key_to_float(self.bin_lo, low)
        # v_hi: the next value up, in the same bin while it holds more, else the next bin's smallest
        low_hi = torch.searchsorted(cum, (self.rank_in_bin + 1)[:, None].contiguous(), right=True)[:, 0]
        same_bin = (self.bin_hi == self.bin_lo) & (low_hi < BINS)
        v_hi = torch.where(same_bin, key_to_float(self.bin_lo, low_hi.clamp(max=BINS - 1)), self.next_min)
        if self.lo + 1 > self.count - 1:
            v_hi = v_lo
        gamma = self.level * (self.count - 1) - self.lo
        pair = np.stack([v_lo.cpu().numpy(), v_hi.cpu().numpy()], axis=1)
        return np.quantile(pair, gamma, axis=1).astype(np.float32)

    def state_dict(self) -> dict:
        if self.low_counts is None:
            return {"counts": self.counts.cpu(), "count": self.count, "level": self.level}
        return {"low_counts": self.low_counts.cpu(), "next_min": self.next_min.cpu(), "count": self.count,
                "level": self.level, "lo": self.lo, "bin_lo": self.bin_lo.cpu(), "bin_hi": self.bin_hi.cpu(),
                "rank_in_bin": self.rank_in_bin.cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Pass 1's counts, or pass 2's (with the bins pass 1 found)."""
        saved = state["counts"] if "counts" in state else state["low_counts"]
        if state["level"] != self.level or tuple(saved.shape) != (self.units, BINS):
            raise ValueError("saved quantile state was made with other parameters")
        device = (self.counts if self.counts is not None else self.low_counts).device
        self.count = int(state["count"])
        if "counts" in state:
            self.counts, self.low_counts, self.next_min = saved.to(device, self.dtype), None, None
            return
        self.counts = None
        self.low_counts = saved.to(device, self.dtype)
        self.next_min = state["next_min"].to(device)
        self.lo = int(state["lo"])
        self.bin_lo, self.bin_hi = state["bin_lo"].to(device), state["bin_hi"].to(device)
        self.rank_in_bin = state["rank_in_bin"].to(device)
