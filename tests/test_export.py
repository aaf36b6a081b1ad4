"""torch.export programs (.pt2) dissect with the same numbers as the Python model they came
from: layers are captured by module path through the unflattened module tree."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_data import make_dataset, tiny_net
from test_layouts import TinyViT
from test_planted import make_planted_dataset

import netdissect
from netdissect.models.capture import list_layers
from netdissect.models.specs import load_model


def export(model, path, batch, dynamic_batch=False, keep=()):
    x = torch.zeros(batch, 3, 32, 32)
    shapes = {"x": {0: torch.export.Dim.DYNAMIC}} if dynamic_batch else None
    program = torch.export.export(model.eval(), (x,), dynamic_shapes=shapes, preserve_module_call_signature=keep)
    torch.export.save(program, str(path))
    return path


def same_numbers(a, b, layers, exact=True):
    """Bit-identical when both ran at the same batch size; a fixed-batch program runs in other
    chunks, where convolutions may round the last bit differently."""
    for layer in layers:
        if exact:
            np.testing.assert_array_equal(a[layer].thresholds, b[layer].thresholds)
            np.testing.assert_array_equal(a[layer].iou, b[layer].iou)
        else:
            np.testing.assert_allclose(a[layer].thresholds, b[layer].thresholds, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(a[layer].iou, b[layer].iou, atol=1e-6)
        np.testing.assert_array_equal(a[layer].topk_index, b[layer].topk_index)


@pytest.mark.parametrize("batch, dynamic", [(1, False), (4, True)])
def test_pt2_gives_the_python_models_numbers(tmp_path, batch, dynamic):
    data = make_dataset(tmp_path / "data", n_images=10, size=32)
    model = tiny_net()
    path = export(model, tmp_path / "tiny.pt2", batch, dynamic)
    layers = ["relu1", "conv3"]
    kw = dict(batch_size=3, workers=0, progress=False, min_category_images=0)
    python = netdissect.dissect(model, layers, data, **kw)
    loaded = load_model(str(path))
    assert loaded.kind == "export" and loaded.extra["static_batch"] == (None if dynamic else batch)
    exported = netdissect.dissect(str(path), layers, data, out=tmp_path / "run", **kw)
    same_numbers(python, exported, layers, exact=dynamic)


def test_pt2_of_a_token_model_is_read_as_tokens(tmp_path):
    data = make_planted_dataset(tmp_path / "planted")
    path = export(TinyViT(), tmp_path / "vit.pt2", 2, keep=("blocks.0",))  # keeps its (tokens, attn)
    kw = dict(quantile=0.6, mean=(0, 0, 0), std=(1, 1, 1), batch_size=3, workers=0, progress=False,
              min_category_images=0)
    python = netdissect.dissect(TinyViT(), ["blocks.0:0"], data, **kw)
    exported = netdissect.dissect(str(path), ["blocks.0:0"], data, **kw)
    same_numbers(python, exported, ["blocks.0:0"], exact=False)
    layout = exported["blocks.0:0"].layout
    assert (layout["kind"], layout["prefix"], layout["source"]) == ("tokens", 2, "assumed")
    assert exported["blocks.0:0"].unit_labels()[0][:2] == ("red", "color")
    rows = {r.name: r for r in list_layers(load_model(str(path)).module, (32, 32))}
    assert rows["blocks.0:0"].layout.startswith("tokens (2 prefix + 16x16")


def test_a_file_that_is_no_program_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(netdissect.ModelError, match="not a torch.export program"):
        load_model(str(bad))


def test_cli_dissects_a_pt2_file(tmp_path):
    from test_cli import run_cli
    data = make_dataset(tmp_path / "data", n_images=6, size=32)
    path = export(tiny_net(), tmp_path / "tiny.pt2", 2)
    out = tmp_path / "run"
    proc = run_cli("dissect", "--model", path, "--layer", "conv3", "--dataset", data, "--out", out,
                   "--workers", 0, "--batch-size", 4, "--no-report", "--min-category-images", 0)
    assert "conv3" in proc.stdout
    import json
    config = json.loads((out / "config.json").read_text())
    assert config["layouts"]["conv3"]["kind"] == "nchw" and config["manifest"]["model"]["spec"] == str(path)
