"""An existing Broden-format dataset at another resolution (``netdissect data resize``).

Broden ships at 224, 227 and 384 px; models want others (299 for Inception, 256, 512).  The
resize follows Broden's own builder: every image to size x size (bilinear, no crop, so the
aspect ratio is not kept), every mask to (size // 2) x (size // 2) by nearest neighbour (label
numbers must never be blended), index.csv's sizes updated, and the label tables copied
unchanged: Broden counts label statistics before scaling, so they do not depend on the size.

The output is built in a work directory beside DST that is renamed into place when complete,
so DST is either absent or whole; each file is written atomically, so a killed run resumes
from the files already done (the work directory records the source and size it was for).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from netdissect.atomic import atomic_path
from netdissect.data.labelpng import read_label_png, write_label_png
from netdissect.errors import DatasetError, NetDissectError

__all__ = ["nearest_resize", "resize_broden", "ResizeResult"]

_MANIFEST = ".netdissect-resize.json"
_SIZE_COLUMNS = ("ih", "iw", "sh", "sw")


def nearest_resize(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map, pixel-centre aligned: output pixel (i, j) takes
    source pixel (floor((i + 1/2) * h / height), floor((j + 1/2) * w / width)), computed in
    integers so it is exact for any size."""
    h, w = labels.shape
    rows = ((2 * np.arange(height) + 1) * h) // (2 * height)
    cols = ((2 * np.arange(width) + 1) * w) // (2 * width)
    return labels[rows[:, None], cols[None, :]]


@dataclass
class ResizeResult:
    """What `resize_broden` did: the output, its validation report (the same as `netdissect
    check`), files written in this run and files reused from an interrupted one."""
    path: Path
    report: object
    images: int
    written: int
    reused: int
    notes: List[str] = field(default_factory=list)


def _atomic_save(target: Path, save) -> None:
    with atomic_path(target) as tmp:
        save(tmp)


def _image_format(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise DatasetError(f"cannot tell the image format from the extension {ext!r}; rename the "
                           "image (.jpg or .png) and fix index.csv", name)
    return fmt


def _resize_record(src: Path, work: Path, record, size: int, quality: int,
                   masks: List[str]) -> Tuple[int, int]:
    """Write one image and its masks (those assigned to this record) -> (written, reused)."""
    from netdissect.data.broden import _decode_image  # the reader's checks: size vs index.csv, decodable

    written = reused = 0
    seg = size // 2
    target = work / "images" / record.image
    if target.exists():
        reused += 1
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        if (record.ih, record.iw) == (size, size):
            _atomic_save(target, lambda tmp: shutil.copyfile(src / "images" / record.image, tmp))
        else:
            pixels = _decode_image(src, record)
            resized = Image.fromarray(pixels).resize((size, size), Image.BILINEAR)
            fmt = _image_format(record.image)
            options = {"quality": quality} if fmt == "JPEG" else {}
            _atomic_save(target, lambda tmp: resized.save(tmp, format=fmt, **options))
        written += 1
    for name in masks:
        target = work / "images" / name
        if target.exists():
            reused += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        path = src / "images" / name
        try:
            labels = read_label_png(path)
        except DatasetError as exc:
            raise DatasetError(f"{str(exc).split(': ', 1)[-1]} (listed in index.csv line "
                               f"{record.line})", path) from None
        if labels.shape != (record.sh, record.sw):
            raise DatasetError(f"mask is {labels.shape[0]}x{labels.shape[1]} (h x w) but "
                               f"index.csv line {record.line} says sh x sw = "
                               f"{record.sh}x{record.sw}; fix the mask or index.csv", path)
        if labels.shape == (seg, seg):
            _atomic_save(target, lambda tmp: shutil.copyfile(path, tmp))
        else:
            out = nearest_resize(labels, seg, seg)
            _atomic_save(target, lambda tmp: write_label_png(tmp, out))
        written += 1
    return written, reused


def _resized_index(src: Path, size: int) -> str:
    """index.csv with ih, iw = size and sh, sw = size // 2; every other field as it was."""
    text = (src / "index.csv").read_bytes().decode("utf-8-sig")
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    header = [h.strip() for h in rows[0]]
    columns = [header.index(name) for name in _SIZE_COLUMNS]
    values = (size, size, size // 2, size // 2)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(rows[0])
    for row in rows[1:]:
        row = list(row)
        for column, value in zip(columns, values):
            row[column] = str(value)
        writer.writerow(row)
    return out.getvalue()


def _prepare_work(work: Path, manifest: Dict) -> bool:
    """Create or reuse the work directory -> True when resuming.  A work directory made for
    another source or size is ours (it has our manifest) and is started afresh; anything else
    at that path is left alone."""
    path = work / _MANIFEST
    if work.exists():
        try:  # the manifest is written atomically: one that does not parse is not ours
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise NetDissectError(f"{work} exists and was not made by `netdissect data resize` (no "
                                  f"readable {_MANIFEST}); remove or rename it, then run again")
        if found == manifest:
            return True
        shutil.rmtree(work)
    work.mkdir(parents=True)
    _atomic_save(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1), encoding="utf-8"))
    return False


