"""`medops export ...`: deployable files from medops.yaml; and the CI part of `medops init`."""

from __future__ import annotations

from pathlib import Path

import typer

from medops.cli.common import JsonOpt, ProjectOpt, handle_errors, load_project
from medops.cli.render import console, print_json

export_app = typer.Typer(help="Deployable files: the AWS stack, Airflow DAGs.",
                         no_args_is_help=True)


@export_app.command("aws")
@handle_errors
def aws(out: Path = typer.Option(..., "--out", help="Folder to write the CDK app into."),
        datastore_id: str | None = typer.Option(
            None, help="HealthImaging datastore (default: the healthimaging source of "
                       "data.sources; none: no HealthImaging rules)."),
        raw_uri: str | None = typer.Option(
            None, help="s3://BUCKET/PREFIX/ where new images arrive (default: the s3 source of "
                       "data.sources, else a new bucket and incoming/)."),
        instance_type: str = typer.Option("ml.m5.xlarge", help="Serving instance type."),
        min_instances: int = typer.Option(1, min=1, help="Fewest serving instances."),
        max_instances: int = typer.Option(5, min=1, help="Most serving instances."),
        training_instance_type: str = typer.Option(
            "ml.g4dn.xlarge", help="Instance type of the SageMaker pipeline's training step."),
        image_tag: str | None = typer.Option(
            None, help="Tag of the pushed images: adds the endpoint and the training pipeline "
                       "(CI passes -c medops:image_tag=COMMIT instead)."),
        mlflow_uri: str | None = typer.Option(
            None, help="MLflow server the containers use (default: storage.tracking when it "
                       "is http(s))."),
        github_repository: str | None = typer.Option(
            None, help="OWNER/NAME: a role its main branch assumes through OIDC."),
        alarm_email: str | None = typer.Option(None, help="Who gets the endpoint's alarms."),
        force: bool = typer.Option(False, help="Write over an app already in --out."),
        project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Write the project's AWS stack as a CDK app (docs/deploy.md).

    Buckets, the event queue and its rules, least-privilege roles, and, once images are
    pushed (--image-tag), the SageMaker endpoint and training pipeline.

    Example: medops export aws --out infra/aws && cd infra/aws && cdk deploy
    """
    from medops.export import AwsOptions, export_aws

    options = AwsOptions(datastore_id=datastore_id, raw_uri=raw_uri,
                         serving_instance_type=instance_type, min_instances=min_instances,
                         max_instances=max_instances,
                         training_instance_type=training_instance_type, image_tag=image_tag,
                         mlflow_uri=mlflow_uri, github_repository=github_repository,
                         alarm_email=alarm_email)
    done = export_aws(load_project(project).config, out, options, force)
    if json_out:
        print_json({"folder": str(done.folder), "stack": done.stack_name,
                    "context": done.context, "files": [str(f) for f in done.files]})
        return
    console.print(f"wrote the CDK app of stack {done.stack_name} into {done.folder}\n"
                  f"next: cd {done.folder} && pip install -r requirements.txt && "
                  "cdk bootstrap && cdk deploy (docs/deploy.md)", highlight=False)


@export_app.command("airflow")
@handle_errors
def airflow(out: Path = typer.Option(..., "--out", help="Folder to write the DAG file into "
                                     "(an Airflow deployment's dags folder)."),
            operator: str = typer.Option("bash", "--operator", help="How tasks run medops: "
                                         "bash (on the worker), docker or kubernetes (in the "
                                         "training image)."),
            image: str | None = typer.Option(None, help="The training image (docker, "
                                             "kubernetes)."),
            medops: str | None = typer.Option(None, "--medops", help="The medops command on "
                                              "the worker (bash; default: this one)."),
            project_dir: str | None = typer.Option(
                None, help="The project as the tasks see it (default: this project's folder; "
                           "/opt/medops/project in the image)."),
            batch_input: str | None = typer.Option(
                None, help="What batch inference predicts: a folder, manifest or s3:// prefix "
                           "(default: PROJECT/data/incoming)."),
            batch_output: str | None = typer.Option(
                None, help="Where its tables go, one folder per DAG run (default: "
                           "PROJECT/predictions)."),
            namespace: str = typer.Option("default", help="Kubernetes namespace of the pods."),
            force: bool = typer.Option(False, help="Write over a DAG file already in --out."),
            project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Write the project's pipeline and batch inference as Airflow 3 DAGs (docs/airflow.md).

    One task per step, each `medops run --only STEP` on one medops run per DAG run; the
    register task updates the model's asset, which schedules batch inference.

    Example: medops export airflow --out $AIRFLOW_HOME/dags --operator docker --image REPO:TAG
    """
    from medops.export import AirflowOptions, Operator, export_airflow

    try:
        chosen = Operator(operator)
    except ValueError:
        raise typer.BadParameter(f"{operator!r}: known: "
                                 + ", ".join(o.value for o in Operator),
                                 param_hint="--operator") from None
    proj = load_project(project)
    on_worker = chosen is Operator.BASH
    options = AirflowOptions(operator=chosen, image=image,
                             medops=medops or (_this_medops() if on_worker else "medops"),
                             project_dir=project_dir, batch_input=batch_input,
                             batch_output=batch_output, namespace=namespace)
    done = export_airflow(proj.config, proj.root, out, options, force)
    if json_out:
        print_json({"file": str(done.file), "dags": list(done.dag_ids),
                    "asset": done.asset_uri})
        return
    console.print(f"wrote DAGs {done.dag_ids[0]} and {done.dag_ids[1]} into {done.file}\n"
                  f"next: airflow dags test {done.dag_ids[0]} (docs/airflow.md)",
                  highlight=False)


def _this_medops() -> str:
    """The medops command of this installation, where it can be found; else medops on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "medops"
    return str(beside) if beside.is_file() else shutil.which("medops") or "medops"


def init_ci(directory: Path, provider: str, force: bool) -> None:
    """The `--ci` part of `medops init`: the workflow and what it builds on."""
    from medops.export import CiProvider, write_ci

    try:
        chosen = CiProvider(provider)
    except ValueError:
        raise typer.BadParameter(f"{provider!r}: known: "
                                 + ", ".join(p.value for p in CiProvider), param_hint="--ci") \
            from None
    proj = load_project(directory)
    done = write_ci(proj.root, proj.config, chosen, force)
    for path in done.written:
        console.print(f"created {path}", highlight=False)
    for path in done.kept:
        console.print(f"kept {path} (there already; --force writes it again)", highlight=False)
    console.print("next: put a small labelled sample in tests/data/sample/<label>/, set the "
                  "secret AWS_ROLE_ARN and the variable AWS_REGION in GitHub (docs/deploy.md)",
                  highlight=False)
