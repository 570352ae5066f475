"""The training loop: seeded, augmented on the device, early-stopped on validation AUC, resumable.

Recipe: AdamW with ``train.lr`` and ``train.weight_decay``; the learning rate warms up linearly
over the first epoch and then follows a cosine down to zero at ``train.epochs`` (stepped per
batch; early stopping may end the run before the end of the cosine). The loss depends on the
task (:mod:`medops.train.task`): for a multi-class model cross-entropy with label smoothing 0.1,
weighted by inverse class frequency when ``train.class_weighting``; for a multi-label model
binary cross-entropy per finding with a positive weight of negatives / positives when
``train.class_weighting``. With ``augment.mixup`` each batch is mixed with a shuffled copy of
itself (and so are the two label sets: their losses, or the multi-hot targets). With
``train.ema_epochs`` an exponential moving average of the weights (:mod:`medops.train.ema`) is
what gets scored, kept and returned. After every epoch that model is
scored on the validation set (the images as given, without the flip average: see
:func:`~medops.train.scoring.validate`). The weights returned are the average of the weights of the
``train.average_best`` best-scoring epochs (a "soup" of checkpoints: on validation sets of a few
dozen images the single best epoch is partly chance, and the average of the few best is steadier
and scores higher on held-out data; docs/benchmarks.md), at most a quarter of ``train.epochs`` of
them: in a short run the early epochs are far from the final weights, and averaging them in
spoils the model. With ``train.recalibrate_bn`` the batch-norm statistics of the returned
weights are then measured again on the training images (:mod:`medops.train.batchnorm`).
Training stops after ``train.patience`` epochs in which no epoch joined those
best (when one epoch is kept, the classic rule: no better score).

The score is the validation ROC-AUC (binary: of class 1; multi-class: macro one-vs-rest over the
classes present; multi-label: the macro mean over the findings with positives and negatives).
When the validation set holds fewer than two classes (no finding with both) AUC is undefined
and the validation loss decides instead; without a validation set the last epoch is kept.

``checkpoint_dir/last.pt`` is rewritten (atomically, in the background while the next epoch
trains) after every epoch, the kept epochs' weights written once each beside it, so a killed
run started again with the same inputs continues after its last written epoch, and a finished
one returns at once. Data order, augmentation and mixup are drawn from generators seeded by
``(seed, epoch)``, so a resumed run sees the same batches as an uninterrupted one (the EMA is
in the checkpoint).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medops.config.schema import ModelConfig, TrainConfig
from medops.errors import DataError, TrainingError
from medops.train import distributed
from medops.train.architectures import build_model
from medops.train.augment import BatchAugmenter
from medops.train.batchnorm import recalibrate_batch_norm
from medops.train.checkpoint import (
    CHECKPOINT_FILE,
    FORMAT_VERSION,
    CheckpointWriter,
    fingerprint,
    load_checkpoint,
    rng_state,
    set_rng_state,
    snapshot,
)
from medops.train.classifier import Classifier
from medops.train.device import resolve_device
from medops.train.ema import WeightEMA
from medops.train.progress import TrainProgress
from medops.train.results import ArrayData, EpochResult, KeptEpoch, TrainJob, TrainResult
from medops.train.scoring import ValScore, seed_everything, validate
from medops.train.spec import ModelSpec
from medops.train.task import TrainTask, train_task

log = logging.getLogger(__name__)


def train_model(
    spec: ModelSpec,
    train: ArrayData,
    val: ArrayData,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    *,
    checkpoint_dir: Path,
    on_epoch: Callable[[EpochResult], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a :class:`Classifier` for ``spec`` (see the module docstring for the recipe)."""
    _check_data(spec, train, val)
    if len(train) < 2:
        raise DataError(f"training needs at least 2 images (got {len(train)})")
    device = resolve_device(cfg.device)
    if distributed.data_parallel(cfg):
        from medops.train.launcher import train_data_parallel

        job = TrainJob(spec, train, val, cfg, model_cfg, Path(checkpoint_dir))
        return train_data_parallel(job, device, on_epoch=on_epoch, progress=progress)
    with torch_threads(cfg.num_threads):
        run = _Run(spec, train, val, cfg, model_cfg, device, Path(checkpoint_dir))
        return run.execute(on_epoch, progress)


