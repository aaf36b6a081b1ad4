"""The top images' pixels kept by the pass for the report (engine/report_images.py): exactly the
images in some unit's top k, equal to their decoded files, within the budget; a report from
them has the same bytes as one that decodes every image, and decodes none that were kept."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from run_fixture import make_dataset

import netdissect
from netdissect.data.broden import BrodenDataset
from netdissect.engine.report_images import ReportImages
from netdissect.report import render_report
from netdissect.report import tiles as tiles_mod


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(4), torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.ReLU())


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kept")
    data = make_dataset(tmp / "data", images=24, size=64, seed=3)
    out = tmp / "run"
    # batches of 3: top images enter and fall out of the units' top 4 along the pass
    result = netdissect.dissect(_model(), ["1", "4"], data, out=out, progress=False, limit=20, top_k=4,
                                batch_size=3, workers=0, device="cpu", min_category_images=0,
                                keep_report_images=True)
    return data, out, result


def test_the_pass_keeps_exactly_the_top_images_as_decoded(kept_run):
    data, out, result = kept_run
    kept = result.report_images
    ds = BrodenDataset(data, limit=20)
    top = set()
    for name in ("1", "4"):
        index = np.load(out / name / "topk.npz")["image_index"]
        top |= {int(i) for i in index.flatten() if i >= 0}
    assert set(kept.pixels) == top and kept.turned_away == 0
    assert len(top) < 20        # some images fell out of every unit's top 4, and were let go
    for i in top:
        np.testing.assert_array_equal(kept.get(i), ds.load_image(i))
    assert kept.bytes == sum(p.nbytes for p in kept.pixels.values())
    assert kept.usable_for(ds)
    assert not kept.usable_for(BrodenDataset(data, limit=19))            # another selection
    assert not kept.usable_for(BrodenDataset(data, limit=20, split="train"))


def test_a_report_from_kept_pixels_is_the_same_and_decodes_none_of_them(kept_run, tmp_path: Path, monkeypatch):
    data, out, result = kept_run
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    shutil.copytree(out, plain)
    shutil.copytree(out, kept)
    render_report(plain, top_k=4, workers=1)
    decoded, encoded = [], []
    real_rgb, real_jpeg = tiles_mod._rgb, tiles_mod.atlas_jpeg
    monkeypatch.setattr(tiles_mod, "_rgb", lambda ds, i: decoded.append(i) or real_rgb(ds, i))
    monkeypatch.setattr(tiles_mod, "atlas_jpeg", lambda images, hw: encoded.append(hw) or real_jpeg(images, hw))
    assert len(result.report_images.atlases) == 1          # encoded while the dissection tallied
    render_report(kept, top_k=4, workers=1, images=result.report_images)
    assert decoded == [] and encoded == []
    # a report of fewer top images lays its atlas out otherwise: encoded here, from kept pixels
    render_report(kept, top_k=2, workers=1, images=result.report_images)
    assert decoded == [] and len(encoded) == 1
    render_report(kept, top_k=4, workers=1, images=result.report_images)
    files = sorted(p.relative_to(plain / "report") for p in (plain / "report").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(kept / "report") for p in (kept / "report").rglob("*") if p.is_file())
    assert any(f.parts[0] == "images" for f in files)
    for f in files:
        assert (plain / "report" / f).read_bytes() == (kept / "report" / f).read_bytes(), f


def test_pixels_of_another_selection_are_not_used(kept_run, tmp_path: Path, monkeypatch):
    """A run over 19 images, rendered with the 20-image run's pixels: every image decoded."""
    data, _, result = kept_run
    out = tmp_path / "run19"
    netdissect.dissect(_model(), ["4"], data, out=out, progress=False, limit=19, top_k=4, batch_size=3,
                       workers=0, device="cpu", min_category_images=0)
    decoded = []
    real_rgb = tiles_mod._rgb
    monkeypatch.setattr(tiles_mod, "_rgb", lambda ds, i: decoded.append(i) or real_rgb(ds, i))
    render_report(out, top_k=4, workers=1, images=result.report_images)
    index = np.load(out / "4" / "topk.npz")["image_index"]
    assert sorted(decoded) == sorted({int(i) for i in index.flatten() if i >= 0})


def test_the_budget_turns_images_away_and_frees_those_that_fall_out():
    ds = SimpleNamespace(root="/nowhere", records=[SimpleNamespace(image=f"{i}.jpg") for i in range(8)])
    images = torch.arange(8, dtype=torch.uint8)[:, None, None, None].expand(8, 2, 2, 3).contiguous()
    kept = ReportImages(2 * 12, ds)                      # room for two 2 x 2 RGB images
    kept.keep(torch.arange(4), images[:4], torch.tensor([[0, 2], [3, -1]]))
    assert sorted(kept.pixels) == [0, 2] and kept.turned_away == 1 and kept.bytes == 24
    assert kept.get(2)[0, 0, 0] == 2 and kept.get(3) is None
    # image 0 fell out of every top k: its room goes to image 5 of the next batch
    kept.keep(torch.arange(4, 8), images[4:], torch.tensor([2, 5, 3]))
    assert sorted(kept.pixels) == [2, 5] and kept.bytes == 24
    np.testing.assert_array_equal(kept.get(5), images[5].numpy())
    images[5] = 0                                        # a copy, not a view of the batch
    assert kept.get(5)[0, 0, 0] == 5
