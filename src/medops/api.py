"""The Python API: what a notebook or a script does with a medops project.

One :class:`Session` per project folder, opened with :func:`open_project` (or made with
:func:`init_project`); configuration overrides use the dotted keys of ``medops run --set``::

    import medops

    with medops.open_project("chest-xray", overrides={"train.epochs": 2}) as project:
        run = project.run(until="evaluate")         # a RunResult
        print(run.status, run.metrics["test_auc"])

Every answer is a typed, frozen dataclass (:class:`RunResult`, :class:`RunMetrics`,
:class:`ModelVersion`, :class:`Prediction`, :class:`ImportResult`); errors are the
:class:`medops.errors.MedopsError` tree. The `medops` command is a shell over the same calls.
Torch, MLflow and the serving stack load only when a call needs them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medops.config import MedopsConfig, Step
from medops.errors import ConfigError, DataError, NotFoundError
from medops.project import Project, import_source
from medops.storage import RunRecord, RunStatus, StepRecord, StepStatus

if TYPE_CHECKING:  # the pipeline, MLflow and the serving stack load when a call needs them
    from medops.pipeline import GateVerdict, Interrupt, Reporter
    from medops.registry import ModelLifecycle, ModelRegistry, VersionStatus
    from medops.registry.pretrained import ImportedModel
    from medops.serve.batch import Predictor

#: The trigger recorded for runs started through this API (`medops runs ls` shows it).
TRIGGER = "python"


# -- results ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepResult:
    """One step of a run: its state, timings and outputs (or error)."""

    name: str
    status: StepStatus
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    outputs: dict[str, Any]

    @property
    def seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    @classmethod
    def from_record(cls, step: StepRecord) -> StepResult:
        return cls(name=step.name, status=step.status, attempts=step.attempts,
                   started_at=step.started_at, finished_at=step.finished_at, error=step.error,
                   outputs=dict(step.outputs))


@dataclass(frozen=True)
class RunResult:
    """A pipeline run: its state, its steps and what they produced."""

    id: str
    status: RunStatus
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    mlflow_run_id: str | None
    steps: tuple[StepResult, ...]
    #: the state store's record of the run (what `medops runs show --json` prints)
    record: RunRecord = field(repr=False, compare=False)

    @classmethod
    def from_record(cls, record: RunRecord) -> RunResult:
        return cls(id=record.id, status=record.status, trigger=record.trigger,
                   started_at=record.started_at, finished_at=record.finished_at,
                   error=record.error, mlflow_run_id=record.mlflow_run_id,
                   steps=tuple(StepResult.from_record(s) for s in record.steps), record=record)

    @property
    def succeeded(self) -> bool:
        return self.status is RunStatus.SUCCEEDED

    def step(self, name: Step | str) -> StepResult:
        """The step ``name`` (``"train"`` or ``Step.TRAIN``)."""
        wanted = _step(name).value
        return next(s for s in self.steps if s.name == wanted)

    def _outputs(self, step: Step) -> dict[str, Any] | None:
        found = next((s for s in self.steps if s.name == step.value), None)
        if found is None or found.status is not StepStatus.SUCCEEDED:
            return None
        return found.outputs

    @property
    def dataset_version(self) -> str | None:
        """The id of the dataset version the run split (``ds-...``), once split has run."""
        out = self._outputs(Step.SPLIT)
        return None if out is None else out.get("dataset_version")

    @property
    def metrics(self) -> dict[str, float]:
        """The test metrics of the evaluate step (``test_auc``, ``test_accuracy``, per-class
        ones...); NaN where a metric is undefined; empty before evaluate has run."""
        out = self._outputs(Step.EVALUATE)
        found = {} if out is None else out.get("metrics") or {}
        return {k: float("nan") if v is None else float(v) for k, v in found.items()}

    @property
    def gate(self) -> GateVerdict | None:
        """The gate's verdict (passed, metric, value, threshold, reasons), once it has run."""
        from medops.pipeline import GateVerdict

        out = self._outputs(Step.GATE)
        if out is None:
            return None
        known = {f.name for f in fields(GateVerdict)}
        return GateVerdict(**{k: v for k, v in out.items() if k in known})

    @property
    def model_version(self) -> str | None:
        """The version the run registered; None if it stopped earlier or failed the gate."""
        out = self._outputs(Step.REGISTER)
        return str(out["version"]) if out and out.get("registered") else None


