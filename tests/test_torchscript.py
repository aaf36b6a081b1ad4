"""Capturing layer outputs of TorchScript models (scripted and traced, saved and reloaded)."""
from __future__ import annotations

import io
import warnings
from typing import Dict, List, Tuple

import pytest
import torch
from torch import nn

from netdissect.errors import LayerError
from netdissect.models.torchscript import capture_torchscript, torchscript_layer_names

torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def reload(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(module, buf)
        buf.seek(0)
        return torch.jit.load(buf)


def export(model: nn.Module, how: str, x: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "script":
            return reload(torch.jit.script(model))
        return reload(torch.jit.trace(model, x))


def hooked(model: nn.Module, names: List[str], x: torch.Tensor) -> Tuple[torch.Tensor, Dict]:
    """Reference: forward hooks on the Python model, storing a copy at every call (last wins)."""
    modules = dict(model.named_modules())
    ref: Dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(
        lambda mod, inp, out, n=n: ref.__setitem__(n, out.clone())) for n in names]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return y, ref


CASES = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None),
                 ["layer1", "layer4.1.conv2", "layer4", "layer4.1.bn2", "layer4.1.relu"]),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None),
                     ["features.3", "features.18", "features.3.conv.0", "features"]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def zoo(request):
    torch.manual_seed(0)
    factory, names = CASES[request.param]
    model = factory().eval()
    x = torch.randn(2, 3, 64, 64)
    exported = {how: export(model, how, x) for how in ("script", "trace")}
    return request.param, model, names, x, exported


@pytest.mark.parametrize("how", ["script", "trace"])
def test_matches_forward_hooks(zoo, how):
    _, model, names, x, exported = zoo
    ts = exported[how]
    y, ref = hooked(model, names, x)
    capture = capture_torchscript(ts, names)
    with torch.no_grad():
        out, acts = capture(x)
    assert torch.equal(out, y)
    assert torch.equal(out, ts(x))
    assert list(acts) == names
    for name in names:
        assert acts[name].shape == ref[name].shape, name
        assert torch.equal(acts[name], ref[name]), name
    # a second call (other input) works the same
    x2 = torch.randn(1, 3, 64, 64)
    y2, ref2 = hooked(model, names[:1], x2)
    with torch.no_grad():
        out2, acts2 = capture(x2)
    assert torch.equal(out2, y2) and torch.equal(acts2[names[0]], ref2[names[0]])


@pytest.mark.parametrize("how", ["script", "trace"])
def test_layer_names_are_the_called_submodules(zoo, how):
    name, model, _, _, exported = zoo
    names = torchscript_layer_names(exported[how])
    assert len(names) == len(set(names))
    assert set(names) == {n for n, _ in model.named_modules() if n}
    assert names[0] == ("conv1" if name == "resnet18" else "features")


def test_every_layer_at_once_and_without_output(zoo):
    _, model, _, x, exported = zoo
    ts = exported["trace"]
    names = torchscript_layer_names(ts)
    y, ref = hooked(model, names, x)
    with torch.no_grad():
        out, acts = capture_torchscript(ts, names)(x)
        none, few = capture_torchscript(ts, names[:3], need_output=False)(x)
    assert torch.equal(out, y)
    assert set(acts) == set(names)
    for n in names:
        assert torch.equal(acts[n], ref[n]), n
    assert none is None and list(few) == names[:3]
    for n in names[:3]:
        assert torch.equal(few[n], ref[n])


def test_need_output_false_prunes_the_rest():
    model = torchvision.models.resnet18(weights=None).eval()
    ts = export(model, "script", torch.randn(1, 3, 32, 32))
    capture = capture_torchscript(ts, ["layer1"], need_output=False)
    text = str(capture.graph)
    assert "layer4" not in text and "layer1" in text


def test_unknown_layer_lists_close_names():
    model = torchvision.models.resnet18(weights=None).eval()
    ts = export(model, "script", torch.randn(1, 3, 32, 32))
    with pytest.raises(LayerError, match="layer4.1.conv2"):
        capture_torchscript(ts, ["layer4.1.conv3"])
    with pytest.raises(LayerError, match="twice"):
        capture_torchscript(ts, ["layer1", "layer1"])
    with pytest.raises(LayerError):
        capture_torchscript(ts, [])
    with pytest.raises(LayerError, match="TorchScript"):
        capture_torchscript(model, ["layer1"])


