"""Layer layouts: which dimensions are spatial, decided by which follow the input size; tokens
with prefix tokens dissected through the same engine as CNN maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_planted import SEG, make_planted_dataset, red_cells
from torch import nn

import netdissect
from netdissect.errors import LayerError
from netdissect.models.capture import LayerCapture, list_layers
from netdissect.models.layouts import Layout, decide_layout, probe_sizes, select_output, split_layer

HW = (32, 48)


def shapes_of(fn):
    """Output shapes at the three probe sizes of a 32 x 48 image, from fn(H, W) -> shape."""
    return [fn(h, w) for h, w in probe_sizes(HW)]


def test_probe_sizes_move_height_and_width_apart():
    assert probe_sizes(HW) == [(32, 48), (64, 48), (32, 96)]


def test_nchw_nhwc_and_tokens_are_told_apart():
    assert decide_layout("c", shapes_of(lambda h, w: (1, 8, h // 4, w // 4)), HW).kind == "nchw"
    assert decide_layout("s", shapes_of(lambda h, w: (1, h // 4, w // 4, 8)), HW).kind == "nhwc"
    tokens = decide_layout("v", shapes_of(lambda h, w: (1, 5 + (h // 8) * (w // 8), 16)), HW)
    assert (tokens.kind, tokens.prefix, tokens.grid, tokens.stride) == ("tokens", 5, (4, 6), (8.0, 8.0))


def test_attention_and_head_tensors_are_refused_naming_their_layout():
    n = lambda h, w: 1 + (h // 16) * (w // 16)  # noqa: E731
    with pytest.raises(LayerError, match="heads x tokens x tokens") as err:
        decide_layout("blocks.0.attn.attn_drop", shapes_of(lambda h, w: (1, 3, n(h, w), n(h, w))), HW)
    assert "blocks.0.attn.attn_drop" in str(err.value)
    with pytest.raises(LayerError, match="heads x tokens x channels"):
        decide_layout("blocks.0.attn.q_norm", shapes_of(lambda h, w: (1, 3, n(h, w), 64)), HW)
    with pytest.raises(LayerError, match="no dimension follows the input size"):
        decide_layout("head", shapes_of(lambda h, w: (1, 10)), HW)
    pooled = decide_layout("avgpool", shapes_of(lambda h, w: (1, 8, 7, 7)), HW)  # adaptive pooling: a map still
    assert (pooled.kind, pooled.source) == ("nchw", "fixed size")


def test_one_size_models_use_the_patch_grid_or_the_image_aspect():
    fixed = [(1, 1 + 2 * 3, 8), None, None]
    found = decide_layout("b", fixed, HW, hints=(1, (16, 16)))
    assert (found.kind, found.prefix, found.grid, found.source) == ("tokens", 1, (2, 3), "model")
    found = decide_layout("b", fixed, HW)
    assert (found.kind, found.prefix, found.grid, found.source) == ("tokens", 1, (2, 3), "assumed")
    with pytest.raises(LayerError, match="patch grid"):
        decide_layout("q", [(1, 3, 7, 64), None, None], HW, hints=(1, (16, 16)))
    assert decide_layout("c", [(1, 8, 4, 6), None, None], HW).kind == "nchw"
    assert decide_layout("c", [(1, 4, 6, 96), None, None], HW).kind == "nhwc"


def test_override_forces_a_reading():
    found = decide_layout("x", shapes_of(lambda h, w: (1, 4, 6, 8)), HW, override="nhwc")
    assert (found.kind, found.source) == ("nhwc", "override")
    with pytest.raises(LayerError, match="needs 4 dimensions"):
        decide_layout("x", shapes_of(lambda h, w: (1, 7, 8)), HW, override="nchw")


def test_token_maps_are_row_major_after_the_prefix():
    b, k, gh, gw = 2, 3, 2, 3
    grid = torch.arange(b * gh * gw * k, dtype=torch.float32).reshape(b, gh, gw, k)
    tokens = torch.cat([torch.full((b, 2, k), -1.0), grid.reshape(b, gh * gw, k)], dim=1)
    maps = Layout("tokens", prefix=2, stride=(16.0, 16.0), grid=(gh, gw)).to_maps(tokens, (32, 48))
    assert maps.shape == (b, k, gh, gw)
    assert torch.equal(maps, grid.permute(0, 3, 1, 2))
    nhwc = Layout("nhwc").to_maps(grid)
    assert torch.equal(nhwc[1, 2, 1, 0], grid[1, 1, 0, 2])


def test_zeroing_units_in_the_native_layout():
    tokens = torch.ones(2, 5, 4)
    out = Layout("tokens", prefix=1, grid=(2, 2)).zero_units(tokens, torch.tensor([1, 3]))
    assert out[..., [1, 3]].abs().sum() == 0 and out[..., [0, 2]].min() == 1 and tokens.min() == 1
    maps = torch.ones(2, 4, 3, 3)
    out = Layout("nchw").zero_units(maps, torch.tensor([2]))
    assert out[:, 2].abs().sum() == 0 and out[:, [0, 1, 3]].min() == 1


def test_selecting_an_element_of_a_tuple_or_dict_output():
    assert split_layer("blocks.3:0") == ("blocks.3", ("0",))
    t = torch.zeros(1)
    assert select_output((t, None), "blocks.3:0") is t
    assert select_output({"x": t}, "m:x") is t
    with pytest.raises(LayerError, match="--layer blocks.3:INDEX"):
        select_output((t, t), "blocks.3")
    with pytest.raises(LayerError, match=r"element 0\.\.1"):
        select_output((t, t), "blocks.3:5")


# --------------------------------------------------------------------------- planted token units

class TokenBlock(nn.Module):
    """x + 0, and a (B, N, N) attention-like side output: (tokens, attention)."""

    def forward(self, x):
        attn = torch.softmax(x @ x.transpose(1, 2), dim=-1)
        return x * 1.0, attn


class TinyViT(nn.Module):
    """ViT-shaped: 2x2-pixel patches (a 16x16 grid on 32x32 images = the segmentation size), a
    class and a register token in front. Channel 0 = relu(R - G - B) of its patch: fires on red;
    channel 1 = relu(B - R - G): blue (street) backgrounds; channel 2 = 0. The prefix tokens hold
    large values that would spoil the maps if they were not dropped. No num_prefix_tokens: the
    prefix is found by probing."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 3, kernel_size=2, stride=2, bias=False)
        w = torch.zeros(3, 3, 2, 2)
        w[0, 0], w[0, 1], w[0, 2] = 0.25, -0.25, -0.25
        w[1, 2], w[1, 0], w[1, 1] = 0.25, -0.25, -0.25
        with torch.no_grad():
            self.patch_embed.weight.copy_(w)
        self.prefix = nn.Parameter(torch.full((1, 2, 3), 50.0))
        self.act = nn.ReLU()
        self.blocks = nn.Sequential(TokenBlock())

    def forward(self, x):
        tokens = self.act(self.patch_embed(x)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.prefix.expand(x.shape[0], -1, -1), tokens], dim=1)
        out, attn = self.blocks(tokens)
        return out[:, 0] + attn.mean()  # the attention is used, so an export keeps it


