"""Distributed data parallel (DDP) training: the process group, the sampler, the collectives.

With ``train.processes: N`` (N > 1), or under an external ``torchrun``, training runs as N
processes, one rank each. Every rank holds the same model: PyTorch's
``DistributedDataParallel`` averages the gradients, so after each step the weights agree. A
``DistributedSampler``, re-drawn each epoch with ``set_epoch``, gives each rank its own part
of the training images, so one epoch still passes over every image once (``train.batch_size``
is per process: the effective batch is N times it; the learning rate is not rescaled).

What keeps the ranks identical, so that every one of them can run the trainer's own logic
(early stopping, the kept epochs, averaging, batch-norm recalibration) and arrive at the same
result without being told it:

* the training loss of an epoch is summed over all ranks;
* batch-norm statistics (a buffer each rank updates from its own batches) and the EMA's copy
  of them are taken from rank 0 at the end of every epoch;
* validation is split among the ranks and the logits gathered, so every rank scores all of
  the validation set, in order, and computes the same loss and AUC.

Rank 0 alone writes checkpoints (and, on resume, reads one and hands it to the others), and
alone reports epochs: in a local launch to the parent process, which logs to MLflow
(:mod:`medops.train.launcher`); under torchrun it is the pipeline's process itself
(:mod:`medops.train.torchrun`).

Backends: gloo on the CPU, NCCL on CUDA GPUs with one GPU per local rank. Every collective
times out after :data:`COLLECTIVE_TIMEOUT`, so a rank whose peer vanished without closing its
connections (a lost node) fails instead of waiting forever; a local peer that dies is noticed
at once (its sockets close, and the launcher watches its processes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from medops.config.schema import TrainConfig
from medops.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

#: A collective that waits longer than this for a peer fails (torch's own default). Ranks wait
#: on each other only briefly (a rank-0 epoch report, a checkpoint loaded on resume): this is a
#: backstop against a peer that disappeared without a trace, not a pace.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)

#: Loopback address of a local launch's rendezvous.
LOCAL_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class Member:
    """This process's place in a training process group: ``rank`` of ``world``, ``local_rank``
    on its machine, its ``device``, and the group (``None``: torch's default group)."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    group: Any = field(default=None, compare=False)

    @property
    def lead(self) -> bool:
        """Rank 0: the one that writes checkpoints and reports epochs."""
        return self.rank == 0


@dataclass(frozen=True)
class TorchrunWorld:
    """The process group an external ``torchrun`` started this process in (from its variables
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``)."""

    rank: int
    world: int
    local_rank: int
    local_world: int


# The torchrun world this process joined, set by medops.train.torchrun for the duration of a
# command. It is process-wide on purpose: so is torch's process group it stands for, and the
# train step, several layers below the command, must train in it rather than start its own.
_ATTACHED: TorchrunWorld | None = None


def attached() -> TorchrunWorld | None:
    """The external torchrun world this process is a rank of, if any."""
    return _ATTACHED


def _attach(world: TorchrunWorld | None) -> None:
    global _ATTACHED
    _ATTACHED = world


def data_parallel(cfg: TrainConfig) -> bool:
    """Whether training ``cfg`` runs on several processes."""
    return cfg.processes > 1 or _ATTACHED is not None


def effective_train_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``processes`` set to the processes that will train: under torchrun, its
    world size (``train.processes`` must then be 1 or that size); else ``cfg`` itself."""
    world = _ATTACHED
    if world is None or cfg.processes == world.world:
        return cfg
    if cfg.processes != 1:
        raise ConfigError(
            f"train.processes is {cfg.processes} but torchrun started {world.world} processes "
            f"(WORLD_SIZE); fix: set train.processes to 1 or {world.world}, or launch torchrun "
            f"with that many processes in all"
        )
    return cfg.model_copy(update={"processes": world.world})


def rank_device(device: torch.device, local_rank: int, local_world: int) -> torch.device:
    """The device of ``local_rank``: its own GPU (one per local rank), or the CPU."""
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_world > count:
            raise TrainingError(
                f"{local_world} training processes on this machine need one GPU each, but "
                f"torch sees {count}; fix: set train.processes to at most {count} (or "
                "torchrun --nproc-per-node), or train.device: cpu"
            )
        return torch.device("cuda", local_rank)
    raise TrainingError(
        f"train.processes > 1 trains on CPU (gloo) or CUDA GPUs (NCCL), not on {device.type}; "
        "fix: set train.device to cpu or cuda, or train.processes: 1"
    )


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def join_default_group(member: Member, store: dist.Store) -> None:
    """Make ``member``'s rank of torch's default process group, rendezvous through ``store``."""
    if member.device.type == "cuda":
        torch.cuda.set_device(member.device)
    dist.init_process_group(
        backend_for(member.device),
        store=store,
        rank=member.rank,
        world_size=member.world,
        timeout=COLLECTIVE_TIMEOUT,
    )


def leave_default_group() -> None:
    """Tear down torch's default process group, if this process is in one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The variables torchrun would give rank ``rank`` of a local launch, for code that reads
    them (a user's network, a library)."""
    return {
        "MASTER_ADDR": LOCAL_ADDRESS,
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
    }


def torchrun_world(environ: dict[str, str] | os._Environ[str]) -> TorchrunWorld | None:
    """The torchrun world the variables in ``environ`` describe, when they describe one of
    more than one process."""
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        if world <= 1 or "RANK" not in environ:
            return None
        rank = int(environ["RANK"])
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
        local_world = int(environ.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError as e:
        raise ConfigError(
            f"the torchrun variables RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be "
            f"integers ({e}); fix: launch with torchrun, which sets them"
        ) from e
    return TorchrunWorld(rank, world, local_rank, local_world)


def epoch_sampler(n: int, member: Member, seed: int) -> DistributedSampler[int]:
    """The sampler of ``member``'s share of ``n`` training images: a fresh permutation of all
    of them each epoch (after ``set_epoch``), the same on every rank, cut into ``world``
    interleaved parts. When ``n`` is not a multiple of ``world`` a few images are drawn twice,
    so that every rank runs the same number of steps (DDP's steps are collective)."""
    return DistributedSampler(
        cast(Any, range(n)), num_replicas=member.world, rank=member.rank, shuffle=True,
        seed=seed, drop_last=False,
    )


# -- what the ranks share -----------------------------------------------------------------


def broadcast_object(obj: Any, member: Member) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; tensors in it come back on the CPU)."""
    box = [obj]
    dist.broadcast_object_list(
        box, src=0, group=member.group,
        device=member.device if member.device.type == "cuda" else None,
    )
    return box[0]


def sum_over_ranks(values: torch.Tensor, member: Member) -> torch.Tensor:
    """The element-wise sum of ``values`` (on ``member.device``) over all ranks."""
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=member.group)
    return out


def from_rank0(tensors: list[torch.Tensor], member: Member) -> None:
    """Overwrite ``tensors`` (on ``member.device``) with rank 0's, in place."""
    for t in tensors:
        dist.broadcast(t, src=0, group=member.group)


def chunk(n: int, member: Member) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of ``n`` that ``member`` takes when a set is split in contiguous
    parts of (nearly) equal size, in rank order."""
    return _bounds(n, -(-n // member.world), member.rank)


def gather_rows(part: torch.Tensor, n: int, member: Member) -> torch.Tensor:
    """The rows every rank computed for its :func:`chunk` of ``n``, concatenated in rank
    order: the same (n, ...) tensor on every rank."""
    per = -(-n // member.world)
    padded = part.new_zeros((per, *part.shape[1:]))
    padded[: len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(member.world)]
    dist.all_gather(parts, padded, group=member.group)
    sizes = [hi - lo for lo, hi in (_bounds(n, per, r) for r in range(member.world))]
    return torch.cat([p[:size] for p, size in zip(parts, sizes, strict=True)])


def _bounds(n: int, per: int, rank: int) -> tuple[int, int]:
    lo = min(n, rank * per)
    return lo, min(n, lo + per)


def broadcast_array(array: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype[Any],
                    member: Member, *, chunk_bytes: int = 64 << 20) -> np.ndarray:
    """Rank 0's ``array`` (of ``shape`` and ``dtype``, which every rank knows) on every rank,
    sent in pieces of ``chunk_bytes`` through ``member.group``, which must be a CPU (gloo)
    group: the images may be larger than a GPU holds."""
    out = np.ascontiguousarray(array) if member.lead and array is not None \
        else np.empty(shape, dtype=dtype)
    raw = torch.from_numpy(out.reshape(-1).view(np.uint8))
    for lo in range(0, raw.numel(), chunk_bytes):
        dist.broadcast(raw[lo : lo + chunk_bytes], src=0, group=member.group)
    return out
