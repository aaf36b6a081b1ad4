"""The model side of the pass: the device, the model in eval mode, normalized input batches, and
float32 activations checked for NaN and inf (an error names the layer and the image)."""
from __future__ import annotations

import torch
from torch import nn

from netdissect.data.broden import BrodenDataset
from netdissect.errors import ActivationError, NetDissectError
from netdissect.models.specs import LoadedModel


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise NetDissectError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise NetDissectError("--device cuda was asked but CUDA is not available; use --device cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise NetDissectError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                                  "device(s), numbered from 0")
    elif resolved.type != "cpu" and resolved.type != "mps":
        raise NetDissectError(f"--device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return resolved


class Normalizer:
    """uint8 (B, H, W, 3) -> normalized float (B, 3, H, W) in channels_last on the device."""

    def __init__(self, mean, std, device):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


def prepare_model(loaded: LoadedModel, device: torch.device) -> nn.Module:
    module = loaded.module.to(device).eval()
    if not loaded.is_torchscript:
        module = module.to(memory_format=torch.channels_last)
    return module


def float32_activations(layer: str, output: torch.Tensor, indices: torch.Tensor, ds: BrodenDataset,
                        check: bool = True) -> torch.Tensor:
    """float32 activations; NaN or inf is an error naming the layer and the image (``check=False``:
    the caller's threshold state finds them in its own read, see LayerStream.checks_finite)."""
    acts = output.detach().float()
    if check:
        require_finite(layer, acts, indices, ds)
    return acts


def require_finite(layer: str, acts: torch.Tensor, indices: torch.Tensor, ds: BrodenDataset) -> None:
    """ActivationError naming the layer and the first image whose activations hold NaN or inf."""
    if bool(torch.isfinite(acts.sum())):  # one cheap pass; NaN and inf both spoil the sum
        return
    finite = torch.isfinite(acts).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = int(torch.nonzero(~finite)[0, 0])
        record = ds.records[int(indices[bad])]
        raise ActivationError(
            f"layer {layer!r} produced NaN or inf activations on image {record.image} "
            f"(index.csv line {record.line}); check the model's weights and input normalization")
