"""Training conditions: how initialization, width, dropout and batch norm change interpretability.

``netdissect experiment conditions --out DIR``:

1. generates the synthetic Broden dataset into ``DIR/data`` (if absent); its image-level scene
   label (6 scenes, decided by what the image shows) is the classification task;
2. trains a small CNN (:class:`SceneCNN`: 4 conv layers, global average pooling, dropout,
   one linear classifier) on the train split under each condition:

   ============  =========================================================
   baseline      width W at conv4, dropout 0.5 before the classifier, seed S
   no_dropout    dropout 0
   batchnorm     batch normalization after every convolution
   wide          width 2W at conv4
   seed1         the baseline with another random initialization (seed S+1)
   ============  =========================================================

   saving checkpoints after every epoch (``DIR/train/<condition>/ckpt/iter_<N>.pth``);
3. dissects each final model (``relu4``, the last conv layer, and ``relu2``) on the held-out
   (val) split into ``DIR/dissect/<condition>``, and the baseline's checkpoints for the
   training dynamics (``DIR/dynamics``);
4. writes ``DIR/conditions.csv`` / ``.json`` and one figure per layer
   (``conditions_<layer>.svg/.png``: unique detectors per category, detector share and held-out
   accuracy per condition), plus ``training.svg/.png`` (accuracy during training).

Every step is reused when it is already done with the same settings (training resumes from the
last finished epoch), so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netdissect.errors import NetDissectError
from netdissect.models.specs import IMAGENET_MEAN, IMAGENET_STD

SCENES = ("seaside", "street", "forest", "garden", "playground", "sky")
CONDITIONS = ("baseline", "no_dropout", "batchnorm", "wide", "seed1")
LAST_LAYER, EARLY_LAYER = "relu4", "relu2"


# --------------------------------------------------------------------------- the model

class SceneCNN(nn.Module):
    """conv1 (5x5, stride 2) - pool - conv2 - pool - conv3 - conv4 (``width`` units) - global
    average pooling - dropout - fc. Layers are named conv<i>, [bn<i>], relu<i>.

    The total stride is 8: at the default 96 px input, relu3/relu4 are 12 x 12 maps (relu2 24 x 24),
    fine enough for the synthetic objects (a fifth of the image wide or more) to cover several
    cells of the last conv layer; receptive field of relu4: 51 px."""

    def __init__(self, width: int = 64, dropout: float = 0.5, batchnorm: bool = False,
                 classes: int = len(SCENES), channels: Tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        self.class_names = list(SCENES) if classes == len(SCENES) else [str(i) for i in range(classes)]
        sizes = [3, *channels, width]
        for i in range(4):
            k, s, p = (5, 2, 2) if i == 0 else (3, 1, 1)
            self.add_module(f"conv{i + 1}", nn.Conv2d(sizes[i], sizes[i + 1], k, s, p, bias=not batchnorm))
            if batchnorm:
                self.add_module(f"bn{i + 1}", nn.BatchNorm2d(sizes[i + 1]))
            self.add_module(f"relu{i + 1}", nn.ReLU(inplace=False))
            if i < 2:
                self.add_module(f"pool{i + 1}", nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, classes)
        self.batchnorm = batchnorm
        for m in self.modules():  # He initialization: plain ReLU stacks train much faster with it
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        for i in range(1, 5):
            x = getattr(self, f"conv{i}")(x)
            if self.batchnorm:
                x = getattr(self, f"bn{i}")(x)
            x = getattr(self, f"relu{i}")(x)
            if i <= 2:
                x = getattr(self, f"pool{i}")(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def scene_cnn() -> SceneCNN:
    """The baseline architecture (width 64), for --model netdissect.experiments.conditions:scene_cnn."""
    return SceneCNN(width=64)


def scene_cnn_bn() -> SceneCNN:
    return SceneCNN(width=64, batchnorm=True)


def scene_cnn_wide() -> SceneCNN:
    return SceneCNN(width=128)


# --------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Condition:
    name: str
    width: int
    dropout: float
    batchnorm: bool
    seed: int

    def build(self) -> SceneCNN:
        torch.manual_seed(self.seed)
        return SceneCNN(width=self.width, dropout=self.dropout, batchnorm=self.batchnorm)

    def spec(self) -> str:
        """The model spec that rebuilds this architecture from the command line."""
        base = "netdissect.experiments.conditions:"
        if self.width == 64 and not self.batchnorm:
            return base + "scene_cnn"
        if self.width == 64 and self.batchnorm:
            return base + "scene_cnn_bn"
        if self.width == 128 and not self.batchnorm:
            return base + "scene_cnn_wide"
        return f"SceneCNN(width={self.width}, batchnorm={self.batchnorm}) (no factory: build it in Python)"


def make_conditions(width: int, seed: int) -> Dict[str, Condition]:
    return {
        "baseline": Condition("baseline", width, 0.5, False, seed),
        "no_dropout": Condition("no_dropout", width, 0.0, False, seed),
        "batchnorm": Condition("batchnorm", width, 0.5, True, seed),
        "wide": Condition("wide", 2 * width, 0.5, False, seed),
        "seed1": Condition("seed1", width, 0.5, False, seed + 1),
    }


@dataclass(frozen=True)
class Settings:
    images: int = 4000
    size: int = 96
    epochs: int = 30
    width: int = 64
    seed: int = 0
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    dissect_split: str = "val"
    dynamics: bool = True
    conditions: Tuple[str, ...] = CONDITIONS

    @classmethod
    def quick(cls, **kw) -> "Settings":
        base = dict(images=120, size=48, epochs=2, width=16, batch_size=32)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)

    def training_key(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k in ("images", "size", "epochs", "seed", "batch_size", "lr", "weight_decay")}


# --------------------------------------------------------------------------- data

def load_split(root: Path, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, 3) images and int64 (N,) scene classes of one split (scene-labeled only)."""
    from netdissect.experiments.common import broden_scene_images
    labeled = broden_scene_images(root, split=split)
    if labeled.class_names != list(SCENES):
        raise NetDissectError(f"{root}: scene labels {labeled.class_names} are not the synthetic set's "
                              f"{list(SCENES)}; regenerate {root} with `netdissect data synthetic`")
    images = np.stack([labeled.load(key) for key, _ in labeled.items])
    targets = np.array([c for _, c in labeled.items], dtype=np.int64)
    return torch.from_numpy(images), torch.from_numpy(targets)


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (images.permute(0, 3, 1, 2).float() - mean) / std


