"""Receptive-field measurement and the rf upsampling grid, against hand-derived values."""
import pytest
import torch
import torchvision
from engine_data import TinyNet
from torch import nn

from netdissect.tally.upsample import ReceptiveField, measure_receptive_field, rf_grid, rf_upsample


@pytest.mark.parametrize("layer, stride", [("relu1", 2), ("relu2", 4), ("conv3", 8)])
def test_conv_stack_field_matches_hand_derivation(layer, stride):
    # k3 s2 p1 three times: output i is centred on input pixel stride * i
    field = measure_receptive_field(TinyNet().eval(), layer, (32, 32))
    assert field.stride == (stride, stride)
    assert field.offset == (0.0, 0.0)


def test_unpadded_conv_has_an_offset():
    # k5 s1 p0 then k3 s2 p0: output i covers input 2i .. 2i+6, centred on 2i + 3
    model = nn.Sequential(nn.Conv2d(3, 4, 5), nn.Conv2d(4, 4, 3, stride=2)).eval()
    field = measure_receptive_field(model, "1", (40, 40))
    assert field.stride == (2.0, 2.0)
    assert field.offset == (3.0, 3.0)


def test_resnet_field_is_measured_past_the_image_border():
    field = measure_receptive_field(torchvision.models.resnet18().eval(), "layer3", (224, 224))
    assert field.stride == (16.0, 16.0) and field.offset == (0.0, 0.0)


def test_rf_upsampling_samples_the_receptive_field_centres():
    # a map that is linear in the row index is reproduced exactly at the sampled positions
    field = ReceptiveField(offset=(3.0, 3.0), stride=(2.0, 2.0))
    native = torch.arange(8, dtype=torch.float32).repeat_interleave(8).view(1, 8, 8)
    grid = rf_grid(field, (8, 8), image=(20, 20), size=(10, 10))
    up = rf_upsample(native, grid)[0]
    for i in range(10):
        image_y = (i + 0.5) * 2 - 0.5                 # segmentation pixel centre in the image
        expected = min(max((image_y - 3.0) / 2.0, 0), 7)  # its native row, clamped at the border
        assert up[i, 0].item() == pytest.approx(expected, abs=1e-5)


def test_field_wider_than_the_image_is_measured():
    # MobileNetV2's last layer sees more than the whole 224 px image
    field = measure_receptive_field(torchvision.models.mobilenet_v2().eval(), "features.18", (224, 224))
    assert field.stride == (32.0, 32.0) and field.offset == (0.0, 0.0)