def _check_data(spec: ModelSpec, *sets: ArrayData) -> None:
    task = train_task(spec.task)
    for data in sets:
        if len(data) and data.x.shape[1] != spec.in_channels:
            raise DataError(
                f"the model takes {spec.in_channels} channel(s) but the images have "
                f"{data.x.shape[1]} (shape {data.x.shape})"
            )
        if len(data):
            task.check_targets(data.y, spec.num_classes)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """``train.num_threads`` for the duration of the run only (torch's setting is global)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; the fused kernel where torch has one (on CPU it is ~8x faster than the default)."""
    fused = device.type in ("cpu", "cuda") or None
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused
    )


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then a cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _Run:
    """The state of one training run; ``execute`` runs (or resumes) it.

    Data-parallel training (:mod:`medops.train.ddp`) subclasses it: the methods it overrides are
    the few places where one process of several differs from a lone one (the model it builds,
    the images it draws, the loss and validation scores it shares, the checkpoint it writes)."""

    def __init__(
        self,
        spec: ModelSpec,
        train: ArrayData,
        val: ArrayData,
        cfg: TrainConfig,
        model_cfg: ModelConfig,
        device: torch.device,
        checkpoint_dir: Path,
    ) -> None:
        self.spec, self.train, self.val, self.cfg, self.device = spec, train, val, cfg, device
        self.path = checkpoint_dir / CHECKPOINT_FILE
        self.fingerprint = fingerprint(
            spec.to_dict(), cfg, model_cfg, (train.x, train.y), (val.x, val.y)
        )
        seed_everything(cfg.seed)
        self.model = self._build_model(spec, model_cfg)
        # channels-last is what oneDNN (CPU) and cuDNN convolutions run fastest on
        self.memory_format = (
            torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        )
        self.model.to(device)
        self.model.to(memory_format=self.memory_format)
        self.net: nn.Module = self.model  # what the training steps run: a DDP wrapper in DDP
        self.optimizer = make_optimizer(self.model, cfg, device)
        self.steps_per_epoch = self._batches_per_epoch()
        total = cfg.epochs * self.steps_per_epoch
        warmup = min(self.steps_per_epoch, total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _lr_factor(step, warmup, total)
        )
        self.task: TrainTask = train_task(spec.task)
        weight = self.task.loss_weight(train.y, spec.num_classes) if cfg.class_weighting else None
        self.loss_weight = weight.to(device) if weight is not None else None
        self.augment = BatchAugmenter(cfg.augment) if cfg.augment is not None else None
        self.ema: WeightEMA | None = None
        self.scored_model: Classifier = self.model
        if cfg.ema_epochs is not None:
            decay = 1.0 - 1.0 / max(1.0, cfg.ema_epochs * self.steps_per_epoch)
            self.ema = WeightEMA(self.model, decay)
            # validation runs on a second network holding the average, so training is untouched
            self.scored_model = copy.deepcopy(self.model)
        self.x_train = torch.from_numpy(train.x)
        self.y_train = torch.from_numpy(train.y)
        self.history: list[EpochResult] = []
        self.kept: list[KeptEpoch] = []  # the best epochs, best first, at most self.average
        self.average = max(1, min(cfg.average_best, cfg.epochs // 4))
        self.monitor = _monitor_for(val, self.task)
        self._finished = False
        self._stopped_early = False
        self._writer = CheckpointWriter()

    def _build_model(self, spec: ModelSpec, model_cfg: ModelConfig) -> Classifier:
        weights = Path(model_cfg.weights).expanduser() if model_cfg.weights else None
        return build_model(spec, pretrained=model_cfg.pretrained, weights=weights)

    def _samples_per_epoch(self) -> int:
        """The training images this process draws in one epoch."""
        return len(self.train)

    def _batches_per_epoch(self) -> int:
        n, bs = self._samples_per_epoch(), self.cfg.batch_size
        full, rest = divmod(n, bs)
        return full + (1 if rest >= 2 else 0)  # a batch of one breaks batch norm: it is dropped

    # -- the loop ------------------------------------------------------------------------

    def execute(
        self, on_epoch: Callable[[EpochResult], None] | None, progress: bool
    ) -> TrainResult:
        resumed = self._resume()
        if resumed is not None and self._finished:
            log.info("checkpoint %s holds a finished run; not training again", self.path)
            return self._result(resumed, self._stopped_early)
        start = (resumed or 0) + 1
        with self._writer.open():
            stopped_early = self._train_epochs(start, on_epoch, progress)
            # the last checkpoint is written while the result is assembled: it holds snapshots,
            # which averaging and the batch-norm pass do not touch
            return self._result(resumed, stopped_early)

    def _train_epochs(
        self, start: int, on_epoch: Callable[[EpochResult], None] | None, progress: bool
    ) -> bool:
        """Train from epoch ``start`` to the last or an early stop; whether it stopped early."""
        with TrainProgress(
            enabled=progress,
            epochs=self.cfg.epochs,
            steps_per_epoch=self.steps_per_epoch,
            start_epoch=start,
        ) as bar:
            for epoch in range(start, self.cfg.epochs + 1):
                result = self._epoch(epoch, bar.advance)
                stopped_early = epoch - self._last_kept_epoch() >= self.cfg.patience
                finished = stopped_early or epoch == self.cfg.epochs
                self._save(epoch, finished=finished, stopped_early=stopped_early)
                bar.epoch_done(epoch, result.train_loss, result.val_auc)
                if on_epoch is not None:
                    on_epoch(result)
                if stopped_early:
                    log.info(
                        "stopping early after epoch %d: no epoch joined the %d best for %d epochs",
                        epoch,
                        self.average,
                        self.cfg.patience,
                    )
                    return True
        return False

    def _epoch(self, epoch: int, advance: Callable[[float], None]) -> EpochResult:
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = self._train_one_epoch(epoch, advance)
        if self.ema is not None:
            self.scored_model.load_state_dict(self.ema.state)
        score = self._validation_score()
        self._keep(self._monitored(score, epoch), epoch)
        result = EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=score.loss,
            val_auc=score.auc,
            val_accuracy=score.accuracy,
            lr=float(lr),
            seconds=time.perf_counter() - started,
            best_so_far=self.best_epoch == epoch,
        )
        self.history.append(result)
        return result

    def _validation_score(self) -> ValScore:
        return validate(
            self.scored_model,
            self.val.x,
            self.val.y,
            device=self.device,
            memory_format=self.memory_format,
            batch_size=max(self.cfg.batch_size, 256),
            loss_weight=self.loss_weight,
            task=self.task,
        )

    def _epoch_order(self, epoch: int) -> tuple[torch.Tensor, int]:
        """The training images of ``epoch`` in the order this process draws them, and the seed
        of its augmentation and mixup draws."""
        seed = self.cfg.seed * 1_000_003 + epoch
        return torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed)), seed

    def _train_one_epoch(self, epoch: int, advance: Callable[[float], None]) -> float:
        self.model.train()
        order, seed = self._epoch_order(epoch)
        aug_gen = torch.Generator().manual_seed(seed + 7_919)
        mixup = self.cfg.augment.mixup if self.cfg.augment is not None else 0.0
        mix_rng = np.random.default_rng(seed + 104_729)
        total = torch.zeros((), device=self.device)
        seen = 0
        bs = self.cfg.batch_size
        for i in range(self.steps_per_epoch):
            idx = order[i * bs : (i + 1) * bs]
            x = self.x_train[idx].to(self.device, non_blocking=True)
            y = self.y_train[idx].to(self.device, non_blocking=True)
            if self.augment is not None:
                x = self.augment(x, aug_gen)
            if mixup > 0:
                # mixup: a convex mix of the batch with a shuffled copy, and of their labels
                lam = float(mix_rng.beta(mixup, mixup))
                partner = torch.from_numpy(mix_rng.permutation(len(idx))).to(self.device)
                x = torch.lerp(x[partner], x, lam)
                logits = self.net(x.contiguous(memory_format=self.memory_format))
                loss = self.task.mixup_loss(logits, y, partner, lam, self.loss_weight)
            else:
                logits = self.net(x.contiguous(memory_format=self.memory_format))
                loss = self.task.loss(logits, y, self.loss_weight)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            total += loss.detach() * len(idx)  # no .item() here: it would sync a GPU per batch
            seen += len(idx)
            advance(1)
        train_loss = self._mean_loss(total, seen)
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"the training loss became {train_loss} in epoch {epoch}; "
                f"fix: lower train.lr (now {self.cfg.lr})"
            )
        return train_loss

    def _mean_loss(self, total: torch.Tensor, seen: int) -> float:
        """The epoch's training loss per image, from this process's sum over ``seen`` images."""
        return float(total.item()) / max(1, seen)

    def _monitored(self, score: ValScore, epoch: int) -> float:
        """Higher is better."""
        if self.monitor == "auc":
            return score.auc if math.isfinite(score.auc) else -math.inf
        if self.monitor == "loss":
            return -score.loss
        return float(epoch)  # no validation data: the latest epoch is the best known

    def _keep(self, value: float, epoch: int) -> None:
        """Keep this epoch's scored weights if they are among the ``self.average`` best."""
        k = self.average
        if len(self.kept) == k and value <= self.kept[-1].score:
            return
        self.kept.append(KeptEpoch(value, epoch, snapshot(self._scored())))
        self.kept.sort(key=lambda kept: -kept.score)  # stable: an earlier epoch wins a tie
        del self.kept[k:]

    @property
    def best_epoch(self) -> int:
        """The best-scoring epoch so far (0 before the first)."""
        return self.kept[0].epoch if self.kept else 0

    def _last_kept_epoch(self) -> int:
        """The latest epoch that joined the kept best (still kept: only a later one can oust
        it), so checkpoints need not store it."""
        return max((kept.epoch for kept in self.kept), default=0)

    def _averaged(self) -> dict[str, torch.Tensor]:
        """The mean of the kept weights (integer buffers, such as batch counts, of the best)."""
        states = [kept.state for kept in self.kept]
        return {
            name: torch.stack([s[name] for s in states]).mean(0).to(v.dtype)
            if v.is_floating_point()
            else v
            for name, v in states[0].items()
        }

    def _state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def _scored(self) -> dict[str, torch.Tensor]:
        """The weights that are validated and may be returned: the EMA when there is one."""
        return self.ema.state if self.ema is not None else self.model.state_dict()

    # -- checkpoints ---------------------------------------------------------------------

    def _save(self, epoch: int, *, finished: bool, stopped_early: bool) -> None:
        self._writer.submit(
            self.path,
            {
                "format": FORMAT_VERSION,
                "fingerprint": self.fingerprint,
                "epoch": epoch,
                "finished": finished,
                "stopped_early": stopped_early,
                "model": self._state(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "kept": [{"score": k.score, "epoch": k.epoch} for k in self.kept],
                "history": [h.to_dict() for h in self.history],
                "rng": rng_state(),
            },
            # only the epoch that just joined the kept ones is new; its state is a snapshot
            new_kept={k.epoch: k.state for k in self.kept if k.epoch == epoch},
        )

    def _resume(self) -> int | None:
        """Restore the checkpoint of this run if there is one; the last epoch it finished."""
        ckpt = load_checkpoint(self.path, self.fingerprint)
        return None if ckpt is None else self._restore(ckpt)

    def _restore(self, ckpt: dict[str, Any]) -> int:
        """Continue from checkpoint ``ckpt``; the last epoch it finished."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.history = [EpochResult.from_dict(h) for h in ckpt["history"]]
        self.kept = [
            KeptEpoch(float(k["score"]), int(k["epoch"]), k["state"]) for k in ckpt["kept"]
        ]
        set_rng_state(ckpt["rng"])
        self._finished = bool(ckpt["finished"])
        self._stopped_early = bool(ckpt["stopped_early"])
        epoch = int(ckpt["epoch"])
        log.info("resuming from %s after epoch %d", self.path, epoch)
        return epoch

    def _result(self, resumed: int | None, stopped_early: bool) -> TrainResult:
        model = self.model
        if self.kept:
            model.load_state_dict(self._averaged())
        if self.cfg.recalibrate_bn:
            used = recalibrate_batch_norm(
                model, self.train.x, device=self.device, memory_format=self.memory_format,
                batch_size=self.cfg.batch_size, seed=self.cfg.seed,
            )
            if used:
                log.info("batch-norm statistics recomputed on %d training images", used)
        model.to("cpu")
        model.to(memory_format=torch.contiguous_format)
        model.eval()
        best = next((h for h in self.history if h.epoch == self.best_epoch), None)
        return TrainResult(
            model=model,
            best_epoch=self.best_epoch,
            best_val_auc=best.val_auc if best is not None else math.nan,
            history=list(self.history),
            resumed_from_epoch=resumed,
            stopped_early=stopped_early,
            device=str(self.device),
            epochs_run=len(self.history),
            averaged_epochs=sorted(k.epoch for k in self.kept),
        )


def _monitor_for(val: ArrayData, task: TrainTask) -> str:
    """What early stopping watches: AUC when it is defined on the validation set."""
    if task.auc_defined(val.y):
        return "auc"
    if len(val):
        log.warning(
            "the validation set holds a single class (or no finding with both positive and "
            "negative images), so AUC is undefined; "
            "early stopping watches the validation loss instead"
        )
        return "loss"
    log.warning("there is no validation set; the last epoch's weights are kept")
    return "none"
