"""The compiled threshold state (stats/_topvalues.c) against torch.topk and numpy.quantile."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from netdissect.config import NO_COMPILED
from netdissect.stats import quantile as Q
from netdissect.stats.quantile import ExactTopQuantile

pytestmark = pytest.mark.skipif(Q._topvalues is None, reason="the _topvalues extension is not compiled")


def _states(units, n, level, monkeypatch):
    fast = ExactTopQuantile(units, n, level)
    monkeypatch.setenv(NO_COMPILED, "1")
    plain = ExactTopQuantile(units, n, level)
    monkeypatch.delenv(NO_COMPILED)
    assert fast.compiled and not plain.compiled
    return fast, plain


def _batches(seed, units, hw, batches, kind):
    gen = torch.Generator().manual_seed(seed)
    for b in batches:
        x = torch.randn((b, units) + hw, generator=gen)
        if kind == "relu":          # many ties at zero, some of them -0.0
            x = x.relu()
            x[x == 0] = torch.where(torch.rand(int((x == 0).sum()), generator=gen) < 0.5, -0.0, 0.0)
        elif kind == "ints":        # many ties everywhere
            x = (x * 3).round()
        yield x


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("kind", ["normal", "relu", "ints"])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("openmp", [True, False])
def test_compiled_keeps_what_topk_keeps(fmt, kind, threads, openmp, monkeypatch):
    units, hw, batches, level = 11, (5, 7), [3, 4, 1, 5], 0.9   # ranges of 11, or 3, 4 and 4 units
    n = sum(batches) * hw[0] * hw[1]
    fast, plain = _states(units, n, level, monkeypatch)
    if openmp and not Q._TOPVALUES_OPENMP:
        pytest.skip("the extension was built without OpenMP (the compiler lacks it)")
    monkeypatch.setattr(Q, "_TOPVALUES_OPENMP", openmp)  # ranges of units on OpenMP threads, or
    monkeypatch.setattr(Q, "_VALUES_PER_SLICE", 16)    # slices of units in pool threads
    monkeypatch.setattr(Q.torch, "get_num_threads", lambda: threads)
    everything = []
    for x in _batches(1, units, hw, batches, kind):
        if fmt == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif fmt == "strided":       # every other column of a wider map: no copy, odd strides
            wide = torch.zeros(x.shape[:3] + (2 * hw[1],))
            wide[..., ::2] = x
            x = wide[..., ::2]
        everything.append(x.transpose(0, 1).reshape(units, -1))
        maxima = fast.add_maps(x)
        assert torch.equal(maxima, x.amax(dim=(2, 3)))
        assert torch.equal(plain.add_maps(x), maxima)
        assert torch.equal(fast.lower_bound(), plain.lower_bound())
    kept_fast = torch.sort(fast.values, dim=1).values
    kept_plain = torch.sort(plain.values + 0.0, dim=1).values
    assert torch.equal(kept_fast, kept_plain)
    assert not torch.any(torch.signbit(fast.values) & (fast.values == 0))   # -0.0 is kept as +0.0
    expected = np.quantile(torch.cat(everything, dim=1).numpy(), level, axis=1).astype(np.float32)
    np.testing.assert_array_equal(fast.threshold(), expected)
    np.testing.assert_array_equal(fast.threshold(), plain.threshold())


def test_kept_values_after_every_batch():
    """After each batch the rows hold exactly the largest values so far, including batches
    larger than the rows' spare room (several compactions in one call)."""
    q = ExactTopQuantile(3, 400, 0.9)          # keep 41 of 400
    seen = []
    for x in _batches(2, 3, (4, 5), [1, 2, 3, 5, 9], "ints"):
        q.add_maps(x)
        seen.append(x.transpose(0, 1).reshape(3, -1))
        everything = torch.cat(seen, dim=1)
        expected = torch.sort(everything, dim=1, descending=True).values[:, :q.keep]
        got = torch.sort(q.values, dim=1, descending=True).values
        assert torch.equal(got, expected[:, :got.shape[1]] + 0.0)
        assert got.shape[1] == min(q.keep, everything.shape[1])


def test_never_full_and_keep_one(monkeypatch):
    # expected_n larger than what comes: the rows never fill, the bound stays -inf
    q = ExactTopQuantile(2, 10_000, 0.5)
    x = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    q.add_maps(x)
    assert q.values.shape == (2, 12)
    assert torch.all(q.lower_bound() == -float("inf"))
    # the fewest a quantile keeps: two, the largest so far
    two = ExactTopQuantile(2, 100, 0.999)
    assert two.keep == 2
    two.add_maps(x)
    two.add_maps(x - 100)
    assert torch.sort(two.values, dim=1).values.tolist() == [[10.0, 11.0], [22.0, 23.0]]
    # a row that keeps one: its maximum
    rows, maxima = np.full((2, 2), -1.0, np.float32), np.zeros((1, 2), np.float32)
    assert Q._topvalues.push_values(rows, 1, 0, x.numpy(), maxima) == 1
    assert rows[:, 0].tolist() == [11.0, 23.0] and maxima.tolist() == [[11.0, 23.0]]


