"""Candidate maps kept packed (tally.kernel.pack_maps): only the pixels near values above the
threshold's lower bound. The tally of the unpacked maps equals the tally of the maps at every
threshold from that bound up, the buffer prunes, spills and reloads packed chunks, and a whole
run gives the same files as one that keeps plain maps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_data import assert_same_run, make_dataset, run_files, tiny_net

import netdissect
from netdissect.stats import streaming
from netdissect.stats.streaming import PairBuffer
from netdissect.tally import kernel
from netdissect.tally.counts import combination_counts

pytestmark = pytest.mark.skipif(not kernel.available(), reason="the C kernel was not compiled")


def _torch_counts(maps, thr, images, combo_ids, size, max_combos):
    masks = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] > thr[:, None, None]
    return combination_counts(masks.reshape(maps.shape[0], -1), images, combo_ids, max_combos)


@pytest.mark.parametrize("native, size", [((7, 7), (112, 112)), ((14, 14), (112, 112)), ((56, 56), (112, 112)),
                                          ((9, 5), (112, 120))])
def test_unpacked_maps_tally_the_same_at_every_threshold_from_the_bound(native, size):
    gen = torch.Generator().manual_seed(sum(native))
    p, n, combos = 240, 5, 7
    maps = torch.randn((p,) + native, generator=gen)
    maps[::3] = maps[::3].relu()                                   # ties at zero
    bound = torch.quantile(maps.flatten(1), 0.9, dim=1)
    bound[::7] = -float("inf")                                     # before the state is full
    bound[1::7] = 1e-31                                            # a bound too small to pack by
    bound[2::7] = -0.5                                             # a negative bound: whole maps too
    unpacked = kernel.unpack_maps(kernel.pack_maps(maps, bound), native)
    kept = (unpacked == maps).float().mean()
    assert kept < 0.8
    images = torch.randint(0, n, (p,), generator=gen)
    ids = torch.randint(0, combos, (n, size[0] * size[1]), generator=gen, dtype=torch.int32)
    values = maps.flatten(1)
    lifts = [torch.zeros(p), torch.full((p,), 1e-6), torch.rand(p, generator=gen) * 0.5]
    # the bound itself, just above it, anywhere above it, exact map values above it
    candidates = [torch.where(torch.isfinite(bound), bound, values.min(1).values) + lift for lift in lifts]
    above = torch.where(values >= bound[:, None], values, torch.full_like(values, float("inf")))
    candidates.append(torch.where(torch.isfinite(above.min(1).values), above.min(1).values, bound))
    for thr in candidates:
        thr = torch.maximum(thr, bound).float()
        expected = kernel.fused_tally(maps, thr, images, ids, size, combos)
        got = kernel.fused_tally(unpacked, thr, images, ids, size, combos)
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
        plain = _torch_counts(maps, thr, images, ids, size, combos)
        assert torch.equal(plain[0], got[0]) and torch.equal(plain[1], got[1])


def test_a_packed_map_keeps_the_neighbours_of_its_values_above_the_bound():
    maps = torch.zeros(4, 6, 6)
    maps[0, 2, 3] = 5.0           # inside: its 3 x 3 neighbourhood
    maps[1, 0, 0] = 5.0           # a corner: 2 x 2
    maps[2, 0, 0] = maps[2, 5, 5] = 5.0
    packed = kernel.pack_maps(maps, torch.tensor([1.0, 1.0, 1.0, -float("inf")]))
    skip = np.float32(1.0) * np.float32(1.0 - 2.0 ** -18)     # skip_threshold(1.0) in _kernel.c
    assert packed["count"].tolist() == [9, 4, 8, 36]
    bits = np.unpackbits(packed["need"].numpy(), axis=1, count=36, bitorder="little").reshape(4, 6, 6)
    expected = np.zeros((6, 6), np.uint8)
    expected[1:4, 2:5] = 1
    np.testing.assert_array_equal(bits[0], expected)
    assert packed["fill"][0] == skip and packed["fill"][0] < 1.0 and packed["fill"][3] == -float("inf")
    unpacked = kernel.unpack_maps(packed, (6, 6))
    assert torch.equal(unpacked[3], maps[3]) and unpacked[0, 2, 3] == 5.0 and unpacked[0, 0, 0] == skip


def test_packed_chunks_are_pruned_spilled_and_read_back(tmp_path: Path):
    gen = torch.Generator().manual_seed(3)
    shape = (8, 8)
    buffer = PairBuffer(tmp_path, budget_bytes=1, name="layer.packed1", map_shape=shape)   # a name like a file's kind
    expected = {}
    for step in range(4):
        maps = torch.randn((10,) + shape, generator=gen)
        units, images = torch.arange(10) % 3, torch.arange(10) + 10 * step
        maxima = maps.flatten(1).amax(1)
        bound = torch.full((3,), 0.5)
        if step == 0:                 # a plain chunk among packed ones (a run resumed)
            buffer.add(units, images, maxima, maps)
            decoded = maps
        else:
            packed = kernel.pack_maps(maps, bound[units])
            buffer.add(units, images, maxima, packed=packed)
            decoded = kernel.unpack_maps(packed, shape)
        expected.update({int(i): (m, d) for i, m, d in zip(images, maxima, decoded)})
        if step == 1:
            buffer.prune(torch.tensor([1.0, 1.5, 2.0]))   # drops pairs; packed runs of values follow
            buffer.spill()
    assert any(".packed" in p.name for p in buffer.spilled)
    thresholds = torch.tensor([1.2, 1.6, 2.1])
    for max_pairs in (None, 2):   # packed chunks unpacked whole, or two kept pairs at a time
        seen = []
        for chunk in buffer.final_pairs(thresholds, max_pairs):
            assert set(chunk) == {"unit", "image", "max", "maps"}
            assert max_pairs is None or "values" not in chunk or len(chunk["unit"]) <= max_pairs
            for u, i, m, got in zip(chunk["unit"], chunk["image"], chunk["max"], chunk["maps"]):
                assert m > thresholds[u] and torch.equal(got, expected[int(i)][1])
                seen.append(int(i))
        assert seen == sorted(seen)     # in image order
        assert set(seen) == {i for i, (m, _) in expected.items() if m > thresholds[i % 10 % 3]}


def test_a_run_with_packed_candidates_writes_what_plain_candidates_write(tmp_path: Path, monkeypatch):
    """The same run with candidates packed (and spilled: no share of the budget left for them)
    and with plain maps tallied by torch (no compiled kernel): the same files."""
    from netdissect.engine import pipeline
    data = make_dataset(tmp_path / "data", n_images=24, size=32, seed=5)
    packs, spilled = [], []
    real_pack, real_spill = kernel.pack_maps, PairBuffer.spill
    monkeypatch.setattr(streaming, "pack_maps", lambda maps, bounds, *pairs: packs.append(len(bounds))
                        or real_pack(maps, bounds, *pairs))

    def spill(buffer):
        real_spill(buffer)
        spilled.extend(p.name for p in buffer.spilled)
    monkeypatch.setattr(PairBuffer, "spill", spill)
    monkeypatch.setattr(pipeline, "PACKED_SHARE_DIVISOR", 1 << 40)
    layers = ["conv1", "conv3"]
    args = dict(progress=False, batch_size=4, workers=0, device="cpu", min_category_images=0, label_cache="off")
    netdissect.dissect(tiny_net(), layers, data, out=tmp_path / "packed", **args)
    assert packs and any(".packed" in name for name in spilled)
    monkeypatch.setenv("NETDISSECT_NO_KERNEL", "1")
    netdissect.dissect(tiny_net(), layers, data, out=tmp_path / "plain", **args)
    assert_same_run(run_files(tmp_path / "packed", layers), run_files(tmp_path / "plain", layers))


def test_unpacking_checks_the_counts_against_the_bits():
    maps = torch.zeros(2, 3, 3)
    maps[0, 1, 1] = 2.0
    packed = kernel.pack_maps(maps, torch.tensor([1.0, 1.0]))
    assert packed["count"].tolist() == [9, 0]
    bad = dict(packed, count=torch.tensor([8, 1]))
    with pytest.raises(ValueError, match="map 0 has 9 bits set but a count of 8"):
        kernel.unpack_maps(bad, (3, 3))
    short = dict(packed, values=packed["values"][:-1])
    with pytest.raises(ValueError, match="add up to 9 values, values holds 8"):
        kernel.unpack_maps(short, (3, 3))


def test_unpacking_some_pairs_gives_those_maps_of_the_whole(monkeypatch):
    gen = torch.Generator().manual_seed(8)
    maps = torch.randn((12, 5, 7), generator=gen)
    packed = kernel.pack_maps(maps, torch.full((12,), 0.8))
    whole = kernel.unpack_maps(packed, (5, 7))
    pairs = torch.tensor([11, 0, 5, 5, 3])
    assert torch.equal(kernel.unpack_maps(packed, (5, 7), pairs), whole[pairs])
    monkeypatch.setattr(kernel, "_MAPS_PER_SLICE", 1)      # on several threads (with OpenMP)
    assert torch.equal(kernel.unpack_maps(packed, (5, 7), pairs), whole[pairs])
    assert torch.equal(kernel.unpack_maps(packed, (5, 7)), whole)
    assert kernel.unpack_maps(packed, (5, 7), pairs[:0]).shape == (0, 5, 7)
    with pytest.raises(IndexError, match=r"pairs\[1\] = 12 is not one of the 12 maps"):
        kernel.unpack_maps(packed, (5, 7), torch.tensor([1, 12]))
    negative = dict(packed, count=torch.cat([torch.tensor([-1]), packed["count"][1:]]))
    with pytest.raises(ValueError, match="map 0 has a count of"):
        kernel.unpack_maps(negative, (5, 7), torch.tensor([4]))


def _packed_by_numpy(maps: np.ndarray, bounds: np.ndarray):
    """The packing spelled out: the pixels within one row and column of a value above each
    bound's skip value (the kernel's t * (1 - 2**-18) for these positive bounds), row-major."""
    skip = (bounds * np.float32(1.0 - 2.0 ** -18)).astype(np.float32)
    above = np.pad(maps > skip[:, None, None], ((0, 0), (1, 1), (1, 1)))
    near = np.zeros(maps.shape, bool)
    for dy in range(3):
        for dx in range(3):
            near |= above[:, dy:dy + maps.shape[1], dx:dx + maps.shape[2]]
    return near, [m[n] for m, n in zip(maps, near)], skip


@pytest.mark.parametrize("shape", [(7, 7), (5, 130), (3, 64), (4, 65), (2, 200)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_packing_a_batch_where_it_lies_keeps_the_neighbourhoods(shape, channels_last, monkeypatch):
    """Maps packed straight from a (B, K, h, w) batch, in either memory format, on one thread or
    several, across the 64-pixel words of wide rows: the pixels numpy's dilation keeps."""
    gen = torch.Generator().manual_seed(sum(shape))
    batch = torch.randn((3, 5) + shape, generator=gen)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    images, units = torch.tensor([0, 0, 1, 2, 2, 2, 1]), torch.tensor([4, 1, 0, 2, 3, 4, 4])
    bounds = torch.rand(7, generator=gen) + 1.2
    near, values, skip = _packed_by_numpy(batch[images, units].numpy(), bounds.numpy())
    for per_slice in (1 << 20, 1):         # one slice; a thread per map (where built with OpenMP)
        monkeypatch.setattr(kernel, "_MAPS_PER_SLICE", per_slice)
        packed = kernel.pack_maps(batch, bounds, images, units)
        h, w = shape
        bits = np.unpackbits(packed["need"].numpy(), axis=1, count=h * w, bitorder="little").reshape(7, h, w)
        np.testing.assert_array_equal(bits.astype(bool), near)
        assert packed["count"].tolist() == [len(v) for v in values]
        np.testing.assert_array_equal(packed["values"].numpy(), np.concatenate(values))
        np.testing.assert_array_equal(packed["fill"].numpy(), skip)
    with pytest.raises(IndexError, match=r"map 1 is \(3, 0\), outside the batch's \(3, 5\)"):
        kernel.pack_maps(batch, bounds[:2], torch.tensor([0, 3]), torch.tensor([0, 0]))


