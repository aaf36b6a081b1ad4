"""Issue 8: the tool never deletes what the user made, never runs code from a run directory,
never leaves a lock behind, and never answers from a cache that lies.

Each test is named after the numbered case of the issue it covers; each failed on the main
branch the issue was filed against.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_data import TinyNet, UnseededNet, make_dataset
from torch import nn

import netdissect
from netdissect.cli import commands as cli
from netdissect.errors import NetDissectError
from netdissect.runs import RunDirectory

LAYERS = ["relu1", "conv3"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("reliability") / "data", n_images=16, size=32, seed=3)


@pytest.fixture
def dataset(pristine, tmp_path):
    """A private copy: tests that change files do not disturb each other."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def dissect(dataset, out=None, model=None, layers=LAYERS, **kw):
    params = dict(batch_size=4, workers=0, progress=False, min_category_images=0)
    params.update(kw)
    return netdissect.dissect(model or TinyNet(), layers, dataset, out=out, **params)


def unseeded_net() -> nn.Module:
    return UnseededNet()


def interrupted_tiny_net(after: int) -> nn.Module:
    """TinyNet (same name, same weights: the same manifest) that stops on forward call ``after + 1``."""
    calls = [0]

    def forward(self, x):
        calls[0] += 1
        if calls[0] > after:
            raise KeyboardInterrupt
        return TinyNet.forward(self, x)
    return type("TinyNet", (TinyNet,), {"forward": forward})()


def snapshot(out: Path) -> dict:
    """Every file of a finished run (not the lock) with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".lock"}


class Evil:
    """Unpickling this creates a directory: proof that a file was executed."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.mkdir, (self.sentinel,))


# --------------------------------------------------------------------------- 1. data loss (demo --data)

