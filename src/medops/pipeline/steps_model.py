"""The model half of the pipeline: train → evaluate → gate → register."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medops.config import Approval, Task
from medops.config.models import is_txv
from medops.data.manifest import load_manifest
from medops.evaluate import task_evaluation
from medops.monitor.baseline import BASELINE_FILE, Baseline, ReferenceSplit, build_baseline
from medops.pipeline.context import RunContext
from medops.pipeline.gate import check_gate_finding, decide, gate_metric_name
from medops.pipeline.lineage import lineage, trigger_lineage
from medops.pipeline.steps_data import dataset_folder, manifest_tasks, run_profile
from medops.preprocess import PreprocessCache, PreprocessProfile, load_arrays, preprocess_items
from medops.registry import CANDIDATE, CHAMPION, ModelLifecycle, package_model
from medops.registry.model_card import CARD_DIR, CARD_JSON, build_card
from medops.train import (
    ArrayData,
    ModelSpec,
    build_model,
    predict_proba,
    prune_checkpoints,
    resolve_flip_tta,
    resolve_small_input,
    txv,
)
from medops.train import train_model as fit
from medops.train.distributed import effective_train_config
from medops.train.entrypoints import origin as entry_origin
from medops.train.weights import WeightsStore
from medops.train.weights import resolve as resolve_weights

WEIGHTS = "model.pt"
#: A multi-label model's per-finding decision thresholds, chosen on the validation split
THRESHOLDS_FILE = "thresholds.json"
_TAGGED_METRICS = ("test_auc", "test_accuracy", "test_balanced_accuracy", "test_f1_macro",
                   "test_macro_auc", "test_micro_auc")


def _cache(ctx: RunContext) -> PreprocessCache:
    return PreprocessCache(ctx.ws.artifacts / "cache" / "preprocess")


def _arrays(ctx: RunContext, split_name: str, profile: PreprocessProfile) -> ArrayData:
    manifest = load_manifest(dataset_folder(ctx))
    cache = _cache(ctx)  # preprocessed on another machine (a resumed run): fetched once
    ctx.ws.artifact_sync.ensure_local(cache.root / profile.fingerprint(), immutable=True)
    x = load_arrays(manifest_tasks(ctx, split_name), profile, cache)
    return ArrayData(x=x, y=manifest.targets(split_name))


def _flat(prefix: str, obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: obj}


def train(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config
    profile = run_profile(ctx)
    classes: list[str] = ctx.out("split", "classes")
    check_gate_finding(cfg.gate, classes)  # before training, not after it
    root = ctx.ws.root
    spec = ModelSpec(architecture=cfg.model.architecture, in_channels=profile.channels,
                     task=cfg.task, args=cfg.model.args,
                     num_classes=len(classes),
                     small_input=resolve_small_input(cfg.model, profile.size),
                     flip_tta=resolve_flip_tta(cfg.model, cfg.train.augment),
                     origin=_origin(cfg.model.architecture, root), code_root=root)
    # model.weights made a local, verified file (a URL is served from the weights store)
    store = WeightsStore.for_project(root)
    init = resolve_weights(cfg.model.weights, cfg.model.weights_sha256, root=root, store=store)
    if init is None and is_txv(cfg.model.architecture):
        # TorchXRayVision's weights (always: naming them is the point), from the store under
        # TorchXRayVision's file name
        init = txv.find_weights(txv.weights_info(cfg.model.architecture), store)
    model_cfg = cfg.model if init is None else \
        cfg.model.model_copy(update={"weights": str(init.path)})
    train_data, val_data = _arrays(ctx, "train", profile), _arrays(ctx, "val", profile)
    # under torchrun, the processes it started (train.processes: 1 stands for "all of them")
    train_cfg = effective_train_config(cfg.train)
    # Checkpoints are keyed by everything that shapes training, so `medops run` after a crash
    # continues where the killed process stopped, and a finished identical training is reused.
    key = json.dumps([ctx.out("split", "dataset_version"), profile.fingerprint(),
                      spec.to_dict(), cfg.model.model_dump(mode="json"),
                      train_cfg.model_dump(mode="json"),
                      *([init.sha256] if init is not None else [])], sort_keys=True)
    ckpt = ctx.ws.artifacts / "checkpoints" / hashlib.sha256(key.encode()).hexdigest()[:16]
    ctx.ws.artifact_sync.ensure_local(ckpt)  # interrupted elsewhere: continue from there
    # recorded now, not only on success: `medops runs discard` deletes an unfinished one
    ctx.ws.state.update_step(ctx.run_id, ctx.step, outputs={"checkpoint": str(ckpt)})

    tracker, mlrun = ctx.ws.tracker, ctx.mlflow_run()
    # notify.urls hold webhook tokens and passwords: never an MLflow param.
    params = cfg.model_dump(mode="json", exclude={"storage", "notify", "agent", "triggers"})
    tracker.log_params(mlrun, {**_flat("", params), "train.processes": train_cfg.processes,
                               "dataset_version": ctx.out("split", "dataset_version"),
                               "preprocess_profile": profile.to_json(),
                               "n_train": len(train_data.y), "n_val": len(val_data.y),
                               **_flat("model_origin", dict(spec.origin)),
                               **_flat("init_weights", init.lineage() if init else {}),
                               **lineage(ctx.ws.root)})
    tracker.set_tags(mlrun, {"dataset_version": ctx.out("split", "dataset_version"),
                             "architecture": spec.architecture,
                             **({"model_origin": _origin_text(spec.origin)} if spec.origin
                                else {}),
                             **({"init_weights_sha256": init.sha256} if init else {})})

    def on_epoch(ep: Any) -> None:
        tracker.log_metrics(mlrun, {"train_loss": ep.train_loss, "val_loss": ep.val_loss,
                                    "val_auc": ep.val_auc, "val_accuracy": ep.val_accuracy,
                                    "lr": ep.lr, "epoch_seconds": ep.seconds}, step=ep.epoch)
        ctx.progress(ep.epoch, cfg.train.epochs)
        ctx.message(f"epoch {ep.epoch}: loss {ep.train_loss:.4f} val_auc {ep.val_auc:.4f}"
                    + (" (best)" if ep.best_so_far else ""))
        # in the background while training; the checkpoint goes up whole when training ends
        ctx.ws.artifact_sync.publish_soon(ckpt)
        ctx.interrupt.check()  # the epoch is checkpointed and logged: a resume continues after it

    if train_cfg.processes > 1:
        ctx.message(f"training on {train_cfg.processes} processes (data parallel)")
    try:
        result = fit(spec, train_data, val_data, train_cfg, model_cfg, checkpoint_dir=ckpt,
                     on_epoch=on_epoch, progress=False)
    finally:  # stopped or not, the last write is finished: another machine resumes from it
        ctx.ws.artifact_sync.publish(ckpt, delete=True, strict=False)
    import torch

    weights = ctx.run_dir / WEIGHTS
    torch.save(result.model.state_dict(), weights)
    # this training's checkpoint stays (an unchanged re-run reuses it); finished older ones go
    pruned = prune_checkpoints(ckpt.parent, keep=ckpt)
    for old in pruned:
        ctx.ws.artifact_sync.discard(old, strict=False)
    if pruned:
        ctx.message(f"removed {len(pruned)} checkpoint(s) of earlier finished trainings")
    return {"weights": str(weights), "spec": spec.to_dict(), "best_epoch": result.best_epoch,
            "best_val_auc": result.best_val_auc, "epochs_run": result.epochs_run,
            "averaged_epochs": result.averaged_epochs,
            "resumed_from_epoch": result.resumed_from_epoch,
            "stopped_early": result.stopped_early, "device": result.device,
            "processes": result.processes,
            "checkpoint": str(ckpt), "checkpoints_removed": len(pruned),
            "init_weights": init.lineage() if init is not None else None}


def _origin(architecture: str, root: Path) -> dict[str, str]:
    """Where the network's code comes from: an entry point's file or package, or the
    TorchXRayVision package of a ``txv:`` architecture."""
    if is_txv(architecture):
        return txv.weights_info(architecture).origin()
    return entry_origin(architecture, root)


def _origin_text(origin: Any) -> str:
    """One line for a tag: ``file models/mynet.py@<sha12>`` or ``package monai==1.6.1``."""
    if origin.get("kind") == "package":
        return f"package {origin['package']}=={origin['version']}"
    if origin.get("kind") == "file":
        return f"file {origin['path']}@{str(origin.get('sha256', ''))[:12]}"
    return f"{origin.get('kind')} {origin.get('module', '')}".strip()


def _load_trained(ctx: RunContext) -> Any:
    import torch

    model = build_model(ModelSpec.from_dict(ctx.out("train", "spec"), code_root=ctx.ws.root))
    # the run's own folder, not the path recorded: a run resumed on another machine has it
    # under another root (fetched from a remote artifact root)
    model.load_state_dict(torch.load(ctx.run_dir / WEIGHTS, map_location="cpu",
                                     weights_only=True))
    return model.eval()


def evaluate(ctx: RunContext) -> dict[str, Any]:
    """Test metrics and plots by the rules of the task (medops.evaluate.tasks); a multi-label
    model's per-finding thresholds are chosen on the validation split first."""
    profile = run_profile(ctx)
    classes: list[str] = ctx.out("split", "classes")
    judge = task_evaluation(ctx.config.task)
    val, test = _arrays(ctx, "val", profile), _arrays(ctx, "test", profile)
    model = _load_trained(ctx)
    val_probs = predict_proba(model, val.x)
    thresholds = judge.thresholds(val.y, val_probs, classes)
    probs = predict_proba(model, test.x)
    metrics = judge.metrics(test.y, probs, classes, thresholds)
    out = ctx.run_dir / "evaluation"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(metrics.to_json())
    if thresholds is not None:
        (out / THRESHOLDS_FILE).write_text(json.dumps(thresholds, indent=2))
    judge.plots(metrics, test.y, probs, classes, out)
    np.save(out / "test_probs.npy", probs)
    flat = metrics.to_flat_dict()
    reference = [ReferenceSplit("val", val.x, val.y, _files(ctx, "val"), probabilities=val_probs),
                 ReferenceSplit("test", test.x, test.y, _files(ctx, "test"), probabilities=probs)]
    monitoring_baseline(ctx, model, profile, reference, flat, thresholds).save(out / BASELINE_FILE)
    mlrun = ctx.mlflow_run()
    ctx.ws.tracker.log_metrics(mlrun, flat)
    ctx.ws.tracker.log_artifact(mlrun, out, "evaluation")
    # NaN (e.g. AUC of a class absent from the test split) is not JSON: store it as null.
    return {"metrics": {k: (None if v != v else v) for k, v in flat.items()},
            "thresholds": thresholds, "folder": str(out), "baseline": str(out / BASELINE_FILE)}


