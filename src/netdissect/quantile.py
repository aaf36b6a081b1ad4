"""Exact streaming top quantile of every unit's activations.

The threshold T_k is numpy.quantile(all values of unit k, 1 - top) with linear interpolation.
It depends only on the largest ``n - floor(level * (n - 1))`` values, where n (images x h x w)
is known before the pass. Keeping that many values per unit is cheap for a 0.5% top fraction,
and gives the exact answer in one pass.

The smallest kept value is also, at every point of the pass, a lower bound of the final
threshold that only rises: the dissection uses it to drop (unit, image) pairs early.
"""
from __future__ import annotations

import math

import numpy as np
import torch


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
        self.values = torch.empty(units, 0, dtype=torch.float32, device=device)
        self.count = 0

    def add(self, values: torch.Tensor) -> None:
        """values: (K, m) float32, all m new values of every unit."""
        if values.shape[0] != self.units:
            raise ValueError(f"expected {self.units} units, got {values.shape[0]}")
        self.count += values.shape[1]
        merged = torch.cat([self.values, values.to(self.values.dtype)], dim=1)
        if merged.shape[1] > self.keep:
            merged = torch.topk(merged, self.keep, dim=1, sorted=False).values
        self.values = merged

    def merge_ranks(self, group) -> None:
        """The state of the whole dataset from every rank's: the largest ``keep`` values of the
        union of the ranks' kept values are the largest of all values (exact)."""
        values = group.gather(self.values, dim=1)
        self.count = sum(group.gather_objects(self.count))
        if values.shape[1] > self.keep:
            values = torch.topk(values, self.keep, dim=1, sorted=False).values
        self.values = values.to(self.values.device)

    def lower_bound(self) -> torch.Tensor:
        """(K,) a value the final threshold cannot fall below; -inf until enough is seen."""
        if self.values.shape[1] < self.keep:
            return torch.full((self.units,), -math.inf, device=self.values.device)
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
        top = torch.sort(self.values, dim=1, descending=True).values.cpu().numpy()
        if top.shape[1] < need:
            raise ValueError("the state holds fewer values than the quantile needs")
        v_lo = top[:, need - 1]
        v_hi = top[:, need - 2] if need >= 2 else v_lo
        gamma = self.level * (n - 1) - lo
        # numpy.quantile on the pair [v_lo, v_hi] at level gamma performs exactly the same
        # interpolation (same gamma, same dtype rules) as on the whole sorted array.
        pair = np.stack([v_lo, v_hi], axis=1)
        return np.quantile(pair, gamma, axis=1).astype(np.float32)

    def state_dict(self) -> dict:
        return {"values": self.values.cpu(), "count": self.count, "keep": self.keep,
                "level": self.level, "expected_n": self.expected_n}

    def load_state_dict(self, state: dict) -> None:
        if state["keep"] != self.keep or state["level"] != self.level:
            raise ValueError("saved quantile state was made with other parameters")
        self.values = state["values"].to(self.values.device)
        self.count = int(state["count"])
