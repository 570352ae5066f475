"""The typed model of medops.yaml. Loading validates it; nothing downstream sees a raw dict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from medops.config.agent import AgentConfig, NotifyConfig, Triggers, default_triggers
from medops.config.card import ModelCardConfig
from medops.config.enums import (
    Approval,
    Architecture,
    Device,
    ExecutorKind,
    FrameMode,
    GateMetric,
    GroupBy,
    LabelsFrom,
    Normalize,
    SourceKind,
    Task,
    WindowMode,
)
from medops.config.ingest import DeidConfig, SelectConfig
from medops.config.models import check_architecture, check_sha256, is_url
from medops.config.monitor import MonitorConfig
from medops.config.server import ServerConfig
from medops.config.sources import RemoteSourceConfig
from medops.config.uris import check_artifacts_uri, check_state_uri, check_tracking_uri


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in medops.yaml must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False, frozen=True)


class LabelsConfig(_Strict):
    """Where labels come from. With ``task: multilabel`` the CSV gives findings: either
    ``label_column`` holds them joined by ``|`` (NIH ChestX-ray14's ``Finding Labels``, with
    ``No Finding`` for none), or ``finding_columns`` lists one 0/1 column per finding (``auto``:
    every column but the id and patient ones whose values are all 0, 1 or blank)."""

    from_: LabelsFrom = Field(LabelsFrom.FOLDER_NAMES, alias="from")
    csv: str | None = None
    id_column: str = "path"  # the CSV column naming the file, relative to the source path
    label_column: str = "label"
    patient_column: str | None = None
    finding_columns: list[str] | Literal["auto"] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _csv_needs_file(self) -> LabelsConfig:
        if self.from_ is LabelsFrom.CSV and not self.csv:
            raise ValueError("labels.from is 'csv' but labels.csv (the CSV file) is not set")
        return self

    @model_validator(mode="after")
    def _finding_columns(self) -> LabelsConfig:
        cols = self.finding_columns
        if cols is None:
            return self
        if self.from_ is not LabelsFrom.CSV:
            raise ValueError(f"labels.finding_columns is set but labels.from is "
                             f"{self.from_.value!r}; finding columns are read from a CSV (fix: "
                             "labels.from: csv and labels.csv: FILE)")
        if "label_column" in self.model_fields_set:
            raise ValueError(f"labels.label_column ({self.label_column!r}) and "
                             "labels.finding_columns are both set; findings come from one "
                             "0/1 column each or from one column of '|'-separated findings: "
                             "keep one of them")
        if cols == "auto":
            return self
        if not cols:
            raise ValueError("labels.finding_columns is empty; list the 0/1 columns, or "
                             "write 'auto'")
        dupes = sorted({c for c in cols if cols.count(c) > 1})
        taken = [c for c in cols if c in (self.id_column, self.patient_column)]
        bad = [c for c in cols if "|" in c or c.strip() in ("", "No Finding")]
        if dupes or taken or bad:
            raise ValueError(
                f"labels.finding_columns {cols}: "
                + "; ".join(msg for msg in (
                    f"{dupes} listed twice" if dupes else "",
                    f"{taken} is the id or patient column" if taken else "",
                    f"{bad} cannot name a finding (no '|', not empty, not 'No Finding')"
                    if bad else "") if msg))
        return self


class SourceConfig(_Strict):
    kind: SourceKind = SourceKind.FOLDER
    path: str = "data/raw"


class SplitConfig(_Strict):
    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.2, ge=0.0, lt=1.0)
    group_by: GroupBy = GroupBy.PATIENT
    seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError(f"split.val + split.test must be < 1 (got {self.val} + {self.test})")
        return self


class DataConfig(_Strict):
    source: SourceConfig | None = SourceConfig()
    sources: dict[str, RemoteSourceConfig] = Field(default_factory=dict)  # by name
    labels: LabelsConfig = LabelsConfig()
    frames: FrameMode = FrameMode.MIDDLE
    select: SelectConfig = SelectConfig()
    deid: DeidConfig = DeidConfig()
    split: SplitConfig = SplitConfig()
    min_items_per_class: int = Field(2, ge=1)


class PreprocessConfig(_Strict):
    """``auto`` values are resolved from the data at the preprocess step; the resolved,
    concrete profile is what is stored with the model."""

    size: tuple[int, int] | Literal["auto"] = "auto"  # median image side, at most max_auto_size
    max_auto_size: int = Field(128, ge=8, le=1024)
    channels: Literal[1, 3, "auto"] = "auto"  # 3 when most images are colour, else 1
    window: WindowMode = WindowMode.AUTO
    normalize: Normalize = Normalize.ZSCORE

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int] | str) -> tuple[int, int] | str:
        if isinstance(v, tuple) and (min(v) < 8 or max(v) > 4096):
            raise ValueError(f"each side must be between 8 and 4096 pixels (got {list(v)})")
        return v


class ModelConfig(_Strict):
    """The network. ``architecture`` is a built-in torchvision name, ``txv:WEIGHTS`` (a
    TorchXRayVision model), or an entry point ``package.module:factory`` /
    ``path/in/project.py:factory`` called with ``in_channels``, ``num_classes`` and ``args``
    (docs/models.md)."""

    architecture: Annotated[str, AfterValidator(check_architecture)] = Architecture.RESNET18.value
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of an entry point
    pretrained: bool = False
    # a local weights file, or an http(s) URL pinned by weights_sha256 (`medops models fetch`)
    weights: str | None = None
    weights_sha256: Annotated[str | None, AfterValidator(check_sha256)] = None
    small_input: bool | Literal["auto"] = "auto"  # a stride-1 stem for images under 64 px
    # average each prediction with that of the mirrored image; auto: when training flips
    flip_tta: bool | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _url_needs_hash(self) -> ModelConfig:
        if self.weights and is_url(self.weights) and not self.weights_sha256:
            raise ValueError(
                f"model.weights is the URL {self.weights!r} but model.weights_sha256 is not set; "
                "a downloaded file is only used when pinned by its SHA-256 (fix: set "
                "model.weights_sha256: <64 hex digits>, or fetch it once with `medops models "
                "fetch URL --sha256 HEX`)")
        return self


class AugmentConfig(_Strict):
    hflip: bool = True
    vflip: bool = False
    rotate_degrees: float = Field(10.0, ge=0.0, le=180.0)
    translate: float = Field(0.05, ge=0.0, le=0.5)  # fraction of the side
    scale: tuple[float, float] = (0.9, 1.1)
    intensity: float = Field(0.1, ge=0.0, le=1.0)  # random contrast/brightness jitter
    mixup: float = Field(0.2, ge=0.0)  # mixup's Beta(a, a) parameter; 0: off


class TrainConfig(_Strict):
    epochs: int = Field(24, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    patience: int = Field(8, ge=1)  # epochs in which none joins the average_best best: stop
    device: Device = Device.AUTO
    seed: int = 0
    class_weighting: bool = True
    augment: AugmentConfig | None = AugmentConfig()
    # EMA of the weights over about this many epochs is what is validated and kept; None: off
    ema_epochs: float | None = Field(1.0, gt=0.0)
    # the returned weights average those of this many best-validated epochs (at most epochs // 4;
    # 1: the best alone)
    average_best: int = Field(5, ge=1, le=20)
    # recompute the batch-norm statistics of the returned (averaged) weights on the training set
    recalibrate_bn: bool = True
    num_threads: int | None = None  # torch CPU threads; None leaves torch's default
    # distributed data parallel over this many local processes (gloo on CPU, NCCL on GPUs)
    processes: int = Field(1, ge=1, le=64)


class GateConfig(_Strict):
    """``metric >= min`` (and above the champion's on the same test split). For a multi-label
    model ``auc`` is the macro AUC over findings (as ``macro_auc``); ``finding`` gates on that
    one finding's AUC instead (``metric`` stays ``auc``)."""

    metric: GateMetric = GateMetric.AUC
    min: float = Field(0.75, ge=0.0, le=1.0)
    must_beat_champion: bool = True
    finding: str | None = None

    @model_validator(mode="after")
    def _finding_needs_auc(self) -> GateConfig:
        if self.finding is not None:
            if not self.finding.strip():
                raise ValueError("gate.finding is empty; name a finding, or remove the key to "
                                 "gate on the macro AUC")
            if self.metric is not GateMetric.AUC:
                raise ValueError(f"gate.finding ({self.finding!r}) gates on that finding's AUC, "
                                 f"but gate.metric is {self.metric.value!r}; fix: gate.metric: "
                                 "auc, or remove gate.finding")
        return self


class RegistryConfig(_Strict):
    name: str | None = None  # registered model name; defaults to "<project>-classifier"
    approval: Approval = Approval.MANUAL
    card: ModelCardConfig = ModelCardConfig()  # what people say in the model card


class StorageConfig(_Strict):
    """Every location is a URI; relative paths resolve against the project folder. None holds a
    password: each client reads its own from the environment (docs/storage.md)."""

    state: Annotated[str, AfterValidator(check_state_uri)] = "sqlite:///.medops/medops.db"
    tracking: Annotated[str, AfterValidator(check_tracking_uri)] = "sqlite:///.medops/mlflow.db"
    # a path, or s3://bucket/prefix (then .medops/artifacts-cache is the local working copy)
    artifacts: Annotated[str, AfterValidator(check_artifacts_uri)] = ".medops/artifacts"


class ExecutorConfig(_Strict):
    """Where map work (validation decode, preprocessing, batch inference) runs."""

    kind: ExecutorKind = ExecutorKind.LOCAL
    workers: int | None = None  # None: one per CPU core (local); Spark: its default parallelism
    # kind spark: "local[*]", "spark://host:7077", "yarn" or "k8s://https://host:443"
    master: str = "local[*]"
    # Spark properties, e.g. spark.executor.memory: 2g
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _spark_strings(cls, value: Any) -> Any:
        """Spark properties are strings; YAML reads ``spark.executor.cores: 4`` as a number and
        ``...enabled: true`` as a boolean, which Spark spells ``true``."""
        if not isinstance(value, dict):
            return value
        return {k: (str(v).lower() if isinstance(v, bool) else
                    str(v) if isinstance(v, int | float) else v) for k, v in value.items()}


class RetryConfig(_Strict):
    attempts: int = Field(2, ge=1)  # total attempts per step, first included
    backoff_seconds: float = Field(1.0, ge=0.0)


class PipelineConfig(_Strict):
    retries: RetryConfig = RetryConfig()
    # seconds between a running run's heartbeats in the state store; after 3 missed beats any
    # agent or `medops runs ls`, on any machine, takes the run for dead (interrupted)
    heartbeat: float = Field(5.0, gt=0.0)


class ServeConfig(_Strict):
    """`medops serve`: the real-time endpoint (SageMaker-compatible on port 8080)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    model: str | None = None  # NAME@alias or NAME/VERSION; default "<registry name>@champion"
    max_batch: int = Field(32, ge=1, le=1024)  # images per forward pass
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000.0)  # wait for a batch to fill
    # forward passes at once, each on its own batch and torch threads; None: one per core (<= 4)
    workers: int | None = Field(None, ge=1, le=64)
    poll_seconds: float = Field(10.0, gt=0.0)  # how often the alias is checked for a new version
    token_env: str | None = None  # env var holding the bearer token; None: no auth
    max_body_mb: float = Field(32.0, gt=0.0)
    max_image_pixels: int = Field(50_000_000, ge=1)  # rows x cols x frames, checked pre-decode
    capture: bool = True  # append predictions to the capture store for monitoring


PROJECT_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class MedopsConfig(_Strict):
    project: Annotated[str, Field(pattern=PROJECT_NAME)]
    task: Task = Task.MULTICLASS  # multilabel: any set of findings per image
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    storage: StorageConfig = StorageConfig()
    executor: ExecutorConfig = ExecutorConfig()
    pipeline: PipelineConfig = PipelineConfig()
    triggers: Triggers = Field(default_factory=default_triggers)  # see config/agent.py
    agent: AgentConfig = AgentConfig()
    notify: NotifyConfig = NotifyConfig()
    serve: ServeConfig = ServeConfig()
    monitor: MonitorConfig = MonitorConfig()  # see config/monitor.py
    server: ServerConfig = ServerConfig()  # the team server; see config/server.py

    @property
    def model_name(self) -> str:
        return self.registry.name or f"{self.project}-classifier"

    @model_validator(mode="after")
    def _labels_fit_task(self) -> MedopsConfig:
        if self.data.labels.finding_columns is not None and self.task is not Task.MULTILABEL:
            raise ValueError(
                f"data.labels.finding_columns gives each image a set of findings, but task is "
                f"{self.task.value!r} (one class per image); fix: set task: multilabel, or "
                "drop finding_columns and name the class column in data.labels.label_column")
        return self

    @model_validator(mode="after")
    def _gate_fits_task(self) -> MedopsConfig:
        metric = self.gate.metric
        if self.task is Task.MULTILABEL:
            if metric in (GateMetric.ACCURACY, GateMetric.BALANCED_ACCURACY):
                raise ValueError(
                    f"gate.metric {metric.value!r} is a multiclass metric, but task is "
                    "'multilabel'; fix: gate.metric: auc (the macro AUC over findings), "
                    "micro_auc or f1_macro, or gate.finding: NAME for one finding's AUC")
            return self
        if metric in (GateMetric.MACRO_AUC, GateMetric.MICRO_AUC) or self.gate.finding:
            what = f"gate.finding ({self.gate.finding!r})" if self.gate.finding \
                else f"gate.metric {metric.value!r}"
            raise ValueError(
                f"{what} is for task: multilabel, but task is {self.task.value!r}; fix: "
                "gate.metric: auc (for several classes already the macro one-vs-rest AUC)"
                + (", and remove gate.finding" if self.gate.finding else "")
                + ", or set task: multilabel")
        return self


def resolve_path(root: Path, value: str) -> Path:
    """A config path made absolute against the project root."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (root / p)
