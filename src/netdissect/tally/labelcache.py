"""Encoded labels kept between runs, so that a dataset's masks are decoded once, not once a run.

Every dissection needs every image's labels encoded (tally.counts.encode_segmentation): decoding
the mask PNGs and hashing their label combinations costs about as much CPU as a MobileNetV2
forward pass's share of the data loading, and it is the same work for every run over the same
selection of the same dataset (a layer sweep, rotations, checkpoints, training conditions). The
first run writes its SegmentationStore here (a sharded run: rank 0, from every rank's); later
runs open it read-only (a memory map) and load only the images.

An entry is found by a digest of everything the encoding depends on: the encoding's version,
the dataset's directory and index files (index.csv, category.csv, label.csv, c_*.csv), the size and
modification time of every mask file of the selection (their contents with --verify-content),
the selected index lines, categories and concepts, and the segmentation size. A changed mask
gives another digest, so a stale entry is never read; it stays until removed (`netdissect cache
--clear`). The cache never stops a run: an entry that cannot be read or written is a warning,
and the labels are encoded as without it. The report reads the shown images' label masks from
the run's entry too (open_selection).

Where: $NETDISSECT_LABEL_CACHE (``off`` disables it), else $XDG_CACHE_HOME/netdissect/labels,
else ~/.cache/netdissect/labels. One entry is the run's ``segmentation.ids`` (2 bytes per
segmentation pixel per image: 1.6 GB for full Broden) and its small per-image tables.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Union

import numpy as np

from netdissect.atomic import atomic_write_json
from netdissect.tally.labelstore import SegmentationStore

ENCODING_VERSION = 1        # bump when encode_segmentation's output changes
ENV = "NETDISSECT_LABEL_CACHE"
OFF = ("off", "none", "0", "false", "no")
FREE_MARGIN = 512 * 2 ** 20  # an entry is written only if this much disk stays free after it
IDS, TABLES, ENTRY = "ids.bin", "tables.npz", "entry.json"


def default_root() -> Optional[Path]:
    """The cache directory from the environment, or None when it is switched off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in OFF or not value.strip() else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.path.expanduser("~")
        if home.startswith("~"):         # no home directory known: no default cache (not ./~)
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "netdissect" / "labels"


def resolve_root(setting: Union[None, str, os.PathLike]) -> Optional[Path]:
    """--label-cache: None (the default above), 'off', or a directory."""
    if setting is None:
        return default_root()
    text = str(setting)
    return None if text.strip().lower() in OFF else Path(text).expanduser()


def cache_key(ds, concepts: Sequence[int], pixels: int, files: dict) -> str:
    """The digest naming an entry (see the module's docstring for what goes in). Only the mask
    files count: the labels do not depend on the images (an unreadable image is skipped or
    stops the run whether or not its labels come from here)."""
    from netdissect.data.broden import digest_of
    masks = {name for r in ds.records for names in r.masks.values() for name in names}
    h = hashlib.sha256()
    parts = {"version": ENCODING_VERSION, "root": str(Path(ds.root).resolve()), "index": ds.index_digest(),
             "files": digest_of({n: v for n, v in files["stats"].items() if n in masks}),
             "content": digest_of({n: v for n, v in files["hashes"].items() if n in masks})
             if "hashes" in files else None,
             "lines": hashlib.sha256(np.array([r.line for r in ds.records], np.int64).tobytes()).hexdigest(),
             "categories": list(ds.categories), "concepts": [int(c) for c in concepts], "pixels": int(pixels)}
    h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()[:40]


