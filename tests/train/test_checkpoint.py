"""Checkpoints: a kept epoch's weights file that is gone makes the run start over; folders that
can no longer be resumed are removed, resumable ones stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from medops.config.schema import ModelConfig
from medops.train import (
    ArrayData,
    EpochResult,
    ModelSpec,
    discard_checkpoint,
    prune_checkpoints,
    train_model,
)
from medops.train.checkpoint import CHECKPOINT_FILE, kept_file

from .test_trainer import FAST


class _KilledError(Exception):
    pass


def _train(folder: Path, spec: ModelSpec, train: ArrayData, val: ArrayData, epochs: int) -> None:
    train_model(spec, train, val, FAST.model_copy(update={"epochs": epochs}), ModelConfig(),
                checkpoint_dir=folder, progress=False)


def test_finished_and_unreadable_checkpoints_go_interrupted_ones_stay(
    tmp_path: Path, tiny_spec: ModelSpec, train_set: ArrayData, val_set: ArrayData
) -> None:
    root = tmp_path / "checkpoints"
    _train(root / "finished", tiny_spec, train_set, val_set, epochs=1)
    _train(root / "current", tiny_spec, train_set, val_set, epochs=1)

    def killed_after_epoch_1(result: EpochResult) -> None:
        raise _KilledError

    with pytest.raises(_KilledError):  # the checkpoint of epoch 1 of 2: the run can be resumed
        train_model(tiny_spec, train_set, val_set, FAST.model_copy(update={"epochs": 2}),
                    ModelConfig(), checkpoint_dir=root / "interrupted",
                    on_epoch=killed_after_epoch_1, progress=False)
    (root / "torn").mkdir()
    (root / "torn" / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 not a whole checkpoint")
    (root / "starting").mkdir()  # a training that has written only its first kept weights
    kept_file(root / "starting" / CHECKPOINT_FILE, 1).write_bytes(b"...")

    removed = prune_checkpoints(root, keep=root / "current")

    assert removed == [root / "finished", root / "torn"]
    assert sorted(p.name for p in root.iterdir()) == ["current", "interrupted", "starting"]
    # a discarded run's checkpoint goes unless it is finished (an unchanged re-run reuses it)
    assert discard_checkpoint(root / "current") is False
    assert discard_checkpoint(root / "starting") is True
    assert discard_checkpoint(root / "gone") is False
    assert sorted(p.name for p in root.iterdir()) == ["current", "interrupted"]
    # what stays still resumes: the interrupted run continues after its epoch 1
    resumed = train_model(tiny_spec, train_set, val_set, FAST.model_copy(update={"epochs": 2}),
                          ModelConfig(), checkpoint_dir=root / "interrupted", progress=False)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 2


def test_a_checkpoint_missing_its_kept_weights_starts_over(
    tmp_path: Path, tiny_spec: ModelSpec, train_set: ArrayData, val_set: ArrayData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = FAST.model_copy(update={"epochs": 2})
    first = train_model(
        tiny_spec, train_set, val_set, cfg, ModelConfig(), checkpoint_dir=tmp_path, progress=False
    )
    kept_file(tmp_path / CHECKPOINT_FILE, first.best_epoch).unlink()
    again = train_model(
        tiny_spec, train_set, val_set, cfg, ModelConfig(), checkpoint_dir=tmp_path, progress=False
    )
    assert again.resumed_from_epoch is None and len(again.history) == 2
    assert f"last.kept-{first.best_epoch:04d}.pt cannot be read" in caplog.text
    assert [h.train_loss for h in again.history] == pytest.approx(
        [h.train_loss for h in first.history], rel=1e-5
    )  # trained again from scratch, the same way


def test_a_missing_root_removes_nothing(tmp_path: Path) -> None:
    assert prune_checkpoints(tmp_path / "none", keep=tmp_path / "none" / "x") == []
