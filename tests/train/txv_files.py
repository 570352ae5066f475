"""TorchXRayVision weight files of the real shapes and kinds, written by the tests themselves
(the real ones cannot be downloaded here): a DenseNet file is a whole pickled module, as
TorchXRayVision publishes it; a ResNet file is a state dict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from medops.train import txv


def write_weights(name: str, folder: Path, seed: int = 0) -> Path:
    """The weights file of ``txv:NAME`` under TorchXRayVision's own file name in ``folder``,
    with random (seeded) weights and non-trivial batch-norm statistics."""
    info = txv.weights_info(f"txv:{name}")
    torch.manual_seed(seed)
    net = txv.network(info)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / info.file_name
    torch.save(net.state_dict() if info.is_resnet else net, path)
    return path


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def write_malicious(name: str, folder: Path, marker: Path) -> Path:
    """A file under ``txv:NAME``'s file name whose unpickling would run code."""
    info = txv.weights_info(f"txv:{name}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / info.file_name
    torch.save({"state_dict": Payload(marker)}, path)
    return path
