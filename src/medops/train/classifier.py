"""The model interface every network medops trains or serves is wrapped in.

A :class:`Classifier` maps images to logits and to features (the input of its last layer, what
drift monitoring compares), and knows its :class:`~medops.train.spec.ModelSpec`, so the task
(softmax over classes, or a sigmoid per finding) travels with the weights: training, evaluation,
serving and monitoring all call :meth:`Classifier.activate` instead of choosing themselves.

Two kinds: :class:`BackboneClassifier` (a torchvision backbone and a linear head, the built-in
architectures) and :class:`WrappedClassifier` (any ``nn.Module`` that returns logits: a user's
entry point, a MONAI network, a TorchXRayVision model).

With ``spec.flip_tta`` the network in eval mode returns the mean of the logits of the image and
of its left-right mirror (one forward pass of both).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from medops.config.enums import Task
from medops.train.spec import ModelSpec


class Classifier(nn.Module):
    """Images (N, C, H, W) to logits (N, num_classes) and features (N, feature_dim)."""

    spec: ModelSpec
    feature_dim: int

    def _logits_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (N, num_classes); in eval mode flip-averaged when ``spec.flip_tta``."""
        return self.logits_and_features(x)[0]

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(x)`` and ``embed(x)`` from one pass (the features of the images as given,
        not of their flipped copies)."""
        if self.training or not self.spec.flip_tta:
            return self._logits_features(x)
        logits, features = self._logits_features(torch.cat([x, x.flip(-1)]))
        n = len(x)
        return (logits[:n] + logits[n:]) / 2, features[:n]

    def single_view_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the images as given, never flip-averaged (what validation scores)."""
        return self._logits_features(x)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape (N, feature_dim)."""
        return self._logits_features(x)[1]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from logits: a softmax over classes, or a sigmoid per finding."""
        return activate(self.spec.task, logits)


def activate(task: Task, logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if task is Task.MULTILABEL:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


class BackboneClassifier(Classifier):
    """A backbone that maps images to a feature vector, and a head that maps it to logits."""

    def __init__(
        self, spec: ModelSpec, backbone: nn.Module, head: nn.Module, feature_dim: int
    ) -> None:
        super().__init__()
        self.spec = spec
        self.feature_dim = feature_dim
        self.backbone = backbone
        self.head = head

    def _logits_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return self.head(features), features


# The features a wrapped network's last linear layer was given, per thread: serving runs
# forward passes of one model in several threads at once.
_CAPTURED = threading.local()


def _capture_input(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    _CAPTURED.value = args[0]


class WrappedClassifier(Classifier):
    """Any network whose ``forward`` returns logits (N, num_classes).

    Its features are the input of its last ``nn.Linear`` (by registration order), read by a
    forward hook that changes nothing in the computation; a network without one has its logits
    as features.
    """

    def __init__(self, spec: ModelSpec, net: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.net = net
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if linears:
            linears[-1].register_forward_hook(_capture_input)
            self.feature_dim = int(linears[-1].in_features)
        else:
            self.feature_dim = spec.num_classes

    def _logits_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _CAPTURED.value = None
        logits = self.net(x)
        features = _CAPTURED.value
        _CAPTURED.value = None
        if not isinstance(logits, torch.Tensor):
            raise TypeError(
                f"{self.spec.architecture} returned {type(logits).__name__}, not a tensor of "
                "logits")
        if features is None or features.shape[0] != logits.shape[0]:
            return logits, logits
        return logits, features.flatten(1)
