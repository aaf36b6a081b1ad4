"""Sharded runs (torchrun, gloo on CPU) write the same bytes as one process, and resume per rank."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_data import make_dataset

import netdissect
from netdissect.engine.distributed import shard_range
from netdissect.stats.memory import FORCE_TWO_PASS

TESTS = Path(__file__).parent
LAYERS = ["relu1", "relu2", "conv3"]
# files whose every byte must agree (summary.json and config.json differ by the timing and date)
SAME_BYTES = ["thresholds.npy", "iou.npz", "topk.npz", "units.csv"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 27 images in batches of 4: 7 batches, split 3/4 over 2 ranks and 2/2/3 over 3
    return make_dataset(tmp_path_factory.mktemp("dist") / "data", n_images=27, size=32, seed=11)


def env(tag: str = "") -> dict:
    return dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                NETDISSECT_TEST_TAG=tag, OMP_NUM_THREADS="1")


def dissect_args(dataset, out, model="engine_data:tiny_net", batch=4, *extra):
    args = ["dissect", "--model", model, "--dataset", str(dataset), "--out", str(out),
            "--batch-size", str(batch), "--workers", "0", "--quiet", "--no-report",
            "--min-category-images", "0", "--iou-threshold", "0.01"]
    for layer in LAYERS:
        args += ["--layer", layer]
    return args + list(extra)


def torchrun(nproc: int, args, tag: str = "", **kwargs):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(nproc), "-m", "netdissect"] + args
    return subprocess.Popen(command, env=env(tag), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def finished(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def single(dataset, out, model="engine_data:tiny_net", **params):
    params = {"batch_size": 4, "workers": 0, "progress": False, "min_category_images": 0,
              "iou_threshold": 0.01, **params}
    return netdissect.dissect(model, LAYERS, dataset, out=out, **params)


def assert_same_bytes(a: Path, b: Path) -> None:
    for layer in LAYERS:
        for name in SAME_BYTES:
            assert (a / layer / name).read_bytes() == (b / layer / name).read_bytes(), f"{layer}/{name}"
    import json
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    sa.pop("seconds"), sb.pop("seconds")
    assert sa == sb
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    ca.pop("written"), cb.pop("written")
    assert ca == cb


def test_shards_are_whole_batches_and_cover_the_images_once():
    for n, batch, world in [(27, 4, 2), (27, 4, 3), (5, 4, 3), (100, 7, 4), (1, 1, 2)]:
        shards = [shard_range(n, batch, r, world) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(n))
        assert all(s.start % batch == 0 for s in shards)
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= batch


def test_torchrun_two_processes_write_the_bytes_of_one(dataset, tmp_path):
    """The command of the README, with --limit (uneven shards: 3 and 2 batches, the last short)."""
    proc = torchrun(2, dissect_args(dataset, tmp_path / "two", "engine_data:tiny_net", 4, "--limit", "19"))
    reference = single(dataset, tmp_path / "one", limit=19)
    out, _ = finished(proc)
    assert "Unique detectors" in out and out.count("Unique detectors") == 1  # rank 0 prints
    assert_same_bytes(tmp_path / "one", tmp_path / "two")
    assert not list((tmp_path / "two").glob("checkpoint*")) and not (tmp_path / "two" / ".scratch").exists()
    assert reference.images == 19


@pytest.mark.parametrize("nproc, upsample, two_pass", [(3, "rf", True), (3, "bilinear", False)])
def test_three_processes_both_upsamplings_and_the_sketch(dataset, tmp_path, monkeypatch, nproc, upsample,
                                                         two_pass):
    """Uneven shards (2/2/3 batches); every layer's thresholds from the two-pass radix counts, or
    a tiny budget (0.02 MiB) that spills the candidate maps to disk."""
    budget = 0.02
    if two_pass:
        monkeypatch.setenv(FORCE_TWO_PASS, "1")  # the torchrun ranks inherit it
    args = dissect_args(dataset, tmp_path / "many", "engine_data:tiny_net", 4, "--upsample", upsample,
                        "--memory-budget", str(budget))
    proc = torchrun(nproc, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = single(dataset, tmp_path / "one", upsample=upsample, memory_budget_mb=budget)
    finished(proc)
    assert_same_bytes(tmp_path / "one", tmp_path / "many")
    if two_pass:  # the two-pass thresholds are exact: those of the one-pass exact state
        monkeypatch.delenv(FORCE_TWO_PASS)
        assert sum("radix" in w for w in result.warnings) == len(LAYERS)
        exact = single(dataset, None, upsample=upsample)
        for layer in LAYERS:
            np.testing.assert_array_equal(result[layer].thresholds, exact[layer].thresholds)
            np.testing.assert_array_equal(result[layer].iou, exact[layer].iou)


def _worker_pids(tag: str):
    """{rank: pid} of the torchrun workers started with NETDISSECT_TEST_TAG=tag."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"NETDISSECT_TEST_TAG={tag}".encode() in environ:
            for item in environ:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(entry.name)
    return found


def _phase(checkpoint: Path):
    """The pass a checkpoint was saved in (None while it does not exist or is being replaced)."""
    from netdissect.runs import statefile
    try:
        return statefile.load(checkpoint).get("phase", 1)
    except (OSError, statefile.StateFileError):
        return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find a rank's process")
@pytest.mark.parametrize("two_pass", [False, True])
def test_a_killed_rank_resumes_from_its_checkpoint(tmp_path, monkeypatch, two_pass):
    """SIGKILL one rank part-way (in pass 1, or in the second pass of two-pass thresholds):
    torchrun stops the other (which checkpoints on SIGTERM); the same command again resumes both
    shards and writes the bytes of an uninterrupted run."""
    if two_pass:
        monkeypatch.setenv(FORCE_TWO_PASS, "1")  # the torchrun ranks inherit it
    data = make_dataset(tmp_path / "data", n_images=40, size=32, seed=5)
    out = tmp_path / "run"
    args = dissect_args(data, out, "engine_data:slow_tiny_net", 2, "--checkpoint-every", "1")
    tag = uuid.uuid4().hex
    proc = torchrun(2, args, tag=tag, start_new_session=True)
    checkpoint = out / "checkpoint.rank1.npz"
    deadline = time.time() + 120
    while _phase(checkpoint) != (2 if two_pass else 1) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert _phase(checkpoint) == (2 if two_pass else 1), "rank 1 never checkpointed (in that pass)"
    os.kill(_worker_pids(tag)[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (out / "summary.json").exists()
    assert checkpoint.exists()
    _, err = finished(torchrun(2, args))
    assert err.count("resuming from checkpoint") >= 1
    if two_pass:
        assert "of the second pass" in err
    single(data, tmp_path / "one", "engine_data:slow_tiny_net", batch_size=2)
    assert_same_bytes(tmp_path / "one", out)


def test_force_discards_no_checkpoint_before_the_checks_pass(dataset, tmp_path):
    """--force in a sharded run with a layer that does not exist: the run stops with that
    error, and every rank's checkpoint and scratch file is still there."""
    from netdissect.runs import RunDirectory
    out = tmp_path / "run"
    RunDirectory(out, {}).release()   # a run directory of ours, as a killed run leaves it
    kept = [out / "checkpoint.rank0.npz", out / "checkpoint.rank1.npz", out / ".scratch" / "rank1" / "pairs.npz"]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"state")
    args = dissect_args(dataset, out, "engine_data:tiny_net", 4, "--force", "--layer", "no_such_layer")
    proc = torchrun(2, args)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "no_such_layer" in err
    assert all(path.read_bytes() == b"state" for path in kept)
