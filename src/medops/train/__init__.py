"""Training: torchvision classifiers for medical images, a resumable trainer, and inference."""

from medops.train.architectures import build_model, resolve_flip_tta, resolve_small_input
from medops.train.checkpoint import discard_checkpoint, prune_checkpoints
from medops.train.classifier import BackboneClassifier, Classifier, WrappedClassifier
from medops.train.device import resolve_device
from medops.train.predict import embed, predict_proba
from medops.train.spec import ModelSpec
from medops.train.task import TrainTask, class_weights, finding_pos_weights, train_task
from medops.train.trainer import ArrayData, EpochResult, TrainResult, train_model

__all__ = [
    "ArrayData",
    "BackboneClassifier",
    "Classifier",
    "EpochResult",
    "ModelSpec",
    "TrainResult",
    "TrainTask",
    "WrappedClassifier",
    "build_model",
    "class_weights",
    "discard_checkpoint",
    "embed",
    "finding_pos_weights",
    "predict_proba",
    "prune_checkpoints",
    "resolve_device",
    "resolve_flip_tta",
    "resolve_small_input",
    "train_model",
    "train_task",
]
