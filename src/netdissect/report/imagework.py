"""The report's image work in forked worker processes: each shown image decoded once (into the
JPEG atlases, with its wanted label masks kept; not at all when the dissection in this process
kept its pixels) and every unit's overlay sheets drawn.

The workers are forked once, before any of it, so they inherit the run, the dataset and the
shared memory of the label masks (tiles.MaskStore). The decoding tasks are queued first and
write the masks; the drawing tasks queued behind them wait at a gate that the last decoding task
opens, then read them. Nothing large crosses between processes, and the calling process is free
meanwhile (render_report draws the figures). With one worker, or little work, the same tasks run
in the calling process, in order. The files are the same, byte for byte, whatever the number of
workers (tests/test_report.py).
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from netdissect.report.runview import LayerView
from netdissect.report.tiles import (
    Atlas,
    LayerTiles,
    MaskStore,
    add_heat_maps,
    atlas_batches,
    atlas_of,
    decode_atlas,
    finish_layer_tiles,
    render_sheets,
    sheet_job,
)
from netdissect.stats.memory import release_before_fork

MIN_FORKED_IMAGES = 64      # with fewer images (and few sheets) forking costs more than it saves
CHUNKS_PER_WORKER = 8       # drawing tasks per worker and layer: small, so the workers end together

_WORK: Optional["ImageWork"] = None     # the work under way, inherited by the workers at the fork


class _Gate:
    """Opens when the last of n decoding tasks has ended, in whichever process, or at once when
    one fails (so that no drawing task waits for decoding that an error has cancelled); says
    whether they all succeeded. (In one process the tasks run in order: always open.)"""

    def __init__(self, n: int, ctx: Any = None):
        self.left = ctx.Value("i", n) if ctx is not None else None
        self.failed = ctx.Value("b", 0) if ctx is not None else None
        self.event = ctx.Event() if ctx is not None else None
        if self.event is not None and n == 0:
            self.event.set()

    def ended(self, ok: bool) -> None:
        if self.left is None:
            return
        if not ok:
            self.failed.value = 1
            self.event.set()
        with self.left.get_lock():
            self.left.value -= 1
            if self.left.value == 0:
                self.event.set()

    def passed(self) -> bool:
        if self.event is None:
            return True
        self.event.wait()
        return not self.failed.value


def _decode(a: int) -> int:
    work, ok = _WORK, False
    try:
        decode_atlas(work.ds, a, work.batches[a], work.image_hw, work.report, work.masks, work.labels,
                     work.pixels)
        ok = True
    finally:
        work.gate.ended(ok)
    return len(work.batches[a])


def _draw(job: int, starts: Sequence[int]):
    work = _WORK
    torch.set_num_threads(1)          # a forked worker runs one thread (as DataLoader workers)
    if not work.gate.passed():        # a decoding task failed: the caller raises its error
        return job, []
    return job, render_sheets(work.jobs[job], starts, work.masks)


class ImageWork:
    """The atlases and overlay sheets of the report in `report`, under way from construction
    (in forked workers when workers > 1 and there is enough to do); result() waits for them.
    Use as a context manager, so that an error stops the workers."""

    def __init__(self, ds: Any, layers: Sequence[LayerView], wanted: Dict[int, List[Tuple[int, bool]]],
                 mode: str, top_k: int, report: Path, workers: int, labels: Any = None, pixels: Any = None):
        global _WORK
        self.ds, self.report, self.labels = ds, report, labels   # labels: labelcache.SelectionLabels
        # pixels: engine.report_images.ReportImages, the shown images as the pass decoded them
        self.pixels = pixels if pixels is not None and pixels.usable_for(ds) else None
        if self.pixels is not None:
            self.pixels.wait()            # its atlases, before the workers fork
        self.batches = atlas_batches(wanted)
        rec = ds.records[0]
        self.image_hw = (rec.ih, rec.iw) if self.batches else (0, 0)
        self.masks = MaskStore(wanted, (rec.sh, rec.sw))
        self.jobs = [sheet_job(layer, ds, mode, top_k, report) for layer in layers
                     if layer.result.topk_index is not None]
        if self.batches:
            (report / "images").mkdir(parents=True, exist_ok=True)
        sheets = sum(len(job.starts) for job in self.jobs)
        self.pool: Optional[ProcessPoolExecutor] = None
        self.gate = _Gate(len(self.batches))
        if workers > 1 and (len(wanted) > MIN_FORKED_IMAGES or sheets >= 4 * workers):
            import multiprocessing as mp
            release_before_fork()         # pages the workers would otherwise copy as they write
            ctx = mp.get_context("fork")
            self.gate = _Gate(len(self.batches), ctx)
            _WORK = self                  # before the first submit: the workers fork there
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
            self.decoding = [self.pool.submit(_decode, a) for a in range(len(self.batches))]
            self.drawing = []
            for j, job in enumerate(self.jobs):
                starts = job.starts
                n = max(1, -(-len(starts) // (workers * CHUNKS_PER_WORKER)))
                self.drawing += [self.pool.submit(_draw, j, starts[i:i + n]) for i in range(0, len(starts), n)]

    def result(self, bar: Any = None) -> Tuple[Atlas, Dict[str, LayerTiles]]:
        """The atlases, and each layer's tiles (by layer name), once every file is written."""
        done: Dict[int, list] = {j: [] for j in range(len(self.jobs))}
        for job in self.jobs:             # in this process, while the workers draw
            add_heat_maps(job)
        if self.pool is not None:
            for fut in as_completed(self.decoding):
                n = fut.result()
                if bar is not None:
                    bar.update(n)
            for fut in self.drawing:
                j, part = fut.result()
                done[j].extend(part)
        else:
            for a, batch in enumerate(self.batches):
                decode_atlas(self.ds, a, batch, self.image_hw, self.report, self.masks, self.labels,
                             self.pixels)
                if bar is not None:
                    bar.update(len(batch))
            # one torch thread, as in the workers: the tensors are small, and a second thread
            # waiting for a CPU another process holds made the thresholding five times slower
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for j, job in enumerate(self.jobs):
                    done[j] = render_sheets(job, job.starts, self.masks)
            finally:
                torch.set_num_threads(threads)
        self.close()
        return (atlas_of(self.batches, self.image_hw),
                {job.layer.name: finish_layer_tiles(job, done[j]) for j, job in enumerate(self.jobs)})

    def close(self) -> None:
        global _WORK
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        _WORK = None

    def __enter__(self) -> "ImageWork":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
