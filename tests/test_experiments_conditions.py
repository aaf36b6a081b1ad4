"""netdissect experiment conditions --quick: train, checkpoint, dissect, compare (tiny)."""
from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch

from netdissect.experiments import add_commands
from netdissect.experiments.conditions import (
    CONDITIONS,
    LAST_LAYER,
    SCENES,
    SceneCNN,
    Settings,
    make_conditions,
    run_conditions,
)
from netdissect.experiments.explain import pooled_head


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("conditions") / "exp"
    settings = Settings.quick(images=50, size=32, epochs=1, width=8)
    info = run_conditions(out, settings, progress=False, threads=1)
    return out, settings, info


def test_quick_run_writes_the_comparison(quick):
    out, settings, info = quick
    rows = info["rows"]
    assert {(r["condition"], r["layer"]) for r in rows} == {(c, lay) for c in CONDITIONS for lay in ("relu2", "relu4")}
    widths = {r["condition"]: r["units"] for r in rows if r["layer"] == LAST_LAYER}
    assert widths == {"baseline": 8, "no_dropout": 8, "batchnorm": 8, "wide": 16, "seed1": 8}
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in rows)
    with open(out / "conditions.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 10 and table[0]["condition"] == "baseline"
    assert {"val_accuracy", "unique_detectors", "detector_share", "unique_object"} <= set(table[0])
    for name in ("conditions_relu4.svg", "conditions_relu4.png", "conditions_relu2.png", "training.png",
                 "classes.txt", "dynamics/dynamics.png", "dynamics/dynamics.csv", "data/index.csv",
                 "dissect/wide/summary.json"):
        assert (out / name).exists(), name
    assert (out / "classes.txt").read_text().split() == list(SCENES)
    # checkpoints: initialization and every epoch
    ckpts = sorted(p.name for p in (out / "train" / "seed1" / "ckpt").glob("iter_*.pth"))
    assert len(ckpts) == settings.epochs + 1 and ckpts[0] == "iter_000000.pth"
    assert [r["step"] for r in info["dynamics"]] == [int(c[5:11]) for c in ckpts]
    assert set(info["timings_seconds"]) >= {"data", "train_baseline", "dissect_baseline", "total"}


def test_conditions_differ_as_specified(quick):
    out, settings, info = quick
    conds = make_conditions(8, 0)
    base = torch.load(out / "train" / "baseline" / "ckpt" / "iter_000000.pth")
    other = torch.load(out / "train" / "seed1" / "ckpt" / "iter_000000.pth")
    same = torch.load(out / "train" / "no_dropout" / "ckpt" / "iter_000000.pth")
    assert not torch.equal(base["conv1.weight"], other["conv1.weight"])  # another initialization
    assert torch.equal(base["conv1.weight"], same["conv1.weight"])       # only dropout differs
    assert any(k.startswith("bn1.") for k in torch.load(out / "train" / "batchnorm" / "final.pth"))
    assert conds["no_dropout"].dropout == 0.0 and conds["baseline"].dropout == 0.5


def test_trained_models_work_with_explain_and_ablate(quick, tmp_path):
    from netdissect.experiments.ablate import run_ablation
    from netdissect.models.specs import load_model
    out, settings, info = quick
    cond = make_conditions(settings.width, settings.seed)["baseline"]
    loaded = load_model(cond.build(), checkpoint=out / "train" / "baseline" / "final.pth")
    res = run_ablation(loaded, LAST_LAYER, out / "data", tmp_path / "abl", out / "dissect" / "baseline",
                       random=3, seed=1, controls=1, split="val", device="cpu")
    trained = json.loads((out / "train" / "baseline" / "train.json").read_text())
    assert res["baseline_accuracy"] == pytest.approx(trained["val_accuracy"])  # same images, same model
    assert len(res["selection"]["units"]) == 3
    a, maps, fc_name, fc, logits = pooled_head(SceneCNN(width=8).eval(), LAST_LAYER, torch.rand(1, 3, 32, 32))
    assert fc_name == "fc" and maps.shape[1] == 8


def test_rerun_from_the_command_line_reuses_every_step(quick, capsys):
    out, settings, info = quick
    stamp = (out / "train" / "baseline" / "final.pth").stat().st_mtime_ns
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["experiment", "conditions", "--out", str(out), "--quick", "--images", "50",
                              "--size", "32", "--epochs", "1", "--width", "8", "--conditions", "baseline", "wide",
                              "--threads", "1"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "already trained" in captured.err and "reusing the finished dissection" in captured.err
    assert "baseline" in captured.out and "wide" in captured.out and "accuracy" in captured.out
    assert (out / "train" / "baseline" / "final.pth").stat().st_mtime_ns == stamp
    again = json.loads((out / "conditions.json").read_text())["rows"]
    before = {(r["condition"], r["layer"]): r["unique_detectors"] for r in info["rows"]}
    assert {(r["condition"], r["layer"]): r["unique_detectors"] for r in again} == \
        {k: v for k, v in before.items() if k[0] in ("baseline", "wide")}


def tiny_training_set():
    """24 random 16 px images with 6 classes; the first 8 also serve as the validation set."""
    g = torch.Generator().manual_seed(0)
    train = (torch.randint(0, 256, (24, 16, 16, 3), generator=g, dtype=torch.uint8), torch.randint(0, 6, (24,), generator=g))
    return train, (train[0][:8], train[1][:8])


def trained_whole_and_cut(tmp_path, epochs: int, stop_after: int):
    """One condition trained to the end in tmp_path/whole, and interrupted after epoch
    ``stop_after`` in tmp_path/cut; returns the whole run and what a resume needs."""
    from netdissect.experiments.conditions import train_condition
    train, val = tiny_training_set()
    settings = Settings.quick(epochs=epochs, width=4, batch_size=8)
    cond = make_conditions(4, 0)["baseline"]
    whole = train_condition(cond, settings, "d", train, val, tmp_path / "whole", log=lambda m: None)

    def stop(message):
        if f"epoch {stop_after}/{epochs}" in message:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_condition(cond, settings, "d", train, val, tmp_path / "cut", log=stop)
    return whole, (cond, settings, "d", train, val, tmp_path / "cut")


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    from netdissect.experiments.conditions import train_condition
    whole, again = trained_whole_and_cut(tmp_path, epochs=3, stop_after=2)
    assert (tmp_path / "cut" / "resume.npz").exists() and not (tmp_path / "cut" / "final.pth").exists()
    messages = []
    resumed = train_condition(*again, log=messages.append)
    assert "resuming after epoch 2" in messages[0] and len(messages) == 2
    assert resumed["history"] == whole["history"]
    a, b = torch.load(tmp_path / "whole" / "final.pth"), torch.load(tmp_path / "cut" / "final.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "cut" / "resume.npz").exists()


def test_resume_state_that_parses_but_does_not_fit_is_ignored(tmp_path):
    """A resume.npz with the right key but a foreign model state: one line, training from the start."""
    from netdissect.experiments.conditions import train_condition
    from netdissect.runs import statefile
    whole, again = trained_whole_and_cut(tmp_path, epochs=2, stop_after=1)
    state = statefile.load(tmp_path / "cut" / "resume.npz")
    state["model"] = {"not.a.layer": torch.zeros(3)}
    statefile.save(tmp_path / "cut" / "resume.npz", state)
    messages = []
    restarted = train_condition(*again, log=messages.append)
    assert "ignoring" in messages[0] and "training from the start" in messages[0]
    assert restarted["history"] == whole["history"]
