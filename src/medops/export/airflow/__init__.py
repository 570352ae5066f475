"""`medops export airflow`: the project's pipeline and batch inference as Airflow 3 DAGs.

One Python file (:mod:`.render` writes it) holds two DAGs written with the ``airflow.sdk`` API:

- ``medops_<project>``: one task per pipeline step, in order, each ``medops run --only STEP
  --run-id ID`` (the Airflow run's id made safe), retried as ``pipeline.retries`` says and
  scheduled by the project's ``schedule`` trigger; its register task updates an Asset that
  stands for the registered model;
- ``medops_<project>_batch``: scheduled on that Asset, ``medops batch-predict`` on the
  configured executor (Spark preprocesses and predicts in one pass where ``executor.kind`` is
  spark).

The tasks run medops on the Airflow worker (``bash``) or in the project's training image
(``docker``, ``kubernetes``). The file needs Airflow and its providers, not medops; this module
needs neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from medops.config import MedopsConfig
from medops.config.agent import ScheduleTrigger
from medops.config.enums import StrEnum
from medops.errors import ConfigError
from medops.export.airflow.render import DagSpec, render_dags

#: Where the training image (``medops init --ci github``) keeps the project
IMAGE_PROJECT_DIR = "/opt/medops/project"


class Operator(StrEnum):
    """How a task runs medops."""

    BASH = "bash"  # the medops command on the Airflow worker
    DOCKER = "docker"  # the training image, by the worker's Docker daemon
    KUBERNETES = "kubernetes"  # the training image, in a pod


@dataclass(frozen=True)
class AirflowOptions:
    """What the command line adds to medops.yaml (None: a default from the project)."""

    operator: Operator = Operator.BASH
    image: str | None = None  # docker, kubernetes: the training image
    medops: str = "medops"  # bash: the medops command on the worker
    project_dir: str | None = None  # the project on the worker or in the image
    batch_input: str | None = None  # what batch inference predicts (default: data/incoming)
    batch_output: str | None = None  # where its tables go; one folder per DAG run under it
    namespace: str = "default"  # kubernetes


@dataclass(frozen=True)
class AirflowExport:
    """What `medops export airflow` wrote."""

    file: Path
    dag_ids: tuple[str, str]  # the pipeline's, batch inference's
    asset_uri: str


def dag_id(project: str) -> str:
    """The pipeline DAG's id: ``medops_`` and the project name, other characters as '_'."""
    return "medops_" + re.sub(r"[^A-Za-z0-9_]", "_", project)


def model_asset_uri(config: MedopsConfig) -> str:
    """The Asset a registered version of the project's model updates."""
    return f"medops://{config.project}/models/{config.model_name}"


def schedule_of(config: MedopsConfig) -> str | timedelta | None:
    """The pipeline DAG's schedule: the cron expression or interval of the project's schedule
    trigger; None without one (the DAG then runs when triggered)."""
    found = [t for t in config.triggers if isinstance(t, ScheduleTrigger)]
    if len(found) > 1:
        names = ", ".join(t.key for t in found)
        raise ConfigError(f"triggers has {len(found)} schedule triggers ({names}); an Airflow "
                          "DAG has one schedule: fix: keep one in medops.yaml before exporting")
    if not found:
        return None
    trigger = found[0]
    if trigger.every is not None:
        return timedelta(seconds=trigger.every)
    assert trigger.cron is not None
    if len(trigger.cron.split()) != 5:
        raise ConfigError(f"schedule trigger cron {trigger.cron!r} has a seconds field, which "
                          "Airflow's cron schedules do not take; fix: use 5 fields")
    return trigger.cron


def export_airflow(config: MedopsConfig, root: Path, out: Path,
                   options: AirflowOptions | None = None, force: bool = False) -> AirflowExport:
    """Write the DAG file of the project at ``root`` into the folder ``out`` (an Airflow
    deployment's dags folder). An existing file is only replaced with ``force``."""
    opts = options or AirflowOptions()
    image = opts.operator is not Operator.BASH
    if image and not opts.image:
        raise ConfigError(f"--operator {opts.operator.value} runs each task in the training "
                          "image: fix: name it with --image REGISTRY/NAME:TAG")
    if not image and opts.image:
        raise ConfigError("--image is for --operator docker or kubernetes; the bash operator "
                          "runs the medops command on the worker (--medops PATH)")
    project_dir = opts.project_dir or (IMAGE_PROJECT_DIR if image else str(root.resolve()))
    batch_input = opts.batch_input or str(Path(project_dir) / "data" / "incoming")
    batch_output = opts.batch_output or str(Path(project_dir) / "predictions")
    retries = config.pipeline.retries
    spec = DagSpec(
        project=config.project, dag_id=dag_id(config.project),
        operator=opts.operator.value, image=opts.image, namespace=opts.namespace,
        medops=None if image else opts.medops, project_dir=project_dir,
        retries=retries.attempts - 1, retry_delay=retries.backoff_seconds,
        schedule=schedule_of(config), asset_uri=model_asset_uri(config),
        model_name=config.model_name, executor=config.executor.kind.value,
        batch_input=batch_input, batch_output=batch_output,
        regenerate=_regenerate(root, out, opts))
    target = out / f"{spec.dag_id}.py"
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists; use --force to write it again")
    try:
        out.mkdir(parents=True, exist_ok=True)
        target.write_text(render_dags(spec))
    except OSError as exc:
        raise ConfigError(f"cannot write the DAG file into {out}: {exc.strerror or exc}") \
            from None
    return AirflowExport(target, (spec.dag_id, spec.batch_dag_id), spec.asset_uri)


def _regenerate(root: Path, out: Path, opts: AirflowOptions) -> str:
    import shlex

    args = ["medops", "export", "airflow", "--out", str(out), "--operator", opts.operator.value]
    medops = opts.medops if opts.operator is Operator.BASH else None
    for flag, value, default in (("--image", opts.image, None), ("--medops", medops, "medops"),
                                 ("--project-dir", opts.project_dir, None),
                                 ("--batch-input", opts.batch_input, None),
                                 ("--batch-output", opts.batch_output, None),
                                 ("--namespace", opts.namespace, "default")):
        if value is not None and value != default:
            args += [flag, value]
    return shlex.join([*args, "--force", "-C", str(root)])


__all__ = [
    "AirflowExport",
    "AirflowOptions",
    "Operator",
    "dag_id",
    "export_airflow",
    "model_asset_uri",
    "schedule_of",
]
