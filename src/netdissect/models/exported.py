"""``torch.export`` programs (``.pt2`` files written by ``torch.export.save``) as models.

An exported program is one flat graph, but every node remembers the module it came from
(``nn_module_stack``). ``torch.export.unflatten`` rebuilds the module tree from that record,
so layers are captured by their dotted module path with ordinary forward hooks, exactly as
for the Python model, and give the same numbers.

Limits: the program runs only at the shapes it was exported for. The image size must be the
export's (or exported with dynamic height/width); a program exported with a fixed batch size
B is run in chunks of B by the layer capture (``static_batch``), padded with copies of the
last image. The experiments that call the model directly (ablate, explain) need a batch
dimension exported as dynamic (``dynamic_shapes={"x": {0: torch.export.Dim.DYNAMIC}}``) or
their batch equal to B. Export drops values nothing uses: a submodule's tuple output keeps
only the elements the rest of the program reads, in an order of its own, unless the module's
signature is kept: ``torch.export.export(..., preserve_module_call_signature=("blocks.0",))``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from netdissect.errors import ModelError

STATIC_BATCH_ATTR = "netdissect_static_batch"


def load_exported(path: str):
    """(module, static batch) of a ``.pt2`` file: the unflattened module tree of the program, and
    the batch size it was exported with (None when dynamic). models.load_model wraps it."""
    if not os.path.exists(path):
        raise ModelError(f"{path}: model file not found")
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise ModelError(f"{path}: not a torch.export program ({exc.__class__.__name__}: {exc}). Save one with "
                         "torch.export.save(torch.export.export(model, (x,)), 'model.pt2')") from None
    try:
        module = torch.export.unflatten(program)
    except Exception as exc:
        raise ModelError(f"{path}: the exported program cannot be unflattened into its modules "
                         f"({exc.__class__.__name__}: {exc}); export the model with torch.export.export "
                         "(strict or not) without custom module-flattening passes") from None
    batch = static_batch(program)
    if batch is not None:
        setattr(module, STATIC_BATCH_ATTR, batch)
    return module, batch


def static_batch(program) -> Optional[int]:
    """The batch size the program's first input was exported with, None when it is dynamic."""
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in _user_inputs(program):
            continue
        value = node.meta.get("val")
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) and isinstance(shape[0], int):
            return int(shape[0])
        return None
    return None


def _user_inputs(program) -> set:
    return set(program.graph_signature.user_inputs)
