"""One Broden writer for every builder: per-image work that survives interruption, then the tables.

A builder only says, per image, where its pixels and labels come from (a picklable
:class:`SourceItem` whose loader returns an :class:`Annotation` with label *names*). This
module does the rest the way the original Broden builder did:

1. Per image (resumable, optionally in worker processes): the image is resized to
   size x size (bilinear, no crop: aspect is not kept) and written as JPEG; every pixel-level
   level is resized nearest-neighbour to size // 2 (sampling at pixel centres); colors are named
   from the source pixels with Broden's table (:mod:`.colors`); frequency and coverage are
   counted at the *source* resolution, as Broden did, so the label order does not depend on
   ``--size``. The result is kept in a work directory ``.<out>.build`` next to the output
   (``records/<id>.npz`` + ``.json``, the json written last as the commit mark). An image whose
   source gives no label at all (colors aside) is dropped.
2. Tables: per name, frequency (images with the label, summed over categories) and coverage
   (summed fraction of pixels; 1 per image for image-level labels). Names with fewer than
   ``min_images`` images are dropped (their pixels become 0); the rest are numbered from 1 by
   decreasing frequency, then coverage, then name. label.csv's category field lists every
   category of a name with its frequency, largest first (``object(12);part(3)``);
   category.csv lists categories by first label number, its frequency counting label-image
   incidences; c_<category>.csv gives dense codes by decreasing frequency then coverage.
3. Masks are written with the final numbers (value = R + 256 * G); index.csv rows are ordered
   by an md5 hash of the image path, whose value also splits train (< 0.7) / val.
4. The same validation as ``netdissect check`` runs on the result; only then is the work
   directory renamed into place. Interrupted? Run the same command again: finished images are
   kept; a changed command (source, size, options) starts the work over.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import struct
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from netdissect.atomic import atomic_path
from netdissect.data.colors import color_codes, color_label_names
from netdissect.data.labelpng import MAX_LABEL, write_label_png
from netdissect.errors import NetDissectError

#: index.csv always carries Broden's six category columns (empty where unlabeled).
STANDARD_CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
#: categories whose levels are numbered files (``_part_1.png``) even when there is one level.
LEVELED_CATEGORIES = ("part",)
TRAIN_FRACTION = 0.7
JPEG_QUALITY = 90
WORK_FORMAT = 1

#: One level of a pixel-level category: (codes at source resolution, {code: label name}).
Level = Tuple[np.ndarray, Mapping[int, str]]


@dataclass
class Annotation:
    """What a source says about one image.

    Either ``rgb`` (source pixels; resized by the writer, colors computed from them) or
    ``jpeg`` (final image bytes copied as they are, with ``size`` = (ih, iw) and ``seg`` =
    (sh, sw); levels are then already at seg size: used by merge). ``pixel``: category ->
    levels; ``image``: category -> label names (dominant first); ``syns``: name -> synonyms
    for label.csv. Codes absent from a level's name table are an error; 0 is unlabeled.
    """
    rgb: Optional[np.ndarray] = None
    pixel: Dict[str, List[Level]] = field(default_factory=dict)
    image: Dict[str, List[str]] = field(default_factory=dict)
    syns: Dict[str, Sequence[str]] = field(default_factory=dict)
    jpeg: Optional[bytes] = None
    suffix: str = ".jpg"
    size: Optional[Tuple[int, int]] = None
    seg: Optional[Tuple[int, int]] = None


@dataclass(frozen=True)
class SourceItem:
    """One image of a source: ``key`` is its path under images/ without suffix
    (``ade20k/ADE_train_00000001``); ``loader(*args)`` returns its Annotation (both must be
    picklable: top-level function, plain arguments); ``origin`` names it in messages."""
    key: str
    loader: Callable[..., Annotation]
    args: Tuple[Any, ...]
    origin: str


@dataclass
class BuildSummary:
    out: Path
    images: int
    splits: Dict[str, int]
    dropped_images: int
    labels: Dict[str, int]            # category -> labels (primary or not) present
    images_labeled: Dict[str, int]    # category -> images where the category is labeled
    dropped_labels: int
    resumed: int
    check_text: str

    def text(self) -> str:
        lines = [f"wrote {self.images} images to {self.out} ("
                 + ", ".join(f"{s}: {n}" for s, n in sorted(self.splits.items())) + ")"]
        if self.resumed:
            lines.append(f"  {self.resumed} images were kept from an interrupted build")
        if self.dropped_images:
            lines.append(f"  {self.dropped_images} images dropped: no labels")
        if self.dropped_labels:
            lines.append(f"  {self.dropped_labels} label names dropped: too few images")
        lines.append(f"  {'category':<12} {'images':>8} {'labels':>8}")
        for cat, n in self.labels.items():
            lines.append(f"  {cat:<12} {self.images_labeled.get(cat, 0):>8} {n:>8}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Per image

def resize_nearest(codes: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize sampling the source at each target pixel's centre."""
    h, w = codes.shape
    sh, sw = shape
    if (h, w) == (sh, sw):
        return codes
    rows = np.minimum(((np.arange(sh) + 0.5) * h / sh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(sw) + 0.5) * w / sw).astype(np.int64), w - 1)
    return codes[rows[:, None], cols[None, :]]