def resize_broden(src: Union[str, Path], out: Union[str, Path], size: int,
                  workers: Optional[int] = None, quality: int = 95,
                  progress: bool = False) -> ResizeResult:
    """Write the Broden dataset ``src`` at ``size`` px into ``out`` and validate it.

    ``quality`` is the JPEG quality of re-encoded images; images and masks already at the
    target size are copied byte for byte.  Resumes an interrupted run for the same source and
    size.  Returns a ResizeResult whose ``report`` is `check_dataset`'s on ``out``.
    """
    from netdissect.data.broden import BrodenDataset, check_dataset

    if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= 65535:
        raise NetDissectError(f"--size {size!r} must be an integer in [2, 65535] (the masks are "
                              "size // 2)")
    if not 1 <= quality <= 100:
        raise NetDissectError(f"--quality {quality} must lie in [1, 100]")
    ds = BrodenDataset(src)
    src_root = ds.root
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
    if out == src_root or src_root in out.parents:
        raise NetDissectError(f"--out {out} is inside the source dataset {src_root}; choose a "
                              "directory outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NetDissectError(f"{out} exists and is not an empty directory; choose another --out "
                              "or remove it")
    work = out.parent / f".{out.name}.resizing"
    manifest = {"source": str(src_root), "index_digest": ds.index_digest(), "size": size,
                "quality": quality}
    notes = []
    if _prepare_work(work, manifest):
        notes.append(f"resumed the interrupted run in {work}")

    # Each mask file is written once, by the first record that lists it.
    assigned: Dict[str, int] = {}
    plan: List[Tuple[object, List[str]]] = []
    for record in ds.records:
        own = []
        for names in record.masks.values():
            for name in names:
                if name not in assigned:
                    assigned[name] = record.line
                    own.append(name)
        plan.append((record, own))
    if any(r.ih < size or r.iw < size for r in ds.records):
        notes.append(f"some images are smaller than {size} px: upscaling adds no detail")

    from netdissect.progress import progress_bar
    bar = progress_bar(progress, len(plan), f"resizing to {size}", "img")
    written = reused = 0
    workers = workers or min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for w, r in pool.map(lambda item: _resize_record(src_root, work, item[0], size, quality,
                                                         item[1]), plan):
            written += w
            reused += r
            if bar is not None:
                bar.update(1)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # files done so far stay for the resume
        raise
    finally:
        pool.shutdown()
        if bar is not None:
            bar.close()

    _atomic_save(work / "index.csv",
                 lambda tmp: tmp.write_text(_resized_index(src_root, size), encoding="utf-8"))
    for item in sorted(src_root.iterdir()):
        if item.is_file() and item.name not in ("index.csv", _MANIFEST):
            shutil.copy2(item, work / item.name)
    (work / _MANIFEST).unlink()
    if out.exists():
        out.rmdir()
    os.replace(work, out)
    report = check_dataset(out, workers=workers, progress=progress)
    return ResizeResult(out, report, len(plan), written, reused, notes)
