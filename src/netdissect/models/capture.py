"""Capturing the outputs of layers named by their dotted module names.

Hooks are registered in a context manager and always removed, so a model is never left
modified. The forward pass stops as soon as every requested layer has produced its output:
the rest of the network is not needed for dissection.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from netdissect.errors import LayerError
from netdissect.models.exported import STATIC_BATCH_ATTR
from netdissect.models.layouts import Layout, resolve_layouts, select_output, split_layer, token_hints


class _StopForward(Exception):
    """Raised from a hook to end the forward pass once every layer is captured."""


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    shape: Tuple[int, ...]  # output shape for a batch of one image, () when not a tensor
    layout: str = ""        # how it is dissected (nchw, nhwc, tokens ...), "" when it cannot be
    why: str = ""           # why it cannot be dissected


def module_names(model: nn.Module) -> List[str]:
    if isinstance(model, torch.jit.ScriptModule):
        from netdissect.models.torchscript import torchscript_layer_names
        return list(torchscript_layer_names(model))
    return [name for name, _ in model.named_modules() if name]


def check_layer_names(model: nn.Module, layers: Sequence[str]) -> None:
    """Unknown names raise LayerError with the closest existing names."""
    if not layers:
        raise LayerError("no layer given: pass at least one --layer (list them with `netdissect layers --model ...`)")
    names = module_names(model)
    known = set(names)
    for spec in layers:
        layer, _ = split_layer(spec)
        if layer not in known:
            close = difflib.get_close_matches(layer, names, n=6, cutoff=0.5)
            hint = f" Closest names: {', '.join(close)}." if close else ""
            raise LayerError(f"the model has no layer {layer!r}.{hint} "
                             "List all layers with `netdissect layers --model MODEL`.")
    if len(set(layers)) != len(layers):
        raise LayerError(f"a layer is given twice in {list(layers)}")


class LayerCapture:
    """``with LayerCapture(model, layers) as run: maps = run(x)`` -> {layer: (B, K, h, w) maps}.

    A layer is a dotted module name, optionally with the element of a tuple/list/dict output
    to use (``blocks.3:0``). Outputs are converted to unit maps by their layout (see
    models/layouts.py): given in ``layouts``, else decided at the first call from probes at the
    input's size (``layout`` forces one). ``raw=True`` returns the selected outputs as the
    layers produced them. A module that runs several times in one forward pass is captured at
    its first call.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], stop_early: bool = True,
                 layouts: Optional[Dict[str, Layout]] = None, layout: str = "auto", raw: bool = False):
        check_layer_names(model, layers)
        self.model = model
        self.layers = list(layers)
        self.stop_early = stop_early
        self.layouts: Dict[str, Layout] = dict(layouts or {})
        self.layout = layout
        self.raw = raw
        self._handles: list = []
        self._outputs: Dict[str, object] = {}
        self._script_runner: Callable | None = None
        self.calls: Dict[str, int] = {}  # calls of each layer in the last forward pass

    def __enter__(self) -> "LayerCapture":
        modules_of = {spec: split_layer(spec)[0] for spec in self.layers}
        if isinstance(self.model, torch.jit.ScriptModule):
            from netdissect.models.torchscript import capture_torchscript
            self._script_runner = capture_torchscript(self.model, sorted(set(modules_of.values())),
                                                      call="first", need_output=not self.stop_early)
            return self
        modules = dict(self.model.named_modules())
        for module_name in dict.fromkeys(modules_of.values()):
            self._handles.append(modules[module_name].register_forward_hook(self._hook(module_name)))
        return self

    def _hook(self, module_name: str):
        wanted = len({split_layer(spec)[0] for spec in self.layers})

        def hook(module, inputs, output):
            self.calls[module_name] = self.calls.get(module_name, 0) + 1
            if module_name not in self._outputs:
                self._outputs[module_name] = output
            if self.stop_early and len(self._outputs) == wanted:
                raise _StopForward
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _run_raw(self, x: torch.Tensor) -> Dict[str, object]:
        """{layer: the selected output as the module returned it}."""
        step = getattr(self.model, STATIC_BATCH_ATTR, None)
        if step and x.shape[0] != step:  # an exported program of fixed batch size: run in chunks
            parts = []
            for chunk in x.split(step):
                n = chunk.shape[0]
                if n < step:
                    chunk = torch.cat([chunk, chunk[-1:].expand(step - n, *chunk.shape[1:])])
                parts.append({k: v[:n] for k, v in self._run_batch(chunk).items()})
            return {spec: torch.cat([p[spec] for p in parts]) for spec in self.layers}
        return self._run_batch(x)

    def _run_batch(self, x: torch.Tensor) -> Dict[str, object]:
        if self._script_runner is not None:
            _, by_module = self._script_runner(x)
        else:
            self._outputs = {}
            self.calls = {}
            try:
                self.model(x)
            except _StopForward:
                pass
            by_module, self._outputs = self._outputs, {}
        missing = [spec for spec in self.layers if split_layer(spec)[0] not in by_module]
        if missing:
            raise LayerError(f"layer(s) {', '.join(missing)} did not run in the forward pass; "
                             "pick modules that the model's forward actually calls")
        calls = {split_layer(spec)[0]: spec for spec in self.layers}
        self.calls = {calls[m]: n for m, n in self.calls.items() if m in calls}
        return {spec: select_output(by_module[split_layer(spec)[0]], spec) for spec in self.layers}

    def __call__(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = None
        if not self.raw and any(spec not in self.layouts for spec in self.layers):
            todo = [spec for spec in self.layers if spec not in self.layouts]
            seen = {}

            def run_raw(probe):
                found = self._run_raw(probe)
                if probe is x:
                    seen["calls"] = self.calls
                return found
            # x is the probe at its own size: its outputs (and calls) are this call's
            found, outputs = resolve_layouts(run_raw, todo, tuple(x.shape[-2:]), x.device, self.layout,
                                             token_hints(self.model), first=x)
            self.layouts.update(found)
            self.calls = seen.get("calls", self.calls)
        if not outputs:
            outputs = self._run_raw(x)
        if self.raw:
            return outputs
        size = tuple(x.shape[-2:])
        return {spec: self.layouts[spec].to_maps(out, size) for spec, out in outputs.items()}


def layer_layout(model: nn.Module, layer: str, image_hw: Tuple[int, int], layout: str = "auto") -> Layout:
    """The layout of one layer for inputs of ``image_hw`` (probed on blank images)."""
    device = _model_device(model)
    with torch.no_grad(), LayerCapture(model, [layer], layout=layout) as capture:
        capture(torch.zeros(1, 3, *image_hw, device=device))
    return capture.layouts[layer]


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


def list_layers(model: nn.Module, input_size: Tuple[int, int] = (224, 224),
                layout: str = "auto") -> List[LayerInfo]:
    """Every named module with its output shape on a blank image of ``input_size``, and the
    layout it would be dissected with (probed at the sizes of layouts.probe_sizes)."""
    from netdissect.models.layouts import decide_layout, probe_sizes
    was_training = model.training
    model.eval()
    device = _model_device(model)
    try:
        per_size: List[Dict[str, object]] = []
        for i, size in enumerate(probe_sizes(tuple(input_size))):
            try:
                batch = getattr(model, STATIC_BATCH_ATTR, None) or 1
                per_size.append(_all_outputs(model, torch.zeros(batch, 3, *size, device=device)))
            except Exception:
                if i == 0:
                    raise
                per_size.append({})
        if isinstance(model, torch.jit.ScriptModule):
            named = [(n, "ScriptModule") for n in module_names(model)]
        else:
            named = [(n, type(m).__name__) for n, m in model.named_modules() if n]
        hints = token_hints(model)
        rows = []
        for name, kind in named:
            first = per_size[0].get(name)
            tensors = _tensor_elements(first)
            if not tensors:
                rows.append(LayerInfo(name, kind, _shape(first), why="no tensor output" if name in per_size[0]
                                      else "did not run"))
                continue
            for suffix, tensor in tensors:
                spec = name + suffix
                shapes = [tuple(tensor.shape)] + [_element_shape(o.get(name), suffix) for o in per_size[1:]]
                try:
                    found = decide_layout(spec, shapes, tuple(input_size), layout, hints)
                    note = {"assumed": "  (assumed: the model takes one input size)",
                            "fixed size": "  (a fixed grid: does not follow the input size)"}.get(found.source, "")
                    rows.append(LayerInfo(spec, kind, shapes[0], layout=found.describe() + note))
                except LayerError as exc:
                    rows.append(LayerInfo(spec, kind, shapes[0], why=getattr(exc, "reason", str(exc))))
        return rows
    finally:
        model.train(was_training)


def _all_outputs(model: nn.Module, x: torch.Tensor) -> Dict[str, object]:
    """{module name: its first output} for one forward pass."""
    if isinstance(model, torch.jit.ScriptModule):
        from netdissect.models.torchscript import capture_torchscript
        with torch.no_grad():
            _, outputs = capture_torchscript(model, module_names(model), call="first",
                                             skip_unsupported=True)(x)
        return dict(outputs)
    outputs: Dict[str, object] = {}
    handles = []
    for name, module in model.named_modules():
        if name:
            def hook(mod, inp, out, name=name):
                outputs.setdefault(name, out)
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


def _tensor_elements(out, suffix: str = "", depth: int = 0) -> List[Tuple[str, torch.Tensor]]:
    """(':i' / ':key' selector, tensor) of a tensor output or of the tensors in a tuple/list/dict."""
    if isinstance(out, torch.Tensor):
        return [(suffix, out)]
    if depth > 1:
        return []
    if isinstance(out, dict):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(out)]
    else:
        return []
    found = []
    for key, value in items:
        found.extend(_tensor_elements(value, f"{suffix}:{key}", depth + 1))
    return found


def _element_shape(out, suffix: str) -> Optional[Tuple[int, ...]]:
    for key in [k for k in suffix.split(":") if k]:
        if isinstance(out, dict):
            out = out.get(key)
        elif isinstance(out, (tuple, list)) and int(key) < len(out):
            out = out[int(key)]
        else:
            return None
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


def _shape(out) -> Tuple[int, ...]:
    return tuple(out.shape) if isinstance(out, torch.Tensor) else ()


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
