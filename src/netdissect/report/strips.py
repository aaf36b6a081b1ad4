"""Image strips: for each unit, its top-k images with the unit's region and the label's region.

Per image of a unit's top-k:
  * the stored native activation map is upsampled bilinearly (align_corners=False, the same
    convention as torch's `interpolate`) to the image size and thresholded with the unit's
    threshold (strict >): the unit's region;
  * the image is shown at `cell` pixels high; outside the unit's region it is dimmed, and the
    region gets a solid yellow contour;
  * the region of the unit's label in the dataset's segmentation gets a dashed sky-blue outline
    (for image-level labels, scene and texture, the label's region is the whole image: images
    carrying the label get a dashed frame).

All resampling is done with small interpolation matrices (numpy matmul over many maps at once),
so no deep-learning framework is needed and 1,280-unit layers render in seconds.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .colors import LABEL_REGION_RGB, UNIT_REGION_RGB
from .rundir import IMAGE_CATEGORIES, LayerData

DIM = 0.38          # brightness kept outside the unit's region
UNIT_RING = 2       # px, outside the region
LABEL_RING = 2      # px, inside the region
DASH = 4            # px, dash period of the label outline
GAP = 3             # px between images of a strip
GAP_RGB = (255, 255, 255)
MISSING_RGB = (200, 200, 200)


# ----------------------------------------------------------------------------- resampling

@lru_cache(maxsize=64)
def _bilinear_matrix(src: int, dst: int) -> np.ndarray:
    m = np.zeros((dst, src), dtype=np.float32)
    if src == 1:
        m[:, 0] = 1.0
        return m
    scale = src / dst
    pos = np.maximum((np.arange(dst) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    i1 = np.minimum(i0 + 1, src - 1)
    w1 = (pos - i0).astype(np.float32)
    w1[i0 == i1] = 0.0
    rows = np.arange(dst)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    m.setflags(write=False)
    return m


def bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix of 1-D bilinear interpolation, align_corners=False (torch's rule:
    source coordinate (i + 0.5) * src / dst - 0.5, clamped below at 0)."""
    return _bilinear_matrix(int(src), int(dst))


@lru_cache(maxsize=64)
def _area_matrix(src: int, dst: int) -> np.ndarray:
    m = np.zeros((dst, src), dtype=np.float32)
    step = src / dst
    for j in range(dst):
        a, b = j * step, (j + 1) * step
        lo, hi = int(math.floor(a)), int(math.ceil(b))
        for i in range(lo, min(hi, src)):
            overlap = min(b, i + 1) - max(a, i)
            if overlap > 0:
                m[j, i] = overlap / step
    m.setflags(write=False)
    return m