def test_state_round_trip_between_paths(monkeypatch):
    """A checkpoint of one path resumes in the other (the state is the kept values)."""
    data = list(_batches(3, 4, (3, 3), [4, 4, 4, 4], "relu"))
    n = 16 * 9
    whole, _ = _states(4, n, 0.8, monkeypatch)
    for x in data:
        whole.add_maps(x)
    first, _ = _states(4, n, 0.8, monkeypatch)
    for x in data[:2]:
        first.add_maps(x)
    state = first.state_dict()
    monkeypatch.setenv(NO_COMPILED, "1")
    middle = ExactTopQuantile(4, n, 0.8)
    middle.load_state_dict(state)
    middle.add_maps(data[2])
    monkeypatch.delenv(NO_COMPILED)
    last = ExactTopQuantile(4, n, 0.8)
    last.load_state_dict(middle.state_dict())
    last.add_maps(data[3])
    np.testing.assert_array_equal(last.threshold(), whole.threshold())
    assert torch.equal(torch.sort(last.values, dim=1).values, torch.sort(whole.values, dim=1).values)


def test_arguments_are_checked():
    push = Q._topvalues.push_values
    rows = np.zeros((2, 10), np.float32)
    maps = np.zeros((1, 2, 2, 2), np.float32)
    maxima = np.zeros((1, 2), np.float32)
    with pytest.raises(TypeError, match="'maps' must hold float32"):
        push(rows, 5, 0, maps.astype(np.float64), maxima)
    with pytest.raises(TypeError, match="'rows' must be a float32 numpy array"):
        push([[0.0]], 5, 0, maps, maxima)
    with pytest.raises(ValueError, match="maps have 3 units, rows 2"):
        push(rows, 5, 0, np.zeros((1, 3, 2, 2), np.float32), maxima)
    with pytest.raises(ValueError, match=r"maxima must be \(1, 2\)"):
        push(rows, 5, 0, maps, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="0 <= filled <= keep"):
        push(rows, 5, 6, maps, maxima)
    with pytest.raises(ValueError, match="keep < rows.shape"):
        push(rows, 10, 0, maps, maxima)
    with pytest.raises(ValueError, match="'maxima' must have 2 dimensions"):
        push(rows, 5, 0, maps, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="'rows' must be C-contiguous"):
        push(np.zeros((10, 2), np.float32).T, 5, 0, maps, maxima)
    frozen = rows.copy()
    frozen.flags.writeable = False
    with pytest.raises((ValueError, BufferError)):
        push(frozen, 5, 0, maps, maxima)
    bad = maps.copy()
    bad[0, 1, 1, 0] = np.nan
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        push(rows, 5, 0, bad, maxima)
    assert push(rows, 5, 0, maps, maxima) == 4


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("unit", [0, 5, 10])
@pytest.mark.parametrize("batch", [0, 2])
def test_nan_and_inf_are_refused_wherever_they_lie(fmt, value, unit, batch):
    """The pass leaves the finite check to the threshold state's read (LayerStream.checks_finite):
    one bad value in any unit (the 4-unit blocks and the tail of a range), in the first batch (the
    rows still filling: everything enters) or a later one (the value must be seen though it does
    not beat the bar: -inf), in every memory format, is a FloatingPointError."""
    units, hw = 11, (3, 5)
    q = ExactTopQuantile(units, 3 * 4 * hw[0] * hw[1], 0.9)
    for b, x in enumerate(_batches(2, units, hw, [4, 4, 4], "normal")):
        if b == batch:
            x[1, unit, 2, 3] = value
        if fmt == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif fmt == "strided":   # every other unit of a channels-last batch: units 2 floats apart
            x = torch.cat([x, x], dim=1).contiguous(memory_format=torch.channels_last)[:, ::2]
            assert x.stride(1) == 2
        if b == batch:
            with pytest.raises(FloatingPointError, match="NaN or inf"):
                q.add_maps(x)
            return
        q.add_maps(x)


@pytest.mark.parametrize("sliced", [False, True])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("compiled", [True, False])
def test_top_images_are_the_k_best_by_score_then_index_in_any_batch_order(compiled, fmt, sliced, monkeypatch):
    """TopKImages (the compiled top_images, and torch's sorts) against a sort of every (score,
    image) of a unit: ties on the score (many, -0.0 among them) go to the lower image index,
    whatever order the batches come in; the kept maps are the images' (copied from a batch in
    either memory format)."""
    from netdissect.stats import streaming
    from netdissect.stats.streaming import TopKImages
    if not compiled:
        monkeypatch.setenv(NO_COMPILED, "1")
    if sliced:   # the units in ranges on every thread torch has (one unit each, where it has more)
        monkeypatch.setattr(streaming, "_VALUES_PER_SLICE", 1)
        monkeypatch.setattr(streaming.torch, "get_num_threads", lambda: 3)
    gen = torch.Generator().manual_seed(4)
    n, units, k = 60, 5, 7
    acts = torch.randint(-3, 4, (n, units, 2, 3), generator=gen).float()
    acts[::7, :, 0, 0] = -0.0
    maxima = acts.amax(dim=(2, 3))
    expected = []
    for u in range(units):
        order = sorted(range(n), key=lambda i: (-float(maxima[i, u]), i))[:k]
        expected.append(order)
    for batches in ([range(0, 60, 10)], [range(50, -10, -10)]):
        top = TopKImages(units, k, (2, 3))
        for start in batches[0]:
            idx = torch.arange(start, start + 10)
            batch = acts[idx].contiguous(memory_format=torch.channels_last if fmt == "channels_last"
                                         else torch.contiguous_format)
            top.add(maxima[idx], batch, idx)
        score, index, maps = top.ranked()
        assert index.tolist() == expected, compiled
        for u in range(units):
            assert torch.equal(maps[u], acts[index[u], u]) and torch.equal(score[u], maxima[index[u], u])


