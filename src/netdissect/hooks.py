"""Capturing the outputs of layers named by their dotted module names.

Hooks are registered in a context manager and always removed, so a model is never left
modified. The forward pass stops as soon as every requested layer has produced its output:
the rest of the network is not needed for dissection.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from .errors import LayerError


class _StopForward(Exception):
    """Raised from a hook to end the forward pass once every layer is captured."""


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    shape: Tuple[int, ...]  # output shape for a batch of one image, () when not a tensor


def module_names(model: nn.Module) -> List[str]:
    if isinstance(model, torch.jit.ScriptModule):
        from .torchscript import torchscript_layer_names
        return list(torchscript_layer_names(model))
    return [name for name, _ in model.named_modules() if name]


def check_layer_names(model: nn.Module, layers: Sequence[str]) -> None:
    """Unknown names raise LayerError with the closest existing names."""
    if not layers:
        raise LayerError("no layer given: pass at least one --layer (list them with `netdissect layers --model ...`)")
    names = module_names(model)
    known = set(names)
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, names, n=6, cutoff=0.5)
            hint = f" Closest names: {', '.join(close)}." if close else ""
            raise LayerError(f"the model has no layer {layer!r}.{hint} "
                             "List all layers with `netdissect layers --model MODEL`.")
    if len(set(layers)) != len(layers):
        raise LayerError(f"a layer is given twice in {list(layers)}")


class LayerCapture:
    """``with LayerCapture(model, layers) as run: acts = run(x)`` -> {layer: output tensor}.

    A module that runs several times in one forward pass is captured at its first call.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], stop_early: bool = True):
        check_layer_names(model, layers)
        self.model = model
        self.layers = list(layers)
        self.stop_early = stop_early
        self._handles: list = []
        self._outputs: Dict[str, torch.Tensor] = {}
        self._script_runner: Callable | None = None
        self.calls: Dict[str, int] = {}  # calls of each layer in the last forward pass

    def __enter__(self) -> "LayerCapture":
        if isinstance(self.model, torch.jit.ScriptModule):
            from .torchscript import capture_torchscript
            self._script_runner = capture_torchscript(self.model, self.layers, call="first",
                                                      need_output=not self.stop_early)
            return self
        modules = dict(self.model.named_modules())
        for layer in self.layers:
            self._handles.append(modules[layer].register_forward_hook(self._hook(layer)))
        return self

    def _hook(self, layer: str):
        def hook(module, inputs, output):
            self.calls[layer] = self.calls.get(layer, 0) + 1
            if layer not in self._outputs:
                self._outputs[layer] = output
            if self.stop_early and len(self._outputs) == len(self.layers):
                raise _StopForward
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __call__(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self._script_runner is not None:
            _, outputs = self._script_runner(x)
            return {layer: outputs[layer] for layer in self.layers}
        self._outputs = {}
        self.calls = {}
        try:
            self.model(x)
        except _StopForward:
            pass
        missing = [layer for layer in self.layers if layer not in self._outputs]
        if missing:
            raise LayerError(f"layer(s) {', '.join(missing)} did not run in the forward pass; "
                             "pick modules that the model's forward actually calls")
        outputs, self._outputs = self._outputs, {}
        return outputs


def check_activation_shape(layer: str, output) -> Tuple[int, int, int]:
    """(K, h, w) of a layer's output, or LayerError when it is not N x K x h x w."""
    if not isinstance(output, torch.Tensor):
        raise LayerError(f"layer {layer!r} returns {type(output).__name__}, not a tensor; "
                         "dissect one of its tensor-valued submodules instead")
    if output.dim() != 4:
        raise LayerError(f"layer {layer!r} outputs shape {tuple(output.shape)}, not N x K x h x w: "
                         "Network Dissection needs spatial feature maps (pick a convolutional layer; "
                         "`netdissect layers` shows every layer's shape)")
    return int(output.shape[1]), int(output.shape[2]), int(output.shape[3])


def list_layers(model: nn.Module, input_size: Tuple[int, int] = (224, 224)) -> List[LayerInfo]:
    """Every named module with its output shape from one dummy forward pass on zeros."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, *input_size, device=_model_device(model))
    try:
        if isinstance(model, torch.jit.ScriptModule):
            from .torchscript import capture_torchscript
            names = module_names(model)
            with torch.no_grad():
                _, outputs = capture_torchscript(model, names, call="first", skip_unsupported=True)(x)
            return [LayerInfo(n, "ScriptModule", _shape(outputs.get(n))) for n in names]
        shapes: Dict[str, Tuple[int, ...]] = {}
        handles = []
        named = [(n, m) for n, m in model.named_modules() if n]
        for name, module in named:
            def hook(mod, inp, out, name=name):
                shapes.setdefault(name, _shape(out))
            handles.append(module.register_forward_hook(hook))
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        return [LayerInfo(n, type(m).__name__, shapes.get(n, ())) for n, m in named]
    finally:
        model.train(was_training)


def _shape(out) -> Tuple[int, ...]:
    return tuple(out.shape) if isinstance(out, torch.Tensor) else ()


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