def test_frozen_model_is_refused_with_advice():
    model = torchvision.models.resnet18(weights=None).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = reload(torch.jit.freeze(torch.jit.script(model)))
    assert torchscript_layer_names(frozen) == []
    with pytest.raises(LayerError, match="freeze") as info:
        capture_torchscript(frozen, ["layer1"])
    assert "package.module:factory" in str(info.value)


class Twice(nn.Module):
    """A module called twice, a ModuleList loop, a tuple-valued submodule, in-place ops."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Conv2d(3, 3, 1) for _ in range(3)])
        self.pair = Pair()
        self.act = nn.ReLU(inplace=False)

    def forward(self, x):
        y = self.conv(x)
        y = self.conv(y * 0.5)
        for block in self.blocks:
            y = block(y)
        a, b = self.pair(y)
        z = self.act(a)
        z.add_(1.0)          # in place on the captured value: the capture keeps the pre-add value
        return z + b


class Pair(nn.Module):
    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        return x - 1.0, x + 1.0


@pytest.mark.parametrize("how", ["script", "trace"])
def test_repeated_calls_loops_tuples_and_inplace(how):
    torch.manual_seed(1)
    model = Twice().eval()
    x = torch.randn(2, 3, 8, 8)
    ts = export(model, how, x)
    names = ["conv", "blocks.1", "act"]
    y, ref = hooked(model, names, x)           # last call wins in `hooked`
    out, acts = capture_torchscript(ts, names + ["pair"])(x)
    assert torch.equal(out, y)
    for n in names:
        assert torch.equal(acts[n], ref[n]), n
    assert isinstance(acts["pair"], tuple) and len(acts["pair"]) == 2
    first = model.conv(x)
    _, acts_first = capture_torchscript(ts, ["conv"], call="first")(x)
    assert torch.equal(acts_first["conv"], first.detach())
    assert not torch.equal(acts["conv"], acts_first["conv"])
    with pytest.raises(ValueError):
        capture_torchscript(ts, ["conv"], call="middle")


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if bool(y.sum() > 1e9):           # data-dependent: c is only called in a branch
            y = self.c(y)
        if self.training:                # attribute-dependent: specialized away
            y = y * 2.0
        return self.b(y)


def test_data_dependent_branch_is_refused_and_attribute_branch_specialized():
    torch.manual_seed(2)
    model = Branchy().eval()
    ts = export(model, "script", torch.randn(1, 3, 4, 4))
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(LayerError, match="control flow"):
        capture_torchscript(ts, ["c"])
    capture = capture_torchscript(ts, ["a", "b", "c"], skip_unsupported=True)
    assert capture.captured_layers == ["a", "b"]
    out, acts = capture(x)
    assert set(acts) == {"a", "b"}
    assert torch.equal(acts["b"], model.b(model.a(x)).detach())
    assert torch.equal(out, ts(x))
    # the training flag was folded into the graph: switching mode rebuilds it
    ts.train()
    out_train, acts_train = capture(x)
    assert torch.equal(acts_train["b"], model.b(2.0 * model.a(x)).detach())
    assert torch.equal(out_train, ts(x))
    ts.eval()
    _, acts_eval = capture(x)
    assert torch.equal(acts_eval["b"], acts["b"])


def test_parameters_are_read_at_call_time():
    torch.manual_seed(3)
    model = Branchy().eval()
    ts = export(model, "trace", torch.randn(1, 3, 4, 4))
    capture = capture_torchscript(ts, ["a"])
    x = torch.randn(1, 3, 4, 4)
    _, before = capture(x)
    with torch.no_grad():
        ts.a.weight.mul_(2.0)
        ts.a.bias.mul_(2.0)
    _, after = capture(x)
    assert torch.allclose(after["a"], 2.0 * before["a"])


def test_hooks_module_uses_torchscript_capture():
    from netdissect.models import capture as hooks

    model = torchvision.models.resnet18(weights=None).eval()
    ts = export(model, "script", torch.randn(1, 3, 32, 32))
    x = torch.randn(1, 3, 32, 32)
    _, ref = hooked(model, ["layer2", "layer3.0.conv1"], x)
    with hooks.LayerCapture(ts, ["layer2", "layer3.0.conv1"]) as run:
        with torch.no_grad():
            acts = run(x)
    assert torch.equal(acts["layer2"], ref["layer2"])
    assert torch.equal(acts["layer3.0.conv1"], ref["layer3.0.conv1"])
