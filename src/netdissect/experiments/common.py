"""What the experiment commands share: arguments, tables, labeled image sets, evaluation."""
from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from netdissect.errors import DatasetError, ModelError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_model_args(args):
    from netdissect.models.specs import load_model
    weights = None if str(args.weights).lower() == "none" else args.weights
    return load_model(args.model, weights=weights, checkpoint=args.checkpoint, mean=args.mean, std=args.std)


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tables

def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([_fmt_cell(v) for v in row])
    return buf.getvalue()


def _fmt_cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return "" if v is None else str(v)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    from netdissect.atomic import atomic_write_text
    atomic_write_text(Path(path), csv_text(header, rows))
    return Path(path)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[str(h) for h in header]] + [[_fmt_short(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(header))]

    def line(r):
        return "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _fmt_short(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3f}"
    return "" if v is None else str(v)


# --------------------------------------------------------------------------- labeled images

@dataclass
class LabeledImages:
    """Images with a class index each (for accuracy): a Broden scene task or an image folder."""

    items: List[Tuple[object, int]]        # (record index or file path, class index)
    class_names: List[str]
    load: Callable[[object], np.ndarray]   # item key -> uint8 (H, W, 3)
    source: str

    def __len__(self) -> int:
        return len(self.items)


def scene_classes(ds) -> List[Tuple[int, str]]:
    """(label number, name) of the dataset's scene labels, ascending: the class order of the
    synthetic scene task (class index = position in this list)."""
    out = [(lab.number, lab.name) for lab in ds.labels if lab.number and lab.category == "scene"]
    if not out:
        raise DatasetError("the dataset has no scene labels; the scene task needs image-level "
                           "'scene' labels (netdissect data synthetic makes them)", Path(ds.root) / "label.csv")
    return out


def broden_scene_images(root, split: Optional[str] = None, limit: Optional[int] = None) -> LabeledImages:
    """The images of a Broden-format dataset that carry a scene label, with its class index."""
    from netdissect.data.broden import BrodenDataset
    try:
        ds = BrodenDataset(root, split=split, categories=["scene"])
    except DatasetError as exc:
        if "unknown categor" in str(exc):
            raise DatasetError("the dataset has no 'scene' category: the scene task needs image-level "
                               "scene labels (or pass an ImageFolder-style directory)", Path(root) / "category.csv") from None
        raise
    classes = scene_classes(ds)
    index = {number: i for i, (number, _) in enumerate(classes)}
    items = []
    for i, rec in enumerate(ds.records):
        labels = rec.image_labels.get("scene", ())
        if labels and labels[0] in index:
            items.append((i, index[labels[0]]))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DatasetError("no image of the selection has a scene label", Path(root) / "index.csv")
    return LabeledImages(items, [name for _, name in classes], ds.load_image, f"{root} (scene labels)")


def image_folder(root, class_names: Optional[Sequence[str]], n_outputs: int, size: int,
                 limit_per_class: Optional[int] = None) -> LabeledImages:
    """root/<class>/<image files>: class folders map to model outputs by integer name, by the
    weights' category names, or (ImageFolder convention, e.g. ImageNet wnids) sorted order."""
    root = Path(root)
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DatasetError("not a Broden dataset (no index.csv) and not an ImageFolder-style "
                           "directory (no class sub-directories)", root)
    lowered = {n.lower(): i for i, n in enumerate(class_names or [])}
    mapping: Dict[str, int] = {}
    if all(d.name.isdigit() for d in folders):
        mapping = {d.name: int(d.name) for d in folders}
        how = "folder names are class indices"
    elif class_names and all(d.name.lower() in lowered for d in folders):
        mapping = {d.name: lowered[d.name.lower()] for d in folders}
        how = "folder names are the model's class names"
    elif len(folders) == n_outputs:
        mapping = {d.name: i for i, d in enumerate(folders)}
        how = "sorted folder order (ImageFolder convention)"
    else:
        raise DatasetError(
            f"cannot map its {len(folders)} class folders to the model's {n_outputs} outputs: name the "
            "folders by class index (0, 1, ...), by the model's class names, or give one folder per output "
            "in the model's class order (sorted names, as ImageNet's wnid folders)", root)
    bad = [k for k, v in mapping.items() if not 0 <= v < n_outputs]
    if bad:
        raise DatasetError(f"class folder {bad[0]!r} maps to index {mapping[bad[0]]}, but the model "
                           f"has {n_outputs} outputs", root)
    items = []
    for d in folders:
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if limit_per_class is not None:
            files = files[:limit_per_class]
        items += [(f, mapping[d.name]) for f in files]
    if not items:
        raise DatasetError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the class folders", root)
    names = list(class_names) if class_names and len(class_names) == n_outputs else [str(i) for i in range(n_outputs)]
    if how.startswith("sorted") and not class_names:
        names = [d.name for d in folders]
    return LabeledImages(items, names, lambda path: load_rgb(path, size), f"{root} ({how})")


def load_rgb(path, size: Optional[int] = None) -> np.ndarray:
    """uint8 (H, W, 3); with ``size``: shorter side resized to size, then centre-cropped square."""
    from PIL import Image
    path = Path(path)
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size:
                w, h = img.size
                s = size / min(w, h)
                img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
                w, h = img.size
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            return np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError("image file not found", path) from None
    except OSError as exc:
        raise DatasetError(f"cannot read image ({exc}); is it a valid image file?", path) from None


def open_labeled(path, loaded, size: int = 224, split: Optional[str] = None,
                 limit: Optional[int] = None) -> LabeledImages:
    """A Broden dataset (scene task) when it has index.csv, else an ImageFolder directory."""
    path = Path(path)
    if not path.exists():
        raise DatasetError("dataset directory not found", path)
    if (path / "index.csv").exists():
        return broden_scene_images(path, split=split, limit=limit)
    n_out = output_classes(loaded.module)
    return image_folder(path, class_names_of(loaded, n_out), n_out, size,
                        limit_per_class=None if limit is None else max(1, limit))


# --------------------------------------------------------------------------- models

def final_linear(module: torch.nn.Module) -> Tuple[str, torch.nn.Linear]:
    """The last nn.Linear of the module (registration order): the classifier of usual heads."""
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    if not found:
        raise ModelError(f"{type(module).__name__} has no nn.Linear classifier; this experiment needs "
                         "a classifier whose last layer is an nn.Linear")
    return found[-1]


def output_classes(module: torch.nn.Module) -> int:
    return final_linear(module)[1].out_features


def class_names_of(loaded, n_outputs: int) -> Optional[List[str]]:
    """Class names from torchvision weights meta, or the model's own ``class_names``."""
    names = getattr(loaded.module, "class_names", None)
    if names is not None and len(names) == n_outputs:
        return [str(n) for n in names]
    if loaded.weights and loaded.kind == "torchvision":
        try:
            import torchvision
            meta = torchvision.models.get_weight(loaded.weights).meta
            cats = meta.get("categories")
            if cats and len(cats) == n_outputs:
                return list(cats)
        except Exception:
            return None
    return None


def batches(labeled: LabeledImages, batch_size: int):
    """(uint8 (B, H, W, 3) tensor, int64 (B,) targets) batches; images of one batch must agree in size."""
    for s in range(0, len(labeled), batch_size):
        chunk = labeled.items[s:s + batch_size]
        images = [labeled.load(key) for key, _ in chunk]
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise DatasetError(f"images of different sizes in one batch ({sorted(shapes)[:3]}); "
                               "pass --size to resize them", labeled.source)
        yield (torch.from_numpy(np.stack(images)), torch.tensor([c for _, c in chunk], dtype=torch.int64))


def publish(out_dir, title: str, description: str = "", run_dir=None):
    """Write the experiment's page (figures and tables in one HTML file); when the experiment
    was written into a run directory, say how to see it in that run's report."""
    page = None
    if out_dir is not None:
        from netdissect.report.experiments import write_experiment_page
        page = write_experiment_page(out_dir, title, description)
        print(f"page: {Path(page).resolve().as_uri()}")
    if run_dir is not None:
        print(f"(`netdissect report {run_dir}` adds it to that run's report)")
    return page
