"""The data half of the pipeline: ingest → validate → split → preprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from medops.config.enums import SourceKind
from medops.config.models import is_txv
from medops.data.images import ImageFormat, ImageInfo
from medops.data.manifest import build_manifest, load_manifest, save_manifest
from medops.data.sources import FolderSource, NpzSource, Source
from medops.data.split import assign_splits, group_key, split_of
from medops.data.validate import summarize, validate_items
from medops.errors import DataError, PipelineError
from medops.pipeline.context import RunContext
from medops.preprocess import (
    PreprocessCache,
    PreprocessProfile,
    PreprocessTask,
    preprocess_items,
    resolve_profile,
    txv_overrides,
)
from medops.storage import Item, ItemStatus
from medops.storage.locations import local_path


def configured_source(ctx: RunContext) -> Source | None:
    """The source named in medops.yaml, or None when its folder does not exist (yet)."""
    cfg = ctx.config.data
    if cfg.source is None:
        return None
    path = local_path(ctx.ws.root, cfg.source.path, key="data.source.path")
    if not path.exists():
        return None
    if cfg.source.kind is SourceKind.NPZ:
        return NpzSource(path, ctx.ws.artifacts.parent / "data" / path.stem)
    return FolderSource(path, cfg.labels, cfg.frames, csv_root=ctx.ws.root,
                        task=ctx.config.task)


def ingest(ctx: RunContext) -> dict[str, Any]:
    source = configured_source(ctx)
    new = changed = 0
    if source is not None:
        items: list[Item] = []
        for n, item in enumerate(source.list_items(), 1):
            items.append(item)
            if n % 100 == 0:
                ctx.progress(n, 0)
        new, changed = ctx.ws.state.upsert_items(items)
    total = sum(sum(c.values()) for c in ctx.ws.state.item_counts().values())
    if total == 0:
        where = ctx.config.data.source.path if ctx.config.data.source else "(no source set)"
        raise DataError(
            f"no images: {where} is missing or empty and nothing was imported; put images in "
            f"{where}/<label>/ or run `medops data import FILE.npz`")
    if source is None:
        ctx.message(f"no source folder; using the {total} items already in the catalog")
    return {"source": source.name if source else None, "new": new, "changed": changed,
            "catalog": total}


def validate(ctx: RunContext) -> dict[str, Any]:
    state = ctx.ws.state
    pending = state.items(ItemStatus.PENDING)
    known = {i.key: i.uri for i in state.items(ItemStatus.OK)}
    if pending:
        with ctx.ws.executor() as pool:
            verdicts = validate_items(pending, pool, known, ctx.config.task)
        state.update_items((item.id, {"status": status, "reason": reason})
                           for item, status, reason in verdicts if item.id is not None)
    report = summarize(state.items(), len(pending), ctx.config.data.min_items_per_class,
                       ctx.config.task)
    path = ctx.run_dir / "validation.json"
    path.write_text(json.dumps(report.to_dict(), indent=2))
    for warning in report.warnings:
        ctx.message(warning)
    unusable = report.unusable()
    if unusable:
        raise DataError(
            f"{unusable}; {len(report.quarantined)} item(s) quarantined (see {path})")
    return {"checked": report.checked, "ok": report.ok,
            "quarantined": len(report.quarantined), "class_counts": report.class_counts,
            "report": str(path)}


def split(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.config.data.split
    items = ctx.ws.state.items(ItemStatus.OK)
    known = ctx.ws.state.split_groups()
    new_groups = assign_splits(items, cfg, known, ctx.config.task)
    ctx.ws.state.assign_split_groups(new_groups)
    groups = {**known, **new_groups}
    rows = [{"key": i.key, "uri": i.uri, "frame": i.frame, "content_hash": i.content_hash,
             "label": i.label, "group": group_key(i, cfg.group_by),
             "split": split_of(i, cfg, groups).value, "source": i.source} for i in items]
    manifest = build_manifest(rows, ctx.config.task)
    counts = manifest.counts()
    for name in ("train", "val", "test"):
        if not counts.get(name):
            raise DataError(f"the {name} split is empty ({counts}); add data or change "
                            "data.split fractions")
    folder = ctx.ws.artifacts / "datasets" / manifest.version
    save_manifest(manifest, folder)
    ctx.ws.artifact_sync.publish(folder)  # a resume or a run elsewhere reads the same split
    missing = manifest.missing_findings()
    for name, findings in missing.items():
        ctx.message(f"the {name} split has no positive image of {', '.join(findings)}: too few "
                    "patients with these findings to place one in every split")
    return {"dataset_version": manifest.version, "manifest": str(folder),
            "task": str(manifest.task), "classes": manifest.classes, "counts": counts,
            "missing_findings": missing, "new_groups": len(new_groups)}


def _infos(items: list[Item]) -> list[ImageInfo]:
    return [ImageInfo(format=ImageFormat(i.info.get("format", "png")),
                      rows=int(i.info.get("rows", 0)), cols=int(i.info.get("cols", 0)),
                      n_frames=int(i.info.get("frames", 1)),
                      samples_per_pixel=int(i.info.get("samples", 1)),
                      photometric=i.info.get("photometric"),
                      transfer_syntax=i.info.get("transfer_syntax"),
                      modality=i.info.get("modality"), patient_id=None, study_uid=None,
                      series_uid=None, sop_uid=None, bits_stored=None,
                      burned_in_annotation=None)
            for i in items]


def dataset_folder(ctx: RunContext) -> Path:
    """The run's manifest folder, fetched from a remote artifact root if this machine lacks it
    (a run resumed elsewhere); a version's manifest never changes."""
    folder = ctx.ws.artifacts / "datasets" / ctx.out("split", "dataset_version")
    return ctx.ws.artifact_sync.ensure_local(folder, immutable=True)