@pytest.fixture(scope="module")
def planted_tokens(tmp_path_factory):
    root = make_planted_dataset(tmp_path_factory.mktemp("planted_tokens"))
    return netdissect.dissect(TinyViT(), ["blocks.0:0"], root, quantile=0.6, mean=(0, 0, 0), std=(1, 1, 1),
                              batch_size=3, workers=0, progress=False, min_category_images=0)


def test_planted_token_units_are_labeled_right(planted_tokens):
    layer = planted_tokens["blocks.0:0"]
    assert layer.layout["kind"] == "tokens" and layer.layout["prefix"] == 2
    assert layer.layout["grid"] == [SEG, SEG] and layer.map_shape == (SEG, SEG)
    labels = layer.unit_labels()
    assert labels[0][:2] == ("red", "color") and labels[0][2] == pytest.approx(1.0)
    blue = sum(SEG * SEG - red_cells(i).sum() for i in range(0, 8, 2))
    assert labels[1][:2] == ("street", "scene") and labels[1][2] == pytest.approx(blue / (4 * SEG * SEG))
    assert layer.best_iou[2] == 0.0
    # the top image of the red unit: its map is exactly the red cells of that image
    image = int(layer.topk_index[0, 0])
    np.testing.assert_array_equal(layer.topk_maps[0, 0] > 0, red_cells(image))


