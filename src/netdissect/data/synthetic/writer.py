"""Writing a synthetic Broden directory: images, label PNGs and the tables (also a small CLI).

Part of the synthetic Broden generator (see netdissect.data.synthetic)."""
from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing
import os
import secrets
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from netdissect.data.broden import PIXEL_CATEGORIES
from netdissect.data.labelpng import write_label_png
from netdissect.data.synthetic.colors import color_label_map
from netdissect.data.synthetic.scenes import render_image
from netdissect.data.synthetic.vocabulary import CATEGORIES, INDEX_HEADER, VOCABULARY
from netdissect.errors import NetDissectError


def _label_counts(plane: np.ndarray) -> Dict[int, int]:
    vals, cnt = np.unique(plane, return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, cnt) if v != 0}


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> Tuple[bytes, np.ndarray]:
    """JPEG bytes of an RGB image (4:4:4 chroma) and the pixels as decoded from them."""
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        decoded = np.asarray(im.convert("RGB"))
    return data, decoded


def _write_image(args) -> dict:
    """Worker: render image i, write its files into images_dir, return its index row + stats."""
    images_dir, seed, index, size = args
    out = render_image(seed, index, size)
    seg = size // 2
    stem = f"{index:06d}"
    data, decoded = encode_jpeg(out["rgb"])
    (Path(images_dir) / f"{stem}.jpg").write_bytes(data)
    planes = {"color": color_label_map(decoded, (seg, seg))}
    if out["kind"] == "scene":
        planes["object"] = out["object"]
        if out["part"].any():
            planes["part"] = out["part"]
        planes["material"] = out["material"]
    masks: Dict[str, List[str]] = {}
    counts: Dict[str, Dict[int, int]] = {}
    for cat, plane in planes.items():
        fname = f"{stem}_{'part_1' if cat == 'part' else cat}.png"
        write_label_png(Path(images_dir) / fname, plane)
        masks[cat] = [fname]
        counts[cat] = _label_counts(plane)
    image_labels = {"texture": [out["texture"]]}
    if out["scene"] is not None:
        image_labels["scene"] = [out["scene"]]
    return {"image": f"{stem}.jpg", "split": "val" if index % 5 == 4 else "train",
            "ih": size, "iw": size, "sh": seg, "sw": seg, "masks": masks,
            "image_labels": image_labels, "counts": counts}


def _fmt(x: float) -> str:
    return f"{x:.6f}"


