"""A unit's region in an image, exactly as the dissection scored it.

The tally upsamples a unit's native map to the segmentation size with the run's upsampler
(``netdissect.tally.upsample.make_upsampler``: bilinear, or receptive-field placement in ``rf`` mode)
and keeps the pixels strictly above the unit's threshold. The report calls the same function
with the same arguments (or, in bilinear mode, the compiled tally kernel's upsampling where it
equals torch's bit for bit, as the tally does), so what a strip draws is the mask that entered
the IoU (up to the float16 rounding of the stored top-k maps), in both modes.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch

from netdissect.tally import kernel
from netdissect.tally.upsample import make_upsampler


def layer_upsampler(result, mode: str, image_size: Tuple[int, int],
                    seg_size: Tuple[int, int]) -> Tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The run's upsampler for one layer, and a note when it cannot be the run's own.

    ``result`` is the layer's LayerResult (its map shape and, in rf mode, its receptive field)."""
    native = tuple(int(v) for v in result.map_shape)
    note = ""
    if mode == "rf" and result.receptive_field is None:
        mode, note = "bilinear", (
            f"{result.name}: the run used --upsample rf but recorded no receptive field (an older "
            "run): regions are drawn with bilinear upsampling and may differ from the scored ones")
    if mode == "bilinear" and kernel.exact_for(native, tuple(seg_size)):
        # the compiled tally kernel's upsampling: equal to torch's bit for bit on this shape
        # (checked, as for the tally itself) and several times faster
        size = tuple(seg_size)
        return (lambda maps: kernel.kernel_upsample(maps, size)), note
    return make_upsampler(mode, native, tuple(seg_size), field=result.receptive_field,
                          image=tuple(image_size)), note


def unit_regions(maps: np.ndarray, thresholds: np.ndarray, upsample, chunk: int = 512) -> np.ndarray:
    """(N, h, w) native maps and (N,) thresholds -> (N, sh, sw) bool: upsampled map > threshold."""
    maps_t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    thr_t = torch.from_numpy(np.ascontiguousarray(thresholds, dtype=np.float32))
    parts = []
    for s in range(0, maps_t.shape[0], chunk):
        up = upsample(maps_t[s:s + chunk])
        parts.append((up > thr_t[s:s + chunk, None, None]).numpy())
    if not parts:
        out_shape = upsample(maps_t[:0]).shape
        return np.zeros(tuple(out_shape), bool)
    return np.concatenate(parts)


def map_placement(result, mode: str, image_size: Tuple[int, int]) -> Optional[list]:
    """Where a native map's cells sit on the image, for drawing heat maps in the browser:
    [x, y, width, height] in image pixels of the rectangle the (w x h) map is stretched over, so
    that cell i's centre lands where the run's upsampler puts it (bilinear: the image's cell
    grid; rf: offset + stride * i)."""
    h, w = (int(v) for v in result.map_shape)
    ih, iw = image_size
    if mode == "rf" and result.receptive_field is not None:
        (oy, ox), (sy, sx) = result.receptive_field.offset, result.receptive_field.stride
        # centre of cell i at offset + stride * i  <=>  rectangle from offset - stride / 2
        return [ox + 0.5 - sx / 2, oy + 0.5 - sy / 2, sx * w, sy * h]
    return [0.0, 0.0, float(iw), float(ih)]
