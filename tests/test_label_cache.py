"""The label cache: a later run over the same dataset reads the encoded labels instead of
decoding the masks, and writes the bytes of a run without the cache, whatever else it does
(formulas, two passes, rf upsampling, skipped images, resuming, torchrun shards)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from engine_data import TinyNet, assert_same_run, make_dataset, run_files
from PIL import Image

import netdissect
from netdissect.data.broden import BrodenDataset
from netdissect.errors import DissectionWarning
from netdissect.runs import statefile
from netdissect.stats.memory import FORCE_TWO_PASS
from netdissect.tally.labelcache import ENV, entries, resolve_root

LAYERS = ["relu1", "relu2", "conv3"]
PARAMS = dict(batch_size=4, workers=0, progress=False, min_category_images=0, iou_threshold=0.01)


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data", n_images=20, size=32, seed=5)


def run(data, out, cache, model=None, **kw):
    return netdissect.dissect(model or TinyNet(), LAYERS, data, out=out, label_cache=cache, **{**PARAMS, **kw})


def no_mask_decoding(monkeypatch):
    def refuse(self, i, categories=None):
        raise AssertionError(f"image {i}'s masks were decoded although the cache holds them")
    monkeypatch.setattr(BrodenDataset, "load_segmentation", refuse)


def assert_same_formulas(a: Path, b: Path) -> None:
    """The formulas and the label combinations they were searched over, array for array."""
    for layer in LAYERS:
        for name in ("formulas.npz", "combinations.npz"):
            with np.load(a / layer / name) as x, np.load(b / layer / name) as y:
                assert x.files == y.files
                for key in set(x.files) - {"seconds"}:
                    np.testing.assert_array_equal(x[key], y[key], err_msg=f"{layer}/{name}/{key}")


def a_mask(data: Path) -> Path:
    return next(p for p in sorted((data / "images").iterdir()) if p.suffix == ".png")


def test_a_second_run_decodes_no_mask_and_writes_the_same_bytes(data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    run(data, tmp_path / "off", "off")
    run(data, tmp_path / "first", cache)
    [entry] = entries(cache)
    assert entry["images"] == 20 and entry["dataset"] == str(data.resolve())
    # 16x16 segmentations of 20 images, 2 bytes a pixel, and the small tables
    assert 20 * 256 * 2 < entry["bytes"] < 20 * 256 * 2 + 20_000
    no_mask_decoding(monkeypatch)
    run(data, tmp_path / "second", cache)
    plain = run_files(tmp_path / "off", LAYERS)
    assert_same_run(run_files(tmp_path / "first", LAYERS), plain)
    assert_same_run(run_files(tmp_path / "second", LAYERS), plain)
    assert len(entries(cache)) == 1


@pytest.mark.parametrize("upsample, two_pass, formula_length", [("rf", True, 0), ("bilinear", False, 2)])
def test_formulas_two_passes_and_rf_from_cached_labels(data, tmp_path, monkeypatch, upsample, two_pass,
                                                       formula_length):
    if two_pass:
        monkeypatch.setenv(FORCE_TWO_PASS, "1")
    kw = dict(upsample=upsample, formula_length=formula_length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DissectionWarning)   # the two-pass note
        run(data, tmp_path / "off", "off", **kw)
        run(data, tmp_path / "first", tmp_path / "cache", **kw)
        no_mask_decoding(monkeypatch)
        run(data, tmp_path / "second", tmp_path / "cache", **kw)
    assert_same_run(run_files(tmp_path / "second", LAYERS), run_files(tmp_path / "off", LAYERS))
    if formula_length:
        assert_same_formulas(tmp_path / "second", tmp_path / "off")


def test_a_changed_mask_file_is_decoded_again(data, tmp_path):
    cache = tmp_path / "cache"
    run(data, tmp_path / "first", cache)
    mask = a_mask(data)
    labels = np.asarray(Image.open(mask)).copy()
    labels[:4] = labels[-4:]                       # other labels in the top rows
    Image.fromarray(labels).save(mask)
    run(data, tmp_path / "off", "off")
    run(data, tmp_path / "second", cache)
    assert len(entries(cache)) == 2                # a new entry; the old one is left as it was
    assert_same_run(run_files(tmp_path / "second", LAYERS), run_files(tmp_path / "off", LAYERS))
    assert not np.array_equal(np.load(tmp_path / "first" / "relu1" / "iou.npz")["iou"],
                              np.load(tmp_path / "second" / "relu1" / "iou.npz")["iou"])


def test_a_damaged_entry_is_a_warning_and_is_replaced(data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    run(data, tmp_path / "off", "off")
    run(data, tmp_path / "first", cache)
    [entry] = entries(cache)
    ids = Path(entry["path"]) / "ids.bin"
    ids.write_bytes(ids.read_bytes()[:100])
    with pytest.warns(DissectionWarning, match=r"label cache entry .* could not be read \(.*ids.bin is 100 bytes"):
        run(data, tmp_path / "second", cache)
    assert_same_run(run_files(tmp_path / "second", LAYERS), run_files(tmp_path / "off", LAYERS))
    [entry] = entries(cache)                       # in place of the damaged one, and whole
    assert (Path(entry["path"]) / "ids.bin").stat().st_size == 20 * 256 * 2
    assert [p.name for p in cache.iterdir()] == [Path(entry["path"]).name]   # no temporary left
    no_mask_decoding(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DissectionWarning)
        run(data, tmp_path / "third", cache)
    assert_same_run(run_files(tmp_path / "third", LAYERS), run_files(tmp_path / "off", LAYERS))


def test_an_entry_the_tool_cannot_prove_it_wrote_is_never_replaced(data, tmp_path):
    """An entry whose entry.json is unreadable, or which holds a file of someone else's, fails
    to open as before, but stays as it is: warnings, the right numbers, nothing deleted."""
    cache = tmp_path / "cache"
    run(data, tmp_path / "off", "off")
    run(data, tmp_path / "first", cache)
    [entry] = entries(cache)
    path = Path(entry["path"])
    (path / "ids.bin").write_bytes(b"damaged")
    (path / "notes.txt").write_text("a file the tool did not write")
    before = sorted((p.name, p.read_bytes()) for p in path.iterdir())
    with pytest.warns(DissectionWarning) as caught:
        run(data, tmp_path / "second", cache)
    messages = " ".join(str(w.message) for w in caught)
    assert "could not be read" in messages and "left as it is" in messages
    assert_same_run(run_files(tmp_path / "second", LAYERS), run_files(tmp_path / "off", LAYERS))
    assert sorted((p.name, p.read_bytes()) for p in path.iterdir()) == before
    assert [p.name for p in cache.iterdir()] == [path.name]       # no temporary left either
    assert entries(cache) == []                                    # not listed, so `--clear` keeps it


def test_a_skipped_image_counts_nowhere_with_cached_labels(data, tmp_path, monkeypatch):
    """The key covers the mask files only: an image that became unreadable keeps the entry, and
    the pass that skips it must not count its cached labels (the union of every concept)."""
    cache = tmp_path / "cache"
    run(data, tmp_path / "first", cache)
    (data / "images" / "img0005.jpg").write_bytes(b"not a jpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DissectionWarning)   # "1 image(s) could not be read"
        plain = run(data, tmp_path / "off", "off", on_bad_image="skip", formula_length=2)
        no_mask_decoding(monkeypatch)
        run(data, tmp_path / "second", cache, on_bad_image="skip", formula_length=2)
    assert plain.images == 19
    assert_same_run(run_files(tmp_path / "second", LAYERS), run_files(tmp_path / "off", LAYERS))
    assert_same_formulas(tmp_path / "second", tmp_path / "off")


def test_a_run_that_skipped_images_writes_no_entry(data, tmp_path):
    (data / "images" / "img0003.jpg").write_bytes(b"not a jpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DissectionWarning)
        run(data, tmp_path / "run", tmp_path / "cache", on_bad_image="skip")
    assert entries(tmp_path / "cache") == []


@pytest.mark.parametrize("how", ["entry gone", "entry appeared", "gone in the second pass"])
def test_resuming_when_the_entry_came_or_went(data, tmp_path, monkeypatch, how):
    """A run interrupted while reading cached labels resumes after the entry was removed (it
    encodes the labels of the images done so far again), and a run interrupted while encoding
    resumes from the entry another run wrote meanwhile: both with the uninterrupted bytes."""
    from test_resume import counting_tiny_net
    cache = tmp_path / "cache"
    two_pass = how == "gone in the second pass"
    if two_pass:
        monkeypatch.setenv(FORCE_TWO_PASS, "1")
    params = dict(checkpoint_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DissectionWarning)
        model, calls = counting_tiny_net()
        run(data, tmp_path / "whole", "off", model=model, **params)
        if how != "entry appeared":
            run(data, tmp_path / "builder", cache)
        # the probes, then 5 batches a pass: stop in pass 1 after 2 batches, or in pass 2 after 3
        model, _ = counting_tiny_net(stop_after=calls[0] - (2 if two_pass else 3))
        with pytest.raises(KeyboardInterrupt):
            run(data, tmp_path / "run", cache if how != "entry appeared" else "off", model=model, **params)
        state = statefile.load(tmp_path / "run" / "checkpoint.npz")
        assert (state["phase"], state["done"]) == ((2, 12) if two_pass else (1, 8))
        if how == "entry appeared":
            assert "cache" not in state["store"]
            run(data, tmp_path / "builder", cache)
        else:
            assert set(state["store"]) == {"cache"}
            shutil.rmtree(cache)
        run(data, tmp_path / "run", cache, **params)
    assert_same_run(run_files(tmp_path / "run", LAYERS), run_files(tmp_path / "whole", LAYERS))
    assert len(entries(cache)) == 1


def test_torchrun_ranks_read_their_shards_of_the_entry(data, tmp_path, monkeypatch):
    """Each rank opens its own rows of the entry. A mask rewritten behind the key's back (same
    size and time) shows that: the ranks count the cached labels, not the new file."""
    from test_distributed import assert_same_bytes, dissect_args, finished, single, torchrun
    cache = tmp_path / "cache"
    monkeypatch.setenv(ENV, str(cache))               # the torchrun ranks inherit it
    single(data, tmp_path / "one", limit=19)
    mask = a_mask(data)
    stat = mask.stat()
    Image.fromarray(np.zeros_like(np.asarray(Image.open(mask)))).save(mask)   # all unlabeled: smaller
    assert mask.stat().st_size < stat.st_size
    with open(mask, "ab") as f:                       # bytes after IEND are not read
        f.write(b"\0" * (stat.st_size - mask.stat().st_size))
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    finished(torchrun(2, dissect_args(data, tmp_path / "two", "engine_data:tiny_net", 4, "--limit", "19")))
    assert_same_bytes(tmp_path / "one", tmp_path / "two")
    assert len(entries(cache)) == 1                 # the entry it read, and no second one
    monkeypatch.setenv(ENV, "off")                    # without the entry the new mask counts
    single(data, tmp_path / "decoded", limit=19)
    assert (tmp_path / "one" / "relu1" / "iou.npz").read_bytes() != \
        (tmp_path / "decoded" / "relu1" / "iou.npz").read_bytes()


def test_a_sharded_first_run_writes_the_entry_from_every_rank(data, tmp_path, monkeypatch):
    """Two ranks encode their shards; rank 0 gathers the tables and copies both ranks' ids into
    one entry, which a run in one process then reads, with the same bytes."""
    from test_distributed import assert_same_bytes, dissect_args, finished, single, torchrun
    cache = tmp_path / "cache"
    monkeypatch.setenv(ENV, str(cache))
    finished(torchrun(2, dissect_args(data, tmp_path / "two", "engine_data:tiny_net", 4, "--limit", "19")))
    [entry] = entries(cache)
    assert entry["images"] == 19
    assert not list(cache.glob(".*"))               # no temporary directory left
    no_mask_decoding(monkeypatch)
    single(data, tmp_path / "one", limit=19)
    assert_same_bytes(tmp_path / "one", tmp_path / "two")


def test_ranks_of_which_only_some_hold_the_entry(data, tmp_path, monkeypatch):
    """On several machines one rank may find the entry and another not: that one encodes its
    shard, no rank waits for the others, and no entry is written; the numbers are one process's."""
    from test_distributed import SAME_BYTES, dissect_args, finished, single, torchrun
    cache = tmp_path / "cache"
    monkeypatch.setenv(ENV, str(cache))
    single(data, tmp_path / "one", limit=19)
    finished(torchrun(2, dissect_args(data, tmp_path / "two", "engine_data:tiny_net_rank1_apart", 4,
                                      "--limit", "19")), timeout=120)
    for layer in LAYERS:
        for name in SAME_BYTES:
            assert (tmp_path / "one" / layer / name).read_bytes() == (tmp_path / "two" / layer / name).read_bytes()
    assert len(entries(cache)) == 1 and entries(Path(str(cache) + "-rank1")) == []


