"""The streaming engine against a brute-force reference written with plain loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_data import TinyNet, make_dataset

import netdissect
from netdissect.data.broden import BrodenDataset
from netdissect.models.specs import IMAGENET_MEAN, IMAGENET_STD
from netdissect.tally.upsample import measure_receptive_field

LAYERS = ["relu1", "relu2", "conv3"]


def reference_activations(model, ds):
    acts = {name: [] for name in LAYERS}
    modules = dict(model.named_modules())
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)
    std = np.array(IMAGENET_STD, dtype=np.float32)
    for i in range(len(ds)):
        img = ds.load_image(i).astype(np.float32) / 255.0
        x = torch.from_numpy(((img - mean) / std).transpose(2, 0, 1).copy())[None]
        captured = {}
        handles = [modules[n].register_forward_hook(
            lambda m, inp, out, n=n: captured.__setitem__(n, out.detach())) for n in LAYERS]
        with torch.no_grad():
            model(x)
        for h in handles:
            h.remove()
        for n in LAYERS:
            acts[n].append(captured[n][0].numpy())
    return {n: np.stack(v) for n, v in acts.items()}


def loop_rf_upsample(amap, field, image, size):
    """Bilinear sampling at receptive-field centres, clamped, one pixel at a time."""
    h, w = amap.shape
    out = np.zeros(size, dtype=np.float64)
    for i in range(size[0]):
        ay = ((i + 0.5) * image[0] / size[0] - 0.5 - field.offset[0]) / field.stride[0]
        ay = min(max(ay, 0.0), h - 1)
        y0 = int(math.floor(ay)); y1 = min(y0 + 1, h - 1); wy = ay - y0
        for j in range(size[1]):
            ax = ((j + 0.5) * image[1] / size[1] - 0.5 - field.offset[1]) / field.stride[1]
            ax = min(max(ax, 0.0), w - 1)
            x0 = int(math.floor(ax)); x1 = min(x0 + 1, w - 1); wx = ax - x0
            out[i, j] = ((1 - wy) * ((1 - wx) * amap[y0, x0] + wx * amap[y0, x1])
                         + wy * ((1 - wx) * amap[y1, x0] + wx * amap[y1, x1]))
    return out


def reference_iou(acts, ds, level, mode, model, layer, thresholds=None):
    n, k = acts.shape[:2]
    if thresholds is None:
        thresholds = np.array([np.quantile(acts[:, u].ravel(), level) for u in range(k)], dtype=np.float32)
    concepts = list(ds.concepts)
    cats = list(ds.categories)
    r0 = ds.records[0]
    field = measure_receptive_field(model, layer, (r0.ih, r0.iw)) if mode == "rf" else None
    inter = np.zeros((k, len(concepts)), dtype=np.int64)
    active = np.zeros((k, len(cats)), dtype=np.int64)
    label_pixels = np.zeros(len(concepts), dtype=np.int64)
    for x in range(n):
        seg = ds.load_segmentation(x)
        rec = ds.records[x]
        size = (rec.sh, rec.sw)
        label_masks = []
        for c in concepts:
            if c in seg.image_labels:
                label_masks.append(np.ones(size, dtype=bool))
            else:
                m = np.zeros(size, dtype=bool)
                for plane in seg.pixel:
                    m |= plane == c
                label_masks.append(m)
        for ci in range(len(concepts)):
            label_pixels[ci] += label_masks[ci].sum()
        for u in range(k):
            amap = acts[x, u]
            if mode == "bilinear":
                up = F.interpolate(torch.from_numpy(amap)[None, None], size=size, mode="bilinear",
                                   align_corners=False)[0, 0].numpy()
            else:
                up = loop_rf_upsample(amap, field, (rec.ih, rec.iw), size)
            mask = up > thresholds[u]
            for g, cat in enumerate(cats):
                if seg.labeled[g]:
                    active[u, g] += mask.sum()
            for ci in range(len(concepts)):
                inter[u, ci] += (mask & label_masks[ci]).sum()
    cat_of = [cats.index(ds.labels[c].category) for c in concepts]
    iou = np.zeros((k, len(concepts)))
    for u in range(k):
        for ci in range(len(concepts)):
            union = active[u, cat_of[ci]] + label_pixels[ci] - inter[u, ci]
            iou[u, ci] = inter[u, ci] / union if union > 0 else 0.0
    return thresholds, iou


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), n_images=14, size=32, seed=3)


@pytest.mark.parametrize("mode", ["bilinear", "rf"])
@pytest.mark.parametrize("quantile", [0.005, 0.05])
def test_engine_equals_brute_force(dataset, mode, quantile):
    model = TinyNet(seed=1).eval()
    ds = BrodenDataset(dataset)
    acts = reference_activations(model, ds)
    result = netdissect.dissect(model, LAYERS, dataset, quantile=quantile, upsample=mode,
                                batch_size=4, workers=0, progress=False, min_category_images=0)
    for layer in LAYERS:
        thresholds, iou = reference_iou(acts[layer], ds, 1 - quantile, mode, model, layer)
        got = result[layer]
        np.testing.assert_allclose(got.thresholds, thresholds, rtol=0, atol=1e-6)
        assert got.thresholds.dtype == np.float32
        assert list(got.concepts) == list(ds.concepts)
        tol = 1e-6 if mode == "bilinear" else 5e-3  # rf: grid_sample weights are float32
        np.testing.assert_allclose(got.iou, iou, rtol=0, atol=tol)
        assert iou.max() > 0, "the test data should give some non-zero IoU"


def test_engine_thresholds_equal_numpy_on_many_sizes():
    from netdissect.stats.quantile import ExactTopQuantile
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 199, 200, 201, 1000, 4097]:
        values = rng.standard_normal((3, n)).astype(np.float32)
        values[1] = np.maximum(values[1], 0)  # ties at zero as after a ReLU
        values[2] = np.minimum(values[2], 0.5)  # ties at a clipping value as ReLU6
        for level in [0.995, 0.9, 0.5]:
            q = ExactTopQuantile(3, n, level)
            for start in range(0, n, 37):
                q.add(torch.from_numpy(values[:, start:start + 37]))
            expected = np.quantile(values, level, axis=1)
            np.testing.assert_array_equal(q.threshold(), expected.astype(np.float32))


def test_lower_bound_never_exceeds_final_threshold():
    from netdissect.stats.quantile import ExactTopQuantile
    rng = np.random.default_rng(1)
    values = rng.standard_normal((4, 5000)).astype(np.float32)
    q = ExactTopQuantile(4, 5000, 0.995)
    bounds = []
    for start in range(0, 5000, 250):
        q.add(torch.from_numpy(values[:, start:start + 250]))
        bounds.append(q.lower_bound().numpy())
    final = q.threshold()
    for earlier, later in zip(bounds, bounds[1:]):
        assert np.all(later >= earlier)
    assert np.all(bounds[-1] <= final)


def test_sketch_mode_tallies_exactly_at_its_thresholds(dataset, monkeypatch):
    """Two-pass thresholds (radix counts): numpy.quantile's, then the second pass tallies exactly at them."""
    from netdissect.stats.memory import FORCE_TWO_PASS
    monkeypatch.setenv(FORCE_TWO_PASS, "1")
    model = TinyNet(seed=1).eval()
    ds = BrodenDataset(dataset)
    acts = batched_activations(model, ds, batch=4)  # bit-identical to the engine's
    with pytest.warns(UserWarning, match="two-pass radix quantile"):
        result = netdissect.dissect(model, LAYERS, dataset, quantile=0.05, batch_size=4, workers=0,
                                    progress=False, min_category_images=0)
    assert sum("two-pass radix" in w for w in result.warnings) == len(LAYERS)
    for layer in LAYERS:
        got = result[layer]
        values = acts[layer].transpose(1, 0, 2, 3).reshape(got.units, -1)
        np.testing.assert_array_equal(got.thresholds, np.quantile(values, 0.95, axis=1).astype(np.float32))
        _, iou = reference_iou(acts[layer], ds, 0.95, "bilinear", model, layer, thresholds=got.thresholds)
        np.testing.assert_allclose(got.iou, iou, rtol=0, atol=1e-6)


