"""Where ``train_model``'s time beyond the bare steps goes, per epoch, on this machine.

``bench/train_throughput.py`` gives one ratio; this splits its gap into the trainer's own
pieces, each timed with medops' code against the bare steps of one epoch of the same data
(BreastMNIST: 546 images, batches of 64, the default model, one torch thread by default):

- augmentation and mixup of the epoch's batches (``BatchAugmenter``, ``torch.lerp``);
- the EMA update after every step (``WeightEMA.update``);
- the validation pass (``validate``: 78 images, as given);
- the checkpoint: the snapshot on the training thread plus what the write in the background
  thread (``CheckpointWriter``) takes from the steps it overlaps, measured as the epoch's steps
  with a write beside them minus the same steps without.

Rounds alternate the variants and medians are reported, since these machines are noisy.

    python bench/train_overhead.py --rounds 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medops.config.schema import TrainConfig
from medops.train import build_model, train_task
from medops.train.augment import BatchAugmenter
from medops.train.checkpoint import CheckpointWriter
from medops.train.ema import WeightEMA
from medops.train.scoring import validate
from train_throughput import DEFAULT_NPZ, default_spec, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, val = load(args.npz)
    cfg = TrainConfig()
    assert cfg.augment is not None
    spec = default_spec(train, cfg)
    channels_last = torch.channels_last
    model = build_model(spec).to(memory_format=channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=True)
    ema = WeightEMA(model, 0.99)
    augment, gen, rng = BatchAugmenter(cfg.augment), torch.Generator(), np.random.default_rng()
    x_all, y_all = torch.from_numpy(train.x), torch.from_numpy(train.y)
    batches = [slice(i, i + cfg.batch_size) for i in range(0, len(train), cfg.batch_size)]
    writer, folder = CheckpointWriter(), Path(tempfile.mkdtemp())

    def steps() -> None:
        model.train()
        for b in batches:
            loss = F.cross_entropy(model(x_all[b].contiguous(memory_format=channels_last)),
                                   y_all[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def augmentation() -> None:
        for b in batches:
            x = augment(x_all[b], gen)
            partner = torch.from_numpy(rng.permutation(len(x)))
            torch.lerp(x[partner], x, float(rng.beta(0.2, 0.2))).contiguous(
                memory_format=channels_last)

    def ema_updates() -> None:
        for _ in batches:
            ema.update(model)

    def validation() -> None:
        validate(model, val.x, val.y, device=torch.device("cpu"), memory_format=channels_last,
                 batch_size=256, loss_weight=None, task=train_task(spec.task))

    def steps_with_checkpoint() -> None:
        payload = {"fingerprint": "bench", "kept": [], "model": model.state_dict(),
                   "ema": ema.state_dict(), "optimizer": opt.state_dict()}
        writer.submit(folder / "checkpoint.pt", payload, {})
        steps()
        writer.wait()

    variants: dict[str, Callable[[], None]] = {
        "bare steps": steps, "augmentation + mixup": augmentation, "EMA updates": ema_updates,
        "validation": validation, "steps + checkpoint": steps_with_checkpoint,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    steps()  # warm-up: oneDNN picks and caches its kernels
    for _ in range(args.rounds):
        for name, fn in variants.items():
            started = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - started))
    ms = {name: statistics.median(t) for name, t in times.items()}
    bare = ms.pop("bare steps")
    ms["checkpoint"] = ms.pop("steps + checkpoint") - bare
    print(f"{len(train)} images, batch {cfg.batch_size}, {args.threads} torch thread(s), "
          f"median of {args.rounds} rounds; bare steps of one epoch: {bare:.0f} ms")
    for name, value in ms.items():
        print(f"{name:22s} {value:7.0f} ms per epoch  {100 * value / bare:5.1f} % of the steps")
    total = sum(ms.values())
    print(f"{'all of them':22s} {total:7.0f} ms per epoch  {100 * total / bare:5.1f} %; "
          f"epochs-alone ratio they predict: {bare / (bare + total):.3f}")


if __name__ == "__main__":
    main()