def test_cache_command_lists_and_clears_only_entries(data, tmp_path):
    cache = tmp_path / "cache"
    run(data, tmp_path / "first", cache)
    (cache / "not-ours").mkdir()
    (cache / "not-ours" / "entry.json").write_text('{"key": "something else"}')

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "netdissect", "cache", str(cache), *args],
                              capture_output=True, text=True, check=True).stdout

    listing = cli()
    assert "1 entry" in listing and "20 images" in listing and str(data.resolve()) in listing
    assert "removed 1 label cache entry" in cli("--clear")
    assert [p.name for p in cache.iterdir()] == ["not-ours"]
    assert "is empty" in cli()


def test_where_the_cache_is(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, "off")
    assert resolve_root(None) is None
    monkeypatch.setenv(ENV, str(tmp_path / "c"))
    assert resolve_root(None) == tmp_path / "c"
    assert resolve_root("OFF") is None and resolve_root(tmp_path) == tmp_path
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_root(None) == tmp_path / "xdg" / "netdissect" / "labels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)   # no HOME, no passwd entry
    assert resolve_root(None) is None


def test_the_report_draws_the_label_outlines_from_the_entry(tmp_path, monkeypatch):
    """The report's masks of the shown images come from the entry, not the mask files, and its
    files are byte for byte those drawn from decoded masks."""
    from netdissect.report import render_report
    data = make_dataset(tmp_path / "data", n_images=40, size=32, seed=9)
    cache = tmp_path / "cache"
    run(data, tmp_path / "a", cache, top_k=4)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    decoded = []
    original = BrodenDataset.load_segmentation
    monkeypatch.setattr(BrodenDataset, "load_segmentation",
                        lambda self, i, categories=None: decoded.append(i) or original(self, i, categories))
    render_report(tmp_path / "a", top_k=4, workers=1)   # in this process: the calls are counted
    assert decoded == []
    shutil.rmtree(cache)
    render_report(tmp_path / "b", top_k=4, workers=1)
    assert len(decoded) > 10                              # without the entry, the masks are decoded
    files = sorted(p.relative_to(tmp_path / "a" / "report") for p in (tmp_path / "a" / "report").rglob("*")
                   if p.is_file())
    assert any(f.parts[0] == "strips" for f in files)
    for f in files:
        assert (tmp_path / "a" / "report" / f).read_bytes() == (tmp_path / "b" / "report" / f).read_bytes(), f


