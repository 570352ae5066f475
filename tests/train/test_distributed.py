"""Data-parallel training on two CPU processes (gloo), against the same training on one.

Two processes do not train the same model as one: each step averages the gradients of two
batches (the effective batch doubles at the same learning rate, so there are half as many
steps), the images fall into batches in another order, and batch norm normalises each rank's
batch by its own statistics (the running statistics kept are rank 0's). So the weights differ,
and the comparison is of what the training is for, on a small learnable task: the test AUC of
the returned model, which must be within :data:`AUC_TOLERANCE` of one process's
(docs/distributed.md states the same and why: over ten seeds the largest difference was 0.034,
measured by ``bench/train_ddp.py --agreement 10``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medops.config.enums import Architecture, Device, Task
from medops.config.schema import ModelConfig, TrainConfig
from medops.errors import ConfigError, DataError, TrainingError
from medops.train import ArrayData, ModelSpec, predict_proba, train_model
from medops.train.distributed import rank_device, torchrun_world

#: Largest difference of test AUC allowed between one and two processes.
AUC_TOLERANCE = 0.05

# A user's network (an entry point, as docs/models.md describes) that writes down which
# training images it is given, by the id hidden in each image's last pixel: one file per process.
RECORDER = '''
import os
from pathlib import Path

import torch
from torch import nn


class Recorder(nn.Module):
    def __init__(self, in_channels, num_classes, record, fail_rank, spare):
        super().__init__()
        self.record, self.fail_rank = Path(record), fail_rank
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
        if spare:  # a layer the forward pass never uses
            self.spare = nn.Linear(4, 4)

    def forward(self, x):
        if os.environ.get("RANK") == str(self.fail_rank):
            raise ValueError(f"rank {self.fail_rank} cannot go on")
        if self.training and torch.is_grad_enabled():  # a training step, not the BN pass
            ids = torch.round(x[:, 0, -1, -1] * 1000).long().tolist()
            with open(self.record / f"{os.getpid()}.ids", "a") as out:
                out.write(" ".join(map(str, ids)) + "\\n")
        return self.body(x)


def build(in_channels, num_classes, record, fail_rank=None, spare=False):
    return Recorder(in_channels, num_classes, record, fail_rank, spare)
'''

N_TRAIN = 128
EPOCHS = 6


def _tagged(data: ArrayData) -> ArrayData:
    """``data`` with each image's index, / 1000, in its last pixel."""
    x = data.x.copy()
    x[:, 0, -1, -1] = np.arange(len(x)) / 1000
    return ArrayData(x, data.y)


def _spec(root: Path, record: Path, **args: object) -> ModelSpec:
    (root / "recorder.py").write_text(RECORDER)
    record.mkdir(parents=True)
    return ModelSpec("recorder.py:build", in_channels=1, num_classes=2, small_input=False,
                     args={"record": str(record), **args}, code_root=root)


def _cfg(processes: int) -> TrainConfig:
    return TrainConfig(epochs=EPOCHS, batch_size=16, lr=3e-3, patience=EPOCHS, augment=None,
                       device=Device.CPU, average_best=1, processes=processes)


def _seen(record: Path) -> list[list[int]]:
    """The image ids each process trained on, in order; one list per process."""
    return [[int(i) for i in f.read_text().split()] for f in sorted(record.glob("*.ids"))]


