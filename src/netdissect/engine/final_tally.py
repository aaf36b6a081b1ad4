"""Step 3 of a dissection: the IoU tally of one layer after the pass.

The candidate maps kept by the pass come in chunks of (unit, image) pairs; each chunk is
upsampled with the run's upsampler (or the fused C kernel where it is bit-identical),
thresholded, and counted per label combination of its images, within the memory plan's tally
share. The counts are integers, so chunk sizes and shard order never change a number.
"""
from __future__ import annotations

import torch

from netdissect.tally import kernel
from netdissect.tally.combinations import UnitCombinationCounts
from netdissect.tally.counts import IoUTally, combination_counts
from netdissect.tally.upsample import make_upsampler


class LayerTally:
    """The final IoU tally of one layer, fed chunks of (unit, image) pairs with their maps."""

    def __init__(self, stream, thresholds, n_concepts, n_categories, mode, native, size, field,
                 image, store, chunk_bytes: int, combinations=None):
        self.tally = IoUTally(stream.units, n_concepts, n_categories)
        self.combinations = None if combinations is None else UnitCombinationCounts(stream.units, combinations)
        self.thr = torch.from_numpy(thresholds)
        self.size = size
        self.store = store
        self.field = field  # the receptive field of the rf upsampling (None in bilinear mode)
        self.upsample = make_upsampler(mode, native, size, field=field, image=image)
        self.fused = mode == "bilinear" and kernel.exact_for(native, size)
        self.max_pairs = _pairs_per_chunk(size[0] * size[1], chunk_bytes)

    def add(self, chunk: dict) -> None:
        for part in _subchunks([chunk], self.max_pairs):
            unit_thr = self.thr[part["unit"]]
            images_u, local = torch.unique(part["image"], return_inverse=True)
            combo_ids, tables, image_concepts, labeled = self.store.gather(images_u, with_ids=not self.fused)
            if self.fused:   # the kernel reads the store's rows of label ids where they lie
                per_combo, act = kernel.fused_tally(part["maps"], unit_thr, images_u[local] - self.store.offset,
                                                    self.store.id_rows(), self.size, tables.shape[1])
            else:
                masks = self.upsample(part["maps"]) > unit_thr[:, None, None]
                per_combo, act = combination_counts(masks.reshape(masks.shape[0], -1), local, combo_ids,
                                                    tables.shape[1])
            self.tally.add_counts(per_combo, act, part["unit"], local, tables, image_concepts, labeled)
            if self.combinations is not None:
                self.combinations.add(per_combo, part["unit"], images_u, local)


def _pairs_per_chunk(pixels: int, chunk_bytes: int) -> int:
    """Pairs per tally chunk: float32 upsampled maps, their masks and the counts' work (9 bytes
    a pixel), within the memory plan's tally share."""
    return max(64, chunk_bytes // (pixels * 9))


def _subchunks(chunks, max_pairs: int):
    for chunk in chunks:
        n = chunk["unit"].shape[0]
        for s in range(0, n, max_pairs):
            yield {key: value[s:s + max_pairs] for key, value in chunk.items()}