def test_a_dataset_object_s_selection_is_recorded_so_its_report_reads_the_entry(tmp_path, monkeypatch):
    """dissect() given BrodenDataset(limit=...) records that limit (and split, categories) in the
    run's config: its report opens the same selection, and so finds the labels' entry."""
    import json

    from netdissect.report import render_report
    data = make_dataset(tmp_path / "data", n_images=30, size=32, seed=3)
    cache = tmp_path / "cache"
    selection = BrodenDataset(data, limit=12, categories=["object", "color"])
    run(selection, tmp_path / "run", cache)
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (config["limit"], config["categories"], config["split"]) == (12, ["object", "color"], None)
    decoded = []
    monkeypatch.setattr(BrodenDataset, "load_segmentation", lambda self, i, categories=None: decoded.append(i))
    render_report(tmp_path / "run", workers=1)
    assert decoded == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["images"] == 12


def test_the_report_checks_the_shown_images_masks_only(tmp_path, monkeypatch):
    """The report finds the run's entry by the file times the run recorded, and checks only the
    shown images' mask files: another image's new mask keeps the entry in use, a shown image's
    new mask sends the report back to decoding."""
    from netdissect.report import render_report
    data = make_dataset(tmp_path / "data", n_images=60, size=32, seed=4)
    run(data, tmp_path / "run", tmp_path / "cache", top_k=2)
    shown = set()
    for layer in LAYERS:
        with np.load(tmp_path / "run" / layer / "topk.npz") as z:
            shown |= set(int(i) for i in z["image_index"][:, :2].ravel())
    ds = BrodenDataset(data)
    hidden = next(i for i in range(len(ds)) if i not in shown and any(ds.records[i].masks.values()))
    decoded = []
    original = BrodenDataset.load_segmentation
    monkeypatch.setattr(BrodenDataset, "load_segmentation",
                        lambda self, i, categories=None: decoded.append(i) or original(self, i, categories))

    def touch_a_mask_of(i):
        mask = data / "images" / next(n for names in ds.records[i].masks.values() for n in names)
        os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10 ** 9))

    touch_a_mask_of(hidden)
    render_report(tmp_path / "run", top_k=2, workers=1)
    assert decoded == []
    touch_a_mask_of(min(shown))
    render_report(tmp_path / "run", top_k=2, workers=1)
    assert len(decoded) > 1                    # every shown image's masks, from their files


