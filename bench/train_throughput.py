"""Training throughput: medops' ``train_model`` against a bare PyTorch loop.

Both train the same model (``build_model`` of the default spec, channels-last), on the same
in-memory BreastMNIST training set, with the same batch size, AdamW settings (the fused
kernel in both), class-weighted cross-entropy, number of optimizer steps and torch threads. The
bare loop has no augmentation, validation, weight average, checkpointing, LR schedule or
progress bar; medops runs with all of them as the defaults set them (augmentation on, an EMA
update after every step; every epoch a validation pass of the EMA weights, on the images as
given, without the flip average, an atomic checkpoint and the progress bar; after the last
epoch, the batch-norm statistics of the averaged weights measured again on the training set).
Runs alternate (bare, medops, bare, medops, ...) so that load from other processes hits both
alike; the median of each is reported.

Two medops figures: the whole call (model build, the last checkpoint's write and the batch-norm
pass included: one-off costs that a short benchmark run magnifies) and its epochs alone
(training steps and validation, as ``EpochResult.seconds`` times them), which is what a longer
run converges to.

``--task multilabel`` trains a multi-label model instead (a sigmoid per finding): the labels of
the MedMNIST file become cumulative findings, ``grade >= k`` for k = 1 .. K-1 (on RetinaMNIST,
the default file in this mode, four findings of its five ordinal grades, each present in 6-55 %
of the training images). The bare loop then uses binary cross-entropy with logits and the
per-finding positive weights medops uses (``finding_pos_weights``); medops validates on the
macro AUC over the findings.

    python bench/train_throughput.py --epochs 2 --repeats 2
    python bench/train_throughput.py --task multilabel --epochs 2 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medops.config.enums import Device, Normalize, Task
from medops.config.schema import ModelConfig, TrainConfig
from medops.train import (
    ArrayData,
    ModelSpec,
    build_model,
    class_weights,
    finding_pos_weights,
    resolve_flip_tta,
    resolve_small_input,
    train_model,
)

HERE = Path(__file__).resolve().parent
DEFAULT_NPZ = HERE.parent.parent / "shared" / "data" / "medmnist" / "breastmnist_28.npz"
MULTILABEL_NPZ = DEFAULT_NPZ.with_name("retinamnist_28.npz")


def load(path: Path) -> tuple[ArrayData, ArrayData]:
    from medmnist_recipe import load as load_npz  # the same preprocessing as the recipe bench

    sets = load_npz(path, Normalize.ZSCORE)
    return sets["train"], sets["val"]


def as_findings(data: ArrayData, grades: int) -> ArrayData:
    """Class indices 0 .. grades-1 as cumulative findings: column k-1 is ``label >= k``."""
    y = (data.y[:, None] >= np.arange(1, grades)[None, :]).astype(np.float32)
    return ArrayData(data.x, y)


def default_spec(train: ArrayData, cfg: TrainConfig) -> ModelSpec:
    """The model ``medops run`` builds by default for ``train``'s images: multi-label when the
    targets are a multi-hot matrix."""
    model_cfg = ModelConfig()
    multilabel = train.y.ndim == 2
    return ModelSpec(
        model_cfg.architecture,
        train.x.shape[1],
        train.y.shape[1] if multilabel else int(train.y.max()) + 1,
        small_input=resolve_small_input(model_cfg, (train.x.shape[2], train.x.shape[3])),
        flip_tta=resolve_flip_tta(model_cfg, cfg.augment),
        task=Task.MULTILABEL if multilabel else Task.MULTICLASS,
    )


def bare_loop(
    spec: ModelSpec, data: ArrayData, cfg: TrainConfig, epochs: int
) -> tuple[float, float]:
    """Images per second and CPU-ms per image of a plain loop doing train_model's steps."""
    torch.manual_seed(cfg.seed)
    model = build_model(spec).to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
    )
    if spec.task is Task.MULTILABEL:
        pos_weight = finding_pos_weights(data.y)

        def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
    else:
        weight = class_weights(data.y, spec.num_classes)

        def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, y, weight=weight)

    x_all, y_all = torch.from_numpy(data.x), torch.from_numpy(data.y)
    n, bs = len(data), cfg.batch_size
    seen = 0
    started, cpu = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            if len(idx) < 2:  # train_model drops a batch of one too
                continue
            x = x_all[idx].contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
    return seen / (time.perf_counter() - started), 1000 * (time.process_time() - cpu) / seen


