"""netdissect checkpoints: a series of state_dict files, unique detectors vs step."""
from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch
from test_experiments_common import identity_norm, make_scene_set, scene_net

from netdissect.errors import ModelError, NetDissectError
from netdissect.experiments import add_commands
from netdissect.experiments.checkpoints import assign_steps, expand_checkpoints, parse_step, run_checkpoints

SPEC = "test_experiments_common:scene_net"


@pytest.mark.parametrize("name,step", [("ckpt_step1200.pth", 1200), ("epoch3_step40.pt", 40),
                                       ("model-0005.pth", 5), ("final.pth", None), ("a1b22.tar.gz", 22),
                                       ("resnet18_places365_iter_10000.pth.tar", 10000)])
def test_parse_step(name, step):
    assert parse_step(name) == step


def test_expand_and_steps(tmp_path):
    for n in ("c_10.pth", "c_2.pth", "other.txt"):
        (tmp_path / n).write_bytes(b"x")
    files = expand_checkpoints([str(tmp_path / "c_*.pth")])
    assert [f.name for f in files] == ["c_10.pth", "c_2.pth"]
    assert assign_steps(files) == [10, 2]
    assert assign_steps(files, [5, 6]) == [5, 6]
    with pytest.raises(NetDissectError, match="one step per file"):
        assign_steps(files, [1])
    with pytest.raises(NetDissectError, match="same training step"):
        assign_steps(files, [1, 1])
    with pytest.raises(NetDissectError, match="no integer"):
        assign_steps([tmp_path / "other.txt"])
    with pytest.raises(ModelError, match="matches no checkpoint"):
        expand_checkpoints([str(tmp_path / "*.pt")])
    with pytest.raises(ModelError, match="not found"):
        expand_checkpoints([str(tmp_path / "missing.pth")])


def save_series(folder):
    """Three 'training stages' of the planted model: 0, 1 and 3 planted units switched on."""
    folder.mkdir()
    net = scene_net()
    for step, on in ((0, []), (150, [0]), (3000, [0, 1, 2])):
        with torch.no_grad():
            net.gain.zero_()
            for k in on:
                net.gain[k] = 1.0
        torch.save(net.state_dict(), folder / f"planted_iter{step}.pth")


def test_series_counts_and_reuse(tmp_path, capsys):
    data = make_scene_set(tmp_path / "data", images=8)
    save_series(tmp_path / "ckpt")
    out = tmp_path / "out"
    kw = dict(progress=False, workers=0, min_category_images=1, **identity_norm())
    info = run_checkpoints(SPEC, [str(tmp_path / "ckpt" / "*.pth")], ["units"], data, out, **kw)
    rows = info["rows"]
    assert [r["step"] for r in rows] == [0, 150, 3000]
    assert [r["unique_detectors"] for r in rows] == [0, 1, 3]
    assert [r["unique_per_category"]["object"] for r in rows] == [0, 1, 2]
    assert rows[2]["unique_per_category"]["material"] == 1
    with open(out / "checkpoints.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["step"] for t in table] == ["0", "150", "3000"]
    for name in ("checkpoints.json", "checkpoints.svg", "checkpoints.png", "runs/step_150/summary.json"):
        assert (out / name).exists(), name
    # a second call reuses the finished runs (same manifest), and --force recomputes
    stamp = (out / "runs" / "step_150" / "summary.json").stat().st_mtime_ns
    again = run_checkpoints(SPEC, [str(tmp_path / "ckpt" / "*.pth")], ["units"], data, out, **{**kw, "progress": True})
    assert [r["unique_detectors"] for r in again["rows"]] == [0, 1, 3]
    assert (out / "runs" / "step_150" / "summary.json").stat().st_mtime_ns == stamp
    assert "reusing the finished run" in capsys.readouterr().err


def test_command(tmp_path, capsys):
    data = make_scene_set(tmp_path / "data", images=8)
    save_series(tmp_path / "ckpt")
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    files = [str(tmp_path / "ckpt" / "planted_iter0.pth"), str(tmp_path / "ckpt" / "planted_iter3000.pth")]
    args = parser.parse_args(["checkpoints", "--model", SPEC, "--checkpoints", *files, "--steps", "1", "2",
                              "--layer", "units", "--dataset", str(data), "--out", str(tmp_path / "o"),
                              "--mean", "0", "0", "0", "--std", "1", "1", "1", "--workers", "0",
                              "--min-category-images", "1", "--quiet"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "step" in out and "unique" in out
    info = json.loads((tmp_path / "o" / "checkpoints.json").read_text())
    assert [r["unique_detectors"] for r in info["rows"]] == [0, 3]


def test_wrong_architecture_is_named(tmp_path):
    data = make_scene_set(tmp_path / "data", images=4)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "bad_1.pth")
    with pytest.raises(ModelError, match="bad_1.pth: checkpoint does not match"):
        run_checkpoints(SPEC, [tmp_path / "bad_1.pth"], ["units"], data, tmp_path / "o", progress=False,
                        workers=0, **identity_norm())
