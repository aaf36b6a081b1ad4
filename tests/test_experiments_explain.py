"""netdissect explain: a prediction's top contributing units, with their dissection labels."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from PIL import Image
from test_experiments_common import dissected_scene_run, identity_norm, scene_net
from torch import nn

from netdissect.errors import LayerError, NetDissectError
from netdissect.experiments import add_commands
from netdissect.experiments.explain import explain_image, pooled_head, write_explanation
from netdissect.models.specs import load_model


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    return dissected_scene_run(tmp_path_factory.mktemp("explain"), images=8)


def test_street_image_is_explained_by_the_car_unit(dissected, tmp_path):
    data, run = dissected
    image = data / "images" / "im0000.png"  # a street: one car square
    loaded = load_model(scene_net(), **identity_norm())
    info = explain_image(loaded, "units", run, image, top=3, size=0)
    assert info["predicted"]["name"] == "street" and info["predicted"]["index"] == 0
    first = info["units"][0]
    assert (first["unit"], first["label"], first["category"], first["iou"]) == (0, "car", "object", 1.0)
    assert first["detector"] and first["weight"] == 1.0
    assert first["contribution"] == pytest.approx(4 / 1024)  # one 2x2 square in a 32x32 map
    assert first["share_of_positive"] == pytest.approx(1.0)
    assert info["explained"]["logit"] == pytest.approx(info["sum_of_contributions"] + info["explained"]["bias"])
    # the 2x2 square of the 32x32 map, bilinearly upsampled to 64x64: > 0 on 6x6 pixels
    assert first["active_fraction"] == pytest.approx(36 / 4096)
    paths = write_explanation(info, tmp_path / "x")
    html = (tmp_path / "x" / "explain.html").read_text()
    assert "data:image/png;base64," in html and "car" in html and "street" in html
    assert "src='http" not in html and 'src="http' not in html  # self-contained
    assert Image.open(tmp_path / "x" / "explain.png").size[0] > 300
    saved = json.loads((tmp_path / "x" / "explain.json").read_text())
    assert saved["units"][0]["label"] == "car" and "_rgb" not in saved
    assert len(paths) == 3


def test_names_are_text_on_the_page_never_markup(dissected, tmp_path):
    """Concept, layer, class and file names are escaped: a name cannot open a tag on explain.html."""
    from html.parser import HTMLParser
    data, run = dissected
    loaded = load_model(scene_net(), **identity_norm())
    info = explain_image(loaded, "units", run, data / "images" / "im0000.png", top=2, size=0)
    hostile = "<script>alert(1)</script> & co"
    info["units"][0]["label"] = hostile
    info["units"][1]["category"] = "<b>cat</b>"
    info["layer"] = "layer<i>4</i>&"
    info["predicted"]["name"] = info["explained"]["name"] = "<img src=x onerror=alert(2)>"
    info["warnings"] = ["<a href='javascript:x'>warned</a>"]
    write_explanation(info, tmp_path / "x")
    page = (tmp_path / "x" / "explain.html").read_text()

    tags = []
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: tags.append(tag)
    parser.feed(page)
    assert not {"script", "i", "a"} & set(tags)
    assert tags.count("img") == 1 + len(info["units"])  # the input and one heat map per unit
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "layer&lt;i&gt;4&lt;/i&gt;&amp;" in page and "&lt;b&gt;cat&lt;/b&gt;" in page
    assert "<script" not in page and "onerror=alert" not in page.replace("&lt;img src=x onerror=alert(2)&gt;", "")


def test_other_class_and_forest_image(dissected):
    data, run = dissected
    loaded = load_model(scene_net(), **identity_norm())
    info = explain_image(loaded, "units", run, data / "images" / "im0001.png", top=2, size=0)
    assert info["predicted"]["name"] == "forest" and info["units"][0]["label"] == "tree"
    info = explain_image(loaded, "units", run, data / "images" / "im0001.png", top=2, size=0, target="street")
    assert info["explained"]["name"] == "street" and info["explained"]["logit"] == 0.0
    with pytest.raises(NetDissectError, match="neither a class index"):
        explain_image(loaded, "units", run, data / "images" / "im0001.png", size=0, target="ocean")


class NotPooled(nn.Module):
    """conv -> flatten -> linear: no global pooling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


class TwoFc(nn.Module):
    """conv -> pool -> linear -> linear (mobilenet_v3 style): the final Linear is not fed by the pooled layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.hidden = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.hidden(self.conv(x).mean(dim=(2, 3))))


def test_unsupported_heads_are_refused_clearly():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(LayerError, match="does not feed it directly"):
        pooled_head(NotPooled(), "conv", x)
    with pytest.raises(LayerError, match="does not feed it directly"):
        pooled_head(TwoFc(), "conv", x)
    with pytest.raises(LayerError, match="no layer"):
        pooled_head(TwoFc(), "layer9", x)


def test_torchvision_heads_are_recognised():
    import torchvision
    x = torch.rand(1, 3, 32, 32)
    for model, layer in ((torchvision.models.resnet18(weights=None, num_classes=5), "layer4"),
                         (torchvision.models.mobilenet_v2(weights=None, num_classes=5, width_mult=0.25), "features")):
        a, maps, fc_name, fc, logits = pooled_head(model.eval(), layer, x)
        assert maps.shape[1] == fc.in_features and logits.shape == (1, 5)


def test_command_writes_into_the_run(dissected, capsys):
    data, run = dissected
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["explain", "--model", "test_experiments_common:scene_net", "--layer", "units",
                              "--run", str(run), "--image", str(data / "images" / "im0002.png"), "--size", "0",
                              "--units", "2", "--mean", "0", "0", "0", "--std", "1", "1", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "street" in out and "car" in out
    assert (run / "explain" / "im0002" / "explain.html").exists()
