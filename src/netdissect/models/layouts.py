"""A layer's output -> (B, K, h, w) unit maps, whatever layout the layer produces.

Network Dissection needs, for every unit, a map over image positions. CNNs give N x K x h x w
(``nchw``); Swin and ConvNeXt-style stages in timm give N x h x w x K (``nhwc``); vision
transformers give tokens N x (P + h*w) x K (``tokens``), whose P prefix tokens (class,
distillation, registers) are not image positions and are dropped. A layer that returns a
tuple, list or dict is dissected through one element: ``--layer blocks.3:0`` (index or key).

Which dimensions are spatial is decided by which follow the input size: the layer is probed
with the image size (H, W), with (2H, W) and with (H, 2W). Height and width must move two
different dimensions; a tensor whose dimensions all follow both (heads x tokens x tokens
attention) or that has one token axis among 4 (heads x tokens x channels) is not a map and is
refused with a message naming its layout. A model that accepts one input size only (a static
export, torchvision's ViT) cannot be probed: then the model's patch grid decides (timm
``num_prefix_tokens`` and ``patch_embed.patch_size``; torchvision ``class_token`` and
``patch_size``), else 4-D outputs are taken as N x K x h x w, as before.

Units: the channels of the chosen tensor (the residual stream of ``blocks.N``, or the MLP
hidden units of ``blocks.N.mlp.fc1`` / ``.act``, the usual "neurons" of a transformer).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from netdissect.errors import LayerError

LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


# --------------------------------------------------------------------------- layer specs

def split_layer(spec: str) -> Tuple[str, Tuple[str, ...]]:
    """'blocks.3:0' -> ('blocks.3', ('0',)): the module name and the element to pick."""
    name, *selectors = str(spec).split(":")
    return name, tuple(selectors)


def select_output(output, spec: str):
    """The element of a tuple/list/dict output that ``spec``'s selectors name (the output itself
    when there is no selector); LayerError when the selection does not fit the output."""
    _, selectors = split_layer(spec)
    value = output
    for sel in selectors:
        if isinstance(value, Mapping):
            if sel in value:
                value = value[sel]
                continue
            raise LayerError(f"layer {spec!r}: the output is a dict without key {sel!r} "
                             f"(keys: {', '.join(map(str, value))})")
        if isinstance(value, (tuple, list)):
            try:
                value = value[int(sel)]
                continue
            except (ValueError, IndexError):
                raise LayerError(f"layer {spec!r}: the output is a {type(value).__name__} of "
                                 f"{len(value)}; select an element 0..{len(value) - 1}") from None
        raise LayerError(f"layer {spec!r}: cannot select {sel!r} from a {type(value).__name__} output; "
                         "drop the ':' part")
    if not isinstance(value, torch.Tensor):
        raise LayerError(f"layer {spec!r} returns {describe_output(value)}, not a tensor; "
                         + (f"pick a tensor element with --layer {spec}:INDEX or :KEY"
                            if isinstance(value, (tuple, list, Mapping)) else
                            "dissect one of its tensor-valued submodules instead"))
    return value


def replace_selected(output, spec: str, value):
    """``output`` with the element that ``spec`` selects replaced by ``value`` (for hooks that
    modify a layer's output in place of the module)."""
    _, selectors = split_layer(spec)
    if not selectors:
        return value
    head, rest = selectors[0], ":".join(("_",) + selectors[1:])
    if isinstance(output, Mapping):
        new = dict(output)
        new[head] = replace_selected(output[head], rest, value)
        return type(output)(new) if not isinstance(output, dict) or type(output) is dict else _rebuilt(output, new)
    items = list(output)
    items[int(head)] = replace_selected(items[int(head)], rest, value)
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*items)
    return type(output)(items)


def _rebuilt(original, new: dict):
    try:
        return type(original)(new)
    except Exception:
        return new


def describe_output(value) -> str:
    if isinstance(value, torch.Tensor):
        return " x ".join(str(s) for s in value.shape)
    if isinstance(value, Mapping):
        return "dict(" + ", ".join(f"{k}: {describe_output(v)}" for k, v in value.items()) + ")"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}(" + ", ".join(describe_output(v) for v in value) + ")"
    return type(value).__name__


# --------------------------------------------------------------------------- the layout

