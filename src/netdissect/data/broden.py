"""The Broden reader (`BrodenDataset`) and the dataset checker (`check_dataset`).

On-disk format (see docs/design.md and the spec): ``index.csv`` lists one image per row with
its split, image size (ih, iw), segmentation size (sh, sw), ';'-separated mask PNG names for
the pixel-level categories (relative to ``images/``) and ';'-separated label numbers for the
image-level categories; ``category.csv``, ``label.csv`` and ``c_<category>.csv`` describe the
categories and labels.  Label PNGs store a label number per pixel as R + 256 * G.

Every problem is reported as a `DatasetError` that names the file at fault and, where there is
one, the line of the CSV file, and says what to do about it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from netdissect.data.labelpng import MAX_LABEL, read_label_png
from netdissect.errors import DatasetError

__all__ = [
    "Label", "ImageRecord", "Segmentation", "BrodenDataset", "open_dataset",
    "CheckReport", "check_dataset", "PIXEL_CATEGORIES", "IMAGE_CATEGORIES",
]

#: Broden's categories with PNG masks, and those with image-level label numbers.  Categories
#: with other names are classified by the content of their index.csv column.
PIXEL_CATEGORIES = ("color", "object", "part", "material")
IMAGE_CATEGORIES = ("scene", "texture")

_FIXED_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
_MAX_SIZE = 65535          # largest image / segmentation side accepted in index.csv
_TABLE_SIZE = MAX_LABEL + 1
_HOW_TO_GET = ("generate one with `netdissect data synthetic --out DIR` "
               "or download broden1_224")
_REEXTRACT = "re-extract (or re-download) the dataset, or fix index.csv"
_CATEGORY_FIELD = re.compile(r"^\s*([^()]*?)\s*(?:\(\s*([0-9]+)\s*\))?\s*$")


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Label:
    """One row of label.csv.  ``category`` is the primary category ('' when it has none);
    ``categories`` maps every category the label belongs to to its count in label.csv's
    ``category`` field (0 for a category known only from a c_<category>.csv file)."""
    number: int
    name: str
    category: str
    categories: Dict[str, int]
    frequency: int
    coverage: float


@dataclass(frozen=True)
class ImageRecord:
    """One row of index.csv.  ``masks`` and ``image_labels`` hold exactly the selected pixel-
    and image-level categories of the dataset (an empty tuple where unlabeled).  Mask names are
    relative to ``images/``.  Image-level label 0 ("unlabeled") is dropped while parsing."""
    line: int
    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    masks: Dict[str, Tuple[str, ...]]
    image_labels: Dict[str, Tuple[int, ...]]


@dataclass(frozen=True, eq=False)
class Segmentation:
    """The labels of one image.

    pixel:          int32 (M, sh, sw) label numbers, one plane per mask file of a selected pixel
                    category, in ``ds.pixel_categories`` order and then index.csv order; 0 means
                    unlabeled.
    image_labels:   int32 (n,) sorted distinct label numbers of the selected image-level
                    categories (no 0).
    labeled:        bool (len(ds.categories),) whether each selected category is labeled in this
                    image (a pixel category: at least one mask file listed; an image category: at
                    least one label number).
    plane_category: int32 (M,) index into ``ds.categories`` of each plane's category.  (An addition to the contract in docs/design.md, so it has a
                    default for code that builds a Segmentation from three arrays.)
    """
    pixel: np.ndarray
    image_labels: np.ndarray
    labeled: np.ndarray
    plane_category: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))


# ---------------------------------------------------------------------------------------------
# Parsing helpers


class _Sink:
    """Where row-level problems go: raised at once (reader) or collected (checker)."""

    def __init__(self, collect: bool):
        self.collect = collect
        self.items: List[DatasetError] = []

    def __call__(self, err: DatasetError) -> None:
        if not self.collect:
            raise err
        self.items.append(err)


def _check_root(root: Union[str, os.PathLike]) -> Path:
    try:
        path = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        exists, is_dir = path.exists(), path.is_dir()
        has_index = is_dir and (path / "index.csv").is_file()
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"not a Broden dataset: unusable path ({exc}); {_HOW_TO_GET}", root)
    if not exists:
        raise DatasetError(f"not a Broden dataset: the directory does not exist; {_HOW_TO_GET}",
                           path)
    if not is_dir:
        raise DatasetError(f"not a Broden dataset: not a directory; {_HOW_TO_GET}", path)
    if not has_index:
        raise DatasetError(f"not a Broden dataset: the directory has no index.csv; {_HOW_TO_GET}",
                           path)
    return path


def _read_csv(path: Path, what: str) -> Tuple[List[str], List[Tuple[int, List[str]]]]:
    """Read a CSV file -> (header, [(1-based line, row), ...]); empty lines are skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{what} is missing; re-extract (or re-download) the dataset", path)
    except OSError as exc:
        raise DatasetError(f"cannot read {what} ({exc})", path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DatasetError(f"{what} is not UTF-8 text (bad byte at offset {exc.start}); the file "
                           "is corrupt: re-extract the dataset", path, line)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: List[Tuple[int, List[str]]] = []
    previous = 0
    try:
        for row in reader:
            start = previous + 1
            previous = reader.line_num
            if row:
                rows.append((start, row))
    except csv.Error as exc:
        raise DatasetError(f"{what} is not valid CSV ({exc}); fix or re-extract the file",
                           path, reader.line_num)
    if not rows:
        raise DatasetError(f"{what} is empty (not even a header line); re-extract the dataset",
                           path)
    header_line, header = rows[0]
    header = [h.strip() for h in header]
    seen = set()
    for name in header:
        if name in seen:
            raise DatasetError(f"column {name!r} appears twice in the header", path, header_line)
        seen.add(name)
    return header, rows[1:]


def _parse_int(text: str, lo: int, hi: int) -> Optional[int]:
    text = text.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if lo <= value <= hi else None


def _parse_float(text: str) -> Optional[float]:
    text = text.strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _parse_count(text: str) -> Optional[int]:
    """A frequency: an integer, tolerating '12.0' and empty (0)."""
    value = _parse_float(text)
    if value is None or value < 0 or value != int(value):
        return None
    return int(value)


def _parse_category_field(text: str) -> Optional[Dict[str, int]]:
    """'material(36);object(3)' -> {'material': 36, 'object': 3}; '' or '-' -> {}."""
    out: Dict[str, int] = {}
    for part in text.split(";"):
        if not part.strip() or part.strip() == "-":
            continue
        m = _CATEGORY_FIELD.match(part)
        if not m or not m.group(1):
            return None
        out[m.group(1)] = out.get(m.group(1), 0) + (int(m.group(2)) if m.group(2) else 0)
    return out


def _split_names(text: str) -> Tuple[str, ...]:
    if ";" not in text:
        text = text.strip()
        return (text,) if text else ()
    return tuple(s.strip() for s in text.split(";") if s.strip())


def _bad_name(name: str) -> bool:
    """A file name in index.csv must be a relative path that stays under images/."""
    return ("\x00" in name or name.startswith(("/", "\\"))
            or ".." in name.replace("\\", "/").split("/"))


class _LabelTable:
    """Which label numbers label.csv defines, as a lookup table for vectorized checks."""

    def __init__(self, numbers: Iterable[int]):
        self.known = np.zeros(_TABLE_SIZE, dtype=bool)
        self.known[0] = True                     # 0 = unlabeled, always allowed in masks
        numbers = sorted(set(numbers))
        if numbers:
            self.known[np.asarray(numbers)] = True
        self.top = max([0] + numbers)            # largest defined number
        self.dense = int(self.known[: self.top + 1].sum()) == self.top + 1

    def unknown_in(self, labels: np.ndarray) -> np.ndarray:
        """Sorted distinct label numbers in `labels` (ints in [0, 65535]) not in label.csv."""
        if labels.size == 0:
            return np.zeros(0, dtype=np.int64)
        if self.dense and int(labels.max()) <= self.top:
            return np.zeros(0, dtype=np.int64)
        return np.unique(labels[~self.known[labels]]).astype(np.int64)


def _describe_numbers(numbers: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(int(n)) for n in numbers[:limit])
    if len(numbers) > limit:
        shown += f", ... ({len(numbers)} in all)"
    return shown


@dataclass
class _Tables:
    categories: List[str]
    kinds: Dict[str, str]                     # category -> 'pixel' | 'image'
    selected: List[str]
    labels: List[Label]
    table: _LabelTable
    cfiles_missing: List[str]
    records: List[ImageRecord]                # every parsed row (all splits)
    splits: Dict[str, int]


def _read_categories(root: Path) -> List[str]:
    path = root / "category.csv"
    header, rows = _read_csv(path, "category.csv")
    if "name" not in header:
        raise DatasetError(f"the header has no 'name' column (header: {','.join(header)}); "
                           "expected name,first,last,count,frequency", path, 1)
    col = header.index("name")
    names: List[str] = []
    for line, row in rows:
        name = row[col].strip() if col < len(row) else ""
        if not name:
            raise DatasetError("row has no category name", path, line)
        if name in names:
            raise DatasetError(f"category {name!r} is listed twice", path, line)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise DatasetError(f"category name {name!r} has characters outside [A-Za-z0-9_.-]",
                               path, line)
        names.append(name)
    if not names:
        raise DatasetError("category.csv lists no categories; re-extract the dataset", path)
    return names


def _read_labels(root: Path, sink: _Sink):
    """-> ({number: (name, categories, frequency, coverage)}, path)."""
    path = root / "label.csv"
    header, rows = _read_csv(path, "label.csv")
    missing = [c for c in ("number", "name") if c not in header]
    if missing:
        raise DatasetError(f"the header lacks column(s) {', '.join(missing)} (header: "
                           f"{','.join(header)}); expected number,name,category,frequency,"
                           "coverage,syns", path, 1)
    cols = {c: header.index(c) for c in ("number", "name", "category", "frequency", "coverage")
            if c in header}
    need = max(cols["number"], cols["name"]) + 1
    out: Dict[int, Tuple[str, Dict[str, int], int, float]] = {}
    for line, row in rows:
        if len(row) < need:
            sink(DatasetError(f"row has {len(row)} fields, expected {len(header)} "
                              f"({','.join(header)})", path, line))
            continue

        def get(name: str) -> str:
            i = cols.get(name)
            return row[i] if i is not None and i < len(row) else ""

        number = _parse_int(get("number"), 0, MAX_LABEL)
        if number is None:
            sink(DatasetError(f"label number {get('number')!r} is not an integer in "
                              f"[0, {MAX_LABEL}]", path, line))
            continue
        if number in out:
            sink(DatasetError(f"label number {number} is defined twice", path, line))
            continue
        cats = _parse_category_field(get("category"))
        frequency = _parse_count(get("frequency"))
        coverage = _parse_float(get("coverage"))
        if cats is None:
            sink(DatasetError(f"category field {get('category')!r} is not like "
                              "'material(36);object(3)'", path, line))
            cats = {}
        if frequency is None:
            sink(DatasetError(f"frequency {get('frequency')!r} is not a count", path, line))
            frequency = 0
        if coverage is None:
            sink(DatasetError(f"coverage {get('coverage')!r} is not a number", path, line))
            coverage = 0.0
        out[number] = (get("name").strip(), cats, frequency, coverage)
    return out


def _read_cfile(root: Path, category: str, defined: Dict[int, tuple],
                sink: _Sink) -> Optional[Dict[int, float]]:
    """c_<category>.csv -> {label number: coverage}; None when the file does not exist."""
    path = root / f"c_{category}.csv"
    if not path.is_file():
        return None
    header, rows = _read_csv(path, path.name)
    missing = [c for c in ("number", "coverage") if c not in header]
    if missing:
        raise DatasetError(f"the header lacks column(s) {', '.join(missing)} (header: "
                           f"{','.join(header)}); expected code,number,name,frequency,coverage",
                           path, 1)
    ni, ci = header.index("number"), header.index("coverage")
    out: Dict[int, float] = {}
    for line, row in rows:
        if len(row) <= max(ni, ci):
            sink(DatasetError(f"row has {len(row)} fields, expected {len(header)} "
                              f"({','.join(header)})", path, line))
            continue
        number = _parse_int(row[ni], 0, MAX_LABEL)
        if number is None:
            sink(DatasetError(f"label number {row[ni]!r} is not an integer in [0, {MAX_LABEL}]",
                              path, line))
            continue
        if number not in defined:
            sink(DatasetError(f"label number {number} is not in label.csv", path, line))
            continue
        coverage = _parse_float(row[ci])
        if coverage is None:
            sink(DatasetError(f"coverage {row[ci]!r} is not a number", path, line))
            continue
        out[number] = coverage
    return out


def _primary(number: int, categories: List[str], field_counts: Dict[str, int],
             coverage: Dict[str, Dict[int, float]]) -> str:
    """Largest coverage among the c_ files (ties: category.csv order); else largest count in
    label.csv's category field (same ties); '' when neither names a known category."""
    best, best_value = "", None
    for cat in categories:
        value = coverage.get(cat, {}).get(number)
        if value is not None and (best_value is None or value > best_value):
            best, best_value = cat, value
    if best:
        return best
    for cat in categories:
        value = field_counts.get(cat)
        if value is not None and (best_value is None or value > best_value):
            best, best_value = cat, value
    return best


def _infer_kind(category: str, values: Iterable[str]) -> str:
    if category in PIXEL_CATEGORIES:
        return "pixel"
    if category in IMAGE_CATEGORIES:
        return "image"
    seen_any = False
    for value in values:
        for part in _split_names(value):
            seen_any = True
            if not (part.isascii() and part.isdigit()):
                return "pixel"
    return "image" if seen_any else "pixel"


def _parse_dataset(root: Path, sink: _Sink,
                   categories: Union[None, str, Sequence[str]]) -> _Tables:
    all_categories = _read_categories(root)
    if categories is None:
        selected = list(all_categories)
    else:
        wanted = [categories] if isinstance(categories, str) else list(categories)
        unknown = [c for c in wanted if c not in all_categories]
        if unknown:
            raise DatasetError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                               f"{', '.join(map(repr, unknown))}; this dataset has: "
                               f"{', '.join(all_categories)}", root / "category.csv")
        if not wanted:
            raise DatasetError("no categories selected; choose from: "
                               f"{', '.join(all_categories)}", root / "category.csv")
        selected = [c for c in all_categories if c in wanted]

    defined = _read_labels(root, sink)
    coverage: Dict[str, Dict[int, float]] = {}
    cfiles_missing = []
    for cat in all_categories:
        values = _read_cfile(root, cat, defined, sink)
        if values is None:
            cfiles_missing.append(cat)
        else:
            coverage[cat] = values

    top = max(defined) if defined else 0
    labels: List[Label] = []
    for number in range(top + 1):
        if number == 0 or number not in defined:
            name = defined[number][0] if number in defined else "-"
            labels.append(Label(number, name or "-", "", {}, 0, 0.0))
            continue
        name, counts, frequency, cov = defined[number]
        cats = dict(counts)
        for cat in all_categories:
            if number in coverage.get(cat, {}) and cat not in cats:
                cats[cat] = 0
        labels.append(Label(number, name, _primary(number, all_categories, counts, coverage),
                            cats, frequency, cov))
    table = _LabelTable(n for n in defined if n != 0)

    records, splits, kinds = _read_index(root, all_categories, selected, table, sink)
    return _Tables(all_categories, kinds, selected, labels, table, cfiles_missing, records,
                   splits)