@pytest.mark.parametrize("layout", ["shuffled", "smallest_where_sampled", "sorted", "ties"])
@pytest.mark.parametrize("entering", ["few", "many"])
def test_entering_values_displace_the_smallest_kept(layout, entering):
    """A full row that new values enter (a few, as late in a pass, or as many as it holds, as at
    its start): the select that brackets the new bar between pivots from a sample of the row (and
    falls back to a quickselect when the sample misleads) keeps the largest values, whatever the
    row's order, and hands back the new smallest as the bar."""
    rng = np.random.default_rng(len(layout) + len(entering))
    for trial in range(40):
        keep = int(rng.integers(260, 700))
        row = rng.standard_normal(keep).astype(np.float32)
        if layout == "ties":
            row = np.round(row * 2).astype(np.float32)
        elif layout == "sorted":
            row = np.sort(row)
        elif layout == "smallest_where_sampled":   # the row's smallest values where a sample looks
            row = np.sort(row)[::-1].copy()
            spots = (np.arange(64) * (keep + 20)) // 64 + (keep + 20) // 128
            spots = spots[spots < keep]
            small = np.sort(row)[:len(spots)]
            rest = np.setdiff1d(np.arange(keep), spots)
            row[spots], row[rest] = small, np.sort(row)[len(spots):][rng.permutation(len(rest))]
        count = int(rng.integers(1, keep // 5)) if entering == "few" else int(rng.integers(keep // 2, keep))
        new = (rng.standard_normal((count,)) + (1.0 if entering == "few" else 0.0)).astype(np.float32)
        if layout == "ties":
            new = np.round(new * 2).astype(np.float32)
        rows = np.zeros((1, 2 * keep), np.float32)
        rows[0, :keep] = row
        roots = np.array([row.min()], np.float32)
        maxima = np.zeros((1, 1), np.float32)
        filled = Q._topvalues.push_values(rows, keep, keep, new.reshape(1, 1, 1, -1), maxima, 1, roots)
        expected = np.sort(np.concatenate([row, new]))[-keep:]
        assert filled == keep
        np.testing.assert_array_equal(np.sort(rows[0, :keep]), expected)
        assert roots[0] == expected[0]


def test_top_images_checks_its_arguments():
    score, index = np.zeros((3, 2), np.float32), np.zeros((3, 2), np.int64)
    with pytest.raises(ValueError, match=r"top_images\(\): shapes disagree"):
        Q._topvalues.top_images(score, index, np.zeros((4, 2), np.float32), np.arange(4), np.zeros((3, 2), np.int64))
    with pytest.raises(TypeError, match="argument 'images' must hold int64"):
        Q._topvalues.top_images(score, index, np.zeros((4, 3), np.float32), np.arange(4, dtype=np.int32),
                                np.zeros((3, 2), np.int64))
    maxima, images, entered = np.zeros((4, 3), np.float32), np.arange(4), np.zeros((3, 2), np.int64)
    with pytest.raises(TypeError, match="acts and maps together"):
        Q._topvalues.top_images(score, index, maxima, images, entered, acts=np.zeros((4, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"acts \(4, 3, 2, 2\) and maps \(3, 2, 2, 5\)"):
        Q._topvalues.top_images(score, index, maxima, images, entered, acts=np.zeros((4, 3, 2, 2), np.float32),
                                maps=np.zeros((3, 2, 2, 5), np.float32))
    with pytest.raises(ValueError, match="'maps' must be C-contiguous"):
        Q._topvalues.top_images(score, index, maxima, images, entered, acts=np.zeros((4, 3, 2, 2), np.float32),
                                maps=np.zeros((3, 2, 2, 4), np.float32)[..., ::2])


@pytest.mark.parametrize("seen", [400, 371, 2])
def test_threshold_of_fewer_values_than_expected_is_numpys(seen):
    """Images skipped: the state kept enough for any smaller n, and its threshold is still
    numpy.quantile of the values seen (the quantile's two order statistics selected from what it
    holds)."""
    gen = torch.Generator().manual_seed(seen)
    values = (torch.randn(3, seen, generator=gen) * 4).round()     # ties too
    q = ExactTopQuantile(3, 400, 0.9)
    q.add(values)
    expected = np.quantile(values.numpy(), 0.9, axis=1).astype(np.float32)
    np.testing.assert_array_equal(q.threshold(seen), expected)