def test_packing_more_maps_of_one_image_than_a_run_holds():
    """300 maps of one channels-last image (the kernel finds the bits of at most 256 together)."""
    gen = torch.Generator().manual_seed(11)
    batch = torch.randn((2, 300, 3, 70), generator=gen).contiguous(memory_format=torch.channels_last)
    images, units = torch.ones(300, dtype=torch.int64), torch.arange(300)
    bounds = torch.rand(300, generator=gen) + 1.0
    near, values, _ = _packed_by_numpy(batch[images, units].numpy(), bounds.numpy())
    packed = kernel.pack_maps(batch, bounds, images, units)
    bits = np.unpackbits(packed["need"].numpy(), axis=1, count=210, bitorder="little").reshape(300, 3, 70)
    np.testing.assert_array_equal(bits.astype(bool), near)
    np.testing.assert_array_equal(packed["values"].numpy(), np.concatenate(values))


@pytest.mark.parametrize("units", [[1, 3, 4, 6], [0, 11], [7, 2], [5], list(range(0, 600, 2)),
                                   list(range(0, 600, 3))])
def test_packing_units_with_gaps_reads_their_span_or_each_unit(units):
    """A channels-last image's candidate units with a few gaps (read as a vector over their span,
    the units between them ignored), spread out or unordered (read one by one), and 300 of them
    with every other unit missing (two runs, each spanning up to twice its 256 maps): the pixels
    numpy's dilation keeps, either way."""
    gen = torch.Generator().manual_seed(len(units))
    k = max(units) + 1
    batch = torch.randn((2, k, 3, 9), generator=gen).contiguous(memory_format=torch.channels_last)
    images, units = torch.ones(len(units), dtype=torch.int64), torch.tensor(units)
    bounds = torch.rand(len(units), generator=gen) + 0.8
    near, values, skip = _packed_by_numpy(batch[images, units].numpy(), bounds.numpy())
    packed = kernel.pack_maps(batch, bounds, images, units)
    bits = np.unpackbits(packed["need"].numpy(), axis=1, count=27, bitorder="little").reshape(len(units), 3, 9)
    np.testing.assert_array_equal(bits.astype(bool), near)
    assert packed["count"].tolist() == [len(v) for v in values]
    np.testing.assert_array_equal(packed["values"].numpy(), np.concatenate(values))
    np.testing.assert_array_equal(packed["fill"].numpy(), skip)