def accuracy(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            pred = model(normalize(images[s:s + batch_size])).argmax(1)
            correct += int((pred == targets[s:s + batch_size]).sum())
    return correct / max(len(images), 1)


# --------------------------------------------------------------------------- training

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _save_state(path: Path, state) -> None:
    from netdissect.atomic import atomic_write_bytes
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def statefile_save(path: Path, state) -> None:
    from netdissect.runs import statefile
    statefile.save(path, state)


def train_condition(cond: Condition, settings: Settings, data_digest: str, train, val, out: Path,
                    force: bool = False, log=print) -> dict:
    """Train one condition (resuming after its last finished epoch); returns train.json's content."""
    from netdissect.atomic import atomic_write_json
    from netdissect.runs import read_json
    key = {"condition": asdict(cond), "training": settings.training_key(), "data": data_digest}
    key_digest = _digest(key)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "train.json"
    if not force and done_file.exists():
        done = read_json(done_file)
        if done.get("key") == key_digest and (out / "final.pth").exists():
            log(f"{cond.name}: already trained (held-out accuracy {done['val_accuracy']:.3f})")
            return done
    model = cond.build()
    steps_per_epoch = max(1, -(-len(train[0]) // settings.batch_size))
    total = steps_per_epoch * settings.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total, pct_start=0.15)
    history: List[dict] = []
    start_epoch, seconds = 0, 0.0
    resume = out / "resume.npz"  # arrays and JSON (statefile): a planted file is never executed
    if (out / "resume.pt").exists():
        log(f"{cond.name}: ignoring {out / 'resume.pt'} (a pickled state of an older version is never loaded)")
    if not force and resume.exists():
        from netdissect.runs import statefile
        try:
            state = statefile.load(resume)
        except statefile.StateFileError as exc:
            log(f"{cond.name}: ignoring unreadable {resume} ({exc}); training from the start")
            state = None
        if isinstance(state, dict) and state.get("key") == key_digest:
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                start_epoch, history, seconds = int(state["epoch"]), list(state["history"]), float(state["seconds"])
                torch.set_rng_state(state["rng"])
                log(f"{cond.name}: resuming after epoch {start_epoch}")
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                # parsed, but not a state this version wrote: start over with fresh objects
                log(f"{cond.name}: ignoring {resume} ({type(exc).__name__}: {exc}); training from the start")
                model = cond.build()
                opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
                sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total,
                                                            pct_start=0.15)
                start_epoch, history, seconds = 0, [], 0.0
    ckpt = out / "ckpt"
    if start_epoch == 0:
        if ckpt.exists():
            for old in ckpt.glob("iter_*.pth"):
                old.unlink()
        _save_state(ckpt / f"iter_{0:06d}.pth", model.state_dict())
        history = [{"epoch": 0, "step": 0, "loss": None, "train_accuracy": None,
                    "val_accuracy": accuracy(model, *val)}]
    images, targets = train
    for epoch in range(start_epoch, settings.epochs):
        t0 = time.time()
        model.train()
        g = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
        order = torch.randperm(len(images), generator=g)
        flips = torch.rand(len(images), generator=g) < 0.5
        loss_sum, correct = 0.0, 0
        for s in range(0, len(order), settings.batch_size):
            idx = order[s:s + settings.batch_size]
            x = normalize(images[idx])
            x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(3), x)
            logits = model(x)
            loss = F.cross_entropy(logits, targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == targets[idx]).sum())
        step = (epoch + 1) * steps_per_epoch
        val_acc = accuracy(model, *val)
        seconds += time.time() - t0
        history.append({"epoch": epoch + 1, "step": step, "loss": loss_sum / len(images),
                        "train_accuracy": correct / len(images), "val_accuracy": val_acc})
        _save_state(ckpt / f"iter_{step:06d}.pth", model.state_dict())
        statefile_save(resume, {"key": key_digest, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "epoch": epoch + 1, "history": history,
                             "seconds": seconds, "rng": torch.get_rng_state()})
        log(f"{cond.name}: epoch {epoch + 1}/{settings.epochs} loss {loss_sum / len(images):.3f} "
            f"train {correct / len(images):.3f} held-out {val_acc:.3f} ({time.time() - t0:.1f}s)")
    _save_state(out / "final.pth", model.state_dict())
    result = {"key": key_digest, "condition": asdict(cond), "spec": cond.spec(),
              "val_accuracy": history[-1]["val_accuracy"], "train_accuracy": history[-1]["train_accuracy"],
              "history": history, "seconds": round(seconds, 1), "train_images": len(images),
              "val_images": len(val[0]), "settings": settings.training_key()}
    atomic_write_json(done_file, result)
    resume.unlink(missing_ok=True)
    return result


