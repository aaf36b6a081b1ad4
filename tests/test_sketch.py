"""UnitQuantileSketch: exactness while small, the stated rank-error bound on hard inputs,
merge, checkpoint/resume, memory."""
from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from netdissect.errors import ActivationError
from netdissect.sketch import UnitQuantileSketch


def rank_distance(data: torch.Tensor, estimate: torch.Tensor, q: float) -> torch.Tensor:
    """Per row: distance from q * n to the rank interval [#{x < v}, #{x <= v}] of v."""
    n = data.shape[1]
    srt = torch.sort(data.double(), dim=1).values
    v = estimate.double().reshape(-1, 1).contiguous()
    lo = torch.searchsorted(srt, v).squeeze(1).double()
    hi = torch.searchsorted(srt, v, right=True).squeeze(1).double()
    r = q * n
    return torch.clamp(torch.maximum(lo - r, r - hi), min=0.0)


def feed(sketch: UnitQuantileSketch, data: torch.Tensor, sizes) -> None:
    start = 0
    i = 0
    while start < data.shape[1]:
        step = sizes[i % len(sizes)]
        sketch.add(data[:, start:start + step])
        start += step
        i += 1


def hard_rows(n: int, seed: int = 0) -> torch.Tensor:
    """One distribution per unit, including heavy ties and adversarial orders."""
    g = torch.Generator().manual_seed(seed)
    z = lambda: torch.randn(n, generator=g)
    rows = [
        z(),                                                   # Gaussian
        torch.relu(z()),                                       # ReLU: half zeros
        torch.clamp(3 * z() + 1, 0.0, 6.0),                    # ReLU6: ~5% clipped at 6.0
        torch.clamp(z() - 2.58, min=0.0),                      # 99.5% zeros: quantile at atom edge
        torch.empty(n).exponential_(generator=g) ** 3,         # heavy tail
        torch.sort(z()).values,                                # ascending stream
        torch.sort(z(), descending=True).values,               # descending stream
        torch.randint(0, 7, (n,), generator=g).float(),        # few distinct values
        torch.full((n,), 2.5),                                 # constant
    ]
    # zigzag: blocks of the largest values alternating with blocks of the smallest
    s = torch.sort(z()).values
    half = n // 2
    zig = torch.stack([s[:half], s[half:2 * half].flip(0)], dim=1).reshape(-1)
    rows.append(torch.cat([zig, s[2 * half:]]))
    return torch.stack(rows)


# ---------------------------------------------------------------------------- exactness

def test_exact_while_below_capacity():
    torch.manual_seed(0)
    x = torch.randn(5, 1500)
    x[1] = torch.relu(x[1])
    x[2] = torch.clamp(x[2] * 3, 0, 6)
    s = UnitQuantileSketch(5, capacity=2048)
    feed(s, x, [1, 7, 300, 1000])
    qs = [0.0, 0.1, 0.5, 0.995, 0.999, 1.0]
    exact = torch.quantile(x.double(), torch.tensor(qs, dtype=torch.float64), dim=1).T
    assert torch.allclose(s.quantile(qs).double(), exact, rtol=0, atol=1e-6)
    assert torch.allclose(s.quantile(0.995), torch.quantile(x, 0.995, dim=1), rtol=0, atol=1e-5)
    assert s.quantile(0.995).shape == (5,)
    assert s.quantile([0.995]).shape == (5, 1)
    assert s.count == 1500
    assert s.weight_square_sum == 0
    assert s.rank_error_bound() == pytest.approx(1 / 1500)


def test_single_value_and_empty():
    s = UnitQuantileSketch(2)
    assert s.rank_error_bound() == 0.0
    with pytest.raises(ValueError):
        s.quantile(0.5)
    s.add(torch.tensor([[3.0], [-1.0]]))
    assert s.quantile(0.995).tolist() == [3.0, -1.0]
    s.add(torch.empty(2, 0))
    assert s.count == 1


# ---------------------------------------------------------------------------- error bound

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_error_within_bound_on_hard_inputs(seed):
    n = 120_000
    data = hard_rows(n, seed)
    s = UnitQuantileSketch(data.shape[0], capacity=64, seed=seed)
    feed(s, data, [1000, 37, 4096, 1, 12345])
    bound = s.rank_error_bound()
    assert s.weight_square_sum > 0 and s.num_levels >= 10
    assert bound < 0.2
    for q in [0.995, 0.5, 0.9, 0.999]:
        dist = rank_distance(data, s.quantile(q), q)
        assert bool((dist <= bound * n).all()), (q, dist / n, bound)
    # the 0.995 rank errors sit well inside the bound (~ a few standard deviations)
    dist = rank_distance(data, s.quantile(0.995), 0.995) / n
    assert float(dist.max()) <= bound
    # constant row: exact
    assert s.quantile(0.995)[8].item() == 2.5


