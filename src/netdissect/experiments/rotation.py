"""Is interpretability a property of the basis? Dissect a layer in a rotated basis.

A uniform random rotation Q of the layer's K-dimensional unit space (Haar measure on SO(K)) is
applied at every spatial position, a'(x, y) = Q^alpha a(x, y), and the rotated units are
dissected. Q^alpha is the fractional power that scales every rotation angle of Q by alpha, so
alpha = 0 is the original basis and alpha = 1 the full rotation. A rotation changes nothing a
later layer could not undo (the network's accuracy is unchanged if Q^-alpha is applied
afterwards), so a fall in interpretable units is a fall due to the basis alone.

All alphas are dissected in ONE pass over the data: the model is wrapped in
:class:`RotatedLayer`, which exposes one submodule per alpha (``rotated.alpha_0_2``, ...);
the dissection engine captures them all like any set of layers.

The fractional power uses the real Schur form Q = Z T Z^T (scipy.linalg.schur, output='real',
when scipy is installed); without scipy, an equivalent own method is used (the symmetric and
skew-symmetric parts of Q share their invariant planes, see :func:`_power_symmetric`).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netdissect.errors import LayerError, NetDissectError

ROTATION_TOLERANCE = 1e-6


# --------------------------------------------------------------------------- the rotation

def random_rotation(k: int, seed: int = 0) -> np.ndarray:
    """A uniform random rotation of R^k (float64, orthogonal, determinant +1).

    QR of a standard Gaussian matrix, columns' signs fixed by diag(R) (which makes Q Haar
    distributed on O(k)), then the first column negated if det(Q) = -1 (Haar on SO(k)).
    """
    if k < 1:
        raise NetDissectError(f"rotation size must be positive, got {k}")
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((k, k))
    q, r = np.linalg.qr(g)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q = q * signs[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def check_rotation(q: np.ndarray, tol: float = ROTATION_TOLERANCE) -> None:
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] != q.shape[1]:
        raise NetDissectError(f"a rotation must be a square matrix, got shape {q.shape}")
    err = np.abs(q.T @ q - np.eye(q.shape[0])).max() if q.size else 0.0
    if err > tol:
        raise NetDissectError(f"matrix is not orthogonal (max |Q^T Q - I| = {err:.2e})")
    if q.size and np.linalg.det(q) < 0:
        raise NetDissectError("matrix has determinant -1: a reflection, not a rotation; it has no "
                              "real fractional powers")


def have_scipy() -> bool:
    try:
        import scipy.linalg  # noqa: F401
        return True
    except ImportError:
        return False


def rotation_power(q: np.ndarray, alpha: float, method: str = "auto") -> np.ndarray:
    """Q^alpha for a rotation Q: every rotation angle theta of Q becomes alpha * theta.

    method: 'schur' (scipy's real Schur form), 'symmetric' (own method, numpy only) or 'auto'
    (schur when scipy is installed). Angles are taken in (-pi, pi], so Q^a Q^b = Q^(a+b) for
    every real a, b, Q^0 = I and Q^1 = Q.
    """
    q = np.asarray(q, dtype=np.float64)
    check_rotation(q)
    if method == "auto":
        method = "schur" if have_scipy() else "symmetric"
    if method == "schur":
        return _power_schur(q, float(alpha))
    if method == "symmetric":
        return _power_symmetric(q, float(alpha))
    raise NetDissectError(f"unknown method {method!r}: use auto, schur or symmetric")


def _plane(c: float, s: float) -> np.ndarray:
    return np.array([[c, -s], [s, c]])


def _power_schur(q: np.ndarray, alpha: float) -> np.ndarray:
    """Real Schur form of an orthogonal matrix: Q = Z T Z^T with T block diagonal, 2x2 blocks
    [[cos t, -sin t], [sin t, cos t]] and 1x1 blocks +1 / -1 (an even number of -1 when
    det = +1; they are paired into rotations by pi)."""
    from scipy.linalg import schur

    k = q.shape[0]
    t, z = schur(q, output="real")
    ta = np.zeros_like(t)
    minus: List[int] = []
    i = 0
    while i < k:
        if i + 1 < k and abs(t[i + 1, i]) > 1e-12:
            theta = math.atan2((t[i + 1, i] - t[i, i + 1]) / 2.0, (t[i, i] + t[i + 1, i + 1]) / 2.0)
            ta[i:i + 2, i:i + 2] = _plane(math.cos(alpha * theta), math.sin(alpha * theta))
            i += 2
        else:
            if t[i, i] > 0:
                ta[i, i] = 1.0
            else:
                minus.append(i)
            i += 1
    _pair_minus_ones(ta, minus, alpha)
    return z @ ta @ z.T


def _pair_minus_ones(ta: np.ndarray, idx: Sequence[int], alpha: float) -> None:
    """Eigenvalue -1 pairs: a rotation by pi in the plane of each pair."""
    if len(idx) % 2:
        raise NetDissectError("matrix has an odd number of eigenvalues -1: not a rotation")
    c, s = math.cos(alpha * math.pi), math.sin(alpha * math.pi)
    for a, b in zip(idx[0::2], idx[1::2]):
        ta[a, a], ta[a, b], ta[b, a], ta[b, b] = c, -s, s, c


def _power_symmetric(q: np.ndarray, alpha: float) -> np.ndarray:
    """Numpy-only Q^alpha. S = (Q + Q^T)/2 and A = (Q - Q^T)/2 commute; on the invariant plane
    of angle theta, S = cos(theta) I and A = sin(theta) J, so Q^alpha = f(S) + g(S) A with
    f(c) = cos(alpha arccos c) and g(c) = sin(alpha arccos c) / sin(arccos c). Eigenvalue -1
    (theta = pi, where A vanishes) is handled by pairing its eigenvectors."""
    s_mat = (q + q.T) / 2.0
    a_mat = (q - q.T) / 2.0
    c, v = np.linalg.eigh(s_mat)
    c = np.clip(c, -1.0, 1.0)
    theta = np.arccos(c)
    sin_t = np.sin(theta)
    f = np.cos(alpha * theta)
    g = np.empty_like(c)
    small = sin_t < 1e-7
    g[~small] = np.sin(alpha * theta[~small]) / sin_t[~small]
    g[small] = alpha  # the limit at theta -> 0; at theta -> pi, A's part is zero there anyway
    near_pi = small & (c < 0)
    f[near_pi] = 0.0
    g[near_pi] = 0.0
    out = (v * f) @ v.T + ((v * g) @ v.T) @ a_mat
    if near_pi.any():  # the -1 eigenspace: rotate by alpha * pi in pairs of its eigenvectors
        w = v[:, near_pi]
        if w.shape[1] % 2:
            raise NetDissectError("matrix has an odd number of eigenvalues -1: not a rotation")
        block = np.zeros((w.shape[1], w.shape[1]))
        _pair_minus_ones(block, list(range(w.shape[1])), alpha)
        out += w @ block @ w.T
    return out


# --------------------------------------------------------------------------- the model wrapper

def alpha_key(alpha: float) -> str:
    """Submodule name of a rotation: alpha_0, alpha_0_2, alpha_1 (no dots in module names)."""
    text = f"{alpha:g}".replace("-", "m").replace(".", "_").replace("+", "")
    return f"alpha_{text}"


class _Rotate(nn.Module):
    """a (N, K, h, w) -> Q a at every position (a 1 x 1 convolution with weight Q)."""

    def __init__(self, matrix: np.ndarray):
        super().__init__()
        k = matrix.shape[0]
        self.register_buffer("weight", torch.tensor(matrix, dtype=torch.float32).reshape(k, k, 1, 1))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return F.conv2d(a.float(), self.weight)


class RotatedLayer(nn.Module):
    """Wraps ``model``; its forward runs the model and feeds ``layer``'s output to one
    ``rotated.<alpha_key>`` submodule per alpha, which hooks can capture. The model's own
    output is unchanged."""

    def __init__(self, model: nn.Module, layer: str, rotation: np.ndarray, alphas: Sequence[float],
                 method: str = "auto", layout: str = "auto"):
        super().__init__()
        from netdissect.models.layouts import split_layer
        modules = dict(model.named_modules())
        if split_layer(layer)[0] not in modules or not layer:
            from netdissect.models.capture import check_layer_names
            check_layer_names(model, [layer])
        self.model = model
        self.layer = layer
        self.alphas = [float(a) for a in alphas]
        keys = [alpha_key(a) for a in self.alphas]
        if len(set(keys)) != len(keys):
            raise NetDissectError(f"an alpha is given twice in {list(alphas)}")
        self.rotated = nn.ModuleDict({key: _Rotate(rotation_power(rotation, a, method) if a != 0
                                                   else np.eye(rotation.shape[0]))
                                      for key, a in zip(keys, self.alphas)})
        self.layer_names = {a: f"rotated.{key}" for a, key in zip(self.alphas, keys)}
        self.layout = layout   # how the layer holds maps (models/layouts.py), decided at the first forward
        self._layouts = {}
        self._size = None

    def _fan_out(self, module, inputs, output):
        from netdissect.models.layouts import select_output
        output = self._layouts[self._size].to_maps(select_output(output, self.layer), self._size)
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise LayerError(f"layer {self.layer!r} does not output N x K x h x w activations; rotate a "
                             "convolutional layer")
        k = next(iter(self.rotated.values())).weight.shape[0]
        if output.shape[1] != k:
            raise LayerError(f"layer {self.layer!r} has {output.shape[1]} units but the rotation is {k} x {k}")
        for rot in self.rotated.values():
            rot(output)

    def forward(self, x):
        from netdissect.models.capture import layer_layout
        from netdissect.models.layouts import split_layer
        self._size = tuple(x.shape[-2:])
        if self._size not in self._layouts:
            self._layouts[self._size] = layer_layout(self.model, self.layer, self._size, self.layout)
        handle = dict(self.model.named_modules())[split_layer(self.layer)[0]].register_forward_hook(self._fan_out)
        try:
            return self.model(x)
        finally:
            handle.remove()


def layer_units(module: nn.Module, layer: str, image_size, layout: str = "auto") -> int:
    """K of a layer, from one forward pass on a blank image of the given (h, w)."""
    from netdissect.models.capture import LayerCapture, check_activation_shape
    x = torch.zeros(1, 3, *image_size)
    with torch.no_grad(), LayerCapture(module.eval(), [layer], layout=layout) as capture:
        out = capture(x)[layer]
    return check_activation_shape(layer, out)[0]


# --------------------------------------------------------------------------- the experiment

def run_rotation(model, layer: str, dataset, out, alphas: Sequence[float] = (0, 0.2, 0.4, 0.6, 0.8, 1.0),
                 seed: int = 0, *, weights: Optional[str] = "default", checkpoint=None, mean=None, std=None,
                 method: str = "auto", progress: bool = True, force: bool = False, **params) -> dict:
    """Dissect ``layer`` rotated by Q^alpha for every alpha (one pass); write the table and figure.

    Files in ``out``: rotation.csv, rotation.json, rotation.svg/.png, and the dissection run
    directory ``out/dissection`` (one layer ``rotated.alpha_*`` per alpha).
    """
    from netdissect.atomic import atomic_save_npy, atomic_write_json
    from netdissect.data.broden import BrodenDataset, open_dataset
    from netdissect.engine.pipeline import dissect
    from netdissect.experiments.common import write_csv
    from netdissect.models.specs import LoadedModel, load_model

    alphas = [float(a) for a in alphas]
    if not alphas:
        raise NetDissectError("give at least one --alpha")
    out = Path(out)
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model, weights=weights, checkpoint=checkpoint, mean=mean, std=std)
    ds = dataset if isinstance(dataset, BrodenDataset) else open_dataset(
        dataset, split=params.get("split"), categories=params.get("categories"), limit=params.get("limit"))
    rec = ds.records[0]
    layout = params.pop("layout", "auto")  # of the layer rotated; the rotated maps are N x K x h x w
    k = layer_units(loaded.module, layer, (rec.ih, rec.iw), layout)
    q = random_rotation(k, seed)
    used = "schur (scipy.linalg.schur, output='real')" if (method == "schur" or (method == "auto" and have_scipy())) \
        else "symmetric/skew decomposition (numpy)"
    wrapper = RotatedLayer(loaded.module, layer, q, alphas, method=method, layout=layout)
    wrapped = LoadedModel(wrapper, loaded.mean, loaded.std, spec=f"{loaded.spec} [rotated {layer}, seed {seed}]",
                          weights=loaded.weights, checkpoint=loaded.checkpoint, kind="rotation",
                          extra={"rotation": {"layer": layer, "seed": seed, "alphas": alphas}})
    names = [wrapper.layer_names[a] for a in alphas]
    result = dissect(wrapped, names, ds, out / "dissection", progress=progress, force=force, **params)
    rows = []
    categories = None
    for a, name in zip(alphas, names):
        s = result.layers[name].summary()
        categories = categories or list(s["unique_per_category"])
        rows.append({"alpha": a, "layer": name, "units": s["units"], "detectors": s["detectors"],
                     "unique_detectors": s["unique_detectors"],
                     "unique_per_category": s["unique_per_category"],
                     "detectors_per_category": s["detectors_per_category"],
                     "mean_best_iou": float(result.layers[name].best_iou.mean())})
    from netdissect.experiments.style import ordered_categories
    cats = ordered_categories(categories or [])
    header = ["alpha", "units", "detectors", "unique_detectors", "mean_best_iou"] + \
        [f"unique_{c}" for c in cats] + [f"detectors_{c}" for c in cats]
    table = [[r["alpha"], r["units"], r["detectors"], r["unique_detectors"], r["mean_best_iou"]]
             + [r["unique_per_category"].get(c, 0) for c in cats]
             + [r["detectors_per_category"].get(c, 0) for c in cats] for r in rows]
    write_csv(out / "rotation.csv", header, table)
    atomic_save_npy(out / "rotation_matrix.npy", q.astype(np.float64))
    info = {"model": loaded.spec, "weights": loaded.weights, "checkpoint": loaded.checkpoint, "layer": layer,
            "units": k, "seed": seed, "alphas": alphas, "fractional_power": used,
            "dataset": str(Path(ds.root).resolve()), "images": result.images,
            "iou_threshold": result.config.iou_threshold, "quantile": result.config.quantile,
            "seconds": round(result.seconds, 2), "rows": rows, "dissection": str(out / "dissection")}
    atomic_write_json(out / "rotation.json", info)
    plot_rotation(info, cats, out)
    return info


def plot_rotation(info: dict, categories: Sequence[str], out: Path) -> List[Path]:
    from netdissect.experiments.style import plotting
    with plotting():
        return _plot_rotation(info, categories, out)


def _plot_rotation(info: dict, categories: Sequence[str], out: Path) -> List[Path]:
    from netdissect.experiments.style import line_chart, new_figure, save_figure
    rows = info["rows"]
    x = [r["alpha"] for r in rows]
    fig, (ax1, ax2) = new_figure(10.5, 4.0, ncols=2)
    shown = [c for c in categories if any(r["unique_per_category"].get(c, 0) for r in rows)] or list(categories)
    line_chart(ax1, x, {c: [r["unique_per_category"].get(c, 0) for r in rows] for c in shown},
               total=[r["unique_detectors"] for r in rows])
    ax1.set_xlabel("rotation alpha (0 = original basis, 1 = full random rotation)")
    ax1.set_ylabel("unique detectors")
    ax1.set_title("Unique detectors per category")
    line_chart(ax2, x, {c: [r["detectors_per_category"].get(c, 0) for r in rows] for c in shown},
               total=[r["detectors"] for r in rows])
    ax2.set_xlabel("rotation alpha")
    ax2.set_ylabel(f"detectors (units with IoU > {info['iou_threshold']:g})")
    ax2.set_title("Detectors per category")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.suptitle(f"{info['model']} {info['layer']} ({info['units']} units), random rotation seed {info['seed']}",
                 fontsize=10, x=0.01, ha="left")
    return save_figure(fig, out, "rotation")


def command(args) -> int:
    from netdissect.cli.options import dissect_params
    from netdissect.experiments.common import format_table, load_model_args, publish
    loaded = load_model_args(args)
    info = run_rotation(loaded, args.layer, args.dataset, args.out, alphas=args.alpha, seed=args.seed,
                        method=args.method, progress=not args.quiet, force=args.force, **dissect_params(args))
    header = ["alpha", "detectors", "unique_detectors", "mean_best_iou"]
    print(format_table(header, [[r["alpha"], r["detectors"], r["unique_detectors"], r["mean_best_iou"]]
                                for r in info["rows"]]))
    print(f"wrote {Path(args.out) / 'rotation.csv'}, rotation.svg, rotation.png "
          f"(fractional powers: {info['fractional_power']})")
    page = publish(args.out, "Random rotation", f"layer {args.layer}: detectors and unique detectors "
                   "per category against the rotation fraction alpha")
    # the dissection of the rotated layers gets the page too, and its report shows both
    dissection = Path(info["dissection"])
    (dissection / "rotation").mkdir(exist_ok=True)
    shutil.copyfile(page, dissection / "rotation" / page.name)
    from netdissect.report import render_report
    print(f"report: {render_report(dissection, progress=not args.quiet).resolve().as_uri()}")
    return 0
