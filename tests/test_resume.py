"""Runs that resume after a crash, and finished results that are reused only when still valid."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_data import TinyNet, assert_same_run, make_dataset, run_files

import netdissect
from netdissect.runs import statefile

TESTS = Path(__file__).parent
LAYERS = ["relu1", "relu2", "conv3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("resume") / "data", n_images=48, size=32, seed=7)


def cli_command(dataset, out, *extra):
    args = [sys.executable, "-m", "netdissect", "dissect", "--model", "engine_data:slow_tiny_net",
            "--dataset", str(dataset), "--out", str(out), "--batch-size", "4", "--workers", "0",
            "--quiet", "--no-report", "--checkpoint-every", "1", "--min-category-images", "0",
            "--memory-budget", "0.02"]  # a tiny budget: pair buffers spill to disk too
    for layer in LAYERS:
        args += ["--layer", layer]
    return args + list(extra)


def env():
    return dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def wait_for_checkpoint(proc, out: Path, min_done: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ck = out / "checkpoint.npz"
        if ck.exists():
            try:
                if statefile.load(ck)["done"] >= min_done:
                    return
            except Exception:
                pass  # being replaced right now
        if proc.poll() is not None:
            raise AssertionError("the run finished before it could be interrupted")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(cli_command(dataset, out), check=True, env=env(), timeout=600)
    return run_files(out, LAYERS)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_killed_run_resumes_to_identical_results(dataset, tmp_path, uninterrupted, how):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli_command(dataset, out), env=env(), stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(proc, out, min_done=16)
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    if how == "SIGINT":
        assert "resume" in err  # the user is told how to continue
    assert not (out / "summary.json").exists(), "a killed run must not look finished"
    resumed = subprocess.run(cli_command(dataset, out), env=env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint after" in resumed.stderr
    assert_same_run(run_files(out, LAYERS), uninterrupted)
    assert not (out / "checkpoint.npz").exists()


def test_layers_whose_folder_names_collide_spill_to_separate_files(tmp_path):
    """Spill files are named per layer: "a b" and "a_b" share a safe name, never their pairs."""
    from netdissect.stats.streaming import PairBuffer
    buffers = {name: PairBuffer(tmp_path, 1, name) for name in ("a b", "a_b")}
    for value, (name, buffer) in enumerate(buffers.items(), start=1):
        buffer.add(torch.tensor([0, 1]), torch.tensor([3, 4]), torch.tensor([5.0, 6.0]),
                   torch.full((2, 2, 2), float(value)))
        buffer.spill()
    assert len({p for b in buffers.values() for p in b.spilled}) == 2
    for value, buffer in enumerate(buffers.values(), start=1):
        chunks = list(buffer.final_pairs(torch.zeros(2)))
        assert len(chunks) == 1 and bool((chunks[0]["maps"] == value).all())


def test_spill_files_read_back_old_format_and_name_a_damaged_one(tmp_path):
    """Spills are .npy arrays back to back; an earlier version's .npz spill (named by a
    checkpoint) still reads; a truncated one is a RunError naming it and saying what to do."""
    from netdissect.errors import RunError
    from netdissect.stats.streaming import PairBuffer
    buffer = PairBuffer(tmp_path, 1, "layer")
    pairs = dict(unit=torch.tensor([0, 1, 1]), image=torch.tensor([3, 4, 5]), max=torch.tensor([5.0, 6.0, 7.0]),
                 maps=torch.arange(12, dtype=torch.float32).reshape(3, 2, 2))
    buffer.add(pairs["unit"], pairs["image"], pairs["max"], pairs["maps"])
    buffer.spill()
    old = tmp_path / "layer-old.pairs00001.npz"
    np.savez(old, **{k: v.numpy() for k, v in pairs.items()})
    buffer.spilled.append(old)
    chunks = list(buffer.final_pairs(torch.tensor([5.5, 0.0])))   # unit 0's pair is below its threshold
    assert len(chunks) == 2
    for chunk in chunks:
        assert chunk["image"].tolist() == [4, 5] and torch.equal(chunk["maps"], pairs["maps"][1:])
    damaged = buffer.spilled[0]
    damaged.write_bytes(damaged.read_bytes()[:-20])
    with pytest.raises(RunError, match=f"{damaged}: scratch file cannot be read.*--force"):
        list(buffer.final_pairs(torch.zeros(2)))


def test_spilled_pairs_give_the_same_numbers_as_in_memory(dataset, monkeypatch):
    from netdissect.stats.streaming import PairBuffer
    spills = []
    spill = PairBuffer.spill
    monkeypatch.setattr(PairBuffer, "spill", lambda self: (spills.append(len(self.chunks)), spill(self)))
    small = netdissect.dissect(TinyNet(), LAYERS, dataset, batch_size=4, workers=0, progress=False,
                               memory_budget_mb=0.02, min_category_images=0)
    assert sum(spills) > 0  # the candidate maps went through scratch files
    large = netdissect.dissect(TinyNet(), LAYERS, dataset, batch_size=4, workers=0, progress=False,
                               min_category_images=0)
    for layer in LAYERS:
        np.testing.assert_array_equal(small[layer].iou, large[layer].iou)
        np.testing.assert_array_equal(small[layer].thresholds, large[layer].thresholds)


class TestCachesNeverLie:
    """A rerun reuses a finished run only when every input is the same."""

    def run(self, dataset, out, capsys, model=None, **kw):
        params = dict(batch_size=4, workers=0, progress=False, min_category_images=0)
        params.update(kw)
        result = netdissect.dissect(model or TinyNet(), LAYERS, dataset, out=out, **params)
        return result, capsys.readouterr().err

    def test_same_inputs_are_reused(self, dataset, tmp_path, capsys):
        first, _ = self.run(dataset, tmp_path / "r", capsys)
        mtime = (tmp_path / "r" / "relu1" / "iou.npz").stat().st_mtime_ns
        second, err = self.run(dataset, tmp_path / "r", capsys)
        assert "up to date" in err
        assert (tmp_path / "r" / "relu1" / "iou.npz").stat().st_mtime_ns == mtime
        np.testing.assert_array_equal(first["conv3"].iou, second["conv3"].iou)

    def test_force_recomputes(self, dataset, tmp_path, capsys):
        self.run(dataset, tmp_path / "r", capsys)
        _, err = self.run(dataset, tmp_path / "r", capsys, force=True)
        assert "up to date" not in err

    def test_iou_threshold_change_relabels_without_recomputing(self, dataset, tmp_path, capsys):
        first, _ = self.run(dataset, tmp_path / "r", capsys)
        second, err = self.run(dataset, tmp_path / "r", capsys, iou_threshold=0.0)
        assert "relabeling" in err and "iou_threshold" in err
        summary = json.loads((tmp_path / "r" / "summary.json").read_text())
        expected = int((first["relu1"].best_iou > 0.0).sum())
        assert summary["layers"]["relu1"]["detectors"] == expected
        assert summary["layers"]["relu1"]["iou_threshold"] == 0.0

    def test_relabel_of_a_layer_subset_keeps_the_other_layers(self, dataset, tmp_path, capsys):
        first, _ = self.run(dataset, tmp_path / "r", capsys)
        _, err = self.run_subset(dataset, tmp_path / "r", capsys, ["relu1"], iou_threshold=0.0)
        assert "relabeling" in err
        summary = json.loads((tmp_path / "r" / "summary.json").read_text())
        assert list(summary["layers"]) == LAYERS
        for layer in LAYERS:  # every finished layer survives, relabeled at the new threshold
            assert (tmp_path / "r" / layer / "iou.npz").exists()
            assert summary["layers"][layer]["iou_threshold"] == 0.0
            assert summary["layers"][layer]["detectors"] == int((first[layer].best_iou > 0.0).sum())
        third, err = self.run(dataset, tmp_path / "r", capsys, iou_threshold=0.0)
        assert "up to date" in err  # the rewritten run still holds all three layers
        np.testing.assert_array_equal(first["conv3"].iou, third["conv3"].iou)

    def test_formulas_for_a_layer_subset_keep_the_other_layers(self, dataset, tmp_path, capsys):
        self.run(dataset, tmp_path / "r", capsys)
        self.run_subset(dataset, tmp_path / "r", capsys, ["relu2"], formula_length=2, beam=3)
        summary = json.loads((tmp_path / "r" / "summary.json").read_text())
        assert list(summary["layers"]) == LAYERS
        assert "formulas" in summary["layers"]["relu2"] and "formulas" not in summary["layers"]["relu1"]
        assert all((tmp_path / "r" / layer / "units.csv").exists() for layer in LAYERS)

    def run_subset(self, dataset, out, capsys, layers, **kw):
        params = dict(batch_size=4, workers=0, progress=False, min_category_images=0)
        params.update(kw)
        result = netdissect.dissect(TinyNet(), layers, dataset, out=out, **params)
        return result, capsys.readouterr().err

    @pytest.mark.parametrize("change, what", [
        ({"quantile": 0.01}, "parameters.quantile"),
        ({"upsample": "rf"}, "parameters.upsample"),
        ({"top_k": 3}, "parameters.top_k"),
        ({"model": "other weights"}, "model.weights_digest"),
        ({"mean": (0.5, 0.5, 0.5)}, "model.mean"),
        ({"categories": ["object", "color"]}, "parameters.categories"),
    ])
    def test_changed_input_recomputes(self, dataset, tmp_path, capsys, change, what):
        self.run(dataset, tmp_path / "r", capsys)
        change = dict(change)
        if change.pop("model", None):
            change["model"] = TinyNet(seed=99)
        result, err = self.run(dataset, tmp_path / "r", capsys, **change)
        assert "recomputing" in err and what in err
        saved = np.load(tmp_path / "r" / "conv3" / "iou.npz")["iou"]
        np.testing.assert_array_equal(saved, result["conv3"].iou)

    def test_new_layer_recomputes(self, dataset, tmp_path, capsys):
        out = tmp_path / "r"
        netdissect.dissect(TinyNet(), ["relu1"], dataset, out=out, workers=0, progress=False,
                           min_category_images=0)
        capsys.readouterr()
        result, err = self.run(dataset, out, capsys)
        assert "recomputing" in err and "new layers relu2, conv3" in err
        assert list(json.loads((out / "summary.json").read_text())["layers"]) == LAYERS

    def test_subset_of_layers_is_reused(self, dataset, tmp_path, capsys):
        out = tmp_path / "r"
        first, _ = self.run(dataset, out, capsys)
        subset = netdissect.dissect(TinyNet(), ["conv3"], dataset, out=out, workers=0, progress=False,
                                    min_category_images=0)
        assert "up to date" in capsys.readouterr().err
        np.testing.assert_array_equal(subset["conv3"].iou, first["conv3"].iou)

    def test_new_package_version_recomputes(self, dataset, tmp_path, capsys, monkeypatch):
        self.run(dataset, tmp_path / "r", capsys)
        monkeypatch.setattr(netdissect, "__version__", "99.0")
        _, err = self.run(dataset, tmp_path / "r", capsys)
        assert "recomputing" in err and "netdissect" in err

    def test_changed_dataset_recomputes(self, dataset, tmp_path, capsys):
        import shutil
        copy = tmp_path / "data"
        shutil.copytree(dataset, copy)
        self.run(copy, tmp_path / "r", capsys)
        lines = (copy / "index.csv").read_text().splitlines()
        (copy / "index.csv").write_text("\n".join(lines[:-1]) + "\n")  # one image fewer
        result, err = self.run(copy, tmp_path / "r", capsys)
        assert "recomputing" in err and "dataset.index_digest" in err
        assert result.images == 47
        assert json.loads((tmp_path / "r" / "summary.json").read_text())["images"] == 47


def test_unwritable_output_is_an_error_before_work(dataset, tmp_path):
    if os.geteuid() == 0:
        target = Path("/proc/netdissect-out")  # not creatable, even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "run"
    with pytest.raises(netdissect.RunError, match="not writable"):
        netdissect.dissect(TinyNet(), LAYERS, dataset, out=target, workers=0, progress=False)


def test_full_disk_is_an_error_before_work(dataset, tmp_path, monkeypatch):
    import shutil as _shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(_shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9, 1000))
    with pytest.raises(netdissect.RunError, match="MiB free"):
        netdissect.dissect(TinyNet(), LAYERS, dataset, out=tmp_path / "run", workers=0, progress=False)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_recompute_leaves_no_stale_layer_results(dataset, tmp_path):
    out = tmp_path / "r"
    netdissect.dissect(TinyNet(), ["relu1", "conv3"], dataset, out=out, workers=0, progress=False,
                       min_category_images=0)
    assert (out / "relu1" / "iou.npz").exists()
    netdissect.dissect(TinyNet(), ["relu2"], dataset, out=out, workers=0, progress=False,
                       min_category_images=0, quantile=0.01)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["layers"]) == ["relu2"]
    assert not (out / "relu1").exists() and not (out / "conv3").exists()


def test_failed_write_leaves_no_finished_looking_run(dataset, tmp_path, monkeypatch):
    from netdissect.runs import files
    out = tmp_path / "r"
    netdissect.dissect(TinyNet(), LAYERS, dataset, out=out, workers=0, progress=False, min_category_images=0)
    real = files.atomic_save_npz

    def failing(path, **arrays):
        if path.name == "topk.npz" and path.parent.name == "conv3":
            raise netdissect.RunError(f"{path}: cannot write (No space left on device)")
        return real(path, **arrays)

    monkeypatch.setattr(files, "atomic_save_npz", failing)
    with pytest.raises(netdissect.RunError, match="No space"):
        netdissect.dissect(TinyNet(), LAYERS, dataset, out=out, workers=0, progress=False,
                           min_category_images=0, force=True)
    assert not (out / "summary.json").exists()


def test_two_runs_cannot_write_the_same_directory(dataset, tmp_path):
    from netdissect.runs import RunDirectory
    holder = RunDirectory(tmp_path / "r", manifest={})
    try:
        with pytest.raises(netdissect.RunError, match="another netdissect process"):
            netdissect.dissect(TinyNet(), LAYERS, dataset, out=tmp_path / "r", workers=0, progress=False)
    finally:
        holder.release()
    netdissect.dissect(TinyNet(), LAYERS, dataset, out=tmp_path / "r", workers=0, progress=False,
                       min_category_images=0)
    assert (tmp_path / "r" / "summary.json").exists()


def counting_tiny_net(stop_after=None):
    """TinyNet (same name and weights: the same manifest) that counts its forward calls and,
    with ``stop_after``, is interrupted on the call after that many."""
    calls = [0]

    def forward(self, x):
        calls[0] += 1
        if stop_after is not None and calls[0] > stop_after:
            raise KeyboardInterrupt
        return TinyNet.forward(self, x)
    return type("TinyNet", (TinyNet,), {"forward": forward})(), calls


def test_the_second_pass_resumes_from_its_own_checkpoint(tmp_path, monkeypatch, capsys):
    """Two-pass thresholds, interrupted in the second pass: the rerun starts where that pass
    stopped (no image of the first pass is seen again) and writes the uninterrupted run's bytes."""
    from netdissect.stats.memory import FORCE_TWO_PASS
    monkeypatch.setenv(FORCE_TWO_PASS, "1")
    data = make_dataset(tmp_path / "data", n_images=16, size=32, seed=2)
    params = dict(batch_size=4, workers=0, progress=False, min_category_images=0, checkpoint_every=1)
    model, whole_calls = counting_tiny_net()
    netdissect.dissect(model, LAYERS, data, out=tmp_path / "whole", **params)
    total = whole_calls[0]            # the probes, 4 batches of pass 1, 4 of pass 2
    model, _ = counting_tiny_net(stop_after=total - 2)
    with pytest.raises(KeyboardInterrupt):
        netdissect.dissect(model, LAYERS, data, out=tmp_path / "run", **params)
    state = statefile.load(tmp_path / "run" / "checkpoint.npz")
    assert state["phase"] == 2 and state["done"] == 8   # 2 of pass 2's 4 batches were done
    capsys.readouterr()
    model, resumed_calls = counting_tiny_net()
    netdissect.dissect(model, LAYERS, data, out=tmp_path / "run", **params)
    assert "resuming from checkpoint after 8 images of the second pass" in capsys.readouterr().err
    assert resumed_calls[0] == total - 6                # neither pass 1's 4 batches nor pass 2's first 2
    assert_same_run(run_files(tmp_path / "whole", LAYERS), run_files(tmp_path / "run", LAYERS))


