"""Training in a process group that an external ``torchrun`` started (several GPUs, several
machines): see docs/distributed.md for the launch.

torchrun starts the same command, ``python -m medops.cli run ...``, as every rank. Rank 0 runs
the pipeline as usual; the others only train. So :func:`run_under_torchrun` (called by the CLI
before it parses anything) joins all ranks in a CPU (gloo) group at once and then:

* rank 0 runs the command; when its train step starts, :func:`lead_training` hands the
  training (the spec, the configuration and the images, in chunks) to the others and trains
  as rank 0 in a fresh group of the training's backend (NCCL on GPUs); when the command ends,
  it tells the others there is nothing more to train, and they exit;
* every other rank waits for such a hand-over (:func:`follow`) and trains, without a project,
  a state store or MLflow: rank 0 alone writes checkpoints and logs.

The wait for a hand-over may be long (rank 0 ingests and preprocesses first): it has its own
timeout, :data:`HANDOVER_TIMEOUT`, far above the training collectives'. A rank that fails or
dies ends its process; torchrun then stops the others (and rank 0 marks the run interrupted),
and ``medops runs resume ID`` under the same torchrun launch continues from the checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from medops.config.schema import ModelConfig, TrainConfig
from medops.errors import TrainingError
from medops.train import distributed
from medops.train.distributed import Member, TorchrunWorld
from medops.train.results import ArrayData, EpochResult, TrainJob, TrainResult
from medops.train.spec import ModelSpec

log = logging.getLogger(__name__)

#: How long the other ranks wait for rank 0 to reach its train step (or to end the command).
HANDOVER_TIMEOUT = timedelta(days=2)


@dataclass(frozen=True)
class _Handover:
    """What rank 0 sends before the images: all but them, and their shapes."""

    spec: ModelSpec
    cfg: TrainConfig
    model_cfg: ModelConfig
    checkpoint_dir: Path
    device_type: str
    shapes: tuple[tuple[tuple[int, ...], str], ...]  # (shape, dtype) of train x, y, val x, y


class _State:
    """Whether a training of this launch failed: its group can no longer be trusted."""

    broken = False


def run_under_torchrun(command: Callable[[], Any]) -> None:
    """Run ``command`` (the CLI) as rank 0 of the torchrun world in this process's environment,
    or follow rank 0's trainings on the other ranks; returns when rank 0's command is over.
    Without a world of several processes in the environment, just run ``command``."""
    world = distributed.torchrun_world(os.environ)
    if world is None:
        command()
        return
    dist.init_process_group("gloo", init_method="env://", rank=world.rank,
                            world_size=world.world, timeout=HANDOVER_TIMEOUT)
    distributed._attach(world)
    try:
        if world.rank == 0:
            try:
                command()
            finally:
                _release()
        else:
            follow(world)
    finally:
        distributed._attach(None)
        dist.destroy_process_group()


def lead_training(
    job: TrainJob,
    device: torch.device,
    *,
    on_epoch: Callable[[EpochResult], None] | None,
    progress: bool,
) -> TrainResult:
    """Hand ``job`` to the other ranks of the attached torchrun world and train it as rank 0."""
    world = distributed.attached()
    assert world is not None and world.rank == 0
    if _State.broken:
        raise TrainingError(
            "an earlier training attempt of this torchrun launch failed, so its other "
            "processes stopped; fix: start torchrun again with `medops runs resume RUN_ID`, "
            "which continues from the last checkpoint"
        )
    control = Member(0, world.world, world.local_rank, torch.device("cpu"))
    arrays = (job.train.x, job.train.y, job.val.x, job.val.y)
    header = _Handover(job.spec, job.cfg, job.model_cfg, job.checkpoint_dir, device.type,
                       tuple((a.shape, a.dtype.str) for a in arrays))
    try:
        distributed.broadcast_object(header, control)
        for a in arrays:
            distributed.broadcast_array(a, a.shape, a.dtype, control)
        return _train(job, world, device.type, on_epoch=on_epoch, progress=progress)
    except BaseException:
        _State.broken = True
        raise


def follow(world: TorchrunWorld) -> None:
    """Train every job rank 0 hands over, until it says there are no more."""
    control = Member(world.rank, world.world, world.local_rank, torch.device("cpu"))
    while True:
        header: _Handover | None = distributed.broadcast_object(None, control)
        if header is None:
            return
        train_x, train_y, val_x, val_y = (
            distributed.broadcast_array(None, shape, np.dtype(dtype), control)
            for shape, dtype in header.shapes
        )
        job = TrainJob(header.spec, ArrayData(train_x, train_y), ArrayData(val_x, val_y),
                       header.cfg, header.model_cfg, header.checkpoint_dir)
        _train(job, world, header.device_type, on_epoch=None, progress=False)


def _train(job: TrainJob, world: TorchrunWorld, device_type: str, *,
           on_epoch: Callable[[EpochResult], None] | None, progress: bool) -> TrainResult:
    from medops.train.ddp import train_rank

    device = distributed.rank_device(torch.device(device_type), world.local_rank,
                                     world.local_world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    group = dist.new_group(backend=distributed.backend_for(device),
                           timeout=distributed.COLLECTIVE_TIMEOUT)
    member = Member(world.rank, world.world, world.local_rank, device, group)
    try:
        return train_rank(job, member, on_epoch=on_epoch, progress=progress)
    finally:
        dist.destroy_process_group(group)


def _release() -> None:
    """Tell the other ranks that rank 0's command is over (they may be gone already)."""
    world = distributed.attached()
    if world is None or _State.broken:
        return
    try:
        distributed.broadcast_object(None, Member(0, world.world, 0, torch.device("cpu")))
    except Exception as e:  # a rank that died: torchrun reports it
        log.warning("could not tell the other training processes to stop (%s)", e)