def _read_index(root: Path, categories: List[str], selected: List[str], table: _LabelTable,
                sink: _Sink):
    path = root / "index.csv"
    header, rows = _read_csv(path, "index.csv")
    missing = [c for c in _FIXED_COLUMNS + tuple(categories) if c not in header]
    if missing:
        raise DatasetError(
            f"the header lacks column(s) {', '.join(missing)} (header: {','.join(header)}); "
            f"expected {','.join(_FIXED_COLUMNS + tuple(categories))}", path, 1)
    col = {name: i for i, name in enumerate(header)}
    ncols = len(header)
    kinds = {cat: _infer_kind(cat, (row[col[cat]] for _, row in rows if len(row) == ncols))
             for cat in categories}
    sel_pixel = [c for c in selected if kinds[c] == "pixel"]
    sel_image = [c for c in selected if kinds[c] == "image"]
    records: List[ImageRecord] = []
    splits: Dict[str, int] = {}
    for line, row in rows:
        if len(row) != ncols:
            sink(DatasetError(f"row has {len(row)} fields, expected {ncols} "
                              f"({','.join(header)}); a stray or missing comma?", path, line))
            continue
        usable = True
        image = row[col["image"]].strip()
        if not image or _bad_name(image):
            sink(DatasetError(f"bad image file name {image!r}: expected a relative path under "
                              "images/", path, line))
            usable = False
        split = row[col["split"]].strip()
        if not split:
            sink(DatasetError("empty split name", path, line))
            usable = False
        sizes = []
        for name in ("ih", "iw", "sh", "sw"):
            value = _parse_int(row[col[name]], 1, _MAX_SIZE)
            if value is None:
                sink(DatasetError(f"{name} = {row[col[name]]!r} is not an integer in "
                                  f"[1, {_MAX_SIZE}]", path, line))
                usable = False
            sizes.append(value)
        masks: Dict[str, Tuple[str, ...]] = {}
        image_labels: Dict[str, Tuple[int, ...]] = {}
        for cat in categories:
            text = row[col[cat]]
            if kinds[cat] == "pixel":
                names = _split_names(text)
                bad = [n for n in names if _bad_name(n)]
                if bad:
                    sink(DatasetError(f"column {cat!r}: bad mask file name {bad[0]!r}: expected "
                                      "a relative path under images/", path, line))
                    usable = False
                masks[cat] = names
                continue
            numbers = []
            for part in _split_names(text):
                number = _parse_int(part, 0, MAX_LABEL)
                if number is None:
                    sink(DatasetError(f"column {cat!r}: {part!r} is not a label number",
                                      path, line))
                    continue
                if number == 0:
                    continue
                if not table.known[number]:
                    sink(DatasetError(f"column {cat!r}: label number {number} is not in "
                                      "label.csv; the index and label.csv do not belong "
                                      "together: re-extract the dataset", path, line))
                    continue
                if number not in numbers:
                    numbers.append(number)
            image_labels[cat] = tuple(numbers)
        if not usable:
            continue
        splits[split] = splits.get(split, 0) + 1
        records.append(ImageRecord(line, image, split, *sizes,
                                   masks={c: masks[c] for c in sel_pixel},
                                   image_labels={c: image_labels[c] for c in sel_image}))
    return records, splits, kinds


