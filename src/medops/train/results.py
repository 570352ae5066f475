"""What training takes and gives: the image arrays, one epoch's record and the run's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medops.config.schema import ModelConfig, TrainConfig
from medops.errors import DataError
from medops.train.classifier import Classifier
from medops.train.spec import ModelSpec


@dataclass
class ArrayData:
    """Images (N, C, H, W) float32 and their targets: class indices (N,) int64 (multiclass), or
    a multi-hot matrix (N, K) float32 of K findings (multilabel; any 2-D ``y``)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y)
        if y.ndim == 2:
            self.y = y.astype(np.float32)
        else:
            self.y = y.astype(np.int64).reshape(-1)
        if self.x.ndim != 4:
            raise DataError(f"images must have shape (N, C, H, W); got {self.x.shape}")
        if len(self.x) != len(self.y):
            raise DataError(f"{len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class EpochResult:
    """What one epoch did. ``epoch`` counts from 1; NaN where a value is undefined."""

    epoch: int
    train_loss: float
    val_loss: float
    val_auc: float
    val_accuracy: float
    lr: float
    seconds: float
    best_so_far: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochResult:
        return cls(**d)


@dataclass
class KeptEpoch:
    """The weights of one of the best-scoring epochs (a copy, never changed)."""

    score: float
    epoch: int
    state: dict[str, torch.Tensor]


@dataclass
class TrainResult:
    """The outcome of :func:`~medops.train.trainer.train_model`. ``model`` holds the average of
    the weights of the epochs in ``averaged_epochs`` (the best-scoring ones), on the CPU;
    ``best_epoch`` and ``best_val_auc`` are those of the single best epoch.

    ``epochs_run`` counts every finished epoch, those before a resume included. ``processes``
    is how many processes trained (data parallel when more than one; ``device`` is then rank
    0's)."""

    model: Classifier
    best_epoch: int
    best_val_auc: float
    history: list[EpochResult]
    resumed_from_epoch: int | None
    stopped_early: bool
    device: str
    epochs_run: int
    averaged_epochs: list[int]
    processes: int = 1


@dataclass(frozen=True)
class TrainJob:
    """One training, as :func:`~medops.train.trainer.train_model` was asked for it: what every
    process of a data-parallel training is given."""

    spec: ModelSpec
    train: ArrayData
    val: ArrayData
    cfg: TrainConfig
    model_cfg: ModelConfig
    checkpoint_dir: Path
