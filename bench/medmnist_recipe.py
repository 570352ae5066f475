"""Train the default medops recipe on a MedMNIST npz and print its test metrics and wall time.

Preprocessing matches the pipeline's with ``size: auto`` and ``channels: auto`` on 28 px files:
no resize, grey stays 1 channel and colour 3, then the per-image normalisation of
``preprocess.normalize``. Training is ``train_model`` with the default ``TrainConfig`` and
``ModelConfig`` (overridable for experiments with ``--set``); the test metrics come from the
best-validation-AUC weights.

    python bench/medmnist_recipe.py ../shared/data/medmnist/breastmnist_28.npz --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medops.config.enums import Normalize
from medops.config.schema import ModelConfig, PreprocessConfig, TrainConfig
from medops.evaluate import compute_metrics
from medops.train import (
    ArrayData,
    EpochResult,
    ModelSpec,
    predict_proba,
    resolve_flip_tta,
    resolve_small_input,
    train_model,
)

EPS = 1e-6


def nchw(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, 3) to float32 (N, C, H, W), values kept."""
    x = images.astype(np.float32)
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def normalise(x: np.ndarray, normalize: Normalize) -> np.ndarray:
    """(N, C, H, W) normalised per image, as ``preprocess.normalize`` does."""
    axes = (1, 2, 3)
    if normalize is Normalize.ZSCORE:
        mean = x.mean(axis=axes, keepdims=True)
        std = x.std(axis=axes, keepdims=True)
        return np.ascontiguousarray((x - mean) / (std + EPS))
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    return np.ascontiguousarray((x - lo) / np.maximum(hi - lo, EPS))


def preprocess(images: np.ndarray, normalize: Normalize) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, 3) to float32 (N, C, H, W), normalised per image."""
    return normalise(nchw(images), normalize)


def load(path: Path, normalize: Normalize) -> dict[str, ArrayData]:
    data = np.load(path)
    return {
        split: ArrayData(
            preprocess(data[f"{split}_images"], normalize),
            data[f"{split}_labels"].reshape(-1).astype(np.int64),
        )
        for split in ("train", "val", "test")
    }


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``train.lr=3e-3`` style overrides, values parsed as YAML."""
    out: dict[str, dict[str, Any]] = {"train": {}, "model": {}, "augment": {}, "preprocess": {}}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in out or not name:
            sys.exit(f"bad --set {item!r}: use train.X=, model.X=, augment.X= or preprocess.X=")
        out[section][name] = yaml.safe_load(value)
    return out


def _print_epoch(ep: EpochResult) -> None:
    print(
        f"  epoch {ep.epoch:2d} loss {ep.train_loss:.4f} val_auc {ep.val_auc:.4f} "
        f"val_acc {ep.val_accuracy:.3f} {ep.seconds:.0f}s{' *' if ep.best_so_far else ''}",
        flush=True,
    )


def configs(
    overrides: dict[str, dict[str, Any]], **train: Any
) -> tuple[PreprocessConfig, ModelConfig, TrainConfig]:
    """The default configuration with ``overrides``; keyword ``train`` fields win over theirs."""
    fields = {**overrides["train"], **train}
    if overrides["augment"]:
        base = TrainConfig().augment
        fields["augment"] = base.model_copy(update=overrides["augment"]) if base else None
    return (
        PreprocessConfig(**overrides["preprocess"]),
        ModelConfig(**overrides["model"]),
        TrainConfig(**fields),
    )


def model_spec(
    sets: dict[str, ArrayData], model_cfg: ModelConfig, cfg: TrainConfig, stem_pool: bool
) -> ModelSpec:
    """The spec the pipeline would build for these images."""
    x = sets["train"].x
    return ModelSpec(
        architecture=model_cfg.architecture,
        in_channels=x.shape[1],
        num_classes=int(max(s.y.max() for s in sets.values())) + 1,
        small_input=resolve_small_input(model_cfg, (x.shape[2], x.shape[3])),
        flip_tta=resolve_flip_tta(model_cfg, cfg.augment),
        small_input_pool=stem_pool,
    )


def run_once(
    path: Path,
    seed: int,
    overrides: dict[str, dict[str, Any]],
    progress: bool,
    verbose: bool,
    stem_pool: bool = True,
) -> dict[str, Any]:
    pre, model_cfg, cfg = configs(overrides, seed=seed)
    started = time.perf_counter()
    sets = load(path, pre.normalize)
    spec = model_spec(sets, model_cfg, cfg, stem_pool)
    num_classes = spec.num_classes
    with tempfile.TemporaryDirectory() as tmp:
        result = train_model(
            spec,
            sets["train"],
            sets["val"],
            cfg,
            model_cfg,
            checkpoint_dir=Path(tmp),
            progress=progress,
            on_epoch=_print_epoch if verbose else None,
        )
    probs = predict_proba(result.model, sets["test"].x)
    names = [str(i) for i in range(num_classes)]
    metrics = compute_metrics(sets["test"].y, probs, names)
    return {
        "dataset": path.stem,
        "seed": seed,
        "test_auc": round(metrics.auc, 4),
        "test_accuracy": round(metrics.accuracy, 4),
        "best_epoch": result.best_epoch,
        "best_val_auc": round(result.best_val_auc, 4),
        "epochs_run": result.epochs_run,
        "averaged_epochs": result.averaged_epochs,
        "stopped_early": result.stopped_early,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="override a default, e.g. --set train.lr=3e-3 (for experiments)",
    )
    parser.add_argument(
        "--no-stem-pool",
        action="store_true",
        help="small-input ResNets without the max-pool after the stem (as MedMNIST's ResNets)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every epoch")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    print(
        f"defaults: train={TrainConfig().model_dump(mode='json')} "
        f"model={ModelConfig().model_dump(mode='json')} "
        f"normalize={PreprocessConfig().normalize.value} overrides={overrides}"
    )
    rows = []
    for seed in args.seeds:
        row = run_once(
            args.npz,
            seed,
            overrides,
            progress=not args.no_progress,
            verbose=args.verbose,
            stem_pool=not args.no_stem_pool,
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
    if len(rows) > 1:
        aucs = [r["test_auc"] for r in rows]
        print(
            f"{args.npz.stem}: test AUC mean {statistics.mean(aucs):.4f} "
            f"min {min(aucs):.4f} max {max(aucs):.4f} over seeds {args.seeds}; "
            f"wall {statistics.mean(r['seconds'] for r in rows):.0f} s per run"
        )


if __name__ == "__main__":
    main()
