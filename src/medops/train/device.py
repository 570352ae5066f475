"""Choosing the torch device that ``train.device`` names."""

from __future__ import annotations

import torch

from medops.config.enums import Device
from medops.errors import TrainingError


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: Device | str) -> torch.device:
    """``auto`` is CUDA, else Apple MPS, else CPU; an unavailable explicit device is an error."""
    want = Device(device)
    if want is Device.AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if want is Device.CUDA and not torch.cuda.is_available():
        raise TrainingError(
            "train.device is 'cuda' but torch sees no CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
            "fix: set train.device: auto (or cpu), or install a CUDA build of torch"
        )
    if want is Device.MPS and not _mps_available():
        raise TrainingError(
            "train.device is 'mps' but Apple's Metal backend is not available here; "
            "fix: set train.device: auto (or cpu)"
        )
    return torch.device(want.value)