def manifest_tasks(ctx: RunContext, split_name: str | None = None) -> list[PreprocessTask]:
    manifest = load_manifest(dataset_folder(ctx))
    frame = manifest.frame if split_name is None else manifest.split(split_name)
    return [PreprocessTask(key=r.key, uri=r.uri, frame=_frame(r.frame),
                           content_hash=r.content_hash) for r in frame.itertuples()]


def _frame(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def run_profile(ctx: RunContext) -> PreprocessProfile:
    return PreprocessProfile.from_json(json.dumps(ctx.out("preprocess", "profile")))


def preprocess(ctx: RunContext) -> dict[str, Any]:
    tasks = manifest_tasks(ctx)
    keys = {t.key for t in tasks}
    items = [i for i in ctx.ws.state.items(ItemStatus.OK) if i.key in keys]
    profile = resolve_profile(ctx.config.preprocess, ctx.config.data.frames, _infos(items),
                              architecture=ctx.config.model.architecture)
    if is_txv(ctx.config.model.architecture):
        for note in txv_overrides(ctx.config.preprocess, profile):
            ctx.message(note)
    cache = PreprocessCache(ctx.ws.artifacts / "cache" / "preprocess")
    # what another machine computed is fetched, not computed again; what this one adds goes up
    entries = ctx.ws.artifact_sync.ensure_local(cache.root / profile.fingerprint(),
                                                immutable=True)
    with ctx.ws.executor() as pool:
        report = preprocess_items(tasks, profile, cache, pool, progress=ctx.progress)
    ctx.ws.artifact_sync.publish(entries)
    if report.failures:
        sample = "; ".join(f"{k[:12]}: {r}" for k, r in list(report.failures.items())[:3])
        raise PipelineError(f"{len(report.failures)} item(s) failed preprocessing: {sample}")
    return {"profile": json.loads(profile.to_json()), "fingerprint": profile.fingerprint(),
            "computed": report.computed, "cached": report.cached}
