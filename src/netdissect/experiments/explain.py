"""Explain a prediction with labeled units.

For a classifier whose layer L feeds global average pooling and one linear classifier (the
heads of torchvision's resnet, mobilenet_v2, efficientnet, ...), the logit of class c is

    logit_c = sum_k W[c, k] * mean_xy a_k(x, y) + b_c,

so unit k contributes W[c, k] * mean a_k to the prediction, exactly. The units that contribute
most are shown with their dissection label and IoU (read from the run directory where L was
dissected) and their activation map over the image, outlined where the unit exceeds its
dissection threshold. Output: explain.html (self-contained; report/templates/explain.html),
explain.png and explain.json.

Vision transformers (models/layouts.py): the head of a ViT sees either the mean of the patch tokens
(timm ``global_pool='avg'`` without ``fc_norm``: the same exact decomposition over the patch
maps) or the class token (timm ``global_pool='token'``, torchvision ``vit_b_16``): then
logit_c = sum_k W[c, k] * cls_k + b_c, so unit k contributes W[c, k] times its class-token
value, and the map shown is the unit over the patch tokens. Both are exact only for the layer
whose tokens the head reads directly (timm ``norm``, torchvision ``encoder.ln``); a head with
a norm after the pooling (``fc_norm``) is refused.
"""
from __future__ import annotations

import base64
import io
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from netdissect.errors import LayerError, ModelError, NetDissectError
from netdissect.report.colors import (
    UNIT_REGION_RGB,  # the report's colour for where the unit exceeds its threshold
)


def pooled_head(module: torch.nn.Module, layer: str, x: torch.Tensor, details: Optional[dict] = None):
    """Run the model once; return (layer output (1, K, h, w), maps used, fc name, fc, logits).

    Checks that the final nn.Linear's input is the global average of the layer's output (or of
    its ReLU), or for a token layer its class token; raises LayerError otherwise. ``details``
    receives ``pooling`` (what the head reads) and ``pooled`` (1, K): the values it reads."""
    from netdissect.experiments.common import final_linear
    from netdissect.models.capture import check_layer_names, layer_layout
    from netdissect.models.layouts import select_output, split_layer
    check_layer_names(module, [layer])
    layout = layer_layout(module, layer, tuple(x.shape[-2:]))
    fc_name, fc = final_linear(module)
    modules = dict(module.named_modules())
    seen = {}

    def grab_layer(mod, inputs, output):
        seen.setdefault("layer", output)

    def grab_fc(mod, inputs, output):
        seen.setdefault("fc_in", inputs[0])
        seen.setdefault("fc_out", output)

    handles = [modules[split_layer(layer)[0]].register_forward_hook(grab_layer), fc.register_forward_hook(grab_fc)]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    if "layer" not in seen:
        raise LayerError(f"layer {layer!r} did not run in the forward pass")
    if "fc_in" not in seen:
        raise ModelError(f"the final nn.Linear {fc_name!r} did not run in the forward pass; explain needs a "
                         "classifier ending in one nn.Linear")
    raw = select_output(seen["layer"], layer)
    a = layout.to_maps(raw, tuple(x.shape[-2:]))
    hint = ("explain supports heads of the form: layer -> global average pooling -> [dropout] -> one nn.Linear "
            "(torchvision resnet: layer4; mobilenet_v2 / efficientnet: features), or for a vision "
            "transformer the class token or the mean of the patch tokens of the layer the head reads "
            "(timm: norm; torchvision vit: encoder.ln); pick the layer whose "
            f"pooled output is the input of {fc_name!r}")
    if not isinstance(a, torch.Tensor) or a.dim() != 4:
        raise LayerError(f"layer {layer!r} does not output N x K x h x w maps; {hint}")
    z = seen["fc_in"].reshape(1, -1)
    if z.shape[1] != a.shape[1]:
        raise LayerError(f"layer {layer!r} has {a.shape[1]} units but the classifier {fc_name!r} takes "
                         f"{z.shape[1]} inputs: the layer does not feed it directly; {hint}")
    close = dict(rtol=1e-3, atol=1e-4 * max(1.0, float(z.abs().max())))
    candidates = [(a, a.float().mean(dim=(2, 3)), "global average pooling"),
                  (F.relu(a), F.relu(a).float().mean(dim=(2, 3)), "global average pooling of the ReLU")]
    if layout.kind == "tokens" and layout.prefix >= 1:
        candidates.append((a, raw[:, 0].float(), "the class token"))
    for maps, pooled, pooling in candidates:
        if pooled.shape == z.shape and torch.allclose(pooled, z.float(), **close):
            if details is not None:
                details.update(pooling=pooling, pooled=pooled, layout=layout.describe())
            return a, maps, fc_name, fc, seen["fc_out"].reshape(1, -1)
    raise LayerError(f"the input of {fc_name!r} is not the global average of layer {layer!r}'s output "
                     f"(max difference {float((a.float().mean(dim=(2, 3)) - z.float()).abs().max()):.3g}); {hint}")


