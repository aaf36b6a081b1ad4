"""The decoded pixels of the images a report will show, kept from the pass that decoded them.

A report shows each unit's top images, and the pass has decoded every one of them already:
keeping, batch by batch, the images that sit in some unit's current top k (and letting go of
those that fell out of every unit's) spares the report from decoding them again, a third of its
time on a 1,280-unit layer (benchmarks/report_cost.py). Once the pass ends the top images are
final, and a thread composes and encodes the report's JPEG atlases of them while the dissection
tallies (the tally leaves a core partly idle); the report writes those bytes as they are when its
layout is the same (its top k is the dissection's). Within a byte budget: past it, new images
are turned away and the report decodes those from their files, so the report is the same either
way. The kept images are tied to their dataset's directory and file names, so a report of
another dataset or selection uses none of them.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch


class ReportImages:
    """RGB uint8 (ih, iw, 3) pixels by dataset index, of images in some unit's top k."""

    def __init__(self, budget_bytes: int, ds: Any):
        self.budget = int(budget_bytes)
        self.root = Path(ds.root).resolve()
        self.names = [r.image for r in ds.records]      # the selection's image files, by index
        self.pixels: Dict[int, np.ndarray] = {}
        self.bytes = 0
        self.turned_away = 0            # images left out for the budget (the report decodes them)
        self.atlases: Dict[Tuple[int, ...], bytes] = {}     # dataset indices -> the atlas's JPEG
        self.atlas_hw: Optional[Tuple[int, int]] = None     # the size of an atlas's images
        self._encoder: Optional[threading.Thread] = None

    def keep(self, indices: torch.Tensor, images: torch.Tensor, shown: torch.Tensor) -> None:
        """After a batch: ``indices`` (B,) and ``images`` (B, H, W, 3) uint8 are the batch's;
        ``shown`` holds every dataset index now in some unit's top k (any shape; -1 for none)."""
        now = set(torch.unique(shown.cpu()).tolist())
        for i in [i for i in self.pixels if i not in now]:
            self.bytes -= self.pixels.pop(i).nbytes
        for j, i in enumerate(indices.tolist()):
            if i in now and i not in self.pixels:
                size = images[j].numel() * images[j].element_size()
                if self.bytes + size > self.budget:
                    self.turned_away += 1
                    continue
                self.pixels[i] = images[j].numpy().copy()
                self.bytes += size

    def usable_for(self, ds: Any) -> bool:
        """Whether ``ds`` is the selection these images were kept from (same directory, same
        image files in the same order)."""
        return (Path(ds.root).resolve() == self.root and len(ds.records) == len(self.names)
                and all(ds.records[i].image == self.names[i] for i in self.pixels))

    def get(self, i: int) -> Optional[np.ndarray]:
        return self.pixels.get(i)

    def encode_atlases(self, shown: Iterable[int], image_hw: Tuple[int, int]) -> None:
        """Start encoding, in a thread, the atlases of the images ``shown`` (every unit's final
        top k) as the report lays them out: in dataset order, ATLAS_COLS ** 2 an atlas. An atlas
        with an image that was not kept is left to the report."""
        from netdissect.report.tiles import ATLAS_COLS, atlas_jpeg
        order, per = sorted(set(shown) - {-1}), ATLAS_COLS * ATLAS_COLS
        batches = [tuple(order[s:s + per]) for s in range(0, len(order), per)]
        self.atlas_hw = tuple(image_hw)

        def encode():   # Pillow's encoder releases the GIL
            for batch in batches:
                if all(i in self.pixels for i in batch):
                    self.atlases[batch] = atlas_jpeg([self.pixels[i] for i in batch], image_hw)
        self._encoder = threading.Thread(target=encode, name="netdissect-atlases", daemon=True)
        self._encoder.start()

    def wait(self) -> None:
        """Until the atlases started by encode_atlases are encoded."""
        if self._encoder is not None:
            self._encoder.join()
            self._encoder = None

    def atlas(self, indices: Sequence[int], image_hw: Tuple[int, int]) -> Optional[bytes]:
        """The encoded atlas of exactly these dataset images, in this order, at this image size,
        or None."""
        self.wait()
        return self.atlases.get(tuple(indices)) if self.atlas_hw == tuple(image_hw) else None