def resize_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to size x size, no crop (Broden's way: aspect is not kept)."""
    img = Image.fromarray(rgb, mode="RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3]).astype(np.uint8, copy=False)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def _dense_codes(codes: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dense ids shaped like codes, code of each id, pixels per id). Small codes index
    directly (bincount); large ones (COCO's segment ids reach 2^24) go through np.unique so
    no table of 2^24 entries is allocated per image."""
    if codes.size == 0:
        return codes, np.zeros(1, np.int64), np.zeros(1, np.int64)
    if int(codes.max()) < max(65536, codes.size):
        counts = np.bincount(codes.ravel())
        return codes, np.arange(len(counts)), counts
    values, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    return inverse.reshape(codes.shape), values, counts


def _record_id(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def process_item(work: Path, item: SourceItem, size: Optional[int], colors: bool) -> dict:
    """Load, resize, count and store one image in the work directory; returns its meta."""
    ann = item.loader(*item.args)
    names: List[str] = []
    local: Dict[str, int] = {}
    stats: Dict[str, Dict[str, float]] = {}
    planes: Dict[str, List[np.ndarray]] = {}
    if ann.jpeg is not None:
        if ann.size is None or ann.seg is None:
            raise NetDissectError(f"{item.origin}: internal error: a copied image needs its sizes")
        (ih, iw), (sh, sw) = ann.size, ann.seg
        src_shape = (sh, sw)
    else:
        if ann.rgb is None:
            raise NetDissectError(f"{item.origin}: internal error: no pixels")
        rgb = as_rgb(ann.rgb)
        src_shape = rgb.shape[:2]
        ih = iw = int(size)
        sh = sw = int(size) // 2
    pixel = dict(ann.pixel)
    source_labels = 0
    for cat, levels in pixel.items():
        for codes, table in levels:
            codes = np.asarray(codes)
            if codes.shape != src_shape:
                raise NetDissectError(f"{item.origin}: the {cat} annotation is {codes.shape[1]} x "
                                      f"{codes.shape[0]} pixels but the image is {src_shape[1]} x "
                                      f"{src_shape[0]}; the files do not belong together")
            source_labels += bool(codes.any())
    source_labels += sum(bool(v) for v in ann.image.values())
    if not source_labels:
        return {"key": item.key, "dropped": True, "origin": item.origin}
    if ann.jpeg is None and colors:
        pixel["color"] = [(color_codes(rgb), dict(enumerate(color_label_names(), start=1)))]
    for cat, levels in pixel.items():
        out_levels = []
        for codes, table in levels:
            codes = np.asarray(codes).astype(np.int64, copy=False)
            npix = float(codes.size)
            if codes.size and codes.min() < 0:
                raise NetDissectError(f"{item.origin}: negative class value in the {cat} "
                                      "annotation")
            dense, values, counts = _dense_codes(codes)
            lut = np.zeros(len(values), dtype=np.uint16)
            for d in np.flatnonzero(counts):
                code = values[d]
                if code == 0:
                    continue
                name = table.get(int(code))
                if not name:
                    raise NetDissectError(f"{item.origin}: {cat} class {int(code)} has no name in "
                                          "the source's class list; is the list from the same "
                                          "release as the annotation?")
                if name not in local:
                    names.append(name)
                    local[name] = len(names)
                lut[d] = local[name]
                cat_stats = stats.setdefault(cat, {})
                cat_stats[name] = cat_stats.get(name, 0.0) + counts[d] / npix
            stats.setdefault(cat, {})
            out_levels.append(lut[resize_nearest(dense, (sh, sw))])
        if out_levels:
            planes[cat] = out_levels
    image_labels = {cat: list(dict.fromkeys(v)) for cat, v in ann.image.items() if v}
    image_path = item.key + (ann.suffix if ann.jpeg is not None else ".jpg")
    target = work / "images" / image_path
    target.parent.mkdir(parents=True, exist_ok=True)
    data = ann.jpeg if ann.jpeg is not None else encode_jpeg(resize_image(rgb, int(size)))
    _write_atomic(target, data)
    rid = _record_id(item.key)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{cat: np.stack(levels) for cat, levels in planes.items()})
    _write_atomic(work / "records" / f"{rid}.npz", buf.getvalue())
    meta = {"key": item.key, "dropped": False, "origin": item.origin, "image": image_path,
            "ih": ih, "iw": iw, "sh": sh, "sw": sw, "names": names, "stats": stats,
            "image_labels": image_labels,
            "syns": {n: list(ann.syns[n]) for n in list(local) + sum(image_labels.values(), [])
                     if ann.syns.get(n)}}
    return meta


def _store_meta(work: Path, meta: dict) -> None:
    _write_atomic(work / "records" / f"{_record_id(meta['key'])}.json",
                  json.dumps(meta, sort_keys=True).encode("utf-8"))


def _process_job(job) -> dict:
    work, item, size, colors = job
    meta = process_item(Path(work), item, size, colors)
    _store_meta(Path(work), meta)
    return {"key": meta["key"], "dropped": meta["dropped"]}


# ---------------------------------------------------------------------------------------------
# Tables

def hashed_fraction(path: str) -> float:
    """A deterministic number in [0, 1) from an image path (md5, first 8 bytes big-endian)."""
    (value,) = struct.unpack(">Q", hashlib.md5(path.encode("utf-8")).digest()[:8])
    return value / 2.0 ** 64


def _fmt(x: float) -> str:
    return f"{x:.6f}"


@dataclass
class LabelPlan:
    """Numbering of the kept names and their statistics."""
    names: List[str]                                # number - 1 -> name
    number: Dict[str, int]
    freq: Dict[Tuple[str, str], int]                # (category, name) -> images
    cover: Dict[Tuple[str, str], float]
    syns: Dict[str, List[str]]
    dropped: int


def plan_labels(metas: Sequence[dict], min_images: int,
                rename: Callable[[str], str] = lambda n: n) -> LabelPlan:
    """Frequency/coverage per (category, name) over the kept images, filter, number."""
    freq: Dict[Tuple[str, str], int] = defaultdict(int)
    cover: Dict[Tuple[str, str], float] = defaultdict(float)
    syns: Dict[str, List[str]] = defaultdict(list)
    for meta in metas:
        for cat, st in meta["stats"].items():
            seen = set()
            for name, frac in st.items():
                name = rename(name)
                cover[(cat, name)] += frac
                if name not in seen:
                    freq[(cat, name)] += 1
                    seen.add(name)
        for cat, labs in meta["image_labels"].items():
            for name in dict.fromkeys(rename(n) for n in labs):
                freq[(cat, name)] += 1
                cover[(cat, name)] += 1.0
        for name, alts in meta.get("syns", {}).items():
            out = syns[rename(name)]
            for s in alts:
                if s not in out:
                    out.append(s)
    name_freq: Dict[str, int] = defaultdict(int)
    name_cover: Dict[str, float] = defaultdict(float)
    for (cat, name), f in freq.items():
        name_freq[name] += f
        name_cover[name] += cover[(cat, name)]
    kept = [n for n in name_freq if name_freq[n] >= min_images]
    kept.sort(key=lambda n: (-name_freq[n], -round(name_cover[n], 9), n))
    if len(kept) > MAX_LABEL:
        raise NetDissectError(f"{len(kept)} labels do not fit in a label PNG (at most {MAX_LABEL}); "
                              "raise --min-images")
    keep = set(kept)
    return LabelPlan(names=kept, number={n: i + 1 for i, n in enumerate(kept)},
                     freq={k: v for k, v in freq.items() if k[1] in keep},
                     cover={k: v for k, v in cover.items() if k[1] in keep},
                     syns={n: v for n, v in syns.items() if n in keep},
                     dropped=len(name_freq) - len(kept))


def write_label_tables(root: Path, plan: LabelPlan) -> List[str]:
    """label.csv, category.csv and c_<category>.csv; returns the categories by first number."""
    by_cat: Dict[str, List[str]] = defaultdict(list)
    for (cat, name) in plan.freq:
        by_cat[cat].append(name)
    cats = sorted(by_cat, key=lambda c: (min(plan.number[n] for n in by_cat[c]), c))
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for name in plan.names:
            per = sorted(((c, plan.freq[(c, name)]) for c in cats if (c, name) in plan.freq),
                         key=lambda cf: (-cf[1], cats.index(cf[0])))
            total_cover = sum(plan.cover[(c, name)] for c, _ in per)
            syns = [s for s in plan.syns.get(name, []) if s != name]
            w.writerow([plan.number[name], name, ";".join(f"{c}({n})" for c, n in per),
                        sum(n for _, n in per), _fmt(total_cover), ";".join(syns)])
    with open(root / "category.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["name", "first", "last", "count", "frequency"])
        for cat in cats:
            numbers = [plan.number[n] for n in by_cat[cat]]
            w.writerow([cat, min(numbers), max(numbers), len(numbers),
                        sum(plan.freq[(cat, n)] for n in by_cat[cat])])
    for cat in cats:
        dense = sorted(by_cat[cat], key=lambda n: (-plan.freq[(cat, n)],
                                                   -round(plan.cover[(cat, n)], 9),
                                                   plan.number[n]))
        with open(root / f"c_{cat}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, name in enumerate(dense, start=1):
                w.writerow([code, plan.number[name], name, plan.freq[(cat, name)],
                            _fmt(plan.cover[(cat, name)])])
    return cats


def _mask_name(image_path: str, cat: str, level: int, levels: int) -> str:
    stem = image_path.rsplit(".", 1)[0]
    if cat in LEVELED_CATEGORIES or levels > 1:
        return f"{stem}_{cat}_{level + 1}.png"
    return f"{stem}_{cat}.png"


def _finish_record(work: Path, meta: dict, plan: LabelPlan, cats: Sequence[str],
                   rename: Callable[[str], str]) -> Optional[dict]:
    """Write the final masks of one image; its index row, or None when nothing is left."""
    lut = np.zeros(len(meta["names"]) + 1, dtype=np.int32)
    for i, name in enumerate(meta["names"], start=1):
        lut[i] = plan.number.get(rename(name), 0)
    row: Dict[str, str] = {}
    anything = False
    with np.load(work / "records" / f"{_record_id(meta['key'])}.npz") as arrays:
        for cat in arrays.files:
            if cat not in cats:
                continue
            stack = lut[arrays[cat]]
            files = []
            for level in range(stack.shape[0]):
                fname = _mask_name(meta["image"], cat, level, stack.shape[0])
                write_label_png(work / "images" / fname, stack[level])
                files.append(fname)
            anything |= bool(stack.any())
            row[cat] = ";".join(files)
    for cat, labs in meta["image_labels"].items():
        if cat not in cats:
            continue
        numbers = [plan.number[n] for n in dict.fromkeys(rename(x) for x in labs)
                   if n in plan.number]
        if numbers:
            anything = True
            row[cat] = ";".join(str(n) for n in numbers)
    if not anything:
        for name in row.values():
            for fname in name.split(";"):
                if fname.endswith(".png"):
                    (work / "images" / fname).unlink(missing_ok=True)
        (work / "images" / meta["image"]).unlink(missing_ok=True)
        return None
    row.update(image=meta["image"], ih=str(meta["ih"]), iw=str(meta["iw"]),
               sh=str(meta["sh"]), sw=str(meta["sw"]))
    return row


def _sweep_images(images: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Remove what index.csv does not list: files of images dropped or no longer in the
    source, and temporary files a killed build left (everything here is the build's own)."""
    listed = set()
    for r in rows:
        listed.add(r["image"])
        for c in columns:
            listed.update(f for f in r.get(c, "").split(";") if f and not f.isdigit())
    for path in sorted(images.rglob("*"), reverse=True):
        rel = path.relative_to(images).as_posix()
        if path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
        elif rel not in listed:
            path.unlink()


# ---------------------------------------------------------------------------------------------
# The driver

def work_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.build"


def _progress(iterable, total: int, enabled: bool, desc: str):
    from netdissect.progress import track
    return track(iterable, total, enabled, desc)


def _prepare_work(out: Path, params: dict, overwrite: bool, log) -> Path:
    from netdissect.data.synthetic import check_output_dir
    check_output_dir(out, overwrite)  # --overwrite replaces only a dataset netdissect made
    work = work_dir_for(out)
    marker = work / "build.json"
    params = json.loads(json.dumps(params, sort_keys=True))
    if work.exists():
        try:
            old = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise NetDissectError(f"{work} exists but is not a build work directory of this tool "
                                  "(no readable build.json); move it away and run again")
        if old == params:
            return work
        log(f"netdissect: the build in {work} was started with other inputs or options; "
            "starting over")
        shutil.rmtree(work)
    (work / "records").mkdir(parents=True)
    (work / "images").mkdir()
    marker.write_text(json.dumps(params, sort_keys=True, indent=1))
    return work


def build_broden(out: Union[str, Path], items: Sequence[SourceItem], params: dict,
                 size: Optional[int] = None, min_images: int = 1, colors: bool = True,
                 rename: Callable[[str], str] = lambda n: n, overwrite: bool = False,
                 workers: int = 1, progress: bool = False,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> BuildSummary:
    """Build a Broden directory at ``out`` from ``items`` (see the module docstring).

    ``params`` identifies the build (source, paths, options): a work directory left by an
    interrupted build with the same params is resumed. ``size``: image side (masks at
    size // 2), None when items carry final images (merge). ``rename``: name unification
    applied before counting (merge). Returns the summary; raises NetDissectError when the
    result does not pass the checker (the work directory is then kept for inspection).
    """
    from netdissect.data.broden import check_dataset
    out = Path(out).absolute()
    if size is not None and size < 8:
        raise NetDissectError(f"--size must be at least 8 pixels, got {size}")
    if min_images < 1:
        raise NetDissectError(f"--min-images must be at least 1, got {min_images}")
    keys: Dict[str, str] = {}
    for item in items:
        if item.key in keys:
            raise NetDissectError(f"{item.origin} and {keys[item.key]} would both be written as "
                                  f"images/{item.key}; rename one of them")
        keys[item.key] = item.origin
    if not items:
        raise NetDissectError(f"{params.get('src', 'the source')}: no images found")
    params = dict(params, format=WORK_FORMAT, size=size, min_images=min_images, colors=colors)
    work = _prepare_work(out, params, overwrite, log)
    records = work / "records"
    done = {p.stem for p in records.glob("*.json")}
    todo = [it for it in items if _record_id(it.key) not in done]
    resumed = len(items) - len(todo)
    if resumed:
        log(f"netdissect: resuming: {resumed} of {len(items)} images were already done")
    jobs = [(str(work), it, size, colors) for it in todo]
    try:
        if workers <= 1 or len(jobs) < 2:
            for job in _progress(jobs, len(jobs), progress, params.get("source", "build")):
                _process_job(job)
        else:
            import multiprocessing
            with multiprocessing.get_context().Pool(min(workers, len(jobs))) as pool:
                it = pool.imap_unordered(_process_job, jobs, chunksize=4)
                for _ in _progress(it, len(jobs), progress, params.get("source", "build")):
                    pass
    except KeyboardInterrupt:
        finished = len(list(records.glob("*.json")))
        raise KeyboardInterrupt(f"interrupted after {finished} of {len(items)} images; run the "
                                f"same command again to resume (work kept in {work})")

    metas = []
    for item in items:
        meta = json.loads((records / f"{_record_id(item.key)}.json").read_text())
        metas.append(meta)
    kept = [m for m in metas if not m["dropped"]]
    plan = plan_labels(kept, min_images, rename)
    if not plan.names:
        raise NetDissectError(f"no label has at least {min_images} images "
                              f"({len(kept)} images with labels); lower --min-images")
    for stale in ("index.csv", "category.csv", "label.csv"):
        (work / stale).unlink(missing_ok=True)
    for stale in work.glob("c_*.csv"):
        stale.unlink()
    cats = write_label_tables(work, plan)
    rows = []
    for meta in _progress(kept, len(kept), progress, "writing masks"):
        row = _finish_record(work, meta, plan, cats, rename)
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda r: (hashed_fraction(r["image"]), r["image"]))
    splits: Dict[str, int] = defaultdict(int)
    columns = list(STANDARD_CATEGORIES) + [c for c in cats if c not in STANDARD_CATEGORIES]
    with open(work / "index.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "split", "ih", "iw", "sh", "sw"] + columns)
        for r in rows:
            split = "train" if hashed_fraction(r["image"]) < TRAIN_FRACTION else "val"
            splits[split] += 1
            w.writerow([r["image"], split, r["ih"], r["iw"], r["sh"], r["sw"]]
                       + [r.get(c, "") for c in columns])
    _sweep_images(work / "images", rows, columns)
    report = check_dataset(work, workers=4, progress=progress)
    report.root = out
    if not report.ok:
        raise NetDissectError(f"the built dataset does not pass the check (work kept in {work}):\n"
                              + report.summary_text())
    shutil.rmtree(records)
    (work / "build.json").unlink()
    from netdissect.data.synthetic.writer import install_dataset_dir
    install_dataset_dir(work, out, overwrite)
    labels = {c: sum(1 for (cc, _) in plan.freq if cc == c) for c in cats}
    images_labeled = {c: sum(1 for r in rows if r.get(c)) for c in cats}
    return BuildSummary(out=out, images=len(rows), splits=dict(splits),
                        dropped_images=len(metas) - len(rows), labels=labels,
                        images_labeled=images_labeled, dropped_labels=plan.dropped,
                        resumed=resumed, check_text=report.summary_text())
