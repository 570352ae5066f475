"""One rank of a data-parallel training: the trainer's run, with what differs on several
processes (see :mod:`medops.train.distributed` for why every rank ends with the same result)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from medops.config.schema import ModelConfig
from medops.errors import ConfigError, DataError
from medops.train.architectures import build_model
from medops.train.checkpoint import load_checkpoint
from medops.train.classifier import Classifier
from medops.train.distributed import (
    Member,
    broadcast_object,
    chunk,
    epoch_sampler,
    from_rank0,
    gather_rows,
    sum_over_ranks,
)
from medops.train.ema import WeightEMA
from medops.train.results import EpochResult, TrainJob, TrainResult
from medops.train.scoring import ValScore, score_logits, val_logits
from medops.train.spec import ModelSpec
from medops.train.trainer import _Run, torch_threads

#: Offsets the augmentation and dropout draws of each rank, so two ranks never augment alike.
_RANK_STRIDE = 1_000_000_007


def train_rank(
    job: TrainJob,
    member: Member,
    *,
    on_epoch: Callable[[EpochResult], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``member``'s rank of ``job`` in its (joined) process group; every rank returns the
    same weights. ``on_epoch`` and ``progress`` are rank 0's alone."""
    check_enough_images(len(job.train), member.world)
    with torch_threads(job.cfg.num_threads):
        run = DistributedRun(job, member)
        return run.execute(on_epoch if member.lead else None, progress and member.lead)


def check_enough_images(n: int, processes: int) -> None:
    """Each process needs a batch of two images at least (one breaks batch norm)."""
    if n < 2 * processes:
        raise DataError(
            f"{processes} training processes need at least {2 * processes} training images, "
            f"two each (got {n}); fix: lower train.processes"
        )


class DistributedRun(_Run):
    """A trainer run as one rank of ``member``'s group."""

    def __init__(self, job: TrainJob, member: Member) -> None:
        self.member = member
        self.sampler = epoch_sampler(len(job.train), member, job.cfg.seed)
        # the fingerprint (and so which checkpoint resumes) counts the processes that train
        cfg = job.cfg.model_copy(update={"processes": member.world})
        super().__init__(job.spec, job.train, job.val, cfg, job.model_cfg, member.device,
                         job.checkpoint_dir)
        cuda = member.device.type == "cuda"
        # construction gives every rank rank 0's weights and buffers
        self.net = DistributedDataParallel(
            self.model, device_ids=[member.device] if cuda else None,
            process_group=member.group,
        )
        if self.ema is not None:  # so the average starts from those weights on every rank
            self.ema = WeightEMA(self.model, self.ema.decay)
        self.buffer_keys = {name for name, _ in self.model.named_buffers()}

    def _build_model(self, spec: ModelSpec, model_cfg: ModelConfig) -> Classifier:
        if self.member.lead:
            return super()._build_model(spec, model_cfg)
        # DDP replaces these weights by rank 0's: the other ranks need not find model.weights
        return build_model(spec)

    def _samples_per_epoch(self) -> int:
        return self.sampler.num_samples

    def _epoch_order(self, epoch: int) -> tuple[torch.Tensor, int]:
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        seed = self.cfg.seed * 1_000_003 + epoch + _RANK_STRIDE * self.member.rank
        # dropout draws from the global generator: seeded per epoch and rank, so a resumed run
        # draws as an uninterrupted one did (rank 0's checkpoint holds no other rank's state)
        torch.manual_seed(seed + 15_485_863)
        return order, seed

    def _train_one_epoch(self, epoch: int, advance: Callable[[float], None]) -> float:
        try:
            loss = super()._train_one_epoch(epoch, advance)
        except RuntimeError as e:
            # DDP averages every trainable parameter's gradient after each step; one the
            # forward pass never reaches has none, and DDP's own message speaks of its internals
            if "finished reduction" not in str(e):
                raise
            raise ConfigError(
                f"the network {self.spec.architecture} has trainable parameters that its "
                "forward pass does not use, which data-parallel training cannot average; fix: "
                "set train.processes: 1, or freeze the unused parameters in the network's code "
                "(requires_grad=False) or remove them"
            ) from e
        # each rank's batch-norm statistics (and the EMA of them) moved with its own batches
        with torch.no_grad():
            ema = [] if self.ema is None else \
                [v for k, v in self.ema.state.items() if k in self.buffer_keys]
            from_rank0([*self.model.buffers(), *ema], self.member)
        return loss

    def _mean_loss(self, total: torch.Tensor, seen: int) -> float:
        both = torch.stack([total.detach().double(),
                            torch.tensor(float(seen), dtype=torch.float64, device=total.device)])
        summed = sum_over_ranks(both, self.member)
        return float(summed[0].item()) / max(1.0, float(summed[1].item()))

    def _validation_score(self) -> ValScore:
        n = len(self.val)
        if n == 0:
            return super()._validation_score()
        lo, hi = chunk(n, self.member)
        with torch.inference_mode():
            if hi > lo:
                part = val_logits(self.scored_model, self.val.x[lo:hi], device=self.device,
                                  memory_format=self.memory_format,
                                  batch_size=max(self.cfg.batch_size, 256))
            else:  # fewer validation images than ranks
                self.scored_model.eval()
                part = torch.empty((0, self.spec.num_classes), device=self.device)
            logits = gather_rows(part, n, self.member)
        return score_logits(logits, self.val.y, device=self.device,
                            loss_weight=self.loss_weight, task=self.task)

    def _save(self, epoch: int, *, finished: bool, stopped_early: bool) -> None:
        if self.member.lead:
            super()._save(epoch, finished=finished, stopped_early=stopped_early)

    def _resume(self) -> int | None:
        ckpt = load_checkpoint(self.path, self.fingerprint) if self.member.lead else None
        ckpt = broadcast_object(ckpt, self.member)
        return None if ckpt is None else self._restore(ckpt)

    def _result(self, resumed: int | None, stopped_early: bool) -> TrainResult:
        return dataclasses.replace(super()._result(resumed, stopped_early),
                                   processes=self.member.world)
