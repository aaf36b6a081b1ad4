"""The two-pass radix quantile (the sketch mode) is numpy.quantile exactly, whatever the batches,
their order and their split over shards (its counts are summed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from netdissect.stats.quantile import ExactTopQuantile, RadixQuantile, _halves, key_to_float


def hard_values(rng, units, n):
    kind = rng.integers(0, 4)
    v = rng.normal(size=(units, n)).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 4))
    if kind == 1:  # ReLU: an atom at zero
        v = np.maximum(v, 0)
    elif kind == 2:  # few distinct values: ties everywhere
        v = (np.round(v) / 4).astype(np.float32)
    elif kind == 3:  # negatives, -0.0, denormals, huge values
        v[:, ::7] = -0.0
        v[:, 1::11] = np.float32(1e-41)
        v[:, 2::13] = np.float32(-3e38)
    return v


def radix(values: np.ndarray, level: float, splits, order) -> np.ndarray:
    """The radix quantile of ``values`` computed as shards (``splits`` of the columns, whose pass-1
    and pass-2 counts are summed), each fed in batches in the given ``order``."""
    units, n = values.shape
    t = torch.from_numpy(values)
    shards = [RadixQuantile(units, n, level) for _ in splits]
    for q, (a, b) in zip(shards, splits):
        for s in order(range(a, b, 37)):
            q.add(t[:, s:min(s + 37, b)])
    count, counts = sum(q.count for q in shards), sum(q.counts for q in shards)
    for q in shards:  # what merge_ranks gives every rank after pass 1
        q.count, q.counts = count, counts.clone()
        q.start_second_pass()
    total = shards[0]
    for q, (a, b) in zip(shards, splits):
        for s in order(range(a, b, 53)):
            q.refine(t[:, s:min(s + 53, b)])
    total.low_counts = sum(q.low_counts for q in shards)
    total.next_min = torch.stack([q.next_min for q in shards]).amin(dim=0)
    return total.threshold()


@pytest.mark.parametrize("seed", range(12))
def test_radix_quantile_is_numpy_quantile_over_any_shards(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 2500))
    values = hard_values(rng, 3, n)
    level = float(rng.choice([0.995, 0.9, 0.5, 0.01]))
    expected = np.quantile(values, level, axis=1).astype(np.float32) + np.float32(0.0)
    cut = int(rng.integers(0, n + 1))
    for splits in ([(0, n)], [(0, cut), (cut, n)]):
        for order in (list, lambda r: list(reversed(r))):
            got = radix(values, level, splits, order)
            np.testing.assert_array_equal(got, expected)
    exact = ExactTopQuantile(3, n, level)
    exact.add(torch.from_numpy(values))
    np.testing.assert_array_equal(exact.threshold(), expected)


def test_order_keys_sort_like_the_floats():
    values = torch.tensor([-np.inf, -3e38, -1.5, -1e-41, -0.0, 0.0, 1e-41, 1.0, 2.5, 3e38, np.inf],
                          dtype=torch.float32)
    high, low = _halves(values)
    keys = high.to(torch.int64) * 65536 + low
    assert torch.all(keys[1:] >= keys[:-1])
    back = key_to_float(high, low)
    assert torch.equal(back, values + 0.0)  # -0.0 is counted as +0.0