def write_tables(root: Path, vocabulary: Sequence[Tuple[str, str]], categories: Sequence[str],
                 records: Sequence[dict]) -> None:
    """Write index.csv, category.csv, label.csv and c_<category>.csv from per-image records.

    vocabulary: (name, category) per label, label number = position + 1.
    categories: the categories to list (in order); index.csv always has all six columns.
    records: dicts with image, split, ih, iw, sh, sw, masks {category: [png names]},
    image_labels {category: [label numbers]}, counts {category: {label: pixels}}.
    Statistics: see the module docstring.
    """
    root = Path(root)
    nlab = len(vocabulary)
    freq = {c: np.zeros(nlab + 1, dtype=np.int64) for c in categories}
    cover = {c: np.zeros(nlab + 1, dtype=np.float64) for c in categories}
    cat_freq = {c: 0 for c in categories}
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(INDEX_HEADER)
        for r in records:
            row = [r["image"], r["split"], r["ih"], r["iw"], r["sh"], r["sw"]]
            npix = float(r["sh"] * r["sw"])
            for cat in CATEGORIES:
                if cat in PIXEL_CATEGORIES:
                    row.append(";".join(r["masks"].get(cat, [])))
                else:
                    row.append(";".join(str(n) for n in r["image_labels"].get(cat, [])))
            w.writerow(row)
            for cat in categories:
                if cat in PIXEL_CATEGORIES:
                    if not r["masks"].get(cat):
                        continue
                    cat_freq[cat] += 1
                    for lab, cnt in sorted(r["counts"].get(cat, {}).items()):
                        freq[cat][lab] += 1
                        cover[cat][lab] += cnt / npix
                else:
                    labs = r["image_labels"].get(cat, [])
                    if not labs:
                        continue
                    cat_freq[cat] += 1
                    for lab in sorted(set(labs)):
                        freq[cat][lab] += 1
                        cover[cat][lab] += 1.0
    numbers = {c: [i + 1 for i, (_, cc) in enumerate(vocabulary) if cc == c] for c in categories}
    for c in categories:
        stray = [n for n in range(1, nlab + 1) if freq[c][n] and n not in numbers[c]]
        if stray:
            raise NetDissectError(f"labels {stray} occur in category {c} but are not in its vocabulary")
    with open(root / "category.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["name", "first", "last", "count", "frequency"])
        for c in categories:
            w.writerow([c, min(numbers[c]), max(numbers[c]), len(numbers[c]), cat_freq[c]])
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for i, (name, c) in enumerate(vocabulary):
            n = i + 1
            w.writerow([n, name, f"{c}({freq[c][n]})", freq[c][n], _fmt(cover[c][n]), ""])
    for c in categories:
        with open(root / f"c_{c}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, n in enumerate(numbers[c], start=1):
                w.writerow([code, n, vocabulary[n - 1][0], freq[c][n], _fmt(cover[c][n])])


DATASET_MARKER = ".netdissect-dataset"  # in every directory a builder made: it may be replaced


def check_output_dir(out_dir: Union[str, Path], overwrite: bool = False) -> Path:
    """Refuse (NetDissectError) an out_dir that a builder must not replace: a file, a non-empty
    directory without overwrite, or one without the marker of a dataset netdissect made (so
    ``--overwrite`` or ``demo --data .`` never deletes a user's folder)."""
    out = Path(out_dir).absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise NetDissectError(f"{out} exists and is not a directory; choose another output path")
        if any(out.iterdir()):
            if not overwrite:
                raise NetDissectError(f"{out} exists and is not empty; pass overwrite=True "
                                      "(--overwrite) to replace it, or choose another directory")
            if not (out / DATASET_MARKER).is_file():
                raise NetDissectError(f"{out} is not empty and was not made by netdissect (no "
                                      f"{DATASET_MARKER} marker), so it is never replaced; choose "
                                      "another directory or empty this one yourself")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NetDissectError(f"{parent} is not a directory, so {out} cannot be made there; "
                                      "choose another output path")
            break
    return out


@contextmanager
def atomic_output_dir(out_dir: Union[str, Path], overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory next to out_dir; on success it replaces out_dir.

    Refuses (NetDissectError, see ``check_output_dir``) to replace a directory netdissect did
    not make. The new directory carries the marker. On an exception the temporary directory
    is removed and out_dir is untouched.
    """
    out = check_output_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # unlike mkdtemp, honours the umask (the result is a normal directory)
    try:
        yield tmp
        install_dataset_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def install_dataset_dir(work: Path, out: Path, overwrite: bool) -> None:
    """Move the finished dataset in ``work`` (ours) to ``out``, marked as made by netdissect.

    ``out`` is checked again now (``check_output_dir``): a build can take hours, and a folder
    that appeared or changed meanwhile is never replaced unless it carries our marker.
    """
    out = check_output_dir(out, overwrite)
    (work / DATASET_MARKER).write_text(json.dumps({"made_by": "netdissect", "kind": "dataset"}) + "\n")
    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out, trash)
        os.replace(work, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(work, out)


def _progress(iterable, total: int, enabled: bool, desc: str):
    from netdissect.progress import track
    return track(iterable, total, enabled, desc)


def generate_synthetic(out_dir: Union[str, Path], images: int = 1000, size: int = 224,
                       seed: int = 0, workers: Optional[int] = None, progress: bool = False,
                       overwrite: bool = False) -> Path:
    """Write a complete synthetic Broden dataset to out_dir and return its path.

    images: number of images; size: image side in pixels (segmentation side = size // 2);
    seed: same seed -> byte-identical files; workers: processes (default os.cpu_count(),
    1 = in this process); overwrite: replace a non-empty existing out_dir (otherwise
    NetDissectError). The directory is built next to out_dir and renamed into place.
    See the module docstring for the content and the statistics.
    """
    if images < 1:
        raise NetDissectError(f"images must be at least 1, got {images}")
    if size < 8:
        raise NetDissectError(f"size must be at least 8 pixels, got {size}")
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    workers = min(workers, images)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        images_dir = tmp / "images"
        images_dir.mkdir()
        jobs = [(str(images_dir), int(seed), i, int(size)) for i in range(images)]
        if workers == 1:
            records = [_write_image(j) for j in _progress(jobs, images, progress, "synthetic")]
        else:
            ctx = multiprocessing.get_context()
            with ctx.Pool(workers) as pool:
                chunk = max(1, min(16, images // (workers * 8)))
                it = pool.imap(_write_image, jobs, chunksize=chunk)
                records = list(_progress(it, images, progress, "synthetic"))
        write_tables(tmp, VOCABULARY, CATEGORIES, records)
    return Path(out_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m netdissect.data.synthetic",
                                description="Write a synthetic dataset in the Broden format.")
    p.add_argument("out_dir")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        generate_synthetic(a.out_dir, a.images, a.size, a.seed, a.workers, progress=True,
                           overwrite=a.overwrite)
    except NetDissectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {a.images} images to {a.out_dir} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0
