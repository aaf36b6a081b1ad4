"""Activation maps (h x w) to the segmentation resolution (sh x sw).

``bilinear``: torch.nn.functional.interpolate(mode='bilinear', align_corners=False), as
NetDissect-Lite. Defined for any layer of any model, so it is the default.

``rf``: sample each map where the receptive-field centre of each unit position lands in the
image, as the original NetDissect. The centres (offset + stride * index, in input pixels) are
measured from the model itself by back-propagating from two output positions, so any
convolutional model works without a table of its layers.

Both are convex combinations of native values, so an upsampled map never exceeds its native
maximum: the dissection relies on this to skip (unit, image) pairs below the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import torch
import torch.nn.functional as F

from netdissect.errors import LayerError

MODES = ("bilinear", "rf")


@dataclass(frozen=True)
class ReceptiveField:
    """Centre of output position i (per axis) in input pixels: offset + stride * i."""

    offset: Tuple[float, float]
    stride: Tuple[float, float]


def bilinear(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(P, h, w) -> (P, sh, sw)."""
    if maps.shape[0] == 0:
        return maps.new_zeros((0,) + tuple(size))
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def rf_grid(field: ReceptiveField, native: Tuple[int, int], image: Tuple[int, int],
            size: Tuple[int, int], device="cpu") -> torch.Tensor:
    """The grid_sample grid (1, sh, sw, 2) placing segmentation pixel centres on the map."""
    coords = []
    for axis in range(2):
        n_out, n_img, n_native = size[axis], image[axis], native[axis]
        centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_img / n_out) - 0.5
        pos = (centres - field.offset[axis]) / field.stride[axis]
        # align_corners=True: -1 and +1 are the centres of the first and last native positions
        norm = pos / max(n_native - 1, 1) * 2 - 1 if n_native > 1 else torch.zeros_like(pos)
        coords.append(norm)
    gy, gx = torch.meshgrid(coords[0], coords[1], indexing="ij")
    return torch.stack([gx, gy], dim=-1).unsqueeze(0).to(device=device, dtype=torch.float32)


def rf_upsample(maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """(P, h, w) -> (P, sh, sw) bilinear samples at the grid, clamped to the border."""
    if maps.shape[0] == 0:
        return maps.new_zeros((0,) + tuple(grid.shape[1:3]))
    g = grid.expand(maps.shape[0], -1, -1, -1)
    return F.grid_sample(maps.unsqueeze(1), g, mode="bilinear", padding_mode="border",
                         align_corners=True).squeeze(1)


def make_upsampler(mode: str, native: Tuple[int, int], size: Tuple[int, int],
                   field: ReceptiveField | None = None, image: Tuple[int, int] | None = None,
                   device="cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    if mode == "bilinear":
        return lambda maps: bilinear(maps, size)
    if mode == "rf":
        if field is None or image is None:
            raise ValueError("rf mode needs the layer's receptive field and the image size")
        grid = rf_grid(field, native, image, size, device=device)
        return lambda maps: rf_upsample(maps, grid)
    raise ValueError(f"unknown upsampling mode {mode!r}; choose one of {', '.join(MODES)}")


def measure_receptive_field(model: torch.nn.Module, layer: str, image: Tuple[int, int]) -> ReceptiveField:
    """Receptive-field centres of ``layer`` measured by gradients.

    For output positions near both ends of each axis, the input region that influences them
    (the support of the input gradient, united over a few random inputs so that dead ReLUs do
    not hide part of it) is found. Its centre is offset + stride * i and its half-width is the
    same at every position, so edges the image border does not clip are enough: two unclipped
    leading edges give the stride, one leading and one trailing edge give the offset. Fields
    wider than the image (late layers) are measured on a larger input.
    """
    from netdissect.models.capture import LayerCapture

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        for grow in (1, 2, 3, 4):
            size = (image[0] * grow, image[1] * grow)
            result = _field_from_gradients(model, layer, size, device, LayerCapture)
            if result is not None:
                return result
    finally:
        model.train(was_training)
    raise LayerError(f"could not measure the receptive field of layer {layer!r} (it is wider than "
                     "4x the image, or the model does not accept larger inputs); use --upsample bilinear")


def _field_from_gradients(model, layer, size, device, capture_cls):
    """The field from inputs of ``size``, or None when the borders clip too much of it."""
    generator = torch.Generator().manual_seed(0)
    supports = None
    for trial in range(3):
        x = torch.randn(1, 3, *size, generator=generator).to(device).requires_grad_(True)
        try:
            with capture_cls(model, [layer]) as run:
                out = run(x)[layer]
        except RuntimeError as exc:
            raise LayerError(f"rf upsampling needs the model to accept {size[0]}x{size[1]} inputs "
                             f"({exc}); use --upsample bilinear") from None
        if out.dim() != 4:
            raise LayerError(f"layer {layer!r} output is not N x K x h x w")
        h, w = out.shape[2], out.shape[3]
        if min(h, w) < 4:
            return None
        # positions (i, i) along the diagonal: two near each end of both axes
        ends = [(1, 1), (2, 2), (h - 3, w - 3), (h - 2, w - 2)]
        grads = []
        for i, j in ends:
            g, = torch.autograd.grad(out[0, :, i, j].abs().sum(), x, retain_graph=True)
            grads.append(g.abs().sum(dim=(0, 1)) > 0)
        supports = grads if supports is None else [a | b for a, b in zip(supports, grads)]
    offset, stride = [], []
    for axis in range(2):
        edges = []  # (position, first, last, first clipped, last clipped)
        for (pos, mask) in zip(ends, supports):
            line = torch.nonzero(mask.any(dim=1 - axis)).flatten()
            if len(line) == 0:
                return None
            first, last = line[0].item(), line[-1].item()
            edges.append((pos[axis], first, last, first == 0, last == size[axis] - 1))
        lead = [(p, f) for p, f, _, cf, _ in edges if not cf]
        trail = [(p, t) for p, _, t, _, ct in edges if not ct]
        if len(lead) < 2 or not trail:
            return None
        (p0, f0), (p1, f1) = lead[0], lead[-1]
        s = (f1 - f0) / (p1 - p0)
        pt, t = trail[0]
        # first = c(p) - r and last = c(p) + r with c(p) = offset + s * p
        offset.append((f0 + t - s * (p0 + pt)) / 2)
        stride.append(s)
    return ReceptiveField(offset=(offset[0], offset[1]), stride=(stride[0], stride[1]))
