"""The compiled tally kernel against the torch path it replaces, and its argument checks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netdissect.tally import kernel
from netdissect.tally.counts import combination_counts

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="the C kernel was not compiled")


def torch_path(maps, thr, images, combo_ids, size, max_combos):
    masks = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] > thr[:, None, None]
    return combination_counts(masks.reshape(maps.shape[0], -1), images, combo_ids, max_combos)


def random_pairs(native, size, p=300, n=7, max_combos=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn((p,) + native, generator=gen).relu()
    thr = torch.rand(p, generator=gen) * 1.5
    images = torch.randint(0, n, (p,), generator=gen)
    combo_ids = torch.randint(0, max_combos, (n, size[0] * size[1]), generator=gen, dtype=torch.int32)
    return maps, thr, images, combo_ids


@needs_kernel
@pytest.mark.parametrize("native, size", [((7, 7), (112, 112)), ((14, 14), (112, 112)),
                                          ((56, 56), (112, 112)), ((13, 13), (113, 113)),
                                          ((16, 16), (16, 16)), ((9, 5), (112, 120))])
def test_fused_tally_equals_upsample_threshold_count(native, size):
    if not kernel.exact_for(native, size):
        pytest.skip("kernel upsampling differs from F.interpolate here; the torch path is used")
    maps, thr, images, combo_ids = random_pairs(native, size)
    per_combo, act = kernel.fused_tally(maps, thr, images, combo_ids, size, 9)
    ref_combo, ref_act = torch_path(maps, thr, images, combo_ids, size, 9)
    assert act.sum() > 0
    assert torch.equal(act, ref_act)
    assert torch.equal(per_combo, ref_combo)
    # the label store's own uint16 rows, read where they lie: the same counts
    per_combo16, act16 = kernel.fused_tally(maps, thr, images, combo_ids.numpy().astype(np.uint16), size, 9)
    assert torch.equal(per_combo16, ref_combo) and torch.equal(act16, ref_act)


@needs_kernel
def test_counts_by_hand():
    # one source value 4 at (0, 1) of a 2x2 map, upsampled to 4x4: weights (1, .75, .25, 0)
    # down the rows and (0, .25, .75, 1) across, so the first rows read 0 1 3 4 and 0 .75 2.25 3
    maps = torch.tensor([[[0.0, 4.0], [0.0, 0.0]]]).repeat(2, 1, 1)
    thr = torch.tensor([1.0, 3.0])  # strictly above: 3 at (0, 2) is not active under 3
    combo_ids = torch.arange(4, dtype=torch.int32).repeat(4)[None]  # id = column
    per_combo, act = kernel.fused_tally(maps, thr, torch.zeros(2, dtype=torch.int64), combo_ids, (4, 4), 5)
    assert act.tolist() == [4, 1]
    assert per_combo.tolist() == [[0, 0, 2, 2, 0], [0, 0, 0, 1, 0]]


@needs_kernel
def test_skipped_blocks_change_no_count_at_edge_thresholds():
    # thresholds equal to source values, zero, negative, subnormal, infinite; NaN and inf in maps
    native, size = (7, 7), (112, 112)
    if not kernel.exact_for(native, size):
        pytest.skip("kernel upsampling differs from F.interpolate here")
    maps, _, images, combo_ids = random_pairs(native, size, p=12, seed=3)
    maps[1] -= 0.5
    maps[2, 3, 3], maps[3, 0, 6], maps[4, 2, 2] = float("nan"), float("inf"), float("-inf")
    thr = torch.tensor([maps[0].max(), 0.0, -0.25, 0.5, 0.5, 1e-40, -1e-40, float("inf"),
                        float("-inf"), float("nan"), maps[10, 4, 4], maps[11].max() * (1 - 2 ** -20)])
    per_combo, act = kernel.fused_tally(maps, thr, images, combo_ids, size, 9)
    ref_combo, ref_act = torch_path(maps, thr, images, combo_ids, size, 9)
    assert torch.equal(act, ref_act)
    assert torch.equal(per_combo, ref_combo)


@needs_kernel
def test_slices_of_pairs_add_up_to_one_call():
    maps, thr, images, combo_ids = random_pairs((7, 7), (28, 28), p=50)
    arrays = (maps.numpy(), thr.numpy(), images.numpy(), combo_ids.view(-1, 28, 28).numpy())
    whole = np.empty((50, 9), dtype=np.int64), np.empty(50, dtype=np.int64)
    parts = np.full((50, 9), -7, dtype=np.int64), np.full(50, -7, dtype=np.int64)
    kernel._kernel.tally_bilinear(*arrays, *whole)
    for start, stop in [(0, 17), (17, 17), (17, 50)]:
        kernel._kernel.tally_bilinear(*arrays, *parts, start, stop=stop)
    assert np.array_equal(whole[0], parts[0]) and np.array_equal(whole[1], parts[1])
    for threads in (2, 3, 64):        # OpenMP threads (one after the other in a build without it)
        threaded = np.full((50, 9), -7, dtype=np.int64), np.full(50, -7, dtype=np.int64)
        kernel._kernel.tally_bilinear(*arrays, *threaded, 0, stop=17, threads=threads)
        kernel._kernel.tally_bilinear(*arrays, *threaded, 17, stop=50, threads=threads)
        assert np.array_equal(whole[0], threaded[0]) and np.array_equal(whole[1], threaded[1])


def test_without_the_kernel_no_shape_is_exact(monkeypatch):
    """Availability is read on every call, outside the per-shape cache: a shape found exact
    before is not exact once the kernel is gone or switched off."""
    assert kernel.exact_for((7, 7), (112, 112)) == kernel.available()
    monkeypatch.setattr(kernel, "_kernel", None)
    assert not kernel.available()
    assert not kernel.exact_for((7, 7), (112, 112))


@needs_kernel
def test_common_broden_shapes_use_the_kernel():
    # MobileNet / ResNet strides on Broden 224 (segmentation 112): bit-exact on this machine
    assert kernel.exact_for((7, 7), (112, 112))
    assert kernel.exact_for((56, 56), (112, 112))


def valid_arguments(p=4, n=2, max_combos=3):
    return {"maps": np.zeros((p, 3, 3), dtype=np.float32), "thresholds": np.zeros(p, dtype=np.float32),
            "images": np.zeros(p, dtype=np.int64), "combo_ids": np.zeros((n, 6, 6), dtype=np.int32),
            "per_combo": np.zeros((p, max_combos), dtype=np.int64), "active": np.zeros(p, dtype=np.int64)}


def read_only(array):
    array.setflags(write=False)
    return array


@needs_kernel
@pytest.mark.parametrize("name, value, error, words", [
    ("maps", np.zeros((4, 3, 3)), TypeError, ["maps", "float32"]),
    ("maps", torch.zeros(4, 3, 3), TypeError, ["maps", "tensor.numpy()"]),
    ("images", np.zeros(4, dtype=np.int32), TypeError, ["images", "int64"]),
    ("combo_ids", np.zeros((2, 6, 6), dtype=np.int64), TypeError, ["combo_ids", "int32"]),
    ("combo_ids", np.zeros((2, 6, 6), dtype=np.uint32), TypeError, ["combo_ids", "int32"]),
    ("active", np.zeros(4, dtype=np.float64), TypeError, ["active", "int64"]),
    ("maps", np.zeros((4, 3, 6), dtype=np.float32)[:, :, ::2], ValueError, ["maps", "C-contiguous"]),
    ("per_combo", np.zeros((3, 4), dtype=np.int64).T, ValueError, ["per_combo", "C-contiguous"]),
    ("combo_ids", np.zeros((2, 36), dtype=np.int32), ValueError, ["combo_ids", "3 dimension"]),
    ("thresholds", np.zeros(3, dtype=np.float32), ValueError, ["thresholds", "expected 4"]),
    ("per_combo", np.zeros((5, 3), dtype=np.int64), ValueError, ["per_combo", "expected 4"]),
    ("active", np.zeros(2, dtype=np.int64), ValueError, ["active", "expected 4"]),
    ("per_combo", read_only(np.zeros((4, 3), dtype=np.int64)), ValueError, ["per_combo", "read-only"]),
    ("active", read_only(np.zeros(4, dtype=np.int64)), ValueError, ["active", "read-only"]),
    ("images", np.array([0, 1, 2, 0]), ValueError, ["images[2] = 2", "combo_ids"]),
    ("images", np.array([0, -1, 0, 0]), ValueError, ["images[1] = -1"]),
])
def test_tally_rejects_mismatched_arguments(name, value, error, words):
    args = valid_arguments()
    args[name] = value
    with pytest.raises(error) as caught:
        kernel._kernel.tally_bilinear(**args)
    for word in words:
        assert word in str(caught.value)


@needs_kernel
def test_tally_rejects_a_combination_id_beyond_per_combo():
    args = valid_arguments()
    args["maps"][2] = 1.0  # pair 2 active everywhere, on image 1
    args["images"][2] = 1
    args["combo_ids"][1, 4, 5] = 3  # per_combo has 3 columns
    with pytest.raises(ValueError, match=r"combo_ids of image 1 \(pair 2\) holds id 3"):
        kernel._kernel.tally_bilinear(**args)
    args["maps"][3] = 1.0  # pair 3 too: threads report the first bad pair
    args["images"][3] = 1
    with pytest.raises(ValueError, match=r"\(pair 2\) holds id 3"):
        kernel._kernel.tally_bilinear(**args, threads=4)
    args["combo_ids"][1, 4, 5] = -1
    with pytest.raises(ValueError, match="holds id -1"):
        kernel._kernel.tally_bilinear(**args)
    args["combo_ids"] = args["combo_ids"].astype(np.uint16)     # uint16 ids: 65535 is beyond too
    with pytest.raises(ValueError, match="holds id 65535"):
        kernel._kernel.tally_bilinear(**args)


@needs_kernel
@pytest.mark.parametrize("start, stop", [(-1, 4), (3, 2), (0, 5)])
def test_tally_rejects_pairs_out_of_range(start, stop):
    with pytest.raises(ValueError, match="not within"):
        kernel._kernel.tally_bilinear(**valid_arguments(), start=start, stop=stop)


@needs_kernel
def test_upsample_checks_its_output():
    maps = np.zeros((2, 3, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="'out' must hold float32"):
        kernel._kernel.upsample_bilinear(maps, np.zeros((2, 6, 6)))
    with pytest.raises(ValueError, match="'out' is read-only"):
        kernel._kernel.upsample_bilinear(maps, read_only(np.zeros((2, 6, 6), dtype=np.float32)))
    with pytest.raises(ValueError, match="'out' has 3 along axis 0, expected 2"):
        kernel._kernel.upsample_bilinear(maps, np.zeros((3, 6, 6), dtype=np.float32))


@needs_kernel
def test_fused_tally_rejects_labels_of_another_size():
    maps, thr, images, combo_ids = random_pairs((7, 7), (28, 28), p=4)
    with pytest.raises(ValueError, match="combo_ids"):
        kernel.fused_tally(maps, thr, images, combo_ids, (28, 27), 9)


@needs_kernel
@pytest.mark.parametrize("pixels", [0, 1, 7, 12544])
def test_distinct_keys_equals_numpy_unique(pixels):
    rng = np.random.default_rng(pixels)
    # few distinct keys, large and negative ones among them, in a random order
    keys = rng.choice(np.array([-(1 << 62), -3, 0, 5, 1 << 40, (1 << 62) + 7]), pixels) + rng.integers(0, 3, pixels)
    distinct, first, inverse = kernel.unique_keys(keys)
    u, f, inv = np.unique(keys, return_index=True, return_inverse=True)
    np.testing.assert_array_equal(distinct, u)
    np.testing.assert_array_equal(first, f)
    np.testing.assert_array_equal(inverse, inv)


@needs_kernel
def test_distinct_keys_checks_its_arguments():
    from netdissect.tally import _kernel
    keys = np.zeros(4, np.int64)
    with pytest.raises(TypeError, match="'keys' must hold int64"):
        _kernel.distinct_keys(keys.astype(np.int32), np.empty(4, np.int32), np.empty(4, np.int64), np.empty(4, np.int64))
    with pytest.raises(ValueError, match="'first' has 3 along axis 0, expected 4"):
        _kernel.distinct_keys(keys, np.empty(4, np.int32), np.empty(4, np.int64), np.empty(3, np.int64))
    frozen = np.empty(4, np.int32)
    frozen.flags.writeable = False
    with pytest.raises((ValueError, BufferError)):
        _kernel.distinct_keys(keys, frozen, np.empty(4, np.int64), np.empty(4, np.int64))


@needs_kernel
@pytest.mark.parametrize("planes", [1, 3, 9])     # 9 planes of 7 bits: too many to pack, ranked instead
def test_encoded_labels_are_the_same_with_and_without_the_kernel(planes, monkeypatch):
    from netdissect.tally.counts import encode_segmentation
    rng = np.random.default_rng(planes)
    concept_of_label = np.full(120, -1, np.int32)
    concept_of_label[rng.choice(120, 90, replace=False)] = np.arange(90)
    pixel = rng.integers(0, 120, (planes, 16, 12)).astype(np.int32)
    pixel[:, :4] = pixel[0, :4]                      # the same label in several planes at a pixel
    image_labels = np.array([3, 50, 7], np.int32)
    fast = encode_segmentation(pixel, image_labels, concept_of_label, 90)
    monkeypatch.setenv("NETDISSECT_NO_KERNEL", "1")
    assert not kernel.available() and not kernel.exact_for((7, 7), (112, 112))
    slow = encode_segmentation(pixel, image_labels, concept_of_label, 90)
    for name in ("combo_ids", "table", "image_concepts", "concept_pixels", "combo_pixels"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
        assert getattr(fast, name).dtype == getattr(slow, name).dtype


def random_counts(seed, planes=3, image_width=2, p=200, n=9, width=7, units=5, concepts=11, groups=4):
    gen = torch.Generator().manual_seed(seed)
    per_combo = torch.randint(0, 4, (p, width), generator=gen) * (torch.rand(p, width, generator=gen) < 0.4)
    act = per_combo.sum(dim=1) + torch.randint(0, 3, (p,), generator=gen)
    units_ = torch.randint(0, units, (p,), generator=gen)   # a unit in many pairs
    images = torch.randint(0, n, (p,), generator=gen)
    tables = torch.randint(-1, concepts, (n, width, planes), generator=gen)
    image_concepts = torch.randint(-1, concepts, (n, image_width), generator=gen)
    labeled = torch.rand(n, groups, generator=gen) < 0.6
    return (per_combo, act, units_, images, tables, image_concepts, labeled), (units, concepts, groups)


@needs_kernel
@pytest.mark.parametrize("seed, planes, image_width", [(0, 3, 2), (1, 1, 0), (2, 0, 3), (3, 4, 1)])
def test_pair_counts_are_the_same_with_and_without_the_kernel(seed, planes, image_width, monkeypatch):
    from netdissect.tally.counts import IoUTally
    args, (units, concepts, groups) = random_counts(seed, planes, image_width)
    fast, slow = IoUTally(units, concepts, groups), IoUTally(units, concepts, groups)
    fast.add_counts(*args)
    fast.add_counts(*args)  # adds to what is there
    monkeypatch.setenv("NETDISSECT_NO_KERNEL", "1")
    slow.add_counts(*args)
    slow.add_counts(*args)
    assert torch.equal(fast.inter, slow.inter) and torch.equal(fast.active, slow.active)
    assert fast.inter.sum() > 0 and fast.active.sum() > 0


@needs_kernel
def test_pair_counts_check_their_indices_before_adding():
    from netdissect.tally.counts import IoUTally
    args, (units, concepts, groups) = random_counts(0)
    tally = IoUTally(units, concepts, groups)
    bad_unit = list(args)
    bad_unit[2] = args[2].clone()
    bad_unit[2][-1] = units
    with pytest.raises(ValueError, match="pair 199 has unit 5 of 5"):
        tally.add_counts(*bad_unit)
    bad_concept = list(args)
    bad_concept[4] = args[4].clone()
    bad_concept[4][-1, -1, -1] = concepts
    with pytest.raises(ValueError, match="concept index 11 in tables, but inter has 11 columns"):
        tally.add_counts(*bad_concept)
    assert tally.inter.sum() == 0 and tally.active.sum() == 0
    with pytest.raises(ValueError, match="'tables' has 6 along axis 1, expected 7"):
        kernel.add_pair_counts(tally.inter, tally.active, *args[:4], args[4][:, :6], *args[5:])
