"""The compiled tally kernel against the torch path it replaces."""
import pytest
import torch
import torch.nn.functional as F

from netdissect import kernel
from netdissect.tally import combination_counts

pytestmark = pytest.mark.skipif(kernel._library() is None, reason="the C kernel was not compiled")


@pytest.mark.parametrize("native, size", [((7, 7), (112, 112)), ((14, 14), (112, 112)),
                                          ((56, 56), (112, 112)), ((13, 13), (113, 113)),
                                          ((16, 16), (16, 16))])
def test_fused_tally_equals_upsample_threshold_count(native, size):
    if not kernel.exact_for(native, size):
        pytest.skip("kernel upsampling differs from F.interpolate here; the torch path is used")
    gen = torch.Generator().manual_seed(0)
    p, n, max_combos = 300, 7, 9
    maps = torch.randn((p,) + native, generator=gen).relu()
    thr = torch.rand(p, generator=gen) * 1.5
    images = torch.randint(0, n, (p,), generator=gen)
    combo_ids = torch.randint(0, max_combos, (n, size[0] * size[1]), generator=gen, dtype=torch.int32)
    per_combo, act = kernel.fused_tally(maps, thr, images, combo_ids, size, max_combos)
    masks = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] > thr[:, None, None]
    ref_combo, ref_act = combination_counts(masks.reshape(p, -1), images, combo_ids, max_combos)
    assert act.sum() > 0
    assert torch.equal(act, ref_act)
    assert torch.equal(per_combo, ref_combo)


def test_common_broden_shapes_use_the_kernel():
    # MobileNet / ResNet strides on Broden 224 (segmentation 112): bit-exact on this machine
    assert kernel.exact_for((7, 7), (112, 112))
    assert kernel.exact_for((56, 56), (112, 112))
