"""One monitor check: the live version's recent capture window against its training baseline.

``run_monitor`` reads the capture window of the version the ``champion`` alias points at
(or a given one), and when it holds at least ``monitor.min_samples`` images compares it with
the baseline packed in that version's model folder: KS (and PSI) on the intensity statistics,
MMD on the embeddings, KS on the class probabilities, and, where feedback labels exist, live
accuracy, AUC and per-class recall against the version's test metrics (for a multi-label model:
KS on each finding's probability; per-finding AUC, F1 at the stored thresholds and recall, macro
and micro AUC). It writes an HTML
report under ``<artifacts>/monitor/``, logs it and the p-values to the version's MLflow run,
stores the figures in ``monitor_results``, and, when drift or a quality drop is found, the event
``drift.detected`` with the idempotency key ``drift.detected:<model>:<version>:<window end>``:
the agent's scheduled check and a manual ``medops monitor`` over the same window store one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from medops.config.agent import parse_duration
from medops.config.enums import StrEnum
from medops.config.schema import MedopsConfig
from medops.errors import ConfigError
from medops.monitor import report as html_report
from medops.monitor.baseline import BASELINE_FILE, Baseline
from medops.monitor.capture import CaptureStore
from medops.monitor.drift import DriftReport, compare
from medops.monitor.features import extract, informative
from medops.monitor.quality import LIVE_METRICS, QualityReport, assess
from medops.storage import EventKind, StateStore, drift_series_key
from medops.storage.artifact_sync import ArtifactSync
from medops.storage.monitoring import MonitorRecord, MonitorResults

if TYPE_CHECKING:
    from medops.registry import ModelRegistry, Tracker

log = logging.getLogger(__name__)



class MonitorWorkspace(Protocol):
    """What a check needs of a project (:class:`medops.project.Project` provides it)."""

    @property
    def config(self) -> MedopsConfig: ...
    @property
    def state(self) -> StateStore: ...
    @property
    def artifacts(self) -> Path: ...
    @property
    def artifact_sync(self) -> ArtifactSync: ...
    @property
    def registry(self) -> ModelRegistry: ...
    @property
    def tracker(self) -> Tracker: ...


class MonitorStatus(StrEnum):
    OK = "ok"  # compared: no drift, no quality drop
    DRIFT = "drift"  # compared: drift or a quality drop (drift.detected stored)
    INSUFFICIENT = "insufficient"  # fewer than min_samples captured images in the window
    NO_MODEL = "no_model"  # no champion to monitor
    NO_BASELINE = "no_baseline"  # the version was registered without a baseline


@dataclass
class MonitorResult:
    status: MonitorStatus
    model: str
    version: str | None
    window_start: datetime
    window_end: datetime
    n_current: int = 0
    n_reference: int = 0
    drift: DriftReport | None = None
    quality: QualityReport | None = None
    reasons: list[str] = field(default_factory=list)
    report: Path | None = None
    result_id: int | None = None
    event_id: int | None = None  # the stored drift.detected (None: none, or stored before)
    message: str = ""

    @property
    def detected(self) -> bool:
        return self.status is MonitorStatus.DRIFT

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "detected": self.detected, "model": self.model,
                "version": self.version, "window_start": self.window_start.isoformat(),
                "window_end": self.window_end.isoformat(), "n_current": self.n_current,
                "n_reference": self.n_reference, "reasons": self.reasons,
                "drift": self.drift.to_dict() if self.drift else None,
                "quality": self.quality.to_dict() if self.quality else None,
                "report": str(self.report) if self.report else None,
                "result_id": self.result_id, "event_id": self.event_id,
                "message": self.message}


def run_monitor(ws: MonitorWorkspace, window: float | str | None = None,
                now: datetime | None = None, version: str | None = None) -> MonitorResult:
    """Check the capture window ``(now - window, now]`` of ``version`` (default: the champion).

    ``window``: seconds or a duration string (``"24h"``); default ``monitor.window``. Never
    raises for a missing champion, a version without baseline or a thin window: the result
    says so (the agent calls this on a schedule)."""
    from medops.registry import CHAMPION

    cfg = ws.config.monitor
    seconds = cfg.window if window is None else _seconds(window)
    end = _utc(now or datetime.now(timezone.utc))
    start = end - timedelta(seconds=seconds)
    name = ws.registry.name
    if version is None:
        champion = ws.registry.by_alias(CHAMPION)
        if champion is None:
            return MonitorResult(MonitorStatus.NO_MODEL, name, None, start, end,
                                 message=f"{name} has no {CHAMPION}: nothing live to monitor")
        version = champion.version
    info = ws.registry.get(version)  # NotFoundError for an unknown version

    frame = CaptureStore.under(ws.artifact_sync).read(start, end)
    frame = frame[(frame["model_name"] == name) & (frame["model_version"] == version)]
    frame = frame.reset_index(drop=True)
    results = MonitorResults(ws.state.db)
    if len(frame) < cfg.min_samples:
        out = MonitorResult(MonitorStatus.INSUFFICIENT, name, version, start, end,
                            n_current=len(frame),
                            message=f"{len(frame)} captured images of {name} v{version} in the "
                                    f"window, fewer than monitor.min_samples={cfg.min_samples}")
        out.result_id = results.record(MonitorRecord(name, version, start, end, out.status,
                                                     len(frame)))
        return out

    baseline = _baseline(ws, version)
    if baseline is None:
        return MonitorResult(
            MonitorStatus.NO_BASELINE, name, version, start, end, n_current=len(frame),
            message=f"{name} v{version} has no monitoring baseline ({BASELINE_FILE} in its "
                    "model folder): it was imported pretrained (`medops models import`) or "
                    "registered before medops wrote baselines, so there is no training data "
                    "to compare traffic with; fine-tune it on the project's data (`medops run`) "
                    "to monitor it")
    classes, task = baseline.classes, baseline.task
    reference = extract(baseline.frame, classes, task)
    current = extract(frame, classes, task)
    tested = informative(reference)
    drift = compare({k: reference.scalars[k] for k in tested},
                    {k: current.scalars[k] for k in tested},
                    reference.embeddings, current.embeddings, cfg.p_value, cfg.permutations)
    labels = [None if lab is None or lab != lab else str(lab) for lab in frame["label"]]
    quality = assess(labels, current.probabilities, classes,
                     {**baseline.meta.get("test_metrics", {}), **_tag_metrics(info.tags)},
                     max_drop=cfg.quality.max_drop, min_labels=cfg.quality.min_labels,
                     alpha=cfg.p_value, task=task, thresholds=_thresholds(ws, version, classes))
    reasons = sorted({t.group for t in drift.drifted})
    reasons += ["quality"] if quality.degraded else []
    status = MonitorStatus.DRIFT if reasons else MonitorStatus.OK
    out = MonitorResult(status, name, version, start, end, n_current=len(frame),
                        n_reference=drift.n_reference, drift=drift, quality=quality,
                        reasons=reasons)

    history = results.history(name, version)
    summary = html_report.summary(drift, quality)
    now_record = MonitorRecord(name, version, start, end, status, len(frame),
                               drift.n_reference, quality.n_labelled, bool(reasons),
                               drift.min_p_value, summary)
    document = html_report.render(
        model=name, version=version, window_start=start, window_end=end,
        verdict=status.value, reasons=reasons, drift=drift, quality=quality,
        reference=reference, current=current, tested=tested,
        history=[h for h in history if h.window_end != end] + [now_record])
    stamp = end.strftime("%Y%m%dT%H%M%SZ")
    out.report = html_report.write(
        ws.artifacts / "monitor" / name / f"v{version}" / f"report-{stamp}.html", document)
    ws.artifact_sync.publish(out.report, strict=False)
    # s3://... with a shared root: the dashboard fetches it with ArtifactSync.fetch_report
    now_record.report = ws.artifact_sync.location(out.report)
    out.result_id = results.record(now_record)
    _log_to_mlflow(ws, info.run_id, out, stamp)
    if reasons:
        out.event_id = _event(ws.state, out, seconds)
    out.message = (f"{name} v{version}: {status.value}"
                   + (f" ({', '.join(reasons)})" if reasons else "")
                   + f"; {len(frame)} images, smallest p-value {drift.min_p_value:.3g}")
    return out


def _baseline(ws: MonitorWorkspace, version: str) -> Baseline | None:
    path = ws.registry.download(version) / "artifacts" / BASELINE_FILE
    return Baseline.load(path) if path.is_file() else None


def _thresholds(ws: MonitorWorkspace, version: str, classes: list[str]) -> list[float] | None:
    """A multi-label version's per-finding decision thresholds, as its model folder stores
    them (None: 0.5 each, as the server decides)."""
    import json

    from medops.registry.packaging import META_FILE

    path = ws.registry.download(version) / "artifacts" / META_FILE
    found = json.loads(path.read_text()).get("thresholds") if path.is_file() else None
    return [float(found.get(c, 0.5)) for c in classes] if found else None


def _tag_metrics(tags: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tags.items():
        if key.startswith("test_"):
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def _event(state: StateStore, out: MonitorResult, seconds: float) -> int | None:
    assert out.drift is not None and out.version is not None
    worst = min(out.drift.tests, key=lambda t: t.p_value / t.threshold, default=None)
    payload: dict[str, Any] = {
        "model": out.model, "version": out.version, "window": _duration(seconds),
        "window_start": out.window_start.isoformat(), "window_end": out.window_end.isoformat(),
        "reasons": out.reasons, "n_current": out.n_current, "n_reference": out.n_reference,
        "min_p_value": out.drift.min_p_value, "report_id": str(out.result_id)}
    if worst is not None and worst.drifted:
        payload["test"] = worst.name
    if out.quality is not None and out.quality.degraded:
        payload["metric"] = out.quality.degraded[0].name
    key = drift_series_key(out.model, out.version) + out.window_end.isoformat()
    event = state.add_event(EventKind.DRIFT_DETECTED, payload, idempotency_key=key)
    return event.id if event is not None else None


def _log_to_mlflow(ws: MonitorWorkspace, run_id: str | None, out: MonitorResult,
                   stamp: str) -> None:
    """p-values as metrics of the version's training run (one step per check: MLflow draws
    them over time) and the report as its artifact. A tracking failure must not lose the
    check, which is already in the state DB."""
    if run_id is None or out.drift is None or out.report is None:
        return
    metrics = {f"monitor_min_p_{g}": p for g, p in out.drift.group_min_p().items()}
    metrics["monitor_drift"] = 1.0 if out.detected else 0.0
    if out.quality is not None:
        metrics.update({f"monitor_live_{k}": v for k, v in out.quality.live.items()
                        if k in LIVE_METRICS})
    try:
        ws.tracker.log_metrics(run_id, metrics, step=int(out.window_end.timestamp()))
        ws.tracker.log_artifact(run_id, out.report, f"monitor/{stamp}")
    except Exception as exc:  # MLflow down or the run deleted: the DB row and file remain
        log.warning("could not log the monitor report to MLflow run %s: %s", run_id, exc)


def _seconds(window: float | str) -> float:
    try:
        value = float(parse_duration(window))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"window {window!r} is not a duration; write e.g. 30m, 24h or 7d") \
            from exc
    if value <= 0:
        raise ConfigError(f"window must be positive (got {window!r})")
    return value


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