def test_an_entry_on_a_read_only_cache_is_still_read(data, tmp_path, monkeypatch):
    """A cache shared read-only (its last-use time cannot be set): the entry is read, no warning."""
    run(data, tmp_path / "off", "off")
    run(data, tmp_path / "first", tmp_path / "cache")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")
    monkeypatch.setattr(os, "utime", refuse)
    no_mask_decoding(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DissectionWarning)
        run(data, tmp_path / "second", tmp_path / "cache")
    assert_same_run(run_files(tmp_path / "second", LAYERS), run_files(tmp_path / "off", LAYERS))


def test_a_cache_that_cannot_be_written_is_a_warning_not_an_error(data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("no directory can be made under a regular file")
    run(data, tmp_path / "off", "off")
    with pytest.warns(DissectionWarning, match=r"could not write the label cache .*a-file/labels"):
        run(data, tmp_path / "run", blocker / "labels")
    assert_same_run(run_files(tmp_path / "run", LAYERS), run_files(tmp_path / "off", LAYERS))


@pytest.mark.parametrize("on_disk", [False, True])
def test_an_entry_round_trips_a_store_and_its_shards(tmp_path, on_disk):
    """Save a store (in memory, or a memory-mapped file) and open any run of its rows: the same
    ids, tables and image labels, and each shard's labeled pixels per concept are the sums that
    encode_segmentation gave for those images."""
    from netdissect.tally.counts import encode_segmentation
    from netdissect.tally.labelcache import LabelCache
    from netdissect.tally.labelstore import SegmentationStore
    rng = np.random.default_rng(0)
    n, h, w, n_labels = 7, 5, 6, 9
    concept_of_label = np.array([-1, 0, 1, 2, -1, 3, 4, 5, 6], dtype=np.int64)
    encoded = [encode_segmentation(rng.integers(0, n_labels, size=(2, h, w)), rng.integers(1, n_labels, size=2),
                                   concept_of_label, 7) for _ in range(n)]
    labeled = np.ones((n, 2), bool)
    store = SegmentationStore(n, h * w, 7, labeled, tmp_path if on_disk else None)
    store.add(range(n), encoded)
    cache = LabelCache(tmp_path / "cache", "k" * 40)
    assert cache.save([store], tmp_path) == cache.path
    for lo, count in ((0, n), (2, 3), (6, 1)):
        shard = cache.open(count, h * w, 7, labeled, offset=lo)
        for j in range(count):
            enc = encoded[lo + j]
            np.testing.assert_array_equal(shard.ids[j], enc.combo_ids)
            np.testing.assert_array_equal(shard.tables[j], enc.table)
            np.testing.assert_array_equal(shard.image_concepts[j], enc.image_concepts)
        np.testing.assert_array_equal(shard.concept_pixels, sum(e.concept_pixels for e in encoded[lo:lo + count]))
        assert shard.state_dict() == {"cache": "k" * 40}
    with pytest.raises(ValueError, match="does not fit"):
        cache.open(3, h * w, 7, labeled, offset=5)


def test_a_copy_of_the_dataset_elsewhere_has_its_own_entry(data, tmp_path):
    """The same files (times kept by the copy) in another directory are another dataset to the
    cache: a hit must never depend on two directories happening to agree."""
    shutil.copytree(data, tmp_path / "copy")       # copy2: the same sizes and modification times
    run(data, tmp_path / "a", tmp_path / "cache")
    run(tmp_path / "copy", tmp_path / "b", tmp_path / "cache")
    assert sorted(e["dataset"] for e in entries(tmp_path / "cache")) == sorted(
        [str(data.resolve()), str((tmp_path / "copy").resolve())])