@dataclass(frozen=True)
class Layout:
    """How one layer's tensor holds unit maps.

    ``kind``: nchw | nhwc | tokens. For tokens, ``prefix`` leading tokens are dropped and the
    rest is a row-major grid; ``stride`` is the input pixels per grid cell (sy, sx), so the grid
    follows the input size. ``source`` says how it was decided (probes, model, override, assumed).
    """

    kind: str
    prefix: int = 0
    stride: Optional[Tuple[float, float]] = None
    grid: Optional[Tuple[int, int]] = None       # at the size it was decided for
    source: str = "probes"  # probes | model | override | assumed (one input size) | fixed size

    def describe(self) -> str:
        if self.kind == "tokens":
            grid = f"{self.grid[0]}x{self.grid[1]}" if self.grid else "?"
            return f"tokens ({self.prefix} prefix + {grid} grid, channels last)"
        return {"nchw": "nchw (N x K x h x w)", "nhwc": "nhwc (N x h x w x K)"}[self.kind]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["description"] = self.describe()
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def grid_for(self, tokens: int, input_hw: Optional[Tuple[int, int]]) -> Tuple[int, int]:
        """The (h, w) grid of ``tokens`` patch tokens for an input of ``input_hw``."""
        n = tokens
        if self.stride and input_hw:
            gh = int(round(input_hw[0] / self.stride[0]))
            gw = int(round(input_hw[1] / self.stride[1]))
            if gh * gw == n:
                return gh, gw
        if self.grid and self.grid[0] * self.grid[1] == n:
            return self.grid
        grid = _grid_of(n, input_hw)
        if grid is None:
            raise LayerError(f"{n} patch tokens do not form a grid for a {input_hw} input "
                             f"(layout {self.describe()}); pass --layout explicitly or pick another layer")
        return grid

    def to_maps(self, out: torch.Tensor, input_hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """(B, K, h, w) view of ``out``."""
        if self.kind == "nchw":
            _need_rank(out, 4, self)
            return out
        if self.kind == "nhwc":
            _need_rank(out, 4, self)
            return out.permute(0, 3, 1, 2)
        _need_rank(out, 3, self)
        b, n, k = out.shape
        gh, gw = self.grid_for(n - self.prefix, input_hw)
        return out[:, self.prefix:, :].reshape(b, gh, gw, k).permute(0, 3, 1, 2)

    def zero_units(self, out: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """A copy of ``out`` (native layout) with the units' channels set to 0 at every position
        (for tokens: every token, the prefix tokens too, since a unit is a channel)."""
        out = out.clone()
        if self.kind == "nchw":
            out[:, units.to(out.device)] = 0
        else:
            out[..., units.to(out.device)] = 0
        return out


def _need_rank(out: torch.Tensor, rank: int, layout: Layout) -> None:
    if out.dim() != rank:
        raise LayerError(f"layout {layout.kind} needs a {rank}-D output, got shape {tuple(out.shape)}")


def _grid_of(n: int, input_hw: Optional[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    """The factorization gh * gw = n whose aspect is closest to the input's (exact when square)."""
    if n <= 0:
        return None
    aspect = input_hw[0] / input_hw[1] if input_hw else 1.0
    best = None
    for gh in range(1, n + 1):
        if n % gh:
            continue
        gw = n // gh
        err = abs(math.log(gh / gw / aspect))
        if best is None or err < best[0]:
            best = (err, (gh, gw))
    if best is None or best[0] > 0.05:
        return None
    return best[1]


# --------------------------------------------------------------------------- model hints

def token_hints(model: nn.Module) -> Optional[Tuple[int, Tuple[int, int]]]:
    """(prefix tokens, patch size) of a known vision transformer, else None.

    timm: ``num_prefix_tokens`` (class + distillation + registers) and
    ``patch_embed.patch_size``; torchvision VisionTransformer: one class token, ``patch_size``.
    """
    patch_embed = getattr(model, "patch_embed", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    if isinstance(prefix, int) and patch_embed is not None:
        size = getattr(patch_embed, "patch_size", None)
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
            return prefix, size
    if hasattr(model, "class_token") and isinstance(getattr(model, "patch_size", None), int):
        p = model.patch_size
        return 1, (p, p)
    return None


# --------------------------------------------------------------------------- detection

def probe_sizes(image_hw: Tuple[int, int]) -> List[Tuple[int, int]]:
    """The image size, then height doubled, then width doubled: each moves only its dimensions
    (doubling keeps any patch size that divides the image size dividing it)."""
    h, w = image_hw
    return [(h, w), (2 * h, w), (h, 2 * w)]


def decide_layout(spec: str, shapes: Sequence[Optional[Tuple[int, ...]]], image_hw: Tuple[int, int],
                  override: str = "auto",
                  hints: Optional[Tuple[int, Tuple[int, int]]] = None) -> Layout:
    """The layout of a layer from its output shapes at ``probe_sizes(image_hw)`` (a shape is
    None where the model refused that size); LayerError when it holds no maps."""
    if override not in LAYOUTS:
        raise LayerError(f"--layout must be one of {', '.join(LAYOUTS)}; got {override!r}")
    a, b, c = (list(shapes) + [None, None])[:3]
    if a is None:
        raise LayerError(f"layer {spec!r} produced no tensor")
    rank = len(a)
    shape_text = " x ".join(str(s) for s in a)
    probed = b is not None and c is not None and len(b) == rank and len(c) == rank
    follows_h = {i for i in range(1, rank) if probed and b[i] != a[i]}
    follows_w = {i for i in range(1, rank) if probed and c[i] != a[i]}

    if override in ("nchw", "nhwc"):
        if rank != 4:
            raise LayerError(f"layer {spec!r} outputs {shape_text}: --layout {override} needs 4 dimensions")
        return Layout(override, source="override")
    if override == "tokens":
        if rank != 3:
            raise LayerError(f"layer {spec!r} outputs {shape_text}: --layout tokens needs "
                             "N x tokens x channels")
        return _token_layout(spec, a, b if probed else None, c if probed else None, image_hw, hints,
                             source="override")

    if probed:
        if rank == 4 and follows_h == {2} and follows_w == {3}:
            return Layout("nchw")
        if rank == 4 and follows_h == {1} and follows_w == {2}:
            return Layout("nhwc")
        if rank == 3 and follows_h == {1} and follows_w == {1}:
            return _token_layout(spec, a, b, c, image_hw, hints, source="probes")
        if rank == 4 and not follows_h and not follows_w and a[2] <= image_hw[0] and a[3] <= image_hw[1]:
            # a fixed grid over the image (adaptive pooling): maps still, as before
            return Layout("nchw", source="fixed size")
        _refuse(spec, shape_text, _not_maps(rank, follows_h, follows_w))
    # the model accepts one input size only: its patch grid, else the CNN convention
    if hints is not None:
        prefix, patch = hints
        grid = (image_hw[0] // patch[0], image_hw[1] // patch[1])
        if rank == 3 and a[1] == prefix + grid[0] * grid[1]:
            return Layout("tokens", prefix, (float(patch[0]), float(patch[1])), grid, source="model")
        if rank == 4 and tuple(a[1:3]) == grid:
            return Layout("nhwc", source="model")
        if rank == 4 and tuple(a[2:4]) == grid:
            return Layout("nchw", source="model")
        _refuse(spec, shape_text, f"no dimensions hold the model's {grid[0]}x{grid[1]} patch grid "
                "(attention heads x tokens?)")
    if rank == 4 and _like_image(a[2:4], image_hw):
        return Layout("nchw", source="assumed")
    if rank == 4 and _like_image(a[1:3], image_hw):
        return Layout("nhwc", source="assumed")
    if rank == 3:
        return _token_layout(spec, a, None, None, image_hw, None, source="assumed")
    _refuse(spec, shape_text, "the model accepts no other input size, so the dimensions that follow "
            "it cannot be found (none has the image's aspect)")


def _refuse(spec: str, shape_text: str, reason: str) -> None:
    error = LayerError(
        f"layer {spec!r} outputs {shape_text}: {reason}; not N x K x h x w, N x h x w x K or "
        "N x tokens x K, so it holds no unit maps over image positions. Dissect a layer that "
        "`netdissect layers` marks dissectable, or force a reading with --layout nchw|nhwc|tokens")
    error.reason = reason  # type: ignore[attr-defined]
    raise error


def _like_image(hw, image_hw) -> bool:
    """Whether (h, w) can be a feature map of an image of ``image_hw`` (its aspect, not larger)."""
    h, w = hw
    if not (0 < h <= image_hw[0] and 0 < w <= image_hw[1]):
        return False
    return abs(math.log((h / w) / (image_hw[0] / image_hw[1]))) < math.log(1.5)


def _not_maps(rank: int, follows_h: set, follows_w: set) -> str:
    """Name the layout of a tensor that is not a map, for the error message."""
    if not follows_h and not follows_w:
        return "no dimension follows the input size (a pooled vector or a fixed-size tensor)"
    if rank == 4 and follows_h == follows_w == {2, 3}:
        return "attention, heads x tokens x tokens (its last two dimensions both follow the input size)"
    if rank == 4 and follows_h == follows_w and len(follows_h) == 1:
        axis = next(iter(follows_h))
        return (f"{'heads x tokens x channels' if axis == 2 else 'a token axis among other dimensions'} "
                f"(only dimension {axis} follows the input size)")
    if rank == 3 and follows_h == follows_w == {1, 2}:
        return "attention, tokens x tokens (its last two dimensions both follow the input size)"
    if rank == 3 and follows_h == follows_w == {2}:
        return "channels x tokens (only the last dimension follows the input size)"
    return (f"not a recognized layout (dimensions {sorted(follows_h)} follow the height and "
            f"{sorted(follows_w)} the width)")


def _token_layout(spec, a, b, c, image_hw, hints, source: str) -> Layout:
    n = a[1]
    h, w = image_hw
    if hints is not None:
        prefix, patch = hints
        grid = (h // patch[0], w // patch[1])
        if n == prefix + grid[0] * grid[1]:
            return Layout("tokens", prefix, (float(patch[0]), float(patch[1])), grid,
                          source="model" if source == "probes" else source)
    if b is not None and c is not None:
        # P + gh*gw tokens at (H, W), P + 2gh*gw at (2H, W) and at (H, 2W)
        prefix = 2 * n - b[1]
        if prefix >= 0 and prefix == 2 * n - c[1]:
            grid = _grid_of(n - prefix, image_hw)
            if grid is not None:
                return Layout("tokens", prefix, (h / grid[0], w / grid[1]), grid, source=source)
    # one size only: the fewest prefix tokens (at most 16) that leave a grid of the image's aspect
    for prefix in range(0, min(n, 17)):
        grid = _grid_of(n - prefix, image_hw)
        if grid is not None and (h * grid[1] == w * grid[0]):
            return Layout("tokens", prefix, (h / grid[0], w / grid[1]), grid,
                          source="assumed" if source == "probes" else source)
    _refuse(spec, " x ".join(str(s) for s in a),
            f"its {n} tokens form no grid of the image's {h}x{w} aspect after dropping prefix tokens")


# --------------------------------------------------------------------------- resolving

Runner = Callable[[torch.Tensor], Dict[str, object]]


def resolve_layouts(run_raw: Runner, layers: Sequence[str], image_hw: Tuple[int, int],
                    device: torch.device, override: str = "auto",
                    hints: Optional[Tuple[int, Tuple[int, int]]] = None,
                    first: Optional[torch.Tensor] = None) -> Tuple[Dict[str, Layout], Dict[str, object]]:
    """Probe ``run_raw`` (a batch -> {layer: raw selected output}) at the three probe sizes and
    decide every layer's layout. ``first``: a batch of the caller's at ``image_hw``, probed instead
    of a blank one, whose outputs are returned with the layouts (the caller's forward pass, not run
    twice); else a blank image, and no outputs."""
    shapes: Dict[str, List[Optional[Tuple[int, ...]]]] = {layer: [] for layer in layers}
    first_outputs: Dict[str, object] = {}
    for i, size in enumerate(probe_sizes(image_hw)):
        if override in ("nchw", "nhwc") and i > 0:
            break
        mine = not (i == 0 and first is not None)   # the caller's batch runs in the caller's grad mode
        x = torch.zeros(1, 3, *size, device=device) if mine else first
        try:
            with torch.no_grad() if mine else contextlib.nullcontext():
                outputs = run_raw(x)
        except LayerError:
            raise
        except Exception as exc:
            if i == 0:
                raise LayerError(
                    f"the model fails on a {size[0]}x{size[1]} input ({exc.__class__.__name__}: "
                    f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); it may accept only the "
                    "size it was built or exported for (torchvision ViT: 224): dissect a dataset of that "
                    "size (`netdissect data resize SRC --size N --out DIR`)") from None
            outputs = {}
        if i == 0 and first is not None:
            first_outputs = outputs
        for layer in layers:
            out = outputs.get(layer)
            shapes[layer].append(tuple(out.shape) if isinstance(out, torch.Tensor) else None)
    return {layer: decide_layout(layer, shapes[layer], image_hw, override, hints) for layer in layers}, first_outputs
