"""netdissect rotate: the rotation's algebra, and planted units losing their labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_experiments_common import PlantedNet, identity_norm, make_rotation_set

from netdissect.errors import NetDissectError
from netdissect.experiments.rotation import (
    RotatedLayer,
    alpha_key,
    have_scipy,
    random_rotation,
    rotation_power,
    run_rotation,
)

METHODS = ["symmetric"] + (["schur"] if have_scipy() else [])


@pytest.mark.parametrize("k", [1, 2, 3, 10, 33])
def test_random_rotation_is_a_rotation(k):
    q = random_rotation(k, seed=k)
    assert np.allclose(q.T @ q, np.eye(k), atol=1e-12)
    assert np.linalg.det(q) == pytest.approx(1.0, abs=1e-9)
    assert np.array_equal(q, random_rotation(k, seed=k))
    assert not np.allclose(q, random_rotation(k, seed=k + 100)) or k == 1


def test_random_rotation_sign_convention_gives_haar_mean():
    # Haar-distributed rotations average to 0 entrywise (no bias from the QR signs)
    mean = np.mean([random_rotation(4, seed=s) for s in range(400)], axis=0)
    assert np.abs(mean).max() < 0.12


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [2, 5, 16, 64])
def test_fractional_powers(method, k):
    q = random_rotation(k, seed=3)
    assert np.allclose(rotation_power(q, 1.0, method), q, atol=1e-10)
    assert np.allclose(rotation_power(q, 0.0, method), np.eye(k), atol=1e-10)
    for a, b in [(0.2, 0.4), (0.5, 0.5), (0.3, 0.7), (0.6, 0.8), (-0.25, 1.0)]:
        qa, qb, qab = (rotation_power(q, x, method) for x in (a, b, a + b))
        assert np.allclose(qa @ qb, qab, atol=1e-9), (a, b)
    half = rotation_power(q, 0.5, method)
    assert np.allclose(half.T @ half, np.eye(k), atol=1e-10)
    assert np.linalg.det(half) == pytest.approx(1.0, abs=1e-9)
    assert np.allclose(rotation_power(q, -1.0, method), q.T, atol=1e-9)


@pytest.mark.skipif(not have_scipy(), reason="scipy not installed")
def test_schur_and_numpy_methods_agree():
    q = random_rotation(40, seed=7)
    for a in (0.1, 0.5, 0.9):
        assert np.allclose(rotation_power(q, a, "schur"), rotation_power(q, a, "symmetric"), atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_eigenvalue_minus_one_is_handled(method):
    # rotation by pi in a plane, and -I in 4 dimensions: angles pi are scaled too
    q = np.diag([-1.0, -1.0, 1.0])
    half = rotation_power(q, 0.5, method)
    assert np.allclose(half @ half, q, atol=1e-12)
    q4 = -np.eye(4)
    quarter = rotation_power(q4, 0.25, method)
    assert np.allclose(np.linalg.matrix_power(quarter, 4), q4, atol=1e-12)


def test_not_a_rotation_is_refused():
    with pytest.raises(NetDissectError, match="orthogonal"):
        rotation_power(np.ones((3, 3)), 0.5)
    with pytest.raises(NetDissectError, match="reflection"):
        rotation_power(np.diag([1.0, 1.0, -1.0]), 0.5)


def test_wrapper_rotates_at_every_position_and_keeps_the_output():
    net = PlantedNet(8, sigma=0.3)
    q = random_rotation(8, seed=1)
    wrapper = RotatedLayer(net, "units", q, [0.0, 0.5, 1.0]).eval()
    x = torch.rand(2, 3, 16, 16)
    seen = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o))
               for n, m in wrapper.named_modules() if n.startswith("rotated.") or n == "model.units"]
    with torch.no_grad():
        assert torch.equal(wrapper(x), net(x))
    for h in handles:
        h.remove()
    a = seen["model.units"]
    assert torch.allclose(seen["rotated." + alpha_key(0.0)], a)
    full = torch.einsum("ij,njhw->nihw", torch.tensor(q, dtype=torch.float32), a)
    assert torch.allclose(seen["rotated.alpha_1"], full, atol=1e-5)
    # no hook left on the wrapped model
    assert not net.units._forward_hooks


def test_planted_units_lose_their_labels_under_rotation(tmp_path):
    root = make_rotation_set(tmp_path / "data", concepts=64, images=60)
    net = PlantedNet(64, sigma=0.4, seed=0)
    from netdissect.models.specs import load_model
    loaded = load_model(net, **identity_norm())
    info = run_rotation(loaded, "units", root, tmp_path / "out", alphas=[0, 0.5, 1.0], seed=1,
                        progress=False, workers=0, batch_size=30, min_category_images=1)
    rows = {r["alpha"]: r for r in info["rows"]}
    # the original basis: every planted unit is a detector of its own concept
    assert rows[0.0]["detectors"] == 64 and rows[0.0]["unique_detectors"] == 64
    # fully rotated: most of the labels are gone (the paper: about 80% fewer unique detectors)
    assert rows[1.0]["unique_detectors"] <= 0.35 * 64
    assert rows[0.0]["unique_detectors"] > rows[0.5]["unique_detectors"] > rows[1.0]["unique_detectors"]
    assert rows[1.0]["mean_best_iou"] < 0.3 * rows[0.0]["mean_best_iou"]
    out = tmp_path / "out"
    for name in ("rotation.csv", "rotation.json", "rotation.svg", "rotation.png", "rotation_matrix.npy",
                 "dissection/summary.json"):
        assert (out / name).exists(), name
    csv_lines = (out / "rotation.csv").read_text().splitlines()
    assert csv_lines[0].startswith("alpha,units,detectors,unique_detectors")
    assert len(csv_lines) == 4
    saved = json.loads((out / "rotation.json").read_text())
    assert saved["units"] == 64 and saved["alphas"] == [0.0, 0.5, 1.0]
    q = np.load(out / "rotation_matrix.npy")
    assert np.allclose(q, random_rotation(64, seed=1))
    summary = json.loads((out / "dissection" / "summary.json").read_text())
    assert sorted(summary["layers"]) == ["rotated.alpha_0", "rotated.alpha_0_5", "rotated.alpha_1"]


def test_alpha_zero_is_the_plain_dissection(tmp_path):
    import netdissect
    from netdissect.models.specs import load_model
    from netdissect.runs import load_layer
    root = make_rotation_set(tmp_path / "data", concepts=8, images=12, per_image=4)
    net = PlantedNet(8, sigma=0.2)
    kw = dict(progress=False, workers=0, min_category_images=1)
    info = run_rotation(load_model(net, **identity_norm()), "units", root, tmp_path / "rot", alphas=[0.0, 1.0],
                        seed=2, **kw)
    plain = netdissect.dissect(net, ["units"], root, **kw, **identity_norm()).layers["units"]
    rotated = load_layer(tmp_path / "rot" / "dissection", "rotated.alpha_0")
    assert np.array_equal(plain.iou, rotated.iou) and np.array_equal(plain.thresholds, rotated.thresholds)
    assert info["rows"][0]["detectors"] == plain.summary()["detectors"]