def area_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix averaging the source pixels that each output pixel covers (exact
    fractional overlaps; used to shrink full-resolution masks to the strip's cell size)."""
    return _area_matrix(int(src), int(dst))


@lru_cache(maxsize=64)
def _taps(kind: str, src: int, dst: int) -> Tuple[np.ndarray, np.ndarray]:
    """The nonzero entries of a resampling matrix as (dst, T) indices and weights."""
    m = bilinear_matrix(src, dst) if kind == "bilinear" else area_matrix(src, dst)
    nz = m > 0
    t = max(1, int(nz.sum(1).max()))
    idx = np.zeros((dst, t), np.int64)
    w = np.zeros((dst, t), np.float32)
    for j in range(dst):
        cols = np.flatnonzero(nz[j])
        idx[j, : len(cols)] = cols
        w[j, : len(cols)] = m[j, cols]
    return idx, w


def _resample_axis(x: np.ndarray, kind: str, dst: int, axis: int) -> np.ndarray:
    """Resample one axis with a few gathered taps per output (the matrices are sparse)."""
    idx, w = _taps(kind, x.shape[axis], dst)
    shape = [1] * x.ndim
    shape[axis] = dst
    out = np.take(x, idx[:, 0], axis=axis) * w[:, 0].reshape(shape)
    for t in range(1, idx.shape[1]):
        out += np.take(x, idx[:, t], axis=axis) * w[:, t].reshape(shape)
    return out


def _upsample_transposed(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, W, H): bilinear upsampling as two plain 2-D matrix products (the
    native side is small, so this runs in BLAS); the result is C-contiguous, transposed."""
    n, h, w = maps.shape
    H, W = size
    x = maps.astype(np.float32).reshape(n * h, w) @ bilinear_matrix(w, W).T      # (n*h, W)
    x = x.reshape(n, h, W).transpose(0, 2, 1).reshape(n * W, h)
    return (x @ bilinear_matrix(h, H).T).reshape(n, W, H)


def upsample_bilinear(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W) bilinear, align_corners=False (torch's F.interpolate rule)."""
    return _upsample_transposed(maps, size).transpose(0, 2, 1)


def region_coverage(maps: np.ndarray, thresholds: np.ndarray, image_size: Tuple[int, int],
                    cell_size: Tuple[int, int], chunk: int = 128) -> np.ndarray:
    """Fraction of each cell pixel covered by the unit's region.

    maps (N, h, w) native activations, thresholds (N,); the region is computed at the image
    size (upsample bilinearly, then > threshold) and averaged down to cell_size (ch, cw)."""
    n = maps.shape[0]
    ch, cw = cell_size
    out = np.empty((n, ch, cw), dtype=np.float32)
    thresholds = np.asarray(thresholds, np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        act_t = _upsample_transposed(maps[s:e], image_size) > thresholds[s:e, None, None]
        act_t = act_t.view(np.uint8)                                   # (n, W, H)
        small_t = _resample_axis(_resample_axis(act_t, "area", ch, 2), "area", cw, 1)
        out[s:e] = small_t.transpose(0, 2, 1)
    return out


# ----------------------------------------------------------------------------- morphology

def _shift_or(m: np.ndarray, r: int, axis: int) -> np.ndarray:
    out = m.copy()
    n = m.shape[axis]
    for d in range(1, r + 1):
        if d >= n:
            break
        src = [slice(None)] * m.ndim
        dst = [slice(None)] * m.ndim
        src[axis], dst[axis] = slice(0, n - d), slice(d, n)
        out[tuple(dst)] |= m[tuple(src)]
        src[axis], dst[axis] = slice(d, n), slice(0, n - d)
        out[tuple(dst)] |= m[tuple(src)]
    return out


def dilate(m: np.ndarray, r: int) -> np.ndarray:
    """Square dilation of the last two axes (outside the array counts as False)."""
    return _shift_or(_shift_or(m, r, m.ndim - 2), r, m.ndim - 1)


def erode(m: np.ndarray, r: int) -> np.ndarray:
    """Square erosion of the last two axes (outside the array counts as False, so a region
    touching the border keeps an edge there)."""
    pad = [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)]
    padded = np.pad(~m, pad, constant_values=True)
    grown = dilate(padded, r)
    return ~grown[..., 1:-1, 1:-1]


@lru_cache(maxsize=16)
def dash_pattern(h: int, w: int, period: int = DASH) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    out = ((yy + xx) // period) % 2 == 0
    out.setflags(write=False)
    return out


# ----------------------------------------------------------------------------- composition

@lru_cache(maxsize=16)
def border_band(h: int, w: int, lo: int, hi: int) -> np.ndarray:
    """Pixels whose distance to the image's edge is in [lo, hi)."""
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx))
    out = (d >= lo) & (d < hi)
    out.setflags(write=False)
    return out


def compose_cells(images: np.ndarray, coverage: np.ndarray,
                  label_masks: np.ndarray) -> np.ndarray:
    """images (B, ch, cw, 3) uint8, coverage (B, ch, cw) in [0, 1], label_masks (B, ch, cw) bool
    -> (B, ch, cw, 3) uint8 with the unit's region highlighted and the label's outlined.

    The unit's contour runs just outside its region, and along the image's edge where the
    region touches it (a region covering the whole image gets a solid frame). The label's
    dashed outline runs just inside the label's region; along the image's edge it sits inside
    the unit's edge band, so both stay visible."""
    h, w = coverage.shape[-2:]
    img = images.astype(np.float32)
    weight = DIM + (1.0 - DIM) * np.clip(coverage, 0.0, 1.0)
    out = img * weight[..., None]
    region = coverage >= 0.5
    edge = border_band(h, w, 0, UNIT_RING)[None]
    ring = (dilate(region, UNIT_RING) & ~region) | (region & edge)
    out[ring] = UNIT_REGION_RGB
    if label_masks.any():
        inner = ~border_band(h, w, 0, UNIT_RING + LABEL_RING)[None]
        # interior boundaries: the band inside the label's region (the image's edge excluded)
        pad = [(0, 0)] * (label_masks.ndim - 2) + [(1, 1), (1, 1)]
        grown = dilate(np.pad(~label_masks, pad, constant_values=False), LABEL_RING)[..., 1:-1, 1:-1]
        lring = label_masks & grown & inner
        # along the image's edge: a band just inside the unit's edge band
        lring |= label_masks & border_band(h, w, UNIT_RING, UNIT_RING + LABEL_RING)[None]
        lring &= dash_pattern(h, w)[None]
        out[lring] = LABEL_REGION_RGB
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- dataset access