def test_default_capacity_error_is_small():
    n = 1_000_000
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4, n, generator=g)
    data = torch.stack([z[0], torch.relu(z[1]), torch.clamp(3 * z[2] + 1, 0.0, 6.0),
                        torch.sort(z[3]).values])
    s = UnitQuantileSketch(4)
    feed(s, data, [100_352])
    bound = s.rank_error_bound()
    assert bound < 2.5e-3
    dist = rank_distance(data, s.quantile(0.995), 0.995) / n
    assert float(dist.max()) <= bound
    # typical error: well below the tail mass of 0.5%
    assert float(dist.max()) < 1e-3


def test_ties_at_quantile_return_the_tied_value():
    n = 50_000
    g = torch.Generator().manual_seed(3)
    relu6 = torch.clamp(torch.randn(2, n, generator=g) * 3 + 1, 0, 6.0)   # 4.8% at 6.0
    s = UnitQuantileSketch(2, capacity=32)
    feed(s, relu6, [999])
    assert s.quantile(0.995).tolist() == [6.0, 6.0]
    zeros = torch.relu(torch.randn(2, n, generator=g) - 3.0)              # 99.9% zeros
    s = UnitQuantileSketch(2, capacity=32)
    feed(s, zeros, [999])
    assert s.quantile(0.5).tolist() == [0.0, 0.0]


def test_deterministic_given_seed_and_seed_matters():
    data = hard_rows(20_000, 1)
    a, b, c = (UnitQuantileSketch(data.shape[0], capacity=16, seed=sd) for sd in (7, 7, 8))
    for s in (a, b, c):
        feed(s, data, [333])
    assert torch.equal(a.quantile([0.5, 0.995]), b.quantile([0.5, 0.995]))
    sa, sc = a.state_dict(), c.state_dict()
    assert any(not torch.equal(x, y) for x, y in zip(sa["levels"], sc["levels"]))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=400),
    cuts=st.lists(st.integers(1, 50), min_size=1, max_size=6),
    capacity=st.integers(2, 12),
    q=st.floats(0, 1),
    seed=st.integers(0, 2 ** 31),
)
def test_property_bound_holds(values, cuts, capacity, q, seed):
    base = torch.tensor(values, dtype=torch.float32)
    data = torch.stack([base, base.round(), base.flip(0)])
    s = UnitQuantileSketch(3, capacity=capacity, seed=seed)
    feed(s, data, cuts)
    assert s.count == len(values)
    assert s.stored_items <= len(values)
    dist = rank_distance(data, s.quantile(q), q)
    assert bool((dist <= s.rank_error_bound() * len(values) + 1e-9).all())
    est = s.quantile(q)
    assert bool((est >= data.min(1).values).all()) and bool((est <= data.max(1).values).all())


# ---------------------------------------------------------------------------- merge

def test_merge_equals_single_stream_within_bound():
    n = 100_000
    data = hard_rows(n, 4)
    cut = 37_000
    single = UnitQuantileSketch(data.shape[0], capacity=64, seed=1)
    feed(single, data, [2048])
    left = UnitQuantileSketch(data.shape[0], capacity=64, seed=2)
    right = UnitQuantileSketch(data.shape[0], capacity=64, seed=3)
    feed(left, data[:, :cut], [1000])
    feed(right, data[:, cut:], [5000, 17])
    right_state = right.state_dict()
    left.merge(right)
    assert left.count == n
    # right is left unchanged
    assert all(torch.equal(a, b) for a, b in zip(right.state_dict()["levels"], right_state["levels"]))
    merged_bound = left.rank_error_bound()
    single_bound = single.rank_error_bound()
    for q in [0.995, 0.5]:
        dm = rank_distance(data, left.quantile(q), q)
        ds = rank_distance(data, single.quantile(q), q)
        assert bool((dm <= merged_bound * n).all())
        assert bool((ds <= single_bound * n).all())
        # the two estimates' true ranks are within the sum of the bounds of each other
        assert bool(((dm - ds).abs() <= (merged_bound + single_bound) * n).all())
    assert left.stored_items <= 64 * (math.ceil(math.log2(n / 64)) + 2)


