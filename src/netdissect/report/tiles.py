"""The images of the report: each dataset image once, and per unit a transparent overlay.

A unit's strip is drawn in the browser from two layers: the dataset image (stored once however
many units show it, in JPEG atlases at the dataset's resolution under images/) and the unit's
overlay for that image (palette PNG sheets under strips/<layer>/, one row per unit, one column
per top-k image, at the segmentation resolution, the resolution the IoU was scored at). So a
raw-image toggle costs nothing, the report stays small and in few files, and no file is a hard
link.

An overlay marks, for one unit and one image:
  * the unit's region (its upsampled map above its threshold, see regions.py), filled with a
    translucent magenta, the rest of the image dimmed;
  * a solid contour only around parts of the region large enough to see (those that survive a
    morphological opening); smaller parts are filled nearly opaque instead, so an early
    layer's region of hundreds of specks reads as a speckle of colour, not hundreds of rings;
  * the unit's label's ground truth as a dashed outline just outside it (small objects stay
    visible), sky blue alternating with near-black so it shows on light and dark content (an image-level label, scene or texture: a dashed frame
    on the images that carry it).
Magenta and sky blue are told apart with the common colour-vision deficiencies, and neither is
the yellow of Broden's "yellow" concept.
"""
from __future__ import annotations

import base64
import io
import mmap
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from netdissect.atomic import atomic_path
from netdissect.config import compiled_code_allowed
from netdissect.progress import progress_bar as _progress_bar
from netdissect.report.colors import (
    DIM_RGBA,
    LABEL_DARK_RGB,
    LABEL_REGION_RGB,
    SPECK_ALPHA,
    UNIT_FILL_ALPHA,
    UNIT_REGION_RGB,
)
from netdissect.report.regions import layer_upsampler, map_placement, unit_regions
from netdissect.report.runview import IMAGE_CATEGORIES, LayerView

ATLAS_COLS = 8                 # dataset images per atlas row (an atlas holds ATLAS_COLS ** 2)
UNITS_PER_SHEET = 16           # overlay rows per sheet
JPEG_QUALITY = 70            # the demo report (with formula overlays) stays under 25 MB
PNG_LEVEL = 1                # zlib level of the overlay sheets (png_bytes; with Z_RLE the level barely matters)
PNG_FILTER_UP = 2             # PNG's row filter "Up": each byte minus the byte above it

# palette indices of an overlay
EMPTY, DIM, FILL, CONTOUR, LABEL, LABEL_ALT, SPECK, LABEL_IN, LABEL_ALT_IN = range(9)
IN_REGION = (FILL, SPECK, LABEL_IN, LABEL_ALT_IN)   # the indices of the unit's region: decodable


def palette() -> Tuple[List[int], bytes]:
    """RGB palette and per-index alpha of the overlays."""
    rgba = [(0, 0, 0, 0), DIM_RGBA, UNIT_REGION_RGB + (UNIT_FILL_ALPHA,), UNIT_REGION_RGB + (255,),
            LABEL_REGION_RGB + (255,), LABEL_DARK_RGB + (255,), UNIT_REGION_RGB + (SPECK_ALPHA,),
            LABEL_REGION_RGB + (255,), LABEL_DARK_RGB + (255,)]
    rgb = [c for px in rgba for c in px[:3]]
    return rgb + [0] * (768 - len(rgb)), bytes(px[3] for px in rgba)


# ----------------------------------------------------------------------------- morphology

def _shift_or(m: np.ndarray, r: int, axis: int) -> np.ndarray:
    out = m.copy()
    n = m.shape[axis]
    for d in range(1, min(r, n - 1) + 1):
        src = [slice(None)] * m.ndim
        dst = [slice(None)] * m.ndim
        src[axis], dst[axis] = slice(0, n - d), slice(d, n)
        out[tuple(dst)] |= m[tuple(src)]
        src[axis], dst[axis] = slice(d, n), slice(0, n - d)
        out[tuple(dst)] |= m[tuple(src)]
    return out


def dilate(m: np.ndarray, r: int) -> np.ndarray:
    """Square dilation (side 2r+1) of the last two axes; outside the array counts as False.
    (Shifted ORs, separable: faster here than torch's max_pool2d on CPU.)"""
    return _shift_or(_shift_or(m, r, m.ndim - 2), r, m.ndim - 1) if r > 0 else m.copy()