@dataclass
class CellInfo:
    index: int                 # dataset record index (-1: none)
    image: str                 # image file name
    score: float
    has_label: Optional[bool]  # label present in this image (None: unknown)
    region_frac: float         # fraction of the image inside the unit's region


@dataclass
class StripInfo:
    unit: int
    file: str                  # path relative to the report folder
    width: int
    height: int
    cells: List[CellInfo] = field(default_factory=list)
    cell_x: List[int] = field(default_factory=list)
    cell_w: List[int] = field(default_factory=list)


def cell_shape(ih: int, iw: int, cell: int) -> Tuple[int, int]:
    return cell, max(1, int(round(cell * iw / ih)))


_WORKER_DS: Any = None


def _label_cells(planes: np.ndarray, numbers: Sequence[int], cell_hw: Tuple[int, int]) -> np.ndarray:
    """(len(numbers), ch, cw) bool: where each label covers at least half of a cell pixel,
    all labels at once (a lookup table, then one batched area resampling)."""
    planes = np.asarray(planes)
    n = len(numbers)
    m, sh, sw = planes.shape
    lut = np.full(int(max(int(planes.max()), max(numbers))) + 1, -1, np.int64)
    lut[np.asarray(numbers, np.int64)] = np.arange(n)
    hit = np.zeros((n, sh * sw), np.uint8)
    pos = np.arange(sh * sw)
    for plane in planes.reshape(m, -1):
        which = lut[plane]
        ok = which >= 0
        hit[which[ok], pos[ok]] = 1
    hit = hit.reshape(n, sh, sw)
    frac = _resample_axis(_resample_axis(hit, "area", cell_hw[1], 2), "area", cell_hw[0], 1)
    return frac >= 0.5


def _load_one(ds: Any, idx: int, cell: int, want: Sequence[Tuple[int, bool]]):
    """Image (cell-sized), image size, and for each wanted (label number, image_level) the
    label's cell mask and presence."""
    img = ds.load_image(idx)
    ih, iw = img.shape[:2]
    ch, cw = cell_shape(ih, iw, cell)
    small = np.asarray(Image.fromarray(img).convert("RGB").resize((cw, ch), Image.LANCZOS))
    masks: Dict[int, Tuple[Optional[np.ndarray], Optional[bool]]] = {}
    if want:
        try:
            seg = ds.load_segmentation(idx)
        except Exception:
            seg = None
        if seg is None:
            return idx, small, (ih, iw), {number: (None, None) for number, _ in want}
        image_labels = set(int(v) for v in np.asarray(seg.image_labels).reshape(-1))
        planes = np.asarray(seg.pixel)
        pixel_numbers = [number for number, lvl in want if not lvl]
        present_px = set()
        if planes.size and pixel_numbers:
            present_px = set(int(v) for v in np.unique(planes)) & set(pixel_numbers)
        cells = {}
        if present_px:
            numbers = sorted(present_px)
            for number, mask in zip(numbers, _label_cells(planes, numbers, (ch, cw))):
                cells[number] = mask
        for number, image_level in want:
            if image_level:
                present = number in image_labels
                masks[number] = (np.ones((ch, cw), bool) if present else None, present)
            elif number in cells:
                masks[number] = (cells[number], True)
            else:
                masks[number] = (None, False)
    return idx, small, (ih, iw), masks


def _load_batch(args):
    jobs, cell = args
    return [_load_one(_WORKER_DS, idx, cell, want) for idx, want in jobs]


