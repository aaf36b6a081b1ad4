"""The README's multi-machine command, run as two torchrun launchers (--nnodes 2, --node-rank 0
and 1, a static rendezvous at 127.0.0.1) on this one machine, gloo on CPU: the bytes of one
process, whether both "machines" share --out or each has its own, and a killed node resumes."""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from engine_data import make_dataset, run_files
from test_distributed import LAYERS, SAME_BYTES, _worker_pids, dissect_args, env, single

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
    pytest.mark.skipif(importlib.util.find_spec("torch.distributed.run") is None,
                       reason="torchrun (torch.distributed.run) is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(args_of_node, nproc: int = 1, tag: str = "") -> list:
    """One torchrun launcher per "machine", as the README runs them; ``args_of_node(n)`` is the
    netdissect command line of node n."""
    port = free_port()
    procs = []
    for node in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                   "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(port),
                   "-m", "netdissect"] + args_of_node(node)
        procs.append(subprocess.Popen(command, env=env(tag), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    return procs


def outcomes(procs, timeout=180) -> list:
    """(returncode, stdout, stderr) of each launcher; none is left running."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return results


def succeeded(procs) -> list:
    results = outcomes(procs)
    for node, (code, _, err) in enumerate(results):
        assert code == 0, f"node {node}: {err[-3000:]}"
    return results


def assert_same_bytes(one: Path, run: Path) -> None:
    """The result files byte for byte (summary.json without its timing, as run_files reads it)."""
    for layer in LAYERS:
        for name in SAME_BYTES:
            assert (one / layer / name).read_bytes() == (run / layer / name).read_bytes(), f"{layer}/{name}"
    assert run_files(one, LAYERS)["summary"] == run_files(run, LAYERS)["summary"]


def leftovers(out: Path) -> list:
    return sorted(p.name for p in out.glob("checkpoint*")) + sorted(str(p) for p in out.glob(".scratch/*"))


def test_two_nodes_of_two_processes_sharing_out_write_the_bytes_of_one(tmp_path):
    """4 ranks (LOCAL_RANK 0,1 on each node, RANK 0-3) over 27 images in batches of 4: shards of
    1/2/2/2 batches, the last one short; both nodes name the same --out (a shared filesystem)."""
    data = make_dataset(tmp_path / "data", n_images=27, size=32, seed=11)
    shared = tmp_path / "shared"
    procs = launch_nodes(lambda node: dissect_args(data, shared), nproc=2)
    single(data, tmp_path / "one")
    (_, out0, _), (_, out1, _) = succeeded(procs)
    assert out0.count("Unique detectors") == 1 and "Unique detectors" not in out1  # RANK 0 reports
    assert_same_bytes(tmp_path / "one", shared)
    assert leftovers(shared) == [] and not (shared / ".scratch").exists()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find a rank's process")
def test_own_out_per_node_a_killed_node_resumes_and_only_node_0_holds_results(tmp_path):
    """Each node its own --out (no shared filesystem): rank 1 claims and checkpoints into node 1's.
    SIGKILL node 1's worker part-way: node 0's rank finds the peer gone at the merge, and both
    launchers fail with node 0's checkpoint covering its whole shard. The same two commands again
    resume each rank from its own node's checkpoint and write the bytes of one process, on node 0
    only; node 1's --out is left with no results and no checkpoint."""
    data = make_dataset(tmp_path / "data", n_images=40, size=32, seed=5)
    outs = [tmp_path / "node0", tmp_path / "node1"]

    def args(node):
        return dissect_args(data, outs[node], "engine_data:slow_tiny_net", 2, "--checkpoint-every", "1")

    tag = uuid.uuid4().hex
    procs = launch_nodes(args, tag=tag)
    checkpoint = outs[1] / "checkpoint.rank1.npz"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.02)
    assert checkpoint.exists(), "rank 1 never checkpointed into node 1's --out"
    os.kill(_worker_pids(tag)[1], signal.SIGKILL)
    codes = [code for code, _, _ in outcomes(procs, timeout=120)]
    assert codes[0] != 0 and codes[1] != 0
    assert not (outs[0] / "summary.json").exists()
    assert (outs[0] / "checkpoint.rank0.npz").exists() and checkpoint.exists()
    assert not (outs[0] / "checkpoint.rank1.npz").exists() and not (outs[1] / "checkpoint.rank0.npz").exists()

    (_, _, err0), (_, _, err1) = succeeded(launch_nodes(args))
    assert "resuming from checkpoint after" in err0 and "resuming from checkpoint after" in err1
    single(data, tmp_path / "one", "engine_data:slow_tiny_net", batch_size=2)
    assert_same_bytes(tmp_path / "one", outs[0])
    assert leftovers(outs[0]) == [] and not (outs[0] / ".scratch").exists()
    assert sorted(p.name for p in outs[1].iterdir()) == [".netdissect-run"]  # no results, nothing left


def test_a_bad_out_on_node_1_stops_both_nodes_with_its_reason(tmp_path):
    """Node 1's --out is someone's non-empty directory: it is left alone, and node 0 (which
    claimed its own --out) reports node 1's reason instead of a lost connection."""
    data = make_dataset(tmp_path / "data", n_images=8, size=32, seed=3)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    outs = [tmp_path / "node0", theirs]
    results = outcomes(launch_nodes(lambda node: dissect_args(data, outs[node])))
    for node, (code, _, err) in enumerate(results):
        assert code != 0
        assert f"{theirs}: not empty and not a netdissect run directory" in err, f"node {node}: {err[-2000:]}"
    assert "rank 1 of 2 failed" in results[0][2]
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
    assert not (outs[0] / "summary.json").exists()


def test_force_on_a_node_of_its_own_drops_that_ranks_checkpoint(tmp_path):
    """Rank 0 clears every rank's files with --force, but only where it can see them: a rank
    whose --out is its own machine's claims it and drops its own stale checkpoint and scratch."""
    from netdissect import runs
    out = tmp_path / "node1"
    run = runs.RunDirectory(out, {"netdissect": "test"}, force=True, rank=1, world=2)
    assert runs.owns(out)
    stale = [out / "checkpoint.rank1.npz", run.scratch / "relu1.pairs00000.npz"]
    for path in stale:
        path.write_bytes(b"from an earlier run")
    other = out / "checkpoint.rank0.npz"  # not this rank's: left to rank 0
    other.write_bytes(b"rank 0's")
    assert run.load_checkpoint() is None
    assert not any(p.exists() for p in stale) and other.exists()
    run.release()