def batched_activations(model, ds, batch):
    """Activations computed as the engine computes them (same batches, memory format)."""
    from netdissect.engine.forward import Normalizer
    from netdissect.models.capture import LayerCapture
    normalize = Normalizer(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"))
    model = model.to(memory_format=torch.channels_last)
    acts = {name: [] for name in LAYERS}
    with torch.no_grad(), LayerCapture(model, LAYERS) as capture:
        for start in range(0, len(ds), batch):
            images = torch.stack([torch.from_numpy(ds.load_image(i))
                                  for i in range(start, min(start + batch, len(ds)))])
            for name, out in capture(normalize(images)).items():
                acts[name].append(out.float().numpy())
    return {name: np.concatenate(v) for name, v in acts.items()}


def test_top_images_equal_a_sort_of_every_image(dataset):
    """Each unit's top-k images: the k largest maxima over the dataset (ties: lower index), with
    their maps, as a full sort of every (image, maximum) finds them; batches of 3 make the kept
    set change across batches, and k = 5 exceeds a batch."""
    model = TinyNet(seed=4).eval()
    ds = BrodenDataset(dataset)
    acts = batched_activations(model, ds, batch=3)
    result = netdissect.dissect(model, LAYERS, dataset, batch_size=3, workers=0, top_k=5, progress=False,
                                min_category_images=0)
    for layer in LAYERS:
        maxima = acts[layer].max(axis=(2, 3))                          # (N, K)
        got = result[layer]
        for u in range(maxima.shape[1]):
            order = sorted(range(len(maxima)), key=lambda i: (-maxima[i, u], i))[:5]
            assert got.topk_index[u].tolist() == order, (layer, u)
            np.testing.assert_array_equal(got.topk_score[u], maxima[order, u])
            np.testing.assert_array_equal(got.topk_maps[u], acts[layer][order, u])
