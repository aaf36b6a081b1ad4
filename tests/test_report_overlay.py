"""The compiled overlay path (report/_overlay.c) draws exactly the indices of the numpy reference
(tiles.compose_overlays_numpy): same palette index at every pixel, on random regions and labels
with specks, parts touching the edges, empty and full masks, several radii and shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netdissect.report import tiles

needs_extension = pytest.mark.skipif(tiles._overlay is None, reason="report/_overlay.c was not compiled")


def _blobs(rng, b: int, h: int, w: int, cut: float) -> np.ndarray:
    """Smooth random masks: blobs of several sizes, many of them touching an edge."""
    coarse = torch.from_numpy(rng.random((b, 1, max(2, h // 6), max(2, w // 6))).astype(np.float32))
    return (F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0] > cut).numpy()


def _cases(rng, h: int, w: int) -> np.ndarray:
    b = 24
    masks = np.concatenate([
        _blobs(rng, b, h, w, 0.8),                 # a few parts
        _blobs(rng, b, h, w, 0.4),                 # most of the image, holes
        rng.random((b, h, w)) < 0.01,              # specks only
        rng.random((b, h, w)) < 0.5,               # noise
        np.zeros((2, h, w), bool),                 # empty
        np.ones((2, h, w), bool),                  # full
    ])
    edges = np.zeros((4, h, w), bool)              # lines along each edge
    edges[0, 0, :] = edges[1, -1, :] = edges[2, :, 0] = edges[3, :, -1] = True
    return np.concatenate([masks, edges])


@needs_extension
@pytest.mark.parametrize("h,w", [(112, 112), (56, 40), (7, 9), (3, 3), (1, 5), (6, 1), (1, 1)])
@pytest.mark.parametrize("radius", [0, 1, 2, 3, 8])
def test_compiled_overlays_equal_the_numpy_reference(h: int, w: int, radius: int):
    rng = np.random.default_rng(h * 1000 + w * 10 + radius)
    regions = _cases(rng, h, w)
    labels = _cases(rng, h, w)[rng.permutation(len(regions))]
    fast = tiles.compose_overlays(regions, labels, radius)
    reference = tiles.compose_overlays_numpy(regions, labels, radius)
    assert fast.dtype == np.uint8 and fast.shape == regions.shape
    mismatch = np.argwhere(fast != reference)
    assert not len(mismatch), f"{len(mismatch)} pixels differ, first at {mismatch[0]}"
    if min(h, w) >= 40 and 1 <= radius <= 3:   # every index appears: each rule was compared
        assert set(np.unique(reference).tolist()) == set(range(1, 9))

@needs_extension
def test_the_switch_draws_with_numpy(monkeypatch):
    """NETDISSECT_NO_KERNEL=1 turns the compiled overlays off, as every compiled path."""
    calls = []
    numpy_path = tiles.compose_overlays_numpy
    monkeypatch.setattr(tiles, "compose_overlays_numpy", lambda *a: (calls.append(1), numpy_path(*a))[1])
    regions = _cases(np.random.default_rng(1), 9, 7)
    fast = tiles.compose_overlays(regions, regions[::-1], 1)
    assert not calls
    monkeypatch.setenv("NETDISSECT_NO_KERNEL", "1")
    assert np.array_equal(tiles.compose_overlays(regions, regions[::-1], 1), fast) and calls == [1]


@needs_extension
def test_compiled_overlays_take_any_layout_and_check_their_arguments():
    rng = np.random.default_rng(5)
    regions = _cases(rng, 30, 20)
    labels = _cases(rng, 30, 20)
    strided = regions.transpose(0, 2, 1)             # not C-contiguous: copied, same indices
    assert np.array_equal(tiles.compose_overlays(strided, labels.transpose(0, 2, 1), 2),
                          tiles.compose_overlays_numpy(strided, labels.transpose(0, 2, 1), 2))
    out = np.empty(regions.shape, np.uint8)
    with pytest.raises(ValueError, match="labels"):
        tiles._overlay.compose(regions, labels.astype(np.uint8), out, 2, tiles._CODES)
    with pytest.raises(ValueError, match="shape"):
        tiles._overlay.compose(regions, np.ascontiguousarray(labels[:, :-1]), out, 2, tiles._CODES)
    with pytest.raises(ValueError, match="C-contiguous"):
        tiles._overlay.compose(regions, labels[:, :, ::2], out, 2, tiles._CODES)
    with pytest.raises(ValueError, match="radius"):
        tiles._overlay.compose(regions, labels, out, -1, tiles._CODES)
    assert tiles.compose_overlays(regions[:0], labels[:0], 2).shape == (0, 30, 20)


def test_overlay_png_holds_the_indices_and_the_palette():
    """The 4-bit sheets (tiles.png_bytes) read back with PIL as the same indices, and each index
    as its palette colour and alpha; an odd width included."""
    import io

    from PIL import Image
    rng = np.random.default_rng(2)
    for h, w in ((34, 57), (16, 16), (1, 1)):
        index = rng.integers(0, 9, (h, w), dtype=np.uint8)
        with Image.open(io.BytesIO(tiles.png_bytes(index))) as im:
            assert im.format == "PNG" and im.mode == "P" and im.size == (w, h)
            assert np.array_equal(np.asarray(im), index)
            rgba = np.asarray(im.convert("RGBA"))
        rgb, alpha = tiles.palette()
        want = np.concatenate([np.array(rgb[:27], np.uint8).reshape(9, 3), np.frombuffer(alpha, np.uint8)[:, None]], 1)
        assert np.array_equal(rgba, want[index])
