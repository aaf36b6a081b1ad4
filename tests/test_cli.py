"""The command line end to end, on generated data, in subprocesses (as a user runs it)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent


def run_cli(*args, check=True, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "netdissect", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"netdissect {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "data"
    run_cli("data", "synthetic", "--out", out, "--images", 24, "--size", 64, "--seed", 5, "--quiet")
    return out


def test_dissect_end_to_end(synthetic, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("dissect", "--model", "engine_data:tiny_net", "--layer", "relu1", "--layer", "conv3",
                   "--dataset", synthetic, "--out", out, "--batch-size", 5, "--workers", 0, "--quiet",
                   "--no-report", "--min-category-images", 0)
    assert "Unique detectors per category" in proc.stdout
    assert "relu1" in proc.stdout and "conv3" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert summary["images"] == 24
    assert set(summary["layers"]) == {"relu1", "conv3"}
    for name, units in (("relu1", 6), ("conv3", 5)):
        layer = summary["layers"][name]
        assert layer["units"] == units
        assert layer["detectors"] <= units
        assert set(layer["unique_per_category"]) == set(summary["categories"])
        rows = list(csv.DictReader(open(out / name / "units.csv")))
        assert [int(r["unit"]) for r in rows] == list(range(units))
        for cat in summary["categories"]:
            assert f"{cat}_label" in rows[0] and f"{cat}_iou" in rows[0]
        thresholds = np.load(out / name / "thresholds.npy")
        assert thresholds.dtype == np.float32 and thresholds.shape == (units,)
        iou = np.load(out / name / "iou.npz")
        assert iou["iou"].shape == (units, len(iou["labels"]))
        best = iou["iou"].max(axis=1)
        np.testing.assert_allclose([float(r["iou"]) for r in rows], best, atol=1e-6)
        topk = np.load(out / name / "topk.npz")
        assert topk["image_index"].shape == (units, 8)
        assert np.all(np.diff(topk["score"], axis=1) <= 0)
    manifest = config["manifest"]
    assert manifest["model"]["spec"] == "engine_data:tiny_net"
    assert len(manifest["model"]["weights_digest"]) == 16
    assert manifest["dataset"]["index_digest"]
    assert config["config"]["layers"] == ["relu1", "conv3"]
    assert not (out / "checkpoint.npz").exists() and not (out / ".scratch").exists()


def test_layers_lists_names_and_shapes():
    proc = run_cli("layers", "--model", "engine_data:tiny_net", "--size", 32, 32)
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "1 x 6 x 16 x 16" in lines["conv1"]
    assert "1 x 5 x 4 x 4" in lines["conv3"]
    assert "cannot be dissected" in lines["head"]


def test_unknown_layer_suggests_close_names(synthetic, tmp_path):
    proc = run_cli("dissect", "--model", "engine_data:tiny_net", "--layer", "conv_3", "--dataset", synthetic,
                   "--out", tmp_path / "x", "--quiet", check=False)
    assert proc.returncode == 1
    assert "no layer 'conv_3'" in proc.stderr and "conv3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_non_spatial_layer_is_a_clear_error(synthetic, tmp_path):
    proc = run_cli("dissect", "--model", "engine_data:tiny_net", "--layer", "head", "--dataset", synthetic,
                   "--out", tmp_path / "x", "--quiet", check=False)
    assert proc.returncode == 1
    assert "not N x K x h x w" in proc.stderr and "'head'" in proc.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    proc = run_cli("dissect", "--model", "engine_data:tiny_net", "--layer", "conv3", "--dataset",
                   tmp_path / "nope", "--out", tmp_path / "x", "--quiet", check=False)
    assert proc.returncode == 1
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("export", ["script", "trace"])
def test_torchscript_model_gives_the_same_numbers_as_python(synthetic, tmp_path, export):
    import torch
    from engine_data import TinyNet
    model = TinyNet().eval()
    exported = torch.jit.script(model) if export == "script" else torch.jit.trace(model, torch.rand(1, 3, 64, 64))
    path = tmp_path / "tiny.pt"
    torch.jit.save(exported, str(path))
    common = ["--layer", "relu2", "--layer", "conv3", "--dataset", synthetic, "--batch-size", 6,
              "--workers", 0, "--quiet", "--no-report", "--min-category-images", 0]
    run_cli("dissect", "--model", path, "--out", tmp_path / "ts", *common)
    run_cli("dissect", "--model", "engine_data:tiny_net", "--out", tmp_path / "py", *common)
    for layer in ("relu2", "conv3"):
        a = np.load(tmp_path / "ts" / layer / "iou.npz")["iou"]
        b = np.load(tmp_path / "py" / layer / "iou.npz")["iou"]
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.load(tmp_path / "ts" / layer / "thresholds.npy"),
                                      np.load(tmp_path / "py" / layer / "thresholds.npy"))


def test_check_command_reports_every_problem(synthetic, tmp_path):
    import shutil
    ok = run_cli("check", synthetic, "--quiet")
    assert ok.returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(synthetic, broken)
    first, second = sorted((broken / "images").glob("*_object.png"))[:2]
    first.unlink()
    second.write_bytes(second.read_bytes()[:30])
    proc = run_cli("check", broken, "--quiet", check=False)
    assert proc.returncode == 1
    assert first.name in proc.stdout and second.name in proc.stdout