def explain_image(loaded, layer: str, run, image, top: int = 8, target=None, size: Optional[int] = 224,
                  device: str = "auto") -> dict:
    """The numbers of one explanation (see the module docstring), plus the maps for drawing."""
    from netdissect.engine.forward import resolve_device
    from netdissect.experiments.common import class_names_of, load_rgb
    from netdissect.runs import load_layer, read_json
    from netdissect.tally.upsample import make_upsampler

    device = resolve_device(device)
    module = loaded.module.eval().to(device)
    rgb = load_rgb(image, size or None)
    mean = torch.tensor(loaded.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = ((torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0 - mean) / std).to(device)
    head: dict = {}
    a, maps, fc_name, fc, logits = pooled_head(module, layer, x, head)
    k = maps.shape[1]
    dissected = load_layer(run, layer)
    if dissected.units != k:
        raise NetDissectError(f"{run}: layer {layer!r} was dissected with {dissected.units} units but the model's "
                              f"layer has {k}; dissect this model, or pass the run directory that matches it")
    warnings = []
    try:
        digest = read_json(Path(run) / "config.json")["manifest"]["model"]["weights_digest"]
        if digest and digest != loaded.digest():
            warnings.append(f"{run} was dissected from other weights (digest {digest}) than this model's "
                            f"({loaded.digest()}); the labels may not belong to these units")
    except (NetDissectError, KeyError, TypeError):
        pass
    n_classes = logits.shape[1]
    names = class_names_of(loaded, n_classes) or [f"class {i}" for i in range(n_classes)]
    probs = torch.softmax(logits.float(), dim=1)[0].cpu()
    predicted = int(logits.argmax())
    if target is None:
        c = predicted
    else:
        c = _resolve_class(target, names)
    weight = fc.weight[c].detach().float().cpu()
    mean_act = head["pooled"][0].float().cpu()  # what the classifier reads of each unit
    contrib = weight * mean_act
    bias = float(fc.bias[c].detach()) if fc.bias is not None else 0.0
    logit = float(logits[0, c])
    order = torch.argsort(contrib, descending=True)[:top].tolist()
    labels = dissected.unit_labels()
    thresholds = dissected.thresholds
    positive = float(contrib.clamp(min=0).sum())
    native = maps[0].float().cpu()
    # the run's own upsampler (bilinear, or rf placement), so the outline is the rule that was scored
    mode = (read_json(Path(run) / "summary.json").get("parameters") or {}).get("upsample", "bilinear")
    if mode == "rf" and dissected.receptive_field is None:
        warnings.append(f"{run} was dissected with --upsample rf but recorded no receptive field: "
                        "the maps are drawn bilinear")
        mode = "bilinear"
    upsample = make_upsampler(mode, tuple(native.shape[1:]), tuple(rgb.shape[:2]),
                              field=dissected.receptive_field, image=tuple(rgb.shape[:2]))
    up = upsample(native).numpy()
    units = []
    for u in order:
        label, category, iou = labels[u]
        active = up[u] > thresholds[u]
        units.append({
            "unit": u, "label": label, "category": category, "iou": round(float(iou), 6),
            "detector": bool(iou > dissected.iou_threshold), "contribution": float(contrib[u]),
            "share_of_positive": float(contrib[u]) / positive if positive > 0 else 0.0,
            "weight": float(weight[u]), "mean_activation": float(mean_act[u]),
            "threshold": float(thresholds[u]), "active_fraction": float(active.mean()),
        })
    top5 = torch.argsort(probs, descending=True)[:5].tolist()
    return {
        "image": str(image), "model": loaded.spec, "weights": loaded.weights, "checkpoint": loaded.checkpoint,
        "layer": layer, "classifier": fc_name, "run": str(run), "input_size": list(rgb.shape[:2]),
        "pooling": head["pooling"], "layout": head["layout"],
        "predicted": {"index": predicted, "name": names[predicted], "probability": float(probs[predicted])},
        "explained": {"index": c, "name": names[c], "probability": float(probs[c]), "logit": logit, "bias": bias},
        "sum_of_contributions": float(contrib.sum()),
        "top_classes": [{"index": i, "name": names[i], "probability": float(probs[i])} for i in top5],
        "units": units, "iou_threshold": dissected.iou_threshold, "warnings": warnings,
        "_rgb": rgb, "_maps": {u: up[u] for u in order},
    }


def _resolve_class(target, names: Sequence[str]) -> int:
    text = str(target)
    if text.isdigit() and int(text) < len(names):
        return int(text)
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise NetDissectError(f"--class {target!r} is neither a class index below {len(names)} nor a class name "
                          f"(e.g. {', '.join(names[:5])})")


# --------------------------------------------------------------------------- drawing

def _enlarge(array: np.ndarray, min_side: int = 224) -> np.ndarray:
    """Small images (e.g. 64 px synthetic ones) repeated to at least min_side pixels."""
    scale = max(1, int(np.ceil(min_side / min(array.shape[:2]))))
    return np.repeat(np.repeat(array, scale, 0), scale, 1) if scale > 1 else array


def heat_tile(rgb: np.ndarray, amap: np.ndarray, threshold: float, min_side: int = 224) -> np.ndarray:
    """The image, dimmed, under the unit's activation (colour map), outlined where > threshold."""
    from matplotlib import colormaps
    rgb, amap = _enlarge(rgb, min_side), _enlarge(amap, min_side)
    top = max(float(amap.max()), float(threshold), 1e-12)
    heat = np.clip(amap / top, 0.0, 1.0)
    colored = colormaps["inferno"](heat)[..., :3] * 255.0
    alpha = (0.8 * heat)[..., None]
    base = rgb.astype(np.float32) * 0.8
    out = base * (1 - alpha) + colored * alpha
    mask = amap > threshold
    edge = mask & ~_erode(mask)
    edge = edge | _shift_any(edge)  # 2 px wide
    out[edge] = UNIT_REGION_RGB
    return np.clip(out, 0, 255).astype(np.uint8)


def _erode(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1, constant_values=False)
    return (m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:])


