"""The task's training rules: per-finding positive weights, the multi-label loss and its mixup,
target checks, and a multi-label model that learns, reports macro AUC and resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medops.config.enums import Architecture, Task
from medops.config.schema import ModelConfig
from medops.errors import DataError
from medops.train import (
    ArrayData,
    EpochResult,
    ModelSpec,
    finding_pos_weights,
    predict_proba,
    train_model,
    train_task,
)
from medops.train.scoring import macro_finding_auc
from medops.train.task import POS_WEIGHT_RANGE

from .test_trainer import FAST

# a bright square per finding, each in its own corner
_CORNERS = [(slice(1, 6), slice(1, 6)), (slice(1, 6), slice(10, 15)), (slice(10, 15), slice(1, 6))]


def _findings_data(n: int, *, seed: int) -> ArrayData:
    """Noise images (16 px); finding k (present at random, independently) brightens corner k."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(_CORNERS))) < 0.4).astype(np.float32)
    x = rng.normal(size=(n, 1, 16, 16)).astype(np.float32)
    for k, (rows, cols) in enumerate(_CORNERS):
        x[:, :, rows, cols] += 2.0 * y[:, k, None, None, None]
    return ArrayData(x, y)


@pytest.fixture
def ml_spec() -> ModelSpec:
    return ModelSpec(Architecture.RESNET18, in_channels=1, num_classes=len(_CORNERS),
                     small_input=False, task=Task.MULTILABEL)


def test_pos_weights_are_negatives_over_positives_clipped() -> None:
    y = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1]], dtype=np.float32)
    # 3 negatives / 1 positive; no positives and no negatives both weigh 1
    torch.testing.assert_close(finding_pos_weights(y), torch.tensor([3.0, 1.0, 1.0]))
    rare = np.zeros((500, 2), dtype=np.float32)
    rare[0, 0] = 1.0  # 499 / 1, clipped
    rare[:, 1] = 1.0
    rare[0, 1] = 0.0  # 1 / 499, clipped
    torch.testing.assert_close(finding_pos_weights(rare), torch.tensor([POS_WEIGHT_RANGE[1],
                                                                        POS_WEIGHT_RANGE[0]]))


def test_multilabel_loss_is_weighted_bce_and_mixup_mixes_targets() -> None:
    task = train_task(Task.MULTILABEL)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=gen)
    y = (torch.rand(6, 3, generator=gen) < 0.5).float()
    weight = torch.tensor([2.0, 1.0, 0.5])
    expected = F.binary_cross_entropy_with_logits(logits, y, pos_weight=weight)
    torch.testing.assert_close(task.loss(logits, y, weight), expected)
    partner, lam = torch.tensor([5, 4, 3, 2, 1, 0]), 0.3
    # BCE is linear in its target: mixing the targets is mixing the two losses
    mixed = lam * task.loss(logits, y, weight) + (1 - lam) * task.loss(logits, y[partner], weight)
    torch.testing.assert_close(task.mixup_loss(logits, y, partner, lam, weight), mixed)
    torch.testing.assert_close(task.probabilities(logits), torch.sigmoid(logits))


def test_macro_finding_auc_skips_findings_without_both_kinds() -> None:
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]], dtype=np.float32)
    probs = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.4], [0.6, 0.2, 0.1], [0.7, 0.9, 0.3]])
    # only finding 0 has positives and negatives: 3 of its 4 pairs are ranked right
    assert macro_finding_auc(y, probs) == pytest.approx(0.75)
    assert np.isnan(macro_finding_auc(y[:, 1:], probs[:, 1:]))
    assert train_task(Task.MULTILABEL).auc_defined(y)
    assert not train_task(Task.MULTILABEL).auc_defined(y[:, 1:])


def test_targets_must_fit_the_task(tmp_path: Path, ml_spec: ModelSpec) -> None:
    data = _findings_data(8, seed=0)
    multiclass = ModelSpec(Architecture.RESNET18, in_channels=1, num_classes=3, small_input=False)
    with pytest.raises(DataError, match="task: multilabel"):
        train_model(multiclass, data, data, FAST, ModelConfig(), checkpoint_dir=tmp_path)
    with pytest.raises(DataError, match=r"shape \(N, 3\)"):
        train_model(ml_spec, ArrayData(data.x, data.y[:, :2]), data, FAST, ModelConfig(),
                    checkpoint_dir=tmp_path)
    with pytest.raises(DataError, match=r"shape \(N, 3\)"):  # class indices for a multilabel model
        train_model(ml_spec, ArrayData(data.x, np.zeros(8)), data, FAST, ModelConfig(),
                    checkpoint_dir=tmp_path)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        train_model(ml_spec, ArrayData(data.x, data.y * 2), data, FAST, ModelConfig(),
                    checkpoint_dir=tmp_path)


def test_a_multilabel_model_learns_its_findings(tmp_path: Path, ml_spec: ModelSpec) -> None:
    train, val = _findings_data(96, seed=1), _findings_data(48, seed=2)
    assert train.y.dtype == np.float32 and train.y.shape == (96, 3)
    result = train_model(ml_spec, train, val, FAST, ModelConfig(), checkpoint_dir=tmp_path,
                         progress=False)
    assert result.best_val_auc > 0.8
    probs = predict_proba(result.model, val.x)
    assert probs.shape == (48, 3) and ((probs >= 0) & (probs <= 1)).all()
    assert not np.allclose(probs.sum(axis=1), 1.0)  # a sigmoid per finding, not a softmax
    # the returned weights are the best epoch's: they score its validation macro AUC
    assert macro_finding_auc(val.y, probs) == pytest.approx(result.best_val_auc, abs=1e-6)
    assert all(0 <= h.val_accuracy <= 1 for h in result.history)


class _KilledError(Exception):
    pass


def test_an_interrupted_multilabel_run_resumes_as_if_never_stopped(
    tmp_path: Path, ml_spec: ModelSpec
) -> None:
    train, val = _findings_data(64, seed=3), _findings_data(32, seed=4)
    cfg = FAST.model_copy(update={"epochs": 2})
    straight = train_model(ml_spec, train, val, cfg, ModelConfig(),
                           checkpoint_dir=tmp_path / "straight", progress=False)

    def killed(result: EpochResult) -> None:
        raise _KilledError

    with pytest.raises(_KilledError):
        train_model(ml_spec, train, val, cfg, ModelConfig(), checkpoint_dir=tmp_path / "killed",
                    on_epoch=killed, progress=False)
    resumed = train_model(ml_spec, train, val, cfg, ModelConfig(),
                          checkpoint_dir=tmp_path / "killed", progress=False)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 2
    assert [h.train_loss for h in resumed.history] == pytest.approx(
        [h.train_loss for h in straight.history], rel=1e-5)
    assert [h.val_auc for h in resumed.history] == pytest.approx(
        [h.val_auc for h in straight.history], rel=1e-5)