@pytest.mark.slow
def test_two_processes_reach_the_metrics_of_one(
        tmp_path: Path, make_data: Callable[..., ArrayData]) -> None:
    train = _tagged(make_data(N_TRAIN, seed=0))
    val, test = make_data(48, seed=1), make_data(128, seed=2)
    results = {}
    for processes in (1, 2):
        record = tmp_path / f"seen-{processes}"
        spec = _spec(tmp_path, record)
        epochs: list[int] = []
        results[processes] = train_model(
            spec, train, val, _cfg(processes), ModelConfig(),
            checkpoint_dir=tmp_path / f"ckpt-{processes}",
            on_epoch=lambda ep, epochs=epochs: epochs.append(ep.epoch),  # type: ignore[misc]
            progress=False)
        # on_epoch ran here, in this process, once per epoch (rank 0 reports; no other does)
        assert epochs == list(range(1, EPOCHS + 1))

    one, two = results[1], results[2]
    assert (one.processes, two.processes) == (1, 2)
    assert two.epochs_run == EPOCHS and all(math.isfinite(h.val_auc) for h in two.history)
    auc = {n: roc_auc_score(test.y, predict_proba(r.model, test.x)[:, 1])
           for n, r in results.items()}
    assert auc[1] > 0.9, auc  # the task is learnt, so the comparison means something
    assert abs(auc[2] - auc[1]) <= AUC_TOLERANCE, auc

    # every epoch, the two processes trained on disjoint halves of the images, all of them
    seen = _seen(tmp_path / "seen-2")
    assert len(seen) == 2 and all(len(s) == EPOCHS * N_TRAIN // 2 for s in seen)
    half = N_TRAIN // 2
    orders = []
    for epoch in range(EPOCHS):
        a, b = (set(s[epoch * half : (epoch + 1) * half]) for s in seen)
        assert len(a) == len(b) == half and not a & b
        assert a | b == set(range(N_TRAIN))
        orders.append(seen[0][epoch * half : (epoch + 1) * half])
    assert len({tuple(o) for o in orders}) == EPOCHS  # set_epoch: a new draw every epoch
    # one process saw every image once per epoch
    (single,) = _seen(tmp_path / "seen-1")
    assert sorted(single[:N_TRAIN]) == list(range(N_TRAIN))


@pytest.mark.slow
def test_a_failing_rank_fails_the_training_with_its_error(
        tmp_path: Path, make_data: Callable[..., ArrayData]) -> None:
    spec = _spec(tmp_path, tmp_path / "seen", fail_rank=1)
    # rank 1's own error is the one reported, not the broken connection rank 0 sees once
    # rank 1 is gone
    with pytest.raises(TrainingError,
                       match=r"training process 1 of 2 failed: ValueError: rank 1 cannot go on"):
        train_model(spec, make_data(32, seed=0), make_data(16, seed=1), _cfg(2), ModelConfig(),
                    checkpoint_dir=tmp_path / "ckpt", progress=False)


@pytest.mark.slow
def test_a_network_with_unused_parameters_is_a_config_error(
        tmp_path: Path, make_data: Callable[..., ArrayData]) -> None:
    # DDP cannot average a gradient that is never computed; its own error names its internals
    spec = _spec(tmp_path, tmp_path / "seen", spare=True)
    with pytest.raises(ConfigError, match=r"recorder.py:build has trainable parameters that its "
                                          r"forward pass does not use.*train.processes: 1"):
        train_model(spec, make_data(32, seed=0), make_data(16, seed=1), _cfg(2), ModelConfig(),
                    checkpoint_dir=tmp_path / "ckpt", progress=False)


def _findings(n: int, seed: int) -> ArrayData:
    """16 px noise images with three findings, each a bright square in its own corner."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.4).astype(np.float32)
    x = rng.normal(size=(n, 1, 16, 16)).astype(np.float32)
    for k, (r, c) in enumerate(((1, 1), (1, 10), (10, 1))):
        x[:, 0, r : r + 5, c : c + 5] += 2.0 * y[:, k, None, None]
    return ArrayData(x, y)


@pytest.mark.slow
def test_multilabel_with_every_option_on_two_processes(tmp_path: Path) -> None:
    # the defaults of medops run (class weights, augmentation with mixup, the EMA, the average
    # of the best epochs, the batch-norm pass) on a multi-label task, with a patience that stops
    # early: every rank must agree on when to stop, or one would wait for the other forever
    spec = ModelSpec(Architecture.RESNET18, in_channels=1, num_classes=3, small_input=False,
                     flip_tta=True, task=Task.MULTILABEL)
    train, val, test = _findings(64, 0), _findings(32, 1), _findings(64, 2)
    cfg = TrainConfig(epochs=30, batch_size=16, lr=3e-3, patience=1, average_best=2,
                      device=Device.CPU, processes=2)
    assert cfg.class_weighting and cfg.augment is not None and cfg.augment.mixup > 0
    assert cfg.ema_epochs is not None and cfg.recalibrate_bn
    result = train_model(spec, train, val, cfg, ModelConfig(), checkpoint_dir=tmp_path,
                         progress=False)
    assert result.processes == 2 and result.stopped_early, result.history
    last_kept = max(result.averaged_epochs)
    assert result.epochs_run == last_kept + cfg.patience < cfg.epochs
    probs = predict_proba(result.model, test.x)
    assert probs.shape == (64, 3)
    assert roc_auc_score(test.y, probs, average="macro") > 0.9


def test_too_few_images_for_the_processes(
        tmp_path: Path, make_data: Callable[..., ArrayData], tiny_spec: ModelSpec) -> None:
    with pytest.raises(DataError, match="3 training processes need at least 6 training images"):
        train_model(tiny_spec, make_data(5, seed=0), make_data(4, seed=1), _cfg(3),
                    ModelConfig(), checkpoint_dir=tmp_path / "ckpt", progress=False)


def test_one_gpu_per_process() -> None:
    have = torch.cuda.device_count()
    with pytest.raises(TrainingError, match=f"need one GPU each, but torch sees {have}"):
        rank_device(torch.device("cuda"), 0, have + 1)
    with pytest.raises(TrainingError, match="not on mps"):
        rank_device(torch.device("mps"), 0, 2)
    assert rank_device(torch.device("cpu"), 1, 2) == torch.device("cpu")


def test_torchrun_variables() -> None:
    assert torchrun_world({}) is None
    assert torchrun_world({"RANK": "0", "WORLD_SIZE": "1"}) is None
    world = torchrun_world({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                            "LOCAL_WORLD_SIZE": "2"})
    assert world is not None and (world.rank, world.world, world.local_rank,
                                  world.local_world) == (3, 4, 1, 2)
    with pytest.raises(Exception, match="must be integers"):
        torchrun_world({"RANK": "x", "WORLD_SIZE": "2"})