def _files(ctx: RunContext, split_name: str) -> list[tuple[str, int | None]]:
    return [(t.uri, t.frame) for t in manifest_tasks(ctx, split_name)]


def monitoring_baseline(ctx: RunContext, model: Any, profile: PreprocessProfile,
                        splits: list[ReferenceSplit], test_metrics: dict[str, float],
                        thresholds: dict[str, float] | None) -> Baseline:
    """What `medops monitor` compares live traffic with: validation and test images' features
    (see medops.monitor.baseline for why these splits)."""
    cfg = ctx.config.monitor
    classes: list[str] = ctx.out("split", "classes")
    return build_baseline(model, classes, profile, splits,
                          max_rows=cfg.baseline_size, raw_sample=cfg.raw_sample,
                          seed=ctx.config.train.seed,
                          meta={"dataset_version": ctx.out("split", "dataset_version"),
                                "run_id": ctx.run_id,
                                "test_metrics": {k: v for k, v in test_metrics.items()
                                                 if v == v}},
                          thresholds=[thresholds[c] for c in classes] if thresholds else None)


def _champion_score(ctx: RunContext) -> tuple[str | None, float | None]:
    registry = ctx.ws.registry
    champion = registry.by_alias(CHAMPION)
    if champion is None:
        return None, None
    try:
        loaded = registry.load(champion.version)
    except Exception as exc:  # a broken champion must not block a good candidate silently
        ctx.message(f"could not load champion v{champion.version}: {exc}")
        return champion.version, None
    classes, task = ctx.out("split", "classes"), ctx.config.task
    if loaded.classes != classes or loaded.task is not task:
        what = "findings" if loaded.task is Task.MULTILABEL else "classes"
        ctx.message(f"champion v{champion.version} is a {loaded.task} model of {what} "
                    f"{loaded.classes}, not a {task} model of {classes}: it cannot be scored "
                    "on this test split")
        return champion.version, None
    tasks = manifest_tasks(ctx, "test")
    with ctx.ws.executor() as pool:  # the champion's own profile: its cache entries may differ
        preprocess_items(tasks, loaded.profile, _cache(ctx), pool)
    x = load_arrays(tasks, loaded.profile, _cache(ctx))
    manifest = load_manifest(dataset_folder(ctx))
    # the same metrics as the candidate's, the champion's own thresholds deciding its findings
    cuts = loaded.thresholds
    metrics = task_evaluation(task).metrics(
        manifest.targets("test"), predict_proba(loaded.model, x), loaded.classes,
        dict(zip(loaded.classes, cuts, strict=True)) if cuts is not None else None)
    value = metrics.to_flat_dict().get(f"test_{gate_metric_name(ctx.config.gate)}")
    return champion.version, None if value is None else float(value)