def erode(m: np.ndarray, r: int) -> np.ndarray:
    """Square erosion of the last two axes; outside the array counts as False, so a region
    touching the image's edge gets an edge there."""
    if r <= 0:
        return m.copy()
    pad = [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)]
    return ~dilate(np.pad(~m, pad, constant_values=True), r)[..., 1:-1, 1:-1]


def visible_radius(seg_hw: Tuple[int, int]) -> int:
    """Parts of a region narrower than 2r+1 segmentation pixels get no contour: at the
    strip's scale (about 1 px per pixel of a 112 px segmentation) that is 5 px."""
    return max(1, int(round(min(seg_hw) / 50)))


# the same indices in one pass per image (report/_overlay.c), several times faster; imported by
# its full name, as `from netdissect.report import` would import the package that imports this
try:
    import netdissect.report._overlay as _overlay
except ImportError:
    _overlay = None

_CODES = bytes([DIM, FILL, CONTOUR, SPECK, LABEL, LABEL_ALT, LABEL_IN, LABEL_ALT_IN])


def compose_overlays(regions: np.ndarray, labels: np.ndarray, radius: int) -> np.ndarray:
    """(B, sh, sw) unit regions and label masks -> (B, sh, sw) uint8 palette indices.

    The region stays readable from the indices (``IN_REGION``) under the label's outline too,
    so a test can check what is drawn against what was scored. Computed by the compiled
    extension when it was built (and NETDISSECT_NO_KERNEL is not 1), else by
    compose_overlays_numpy (the same indices)."""
    if _overlay is None or not compiled_code_allowed() or radius < 0 or regions.ndim != 3:
        return compose_overlays_numpy(regions, labels, radius)
    regions = np.ascontiguousarray(regions, dtype=bool)
    labels = np.ascontiguousarray(np.broadcast_to(labels, regions.shape), dtype=bool)
    out = np.empty(regions.shape, np.uint8)
    _overlay.compose(regions, labels, out, int(radius), _CODES)
    return out