@dataclass(frozen=True)
class RunMetrics:
    """What a run measured: the test metrics, and every metric logged to its MLflow run."""

    run_id: str
    #: the evaluate step's test metrics (see :attr:`RunResult.metrics`)
    test: dict[str, float]
    #: each metric logged to MLflow as (step, value) pairs; for training curves (train_loss,
    #: val_auc, val_loss, lr...) the step is the epoch
    history: dict[str, list[tuple[int, float]]]

    def last(self, name: str) -> float:
        """The last logged value of ``name`` (e.g. the final epoch's ``val_auc``)."""
        if name not in self.history:
            raise NotFoundError(f"run {self.run_id} logged no metric {name!r}"
                                f"{_did_you_mean(name, self.history)}; it logged "
                                f"{', '.join(sorted(self.history)) or 'none'}")
        return self.history[name][-1][1]


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version as a reviewer sees it."""

    name: str
    version: str
    #: the test metrics it was registered with (test_auc, test_accuracy, ...)
    metrics: dict[str, float]
    tags: dict[str, str]
    aliases: tuple[str, ...]
    #: approved, rejected or pending
    approval: str
    #: whether it is the live champion
    live: bool
    #: the medops run that trained it (`runs show`), and its MLflow run
    run_id: str | None
    mlflow_run_id: str | None
    created_at: datetime

    @classmethod
    def from_status(cls, status: VersionStatus) -> ModelVersion:
        info = status.info
        return cls(name=info.name, version=info.version, metrics=status.metrics,
                   tags=dict(info.tags), aliases=tuple(info.aliases), approval=status.approval,
                   live=status.live, run_id=info.tags.get("medops_run_id"),
                   mlflow_run_id=info.run_id, created_at=info.created_at)


@dataclass(frozen=True)
class Prediction:
    """A model's answer for one file."""

    file: str
    #: the predicted class; for a multi-label model its findings as one text (``A|B``, or
    #: ``No Finding``)
    label: str
    #: one probability per class (or finding) of the model, in the model's order
    probabilities: dict[str, float]
    model: str
    version: str
    #: a multi-label model's positive findings at its stored thresholds (empty otherwise)
    findings: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Mapping[str, Any], classes: Iterable[str], model: str,
                 version: str) -> Prediction:
        """One row of :meth:`medops.serve.Predictor.predict` (``uri``, ``p_<class>``...)."""
        found = row.get("findings")
        return cls(file=str(row["uri"]), label=str(row["label"]),
                   probabilities={c: float(row[f"p_{c}"]) for c in classes},
                   model=model, version=version,
                   findings=tuple(f for f in str(found).split("|") if f) if found else ())


@dataclass(frozen=True)
class ImportResult:
    """What an import added to the project's catalog (no run is started)."""

    source: str
    items: int
    new: int
    changed: int
    quarantined: int
    #: items a network source left out by data.select, by reason
    skipped: dict[str, int]

    @classmethod
    def from_dict(cls, found: Mapping[str, Any]) -> ImportResult:
        return cls(source=str(found["source"]), items=int(found["items"]),
                   new=int(found["new"]), changed=int(found["changed"]),
                   quarantined=int(found["quarantined"]),
                   skipped={str(k): int(v) for k, v in (found.get("skipped") or {}).items()})