def _shift_any(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1, constant_values=False)
    return m[:-2, 1:-1] | m[1:-1, :-2]


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_explanation(info: dict, out) -> List[Path]:
    """explain.json, explain.png and explain.html (images embedded) into ``out``."""
    from netdissect.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
    out = Path(out)
    rgb, maps = info["_rgb"], info["_maps"]
    tiles = {u["unit"]: heat_tile(rgb, maps[u["unit"]], u["threshold"]) for u in info["units"]}
    public = {k: v for k, v in info.items() if not k.startswith("_")}
    atomic_write_json(out / "explain.json", public)
    paths = [out / "explain.json"]
    atomic_write_bytes(out / "explain.png", _summary_png(info, tiles))
    paths.append(out / "explain.png")
    atomic_write_text(out / "explain.html", _html(info, tiles))
    paths.append(out / "explain.html")
    return paths


def _title(u: dict) -> str:
    label = u["label"] or "-"
    status = "" if u["detector"] else ", not a detector"
    return f"unit {u['unit']}: {label}\n{u['category']} IoU {u['iou']:.2f}{status}"


def _summary_png(info: dict, tiles) -> bytes:
    from netdissect.experiments.style import category_color, new_figure, plotting
    units = info["units"]
    n = len(units) + 1
    cols = min(n, 5)
    rows = -(-n // cols)
    with plotting():
        fig, axes = new_figure(2.6 * cols, 2.9 * rows, ncols=cols, nrows=rows)
        axes = axes if isinstance(axes, list) else [axes]
        for ax in axes:
            ax.axis("off")
        pred = info["explained"]
        axes[0].imshow(_enlarge(info["_rgb"]))
        axes[0].set_title(f"{Path(info['image']).name}\n{pred['name']} (p = {pred['probability']:.2f})",
                          fontsize=9, loc="center", fontweight="bold")
        for ax, u in zip(axes[1:], units):
            ax.imshow(tiles[u["unit"]])
            ax.set_title(_title(u) + f"\ncontribution {u['contribution']:+.3g}", fontsize=8, loc="center",
                         color=category_color(u["category"]) if u["detector"] else "#555555", fontweight="bold")
        fig.suptitle(f"{info['model']} {info['layer']}: units that contribute most to '{pred['name']}'",
                     fontsize=10, x=0.01, ha="left")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def _html(info: dict, tiles) -> str:
    """The page (report/templates/explain.html, autoescaped): every name is text, never markup."""
    from netdissect.experiments.style import category_color
    from netdissect.report.html import render
    units = [dict(u, tile=_data_uri(_png_bytes(tiles[u["unit"]])),
                  color=category_color(u["category"]) if u["detector"] else "#9A9A9A") for u in info["units"]]
    return render("explain.html", info=info, pred=info["predicted"], expl=info["explained"], units=units,
                  image_name=Path(info["image"]).name, picture=_data_uri(_png_bytes(_enlarge(info["_rgb"]))))


def default_out(run, image) -> Path:
    return Path(run) / "explain" / Path(image).stem


def command(args) -> int:
    from netdissect.experiments.common import format_table, load_model_args, publish
    loaded = load_model_args(args)
    images = list(args.image)
    for image in images:
        if not Path(image).exists():
            raise NetDissectError(f"{image}: image file not found")
    for image in images:
        info = explain_image(loaded, args.layer, args.run, image, top=args.units, target=args.target,
                             size=args.size, device=args.device)
        if args.out is None:
            out = default_out(args.run, image)
        else:
            out = Path(args.out) if len(images) == 1 else Path(args.out) / Path(image).stem
        for w in info["warnings"]:
            print(f"netdissect: warning: {w}", file=sys.stderr)
        write_explanation(info, out)
        p = info["predicted"]
        print(f"{image}: {p['name']} (p = {p['probability']:.3f})")
        print(format_table(["unit", "label", "category", "iou", "contribution"],
                           [[u["unit"], u["label"], u["category"], u["iou"], u["contribution"]] for u in info["units"]]))
        print(f"wrote {out / 'explain.html'}, explain.png, explain.json")
        publish(None, "", run_dir=args.run)
    return 0
