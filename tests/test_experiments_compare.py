"""netdissect compare: run directories side by side."""
from __future__ import annotations

import argparse
import csv
import json

import pytest

from netdissect.errors import NetDissectError, RunError
from netdissect.experiments import add_commands
from netdissect.experiments.compare import compare_rows, default_names, run_compare


def fake_run(path, layers, model="torchvision:resnet18"):
    path.mkdir(parents=True)
    cats = ["color", "object", "part", "material", "scene", "texture"]
    summary = {"layers": {}, "categories": cats, "images": 100}
    for name, (units, detectors, unique) in layers.items():
        summary["layers"][name] = {
            "units": units, "detectors": sum(detectors.values()), "unique_detectors": sum(unique.values()),
            "unique_per_category": {c: unique.get(c, 0) for c in cats},
            "detectors_per_category": {c: detectors.get(c, 0) for c in cats},
            "iou_threshold": 0.04, "map_shape": [7, 7]}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "config.json").write_text(json.dumps({"manifest": {"model": {"spec": model}}}))
    return path


@pytest.fixture
def runs(tmp_path):
    a = fake_run(tmp_path / "a" / "places", {"layer4": (512, {"object": 30, "scene": 10}, {"object": 12, "scene": 5})})
    b = fake_run(tmp_path / "b" / "places", {"layer3": (256, {"texture": 8}, {"texture": 4}),
                                             "layer4": (512, {"object": 5, "color": 1}, {"object": 3, "color": 1})},
                 model="torchvision:alexnet")
    return a, b


def test_rows_and_files(runs, tmp_path):
    a, b = runs
    out = tmp_path / "cmp"
    result = run_compare([a, b], out, names=["resnet", "alexnet"])
    rows = result["rows"]
    assert [r["name"] for r in rows] == ["resnet", "alexnet:layer3", "alexnet:layer4"]
    assert rows[0]["detector_share"] == pytest.approx(40 / 512)
    assert rows[0]["unique_detectors"] == 17
    assert result["categories"][:2] == ["object", "scene"]
    with open(out / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert table[0]["unique_object"] == "12" and table[0]["unique_scene"] == "5"
    assert table[2]["detectors_color"] == "1" and table[2]["model"] == "torchvision:alexnet"
    for name in ("compare.csv", "compare.json", "compare.svg", "compare.png"):
        assert (out / name).stat().st_size > 0
    assert "<svg" in (out / "compare.svg").read_text()[:500]


def test_layer_filter_and_default_names(runs):
    a, b = runs
    assert default_names([a, b]) == ["a/places", "b/places"]
    rows = compare_rows([a, b], layers=["layer4"])
    assert [r["name"] for r in rows] == ["a/places", "b/places"]
    with pytest.raises(RunError, match="none of the layers"):
        compare_rows([a], layers=["layer3"])


def test_errors_name_the_problem(runs, tmp_path):
    a, _ = runs
    with pytest.raises(NetDissectError, match="one name per run"):
        compare_rows([a], names=["x", "y"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunError, match="summary.json: not found"):
        compare_rows([empty])
    with pytest.raises(RunError, match="not a directory"):
        compare_rows([tmp_path / "missing"])


def test_command_prints_the_table(runs, tmp_path, capsys):
    a, b = runs
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["compare", str(a), str(b), "--names", "r", "x", "--layer", "layer4",
                              "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "unique" in text and "r " in text and (tmp_path / "o" / "compare.png").exists()


def test_real_run_directory(tmp_path):
    from engine_data import TinyNet, make_dataset

    import netdissect
    data = make_dataset(tmp_path / "data", n_images=8)
    netdissect.dissect(TinyNet(), ["relu1", "conv3"], data, tmp_path / "run", progress=False, workers=0,
                       min_category_images=1)
    rows = compare_rows([tmp_path / "run"])
    assert [r["layer"] for r in rows] == ["relu1", "conv3"]
    assert rows[0]["units"] == 6 and rows[1]["units"] == 5
