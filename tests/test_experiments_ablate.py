"""netdissect ablate: zeroing units, exact accuracies on a planted model, beside a random control."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_experiments_common import dissected_scene_run, identity_norm, scene_net

from netdissect.errors import DatasetError, NetDissectError
from netdissect.experiments import add_commands
from netdissect.experiments.ablate import control_sets, run_ablation, select_units, zeroed
from netdissect.models.specs import load_model


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    return dissected_scene_run(tmp_path_factory.mktemp("ablate"), images=16)


def loaded():
    return load_model(scene_net(), **identity_norm())


def test_object_units_carry_the_scene(dissected, tmp_path):
    data, run = dissected
    info = run_ablation(loaded(), "units", data, tmp_path / "a", run, category="object", controls=3, device="cpu")
    assert info["selection"]["units"] == [0, 1]
    assert [s["label"] for s in info["selection"]["labels"]] == ["car", "tree"]
    assert info["baseline_accuracy"] == 1.0
    # both object units zeroed: every logit is 0, argmax picks class 0 (street): half the images
    assert info["ablated_accuracy"] == 0.5 and info["ablated_change"] == -0.5
    # the controls zero two of the other units (wood and silent ones): nothing changes
    assert info["control_accuracies"] == [1.0, 1.0, 1.0] and info["control_change"] == 0.0
    assert all(set(c["units"]).isdisjoint({0, 1}) for k, c in info["conditions"].items() if k.startswith("control"))
    per_class = info["conditions"]["ablated"]["per_class"]
    assert per_class == {"street": 1.0, "forest": 0.0}
    for name in ("ablate.csv", "ablate.json", "ablate.svg", "ablate.png"):
        assert (tmp_path / "a" / name).exists(), name
    lines = (tmp_path / "a" / "ablate.csv").read_text().splitlines()
    assert lines[0] == "condition,units_zeroed,accuracy,change,accuracy_street,accuracy_forest,units"
    assert lines[2].startswith("ablated,2,0.5,-0.5,1,0,0 1")


def test_label_top_random_and_explicit_choices(dissected, tmp_path):
    data, run = dissected
    info = run_ablation(loaded(), "units", data, tmp_path / "t", run, label="tree", controls=0, device="cpu")
    assert info["selection"]["units"] == [1] and info["ablated_accuracy"] == 0.5
    assert info["control_accuracy"] is None
    info = run_ablation(loaded(), "units", data, tmp_path / "c", run, label="car", controls=1, device="cpu")
    assert info["ablated_accuracy"] == 1.0  # street still wins the tie at 0 against forest's 0
    info = run_ablation(loaded(), "units", data, None, run, top=2, controls=1, device="cpu")
    assert info["selection"]["units"] == [0, 1] and info["out"].endswith("ablate/top_2")
    info = run_ablation(loaded(), "units", data, tmp_path / "u", None, units=[2, 3, 4, 5], controls=0, device="cpu")
    assert info["ablated_accuracy"] == 1.0


def test_selection_rules():
    class Layer:
        name, units, iou_threshold = "L", 4, 0.04
        best_iou = np.array([0.1, 0.3, 0.0, 0.3])

        def unit_labels(self):
            return [("car", "object", 0.1), ("grass", "material", 0.3), ("sky", "scene", 0.0),
                    ("tree", "object", 0.3)]
    assert select_units(4, Layer(), category="object") == ([0, 3], "category_object")
    assert select_units(4, Layer(), top=2) == ([1, 3], "top_2")
    assert select_units(4, None, random=2, seed=1) == select_units(4, None, random=2, seed=1)
    with pytest.raises(NetDissectError, match="no detector of category 'scene'.*material, object"):
        select_units(4, Layer(), category="scene")
    with pytest.raises(NetDissectError, match="pass --run"):
        select_units(4, None, top=2)
    with pytest.raises(NetDissectError, match="cannot choose 5 units"):
        select_units(4, None, random=5)
    with pytest.raises(NetDissectError, match="unit 7 does not exist"):
        select_units(4, None, explicit=[7])
    with pytest.raises(NetDissectError, match="dissected with 4 units"):
        select_units(6, Layer(), top=1)
    sets = control_sets(10, [1, 2, 3], 4, seed=0)
    assert len(sets) == 4 and all(len(s) == 3 and not set(s) & {1, 2, 3} for s in sets)


def test_zeroed_hook_is_removed():
    net = scene_net()
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, :2, :2] = 3 / 255  # concept 0 (car)
    with zeroed(net, "units", [0]):
        assert net(x)[0, 0] == 0
    assert net(x)[0, 0] > 0 and not net.units._forward_hooks


def test_image_folder(tmp_path):
    """ImageFolder layout: class folders named by the model's class names."""
    for cls, concept in (("street", 0), ("forest", 1)):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        for i in range(3):
            rgb = np.zeros((16, 16, 3), dtype=np.uint8)
            rgb[2 * i:2 * i + 2, 4:6, 0] = 3 * (concept + 1)
            Image.fromarray(rgb).save(tmp_path / "folder" / cls / f"{i}.png")
    info = run_ablation(loaded(), "units", tmp_path / "folder", tmp_path / "o", None, units=[1], controls=0,
                        size=0, device="cpu")
    assert info["baseline_accuracy"] == 1.0 and info["ablated_accuracy"] == 0.5
    assert "model's class names" in info["dataset"]
    (tmp_path / "bad" / "x").mkdir(parents=True)
    with pytest.raises(DatasetError, match="cannot map its 1 class folders"):
        run_ablation(loaded(), "units", tmp_path / "bad", tmp_path / "o2", None, units=[1], size=0)


def test_command(dissected, tmp_path, capsys):
    data, run = dissected
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["ablate", "--model", "test_experiments_common:scene_net", "--layer", "units",
                              "--run", str(run), "--dataset", str(data), "--category", "object",
                              "--mean", "0", "0", "0", "--std", "1", "1", "1", "--out", str(tmp_path / "c"),
                              "--device", "cpu"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "random control" in out and "0.500" in out
    assert json.loads((tmp_path / "c" / "ablate.json").read_text())["ablated_accuracy"] == 0.5


def test_experiment_pages_appear_in_the_run_report(dissected, capsys):
    from netdissect.report import render_report
    data, run = dissected
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["ablate", "--model", "test_experiments_common:scene_net", "--layer", "units",
                              "--run", str(run), "--dataset", str(data), "--top", "1",
                              "--mean", "0", "0", "0", "--std", "1", "1", "1", "--device", "cpu"])
    assert args.func(args) == 0
    pages = list((run / "ablate").rglob("experiment.html"))
    assert len(pages) == 1
    page = pages[0].read_text()
    assert "<svg" in page and "ablate.csv" in page and 'src="http' not in page
    index = render_report(run).read_text()
    assert "Experiments on this run" in index
    copied = list((run / "report" / "experiments").glob("*.html"))
    assert len(copied) == 1 and copied[0].read_text() == page
