"""Data-parallel training on the CPU: ``train.processes: 1`` against ``train.processes: 2``.

Both run ``medops.train.train_model`` on the same in-memory BreastMNIST training set with the
default recipe (augmentation, EMA, validation and a checkpoint every epoch) and the same
``train.batch_size`` per process, so two processes take half as many steps per epoch, each on a
batch of the same size. The CPU threads are split, not multiplied: one process gets
``--threads`` torch threads, each of two processes half of them (the launcher's default of
``cores // processes``). What two processes can win on one machine is then what one process
leaves idle: the Python and framework overhead between kernels, the small-batch convolutions
that do not fill the threads; what they lose is the gradient all-reduce after every step and
the start of the worker processes (spawned interpreters that import torch and medops, and the
rendezvous).

Runs alternate (1, 2, 1, 2, ...) so load from other processes hits both alike; medians are
reported as images/s, for the whole call (process start, model build, the last checkpoint and
the batch-norm pass included) and for the epochs alone (``EpochResult.seconds``, which is what
a long training converges to), with the ratio two processes / one; and as CPU-ms per image of
the whole call, all processes together, which depends less on how much CPU other programs
left.

    python bench/train_ddp.py --epochs 4 --repeats 3 --threads 2 --no-progress

``--agreement N`` measures instead what the tolerance of
``tests/train/test_distributed.py::test_two_processes_reach_the_metrics_of_one`` rests on: the
test's training (its data, network and settings, imported from the test so they cannot drift)
on one and on two processes for seeds 0 .. N-1, and the difference of the two models' test AUC.

    python bench/train_ddp.py --agreement 10
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medops.config.enums import Device, Normalize
from medops.config.schema import ModelConfig, TrainConfig
from medops.train import ArrayData, ModelSpec, resolve_flip_tta, resolve_small_input, train_model

HERE = Path(__file__).resolve().parent
DEFAULT_NPZ = HERE.parent.parent / "shared" / "data" / "medmnist" / "breastmnist_28.npz"


def load(path: Path) -> tuple[ArrayData, ArrayData]:
    from medmnist_recipe import load as load_npz  # the same preprocessing as the recipe bench

    sets = load_npz(path, Normalize.ZSCORE)
    return sets["train"], sets["val"]


def spec_for(train: ArrayData, cfg: TrainConfig) -> ModelSpec:
    model_cfg = ModelConfig()
    return ModelSpec(
        model_cfg.architecture, train.x.shape[1], int(train.y.max()) + 1,
        small_input=resolve_small_input(model_cfg, (train.x.shape[2], train.x.shape[3])),
        flip_tta=resolve_flip_tta(model_cfg, cfg.augment),
    )


def images_per_epoch(n: int, batch_size: int, processes: int) -> int:
    """The training images one epoch passes over (a batch of one is dropped, per process)."""
    per_rank = -(-n // processes)  # the sampler pads each rank to the same count
    full, rest = divmod(per_rank, batch_size)
    return processes * (full * batch_size + (rest if rest >= 2 else 0))


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that ended (the workers are joined
    before ``train_model`` returns)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(spec: ModelSpec, train: ArrayData, val: ArrayData, cfg: TrainConfig,
          progress: bool) -> tuple[float, float, float]:
    """Images per second of the whole call and of its epochs alone, and CPU-ms per image of
    the whole call (all processes)."""
    with tempfile.TemporaryDirectory() as tmp:
        started, cpu = time.perf_counter(), _cpu_seconds()
        result = train_model(spec, train, val, cfg, ModelConfig(), checkpoint_dir=Path(tmp),
                             progress=progress)
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    assert result.epochs_run == cfg.epochs, "early stopping must not cut the benchmark short"
    assert result.processes == cfg.processes
    images = images_per_epoch(len(train), cfg.batch_size, cfg.processes) * cfg.epochs
    return images / seconds, images / sum(h.seconds for h in result.history), 1000 * cpu / images


def agreement(seeds: int) -> None:
    """Test AUC of one and of two processes on the distributed test's training, per seed."""
    import sys

    from sklearn.metrics import roc_auc_score

    from medops.train import predict_proba

    sys.path.insert(0, str(HERE.parent))
    from tests.train.conftest import _make_data
    from tests.train.test_distributed import AUC_TOLERANCE, N_TRAIN, _cfg, _spec, _tagged

    diffs = []
    for seed in range(seeds):
        train = _tagged(_make_data(N_TRAIN, seed=10 * seed))
        val, test = _make_data(48, seed=10 * seed + 1), _make_data(128, seed=10 * seed + 2)
        auc = {}
        for p in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                spec = _spec(Path(tmp), Path(tmp) / "seen")
                cfg = _cfg(p).model_copy(update={"seed": seed})
                result = train_model(spec, train, val, cfg, ModelConfig(),
                                     checkpoint_dir=Path(tmp) / "ckpt", progress=False)
            auc[p] = float(roc_auc_score(test.y, predict_proba(result.model, test.x)[:, 1]))
        diffs.append(auc[2] - auc[1])
        print(f"seed {seed}: test AUC 1 process {auc[1]:.4f}, 2 processes {auc[2]:.4f}, "
              f"difference {diffs[-1]:+.4f}", flush=True)
    print(f"largest |difference| {max(abs(d) for d in diffs):.4f}, "
          f"mean {statistics.mean(diffs):+.4f} over {seeds} seeds; "
          f"the test allows {AUC_TOLERANCE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads in all (two processes get half each)")
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--agreement", type=int, metavar="SEEDS", default=0,
                        help="measure the test AUC of 1 against 2 processes over SEEDS seeds")
    args = parser.parse_args()
    if args.agreement:
        agreement(args.agreement)
        return
    if args.threads < 2:
        parser.error("--threads must be at least 2, so that two processes get one each")
    train, val = load(args.npz)
    base = TrainConfig(epochs=args.epochs, patience=args.epochs + 1, device=Device.CPU,
                       batch_size=args.batch_size)
    cfgs = {p: base.model_copy(update={"processes": p, "num_threads": args.threads // p})
            for p in (1, 2)}
    spec = spec_for(train, base)
    print(f"{args.npz.name}: {len(train)} training images {train.x.shape[1:]}, "
          f"{len(val)} validation, {spec.architecture} small_input, batch {args.batch_size} "
          f"per process, {args.epochs} epochs; 1 process x {args.threads} threads against "
          f"2 processes x {args.threads // 2} threads; {os.cpu_count()} cores")
    torch.set_num_threads(args.threads)
    timed(spec, train, val, cfgs[1].model_copy(update={"epochs": 1, "patience": 2}),
          progress=False)  # warm-up: oneDNN picks and caches its kernels
    runs: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
    for r in range(args.repeats):
        for p in (1, 2):
            runs[p].append(timed(spec, train, val, cfgs[p], progress=not args.no_progress))
        print(f"repeat {r + 1}: 1 process {runs[1][-1][0]:.1f} img/s "
              f"(epochs {runs[1][-1][1]:.1f}; {runs[1][-1][2]:.1f} CPU-ms/img), 2 processes "
              f"{runs[2][-1][0]:.1f} img/s (epochs {runs[2][-1][1]:.1f}; "
              f"{runs[2][-1][2]:.1f} CPU-ms/img), load average {os.getloadavg()[0]:.1f}",
              flush=True)
    whole, epochs, cpu = ({p: statistics.median(x[i] for x in runs[p]) for p in (1, 2)}
                          for i in range(3))
    for p in (1, 2):
        print(f"{p} process{'es' if p > 1 else '  '}: {whole[p]:.1f} images/s whole call, "
              f"{epochs[p]:.1f} images/s epochs alone, {cpu[p]:.1f} CPU-ms/image "
              f"(median of {args.repeats})")
    print(f"ratio 2/1: {whole[2] / whole[1]:.3f} whole call, {epochs[2] / epochs[1]:.3f} "
          f"epochs alone; CPU per image {cpu[2] / cpu[1]:.3f}")


if __name__ == "__main__":
    main()
