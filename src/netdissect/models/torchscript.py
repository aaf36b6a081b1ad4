"""Capturing the outputs of submodules of a TorchScript model (scripted or traced).

Forward hooks do not run on modules loaded with ``torch.jit.load``. Instead the forward graph
is rewritten:

1. Start from a copy of the model's ``forward`` graph. A submodule call appears in it as
   ``prim::CallMethod[name="forward"](%module, ...)`` where ``%module`` comes from a chain of
   ``prim::GetAttr`` on ``self``: that chain gives the call's dotted module name. (Traced
   models call a module that runs several times through ``forward``, ``forward1``, ...: all
   count as calls of that module.)
2. Right after every call of a requested layer, insert a marker: ``aten::clone`` of the
   call's output (a 1-tuple for a non-tensor output). The clone keeps the value the module
   returned even if a later in-place op (``relu_``, ``add_``) overwrites the tensor, exactly
   like a hook that stores a copy.
3. Inline the calls of the requested layers' ancestors (any method, e.g. ResNet's
   ``_forward_impl``) with ``Graph.insertGraph``, so that calls nested deeper (``layer4.1.conv2``
   inside ``layer4.1`` inside ``layer4``) come up into the one graph; repeat until no such call
   is left. Modules that are not ancestors of a requested layer stay calls (``CallMethod``).
   Before a method is inlined, its reads of plain attributes of its own module (bool, int,
   float, str, None, e.g. MobileNetV2's ``use_res_connect``) are replaced by their current
   values and constants are propagated, so ``if self.flag:`` branches disappear. These values
   are checked before every call; the graph is rebuilt when one changed (e.g. ``train()``).
4. Return the markers as extra graph outputs, remove what became dead (unused markers; with
   ``need_output=False`` also everything after the last captured layer) and compile the graph
   with ``torch._C._create_function_from_graph``; it is called with the module itself as
   ``self``, so it always uses the module's current parameters.

Scripted and traced models work the same way. A module that is called several times is
captured at its LAST call by default (``call="first"`` picks the first).

Not supported (LayerError says so): models whose submodules were inlined away by
``torch.jit.freeze`` / ``optimize_for_inference`` (no submodule calls are left in the graph),
and layers whose chosen call sits inside data-dependent control flow (an ``if`` on a tensor,
a loop) after the specialization of step 3. Export such a model with ``torch.jit.script`` or
``torch.jit.trace`` without freezing, dissect a layer outside the branch, or pass the Python
model (``package.module:factory``) so that forward hooks are used.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Dict, List, Sequence, Set, Tuple

import torch

from netdissect.errors import LayerError

_FORWARD = re.compile(r"forward\d*$")
_FOLDABLE = {"BoolType", "IntType", "FloatType", "StringType", "NoneType"}

_ALTERNATIVES = ("Export the model with torch.jit.script(model) or torch.jit.trace(model, x) and "
                 "torch.jit.save, without torch.jit.freeze / optimize_for_inference, or pass the "
                 "Python model as `package.module:factory` so that forward hooks can be used.")


# ------------------------------------------------------------------------------ graph helpers

def _check_module(module) -> torch._C.ScriptModule:
    if not isinstance(module, torch.jit.ScriptModule):
        raise LayerError(f"expected a TorchScript module (torch.jit.script/trace/load), got "
                         f"{type(module).__name__}; use forward hooks for Python modules")
    return module._c


def _module_at(root: torch._C.ScriptModule, path: str):
    obj = root
    for part in path.split(".") if path else []:
        obj = obj.getattr(part)
    return obj


def _is_module(obj) -> bool:
    return isinstance(obj, torch._C.ScriptModule)


def _walk(block) -> List[torch._C.Node]:
    """All nodes of a block in program order, descending into nested blocks."""
    out = []
    for node in block.nodes():
        out.append(node)
        for sub in node.blocks():
            out.extend(_walk(sub))
    return out


def _value_paths(graph, self_path: str) -> Dict[int, str]:
    """Value id -> dotted module path, for the values reached by GetAttr chains from self."""
    paths = {next(iter(graph.inputs())).unique(): self_path}
    for node in _walk(graph):
        if node.kind() == "prim::GetAttr":
            src = paths.get(node.input().unique())
            if src is not None:
                name = node.s("name")
                paths[node.output().unique()] = f"{src}.{name}" if src else name
    return paths


def _calls(graph, self_path: str) -> List[Tuple[torch._C.Node, str, str]]:
    """(node, callee path, method name) of every CallMethod on a module reached from self."""
    paths = _value_paths(graph, self_path)
    out = []
    for node in _walk(graph):
        if node.kind() == "prim::CallMethod":
            path = paths.get(node.inputsAt(0).unique())
            if path is not None:
                out.append((node, path, node.s("name")))
    return out


def _method_graph(root, path: str, method: str):
    obj = _module_at(root, path)
    if not _is_module(obj):
        return None
    try:
        return obj._get_method(method).graph
    except RuntimeError:
        return None


# ------------------------------------------------------------------------------ layer names

def torchscript_layer_names(module) -> List[str]:
    """Dotted names of the submodules whose forward the model's forward calls, in call order.

    Follows every method call from ``forward`` (e.g. ResNet's ``_forward_impl``) through the
    whole module tree; each name appears once. Empty for a frozen model (no submodule calls).
    """
    root = _check_module(module)
    names: Dict[str, None] = {}
    visited: Set[Tuple[str, str]] = set()

    def visit(path: str, method: str) -> None:
        visited.add((path, method))
        graph = _method_graph(root, path, method)
        if graph is None:
            return
        for _node, callee, name in _calls(graph, path):
            if callee != path and callee and _FORWARD.match(name):
                names.setdefault(callee, None)
            if (callee, name) not in visited:
                visit(callee, name)

    visit("", "forward")
    return list(names)


# ------------------------------------------------------------------------------ capture

class _Build:
    """One rewritten graph for a fixed set of layers, and the attribute values it assumes."""

    def __init__(self, module, layers: Sequence[str], call: str, need_output: bool,
                 skip_unsupported: bool):
        self.root = module._c
        self.layers = list(layers)
        self.folded: List[Tuple[Any, str, Any]] = []
        self._setattr_cache: Dict[str, Set[str]] = {}
        self.captured: List[str] = []
        self.wrapped: List[bool] = []          # output needs unwrapping from a 1-tuple
        self.need_output = need_output

        targets = set(self.layers)
        ancestors = {""}
        for layer in self.layers:
            parts = layer.split(".")
            ancestors.update(".".join(parts[:i]) for i in range(1, len(parts)))

        graph = module.forward.graph.copy()
        self._specialize(graph, "")
        markers: Dict[str, List[torch._C.Node]] = {layer: [] for layer in self.layers}
        marked: Set[int] = set()
        while True:
            acted = False
            for node, path, method in _calls(graph, ""):
                if path in targets and _FORWARD.match(method) and node.output().unique() not in marked:
                    marked.add(node.output().unique())
                    markers[path].append(self._insert_marker(graph, node))
                    acted = True
                if path in ancestors and self._inline(graph, node, path, method):
                    acted = True
            if not acted:
                break

        outputs = []
        for layer in self.layers:
            nodes = markers[layer]
            if not nodes:
                raise LayerError(
                    f"layer {layer!r} exists in the TorchScript model but its forward is never "
                    f"called by the model's forward (as compiled); pick a layer listed by "
                    f"`netdissect layers`")
            chosen = self._choose(nodes, call)
            if chosen is None:
                if skip_unsupported:
                    continue
                parent = layer.rsplit(".", 1)[0] if "." in layer else None
                outside = (f"a layer outside it (e.g. its parent {parent!r})" if parent
                           else "a layer outside it")
                raise LayerError(
                    f"layer {layer!r} is called inside data-dependent control flow (an `if` on a "
                    f"tensor value, or a loop) of the TorchScript graph, so its {call} output "
                    f"cannot be captured from a TorchScript model. Dissect {outside}, or pass the "
                    f"Python model as `package.module:factory` so that forward hooks are used.")
            outputs.append(chosen.output())
            self.captured.append(layer)
            self.wrapped.append(chosen.kind() == "prim::TupleConstruct")
        for value in outputs:
            graph.registerOutput(value)
        if not need_output:
            graph.eraseOutput(0)
            if outputs:
                # Nothing after the last capture can change a captured copy: drop it (like a
                # forward hook that stops the pass once every layer is captured).
                last = outputs[0].node()
                for value in outputs[1:]:
                    if value.node().isAfter(last):
                        last = value.node()
                for node in reversed(list(graph.nodes())):
                    if not node.isAfter(last):
                        break
                    node.destroy()
        graph.makeMultiOutputIntoTuple()
        torch._C._jit_pass_dce(graph)
        graph.lint()
        self.graph = graph
        self.function = torch._C._create_function_from_graph("netdissect_capture", graph)

    # -- rewriting steps
    def _insert_marker(self, graph, node):
        value = node.output()
        if value.type().kind() == "TensorType":
            graph.setInsertPoint(node)
            none = graph.insertConstant(None)
            graph.setInsertPoint(graph.block())
            marker = graph.create("aten::clone", [value, none])
        else:
            marker = graph.create("prim::TupleConstruct", [value])
            marker.output().setType(torch._C.TupleType([value.type()]))
        marker.insertAfter(node)
        if marker.kind() == "aten::clone":
            marker.output().setType(value.type())
        return marker

    def _inline(self, graph, node, path: str, method: str) -> bool:
        callee_graph = _method_graph(self.root, path, method)
        if callee_graph is None:
            return False
        callee = callee_graph.copy()
        self._specialize(callee, path)
        graph.setInsertPoint(node)
        new_outputs = graph.insertGraph(callee, list(node.inputs()))
        graph.setInsertPoint(graph.block())
        for old, new in zip(node.outputs(), new_outputs):
            old.replaceAllUsesWith(new)
        node.destroy()
        return True

    def _setattr_names(self, path: str) -> Set[str]:
        """Attribute names that some method of the module at ``path`` assigns to self."""
        if path not in self._setattr_cache:
            names: Set[str] = set()
            obj = _module_at(self.root, path)
            for method in obj._method_names():
                graph = obj._get_method(method).graph
                self_id = next(iter(graph.inputs())).unique()
                for node in _walk(graph):
                    if node.kind() == "prim::SetAttr" and node.inputsAt(0).unique() == self_id:
                        names.add(node.s("name"))
            self._setattr_cache[path] = names
        return self._setattr_cache[path]

    def _specialize(self, graph, path: str) -> None:
        """Replace reads of plain attributes of ``self`` by their values; fold constants."""
        obj = _module_at(self.root, path)
        self_id = next(iter(graph.inputs())).unique()
        changed = False
        for node in _walk(graph):
            if (node.kind() != "prim::GetAttr" or node.input().unique() != self_id
                    or node.output().type().kind() not in _FOLDABLE):
                continue
            name = node.s("name")
            if name in self._setattr_names(path):
                continue
            value = obj.getattr(name)
            if not isinstance(value, (bool, int, float, str, type(None))):
                continue
            graph.setInsertPoint(node)
            const = graph.insertConstant(value)
            graph.setInsertPoint(graph.block())     # never leave it on a node about to go
            node.output().replaceAllUsesWith(const)
            node.destroy()
            self.folded.append((obj, name, value))
            changed = True
        if changed:
            torch._C._jit_pass_constant_propagation(graph)

    @staticmethod
    def _choose(nodes, call: str):
        """The marker of the first / last call in program order, or None when that call may
        be inside a block (if / loop) of the top-level graph."""
        def top_ancestor(node):
            while node.owningBlock().owningNode() is not None:
                node = node.owningBlock().owningNode()
            return node

        best, best_top = nodes[0], top_ancestor(nodes[0])
        for node in nodes[1:]:
            anc = top_ancestor(node)
            if (anc.isAfter(best_top) if call == "last" else best_top.isAfter(anc)):
                best, best_top = node, anc
        if best.owningBlock().owningNode() is not None:
            return None
        return best

    def stale(self) -> bool:
        for obj, name, value in self.folded:
            try:
                now = obj.getattr(name)
            except (RuntimeError, AttributeError):
                return True
            if type(now) is not type(value) or now != value:
                return True
        return False


class TorchScriptCapture:
    """Callable returned by ``capture_torchscript``: ``out, acts = capture(x)``."""

    def __init__(self, module, layers: Sequence[str], call: str = "last", need_output: bool = True,
                 skip_unsupported: bool = False):
        self.module = module
        self.layers = list(layers)
        self.call = call
        self.need_output = need_output
        self.skip_unsupported = skip_unsupported
        self._build = self._make()

    def _make(self) -> _Build:
        return _Build(self.module, self.layers, self.call, self.need_output, self.skip_unsupported)

    @property
    def captured_layers(self) -> List[str]:
        """The layers this capture returns (all requested ones unless skip_unsupported)."""
        return list(self._build.captured)

    @property
    def graph(self):
        """The rewritten TorchScript graph (for inspection)."""
        return self._build.graph

    def __call__(self, *args) -> Tuple[Any, Dict[str, torch.Tensor]]:
        if self._build.stale():
            self._build = self._make()
        build = self._build
        result = build.function(self.module._c, *args)
        if not isinstance(result, tuple):
            result = (result,)
        if build.need_output:
            output, captured = result[0], result[1:]
        else:
            output, captured = None, result
        acts = {}
        for layer, value, wrapped in zip(build.captured, captured, build.wrapped):
            acts[layer] = value[0] if wrapped else value
        return output, acts


def capture_torchscript(module, layer_names: List[str], *, call: str = "last",
                        need_output: bool = True, skip_unsupported: bool = False
                        ) -> Callable[..., Tuple[Any, Dict[str, torch.Tensor]]]:
    """A callable ``f(x) -> (model_output, {layer: output})`` for a TorchScript model.

    ``layer_names`` are dotted submodule names as listed by ``torchscript_layer_names``.
    The callable runs the whole forward pass once (under the caller's grad mode) and returns
    the model's output unchanged together with each layer's output, a copy taken when the
    module returned. A module called several times is captured at its last call (``call=
    "first"`` for the first). With ``need_output=False`` the model output is None and only the
    part of the network the layers need is computed. ``skip_unsupported=True`` leaves out
    (instead of raising for) layers that cannot be captured (inside data-dependent control
    flow); unknown names always raise LayerError with the closest names. See the module
    docstring for how it works and what is not supported.
    """
    root = _check_module(module)
    if call not in ("first", "last"):
        raise ValueError(f"call must be 'first' or 'last', got {call!r}")
    layers = list(layer_names)
    if not layers:
        raise LayerError("no layer given: pass at least one layer name")
    if len(set(layers)) != len(layers):
        raise LayerError(f"a layer is given twice in {layers}")
    known = torchscript_layer_names(module)
    known_set = set(known)
    for layer in layers:
        if layer in known_set:
            continue
        if not known:
            raise LayerError(
                f"cannot capture layer {layer!r}: this TorchScript model calls no submodules in "
                f"its forward graph; it was probably frozen (torch.jit.freeze or "
                f"optimize_for_inference), which inlines every submodule, so layer outputs can "
                f"no longer be located. {_ALTERNATIVES}")
        close = difflib.get_close_matches(layer, known, n=6, cutoff=0.5)
        hint = f" Closest names: {', '.join(close)}." if close else ""
        exists = _exists(root, layer)
        why = (" The submodule exists but the forward graph never calls its forward."
               if exists else "")
        raise LayerError(f"the TorchScript model has no layer {layer!r}.{why}{hint} "
                         "List all layers with `netdissect layers --model MODEL`.")
    return TorchScriptCapture(module, layers, call=call, need_output=need_output,
                              skip_unsupported=skip_unsupported)


def _exists(root, path: str) -> bool:
    try:
        return _is_module(_module_at(root, path))
    except (RuntimeError, AttributeError):
        return False