def compose_overlays_numpy(regions: np.ndarray, labels: np.ndarray, radius: int) -> np.ndarray:
    """compose_overlays in numpy: the reference the compiled path is tested against."""
    out = np.where(regions, FILL, DIM).astype(np.uint8)
    # near a part that survives an opening of radius r (erode by r, dilate by r), i.e. within
    # r + 1 of it: one dilation by 2r + 1 of the eroded region
    large = dilate(erode(regions, radius), 2 * radius + 1)
    ring = dilate(regions, 1) & ~regions & large
    out[ring] = CONTOUR
    out[regions & ~large] = SPECK       # too small for a contour: drawn nearly opaque instead
    if labels.any():
        # just outside the label's region, so a small object stays visible inside its outline;
        # where the region meets the image's edge (an image-level label: all of it), on the edge
        h, w = labels.shape[-2:]
        frame = np.ones((h, w), bool)
        frame[1:-1, 1:-1] = False
        edge = (dilate(labels, 1) & ~labels) | (labels & frame)
        yy, xx = np.mgrid[0:h, 0:w]
        dash = np.broadcast_to(((yy + xx) // 3) % 2 == 0, edge.shape)
        # four indices: dash or gap colour, inside or outside the unit's region
        out[edge] = np.where(dash, np.where(regions, LABEL_IN, LABEL),
                             np.where(regions, LABEL_ALT_IN, LABEL_ALT))[edge]
    return out


# ----------------------------------------------------------------------------- dataset access

class MaskStore:
    """The wanted label masks of the shown images, bit-packed, in one shared memory map: forked
    workers write them while decoding and read them while drawing (imagework.py), so no mask
    is sent between processes. One slot per (image, wanted label); get() unpacks one."""

    UNREAD, MASK, ABSENT, WHOLE = 0, 1, 2, 3     # slot states (UNREAD: segmentation unreadable)

    def __init__(self, jobs: Dict[int, List[Tuple[int, bool]]], hw: Tuple[int, int]):
        self.hw = hw
        self.slot: Dict[Tuple[int, int], int] = {}
        for idx in sorted(jobs):
            for number, _ in jobs[idx]:
                self.slot.setdefault((idx, number), len(self.slot))
        n, self.row_bytes = len(self.slot), -(-hw[0] * hw[1] // 8)
        self._memory = mmap.mmap(-1, max(1, n * (1 + self.row_bytes)))   # anonymous, shared
        buf = np.frombuffer(self._memory, np.uint8)
        self.state = buf[:n]
        self.bits = buf[n:n * (1 + self.row_bytes)].reshape(n, self.row_bytes)

    def put(self, idx: int, seg: Any, want: Sequence[Tuple[int, bool]]) -> None:
        """The wanted labels' masks of image idx from its decoded segmentation."""
        image_labels = set(int(v) for v in np.asarray(seg.image_labels).reshape(-1))
        planes = np.asarray(seg.pixel)
        for number, image_level in want:
            k = self.slot[(idx, number)]
            if image_level:
                self.state[k] = self.WHOLE if number in image_labels else self.ABSENT
                continue
            m = (planes == number).any(axis=0) if planes.size else None
            if m is not None and m.any():
                self.bits[k] = np.packbits(m.reshape(-1))
                self.state[k] = self.MASK
            else:
                self.state[k] = self.ABSENT

    def put_encoded(self, idx: int, cached: Any, want: Sequence[Tuple[int, bool]]) -> bool:
        """The same masks from image idx's encoded labels (labelcache.SelectionLabels: no mask
        file decoded). False, with nothing put, where a wanted label is not one of its concepts."""
        labels, concept_of_label = cached.store, cached.concept_of_label
        concepts = [int(concept_of_label[n]) if 0 <= n < len(concept_of_label) else -1 for n, _ in want]
        table = labels.tables[idx]
        if table is None or min(concepts, default=0) < 0:
            return False
        pixel = []
        for (number, image_level), c in zip(want, concepts):
            k = self.slot[(idx, number)]
            if image_level:
                self.state[k] = self.WHOLE if c in labels.image_concepts[idx] else self.ABSENT
            else:
                self.state[k] = self.ABSENT
                pixel.append((k, c))
        if not pixel or not table.size:
            return True
        slots = np.array([k for k, _ in pixel])
        # (combinations, labels): which of image idx's combinations hold each wanted concept
        hit = (table[:, :, None] == np.array([c for _, c in pixel])[None, None, :]).any(axis=1)
        present = hit.any(axis=0)
        if present.any():
            masks = hit[:, present][np.asarray(labels.ids[idx])]      # (pixels, present labels)
            self.bits[slots[present]] = np.packbits(masks.T, axis=1)
            self.state[slots[present]] = self.MASK
        return True

    def get(self, idx: int, number: int) -> Tuple[Optional[np.ndarray], Optional[bool]]:
        """(bool (sh, sw) mask, or None where the label is absent, and whether it is present)
        of a label in image idx; (None, None) where unknown (not wanted, or unreadable)."""
        k = self.slot.get((idx, number))
        state = self.UNREAD if k is None else self.state[k]
        if state == self.MASK:
            n = self.hw[0] * self.hw[1]
            return np.unpackbits(self.bits[k], count=n).view(bool).reshape(self.hw), True
        if state == self.WHOLE:
            return np.ones(self.hw, bool), True
        return None, (False if state == self.ABSENT else None)


def _mask_categories(ds: Any, want: Sequence[Tuple[int, bool]]) -> Optional[List[str]]:
    """The pixel categories whose mask files can hold the wanted pixel-level labels: every
    category label.csv (or a c_<category>.csv) gives each label, as Broden's and netdissect's
    datasets record where a label occurs. None (decode all) where that is unknown."""
    pixel, labels = getattr(ds, "pixel_categories", None), getattr(ds, "labels", None)
    if pixel is None or labels is None:
        return None
    cats = set()
    for number, image_level in want:
        if not image_level:
            if not 0 <= number < len(labels):
                return None
            cats.update(labels[number].categories)
    return [c for c in pixel if c in cats]


def _rgb(ds: Any, idx: int) -> np.ndarray:
    img = np.asarray(ds.load_image(idx))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3]


@dataclass
class Atlas:
    """Where each dataset image sits in the images/ atlases."""
    files: List[str]
    cols: int
    image_hw: Tuple[int, int]
    slot: Dict[int, Tuple[int, int, int]]      # dataset index -> (atlas, column, row)


def atlas_batches(jobs: Dict[int, List[Tuple[int, bool]]]) -> List[List[Tuple[int, List[Tuple[int, bool]]]]]:
    """The wanted images, ATLAS_COLS ** 2 an atlas, in dataset order, each with its labels."""
    order, per = sorted(jobs), ATLAS_COLS * ATLAS_COLS
    return [[(i, jobs[i]) for i in order[s:s + per]] for s in range(0, len(order), per)]


def atlas_of(batches, image_hw: Tuple[int, int]) -> Atlas:
    return Atlas([atlas_name(a) for a in range(len(batches))], ATLAS_COLS, image_hw,
                 {idx: (a, s % ATLAS_COLS, s // ATLAS_COLS)
                  for a, batch in enumerate(batches) for s, (idx, _) in enumerate(batch)})


def atlas_name(a: int) -> str:
    return f"images/atlas-{a:03d}.jpg"


def decode_atlas(ds: Any, a: int, batch, image_hw: Tuple[int, int], report: Path, store: MaskStore,
                 labels: Any = None, pixels: Any = None) -> None:
    """Decode the images of atlas a once: write the atlas, put their wanted masks in store
    (from ``labels``, a label cache entry of the selection, where there is one). An image whose
    pixels the pass kept (``pixels``: engine.report_images.ReportImages) is not decoded again,
    and an atlas it already encoded is written as it is."""
    encoded = pixels.atlas([idx for idx, _ in batch], image_hw) if pixels is not None else None
    images = []
    for idx, want in batch:
        if encoded is None:
            img = pixels.get(idx) if pixels is not None else None
            images.append(_rgb(ds, idx) if img is None else img)
        if want and labels is not None and store.put_encoded(idx, labels, want):
            continue
        if want:
            cats = _mask_categories(ds, want)
            try:
                seg = ds.load_segmentation(idx) if cats is None else ds.load_segmentation(idx, categories=cats)
            except Exception:
                seg = None               # the masks stay unknown: no outline, presence unknown
            if seg is not None:
                store.put(idx, seg, want)
    with atomic_path(report / atlas_name(a)) as tmp:
        tmp.write_bytes(encoded if encoded is not None else atlas_jpeg(images, image_hw))


def atlas_jpeg(images: Sequence[np.ndarray], image_hw: Tuple[int, int]) -> bytes:
    """The JPEG of one atlas: RGB images (ATLAS_COLS ** 2 at most) ATLAS_COLS a row, in order,
    the empty slots white."""
    ih, iw = image_hw
    sheet = np.full((ATLAS_COLS * ih, ATLAS_COLS * iw, 3), 255, np.uint8)
    for s, img in enumerate(images):
        if img.shape[:2] != (ih, iw):    # one size per run; a stray size is fitted
            img = np.asarray(Image.fromarray(img).resize((iw, ih), Image.BILINEAR))
        c, r = s % ATLAS_COLS, s // ATLAS_COLS
        sheet[r * ih:(r + 1) * ih, c * iw:(c + 1) * iw] = img
    # no optimize=True: its Huffman tables would save 2% of the atlases' bytes for 3x the
    # encoding time (the 4-bit overlay sheets save as much)
    out = io.BytesIO()
    Image.fromarray(sheet).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


# ----------------------------------------------------------------------------- output

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(index: np.ndarray) -> bytes:
    """(h, w) overlay indices -> a 4-bit palette PNG with the overlay palette. The overlays use
    nine indices, so two pixels share a byte, and each row is stored as its difference from the
    row above (PNG filter "Up": a unit's strip repeats down the rows) deflated with run-length
    matching only (Z_RLE). On the 80 sheets of 1,280 units: 0.32 s and 3.8 MB, against 0.67 s
    and 3.5 MB unfiltered at zlib's default level 6."""
    h, w = index.shape
    index = np.ascontiguousarray(np.pad(index, ((0, 0), (0, 1))) if w % 2 else index, dtype=np.uint8)
    pairs = index.view("<u2")                             # pixel 2i in the low byte, 2i + 1 high
    packed = ((pairs << 4) | (pairs >> 8)).astype(np.uint8)          # 2i in the high nibble
    rows = np.empty((h, packed.shape[1] + 1), np.uint8)
    rows[:, 0] = PNG_FILTER_UP
    rows[:1, 1:] = packed[:1]
    np.subtract(packed[1:], packed[:-1], out=rows[1:, 1:])          # modulo 256, as PNG defines it
    deflate = zlib.compressobj(PNG_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    rgb, alpha = palette()
    return b"".join((b"\x89PNG\r\n\x1a\n",
                     _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 4, 3, 0, 0, 0)),
                     _png_chunk(b"PLTE", bytes(rgb[:3 * len(alpha)])),
                     _png_chunk(b"tRNS", alpha),
                     _png_chunk(b"IDAT", deflate.compress(rows.tobytes()) + deflate.flush()),
                     _png_chunk(b"IEND", b"")))


def _save_png(index: np.ndarray, path: Path) -> None:
    data = png_bytes(index)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@dataclass
class Tile:
    image: int                      # dataset index
    score: float                    # the unit's maximum activation in the image
    has_label: Optional[bool]       # the unit's label is present in the image (None: unknown)
    region_frac: float              # share of the image in the unit's region


@dataclass
class LayerTiles:
    sheets: List[str]
    units_per_sheet: int
    k: int
    seg_hw: Tuple[int, int]
    tiles: Dict[int, List[Tile]] = field(default_factory=dict)       # unit -> its top-k tiles
    heat: Dict[int, str] = field(default_factory=dict)               # unit -> base64 uint8 maps
    heat_max: Dict[int, float] = field(default_factory=dict)
    heat_shape: Optional[list] = None                                # (h, w) of the heat maps
    placement: Optional[list] = None
    note: str = ""
    formula_sheets: List[str] = field(default_factory=list)         # overlays with the formula's region


HEAT_MAX_SIDE = 32      # heat maps of larger native maps are averaged down (page weight)


def heat_maps(maps: np.ndarray) -> Tuple[np.ndarray, float]:
    """(k, h, w) native maps -> uint8 maps scaled by their common maximum, averaged over f x f
    blocks when a side exceeds HEAT_MAX_SIDE (the blocks tile the same rectangle of the image,
    so the placement is unchanged)."""
    k, h, w = maps.shape
    f = max(1, -(-max(h, w) // HEAT_MAX_SIDE))
    if f > 1:
        hh, ww = -(-h // f) * f, -(-w // f) * f
        padded = np.pad(np.nan_to_num(maps), ((0, 0), (0, hh - h), (0, ww - w)), mode="edge")
        maps = padded.reshape(k, hh // f, f, ww // f, f).mean(axis=(2, 4))
    top = float(np.nanmax(maps)) if maps.size else 0.0
    scale = 255.0 / top if top > 0 else 0.0
    return np.clip(np.nan_to_num(maps) * scale + 0.5, 0, 255).astype(np.uint8), top


@dataclass
class SheetJob:
    """What drawing one layer's overlay sheets needs (imagework.py runs it in chunks of sheets)."""
    layer: LayerView
    index: np.ndarray            # (units, k) dataset index of each unit's top-k images
    valid: np.ndarray            # (units, k) whether the index lies in the dataset
    seg_hw: Tuple[int, int]
    upsample: Any                # the run's upsampler for this layer (regions.layer_upsampler)
    radius: int
    report: Path
    tiles: LayerTiles            # sheets and tiles filled in by finish_layer_tiles

    @property
    def starts(self) -> List[int]:
        return list(range(0, self.layer.size, UNITS_PER_SHEET))


def sheet_job(layer: LayerView, ds: Any, mode: str, top_k: int, report: Path) -> SheetJob:
    """The drawing job of a layer with stored top-k images; its folder under strips/ made."""
    result = layer.result
    rec = ds.records[0]
    image_hw, seg_hw = (rec.ih, rec.iw), (rec.sh, rec.sw)
    upsample, note = layer_upsampler(result, mode, image_hw, seg_hw)
    kk = min(top_k, result.topk_index.shape[1])
    index = result.topk_index[:, :kk]
    (report / "strips" / layer.dirname).mkdir(parents=True, exist_ok=True)
    lt = LayerTiles([], UNITS_PER_SHEET, kk, seg_hw, placement=map_placement(result, mode, image_hw), note=note)
    return SheetJob(layer, index, (index >= 0) & (index < len(ds)), seg_hw, upsample, visible_radius(seg_hw),
                    report, lt)


def render_sheets(job: SheetJob, starts: Sequence[int],
                  masks: MaskStore) -> List[Tuple[int, Dict[int, List[Tile]]]]:
    """Overlay sheets of the units from each start (UNITS_PER_SHEET each), written to files;
    returns each start's tiles."""
    layer, result, index, valid = job.layer, job.layer.result, job.index, job.valid
    sh, sw = job.seg_hw
    kk = index.shape[1]
    formulas = getattr(result, "formulas", None)
    out = []
    for s in starts:
        units = list(range(s, min(layer.size, s + UNITS_PER_SHEET)))
        pairs = [(k, j) for k in units for j in range(kk) if valid[k, j]]
        sheet = np.zeros((UNITS_PER_SHEET * sh, kk * sw), np.uint8)
        f_sheet = sheet.copy()
        tiles: Dict[int, List[Tile]] = {}
        if pairs and result.topk_maps is not None:
            rows = np.array([p[0] for p in pairs])
            cols = np.array([p[1] for p in pairs])
            regions = unit_regions(result.topk_maps[rows, cols], result.thresholds[rows], job.upsample)
            labels = np.zeros_like(regions)
            present: List[Optional[bool]] = []
            for n, (k, j) in enumerate(pairs):
                number = layer.units[k].label_number
                m, has = (None, None)
                if number is not None:
                    m, has = masks.get(int(index[k, j]), number)
                if m is not None:
                    labels[n] = m
                present.append(has)
            over = compose_overlays(regions, labels, job.radius)
            fracs = regions.reshape(len(pairs), -1).view(np.uint8).sum(axis=1, dtype=np.int64) / (sh * sw)
            if formulas is not None:   # the same overlay with the unit's formula in place of its label
                shapes = np.stack([_formula_region(formulas.unit_tokens(k), masks, int(index[k, j]),
                                                   result.concepts, (sh, sw)) for k, j in pairs])
                f_over = compose_overlays(regions, shapes, job.radius)
            # tile (row k - s, column j) of a sheet is cell [k - s, j] of its (rows, kk, sh, sw) view
            cells = (rows - s, cols)
            sheet.reshape(UNITS_PER_SHEET, sh, kk, sw).transpose(0, 2, 1, 3)[cells] = over
            if formulas is not None:
                f_sheet.reshape(UNITS_PER_SHEET, sh, kk, sw).transpose(0, 2, 1, 3)[cells] = f_over
            for n, (k, j) in enumerate(pairs):
                tiles.setdefault(k, []).append(
                    Tile(int(index[k, j]), float(result.topk_score[k, j]), present[n], float(fracs[n])))
        _save_png(sheet, job.report / sheet_name(layer, s))
        if formulas is not None:
            _save_png(f_sheet, job.report / sheet_name(layer, s, "formula"))
        out.append((s, tiles))
    return out


def sheet_name(layer: LayerView, start: int, kind: str = "overlay") -> str:
    """kind: overlay (the label outlined), formula (the unit's formula outlined)."""
    return f"strips/{layer.dirname}/{kind}-{start // UNITS_PER_SHEET:03d}.png"


def add_heat_maps(job: SheetJob) -> None:
    """Each unit's heat maps (for the unit view), into the layer's LayerTiles."""
    result, lt = job.layer.result, job.tiles
    if result.topk_maps is not None:
        for k in range(job.layer.size):
            q, lt.heat_max[k] = heat_maps(np.asarray(result.topk_maps[k, :lt.k], np.float32))
            lt.heat[k] = base64.b64encode(q.tobytes()).decode("ascii")
            lt.heat_shape = list(q.shape[1:])


def finish_layer_tiles(job: SheetJob, done: Sequence[Tuple[int, Dict[int, List[Tile]]]]) -> LayerTiles:
    """The layer's LayerTiles from its drawn sheets (its heat maps added before)."""
    layer, result, lt = job.layer, job.layer.result, job.tiles
    for s, tiles in sorted(done, key=lambda t: t[0]):
        lt.sheets.append(sheet_name(layer, s))
        if getattr(result, "formulas", None) is not None:
            lt.formula_sheets.append(sheet_name(layer, s, "formula"))
        lt.tiles.update(tiles)
    return lt


def write_paper_strips(layer: LayerView, lt: LayerTiles, ds: Any, report: Path,
                       out_dir: Path, cell: int = 128, gap: int = 3) -> int:
    """OUT/<layer>/unit_<n>.jpg: each unit's images with its overlay, side by side (for papers;
    the report itself never uses them), the images decoded again from the dataset. Returns the
    number written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images: Dict[int, np.ndarray] = {}
    sh, sw = lt.seg_hw
    written = 0
    for si, name in enumerate(lt.sheets):
        with Image.open(report / name) as im:
            sheet = im.convert("RGBA")
        for k in range(si * lt.units_per_sheet, min(layer.size, (si + 1) * lt.units_per_sheet)):
            tiles = lt.tiles.get(k, [])
            if not tiles:
                continue
            cells = []
            r = k - si * lt.units_per_sheet
            for j, t in enumerate(tiles):
                if t.image not in images:
                    images[t.image] = _rgb(ds, t.image)
                raw = Image.fromarray(images[t.image]).convert("RGBA")
                size = (max(1, round(cell * raw.width / raw.height)), cell)
                over = sheet.crop((j * sw, r * sh, (j + 1) * sw, (r + 1) * sh)).resize(size, Image.NEAREST)
                cells.append(Image.alpha_composite(raw.resize(size, Image.BILINEAR), over).convert("RGB"))
            strip = Image.new("RGB", (sum(c.width for c in cells) + gap * (len(cells) - 1), cell), "white")
            x = 0
            for c in cells:
                strip.paste(c, (x, 0))
                x += c.width + gap
            path = out_dir / f"unit_{layer.units[k].unit}.jpg"
            with atomic_path(path) as tmp:
                strip.save(tmp, format="JPEG", quality=90)
            written += 1
    return written


def wanted_images(layers: Sequence[LayerView], n_images: int, top_k: int,
                  image_level: Sequence[str] = IMAGE_CATEGORIES) -> Dict[int, List[Tuple[int, bool]]]:
    """dataset index -> the (label number, image-level) pairs its segmentation must provide."""
    jobs: Dict[int, List[Tuple[int, bool]]] = {}
    level = set(image_level)
    for layer in layers:
        idx = layer.result.topk_index
        if idx is None:
            continue
        kk = min(top_k, idx.shape[1])
        for k, u in enumerate(layer.units):
            for j in range(kk):
                i = int(idx[k, j])
                if 0 <= i < n_images:
                    want = jobs.setdefault(i, [])
                    key = (u.label_number, u.category in level)
                    if u.label_number is not None and key not in want:
                        want.append(key)
                    for key in _formula_labels(layer.result, k, level):
                        if key not in want:
                            want.append(key)
    return jobs


def _formula_labels(result, k: int, level) -> List[Tuple[int, bool]]:
    """(label number, image-level) of each concept in unit k's formula (none without formulas)."""
    formulas = getattr(result, "formulas", None)
    if formulas is None:
        return []
    return [(int(result.concepts[c]), result.concept_categories[c] in level)
            for c in formulas.unit_tokens(k)[0::2]]


def _formula_region(tokens, masks: MaskStore, image: int, numbers, hw) -> np.ndarray:
    """A formula's region in one image from its concepts' masks (netdissect.formulas.search semantics)."""
    from netdissect.formulas.search import AND, OR

    def concept(c: int) -> np.ndarray:
        m = masks.get(image, int(numbers[c]))[0]
        return m if m is not None else np.zeros(hw, bool)

    region = concept(tokens[0])
    for op, c in zip(tokens[1::2], tokens[2::2]):
        other = concept(c)
        region = region | other if op == OR else (region & other if op == AND else region & ~other)
    return region


def progress_bar(enabled: bool, total: int, desc: str, unit: str):
    """None when disabled (ImageWork skips updates), else the package's bar."""
    return _progress_bar(enabled, total, desc, unit) if enabled else None