# -- opening a project --------------------------------------------------------------------
def open_project(path: str | Path | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Session:
    """The project at ``path`` (default: the current folder or the nearest one above holding
    medops.yaml). ``overrides``: configuration values by dotted key, as ``--set`` takes them
    (``{"train.epochs": 2, "preprocess.size": [64, 64]}``); medops.yaml is not changed."""
    root = None if path is None else Path(path)
    return Session(Project.load(root, dict(overrides or {})))


def init_project(path: str | Path, name: str | None = None, *, force: bool = False,
                 overrides: Mapping[str, Any] | None = None) -> Session:
    """Scaffold a project at ``path`` (a commented medops.yaml and data/raw/, as `medops init`
    does) and open it. ``name`` defaults to the folder's name."""
    Project.init(Path(path), name, force)
    return open_project(path, overrides)


class Session:
    """One project, opened: run its pipeline, read its runs and models, sign off, predict.

    Close it (or use ``with``) to release the state store's connections.
    """

    def __init__(self, project: Project) -> None:
        self.project = project

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.project.close()

    def __repr__(self) -> str:
        return f"Session({self.project.config.project!r} at {self.root})"

    @property
    def root(self) -> Path:
        return self.project.root

    @property
    def config(self) -> MedopsConfig:
        """The configuration in force: medops.yaml with the overrides applied."""
        return self.project.config

    # -- data ------------------------------------------------------------------------------
    def import_data(self, source: str | Path | None = None, *, name: str | None = None,
                    events: str | Path | None = None) -> ImportResult:
        """Add items to the catalog, as `medops data import` does: a MedMNIST .npz file, a
        folder, a source URI (s3://..., an http(s) DICOMweb root, healthimaging://...) or
        ``name``, a source of data.sources; ``events``: HealthImaging EventBridge events."""
        found = import_source(self.project, source, name,
                              None if events is None else Path(events))
        return ImportResult.from_dict(found)

    # -- runs ------------------------------------------------------------------------------
    def run(self, until: Step | str | None = None, *, reporter: Reporter | None = None,
            interrupt: Interrupt | None = None, trigger: str = TRIGGER) -> RunResult:
        """Run the pipeline now; stop after ``until`` (e.g. ``"evaluate"``) when given.

        ``reporter`` receives progress (default: none); ``interrupt`` is a stop request a
        signal handler may set. A step that fails after its retries raises
        :class:`medops.errors.StepFailedError`; the run stays recorded as failed and
        :meth:`resume` continues it. A gate that fails is no error: the run succeeds
        without registering (:attr:`RunResult.gate` says why)."""
        from medops.pipeline import PipelineRunner

        step = None if until is None else _step(until)
        runner = PipelineRunner(self.project, reporter, interrupt)
        return RunResult.from_record(runner.run(trigger, step))

    def resume(self, run_id: str, until: Step | str | None = None, *,
               reporter: Reporter | None = None,
               interrupt: Interrupt | None = None) -> RunResult:
        """Continue an interrupted or failed run from its first unfinished step."""
        from medops.pipeline import PipelineRunner

        step = None if until is None else _step(until)
        runner = PipelineRunner(self.project, reporter, interrupt)
        return RunResult.from_record(runner.resume(run_id, step))

    def run_step(self, step: Step | str, run_id: str, *, trigger: str = TRIGGER,
                 reporter: Reporter | None = None,
                 interrupt: Interrupt | None = None) -> RunResult:
        """Run one step of ``run_id``, as an orchestrator's task does: the first step creates
        the run, a later one continues it; a step already finished is not done again. One
        attempt: a failure raises :class:`medops.errors.StepFailedError` and the caller
        retries."""
        from medops.pipeline import PipelineRunner

        runner = PipelineRunner(self.project, reporter, interrupt)
        return RunResult.from_record(runner.run_step(run_id, _step(step), trigger))

    def _reap(self) -> None:
        """Runs whose holder died become interrupted before they are shown."""
        from medops.registry.runs import reap_dead_runs  # MLflow loads only when needed

        reap_dead_runs(self.project)

    def runs(self, limit: int = 20) -> list[RunResult]:
        """The most recent runs, newest first."""
        self._reap()
        return [RunResult.from_record(r) for r in self.project.state.list_runs(limit)]

    def get_run(self, run_id: str) -> RunResult:
        """One run, by its id or the start of it (:class:`NotFoundError` if none or several
        match)."""
        self._reap()
        return RunResult.from_record(self.project.state.get_run(run_id))

    def metrics(self, run_id: str) -> RunMetrics:
        """The test metrics and the MLflow metric history (training curves) of a run."""
        run = self.get_run(run_id)
        history = self.project.tracker.metric_history(run.mlflow_run_id) \
            if run.mlflow_run_id else {}
        return RunMetrics(run_id=run.id, test=run.metrics, history=history)

    # -- registered models -----------------------------------------------------------------
    def registry(self, name: str | None = None, *, check: bool = True) -> ModelRegistry:
        """The versions of the registered model ``name`` (default: the project's model);
        ``check``: raise :class:`NotFoundError` naming the registered models if there is no
        model ``name`` (the project's own model has no versions before its first run)."""
        if name is None or name == self.config.model_name:
            return self.project.registry
        from medops.registry import ModelRegistry

        registry = ModelRegistry(self.project.tracker.client, name,
                                 self.project.artifacts / "models")
        if check:
            registry.check_exists()
        return registry

    def lifecycle(self, name: str | None = None) -> ModelLifecycle:
        """Sign-off (approve, reject, roll back, history) of the model ``name``."""
        from medops.registry import ModelLifecycle

        return ModelLifecycle(self.registry(name), self.project.state)

    def model_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every registered version, newest first."""
        return [ModelVersion.from_status(v) for v in self.lifecycle(name).versions()]

    def model_version(self, version: str | int | None = None, *, alias: str | None = None,
                      name: str | None = None) -> ModelVersion:
        """One registered version: ``version``, or the one ``alias`` (``"champion"``,
        ``"candidate"``) points at, or else the newest."""
        lifecycle = self.lifecycle(name)
        versions = lifecycle.versions()
        if version is not None:
            wanted = lifecycle.registry.get(str(version)).version  # NotFoundError naming it
            found = next((v for v in versions if v.info.version == wanted), None)
        elif alias is not None:
            found = next((v for v in versions if alias in v.info.aliases), None)
        else:
            found = versions[0] if versions else None
        if found is None:
            what = f"@{alias}" if alias else ""
            raise NotFoundError(
                f"no version of {lifecycle.name}{what} is registered"
                + ("" if versions else "; a run registers one when its model passes the gate"))
        return ModelVersion.from_status(found)

    def approve(self, version: str | int, *, by: str, note: str,
                name: str | None = None) -> ModelVersion:
        """Make ``version`` the live champion; who (``by``) and why (``note``) go to the audit
        log, as with `medops models approve`."""
        self.lifecycle(name).approve(str(version), by, note)
        return self.model_version(version, name=name)

    def fetch_weights(self, source: str, sha256: str | None = None,
                      name: str | None = None) -> Path:
        """Put pretrained weights (a URL pinned by ``sha256``, or a local file) into the
        project's content-addressed store; the stored file (`medops models fetch`)."""
        return self.project.weights_store.fetch(source, sha256, name=name)

    def import_model(self, source: str, *, name: str | None = None, by: str | None = None,
                     note: str | None = None) -> ImportedModel:
        """Register a pretrained model (``txv:NAME``) as a new version without training
        (`medops models import`); approved at once when ``by`` and ``note`` are given."""
        from medops.registry.pretrained import Approval, import_pretrained

        if (by is None) != (note is None):
            raise ConfigError("approving an imported model needs both by (who) and note (why)")
        return import_pretrained(source, store=self.project.weights_store,
                                 tracker=self.project.tracker, registry=self.registry(name,
                                                                                       check=False),
                                 state=self.project.state,
                                 approve=Approval(by, note) if by and note else None)

    # -- predictions -----------------------------------------------------------------------
    def predictor(self, model: str | None = None, batch_size: int = 32) -> Predictor:
        """The model ``model`` loaded for predictions: ``NAME@ALIAS``, ``NAME/VERSION`` (default:
        the project's model @champion)."""
        from medops.serve.batch import ModelRef, Predictor

        ref = ModelRef.parse(model, self.config.model_name)
        # a missing model or alias: the predictor's error names the reference and the fix
        return Predictor.from_registry(self.registry(ref.name, check=False), ref, batch_size)

    def predict(self, files: Iterable[str | Path], *, model: str | None = None,
                batch_size: int = 32, endpoint_url: str | None = None) -> list[Prediction]:
        """Predict DICOM, PNG or JPEG files (paths or ``s3://`` URIs), one answer per file in
        order, with the live champion unless ``model`` names another (``NAME/VERSION``,
        ``NAME@ALIAS``). A file that cannot be read or decoded raises
        :class:`medops.errors.DataError` naming it and why."""
        from medops.serve.batch import Files

        uris = [str(f) if str(f).startswith("s3://") else str(Path(f).resolve())
                for f in files]
        predictor = self.predictor(model, batch_size)
        rows = predictor.predict(uris, Files(endpoint_url))
        failed = rows[rows["error"].notna()]
        if len(failed):
            raise DataError(f"cannot predict {len(failed)} of {len(rows)} file(s): " + "; ".join(
                f"{u}: {e}" for u, e in zip(failed["uri"], failed["error"], strict=True)))
        return [Prediction.from_row(row, predictor.model.classes, predictor.name,
                                    predictor.version)
                for row in rows.to_dict(orient="records")]


def _step(value: Step | str) -> Step:
    if isinstance(value, Step):
        return value
    try:
        return Step(str(value).strip().lower())
    except ValueError:
        names = [s.value for s in Step]
        raise ConfigError(f"no pipeline step {value!r}{_did_you_mean(str(value), names)}; the "
                          f"steps are {', '.join(names)}") from None


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
