"""The CUDA path gives the labels of the CPU path (skipped, with the reason, without a GPU)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from engine_data import TinyNet, make_dataset

import netdissect

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here: the CPU path is tested everywhere else; "
                                       "run on a GPU machine to test the CUDA path")
LAYERS = ["relu1", "relu2", "conv3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cuda") / "data", n_images=24, size=32, seed=4)


def run(dataset, device, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return netdissect.dissect(TinyNet(seed=2).eval(), LAYERS, dataset, device=device, batch_size=8,
                                  workers=0, progress=False, min_category_images=0, iou_threshold=0.01,
                                  **params)


def assert_agree(cpu, gpu):
    for layer in LAYERS:
        a, b = cpu[layer], gpu[layer]
        # convolutions differ in float32 rounding between the devices; so may the thresholds
        np.testing.assert_allclose(b.thresholds, a.thresholds, rtol=1e-4, atol=1e-5)
        assert [u[:2] for u in a.unit_labels()] == [u[:2] for u in b.unit_labels()]
        np.testing.assert_allclose(b.iou, a.iou, atol=2e-3)


@pytest.mark.parametrize("upsample", ["bilinear", "rf"])
def test_cuda_gives_the_cpu_labels(dataset, upsample):
    assert_agree(run(dataset, "cpu", upsample=upsample), run(dataset, "cuda", upsample=upsample))


def test_cuda_sketch_mode_gives_the_cpu_labels(dataset, monkeypatch):
    from netdissect.stats.memory import FORCE_TWO_PASS
    monkeypatch.setenv(FORCE_TWO_PASS, "1")
    gpu = run(dataset, "cuda")
    monkeypatch.delenv(FORCE_TWO_PASS)
    assert sum("radix" in w for w in gpu.warnings) == len(LAYERS)
    assert_agree(run(dataset, "cpu"), gpu)


def test_cuda_statistics_on_given_activations_equal_the_cpu_ones():
    """Same activations in, same thresholds and top images out: only the model's arithmetic differs."""
    from netdissect.stats.streaming import LayerStream
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(40, 6, 7, 7, generator=gen).relu()
    results = []
    for device in ("cpu", "cuda"):
        stream = LayerStream("x", 6, (7, 7), 40, 0.99, 4, None, 1 << 20, torch.device(device))
        for start in range(0, 40, 8):
            stream.add(acts[start:start + 8].to(device), torch.arange(start, start + 8))
        score, index, _ = stream.topk.ranked()
        results.append((stream.quantile.threshold(), index.cpu(), score.cpu()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1]) and torch.equal(results[0][2], results[1][2])