def load_cells(ds: Any, jobs: Dict[int, List[Tuple[int, bool]]], cell: int, workers: int,
               progress: Any = None):
    """Load every needed image (and segmentation) once; in parallel when workers > 1."""
    global _WORKER_DS
    items = sorted(jobs.items())
    results = []
    if workers > 1 and len(items) > 64:
        import multiprocessing as mp
        try:
            ctx = mp.get_context("fork")
        except ValueError:
            ctx = None
        if ctx is not None:
            _WORKER_DS = ds
            try:
                n = max(1, len(items) // (workers * 8))
                batches = [(items[i:i + n], cell) for i in range(0, len(items), n)]
                with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    for part in pool.map(_load_batch, batches):
                        results.extend(part)
                        if progress is not None:
                            progress.update(len(part))
                return results
            finally:
                _WORKER_DS = None
    for idx, want in items:
        results.append(_load_one(ds, idx, cell, want))
        if progress is not None:
            progress.update(1)
    return results


# ----------------------------------------------------------------------------- strips of a layer

def _write_jpeg(arr: np.ndarray, path: Path, quality: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # 4:4:4: chroma subsampling would wash out the thin coloured outlines
    Image.fromarray(arr).save(tmp, format="JPEG", quality=quality, subsampling=0)
    os.replace(tmp, path)


def _place(src: Path, dst: Path) -> None:
    """Put src's content at dst: a hard link when possible (no extra disk), else a copy."""
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@dataclass
class _LayerJob:
    """What the strip renderer needs for one layer (shared with forked workers)."""
    layer_dir: str
    units: List[int]
    index: np.ndarray            # (K, kk)
    score: np.ndarray            # (K, kk)
    valid: np.ndarray            # (K, kk) bool
    maps: Optional[np.ndarray]   # (K, k, h, w)
    thresholds: Optional[np.ndarray]
    unit_label: Dict[int, Optional[int]]
    small: Dict[int, np.ndarray]
    sizes: Dict[int, Tuple[int, int]]
    masks: Dict[int, Dict[int, Tuple[Optional[np.ndarray], Optional[bool]]]]
    names: List[str]
    cell: int
    quality: int
    out_dir: Path
    rep_dir: Path


_JOB: Optional[_LayerJob] = None


def _render_units(ks: Sequence[int]) -> List[StripInfo]:
    """Strips of units ks (row indices of the layer): regions, composition, JPEG files."""
    job = _JOB
    assert job is not None
    kk = job.index.shape[1]
    coverage: Dict[Tuple[int, int], np.ndarray] = {}
    if job.maps is not None and job.thresholds is not None:
        groups: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}
        for k in ks:
            for j in range(kk):
                if job.valid[k, j]:
                    groups.setdefault(job.sizes[int(job.index[k, j])], []).append((k, j))
        for (ih, iw), pairs in groups.items():
            rows = np.array([p[0] for p in pairs])
            cols = np.array([p[1] for p in pairs])
            cov = region_coverage(job.maps[rows, cols], job.thresholds[rows], (ih, iw),
                                  cell_shape(ih, iw, job.cell))
            for p, c in zip(pairs, cov):
                coverage[p] = c
    out: List[StripInfo] = []
    for k in ks:
        number = job.unit_label[k]
        parts, infos, widths = [], [], []
        for j in range(kk):
            if not job.valid[k, j]:
                continue
            idx = int(job.index[k, j])
            img = job.small[idx]
            ch, cw = img.shape[:2]
            cov = coverage.get((k, j))
            if cov is None:
                cov = np.ones((ch, cw), np.float32)   # no map: show the image undimmed
            lm, present = (None, None)
            if number is not None:
                lm, present = job.masks[idx].get(number, (None, None))
            parts.append((img, cov, lm if lm is not None else np.zeros((ch, cw), bool)))
            infos.append(CellInfo(idx, job.names[idx], float(job.score[k, j]), present,
                                  float((cov >= 0.5).mean()) if (k, j) in coverage else float("nan")))
            widths.append(cw)
        if not parts:
            continue
        if len({p[0].shape for p in parts}) == 1:      # the usual case: one batched call
            cells = list(compose_cells(np.stack([p[0] for p in parts]),
                                       np.stack([p[1] for p in parts]),
                                       np.stack([p[2] for p in parts])))
        else:
            cells = [compose_cells(p[0][None], p[1][None], p[2][None])[0] for p in parts]
        h = max(c.shape[0] for c in cells)
        total_w = sum(widths) + GAP * (len(cells) - 1)
        strip = np.empty((h, total_w, 3), np.uint8)
        strip[:] = GAP_RGB
        xs = []
        x = 0
        for c in cells:
            strip[: c.shape[0], x: x + c.shape[1]] = c
            xs.append(x)
            x += c.shape[1] + GAP
        unit = job.units[k]
        fname = f"unit_{unit}.jpg"
        _write_jpeg(strip, job.out_dir / fname, job.quality)
        _place(job.out_dir / fname, job.rep_dir / fname)
        out.append(StripInfo(unit, f"strips/{job.layer_dir}/{fname}", total_w, h, infos, xs, widths))
    return out


def _bar(progress: bool, total: int, desc: str, unit: str):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


def render_layer_strips(ds: Any, layer: LayerData, run_dir: Path, report_dir: Path,
                        image_level_categories: Sequence[str] = IMAGE_CATEGORIES,
                        top_k: int = 8, cell: int = 128, quality: int = 85,
                        workers: int = 1, progress: bool = False) -> Dict[int, StripInfo]:
    """Write OUT/<layer>/unit_<n>.jpg for every unit and place them (hard links or copies)
    under report_dir/strips/<layer>/; return the strips' layout per unit.

    Every needed image and segmentation is decoded once; regions are resampled in batches;
    with workers > 1 both the decoding and the strips are spread over forked processes."""
    global _JOB
    if layer.topk_index is None:
        return {}
    K = layer.size
    kk = min(top_k, layer.topk_index.shape[1])
    index = layer.topk_index[:, :kk]
    score = (layer.topk_score[:, :kk] if layer.topk_score is not None
             else np.full(index.shape, np.nan, np.float32))
    valid = (index >= 0) & (index < len(ds))
    image_level = set(image_level_categories)

    # what each image must provide: the labels of the units that have it in their top-k
    jobs: Dict[int, List[Tuple[int, bool]]] = {}
    unit_label: Dict[int, Optional[int]] = {}
    for k, u in enumerate(layer.units):
        lvl = u.category in image_level
        unit_label[k] = u.label_number
        for j in range(kk):
            if valid[k, j]:
                want = jobs.setdefault(int(index[k, j]), [])
                if u.label_number is not None and (u.label_number, lvl) not in want:
                    want.append((u.label_number, lvl))

    bar = _bar(progress, len(jobs), f"{layer.name}: images", "img")
    loaded = load_cells(ds, jobs, cell, workers, bar)
    if bar is not None:
        bar.close()

    out_dir = run_dir / layer.dirname
    out_dir.mkdir(parents=True, exist_ok=True)
    rep_dir = report_dir / "strips" / layer.dirname
    rep_dir.mkdir(parents=True, exist_ok=True)
    job = _LayerJob(layer.dirname, [u.unit for u in layer.units], index, score, valid,
                    layer.topk_maps, layer.thresholds, unit_label,
                    {i: s for i, s, _, _ in loaded}, {i: hw for i, _, hw, _ in loaded},
                    {i: m for i, _, _, m in loaded}, [r.image for r in ds.records],
                    cell, quality, out_dir, rep_dir)
    del loaded
    chunk = 32
    chunks = [list(range(s, min(K, s + chunk))) for s in range(0, K, chunk)]
    bar = _bar(progress, K, f"{layer.name}: strips", "unit")
    strips: Dict[int, StripInfo] = {}
    _JOB = job
    try:
        ctx = None
        if workers > 1 and len(chunks) > 1:
            import multiprocessing as mp
            try:
                ctx = mp.get_context("fork")
            except ValueError:
                ctx = None
        if ctx is not None:
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for part in pool.map(_render_units, chunks):
                    strips.update((s.unit, s) for s in part)
                    if bar is not None:
                        bar.update(len(part))
        else:
            for ks in chunks:
                part = _render_units(ks)
                strips.update((s.unit, s) for s in part)
                if bar is not None:
                    bar.update(len(part))
    finally:
        _JOB = None
        if bar is not None:
            bar.close()
    return strips


def reuse_layer_strips(layer: LayerData, run_dir: Path, report_dir: Path) -> Dict[int, StripInfo]:
    """When the dataset is unavailable: place strips rendered earlier (OUT/<layer>/unit_<n>.jpg)."""
    strips: Dict[int, StripInfo] = {}
    src_dir = run_dir / layer.dirname
    rep_dir = report_dir / "strips" / layer.dirname
    for u in layer.units:
        src = src_dir / f"unit_{u.unit}.jpg"
        if not src.exists():
            continue
        rep_dir.mkdir(parents=True, exist_ok=True)
        _place(src, rep_dir / src.name)
        with Image.open(src) as im:
            w, h = im.size
        strips[u.unit] = StripInfo(u.unit, f"strips/{layer.dirname}/{src.name}", w, h)
    return strips