def medops_loop(
    spec: ModelSpec, train: ArrayData, val: ArrayData, cfg: TrainConfig, progress: bool
) -> tuple[float, float, float]:
    """Images per second and CPU-ms per image of train_model, model build to returned result,
    and images per second of its epochs alone."""
    with tempfile.TemporaryDirectory() as tmp:
        started, cpu = time.perf_counter(), time.process_time()
        result = train_model(
            spec, train, val, cfg, ModelConfig(), checkpoint_dir=Path(tmp), progress=progress
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert result.epochs_run == cfg.epochs, "early stopping must not cut the benchmark short"
    full, rest = divmod(len(train), cfg.batch_size)
    per_epoch = full * cfg.batch_size + (rest if rest >= 2 else 0)
    images = per_epoch * cfg.epochs
    epochs_seconds = sum(h.seconds for h in result.history)
    return images / seconds, 1000 * cpu / images, images / epochs_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=None,
                        help=f"default {DEFAULT_NPZ.name}; with --task multilabel "
                             f"{MULTILABEL_NPZ.name}")
    parser.add_argument("--task", choices=[t.value for t in Task], default=Task.MULTICLASS.value)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = Task(args.task)
    npz = args.npz or (MULTILABEL_NPZ if task is Task.MULTILABEL else DEFAULT_NPZ)
    train, val = load(npz)
    if task is Task.MULTILABEL:
        grades = int(max(train.y.max(), val.y.max())) + 1
        train, val = as_findings(train, grades), as_findings(val, grades)
    # medops gets the threads the bare loop has, whatever train.num_threads defaults to
    threads = torch.get_num_threads()
    cfg = TrainConfig(
        epochs=args.epochs, patience=args.epochs + 1, device=Device.CPU, num_threads=threads
    )
    spec = default_spec(train, cfg)
    steps = args.epochs * -(-len(train) // cfg.batch_size)
    print(
        f"{npz.name}, {spec.task} ({spec.num_classes} outputs), "
        f"{spec.architecture} small_input, {len(train)} images {train.x.shape[1:]}, "
        f"batch {cfg.batch_size}, {args.epochs} epochs ({steps} steps), "
        f"{torch.get_num_threads()} torch threads; medops with augmentation "
        f"{'on' if cfg.augment else 'off'}, bare loop without"
    )
    bare_loop(spec, train, cfg, 1)  # warm-up: oneDNN picks and caches its kernels
    bare: list[tuple[float, float]] = []
    medops: list[tuple[float, float, float]] = []
    for r in range(args.repeats):
        bare.append(bare_loop(spec, train, cfg, args.epochs))
        medops.append(medops_loop(spec, train, val, cfg, progress=not args.no_progress))
        print(
            f"repeat {r + 1}: bare {bare[-1][0]:.1f} img/s ({bare[-1][1]:.1f} CPU-ms/img), "
            f"medops {medops[-1][0]:.1f} img/s ({medops[-1][1]:.1f} CPU-ms/img; "
            f"epochs alone {medops[-1][2]:.1f} img/s), "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    b = statistics.median(x[0] for x in bare)
    m = statistics.median(x[0] for x in medops)
    bc = statistics.median(x[1] for x in bare)
    mc = statistics.median(x[1] for x in medops)
    me = statistics.median(x[2] for x in medops)
    print(f"bare PyTorch loop : {b:.1f} images/s, {bc:.1f} CPU-ms/image (median of {args.repeats})")
    print(f"medops train_model: {m:.1f} images/s, {mc:.1f} CPU-ms/image (median of {args.repeats})")
    print(f"medops epochs alone: {me:.1f} images/s (median of {args.repeats})")
    print(f"ratio medops/bare : {m / b:.3f} (images/s), {bc / mc:.3f} (per CPU-second); "
          f"epochs alone {me / b:.3f}")


if __name__ == "__main__":
    main()