def test_1_demo_never_deletes_a_folder_it_did_not_make(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    code = cli.main(["demo", "--data", str(folder), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "not made by netdissect" in err and len(err.strip().splitlines()) == 1
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "run").exists()


def test_1_overwrite_replaces_only_a_dataset_netdissect_made(tmp_path, capsys):
    from netdissect.data.synthetic import DATASET_MARKER
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    args = ["data", "synthetic", "--out", str(folder), "--images", "2", "--size", "16", "--workers", "1",
            "--quiet", "--overwrite"]
    assert cli.main(args) == 1
    assert (folder / "notes.txt").read_text() == "keep"
    made = tmp_path / "made"
    assert cli.main(args[:3] + [str(made)] + args[4:]) == 0
    assert (made / DATASET_MARKER).is_file()
    assert cli.main(args[:3] + [str(made)] + args[4:]) == 0  # its own dataset: replaced
    assert (made / "index.csv").is_file()
    capsys.readouterr()


def test_1_out_never_writes_into_a_users_folder(dataset, tmp_path):
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "summary.json").write_text("the user's own file")
    with pytest.raises(netdissect.RunError, match="not a netdissect run directory"):
        dissect(dataset, out=folder)
    assert (folder / "summary.json").read_text() == "the user's own file"
    assert sorted(p.name for p in folder.iterdir()) == ["summary.json"]


def test_1_a_run_killed_while_claiming_its_directory_can_rerun(dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for leftover in (".write-test4242", "..netdissect-run.tmp4242", ".lock"):
        (out / leftover).write_text("")
    assert dissect(dataset, out=out).images == 16


def test_1_a_run_of_an_older_version_is_adopted(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    dissect(dataset, out=out)
    (out / ".netdissect-run").unlink()  # as written before the marker existed
    dissect(dataset, out=out)
    assert "up to date" in capsys.readouterr().err and (out / ".netdissect-run").is_file()


# --------------------------------------------------------------------------- 2. checks before discarding

@pytest.mark.parametrize("change", ["unknown layer", "device", "workers", "free space"])
def test_2_a_failing_rerun_keeps_the_finished_results(dataset, tmp_path, monkeypatch, change):
    out = tmp_path / "run"
    dissect(dataset, out=out)
    before = snapshot(out)
    kw = {"quantile": 0.01}  # changed inputs: the old results are not reused
    if change == "unknown layer":
        kw["layers"] = ["relu1", "no_such_layer"]
    elif change == "device":
        kw["device"] = f"cuda:{max(torch.cuda.device_count(), 1) + 7}"
    elif change == "workers":
        kw["workers"] = -1
    else:
        from collections import namedtuple
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9, 1000))
    with pytest.raises(NetDissectError):
        dissect(dataset, out=out, **kw)
    assert snapshot(out) == before, "a rerun that fails must not discard the finished run"


# --------------------------------------------------------------------------- 3. no code execution

def test_3_a_planted_pickle_checkpoint_is_never_executed(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    RunDirectory(out, manifest={}).release()  # a run directory, as after a crash
    sentinel = tmp_path / "pwned"
    torch.save({"done": 0, "manifest": Evil(sentinel)}, out / "checkpoint.pt")
    np.save(out / "checkpoint.npz", np.array([Evil(sentinel)], dtype=object), allow_pickle=True)
    os.replace(out / "checkpoint.npz.npy", out / "checkpoint.npz")
    result = dissect(dataset, out=out)
    err = capsys.readouterr().err
    assert not sentinel.exists(), "a checkpoint was unpickled"
    assert "ignoring" in err and result.images == 16
    assert (out / "summary.json").exists()


def test_3_checkpoint_holds_no_pickle(dataset, tmp_path, capsys):
    """The saved state parses with pickle disabled, and a resume from it gives the same numbers."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        dissect(dataset, out=out, model=interrupted_tiny_net(5), checkpoint_every=1, memory_budget_mb=0.02)
    from netdissect.runs import statefile
    with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
        assert all(z[name].dtype != object for name in z.files)
    done = statefile.load(out / "checkpoint.npz")["done"]
    assert 0 < done < 16
    resumed = dissect(dataset, out=out, memory_budget_mb=0.02)
    assert f"resuming from checkpoint after {done} images" in capsys.readouterr().err
    whole = dissect(dataset, memory_budget_mb=0.02)
    for layer in LAYERS:
        np.testing.assert_array_equal(resumed[layer].iou, whole[layer].iou)
        np.testing.assert_array_equal(resumed[layer].thresholds, whole[layer].thresholds)


def test_3_experiment_resume_state_is_never_unpickled(tmp_path):
    from netdissect.experiments.conditions import Settings, make_conditions, train_condition
    g = torch.Generator().manual_seed(0)
    train = (torch.randint(0, 256, (16, 16, 16, 3), generator=g, dtype=torch.uint8), torch.randint(0, 6, (16,), generator=g))
    out = tmp_path / "cond"
    out.mkdir()
    sentinel = tmp_path / "pwned"
    torch.save({"key": "x", "model": Evil(sentinel)}, out / "resume.pt")
    (out / "resume.npz").write_bytes(pickle.dumps(Evil(sentinel)))
    messages = []
    result = train_condition(make_conditions(4, 0)["baseline"], Settings.quick(epochs=1, width=4, batch_size=8),
                             "d", train, (train[0][:4], train[1][:4]), out, log=messages.append)
    assert not sentinel.exists()
    assert any("ignoring" in m for m in messages) and result["history"][-1]["epoch"] == 1


def test_statefile_round_trips_and_refuses_garbage(tmp_path):
    from netdissect.runs import statefile
    state = {"done": 7, 3: [np.arange(i + 1) for i in range(10)] + [None], "t": (1.5, float("inf")),
             "tensor": torch.arange(6).reshape(2, 3), "half": torch.ones(2, dtype=torch.bfloat16),
             "nested": {"rng": torch.get_rng_state(), "name": "x", "flag": True, "none": None}}
    back = statefile.loads(statefile.dumps(state))
    assert back["done"] == 7 and back["t"] == (1.5, float("inf")) and back[3][-1] is None
    assert all(np.array_equal(a, b) for a, b in zip(back[3][:-1], state[3][:-1]))
    assert torch.equal(back["tensor"], state["tensor"]) and back["half"].dtype == torch.bfloat16
    assert torch.equal(back["nested"]["rng"], state["nested"]["rng"]) and back["nested"]["flag"] is True
    for garbage in (b"", b"not a zip", statefile.dumps(state)[:50], pickle.dumps({"done": 1})):
        with pytest.raises(statefile.StateFileError):
            statefile.loads(garbage)


# --------------------------------------------------------------------------- 5. changed input + checkpoint

def test_5_changed_input_while_a_checkpoint_exists_starts_over_cleanly(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        dissect(dataset, out=out, model=interrupted_tiny_net(5), checkpoint_every=1, memory_budget_mb=0.02)
    assert list(out.glob("checkpoint.*")), "the interrupted run left a checkpoint"
    capsys.readouterr()
    result = dissect(dataset, out=out, memory_budget_mb=0.02, quantile=0.01)
    assert "starting over" in capsys.readouterr().err
    fresh = dissect(dataset, memory_budget_mb=0.02, quantile=0.01)
    for layer in LAYERS:
        np.testing.assert_array_equal(result[layer].iou, fresh[layer].iou)


# --------------------------------------------------------------------------- 6. the first image

def test_6_skip_covers_an_unreadable_first_image(dataset):
    (dataset / "images" / "img0000.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    result = dissect(dataset, on_bad_image="skip")
    assert [s["image"] for s in result.skipped] == ["img0000.jpg"] and result.images == 15
    with pytest.raises(netdissect.DatasetError, match="img0000.jpg"):
        dissect(dataset)


# --------------------------------------------------------------------------- 7. caches that lie

def test_7_replaced_image_under_the_same_index_recomputes_naming_it(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    first = dissect(dataset, out=out)
    replacement = dataset / "images" / "img0005.jpg"
    (dataset / "images" / "img0006.jpg").replace(replacement)  # another picture, same name
    shutil.copy(replacement, dataset / "images" / "img0006.jpg")
    capsys.readouterr()
    second = dissect(dataset, out=out)
    err = capsys.readouterr().err
    assert "up to date" not in err and "recomputing" in err
    assert "img0005.jpg" in err and "img0006.jpg" in err
    assert not np.array_equal(first["relu1"].thresholds, second["relu1"].thresholds) or \
        not np.array_equal(first["relu1"].iou, second["relu1"].iou)


def test_7_verify_content_sees_a_change_that_keeps_size_and_mtime(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    dissect(dataset, out=out, verify_content=True)
    path = dataset / "images" / "img0003.jpg"
    st = path.stat()
    data = bytearray(path.read_bytes())
    assert data[6:11] == b"JFIF\0"
    data[15] ^= 1  # the JFIF pixel density: other bytes, same size, same pixels
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    capsys.readouterr()
    dissect(dataset, out=out)
    assert "up to date" in capsys.readouterr().err  # size and mtime are the cheap check
    dissect(dataset, out=out, verify_content=True)
    err = capsys.readouterr().err
    assert "recomputing" in err and "images/img0003.jpg changed" in err


def test_7_relabel_without_report_leaves_no_stale_report(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["dissect", "--model", "engine_data:tiny_net", "--dataset", str(dataset), "--out", str(out),
            "--workers", "0", "--batch-size", "4", "--quiet", "--min-category-images", "0"]
    for layer in LAYERS:
        base += ["--layer", layer]
    assert cli.main(base) == 0
    assert (out / "report" / "index.html").exists()
    assert cli.main(base + ["--iou-threshold", "0.0", "--no-report"]) == 0
    assert "relabeling" in capsys.readouterr().err
    assert not (out / "report").exists(), "the old report describes the old labels"
    assert json.loads((out / "summary.json").read_text())["layers"]["relu1"]["iou_threshold"] == 0.0


# --------------------------------------------------------------------------- 8. seeded random init

def test_8_random_init_is_seeded_and_recorded(dataset, tmp_path):
    from netdissect.models.specs import load_model
    state = torch.get_rng_state()
    a = load_model("torchvision:squeezenet1_1", weights="none")
    b = load_model("torchvision:squeezenet1_1", weights="none")
    c = load_model("torchvision:squeezenet1_1", weights="none", seed=1)
    assert a.digest() == b.digest() != c.digest()
    assert torch.equal(torch.get_rng_state(), state), "the caller's random stream is left alone"
    out = tmp_path / "run"
    dissect(dataset, out=out, model="test_reliability:unseeded_net", weights="none", seed=5)
    manifest = json.loads((out / "config.json").read_text())["manifest"]
    assert manifest["model"]["seed"] == 5


# --------------------------------------------------------------------------- 9. one-line errors

def test_9_memory_budget_must_be_positive(dataset):
    for budget in (0, -1, float("nan")):
        with pytest.raises(NetDissectError, match="memory-budget"):
            dissect(dataset, memory_budget_mb=budget)


def test_9_check_reports_duplicate_label_names(dataset):
    from netdissect.data.broden import check_dataset
    text = (dataset / "label.csv").read_text().replace("\n2,blue,", "\n2,red,")
    (dataset / "label.csv").write_text(text)
    report = check_dataset(dataset, workers=1)
    assert not report.ok
    assert any("'red'" in p and "1, 2" in p and "label.csv" in p for p in report.problems)


def test_9_decode_errors_hold_no_object_address(dataset):
    (dataset / "images" / "img0004.jpg").write_bytes(b"garbage, not an image at all")
    result = dissect(dataset, on_bad_image="skip")
    message = result.skipped[0]["error"]
    assert "img0004.jpg" in message and " at 0x" not in message


def test_9_a_full_disk_is_one_line_naming_the_path(dataset, tmp_path, capsys, monkeypatch):
    def full(file, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", getattr(file, "name", None))
    # the run's first write to disk, a spill's first array header, fills it
    monkeypatch.setattr(np.lib.format, "write_array_header_1_0", full)
    out = tmp_path / "run"
    args = ["dissect", "--model", "engine_data:tiny_net", "--dataset", str(dataset), "--out", str(out),
            "--layer", "relu1", "--workers", "0", "--batch-size", "4", "--quiet", "--no-report",
            "--memory-budget", "0.02", "--checkpoint-every", "1", "--min-category-images", "0"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert str(out) in err and "free space" in err


def test_1_results_are_never_written_into_a_folder_without_the_marker(dataset, tmp_path):
    """write_results checks ownership before it replaces anything: a user's summary.json and
    report/ beside it stay as they were."""
    from netdissect.runs import write_results
    result = dissect(dataset)
    foreign = tmp_path / "mine"
    (foreign / "report").mkdir(parents=True)
    (foreign / "summary.json").write_text("my notes")
    (foreign / "report" / "index.html").write_text("my page")
    with pytest.raises(NetDissectError, match="marker"):
        write_results(foreign, result)
    assert (foreign / "summary.json").read_text() == "my notes"
    assert (foreign / "report" / "index.html").read_text() == "my page"
