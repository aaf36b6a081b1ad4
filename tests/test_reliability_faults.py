"""Issue 8, cases 4 and 8 and the fault test: runs killed with ``kill -9`` while data-loader
workers are on, at random points, resume to the uninterrupted numbers without being blocked.

The model is a random init (``--weights none``, a factory that draws from the global random
stream), so a resume also proves the init is seeded: an unseeded model would differ after
every restart and the run would start over each time.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_data import UnseededNet, assert_same_run, make_dataset, run_files
from torch import nn

TESTS = Path(__file__).parent
LAYERS = ["relu1", "conv3"]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kill -9 and /proc: Linux")


class SlowUnseededNet(UnseededNet):
    """A random init from the global stream, slow enough per batch to be killed mid-pass."""

    def forward(self, x):
        time.sleep(0.1)
        return super().forward(x)


def slow_unseeded_net() -> nn.Module:
    return SlowUnseededNet()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("faults") / "data", n_images=40, size=32, seed=11)


def command(dataset, out, workers=2):
    args = [sys.executable, "-m", "netdissect", "dissect", "--model", "test_reliability_faults:slow_unseeded_net",
            "--weights", "none", "--dataset", str(dataset), "--out", str(out), "--batch-size", "4",
            "--workers", str(workers), "--quiet", "--no-report", "--checkpoint-every", "1",
            "--min-category-images", "0", "--memory-budget", "0.02"]
    for layer in LAYERS:
        args += ["--layer", layer]
    return args


def env():
    return dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def children(pid: int) -> list:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def checkpointed(out: Path) -> bool:
    return bool(list(out.glob("checkpoint.*")))


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(command(dataset, out, workers=0), check=True, env=env(), timeout=300)
    return run_files(out, LAYERS, with_summary=False)


def test_4_kill9_with_workers_never_blocks_the_rerun(dataset, tmp_path, uninterrupted):
    from netdissect.runs import RunDirectory
    out = tmp_path / "run"
    proc = subprocess.Popen(command(dataset, out), env=env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpointed(out):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.3)  # a batch or two more
    workers = children(proc.pid)
    assert workers, "the run has data-loader workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    RunDirectory(out, manifest={}).release()  # at once: nothing holds the directory any more
    deadline = time.time() + 3
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), "orphaned workers outlived the run"
    resumed = subprocess.run(command(dataset, out), env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint after" in resumed.stderr  # the seeded random init resumes (case 8)
    assert_same_run(run_files(out, LAYERS, with_summary=False), uninterrupted)


def test_killed_at_random_points_resumes_to_identical_results(dataset, tmp_path, uninterrupted):
    """Two kill -9s at random moments (start-up, pass, writing results), then one clean rerun."""
    rng = random.Random(8)
    out = tmp_path / "run"
    for _ in range(2):
        proc = subprocess.Popen(command(dataset, out), env=env(), stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 5.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if (out / "summary.json").exists():
            break  # it finished before the kill: a finished run must be complete
    final = subprocess.run(command(dataset, out), env=env(), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert "another netdissect process" not in final.stderr
    assert_same_run(run_files(out, LAYERS, with_summary=False), uninterrupted)
    assert not (out / "checkpoint.npz").exists() and not (out / ".scratch").exists()