# --------------------------------------------------------------------------- the experiment

def run_conditions(out, settings: Settings = Settings(), force: bool = False, progress: bool = True,
                   threads: Optional[int] = None) -> dict:
    from netdissect.atomic import atomic_write_json, atomic_write_text
    from netdissect.data.broden import open_dataset
    from netdissect.data.synthetic import generate_synthetic
    from netdissect.experiments.checkpoints import dissect_series, plot_checkpoints
    from netdissect.experiments.common import log as _log
    from netdissect.experiments.common import write_csv
    from netdissect.experiments.compare import compare_rows, plot_compare, row_categories
    from netdissect.models.specs import load_model
    from netdissect.runs import finished_summary

    def log(msg):
        _log(msg, quiet=not progress)

    unknown = [c for c in settings.conditions if c not in CONDITIONS]
    if unknown:
        raise NetDissectError(f"unknown condition(s) {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}")
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}
    t_all = time.time()

    data = out / "data"
    t0 = time.time()
    if not (data / "index.csv").exists():
        log(f"generating {settings.images} synthetic images ({settings.size} px) into {data}")
        generate_synthetic(data, images=settings.images, size=settings.size, seed=settings.seed,
                           progress=progress)
    else:
        log(f"using the dataset in {data}")
    ds_check = open_dataset(data, categories=["scene"])
    first = ds_check.records[0]
    if (first.ih, first.iw) != (settings.size, settings.size) or len(ds_check) != settings.images:
        log(f"note: {data} holds {len(ds_check)} images of {first.ih} px (not {settings.images} of "
            f"{settings.size} px): using it as it is; delete it to regenerate")
    timings["data"] = time.time() - t0
    data_digest = ds_check.index_digest()
    train = load_split(data, "train")
    val = load_split(data, "val")
    log(f"scene task: {len(train[0])} training and {len(val[0])} held-out images, {len(SCENES)} classes")

    conds = make_conditions(settings.width, settings.seed)
    trained = {}
    for name in settings.conditions:
        t0 = time.time()
        trained[name] = train_condition(conds[name], settings, data_digest, train, val, out / "train" / name,
                                        force=force, log=log)
        timings[f"train_{name}"] = time.time() - t0

    layers = [EARLY_LAYER, LAST_LAYER]
    dissect_ds = open_dataset(data, split=settings.dissect_split)
    params = dict(workers=0, batch_size=100, min_category_images=1, split=settings.dissect_split)
    from netdissect.engine.pipeline import DissectConfig, dissect, manifest
    config = DissectConfig(layers=tuple(layers), **params)
    run_dirs = []
    for name in settings.conditions:
        t0 = time.time()
        cond = conds[name]
        loaded = load_model(cond.build(), checkpoint=out / "train" / name / "final.pth",
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)
        loaded.spec = cond.spec()
        run_dir = out / "dissect" / name
        if force or finished_summary(run_dir, manifest(loaded, dissect_ds, config)) is None:
            log(f"{name}: dissecting {', '.join(layers)} on the {settings.dissect_split} split")
            dissect(loaded, layers, dissect_ds, run_dir, progress=progress, force=force, **params)
        else:
            log(f"{name}: reusing the finished dissection {run_dir}")
        run_dirs.append(run_dir)
        timings[f"dissect_{name}"] = time.time() - t0

    dynamics_rows: List[dict] = []
    if settings.dynamics and "baseline" in settings.conditions:
        t0 = time.time()
        from netdissect.experiments.checkpoints import assign_steps
        files = dynamics_checkpoints(sorted((out / "train" / "baseline" / "ckpt").glob("iter_*.pth")))
        dynamics_rows = dissect_series(_BaselineFactory(conds["baseline"]), files, assign_steps(files), [LAST_LAYER],
                                       dissect_ds, out / "dynamics" / "runs", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                       progress=progress, force=force, log=log, **params)
        timings["dynamics"] = time.time() - t0

    # ---- the comparison
    rows = []
    for layer in layers:
        layer_rows = compare_rows(run_dirs, names=list(settings.conditions), layers=[layer])
        for r in layer_rows:
            t = trained[r["name"]]
            r.update({"condition": r["name"], "val_accuracy": t["val_accuracy"],
                      "train_accuracy": t["train_accuracy"], "width": t["condition"]["width"],
                      "dropout": t["condition"]["dropout"], "batchnorm": t["condition"]["batchnorm"],
                      "seed": t["condition"]["seed"], "spec": t["spec"],
                      "checkpoint": str(out / "train" / r["name"] / "final.pth")})
        rows += layer_rows
    cats = row_categories(rows)
    header = ["condition", "layer", "val_accuracy", "train_accuracy", "units", "detectors", "detector_share",
              "unique_detectors"] + [f"unique_{c}" for c in cats] + [f"detectors_{c}" for c in cats] + \
        ["width", "dropout", "batchnorm", "seed"]
    write_csv(out / "conditions.csv", header,
              [[r["condition"], r["layer"], r["val_accuracy"], r["train_accuracy"], r["units"], r["detectors"],
                r["detector_share"], r["unique_detectors"]] + [r["unique_per_category"].get(c, 0) for c in cats]
               + [r["detectors_per_category"].get(c, 0) for c in cats]
               + [r["width"], r["dropout"], r["batchnorm"], r["seed"]] for r in rows])
    for layer in layers:
        sub = [r for r in rows if r["layer"] == layer]
        for r in sub:
            r["name"] = r["condition"]
        plot_compare(sub, cats, out, stem=f"conditions_{layer}",
                     title=f"SceneCNN {layer}: training conditions ({settings.dissect_split} split, "
                           f"{settings.images} images of {settings.size} px)",
                     extra={"held-out accuracy (scene)": [r["val_accuracy"] for r in sub]})
    plot_training(trained, out)
    if dynamics_rows:
        steps_acc = {h["step"]: h["val_accuracy"] for h in trained["baseline"]["history"]}
        for r in dynamics_rows:
            r["val_accuracy"] = steps_acc.get(r["step"])
        plot_checkpoints(dynamics_rows, [LAST_LAYER], row_categories(dynamics_rows), out / "dynamics",
                         stem="dynamics", title="baseline: unique detectors during training")
        write_csv(out / "dynamics" / "dynamics.csv", ["step", "val_accuracy", "detectors", "unique_detectors"] +
                  [f"unique_{c}" for c in cats],
                  [[r["step"], r["val_accuracy"], r["detectors"], r["unique_detectors"]]
                   + [r["unique_per_category"].get(c, 0) for c in cats] for r in dynamics_rows])
    atomic_write_text(out / "classes.txt", "\n".join(SCENES) + "\n")
    timings["total"] = time.time() - t_all
    info = {"settings": asdict(settings), "categories": cats, "rows": rows,
            "training": {k: {kk: v[kk] for kk in ("val_accuracy", "train_accuracy", "seconds", "spec", "history")}
                         for k, v in trained.items()},
            "dynamics": dynamics_rows, "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    atomic_write_json(out / "conditions.json", info)
    return info


def dynamics_checkpoints(files: Sequence[Path], n: int = 8) -> List[Path]:
    """The initialization and about ``n`` epochs spaced geometrically (training changes fastest early)."""
    files = list(files)
    if len(files) <= n + 1:
        return files
    last = len(files) - 1
    picks = {0} | {int(round(last ** (i / (n - 1)))) for i in range(n)}
    return [files[i] for i in sorted(picks)]


class _BaselineFactory:
    """A model 'spec' for dissect_series: builds the condition's architecture (load_model accepts a module)."""

    def __init__(self, cond: Condition):
        self.cond = cond

    def __call__(self):
        return self.cond.build()


def plot_training(trained: Dict[str, dict], out: Path):
    from netdissect.experiments.style import plotting
    with plotting():
        from netdissect.experiments.style import new_figure, save_figure
        from netdissect.report.colors import EXTRA_COLORS
        fig, ax = new_figure(6.5, 3.8)
        palette = ["#222222", "#0072B2", "#009E73", "#D55E00", "#CC79A7"] + list(EXTRA_COLORS)
        for color, (name, t) in zip(palette, trained.items()):
            hist = t["history"]
            ax.plot([h["step"] for h in hist], [h["val_accuracy"] for h in hist], marker="o", markersize=3,
                    color=color, label=f"{name} ({t['val_accuracy']:.2f})")
        ax.axhline(1 / len(SCENES), color="#999999", linestyle=":", linewidth=1)
        ax.text(0, 1 / len(SCENES), " chance", va="bottom", fontsize=8, color="#777777")
        ax.set_ylim(0, 1)
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out accuracy (scene)")
        ax.set_title("Scene classification during training")
        ax.legend(loc="lower right", fontsize=8)
        return save_figure(fig, out, "training")


def command(args) -> int:
    from netdissect.experiments.common import format_table, publish
    overrides = dict(images=args.images, size=args.size, epochs=args.epochs, width=args.width, seed=args.seed,
                     conditions=tuple(args.conditions) if args.conditions else None)
    if args.quick:
        settings = Settings.quick(**overrides)
    else:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    info = run_conditions(args.out, settings, force=args.force, progress=not args.quiet, threads=args.threads)
    cats = info["categories"]
    print(format_table(["condition", "layer", "accuracy", "detectors", "unique"] + cats,
                       [[r["condition"], r["layer"], r["val_accuracy"], r["detectors"], r["unique_detectors"]]
                        + [r["unique_per_category"].get(c, 0) for c in cats] for r in info["rows"]]))
    t = info["timings_seconds"]
    print(f"(accuracy: held-out scene classification; category columns: unique detectors)\n"
          f"wrote {Path(args.out) / 'conditions.csv'}, conditions_{LAST_LAYER}.svg/.png, "
          f"conditions_{EARLY_LAYER}.svg/.png, training.svg/.png in {t['total']:.0f} s")
    publish(args.out, "Training conditions", "interpretability beside held-out scene accuracy for each "
            "training condition")
    return 0