def test_attention_output_of_the_block_is_refused(tmp_path):
    root = make_planted_dataset(tmp_path / "d", n_images=2)
    with pytest.raises(LayerError, match="attention, tokens x tokens"):
        netdissect.dissect(TinyViT(), ["blocks.0:1"], root, workers=0, progress=False, min_category_images=0)
    with pytest.raises(LayerError, match="blocks.0:INDEX"):
        netdissect.dissect(TinyViT(), ["blocks.0"], root, workers=0, progress=False, min_category_images=0)


def test_layers_listing_marks_tokens_and_refuses_attention():
    rows = {r.name: r for r in list_layers(TinyViT(), (32, 32))}
    assert rows["patch_embed"].layout.startswith("nchw")
    assert rows["blocks.0:0"].layout == "tokens (2 prefix + 16x16 grid, channels last)"
    assert rows["blocks.0:1"].layout == "" and "attention" in rows["blocks.0:1"].why


def test_capture_converts_tokens_to_maps_at_any_size():
    model = TinyViT().eval()
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad(), LayerCapture(model, ["blocks.0:0"]) as capture:
        maps = capture(x)["blocks.0:0"]
    assert maps.shape == (2, 3, 12, 20)
    torch.testing.assert_close(maps, torch.relu(model.patch_embed(x)))


def test_ablation_zeroes_a_token_channel_in_the_native_layout():
    from netdissect.experiments.ablate import zeroed
    from netdissect.models.capture import layer_layout
    model = TinyViT().eval()
    x = torch.rand(2, 3, 32, 32)
    layout = layer_layout(model, "blocks.0:0", (32, 32))
    assert layout.kind == "tokens" and layout.prefix == 2
    seen = []
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        plain = model(x)
        with zeroed(model, "blocks.0:0", [0], layout):
            ablated = model(x)
    # the block's returned tokens are unchanged (hooks see them first), the model's output is not
    assert torch.equal(seen[0][0], seen[1][0])
    assert not torch.equal(plain, ablated)
    tokens, attn = seen[1]
    expected = tokens[:, 0].clone()
    expected[:, 0] = 0
    torch.testing.assert_close(ablated, expected + attn.mean())


def test_rotation_of_a_token_layer_rotates_its_maps():
    from netdissect.experiments.rotation import RotatedLayer, random_rotation
    model = TinyViT().eval()
    q = random_rotation(3, seed=1)
    wrapper = RotatedLayer(model, "blocks.0:0", q, [0.0, 1.0]).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), LayerCapture(wrapper, ["rotated.alpha_0", "rotated.alpha_1"]) as capture:
        out = capture(x)
    maps = torch.relu(model.patch_embed(x))
    torch.testing.assert_close(out["rotated.alpha_0"], maps)
    torch.testing.assert_close(out["rotated.alpha_1"],
                               torch.einsum("kj,bjhw->bkhw", torch.tensor(q, dtype=torch.float32), maps))


def test_cli_layout_override_is_used_and_recorded(tmp_path):
    import json

    from test_cli import run_cli
    root = make_planted_dataset(tmp_path / "d", n_images=4)
    out = tmp_path / "run"
    run_cli("dissect", "--model", "test_layouts:TinyViT", "--layer", "blocks.0:0", "--layout", "tokens",
            "--dataset", root, "--out", out, "--workers", 0, "--no-report", "--quiet", "--mean", 0, 0, 0,
            "--std", 1, 1, 1, "--min-category-images", 0)
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["layout"] == "tokens"
    assert config["layouts"]["blocks.0:0"]["source"] == "override"
    assert config["layouts"]["blocks.0:0"]["prefix"] == 2
    proc = run_cli("layers", "--model", "test_layouts:TinyViT", "--size", 32, 32, "--layout", "nchw")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("blocks.0:0 "))
    assert "cannot be dissected" in line and "--layout nchw needs 4 dimensions" in line