def test_merge_small_is_exact_and_checks_units():
    torch.manual_seed(1)
    x = torch.randn(3, 900)
    a, b = UnitQuantileSketch(3), UnitQuantileSketch(3)
    a.add(x[:, :400])
    b.add(x[:, 400:])
    a.merge(b)
    assert torch.allclose(a.quantile(0.995), torch.quantile(x, 0.995, dim=1), atol=1e-5, rtol=0)
    empty = UnitQuantileSketch(3)
    empty.merge(a)
    assert torch.allclose(empty.quantile(0.995), a.quantile(0.995))
    with pytest.raises(ValueError):
        a.merge(UnitQuantileSketch(4))


# ---------------------------------------------------------------------------- checkpoint

def test_state_dict_round_trip_continues_identically():
    data = hard_rows(60_000, 2)
    k = data.shape[0]
    whole = UnitQuantileSketch(k, capacity=32, seed=11)
    feed(whole, data, [777])

    first = UnitQuantileSketch(k, capacity=32, seed=11)
    split = 777 * 40
    feed(first, data[:, :split], [777])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = UnitQuantileSketch.from_state_dict(state)
    # the interrupted sketch and its restored copy now diverge from nothing: continue both
    feed(resumed, data[:, split:], [777])
    feed(first, data[:, split:], [777])
    for other in (resumed, first):
        assert other.count == whole.count
        assert other.weight_square_sum == whole.weight_square_sum
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict()["levels"],
                                                      whole.state_dict()["levels"]))
        assert torch.equal(other.quantile([0.5, 0.995]), whole.quantile([0.5, 0.995]))
        assert other.rank_error_bound() == whole.rank_error_bound()


def test_state_dict_is_plain_and_validated():
    s = UnitQuantileSketch(2, capacity=4, dtype=torch.float64)
    s.add(torch.arange(40, dtype=torch.float64).reshape(2, 20))
    d = s.state_dict()
    for key, value in d.items():
        assert isinstance(value, (int, str, torch.Tensor, list)), key
    assert all(t.device.type == "cpu" for t in d["levels"])
    t = UnitQuantileSketch.from_state_dict(d)
    assert t.dtype == torch.float64 and t.capacity == 4
    assert torch.equal(t.quantile(0.7), s.quantile(0.7))
    bad = dict(d, count=d["count"] + 1)
    with pytest.raises(ValueError):
        UnitQuantileSketch.from_state_dict(bad)
    with pytest.raises(ValueError):
        UnitQuantileSketch.from_state_dict(dict(d, format="other"))


# ---------------------------------------------------------------------------- memory

def test_memory_is_capacity_times_log_levels():
    n = 1_000_000
    capacity = 128
    g = torch.Generator().manual_seed(0)
    s = UnitQuantileSketch(2, capacity=capacity)
    start = 0
    steps = [1, 100, 129, 1000]
    i = 0
    while start < n:
        step = min(steps[i % 4], n - start)
        s.add(torch.randn(2, step, generator=g))
        start += step
        i += 1
        if i % 997 == 0:
            assert s.stored_items <= capacity * (math.ceil(math.log2(max(s.count / capacity, 1))) + 2)
    assert s.count == n
    levels = math.ceil(math.log2(n / capacity)) + 2
    assert s.num_levels <= levels
    assert s.stored_items <= capacity * levels
    state_bytes = sum(t.numel() * t.element_size() for t in s.state_dict()["levels"])
    assert state_bytes <= 2 * 4 * capacity * levels           # 2 units, float32
    assert state_bytes < 100_000                             # vs 8 MB of raw values


# ---------------------------------------------------------------------------- misc

def test_input_checks():
    s = UnitQuantileSketch(2)
    with pytest.raises(ValueError):
        s.add(torch.zeros(3, 5))
    with pytest.raises(ValueError):
        s.add(torch.zeros(2))
    with pytest.raises(ActivationError):
        s.add(torch.tensor([[1.0, float("nan")], [0.0, 0.0]]))
    s.add(torch.tensor([[1, 2], [3, 4]]))          # integers are converted
    with pytest.raises(ValueError):
        s.quantile(1.5)
    with pytest.raises(ValueError):
        UnitQuantileSketch(0)
    with pytest.raises(ValueError):
        UnitQuantileSketch(2, capacity=1)


def test_to_device_keeps_results():
    data = hard_rows(30_000, 6)
    a = UnitQuantileSketch(data.shape[0], capacity=64, seed=5)
    feed(a, data[:, :15_000], [1000])
    b = UnitQuantileSketch.from_state_dict(a.state_dict()).to("cpu")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    b.to(device)
    feed(a, data[:, 15_000:], [1000])
    feed(b, data[:, 15_000:].to(device), [1000])
    assert torch.equal(a.quantile([0.5, 0.995]), b.quantile([0.5, 0.995]).cpu())