# ---------------------------------------------------------------------------------------------
# Decoding (shared by the reader and the checker)


def _record_error(message: str, path: Path, record: ImageRecord, todo: str) -> DatasetError:
    err = DatasetError(f"{message} (listed in index.csv line {record.line}); {todo}", path)
    err.index_line = record.line  # type: ignore[attr-defined]
    return err


def _without_addresses(message: str, name: str) -> str:
    """PIL names the buffer it read ('<_io.BytesIO object at 0x7f...>'): the address differs
    on every run, which would make summary.json differ too; name the file instead."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", name, message)


def _decode_image(root: Path, record: ImageRecord) -> np.ndarray:
    path = root / "images" / record.image
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _record_error("image file is missing", path, record, _REEXTRACT)
    except (OSError, ValueError) as exc:
        raise _record_error(f"cannot read image file ({exc})", path, record, _REEXTRACT)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            size = img.size
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            array = np.array(rgb, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for corrupt data
        raise _record_error(f"image cannot be decoded ({exc.__class__.__name__}: "
                            f"{_without_addresses(str(exc), path.name)}); the "
                            "file is corrupt or truncated", path, record, _REEXTRACT)
    if size != (record.iw, record.ih) or array.shape != (record.ih, record.iw, 3):
        raise _record_error(f"image is {size[1]}x{size[0]} (h x w) but index.csv says "
                            f"ih x iw = {record.ih}x{record.iw}", path, record,
                            "replace the image or fix ih, iw in index.csv")
    return array


def _decode_mask(root: Path, record: ImageRecord, name: str) -> np.ndarray:
    """Read a mask PNG and check its size; label numbers are checked by the caller."""
    path = root / "images" / name
    try:
        labels = read_label_png(path)
    except DatasetError as exc:
        message = str(exc)
        prefix = f"{exc.path}: "
        if message.startswith(prefix):
            message = message[len(prefix):]
        head, _, todo = message.rpartition("; ")
        raise _record_error(head or message, path, record, todo if head else _REEXTRACT)
    except (OSError, ValueError) as exc:
        raise _record_error(f"cannot read label PNG ({exc})", path, record, _REEXTRACT)
    if labels.shape != (record.sh, record.sw):
        raise _record_error(f"mask is {labels.shape[0]}x{labels.shape[1]} (h x w) but "
                            f"index.csv says sh x sw = {record.sh}x{record.sw}", path, record,
                            "replace the mask or fix sh, sw in index.csv")
    return labels


def _unknown_error(unknown: np.ndarray, path: Path, record: ImageRecord,
                   table: _LabelTable) -> DatasetError:
    return _record_error(
        f"label number{'s' if len(unknown) > 1 else ''} {_describe_numbers(list(unknown))} "
        f"not in label.csv (largest defined: {table.top})", path, record,
        "the mask is corrupt or belongs to another dataset version: re-extract the dataset")


# ---------------------------------------------------------------------------------------------
# The reader


class BrodenDataset:
    """A Broden-format dataset: the parsed index plus image / segmentation loaders.

    ``split``: None (all images), a split name, or a sequence of split names.
    ``categories``: None (all in category.csv) or the names to select.
    ``limit``: keep the first ``limit`` records after split filtering.

    The object holds only plain data (picklable), so it can be sent to DataLoader workers.
    """

    def __init__(self, root: Union[str, os.PathLike], split: Union[None, str, Sequence[str]] = None,
                 categories: Union[None, str, Sequence[str]] = None,
                 limit: Optional[int] = None):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        self.root: Path = _check_root(root)
        tables = _parse_dataset(self.root, _Sink(collect=False), categories)
        index_path = self.root / "index.csv"
        if not tables.records:
            raise DatasetError("empty dataset: index.csv has no image rows; "
                               f"{_HOW_TO_GET}", index_path)
        self.split = split
        self.limit = limit
        # the categories asked for (None: all), as a run's config records them
        self.category_selection: Optional[Tuple[str, ...]] = None if categories is None else \
            tuple([categories] if isinstance(categories, str) else categories)
        self.splits: Dict[str, int] = dict(tables.splits)        # every split, image counts
        records = tables.records
        if split is not None:
            wanted = [split] if isinstance(split, str) else list(split)
            absent = [s for s in wanted if s not in self.splits]
            if absent or not wanted:
                present = ", ".join(f"{s} ({n} images)" for s, n in self.splits.items())
                raise DatasetError(f"no images in split {', '.join(map(repr, absent)) or '[]'}"
                                   f"; the splits present are: {present}", index_path)
            records = [r for r in records if r.split in wanted]
        if limit is not None:
            records = records[:limit]
        self.records: List[ImageRecord] = records

        self.all_categories: List[str] = tables.categories
        self.category_kinds: Dict[str, str] = tables.kinds
        self.categories: List[str] = tables.selected
        self.pixel_categories: List[str] = [c for c in self.categories
                                            if tables.kinds[c] == "pixel"]
        self.image_categories: List[str] = [c for c in self.categories
                                            if tables.kinds[c] == "image"]
        self.category_index: Dict[str, int] = {c: i for i, c in enumerate(self.categories)}
        self.labels: List[Label] = tables.labels
        self.label_names: List[str] = [lab.name for lab in self.labels]
        self.concepts: List[int] = [lab.number for lab in self.labels
                                    if lab.number != 0 and lab.category in self.category_index]
        self.concept_categories: List[str] = [self.labels[n].category for n in self.concepts]
        self.max_masks_per_image: int = max(
            (sum(len(r.masks[c]) for c in self.pixel_categories) for r in records), default=0)
        self._table = tables.table
        self._digest: Optional[str] = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (f"BrodenDataset({str(self.root)!r}, split={self.split!r}, "
                f"categories={self.categories!r}, images={len(self)})")

    def load_image(self, i: int) -> np.ndarray:
        """RGB uint8 (ih, iw, 3) of record i."""
        return _decode_image(self.root, self.records[i])

    def load_segmentation(self, i: int, categories: Optional[Iterable[str]] = None) -> Segmentation:
        """The labels of record i.

        categories: decode only the mask files of these pixel categories (default: all
        selected); ``pixel`` then holds just their planes (``plane_category`` says whose), with
        the same checks. ``image_labels`` and ``labeled`` are unchanged. The report uses it to
        skip the planes of categories none of its labels belong to."""
        record = self.records[i]
        wanted = self.pixel_categories
        if categories is not None:
            asked = set(categories)
            unknown = sorted(asked - set(self.pixel_categories))
            if unknown:
                raise ValueError(f"load_segmentation: {', '.join(unknown)} not among the selected pixel "
                                 f"categories ({', '.join(self.pixel_categories) or 'none'})")
            wanted = [c for c in self.pixel_categories if c in asked]
        planes: List[np.ndarray] = []
        plane_category: List[int] = []
        for cat in wanted:
            for name in record.masks[cat]:
                labels = _decode_mask(self.root, record, name)
                unknown = self._table.unknown_in(labels)
                if unknown.size:
                    raise _unknown_error(unknown, self.root / "images" / name, record,
                                         self._table)
                planes.append(labels)
                plane_category.append(self.category_index[cat])
        total = len(planes)
        pixel = np.zeros((total, record.sh, record.sw), dtype=np.int32)
        for k, plane in enumerate(planes):
            pixel[k] = plane
        categories = np.array(plane_category, dtype=np.int32)
        numbers = sorted({n for c in self.image_categories for n in record.image_labels[c]})
        labeled = np.array([bool(record.masks[c]) if c in record.masks
                            else bool(record.image_labels[c]) for c in self.categories],
                           dtype=bool)
        return Segmentation(pixel=pixel, image_labels=np.asarray(numbers, dtype=np.int32),
                            labeled=labeled, plane_category=categories)

    def category_image_counts(self) -> Dict[str, int]:
        """For each selected category, the number of selected images where it is labeled."""
        counts = {c: 0 for c in self.categories}
        for record in self.records:
            for cat, names in record.masks.items():
                counts[cat] += bool(names)
            for cat, numbers in record.image_labels.items():
                counts[cat] += bool(numbers)
        return counts

    def index_digest(self) -> str:
        """sha256 over index.csv, category.csv, label.csv and c_*.csv (names and contents)."""
        if self._digest is None:
            self._digest = _index_digest(self.root)
        return self._digest

    def files(self) -> List[str]:
        """The image and mask files of the selection, relative to ``images/``, in index order."""
        names: List[str] = []
        for record in self.records:
            names.append(record.image)
            for cat in self.pixel_categories:
                names.extend(record.masks.get(cat, ()))
        return names

    def file_stats(self) -> Dict[str, List[int]]:
        """{file: [size, mtime_ns]} of every image and mask file of the selection: a cheap way
        to notice files replaced under an unchanged index.csv (a missing file: [-1, -1])."""
        stats: Dict[str, List[int]] = {}
        base = str(self.root / "images")   # joined as strings: pathlib was half the time of 2,000 stats
        for name in self.files():
            try:
                st = os.stat(os.path.join(base, name))
                stats[name] = [int(st.st_size), int(st.st_mtime_ns)]
            except OSError:
                stats[name] = [-1, -1]
        return stats

    def content_hashes(self) -> Dict[str, str]:
        """{file: sha256 of its bytes} of every image and mask file (--verify-content)."""
        hashes: Dict[str, str] = {}
        base = self.root / "images"
        for name in self.files():
            digest = hashlib.sha256()
            try:
                with open(base / name, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                hashes[name] = digest.hexdigest()
            except OSError:
                hashes[name] = "missing"
        return hashes


def digest_of(table: Dict[str, object]) -> str:
    """One sha256 over a {file: stats or hash} table (sorted, so the order does not matter)."""
    h = hashlib.sha256()
    for name in sorted(table):
        value = table[name]
        # json.dumps' text of a [size, mtime] pair, written directly (the same bytes, a tenth the time)
        text = f"[{value[0]}, {value[1]}]" if type(value) is list and len(value) == 2 and \
            all(type(v) is int for v in value) else json.dumps(value)
        h.update(name.encode() + b"\0" + text.encode() + b"\n")
    return h.hexdigest()


def changed_files(old: Dict[str, object], new: Dict[str, object], limit: int = 3) -> str:
    """'images/a.jpg, images/b.png and 3 more' naming the files whose entry differs."""
    names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
    if not names:
        return ""
    shown = ", ".join(f"images/{n}" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _index_digest(root: Path) -> str:
    digest = hashlib.sha256()
    names = ["index.csv", "category.csv", "label.csv"]
    names += sorted(p.name for p in root.glob("c_*.csv") if p.is_file())
    for name in names:
        try:
            data = (root / name).read_bytes()
        except OSError as exc:
            raise DatasetError(f"cannot read {name} ({exc})", root / name)
        digest.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0")
        digest.update(data)
    return digest.hexdigest()


def open_dataset(path: Union[str, os.PathLike], **kw) -> BrodenDataset:
    """`BrodenDataset(path, **kw)`; a path that is not a Broden dataset gets a DatasetError
    that says how to get one."""
    return BrodenDataset(path, **kw)


# ---------------------------------------------------------------------------------------------
# The checker


@dataclass
class CheckReport:
    """Result of `check_dataset`.  ``problems`` holds every problem found, as messages naming
    the file (and the CSV line)."""
    root: Path
    images: int = 0
    files_checked: int = 0
    splits: Dict[str, int] = field(default_factory=dict)
    categories: List[str] = field(default_factory=list)
    images_labeled: Dict[str, int] = field(default_factory=dict)   # images where labeled
    labels_seen: Dict[str, int] = field(default_factory=dict)      # distinct labels present
    labels_defined: Dict[str, int] = field(default_factory=dict)   # labels with this primary
    problems: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary_text(self, max_problems: int = 50) -> str:
        lines = [f"Broden dataset {self.root}",
                 f"  {self.images} images"
                 + (" (" + ", ".join(f"{s}: {n}" for s, n in self.splits.items()) + ")"
                    if self.splits else "")
                 + f", {self.files_checked} files checked in {self.seconds:.1f} s"]
        if self.categories:
            lines.append(f"  {'category':<12} {'images':>8} {'labels seen':>12} "
                         f"{'labels (primary)':>17}")
            for cat in self.categories:
                lines.append(f"  {cat:<12} {self.images_labeled.get(cat, 0):>8} "
                             f"{self.labels_seen.get(cat, 0):>12} "
                             f"{self.labels_defined.get(cat, 0):>17}")
        if self.ok:
            lines.append("OK: no problems found")
        else:
            lines.append(f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:")
            lines += [f"  {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)


def _check_record(root: Path, record: ImageRecord, table: _LabelTable):
    """-> (problems, files checked, {category: distinct nonzero label numbers in its masks})."""
    problems: List[DatasetError] = []
    files = 1
    try:
        _decode_image(root, record)
    except DatasetError as exc:
        problems.append(exc)
    seen: Dict[str, np.ndarray] = {}
    for cat, names in record.masks.items():
        found = []
        for name in names:
            files += 1
            try:
                labels = _decode_mask(root, record, name)
            except DatasetError as exc:
                problems.append(exc)
                continue
            present = np.zeros(_TABLE_SIZE, dtype=bool)
            present[labels] = True
            present[0] = False
            numbers = np.flatnonzero(present)
            unknown = numbers[~table.known[numbers]]
            if unknown.size:
                problems.append(_unknown_error(unknown, root / "images" / name, record, table))
            found.append(numbers[table.known[numbers]])
        if found:
            seen[cat] = np.concatenate(found)
    return problems, files, seen


def _duplicate_names(root: Path, labels: Sequence[Label]) -> List[DatasetError]:
    """Two label numbers with one name: the report and units.csv could not tell them apart."""
    numbers: Dict[str, List[int]] = {}
    for label in labels:
        if label.number != 0 and label.name:
            numbers.setdefault(label.name, []).append(label.number)
    return [DatasetError(f"label name {name!r} is used by label numbers "
                         f"{', '.join(map(str, nums))}; give each label its own name "
                         "(e.g. append the category)", root / "label.csv")
            for name, nums in numbers.items() if len(nums) > 1]


def check_dataset(root: Union[str, os.PathLike], workers: int = 8,
                  progress: bool = False) -> CheckReport:
    """Validate a Broden-format dataset end to end and collect every problem.

    Checks the CSV files row by row, then (in ``workers`` threads) that every image and mask
    file is present and decodable, images are ih x iw, masks are sh x sw and every label number
    is in label.csv.  A path that is not a Broden dataset at all raises DatasetError; every other
    problem ends up in ``report.problems``.
    """
    start = time.perf_counter()
    path = _check_root(root)
    report = CheckReport(root=path)
    sink = _Sink(collect=True)
    try:
        tables = _parse_dataset(path, sink, None)
    except DatasetError as exc:
        report.problems = [str(e) for e in sink.items + [exc]]
        report.seconds = time.perf_counter() - start
        return report
    problems: List[DatasetError] = list(sink.items)
    for cat in tables.cfiles_missing:
        problems.append(DatasetError(
            f"c_{cat}.csv is missing; primary categories fall back to label.csv's category "
            "field: re-extract the dataset", path / f"c_{cat}.csv"))
    problems += _duplicate_names(path, tables.labels)
    records = tables.records
    if not records:
        problems.append(DatasetError("empty dataset: index.csv has no usable image rows",
                                     path / "index.csv"))
    report.images = len(records)
    report.splits = dict(tables.splits)
    report.categories = list(tables.categories)
    report.images_labeled = {c: 0 for c in tables.categories}
    report.labels_defined = {c: 0 for c in tables.categories}
    for label in tables.labels:
        if label.category in report.labels_defined:
            report.labels_defined[label.category] += 1
    seen = {c: np.zeros(_TABLE_SIZE, dtype=bool) for c in tables.categories}
    for record in records:
        for cat, names in record.masks.items():
            report.images_labeled[cat] += bool(names)
        for cat, numbers in record.image_labels.items():
            report.images_labeled[cat] += bool(numbers)
            if numbers:
                seen[cat][list(numbers)] = True

    from netdissect.progress import progress_bar
    bar = progress_bar(progress, len(records), "checking", "img")
    files = 0
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for found, n, labels in pool.map(lambda r: _check_record(path, r, tables.table),
                                         records):
            problems.extend(found)
            files += n
            for cat, numbers in labels.items():
                seen[cat][numbers] = True
            bar.update(1)
    bar.close()
    report.files_checked = files
    report.labels_seen = {c: int(seen[c].sum()) for c in tables.categories}
    report.problems = [str(p) for p in problems]
    report.seconds = time.perf_counter() - start
    return report
