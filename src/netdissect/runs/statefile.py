"""Saved state without pickle: arrays in an .npz, everything else in a JSON tree.

A checkpoint in a run directory may come from anyone who could write there; unpickling it
would run whatever code it names. This format can only describe data: nested dicts, lists,
tuples, numbers, strings, None, numpy arrays and torch tensors. It is read with
``allow_pickle=False``; anything that does not parse raises ``StateFileError`` (the caller
ignores the file with one line), never executes.

Lists of many small arrays (one label table per image) are packed into one concatenated
array plus their shapes, so a checkpoint of 60,000 images is a handful of .npz members.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

FORMAT = "netdissect-state/1"
_TREE = "__tree__"


class StateFileError(ValueError):
    """A state file that cannot be read back (truncated, foreign, or made by another format)."""


def dumps(obj: Any) -> bytes:
    """The .npz bytes of ``obj`` (see the module docstring for what it may contain)."""
    arrays: Dict[str, np.ndarray] = {}
    tree = {"format": FORMAT, "root": _encode(obj, arrays)}
    arrays[_TREE] = np.frombuffer(json.dumps(tree).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def loads(data: bytes) -> Any:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if _TREE not in z.files:
                raise StateFileError("not a netdissect state file (no tree)")
            tree = json.loads(z[_TREE].tobytes().decode("utf-8"))
            if not isinstance(tree, dict) or tree.get("format") != FORMAT:
                raise StateFileError(f"unknown state format {tree.get('format') if isinstance(tree, dict) else None!r}")
            arrays = {name: z[name] for name in z.files if name != _TREE}
        return _decode(tree["root"], arrays)
    except StateFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile,
            UnicodeDecodeError, RecursionError) as exc:
        raise StateFileError(f"{exc.__class__.__name__}: {exc}") from None


def save(path: Union[str, Path], obj: Any) -> None:
    """Write ``obj`` atomically (temporary name, then rename)."""
    from netdissect.atomic import atomic_write_bytes
    atomic_write_bytes(Path(path), dumps(obj))


def load(path: Union[str, Path]) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StateFileError(f"cannot read ({exc.strerror or exc})") from None
    return loads(data)


# --------------------------------------------------------------------------- encoding

def _array_ref(value: np.ndarray, arrays: Dict[str, np.ndarray]) -> str:
    name = f"a{len(arrays)}"
    arrays[name] = value
    return name


def _tensor_to_numpy(t: torch.Tensor):
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy(), "bfloat16"
    return t.numpy(), None


def _packable(items: list) -> bool:
    """Many arrays (or None) of one kind and dtype: worth one concatenated member."""
    present = [x for x in items if x is not None]
    if len(items) < 8 or not present:
        return False
    if all(isinstance(x, np.ndarray) for x in present):
        kinds = {(x.dtype.str, x.ndim) for x in present}
    elif all(isinstance(x, torch.Tensor) for x in present):
        kinds = {(str(x.dtype), x.dim()) for x in present}
        if ("torch.bfloat16", present[0].dim()) in kinds:
            return False
    else:
        return False
    return len(kinds) == 1 and present[0].ndim >= 1 and present[0].dtype not in (object, torch.bool)


def _encode(obj: Any, arrays: Dict[str, np.ndarray]) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return {"float": repr(float(obj))}  # exact, and inf/nan survive strict JSON readers
    if isinstance(obj, torch.Tensor):
        value, view = _tensor_to_numpy(obj)
        return {"tensor": _array_ref(np.ascontiguousarray(value), arrays), "view": view}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("object arrays cannot be saved without pickle")
        return {"ndarray": _array_ref(np.ascontiguousarray(obj), arrays)}
    if isinstance(obj, (list, tuple)):
        kind = "list" if isinstance(obj, list) else "tuple"
        items = list(obj)
        if _packable(items):
            is_tensor = any(isinstance(x, torch.Tensor) for x in items)
            parts = [(x.detach().cpu().numpy() if is_tensor else x) if x is not None else None for x in items]
            ndim = next(p.ndim for p in parts if p is not None)
            shapes = np.array([list(p.shape) if p is not None else [-1] * ndim for p in parts],
                              dtype=np.int64).reshape(len(parts), ndim)
            flat = np.concatenate([p.reshape(-1) for p in parts if p is not None])
            return {"packed": kind, "tensor": is_tensor, "shapes": _array_ref(shapes, arrays),
                    "data": _array_ref(flat, arrays)}
        return {kind: [_encode(x, arrays) for x in items]}
    if isinstance(obj, dict):
        return {"dict": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, torch.dtype):
        return {"torch_dtype": str(obj).replace("torch.", "")}
    raise TypeError(f"cannot save a {type(obj).__name__} without pickle")


def _decode(node: Any, arrays: Dict[str, np.ndarray]) -> Any:
    if node is None or isinstance(node, (bool, int, str)):
        return node
    if isinstance(node, dict):
        if "float" in node:
            return float(node["float"])
        if "ndarray" in node:
            return arrays[node["ndarray"]]
        if "tensor" in node and "packed" not in node:
            value = arrays[node["tensor"]]
            tensor = torch.from_numpy(np.array(value))
            return tensor.view(torch.bfloat16) if node.get("view") == "bfloat16" else tensor
        if "packed" in node:
            shapes, flat = arrays[node["shapes"]], arrays[node["data"]]
            items: List[Optional[Any]] = []
            at = 0
            for shape in shapes:
                if len(shape) and shape[0] < 0:
                    items.append(None)
                    continue
                size = int(np.prod(shape))
                part = np.array(flat[at:at + size]).reshape(tuple(int(s) for s in shape))
                at += size
                items.append(torch.from_numpy(part) if node["tensor"] else part)
            if at != flat.size:
                raise StateFileError("packed arrays do not add up")
            return items if node["packed"] == "list" else tuple(items)
        if "list" in node:
            return [_decode(x, arrays) for x in node["list"]]
        if "tuple" in node:
            return tuple(_decode(x, arrays) for x in node["tuple"])
        if "dict" in node:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in node["dict"]}
        if "torch_dtype" in node:
            dtype = getattr(torch, str(node["torch_dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise StateFileError(f"unknown dtype {node['torch_dtype']!r}")
            return dtype
    raise StateFileError(f"unexpected node {str(node)[:60]!r}")
