"""The decoded pixels of the images a report will show, kept from the pass that decoded them.

A report shows each unit's top images, and the pass has decoded every one of them already:
keeping, batch by batch, the images that sit in some unit's current top k (and letting go of
those that fell out of every unit's) spares the report from decoding them again, a third of its
time on a 1,280-unit layer (benchmarks/report_cost.py). Within a byte budget: past it, new images
are turned away and the report decodes those from their files, so the report is the same either
way. The kept images are tied to their dataset's directory and file names, so a report of
another dataset or selection uses none of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

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
