"""Replay one full MedMNIST training run and score every checkpoint-selection rule after the fact.

``bench/medmnist_recipe.py`` answers "what does the default recipe score"; this answers "which
selection rule, and which recipe lever, would have scored better on the same training run". It
trains ``train.epochs`` epochs without early stopping, keeps every epoch's scored (EMA) weights
in memory, then prints one JSON line: the test AUC of every epoch, and of each rule:

- ``auc_topK`` / ``loss_topK``: the average of the weights of the K best epochs by validation
  AUC / loss, with early stopping replayed (patience 8, as the trainer does); ``auc_top5`` is
  the default recipe (capped at ``epochs // 4`` epochs in the trainer, not here);
- ``uniform_A-B``: the average of the weights of epochs A..B (stochastic weight averaging);
- ``ens_auc_top5``: the mean of the *probabilities* of the 5 best epochs (a 5-model ensemble);
- ``tta5_auc_top5``: the default's model with 1-pixel shifts added to its flip TTA (5 views);
- ``auc_flip_topK``: as ``auc_topK``, but epochs ranked (and early stopping replayed) by the
  flip-averaged validation AUC, as the trainer validated until 2026-12-01 (it scores
  the images alone since; that rule was ``auc_plain_topK`` in the runs that decided it);
- ``bn_<rule>``: that rule's averaged weights with the batch-norm statistics recomputed on the
  (un-augmented) training images, as stochastic weight averaging does (``update_bn``).

The recipe levers are the ``--set`` overrides of ``medmnist_recipe.py`` and three that the
pipeline does not offer: ``--upsample``, ``--global-norm``, ``--sgd``. Every epoch's weights
are recorded by wrapping the trainer's private ``_Run._keep`` (an experiment, not an API).

    python bench/medmnist_rules.py ../shared/data/medmnist/breastmnist_28.npz --seed 0 \\
        --set train.num_threads=1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medmnist_recipe import configs, load, model_spec, nchw, normalise, parse_overrides
from medops.config.enums import Normalize
from medops.evaluate import compute_metrics
from medops.train import ArrayData, predict_proba, train_model
from medops.train import trainer as _trainer
from medops.train.batchnorm import recalibrate_batch_norm
from medops.train.checkpoint import snapshot
from medops.train.scoring import auc_score

PATIENCE = 8
State = dict[str, torch.Tensor]


def record_every_epoch() -> list[State]:
    """Make the trainer hand every epoch's scored weights to the returned list."""
    states: list[State] = []
    keep = _trainer._Run._keep

    def recording(run: Any, value: float, epoch: int) -> None:
        states.append(snapshot(run._scored()))
        keep(run, value, epoch)

    _trainer._Run._keep = recording  # type: ignore[method-assign,assignment]
    return states


def average(states: list[State]) -> State:
    return {
        name: torch.stack([s[name] for s in states]).mean(0).to(v.dtype)
        if v.is_floating_point()
        else v
        for name, v in states[0].items()
    }


def best_epochs(score: Callable[[int], float], epochs: int, k: int) -> list[int]:
    """The k best epochs by ``score`` (higher is better) when early stopping is replayed."""
    kept: list[tuple[float, int]] = []
    for epoch in range(1, epochs + 1):
        kept = sorted([*kept, (score(epoch), epoch)], key=lambda t: -t[0])[:k]
        if epoch - max(e for _, e in kept) >= PATIENCE:
            break
    return sorted(e for _, e in kept)


