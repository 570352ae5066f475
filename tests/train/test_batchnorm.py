"""Batch-norm statistics measured again for averaged weights: what they become, and that the
trainer returns them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medops.config.enums import Device
from medops.config.schema import ModelConfig, TrainConfig
from medops.train import ArrayData, ModelSpec, batchnorm, train_model
from medops.train.batchnorm import recalibrate_batch_norm

CPU = torch.device("cpu")


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale, shift = np.array([2.0, 0.5, 1.0]), np.array([1.0, -3.0, 0.0])
    x = rng.normal(size=(n, 3, 8, 8)) * scale[:, None, None] + shift[:, None, None]
    return x.astype(np.float32)


def _recalibrate(model: nn.Module, images: np.ndarray, **kw: int) -> int:
    options = {"batch_size": 64, "seed": 0} | kw
    return recalibrate_batch_norm(model, images, device=CPU,
                                  memory_format=torch.contiguous_format, **options)


def _statistics(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    assert norm.running_mean is not None and norm.running_var is not None
    return norm.running_mean, norm.running_var


def test_the_statistics_become_those_of_the_images() -> None:
    norm = nn.BatchNorm2d(3)
    mean, var = _statistics(norm)
    mean.fill_(7.0)  # stale statistics, as an average of epochs' ones would be
    var.fill_(9.0)
    images = _images(50)
    assert _recalibrate(norm, images) == 50
    x = torch.from_numpy(images)
    mean, var = _statistics(norm)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(var, x.var((0, 2, 3)))  # unbiased, as torch keeps
    assert not norm.training and norm.momentum == 0.1  # back to inference, momentum restored


def test_a_batch_of_one_is_left_out_and_large_sets_are_sampled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = _images(65)
    assert _recalibrate(nn.BatchNorm2d(3), images) == 64  # 64 + 1: the single one is cut

    monkeypatch.setattr(batchnorm, "MAX_IMAGES", 20)
    stats = []
    for seed in (0, 0, 1):
        norm = nn.BatchNorm2d(3)
        assert _recalibrate(norm, images, seed=seed) == 20
        stats.append(_statistics(norm)[0].clone())
    torch.testing.assert_close(stats[0], stats[1])  # the sample is seeded
    assert not torch.allclose(stats[0], stats[2])


def test_a_model_without_batch_norm_is_left_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _recalibrate(model, _images(10)) == 0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_the_trainer_returns_the_average_with_recomputed_statistics(
    tmp_path: Path, tiny_spec: ModelSpec, train_set: ArrayData, val_set: ArrayData
) -> None:
    cfg = TrainConfig(epochs=8, batch_size=32, lr=3e-3, device=Device.CPU, num_threads=1,
                      average_best=2, recalibrate_bn=False)
    plain = train_model(tiny_spec, train_set, val_set, cfg, ModelConfig(),
                        checkpoint_dir=tmp_path, progress=False)
    # the same checkpoint, read again with the default: no retraining, only the statistics
    recalibrated = train_model(tiny_spec, train_set, val_set,
                               cfg.model_copy(update={"recalibrate_bn": True}), ModelConfig(),
                               checkpoint_dir=tmp_path, progress=False)
    assert recalibrated.history == plain.history and len(plain.averaged_epochs) == 2

    averaged = {k: v.clone() for k, v in plain.model.state_dict().items()}
    _recalibrate(plain.model, train_set.x, batch_size=32)
    returned = recalibrated.model.state_dict()
    changed = set()
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(returned[key], value)
        if not torch.equal(value, averaged[key]):
            changed.add(key.rsplit(".", 1)[1])
    # the learnt weights are the average's; only the statistics were measured again
    assert changed == {"running_mean", "running_var", "num_batches_tracked"}
    assert not recalibrated.model.training
