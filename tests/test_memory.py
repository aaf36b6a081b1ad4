"""--memory-budget: one split of one number (netdissect.stats.memory), checked against hand sums."""
from __future__ import annotations

import numpy as np
import pytest
from engine_data import TinyNet, make_dataset

import netdissect
from netdissect.errors import DissectionWarning
from netdissect.stats.memory import FORCE_TWO_PASS, MIB, plan_memory
from netdissect.stats.quantile import top_count

ONE_LAYER = {"conv": (10, 7, 7)}
LAYERS = ["relu1", "relu2", "conv3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("memory") / "data", n_images=10, seed=3)


def test_a_split_by_hand():
    """10 units of 7x7 maps, 1,000 images, top 0.5%, k = 8, 1 MiB."""
    plan = plan_memory(MIB, ONE_LAYER, 1000, 0.995, 8)
    share = plan.layers["conv"]
    top = 10 * 8 * (4 + 8 + 2 * 4 * 49)                 # scores, indices, two copies of the maps
    assert share.top_images == top == 32_320
    rest = MIB - top
    assert share.candidates == rest // 4
    assert top_count(49_000, 0.995) == 246               # 49,000 - floor(0.995 * 48,999)
    assert share.thresholds == share.exact_need == 10 * 246 * 12 and not share.two_pass
    assert plan.tally == rest // 4
    assert plan.held <= MIB


def test_layers_share_the_candidates_by_map_size_and_the_exact_states_smallest_first():
    shapes = {"early": (24, 56, 56), "late": (1280, 7, 7)}   # 75,264 and 62,720 values an image
    images = 60_000
    plan = plan_memory(512 * MIB, shapes, images, 0.995, 8)
    early, late = plan.layers["early"], plan.layers["late"]
    assert early.top_images == 24 * 8 * (12 + 8 * 3136) and late.top_images == 1280 * 8 * (12 + 8 * 49)
    rest = 512 * MIB - early.top_images - late.top_images
    assert early.candidates == rest // 4 * 75_264 // 137_984
    assert late.candidates == rest // 4 * 62_720 // 137_984
    # late: 1280 units x 14,701 kept values x 12 bytes = 225.8 MB, less than its radix counts
    # (1280 x 65,536 x 4 = 335.5 MB): exact, first
    assert late.exact_need == 1280 * top_count(images * 49, 0.995) * 12 == 1280 * 14_701 * 12
    assert not late.two_pass
    # early: 24 x 940,801 x 12 = 271 MB, more than the 38 MB left of the half: two passes,
    # in 24 x 65,536 x 4 bytes
    assert early.exact_need == 24 * 940_801 * 12 > rest // 2 - late.exact_need
    assert early.two_pass and early.thresholds == 24 * 65_536 * 4
    assert plan.tally == rest // 4
    assert plan.held <= 512 * MIB


def test_two_passes_only_where_they_save_memory():
    """A small dataset never takes the radix counts (they would need more memory), even when
    the budget is tiny: the plan then says that it needs more than the budget."""
    plan = plan_memory(1000, ONE_LAYER, 50, 0.995, 8)
    share = plan.layers["conv"]
    assert not share.two_pass and share.exact_need < 10 * 65_536 * 4
    assert plan.minimum == share.top_images + share.exact_need > plan.budget


def test_the_test_switch_forces_two_passes(monkeypatch):
    monkeypatch.setenv(FORCE_TWO_PASS, "1")
    assert plan_memory(1024 * MIB, ONE_LAYER, 50, 0.995, 8).layers["conv"].two_pass


def test_a_budget_below_the_minimum_is_said_and_changes_no_number(dataset):
    params = dict(batch_size=4, workers=0, progress=False, min_category_images=0)
    with pytest.warns(DissectionWarning, match="below what the statistics"):
        small = netdissect.dissect(TinyNet(), LAYERS, dataset, memory_budget_mb=0.001, **params)
    large = netdissect.dissect(TinyNet(), LAYERS, dataset, **params)
    for layer in LAYERS:
        np.testing.assert_array_equal(small[layer].thresholds, large[layer].thresholds)
        np.testing.assert_array_equal(small[layer].iou, large[layer].iou)


def test_the_allocator_policy_is_set_in_a_fresh_process_and_can_be_declined():
    """A dissection keeps glibc from unmapping freed blocks (a CPU forward pass reuses them
    instead of faulting every page in again each batch); NETDISSECT_SYSTEM_MALLOC=1 declines.
    Checked in fresh processes: the policy is process-wide and set once."""
    import os
    import platform
    import subprocess
    import sys
    code = ("from netdissect.stats.memory import reuse_freed_memory as r; a = r(); b = r(); "
            "print(a, b)")
    glibc = platform.libc_ver()[0] == "glibc"
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert default.stdout.split() == ([str(glibc)] * 2)
    env = dict(os.environ, NETDISSECT_SYSTEM_MALLOC="1")
    declined = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert declined.stdout.split() == ["False", "False"]


def test_free_heap_pages_go_back_before_loader_workers_fork():
    """Under the reuse policy the heap keeps freed batch memory; forked loader workers would
    share those pages copy-on-write and every reuse in the next pass would copy a page. So
    make_loader gives them back first: the resident size drops by the freed block."""
    import platform
    import subprocess
    import sys
    if platform.libc_ver()[0] != "glibc" or sys.platform != "linux":
        pytest.skip("the allocator policy is glibc's")
    code = """
import os, numpy as np
from netdissect.stats.memory import reuse_freed_memory
from netdissect.engine.loading import make_loader
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
assert reuse_freed_memory()
block = np.ones(300 * 2 ** 20, dtype=np.uint8)
del block
kept = rss()
make_loader([0, 1], batch_size=1, workers=0)
no_fork = rss()
make_loader([0, 1], batch_size=1, workers=1)
print(kept, no_fork, rss())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kept, no_fork, forked = map(int, out.stdout.split())
    assert kept - no_fork < 50            # no workers, nothing to protect: the memory stays for reuse
    assert kept - forked > 250            # 300 MiB freed block given back before the fork