def renormalise(sets: dict[str, ArrayData], npz: Path, upsample: int, global_norm: bool) -> None:
    """The levers outside the pipeline's preprocessing, applied in place (one at a time)."""
    if global_norm:  # x / 255, then the training set's mean and standard deviation
        raw = np.load(npz)
        scaled = {split: nchw(raw[f"{split}_images"]) / 255.0 for split in sets}
        mean, std = scaled["train"].mean(), scaled["train"].std()
        for split, data in sets.items():
            data.x = np.ascontiguousarray((scaled[split] - mean) / std, dtype=np.float32)
    if upsample:  # bilinear, then normalised per image again
        for data in sets.values():
            x = F.interpolate(torch.from_numpy(data.x), size=(upsample, upsample), mode="bilinear")
            data.x = normalise(x.numpy(), Normalize.ZSCORE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-stem-pool", action="store_true")
    input_lever = parser.add_mutually_exclusive_group()
    input_lever.add_argument("--upsample", type=int, default=0, help="resize the input to N px")
    input_lever.add_argument(
        "--global-norm", action="store_true", help="dataset, not per-image, normalisation"
    )
    parser.add_argument("--sgd", type=float, default=0.0, help="SGD (Nesterov) at this lr")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    if args.sgd:
        _trainer.make_optimizer = lambda model, cfg, device: torch.optim.SGD(  # type: ignore[assignment,return-value]
            model.parameters(), lr=args.sgd, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
    no_early_stop = overrides["train"].get("patience", 10_000)  # the rules replay it
    pre, model_cfg, cfg = configs(overrides, patience=no_early_stop, seed=args.seed)
    sets = load(args.npz, pre.normalize)
    renormalise(sets, args.npz, args.upsample, args.global_norm)
    spec = model_spec(sets, model_cfg, cfg, stem_pool=not args.no_stem_pool)
    num_classes = spec.num_classes
    states = record_every_epoch()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_model(
            spec, sets["train"], sets["val"], cfg, model_cfg,
            checkpoint_dir=Path(tmp), progress=False,
        )
    seconds = time.perf_counter() - started
    model, test = result.model, sets["test"]
    names = [str(i) for i in range(num_classes)]

    def probs(state: State, shifts: tuple[tuple[int, int], ...] = ((0, 0),)) -> np.ndarray:
        model.load_state_dict(state)
        x = torch.from_numpy(test.x)
        views = [predict_proba(model, torch.roll(x, s, dims=(2, 3)).numpy()) for s in shifts]
        return np.mean(views, axis=0)

    def recalibrated(state: State) -> State:
        model.load_state_dict(state)
        recalibrate_batch_norm(model, sets["train"].x, device=torch.device("cpu"),
                               memory_format=torch.contiguous_format, batch_size=64, seed=0)
        return snapshot(model.state_dict())

    def flip_val_auc(state: State) -> float:
        """Validation AUC of ``state`` with the flip average (the model's eval-mode forward)."""
        model.load_state_dict(state)
        return auc_score(sets["val"].y, predict_proba(model, sets["val"].x))

    def auc(p: np.ndarray) -> float:
        return round(compute_metrics(test.y, p, names).auc, 4)

    epochs = len(states)
    per_epoch = {e: probs(states[e - 1]) for e in range(1, epochs + 1)}
    val = {h.epoch: h for h in result.history}
    flipped = {e: flip_val_auc(states[e - 1]) for e in range(1, epochs + 1)}
    rules: dict[str, float] = {}
    for k in (1, 3, 5, 8):
        for name, key in (
            ("auc", lambda e: val[e].val_auc),
            ("loss", lambda e: -val[e].val_loss),
            ("auc_flip", lambda e: flipped[e]),
        ):
            chosen = best_epochs(key, epochs, k)
            soup = average([states[e - 1] for e in chosen])
            rules[f"{name}_top{k}"] = auc(probs(soup))
            rules[f"bn_{name}_top{k}"] = auc(probs(recalibrated(soup)))
    for first in (epochs // 3 + 1, epochs // 2 + 1, 2 * epochs // 3 + 1):
        soup = average(states[first - 1 :])
        rules[f"uniform_{first}-{epochs}"] = auc(probs(soup))
        rules[f"bn_uniform_{first}-{epochs}"] = auc(probs(recalibrated(soup)))
    top5 = best_epochs(lambda e: val[e].val_auc, epochs, 5)
    rules["ens_auc_top5"] = auc(np.mean([per_epoch[e] for e in top5], axis=0))
    shifts = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
    rules["tta5_auc_top5"] = auc(probs(average([states[e - 1] for e in top5]), shifts))
    row = {
        "dataset": args.npz.stem,
        "seed": args.seed,
        "args": {k: v for k, v in vars(args).items() if k not in ("npz", "seed")},
        "train_seconds": round(seconds),
        "test_auc_per_epoch": [auc(p) for p in per_epoch.values()],
        "val_auc_per_epoch": [round(val[e].val_auc, 4) for e in range(1, epochs + 1)],
        "flip_val_auc_per_epoch": [round(flipped[e], 4) for e in range(1, epochs + 1)],
        "rules": rules,
    }
    print(json.dumps(row, default=str), flush=True)


if __name__ == "__main__":
    main()