class LabelCache:
    """One dataset selection's entry in the cache directory ``root``."""

    def __init__(self, root: Path, key: str):
        self.root = Path(root)
        self.key = key
        self.path = self.root / key

    def exists(self) -> bool:
        return (self.path / ENTRY).is_file()

    def open(self, n_images: int, pixels: int, n_concepts: int, labeled: np.ndarray,
             offset: int = 0) -> SegmentationStore:
        """The store of the entry's images offset .. offset + n_images (a shard, or all), its
        ids read-only from the memory map. OSError or ValueError when the entry is damaged or
        does not fit."""
        entry = json.loads((self.path / ENTRY).read_text())
        n_total, dtype = int(entry["images"]), np.dtype(entry["id_dtype"])
        if entry.get("version") != ENCODING_VERSION or int(entry["pixels"]) != pixels or offset + n_images > n_total:
            raise ValueError(f"entry of {n_total} images x {entry['pixels']} pixels ({dtype}) does not fit this run")
        ids_path = self.path / IDS
        if ids_path.stat().st_size != n_total * pixels * dtype.itemsize:
            raise ValueError(f"{ids_path} is {ids_path.stat().st_size} bytes, not {n_total * pixels * dtype.itemsize}")
        ids = np.memmap(ids_path, dtype=dtype, mode="r", offset=offset * pixels * dtype.itemsize,
                        shape=(max(n_images, 1), pixels))
        store = SegmentationStore(n_images, pixels, n_concepts, labeled, None, offset=offset, ids=ids)
        if store.id_dtype != dtype:
            raise ValueError(f"{ids_path} holds {dtype} ids, this run {np.dtype(store.id_dtype)}")
        with np.load(self.path / TABLES, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        lo, hi = offset, offset + n_images
        combos, widths = arrays["combos"], arrays["table_width"]
        tables = _split(arrays["tables"], combos * widths, lo, hi)
        store.tables = [t.reshape(n, w) for t, n, w in zip(tables, combos[lo:hi], widths[lo:hi])]
        store.combo_pixels = _split(arrays["combo_pixels"], combos, lo, hi)
        store.image_concepts = _split(arrays["image_concepts"], arrays["image_concept_rows"], lo, hi)
        if any(len(c) != len(t) for c, t in zip(store.combo_pixels, store.tables)):
            raise ValueError(f"{self.path / TABLES} is inconsistent")
        store.concept_pixels = store.count_concept_pixels()
        store.cache_key = self.key
        try:
            os.utime(self.path / ENTRY)      # last used: `netdissect cache` lists entries by it
        except OSError:
            pass                             # a cache shared read-only
        return store

    def save(self, parts: Sequence[SegmentationStore], dataset_root: Path, replace: bool = False) -> Optional[Path]:
        """Write a whole selection, every image encoded, as this entry: one store, or the stores
        of a sharded run's ranks in shard order (memory maps of their files). Atomically: built
        in a temporary directory beside it and renamed into place (``replace``: in place of a
        damaged entry). None when another run wrote it first or the disk lacks room (the entry
        is only a saving); OSError otherwise."""
        if self.exists() and not replace:
            return None
        if replace and self.path.exists() and _written_entry(self.path) is None:
            raise OSError(f"{self.path} is not an entry this tool can tell it wrote (its entry.json is "
                          "unreadable or names another key, or it holds other files), so it is left as it "
                          "is; remove it yourself if it is yours")
        pixels, dtype = parts[0].pixels, np.dtype(parts[0].id_dtype)
        n = sum(part.n_images for part in parts)
        size = n * pixels * dtype.itemsize
        self.root.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(self.root).free < size + FREE_MARGIN:
            return None
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.key[:12]}-", dir=self.root))
        try:
            with open(tmp / IDS, "wb") as out:
                for part in parts:       # its rows (a store of no image still holds one)
                    part.flush()
                    _copy_rows(part.ids, part.n_images, dtype, out)
            tables = [t for part in parts for t in part.tables]
            image_concepts = [c for part in parts for c in part.image_concepts]
            np.savez(tmp / TABLES,
                     tables=_concat([t.reshape(-1) for t in tables], np.int32),
                     combos=np.array([t.shape[0] for t in tables], np.int64),
                     table_width=np.array([t.shape[1] for t in tables], np.int64),
                     combo_pixels=_concat([part.pixels_per_combination(i) for part in parts
                                           for i in range(part.n_images)], np.int64),
                     image_concepts=_concat(image_concepts, np.int32),
                     image_concept_rows=np.array([len(c) for c in image_concepts], np.int64))
            atomic_write_json(tmp / ENTRY, {"version": ENCODING_VERSION, "key": self.key, "images": n,
                                            "pixels": pixels, "id_dtype": dtype.name,
                                            "dataset": str(Path(dataset_root).resolve()),
                                            "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
            if replace and self.path.exists():   # the damaged entry goes only once this one is whole
                old = Path(tempfile.mkdtemp(prefix=f".{self.key[:12]}-old-", dir=self.root))
                os.rename(self.path, old / "entry")
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.rename(tmp, self.path)
            except OSError:
                if self.exists():            # another run's entry won the race: the same labels
                    return None
                raise
            return self.path
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


class SelectionLabels(NamedTuple):
    """A selection's cached labels, and the concept index of each label number."""
    store: SegmentationStore
    concept_of_label: np.ndarray


def open_selection(ds, setting: Union[None, str, os.PathLike], recorded: Optional[dict] = None,
                   images: Sequence[int] = ()) -> Optional[SelectionLabels]:
    """The entry of a dataset selection, or None (cache off, no entry, or one that fails to
    open): the report draws the label masks of the shown ``images`` from it. ``recorded``: the
    run's dataset-files.json, whose digest names the run's entry; then only the shown images'
    mask files are checked against it (an image's labels depend on its own masks alone), not
    every file of the dataset (a second each 300,000 files); without it, all are."""
    root = resolve_root(setting)
    if root is None or not len(ds):
        return None
    if recorded and isinstance(recorded.get("stats"), dict):
        stats, base = recorded["stats"], ds.root / "images"
        for i in images:
            for names in ds.records[i].masks.values():
                for name in names:
                    try:
                        st = os.stat(base / name)
                    except OSError:
                        return None
                    if stats.get(name) != [int(st.st_size), int(st.st_mtime_ns)]:
                        return None       # changed since the run: decoded, not read from the entry
        files = recorded
    else:
        files = {"stats": ds.file_stats()}
    pixels = ds.records[0].sh * ds.records[0].sw
    cache = LabelCache(root, cache_key(ds, ds.concepts, pixels, files))
    if not cache.exists():
        return None
    try:
        store = cache.open(len(ds), pixels, len(ds.concepts), np.zeros((len(ds), 0), bool))
    except (OSError, ValueError, KeyError):
        return None
    concept_of_label = np.full(len(ds.labels), -1, dtype=np.int64)
    concept_of_label[np.asarray(ds.concepts, dtype=np.int64)] = np.arange(len(ds.concepts))
    return SelectionLabels(store, concept_of_label)


def _copy_rows(ids: np.ndarray, n: int, dtype: np.dtype, out) -> None:
    """Append the first n rows of ids to the file out: from the file behind a memory map by
    plain reads (mapping a 1.6 GB file in would count in this process's resident memory), else
    a few megabytes at a time."""
    length = n * (ids.shape[1] if ids.ndim == 2 else 0) * dtype.itemsize
    source = getattr(ids, "filename", None) if isinstance(ids, np.memmap) else None
    if source is not None and ids.dtype == dtype:
        with open(source, "rb") as f:
            f.seek(ids.offset)
            while length > 0:
                block = f.read(min(length, 1 << 22))
                if not block:
                    raise OSError(f"{source} ends before its {n} rows")
                out.write(block)
                length -= len(block)
        return
    step = max(1, (1 << 22) // max(1, ids.shape[1] * dtype.itemsize))
    for start in range(0, n, step):
        out.write(np.ascontiguousarray(ids[start:min(n, start + step)], dtype=dtype).tobytes())


def _split(flat: np.ndarray, lengths: np.ndarray, lo: int, hi: int) -> List[np.ndarray]:
    starts = np.concatenate([[0], np.cumsum(lengths)])
    return [flat[starts[i]:starts[i + 1]] for i in range(lo, hi)]


def _concat(parts: Sequence[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=dtype).reshape(-1) for p in parts]) if len(parts) else \
        np.zeros(0, dtype=dtype)


def _written_entry(path: Path) -> Optional[dict]:
    """path's entry.json where path is provably an entry this module wrote (the only kind it
    lists, replaces or removes): named by the key its entry.json holds, and holding nothing but
    an entry's three files. Else None."""
    try:
        entry = json.loads((path / ENTRY).read_text())
        names = set(os.listdir(path))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != path.name or not names <= {IDS, TABLES, ENTRY}:
        return None
    return entry


def entries(root: Path) -> List[dict]:
    """The finished entries under ``root``: their entry.json plus path, size and last use."""
    found = []
    if not root.is_dir():
        return found
    for path in sorted(root.iterdir()):
        entry = _written_entry(path)
        if entry is None:
            continue
        try:
            entry["bytes"] = sum(p.stat().st_size for p in path.iterdir())
            entry["used"] = (path / ENTRY).stat().st_mtime
        except OSError:
            continue
        entry["path"] = str(path)
        found.append(entry)
    return found


def clear(root: Path) -> List[dict]:
    """Remove the finished entries under ``root`` (and nothing else there); return them."""
    removed = []
    for entry in entries(root):
        shutil.rmtree(entry["path"])
        removed.append(entry)
    return removed