def test_a_checkpoint_made_with_other_two_pass_layers_starts_over(tmp_path, monkeypatch, capsys):
    """A rerun whose memory plan puts other layers on two passes cannot use the checkpoint's
    states: it says so in one line and starts over, with the numbers of a plain run."""
    from netdissect.stats.memory import FORCE_TWO_PASS
    data = make_dataset(tmp_path / "data", n_images=16, size=32, seed=2)
    params = dict(batch_size=4, workers=0, progress=False, min_category_images=0, checkpoint_every=1)
    monkeypatch.setenv(FORCE_TWO_PASS, "1")
    model, _ = counting_tiny_net(stop_after=9)
    with pytest.raises(KeyboardInterrupt):
        netdissect.dissect(model, LAYERS, data, out=tmp_path / "run", **params)
    monkeypatch.delenv(FORCE_TWO_PASS)
    capsys.readouterr()
    netdissect.dissect(TinyNet(), LAYERS, data, out=tmp_path / "run", **params)
    assert "which layers take two passes (--memory-budget)): starting over" in capsys.readouterr().err
    netdissect.dissect(TinyNet(), LAYERS, data, out=tmp_path / "plain", **params)
    assert_same_run(run_files(tmp_path / "plain", LAYERS), run_files(tmp_path / "run", LAYERS))


def test_result_archives_store_what_deflate_barely_shrinks(tmp_path):
    """Large noisy float arrays are stored, others deflated; np.load reads both, and the same
    arrays give the same bytes."""
    import zipfile

    from netdissect.atomic import atomic_save_npz
    noisy = np.random.default_rng(0).standard_normal((64, 16, 7, 7)).astype(np.float16)    # 100 KB
    noisy = np.concatenate([noisy] * 6)                                                      # 600 KB
    zeros = np.zeros_like(noisy)
    small = noisy[:1]
    for name in ("a.npz", "b.npz"):
        atomic_save_npz(tmp_path / name, noisy=noisy, zeros=zeros, small=small)
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        methods = {i.filename: i.compress_type for i in archive.infolist()}
    assert methods == {"noisy.npy": zipfile.ZIP_STORED, "zeros.npy": zipfile.ZIP_DEFLATED,
                       "small.npy": zipfile.ZIP_DEFLATED}
    with np.load(tmp_path / "a.npz") as z:
        assert np.array_equal(z["noisy"], noisy) and np.array_equal(z["zeros"], zeros)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
