"""Today's backbones with random weights dissect end to end on a small generated set: timm ViT
(tokens), Swin (NHWC stages), ConvNeXt (NHWC MLPs), torchvision vit_b_16 (tokens, one input
size only). Each run's thresholds are checked against maps rebuilt by hand from a forward hook."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import netdissect
from netdissect.errors import ModelError
from netdissect.models.specs import LoadedModel, load_model

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

QUANTILE = 0.05


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    from netdissect.data.synthetic import generate_synthetic
    return generate_synthetic(tmp_path_factory.mktemp("tf") / "data", images=6, size=64, seed=3,
                              workers=0, progress=False, overwrite=True)


def dissect(model, layer, data):
    return netdissect.dissect(model, [layer], data, quantile=QUANTILE, batch_size=4, workers=0,
                              progress=False, min_category_images=0, top_k=2)


def hand_maps(module, layer, data, to_maps):
    """(K, N*h*w) activations from a plain forward hook, converted by ``to_maps``."""
    from netdissect.data.broden import open_dataset
    from netdissect.engine.forward import Normalizer
    ds = open_dataset(data)
    grabbed = []
    handle = dict(module.named_modules())[layer].register_forward_hook(lambda m, i, o: grabbed.append(o))
    norm = Normalizer(module_mean(module), module_std(module), torch.device("cpu"))
    with torch.no_grad():
        for i in range(len(ds)):
            module(norm(torch.from_numpy(ds.load_image(i))[None]))
    handle.remove()
    maps = torch.cat([to_maps(o) for o in grabbed])          # (N, K, h, w)
    return maps.permute(1, 0, 2, 3).reshape(maps.shape[1], -1).numpy()


def module_mean(module):
    return getattr(module, "_nd_mean", (0.485, 0.456, 0.406))


def module_std(module):
    return getattr(module, "_nd_std", (0.229, 0.224, 0.225))


def check_thresholds(result, layer, flat):
    expected = np.quantile(flat, 1 - QUANTILE, axis=1)
    np.testing.assert_allclose(result[layer].thresholds, expected, rtol=1e-5, atol=1e-6)


def test_timm_vit_block_and_mlp_neurons(data64):
    loaded = load_model("timm:vit_tiny_patch16_224", weights="none")
    module = loaded.module.eval()
    module._nd_mean, module._nd_std = loaded.mean, loaded.std
    result = netdissect.dissect(loaded, ["blocks.6", "blocks.6.mlp.fc1"], data64, quantile=QUANTILE,
                                batch_size=4, workers=0, progress=False, min_category_images=0, top_k=2)
    for layer, units in (("blocks.6", 192), ("blocks.6.mlp.fc1", 768)):
        lay = result[layer]
        assert lay.units == units and lay.map_shape == (4, 4)
        assert lay.layout["kind"] == "tokens" and lay.layout["prefix"] == 1 and lay.layout["source"] == "model"
        assert lay.topk_maps.shape == (units, 2, 4, 4)
    flat = hand_maps(module, "blocks.6", data64,
                     lambda o: o[:, 1:].reshape(o.shape[0], 4, 4, -1).permute(0, 3, 1, 2))
    check_thresholds(result, "blocks.6", flat)


def test_timm_swin_stage_is_nhwc(data64):
    module = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, dynamic_img_size=True,
                               depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 2, 2)).eval()
    result = dissect(module, "layers.1", data64)
    lay = result["layers.1"]
    assert lay.layout["kind"] == "nhwc" and lay.units == 64 and lay.map_shape == (8, 8)
    check_thresholds(result, "layers.1", hand_maps(module, "layers.1", data64, lambda o: o.permute(0, 3, 1, 2)))


def test_timm_convnext_linear_mlp_is_nhwc(data64):
    module = timm.create_model("convnext_atto", pretrained=False, conv_mlp=False).eval()
    result = dissect(module, "stages.1.blocks.0.mlp.fc1", data64)
    lay = result["stages.1.blocks.0.mlp.fc1"]
    assert lay.layout["kind"] == "nhwc" and lay.units == 320 and lay.map_shape == (8, 8)
    check_thresholds(result, "stages.1.blocks.0.mlp.fc1",
                     hand_maps(module, "stages.1.blocks.0.mlp.fc1", data64, lambda o: o.permute(0, 3, 1, 2)))


def test_torchvision_vit_b_16_encoder_layer(data64):
    module = torchvision.models.vit_b_16(weights=None, image_size=64).eval()  # accepts 64 x 64 only
    result = dissect(module, "encoder.layers.encoder_layer_1", data64)
    lay = result["encoder.layers.encoder_layer_1"]
    assert lay.layout["kind"] == "tokens" and lay.layout["prefix"] == 1 and lay.layout["source"] == "model"
    assert lay.units == 768 and lay.map_shape == (4, 4)
    check_thresholds(result, "encoder.layers.encoder_layer_1",
                     hand_maps(module, "encoder.layers.encoder_layer_1", data64,
                               lambda o: o[:, 1:].reshape(o.shape[0], 4, 4, -1).permute(0, 3, 1, 2)))


def test_timm_pretrained_offline_fails_fast_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("NETDISSECT_WEIGHTS_DIR", raising=False)
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"), raising=False)
    start = time.time()
    with pytest.raises(ModelError) as err:
        load_model("timm:vit_tiny_patch16_224")
    assert time.time() - start < 5
    message = str(err.value)
    assert "model.safetensors" in message and "timm/vit_tiny_patch16_224" in message
    assert "--weights none" in message


def test_timm_weights_file_is_loaded_without_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = load_model("timm:vit_tiny_patch16_224", weights=str(path))
    assert isinstance(loaded, LoadedModel) and loaded.weights == str(path)
    torch.testing.assert_close(loaded.module.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)


def test_explain_says_what_a_vit_head_reads():
    from netdissect.errors import LayerError
    from netdissect.experiments.explain import pooled_head
    x = torch.randn(1, 3, 32, 32)
    token = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2).eval()
    details = {}
    a, maps, fc_name, fc, logits = pooled_head(token, "norm", x, details)
    assert details["pooling"] == "the class token" and a.shape == (1, 192, 2, 2) and fc_name == "head"
    torch.testing.assert_close(details["pooled"] @ fc.weight.T + fc.bias, logits, rtol=1e-4, atol=1e-4)
    avg = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2,
                            global_pool="avg", fc_norm=False).eval()
    details = {}
    pooled_head(avg, "norm", x, details)
    assert details["pooling"] == "global average pooling"
    with pytest.raises(LayerError, match="class token or the mean of the patch tokens"):
        pooled_head(token, "blocks.0", x)


def test_cli_layers_marks_transformer_layers():
    from test_cli import run_cli
    proc = run_cli("layers", "--model", "timm:vit_tiny_patch16_224", "--weights", "none", "--size", 32, 32)
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "tokens (1 prefix + 2x2 grid" in lines["blocks.6"] and "[timm feature stage]" in lines["blocks.6"]
    assert "tokens (1 prefix + 2x2 grid" in lines["blocks.6.mlp.fc1"]
    assert "cannot be dissected" in lines["blocks.0.attn.q_norm"] and "heads x tokens" in lines["blocks.0.attn.q_norm"]
    assert "nhwc" in lines["patch_embed"]


@pytest.mark.parametrize("name, size, prefix, grid", [
    ("deit_tiny_distilled_patch16_224", 32, 2, (2, 2)),       # class + distillation token
    ("vit_small_patch14_reg4_dinov2", 56, 5, (4, 4)),         # class + 4 registers
    ("eva02_tiny_patch14_224", 56, 1, (4, 4)),
    ("vit_base_patch16_clip_224", 32, 1, (2, 2)),             # a CLIP visual tower
])
def test_prefix_tokens_of_timm_families(name, size, prefix, grid):
    from netdissect.models.capture import layer_layout
    from netdissect.models.layouts import decide_layout, probe_sizes
    module = timm.create_model(name, pretrained=False, dynamic_img_size=True, depth=2).eval()
    found = layer_layout(module, "blocks.1", (size, size))
    assert (found.kind, found.prefix, found.grid, found.source) == ("tokens", prefix, grid, "model")
    # the probes alone (no model hints) find the same prefix and grid
    shapes = []
    for h, w in probe_sizes((size, size)):
        with torch.no_grad():
            shapes.append(tuple(module.forward_features(torch.zeros(1, 3, h, w)).shape))
    probed = decide_layout("forward_features", shapes, (size, size))
    assert (probed.prefix, probed.grid, probed.source) == (prefix, grid, "probes")


def test_a_model_of_another_input_size_is_a_clear_error(data64):
    from netdissect.errors import LayerError
    module = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                                                 hidden_dim=48, mlp_dim=64)
    with pytest.raises(LayerError, match="fails on a 64x64 input.*data resize"):
        dissect(module, "encoder.layers.encoder_layer_0", data64)


@pytest.mark.parametrize("name, layer, index, kw", [
    ("vit_tiny_patch16_224", "blocks.1", 1, dict(depth=2)),
    ("swin_tiny_patch4_window7_224", "layers.1", 1, dict(depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 2, 2))),
])
def test_maps_equal_timms_own_forward_intermediates(name, layer, index, kw):
    from netdissect.models.capture import LayerCapture
    module = timm.create_model(name, pretrained=False, dynamic_img_size=True, **kw).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad(), LayerCapture(module, [layer]) as capture:
        maps = capture(x)[layer]
    with torch.no_grad():
        theirs = module.forward_intermediates(x, indices=[index], output_fmt="NCHW", intermediates_only=True)[0]
    torch.testing.assert_close(maps, theirs)
