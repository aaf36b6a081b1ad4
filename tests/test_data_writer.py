"""The Broden writer every builder shares: colors, filtering, resume, atomic output."""
from __future__ import annotations

import csv
from pathlib import Path

import data_sources as F
import numpy as np
import pytest

from netdissect.data import colors, writer
from netdissect.data.labelpng import read_label_png
from netdissect.data.writer import Annotation, SourceItem, build_broden
from netdissect.errors import NetDissectError

PARAMS = {"source": "test", "src": "memory"}


def rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_planes(rgb, objects, scene):
    """Test loader: objects = {code: name} regions given as (region, code) pairs."""
    pixels = F.picture(**rgb)
    codes = F.class_map(**{reg: code for reg, code in objects})
    ann = Annotation(rgb=pixels)
    ann.pixel["object"] = [(codes, {1: "tree", 2: "rock", 3: "rare"})]
    if scene:
        ann.image["scene"] = [scene]
    return ann


def items(n: int = 5):
    out = []
    for i in range(n):
        objects = [("left", 1)] + ([("right", 2)] if i % 2 else [])
        if i == 3:
            objects = [("top", 3)]                    # only the rare label
        out.append(SourceItem(f"t/img{i}", load_planes,
                              ({"left": F.RED, "right": F.WHITE}, objects, "field-s" if i < 2 else ""),
                              f"memory #{i}"))
    return out


