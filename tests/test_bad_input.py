"""Bad input to a dissection gets a clear error, or is skipped and listed when asked."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from engine_data import TinyNet, make_dataset
from torch import nn

import netdissect
from netdissect.config import NO_COMPILED
from netdissect.errors import ActivationError, DatasetError, DissectionWarning, ModelError
from netdissect.models.specs import load_checkpoint


@pytest.fixture()
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", n_images=10, size=32, seed=2)


def corrupt_image(root, n):
    path = root / "images" / f"img{n:04d}.jpg"
    path.write_bytes(path.read_bytes()[:40])  # truncated JPEG
    return path


def test_corrupt_image_fails_by_default_naming_the_file(dataset):
    corrupt_image(dataset, 3)
    with pytest.raises(DatasetError, match=r"img0003\.jpg"):
        netdissect.dissect(TinyNet(), ["conv3"], dataset, workers=0, progress=False)


def test_corrupt_image_is_skipped_and_listed_when_asked(dataset, tmp_path):
    corrupt_image(dataset, 3)
    out = tmp_path / "run"
    result = netdissect.dissect(TinyNet(), ["conv3"], dataset, out=out, workers=0, progress=False,
                                on_bad_image="skip", min_category_images=0)
    assert result.images == 9
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 9
    assert [s["image"] for s in summary["skipped_images"]] == ["img0003.jpg"]
    assert any("skipped" in w for w in summary["warnings"])
    # the skipped image changes nothing else: same as a dataset without it
    clean = tmp_path / "clean"
    shutil.copytree(dataset, clean)
    lines = (clean / "index.csv").read_text().splitlines()
    (clean / "index.csv").write_text("\n".join(l for l in lines if not l.startswith("img0003")) + "\n")
    reference = netdissect.dissect(TinyNet(), ["conv3"], clean, workers=0, progress=False,
                                   min_category_images=0)
    np.testing.assert_array_equal(result["conv3"].thresholds, reference["conv3"].thresholds)
    np.testing.assert_allclose(result["conv3"].iou, reference["conv3"].iou, atol=1e-7)


def test_missing_mask_names_file_and_line(dataset):
    (dataset / "images" / "img0004_object.png").unlink()
    with pytest.raises(DatasetError, match=r"img0004_object\.png.*line 6|line 6.*img0004_object\.png"):
        netdissect.dissect(TinyNet(), ["conv3"], dataset, workers=0, progress=False)


class Poison(nn.Module):
    """``value`` (NaN, inf or -inf) in every image of a batch but the first."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, y):
        y = y.clone()
        y[1:, 0, 0, 0] = self.value
        return y


class NaNAfterFirst(nn.Module):
    def __init__(self, value: float = float("nan")):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.poison = Poison(value)

    def forward(self, x):
        return self.poison(self.conv(x))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("compiled", [True, False])
def test_nan_activation_names_layer_and_image(dataset, value, compiled, monkeypatch):
    """Found by the compiled threshold state's read (no separate check) or by the pass's check."""
    if not compiled:
        monkeypatch.setenv(NO_COMPILED, "1")
    with pytest.raises(ActivationError, match=r"layer 'poison'.*img0001\.jpg.*line 3"):
        netdissect.dissect(NaNAfterFirst(value), ["poison"], dataset, batch_size=4, workers=0, progress=False)


def test_half_precision_model_is_dissected_in_float32(dataset):
    model = TinyNet().to(torch.bfloat16)

    class Cast(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.to(torch.bfloat16))

    result = netdissect.dissect(Cast(model), ["inner.conv3"], dataset, workers=0, progress=False,
                                min_category_images=0)
    assert result["inner.conv3"].thresholds.dtype == np.float32


def test_checkpoint_mismatch_lists_keys(tmp_path):
    path = tmp_path / "ck.pt"
    state = TinyNet().state_dict()
    state.pop("conv1.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"missing keys: conv1\.bias.*unexpected keys: extra\.weight"):
        load_checkpoint(TinyNet(), path)


def test_empty_split_is_a_clear_error(dataset):
    with pytest.raises(DatasetError, match="split"):
        netdissect.dissect(TinyNet(), ["conv3"], dataset, split="nope", workers=0, progress=False)


def test_category_labeled_in_few_images_warns(dataset):
    with pytest.warns(UserWarning, match="'texture' is labeled in only 5 images"):
        result = netdissect.dissect(TinyNet(), ["conv3"], dataset, workers=0, progress=False,
                                    min_category_images=6)
    assert result.category_image_counts["texture"] == 5


def test_shared_module_called_twice_warns(dataset):
    import torchvision
    model = torchvision.models.resnet18(num_classes=3)
    with pytest.warns(UserWarning, match=r"'layer1.0.relu' runs 2 times.*dissect 'layer1.0'"):
        netdissect.dissect(model, ["layer1.0.relu"], dataset, workers=0, progress=False,
                           min_category_images=0)


class SharedReLU(nn.Module):
    """One ReLU module run after both convolutions (as a torchvision ResNet block's); with
    ``only_size`` the model refuses every other input size (a fixed-size model's probes fail)."""

    def __init__(self, only_size=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.only_size = only_size

    def forward(self, x):
        if self.only_size is not None and x.shape[-1] != self.only_size:
            raise RuntimeError(f"this model takes {self.only_size} px only")
        return self.relu(self.conv2(self.relu(self.conv1(x))))


@pytest.mark.parametrize("only_size", [None, 32])
def test_a_shared_module_is_named_with_its_calls_per_pass(dataset, only_size):
    """The calls are counted on the run's first image (the probe at the images' size), whatever the
    probes at other sizes did."""
    with pytest.warns(DissectionWarning, match=r"layer 'relu' runs 2 times per forward pass"):
        result = netdissect.dissect(SharedReLU(only_size), ["relu"], dataset, workers=0, progress=False)
    assert result.layers["relu"].map_shape == (32, 32)
