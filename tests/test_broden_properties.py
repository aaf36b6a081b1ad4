"""Property-based tests of the Broden reader: index round trip, label PNG codec, fuzzing."""
from __future__ import annotations

import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from broden_fixtures import IMAGE, INDEX_HEADER, LABELS, PIXEL, build_broden, write_csv, write_tables
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from netdissect.data.broden import BrodenDataset, ImageRecord, check_dataset
from netdissect.data.labelpng import MAX_LABEL, read_label_png, write_label_png
from netdissect.errors import NetDissectError

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _clean(text: str) -> bool:
    """A plausible file name: no surrounding blanks or control characters, relative, no '..'."""
    return (text == text.strip() and "\x00" not in text
            and not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)
            and not text.startswith(("/", "\\"))
            and ".." not in text.replace("\\", "/").split("/"))


_name_chars = st.characters(blacklist_categories=("Cc", "Cs"))
image_names = st.text(_name_chars, min_size=1, max_size=20).filter(_clean)
mask_names = st.text(_name_chars.filter(lambda ch: ch != ";"), min_size=1,
                     max_size=20).filter(_clean)
split_names = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1,
                      max_size=8)
sizes = st.integers(1, 65535)
label_numbers = st.lists(st.sampled_from([n for n, *_ in LABELS]), unique=True, max_size=3)


@st.composite
def index_records(draw):
    masks = {c: tuple(draw(st.lists(mask_names, max_size=3))) for c in PIXEL}
    image_labels = {c: tuple(draw(label_numbers)) for c in IMAGE}
    return dict(image=draw(image_names), split=draw(split_names), ih=draw(sizes),
                iw=draw(sizes), sh=draw(sizes), sw=draw(sizes), masks=masks,
                image_labels=image_labels)


def _row(rec):
    return ([rec["image"], rec["split"], rec["ih"], rec["iw"], rec["sh"], rec["sw"]]
            + [";".join(rec["masks"][c]) for c in PIXEL]
            + [";".join(map(str, rec["image_labels"][c])) for c in IMAGE])


@settings(max_examples=60, **SETTINGS)
@given(st.lists(index_records(), min_size=1, max_size=6))
def test_index_round_trip(recs):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tables(root)
        write_csv(root / "index.csv", INDEX_HEADER, [_row(r) for r in recs])
        ds = BrodenDataset(root)
        expected = [ImageRecord(line=i + 2, **r) for i, r in enumerate(recs)]
        assert ds.records == expected
        assert ds.max_masks_per_image == max(sum(len(m) for m in r["masks"].values())
                                             for r in recs)
        counts = {}
        for rec in recs:
            counts[rec["split"]] = counts.get(rec["split"], 0) + 1
        assert ds.splits == counts


@settings(max_examples=60, **SETTINGS)
@given(hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=24),
                  elements=st.integers(0, MAX_LABEL)))
def test_label_png_round_trip(labels):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.png"
        write_label_png(path, labels)
        decoded = read_label_png(path)
        assert decoded.dtype == np.int32
        np.testing.assert_array_equal(decoded, labels)


# --- fuzzing: nothing but NetDissectError may come out -----------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_broden(tmp_path_factory.mktemp("fuzz") / "broden")


def _exercise(root: Path) -> None:
    try:
        ds = BrodenDataset(root)
    except NetDissectError:
        pass
    else:
        for i in range(len(ds)):
            try:
                ds.load_segmentation(i)
            except NetDissectError:
                pass
            try:
                ds.load_image(i)
            except NetDissectError:
                pass
    try:
        report = check_dataset(root, workers=2)
    except NetDissectError:
        pass
    else:
        report.summary_text()


_csv_noise = st.sampled_from(list(',;"\n\r\x00 0123456789-x.\xff\u00e9') + ["99999", "-1", ""])


@st.composite
def mutations(draw, data: bytes):
    """A few random edits of `data`: replace / insert / delete bytes, or truncate."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "replace" and out:
            out[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            noise = draw(st.one_of(_csv_noise.map(lambda s: s.encode("utf-8", "surrogatepass")),
                                   st.binary(min_size=1, max_size=4)))
            out[pos:pos] = noise
        elif kind == "delete":
            del out[pos:pos + draw(st.integers(1, 8))]
        else:
            del out[pos:]
    return bytes(out)


def _with_file(path: Path, content: bytes, base_root: Path) -> None:
    original = path.read_bytes() if path.exists() else None
    path.write_bytes(content)
    try:
        _exercise(base_root)
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_bytes(original)


@settings(max_examples=60, **SETTINGS)
@given(content=st.binary(max_size=600))
def test_fuzz_random_index(base, content):
    _with_file(base.index, content, base.root)


@settings(max_examples=80, **SETTINGS)
@given(data=st.data())
def test_fuzz_mutated_index(base, data):
    content = data.draw(mutations(base.index.read_bytes()))
    _with_file(base.index, content, base.root)


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), name=st.sampled_from(["label.csv", "category.csv", "c_object.csv"]))
def test_fuzz_mutated_tables(base, data, name):
    path = base.root / name
    _with_file(path, data.draw(mutations(path.read_bytes())), base.root)


@settings(max_examples=40, **SETTINGS)
@given(content=st.binary(max_size=400))
def test_fuzz_random_mask(base, content):
    _with_file(base.mask_path(0, "object"), content, base.root)


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_fuzz_mutated_mask(base, data):
    path = base.mask_path(0, "part", 1)
    _with_file(path, data.draw(mutations(path.read_bytes())), base.root)
