"""train_model on tiny data: it learns, stops early, keeps the best weights, weights classes,
is reproducible, and resumes only a checkpoint of the same run."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from medops.config.enums import Device
from medops.config.schema import AugmentConfig, ModelConfig, TrainConfig
from medops.errors import DataError, TrainingError
from medops.train import (
    ArrayData,
    EpochResult,
    ModelSpec,
    class_weights,
    embed,
    predict_proba,
    resolve_device,
    train_model,
)
from medops.train.augment import BatchAugmenter
from medops.train.checkpoint import kept_file
from medops.train.ema import WeightEMA
from medops.train.scoring import auc_score

# one thread: on a small shared machine OpenMP threads that spin-wait on each other cost more
# average_best=1, recalibrate_bn=False: these tests check the best epoch's weights (batch-norm
# statistics included) are the ones returned; tests/train/test_batchnorm.py checks the statistics
FAST = TrainConfig(epochs=3, batch_size=32, lr=3e-3, patience=3, device=Device.CPU, num_threads=1,
                   average_best=1, recalibrate_bn=False)


def test_learns_and_reports_every_epoch(
    tmp_path: Path, tiny_spec: ModelSpec, train_set: ArrayData, val_set: ArrayData
) -> None:
    seen: list[EpochResult] = []
    result = train_model(
        tiny_spec,
        train_set,
        val_set,
        FAST,
        ModelConfig(),
        checkpoint_dir=tmp_path,
        on_epoch=seen.append,
        progress=True,
    )
    assert [h.epoch for h in result.history] == [1, 2, 3] and seen == result.history
    assert result.epochs_run == 3 and not result.stopped_early
    assert result.resumed_from_epoch is None and result.device == "cpu"
    assert result.best_val_auc > 0.8
    assert (tmp_path / "last.pt").is_file()
    probs = predict_proba(result.model, val_set.x, batch_size=20)
    assert probs.shape == (48, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # the returned model holds the weights of the best epoch
    assert auc_score(val_set.y, probs) == pytest.approx(result.best_val_auc, abs=1e-6)
    assert embed(result.model, val_set.x[:5]).shape == (5, result.model.feature_dim)


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path, tiny_spec: ModelSpec) -> None:
    rng = np.random.default_rng(3)
    # labels independent of the images: validation AUC only wanders, so patience runs out
    noise = ArrayData(rng.normal(size=(64, 1, 16, 16)), rng.integers(0, 2, 64))
    val = ArrayData(rng.normal(size=(32, 1, 16, 16)), rng.integers(0, 2, 32))
    cfg = FAST.model_copy(update={"epochs": 30, "lr": 1e-2, "patience": 2})
    result = train_model(
        tiny_spec, noise, val, cfg, ModelConfig(), checkpoint_dir=tmp_path, progress=False
    )
    assert result.stopped_early
    assert result.epochs_run == result.best_epoch + cfg.patience < cfg.epochs
    best = max(result.history, key=lambda h: h.val_auc)
    assert result.best_epoch == best.epoch and result.best_val_auc == best.val_auc
    probs = predict_proba(result.model, val.x)
    assert auc_score(val.y, probs) == pytest.approx(result.best_val_auc, abs=1e-6)


def test_class_weights_are_inverse_frequency() -> None:
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    # n / (classes * count): 4 / (3 * 3) and 4 / (3 * 1); an absent class weighs nothing
    torch.testing.assert_close(w, torch.tensor([4 / 9, 4 / 3, 0.0]))


def test_class_weighting_lifts_the_minority_class(
    tmp_path: Path, tiny_spec: ModelSpec, make_data: Callable[..., ArrayData]
) -> None:
    train = make_data(128, seed=4, positive_fraction=0.1)
    val = make_data(64, seed=5, positive_fraction=0.5)

    def positive_rate(weighting: bool) -> float:
        update = {"epochs": 2, "lr": 1e-3, "class_weighting": weighting, "augment": None}
        cfg = FAST.model_copy(update=update)
        result = train_model(
            tiny_spec,
            train,
            val,
            cfg,
            ModelConfig(),
            checkpoint_dir=tmp_path / str(weighting),
            progress=False,
        )
        return float(predict_proba(result.model, val.x)[:, 1].mean())

    # the weighted loss pays ~9x more for a missed positive, so it predicts positives more
    assert positive_rate(True) > positive_rate(False) + 0.05


def test_same_seed_same_history(
    tmp_path: Path, tiny_spec: ModelSpec, train_set: ArrayData, val_set: ArrayData
) -> None:
    cfg = FAST.model_copy(update={"epochs": 2})
    runs = [
        train_model(
            tiny_spec,
            train_set,
            val_set,
            cfg,
            ModelConfig(),
            checkpoint_dir=tmp_path / str(i),
            progress=False,
        )
        for i in range(2)
    ]
    losses = [[h.train_loss for h in r.history] for r in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_finished_checkpoint_returns_without_training(
    tmp_path: Path, tiny_spec: ModelSpec, train_set: ArrayData, val_set: ArrayData
) -> None:
    cfg = FAST.model_copy(update={"epochs": 2})
    first = train_model(
        tiny_spec, train_set, val_set, cfg, ModelConfig(), checkpoint_dir=tmp_path, progress=False
    )
    calls: list[EpochResult] = []
    again = train_model(
        tiny_spec,
        train_set,
        val_set,
        cfg,
        ModelConfig(),
        checkpoint_dir=tmp_path,
        on_epoch=calls.append,
        progress=False,
    )
    assert calls == [] and again.resumed_from_epoch == 2
    assert again.history == first.history and again.best_epoch == first.best_epoch
    for a, b in zip(
        first.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)


def _kept_weights(folder: Path, epoch: int) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(
        kept_file(folder / "last.pt", epoch), weights_only=True
    )["state"]
    return state


def test_checkpoint_of_another_run_is_ignored(
    tmp_path: Path,
    tiny_spec: ModelSpec,
    train_set: ArrayData,
    val_set: ArrayData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = FAST.model_copy(update={"epochs": 1})
    train_model(
        tiny_spec, train_set, val_set, cfg, ModelConfig(), checkpoint_dir=tmp_path, progress=False
    )
    other = cfg.model_copy(update={"lr": 1e-4})
    result = train_model(
        tiny_spec,
        train_set,
        val_set,
        other,
        ModelConfig(),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    assert result.resumed_from_epoch is None
    assert "belongs to another run" in caplog.text


def test_bad_inputs(tmp_path: Path, tiny_spec: ModelSpec, train_set: ArrayData) -> None:
    rgb = ArrayData(np.zeros((4, 3, 16, 16)), np.zeros(4))
    with pytest.raises(DataError, match="1 channel"):
        train_model(tiny_spec, rgb, rgb, FAST, ModelConfig(), checkpoint_dir=tmp_path)
    bad_labels = ArrayData(train_set.x, np.full(len(train_set), 2))
    with pytest.raises(DataError, match="class indices"):
        train_model(tiny_spec, bad_labels, train_set, FAST, ModelConfig(), checkpoint_dir=tmp_path)
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        ArrayData(np.zeros((4, 16, 16)), np.zeros(4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_names_the_fix() -> None:
    assert resolve_device(Device.CPU).type == "cpu"
    assert resolve_device(Device.AUTO).type in ("cpu", "mps")
    with pytest.raises(TrainingError, match=r"train\.device: auto"):
        resolve_device(Device.CUDA)


def test_augmenter_is_seeded_and_flips_exactly() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    flips = BatchAugmenter(
        AugmentConfig(hflip=True, rotate_degrees=0, translate=0, scale=(1, 1), intensity=0)
    )
    out = flips(x.repeat(8, 1, 1, 1), torch.Generator().manual_seed(0))
    # bilinear resampling of a pure mirror lands on pixel centres: every image is x or x mirrored
    for img, src in zip(out, x.repeat(8, 1, 1, 1), strict=True):
        assert torch.allclose(img, src) or torch.allclose(img, src.flip(-1))
    assert any(not torch.allclose(i, s) for i, s in zip(out, x.repeat(8, 1, 1, 1), strict=True))
    full = BatchAugmenter(AugmentConfig(vflip=True))
    a = full(x, torch.Generator().manual_seed(1))
    b = full(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    none = BatchAugmenter(
        AugmentConfig(hflip=False, rotate_degrees=0, translate=0, scale=(1, 1), intensity=0)
    )
    assert torch.equal(none(x, torch.Generator().manual_seed(0)), x)


def test_nan_loss_is_a_training_error(
    tmp_path: Path, tiny_spec: ModelSpec, val_set: ArrayData
) -> None:
    broken = ArrayData(np.full((32, 1, 16, 16), np.nan), np.arange(32) % 2)
    with pytest.raises(TrainingError, match=r"lower train\.lr"):
        train_model(
            tiny_spec, broken, val_set, FAST, ModelConfig(), checkpoint_dir=tmp_path, progress=False
        )
    assert not math.isnan(FAST.lr)


def test_weight_ema_averages_steps() -> None:
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = WeightEMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # step 1: the decay is min(0.9, 2 / 11), so the average moves 9/11 of the way
    torch.testing.assert_close(ema.state["weight"], torch.full((1, 2), 9 / 11))
    for _ in range(200):
        ema.update(net)
    torch.testing.assert_close(ema.state["weight"], torch.ones(1, 2))
    restored = WeightEMA(net, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 201
    torch.testing.assert_close(restored.state["weight"], ema.state["weight"])


def test_the_weight_average_is_validated_and_returned(
    tmp_path: Path, tiny_spec: ModelSpec, train_set: ArrayData, val_set: ArrayData
) -> None:
    cfg = FAST.model_copy(update={"epochs": 2, "ema_epochs": 2.0})
    result = train_model(
        tiny_spec, train_set, val_set, cfg, ModelConfig(), checkpoint_dir=tmp_path, progress=False
    )
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    [kept] = ckpt["kept"]
    best = _kept_weights(tmp_path, kept["epoch"])
    returned = result.model.state_dict()
    for key, value in best.items():
        torch.testing.assert_close(returned[key], value.to(returned[key].dtype))
    # the average is not the last step's weights
    assert not torch.allclose(returned["head.weight"], ckpt["model"]["head.weight"])
    probs = predict_proba(result.model, val_set.x)
    assert auc_score(val_set.y, probs) == pytest.approx(result.best_val_auc, abs=1e-6)

    off = train_model(
        tiny_spec,
        train_set,
        val_set,
        cfg.model_copy(update={"ema_epochs": None}),
        ModelConfig(),
        checkpoint_dir=tmp_path / "off",
        progress=False,
    )
    plain = torch.load(tmp_path / "off" / "last.pt", weights_only=True)
    assert plain["ema"] is None
    assert [h.train_loss for h in off.history] == pytest.approx(
        [h.train_loss for h in result.history], rel=1e-5
    )  # the average does not change what is trained, only what is scored


def test_the_best_epochs_weights_are_averaged(
    tmp_path: Path, tiny_spec: ModelSpec, train_set: ArrayData, val_set: ArrayData
) -> None:
    cfg = FAST.model_copy(update={"epochs": 8, "patience": 10, "average_best": 2})
    result = train_model(
        tiny_spec, train_set, val_set, cfg, ModelConfig(), checkpoint_dir=tmp_path, progress=False
    )
    # the two best-scoring epochs (an earlier one wins a tie)
    ranked = sorted(result.history, key=lambda h: (-h.val_auc, h.epoch))
    assert result.averaged_epochs == sorted(h.epoch for h in ranked[:2])
    assert result.best_epoch == ranked[0].epoch
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert sorted(k["epoch"] for k in ckpt["kept"]) == result.averaged_epochs
    # each kept epoch's weights lie beside the checkpoint once; an ousted epoch's are removed
    assert sorted(p.name for p in tmp_path.glob("last.kept-*.pt")) == [
        f"last.kept-{e:04d}.pt" for e in result.averaged_epochs
    ]
    states = [_kept_weights(tmp_path, e) for e in result.averaged_epochs]
    returned = result.model.state_dict()
    for key, value in returned.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (states[0][key] + states[1][key]) / 2)
    # an average of two different epochs, not either of them
    assert not torch.allclose(returned["head.weight"], states[0]["head.weight"])
    assert not torch.allclose(returned["head.weight"], states[1]["head.weight"])


def test_short_runs_average_at_most_a_quarter_of_their_epochs(
    tmp_path: Path, tiny_spec: ModelSpec, train_set: ArrayData, val_set: ArrayData
) -> None:
    cfg = FAST.model_copy(update={"epochs": 3, "patience": 10, "average_best": 5})
    result = train_model(
        tiny_spec, train_set, val_set, cfg, ModelConfig(), checkpoint_dir=tmp_path, progress=False
    )
    assert result.averaged_epochs == [result.best_epoch]