def all_files(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_color_table_is_broden_s():
    pure = np.array([[F.RED, F.BLUE, F.WHITE, (0, 0, 0), F.GREEN, (255, 255, 0)]], dtype=np.uint8)
    names = [colors.COLOR_NAMES[c - 1] for c in colors.color_codes(pure)[0]]
    assert names == ["red", "blue", "white", "black", "green", "yellow"]
    assert colors.color_label_names()[3] == "grey-c"
    assert colors.color_codes(np.full((2, 3), 255, np.uint8)).tolist() == [[10] * 3] * 2
    here = colors.TABLE_FILE.parent
    assert "MIT" in (here / "w2color-LICENSE.md").read_text()
    assert colors.color_table().shape == (32, 32, 32)


def test_min_images_drops_labels_and_then_empty_images(tmp_path):
    s = build_broden(tmp_path / "out", items(), PARAMS, size=16, min_images=2, colors=False)
    lab = rows(tmp_path / "out" / "label.csv")
    # tree: 4 images (all but #3); field-s: 2; rock (#1) and rare (#3): 1 each, dropped
    assert [(r["number"], r["name"], r["frequency"]) for r in lab] == [
        ("1", "tree", "4"), ("2", "field-s", "2")]
    images = [r["image"] for r in rows(tmp_path / "out" / "index.csv")]
    assert "t/img3.jpg" not in images and len(images) == 4
    assert not (tmp_path / "out" / "images" / "t" / "img3.jpg").exists()
    assert s.dropped_labels == 2 and s.dropped_images == 1
    img1 = next(r for r in rows(tmp_path / "out" / "index.csv") if r["image"] == "t/img1.jpg")
    obj = read_label_png(tmp_path / "out" / "images" / img1["object"])
    assert obj[:, :4].tolist() == [[1] * 4] * 8 and not obj[:, 4:].any(), "rock (1 image) is 0"


def test_interrupted_build_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    build_broden(tmp_path / "ref", items(), PARAMS, size=16)
    real = writer.process_item
    done = []

    def flaky(*args):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(1)
        return real(*args)
    monkeypatch.setattr(writer, "process_item", flaky)
    with pytest.raises(KeyboardInterrupt, match="after 2 of 5 images; run the same command again"):
        build_broden(tmp_path / "out", items(), PARAMS, size=16)
    assert not (tmp_path / "out").exists() and (tmp_path / ".out.build" / "build.json").exists()
    monkeypatch.setattr(writer, "process_item", real)
    images = tmp_path / ".out.build" / "images" / "t"
    (images / ".img4.jpg.0badf00d").write_bytes(b"half a file from a killed build")
    (images / "gone.jpg").write_bytes(b"an image no longer in the source")
    summary = build_broden(tmp_path / "out", items(), PARAMS, size=16)
    assert summary.resumed == 2 and summary.images == 5
    assert all_files(tmp_path / "out") == all_files(tmp_path / "ref")
    assert not (tmp_path / ".out.build").exists()


def test_changed_options_start_over(tmp_path, monkeypatch):
    real = writer.process_item
    monkeypatch.setattr(writer, "process_item", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        build_broden(tmp_path / "out", items(), PARAMS, size=16)
    monkeypatch.setattr(writer, "process_item", real)
    messages = []
    s = build_broden(tmp_path / "out", items(), PARAMS, size=24, log=messages.append)
    assert s.resumed == 0 and "starting over" in messages[0]
    assert rows(tmp_path / "out" / "index.csv")[0]["ih"] == "24"


def test_output_is_replaced_only_when_asked(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(NetDissectError, match="not empty"):
        build_broden(out, items(2), PARAMS, size=16)
    assert (out / "mine.txt").read_text() == "keep"
    # issue 8: --overwrite never replaces a folder netdissect did not make
    with pytest.raises(NetDissectError, match="not made by netdissect"):
        build_broden(out, items(2), PARAMS, size=16, overwrite=True)
    assert (out / "mine.txt").read_text() == "keep"
    (out / "mine.txt").unlink()
    build_broden(out, items(2), PARAMS, size=16)
    build_broden(out, items(2), PARAMS, size=16, overwrite=True)  # its own dataset: replaced
    assert (out / "index.csv").exists() and (out / ".netdissect-dataset").exists()
    foreign = tmp_path / ".other.build"
    foreign.mkdir()
    with pytest.raises(NetDissectError, match="not a build work directory"):
        build_broden(tmp_path / "other", items(2), PARAMS, size=16)


def test_workers_give_the_same_dataset(tmp_path):
    src = F.write_ade20k_2021(tmp_path / "ade")
    from netdissect.data.ade20k import ade20k_items
    found, _ = ade20k_items(src)
    build_broden(tmp_path / "one", found, PARAMS, size=16, workers=1)
    build_broden(tmp_path / "two", found, PARAMS, size=16, workers=2)
    assert all_files(tmp_path / "one") == all_files(tmp_path / "two")


def test_mismatched_annotation_size_names_the_image(tmp_path):
    def bad():
        return Annotation(rgb=np.zeros((4, 4, 3), np.uint8),
                          pixel={"object": [(np.ones((2, 2), int), {1: "x"})]})
    with pytest.raises(NetDissectError, match="memory #0: the object annotation is 2 x 2"):
        build_broden(tmp_path / "o", [SourceItem("t/a", bad, (), "memory #0")], PARAMS, size=16)


def test_killed_cli_build_resumes(tmp_path):
    """`kill -9` in the middle of `netdissect data folder`, then the same command again: it
    resumes (skipping finished images) and gives the same files as an uninterrupted build."""
    import os
    import signal
    import subprocess
    import sys
    import time
    rng = np.random.default_rng(0)
    for i in range(100):         # enough work (seconds) that the kill lands part-way
        rgb = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        F.save_jpeg(tmp_path / "src" / ("cls_a" if i % 2 else "cls_b") / f"im{i:03d}.jpg", rgb)
    cmd = [sys.executable, "-m", "netdissect", "data", "folder", str(tmp_path / "src"),
           "--size", "64", "--workers", "1", "--quiet", "--out"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run(cmd + [str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd + [str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    records = tmp_path / ".out.build" / "records"
    deadline = time.time() + 120
    while time.time() < deadline:
        if records.exists() and len(list(records.glob("*.json"))) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(records.glob("*.json")))
    assert proc.returncode == -signal.SIGKILL and 3 <= done < 100, "killed part-way"
    again = subprocess.run(cmd + [str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resuming: {done} of 100 images were already done" in again.stderr
    assert all_files(tmp_path / "out") == all_files(tmp_path / "ref")


def test_a_folder_that_appears_during_the_build_is_not_replaced(tmp_path, monkeypatch):
    """The output is checked again right before the finished build moves in: a user's folder
    made at that path while the build ran stays untouched, and so does the finished work."""
    from netdissect.data.synthetic import writer as synthetic_writer
    out = tmp_path / "out"
    install = synthetic_writer.install_dataset_dir

    def user_writes_meanwhile(work, target, overwrite):
        target.mkdir()
        (target / "mine.txt").write_text("keep")
        return install(work, target, overwrite)
    monkeypatch.setattr(synthetic_writer, "install_dataset_dir", user_writes_meanwhile)
    with pytest.raises(NetDissectError, match="not made by netdissect"):
        build_broden(out, items(2), PARAMS, size=16, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep"
    assert (writer.work_dir_for(out.absolute()) / "index.csv").exists()
