"""Registering a pretrained model as a version without training (``medops models import``).

Today's source is TorchXRayVision (``txv:NAME``): its network and weights (from the project's
weights store), a multi-label task over its findings, its input convention as the
preprocessing profile and its operating points as the per-finding thresholds. The version goes
through the same registry and sign-off as a trained one: an MLflow run holds the packaged model
and its lineage (the weights' SHA-256, file and URL, the TorchXRayVision version), the version
is tagged ``approval=pending`` with the alias ``candidate``, the audit log records it, and
approving it (optionally at once) goes through :class:`~medops.registry.ModelLifecycle`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medops.config.models import TXV_PREFIX, is_txv
from medops.errors import ConfigError
from medops.preprocess import txv_profile
from medops.registry.lifecycle import ModelLifecycle
from medops.registry.packaging import package_model
from medops.registry.registry import CANDIDATE, ModelRegistry
from medops.registry.tracking import Tracker
from medops.storage import StateStore
from medops.train.weights import WeightsStore

#: The sources ``medops models import`` takes, for messages.
SOURCES = f"{TXV_PREFIX}NAME (a TorchXRayVision model, e.g. txv:densenet121-res224-all)"


@dataclass(frozen=True)
class Approval:
    """Who approves an imported version at once, and why (kept in the audit log)."""

    by: str
    note: str


@dataclass(frozen=True)
class ImportedModel:
    """What ``medops models import`` registered."""

    name: str
    version: str
    source: str
    findings: list[str]
    thresholds: dict[str, float]
    weights_sha256: str
    weights_file: str
    run_id: str
    approval: str
    alias: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_pretrained(source: str, *, store: WeightsStore, tracker: Tracker,
                      registry: ModelRegistry, state: StateStore,
                      approve: Approval | None = None) -> ImportedModel:
    """Register the pretrained model ``source`` as a new version of ``registry``'s model."""
    if not is_txv(source.strip()):
        raise ConfigError(f"cannot import {source!r}: medops imports {SOURCES}")
    from medops.train import txv

    info = txv.weights_info(source.strip())
    weights = txv.find_weights(info, store)
    model = txv.pretrained_classifier(info, weights.path)
    findings = info.findings
    thresholds = info.thresholds
    profile = txv_profile(info.resolution)
    imported = {"source": info.architecture, "weights_sha256": weights.sha256,
                "weights_url": info.url, "weights_file": info.file_name,
                "torchxrayvision_version": model.spec.origin.get("version", "")}
    run = tracker.start_run(f"import {info.architecture}", {"source": info.architecture})
    tracker.log_params(run, {**imported, "task": model.spec.task.value,
                             "findings": "|".join(findings),
                             "preprocess_profile": profile.to_json()})
    meta = {"imported": imported, "weights": weights.lineage(), "thresholds": thresholds}
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "model"
        package_model(model, findings, profile, meta, package)
        tracker.log_artifact(run, package, "model")
        shutil.rmtree(package, ignore_errors=True)
    tags = {"source": info.architecture, "approval": "pending", "gate": "not run (imported)",
            "weights_sha256": weights.sha256, "preprocess_profile": profile.fingerprint(),
            "task": model.spec.task.value}
    version = registry.register(run, f"{tracker.artifact_uri(run)}/model", tags,
                                alias=CANDIDATE)
    state.audit("model.registered", "medops", f"{registry.name}/{version.version}",
                {"run_id": run, "source": info.architecture, "weights_sha256": weights.sha256,
                 "alias": CANDIDATE, "imported": True})
    tracker.end_run(run)
    approval = "pending"
    if approve is not None:
        ModelLifecycle(registry, state).approve(version.version, approve.by, approve.note)
        approval = "approved"
    return ImportedModel(name=registry.name, version=version.version, source=info.architecture,
                         findings=findings, thresholds=thresholds,
                         weights_sha256=weights.sha256, weights_file=info.file_name,
                         run_id=run, approval=approval, alias=CANDIDATE)