def gate(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config.gate
    check_gate_finding(cfg, ctx.out("split", "classes"))
    name = gate_metric_name(cfg)
    raw = ctx.out("evaluate", "metrics").get(f"test_{name}")
    value = float("nan") if raw is None else float(raw)
    champion_version, champion_value = _champion_score(ctx)
    verdict = decide(cfg, value, champion_version, champion_value)
    mlrun = ctx.mlflow_run()
    ctx.ws.tracker.set_tags(mlrun, {"gate": "passed" if verdict.passed else "failed",
                                    "gate_reason": "; ".join(verdict.reasons)})
    if champion_value is not None:
        ctx.ws.tracker.log_metrics(mlrun, {f"champion_test_{name}": champion_value})
    ctx.message(("PASSED: " if verdict.passed else "FAILED: ") + "; ".join(verdict.reasons))
    return verdict.to_dict()


def register(ctx: RunContext) -> dict[str, Any]:
    verdict = ctx.outputs["gate"]
    name = ctx.config.model_name
    dataset = ctx.out("split", "dataset_version")
    if not verdict["passed"]:
        ctx.ws.state.audit("model.gate_failed", "medops", name,
                           {"run_id": ctx.run_id, "dataset_version": dataset,
                            "reasons": verdict["reasons"]})
        ctx.ws.tracker.end_run(ctx.mlflow_run())
        return {"registered": False, "reasons": verdict["reasons"]}
    profile = run_profile(ctx)
    package = ctx.run_dir / "model"
    shutil.rmtree(package, ignore_errors=True)
    # the project's and medops' commits, and the model repository's commit or the image
    # digest that started the run
    origin = {**lineage(ctx.ws.root), **trigger_lineage(ctx.ws.state, ctx.run_id,
                                                        ctx.config.triggers, ctx.ws.root)}
    meta = {"dataset_version": dataset, "run_id": ctx.run_id,
            "metrics": ctx.out("evaluate", "metrics"), **origin}
    thresholds = ctx.outputs["evaluate"].get("thresholds")  # a multi-label model's
    if thresholds:
        meta["thresholds"] = thresholds
    init_weights = ctx.outputs["train"].get("init_weights")  # the weights training began from
    if init_weights:
        meta["weights"] = init_weights
    # absent in runs from older medops; read from this machine's copy of the run's folder
    baseline = ctx.run_dir / "evaluation" / BASELINE_FILE
    extra = {"baseline": baseline} \
        if ctx.outputs["evaluate"].get("baseline") and baseline.is_file() else None
    package_model(_load_trained(ctx), ctx.out("split", "classes"), profile, meta, package,
                  extra=extra)
    mlrun = ctx.mlflow_run()
    ctx.ws.tracker.log_artifact(mlrun, package, "model")
    metric_tags = {k: f"{v:.4f}" for k, v in ctx.out("evaluate", "metrics").items()
                   if v is not None and (k in _TAGGED_METRICS
                                         or k == f"test_{verdict['metric']}")}
    tags = {"dataset_version": dataset, "git_commit": origin["git_commit"],
            "gate": "passed", "gate_metric": verdict["metric"],
            "approval": "pending", "medops_run_id": ctx.run_id,
            "preprocess_profile": profile.fingerprint(), **metric_tags,
            **{k: v for k, v in origin.items() if k.startswith(("code_", "image_"))}}
    version = ctx.ws.registry.register(mlrun, f"{ctx.ws.tracker.artifact_uri(mlrun)}/model",
                                       tags, alias=CANDIDATE)
    card = build_card(ctx.config, ctx.outputs, name=name, version=version.version,
                      run_id=ctx.run_id, mlflow_run_id=mlrun, lineage=origin)
    ctx.ws.tracker.log_artifact(mlrun, card.write(ctx.run_dir / CARD_DIR), CARD_DIR)
    ctx.ws.registry.set_tags(version.version, {"model_card": f"{CARD_DIR}/{CARD_JSON}",
                                               "weights_sha256": card.weights_sha256 or "-"})
    ctx.ws.state.audit("model.registered", "medops", f"{name}/{version.version}",
                       {"run_id": ctx.run_id, "dataset_version": dataset, "alias": CANDIDATE,
                        "gate": verdict["reasons"]})
    ctx.ws.tracker.end_run(mlrun)
    approval = "pending"
    if ctx.config.registry.approval is Approval.AUTO:
        ModelLifecycle(ctx.ws.registry, ctx.ws.state).auto_approve(version.version,
                                                                    verdict["reasons"])
        approval = "approved"
        ctx.message(f"v{version.version} approved automatically: it is the live {CHAMPION}")
    return {"registered": True, "name": name, "version": version.version, "alias": CANDIDATE,
            "model_uri": f"models:/{name}@{CANDIDATE}", "approval": approval}


