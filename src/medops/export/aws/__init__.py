"""`medops export aws`: the project's AWS stack as a CDK app, its parameters from medops.yaml.

The app itself is package data (``app/``: ``app.py``, the package ``medops_stack/``,
``requirements.txt``, ``README.md``) copied as it is; what differs between projects is
cdk.json's context, the ``medops:`` keys this module fills from the configuration and the
command's options. The stack checks those keys again when it is synthesized, since a platform
engineer may edit them.

The app needs aws-cdk-lib, not medops; this module needs neither.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from medops.config import MedopsConfig
from medops.config.sources import HealthImagingSourceConfig, S3SourceConfig
from medops.errors import ConfigError

APP_FILES = ("app.py", "requirements.txt", "README.md", "medops_stack/__init__.py",
             "medops_stack/params.py", "medops_stack/stack.py", "medops_stack/sagemaker.py")
CONTEXT_PREFIX = "medops:"
_DATASTORE = r"[0-9a-z]{32}"
_INSTANCE = r"ml\.[a-z0-9]+\.[a-z0-9]+"
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_GITHUB_REPO = r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+"


@dataclass(frozen=True)
class AwsOptions:
    """What the command line adds to, or overrides in, medops.yaml (None: from medops.yaml)."""

    datastore_id: str | None = None
    raw_uri: str | None = None  # s3://BUCKET/PREFIX/ new images arrive under
    serving_instance_type: str = "ml.m5.xlarge"
    min_instances: int = 1
    max_instances: int = 5
    training_instance_type: str = "ml.g4dn.xlarge"
    image_tag: str | None = None
    mlflow_uri: str | None = None
    github_repository: str | None = None
    alarm_email: str | None = None


@dataclass(frozen=True)
class AwsExport:
    """What `medops export aws` wrote."""

    folder: Path
    stack_name: str
    context: dict[str, Any]  # the medops: keys of cdk.json
    files: tuple[Path, ...]


def stack_name(project: str) -> str:
    """The CloudFormation stack (and endpoint, repository prefix) name of a project:
    ``medops-`` and the project name, '.' and '_' as '-', at most 40 characters."""
    name = "medops-" + re.sub(r"[^a-z0-9-]", "-", project.lower())
    return re.sub(r"-+", "-", name[:40]).rstrip("-")


def stack_context(config: MedopsConfig, options: AwsOptions) -> dict[str, Any]:
    """The ``medops:`` context keys of cdk.json for this project; ConfigError names the value
    that cannot work and how to give another."""
    bucket, prefix = _raw_location(config, options.raw_uri)
    datastore = options.datastore_id or _datastore(config)
    tracking = options.mlflow_uri or (config.storage.tracking
                                      if config.storage.tracking.startswith(("http://", "https://"))
                                      else None)
    _check(options, datastore, tracking)
    values: dict[str, Any] = {
        "project": config.project,
        "stack_name": stack_name(config.project),
        "model_name": config.model_name,
        "datastore_id": datastore,
        "raw_bucket_name": bucket,
        "raw_prefix": prefix,
        "serving_instance_type": options.serving_instance_type,
        "min_instances": options.min_instances,
        "max_instances": options.max_instances,
        "training_instance_type": options.training_instance_type,
        "image_tag": options.image_tag,
        "mlflow_tracking_uri": tracking,
        "github_repository": options.github_repository,
        "alarm_email": options.alarm_email,
    }
    return {CONTEXT_PREFIX + k: v for k, v in values.items()}


def export_aws(config: MedopsConfig, out: Path, options: AwsOptions | None = None,
               force: bool = False) -> AwsExport:
    """Write the CDK app for ``config`` into ``out``: the app's files and a cdk.json holding
    its parameters. An existing cdk.json is only replaced with ``force``."""
    context = stack_context(config, options or AwsOptions())
    cdk_json = out / "cdk.json"
    if cdk_json.exists() and not force:
        raise ConfigError(f"{cdk_json} already exists; use --force to write the app again "
                          "(its parameters are replaced by those of medops.yaml)")
    source = files(__name__).joinpath("app")
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in APP_FILES:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            packaged = source
            for part in name.split("/"):
                packaged = packaged.joinpath(part)
            with packaged.open("rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            written.append(target)
        cdk_json.write_text(json.dumps(_cdk_json(context), indent=2) + "\n")
        written.append(cdk_json)
    except OSError as exc:
        raise ConfigError(f"cannot write the CDK app into {out}: {exc.strerror or exc}") \
            from None
    return AwsExport(out, context[CONTEXT_PREFIX + "stack_name"], context, tuple(written))


def _cdk_json(context: dict[str, Any]) -> dict[str, Any]:
    return {
        "app": "python3 app.py",
        "watch": {"include": ["**"], "exclude": ["README.md", "cdk*.json", "cdk.out"]},
        "context": {k: v for k, v in context.items() if v is not None},
    }


def _raw_location(config: MedopsConfig, raw_uri: str | None) -> tuple[str | None, str]:
    """(bucket, prefix) of the raw images: --raw-uri, else the one S3 source of data.sources,
    else a bucket CloudFormation names and the prefix ``incoming/``."""
    if raw_uri is None:
        s3 = {n: s for n, s in config.data.sources.items() if isinstance(s, S3SourceConfig)}
        if len(s3) > 1:
            raise ConfigError(f"data.sources has {len(s3)} S3 sources ({', '.join(sorted(s3))}); "
                              "fix: name the one the stack watches with --raw-uri s3://BUCKET/"
                              "PREFIX/")
        if not s3:
            return None, "incoming/"
        (source,) = s3.values()
        if source.endpoint_url is not None:
            raise ConfigError(f"the S3 source's endpoint_url is {source.endpoint_url!r}, not "
                              "AWS; fix: give the AWS bucket with --raw-uri s3://BUCKET/PREFIX/")
        raw_uri = source.uri
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", raw_uri)
    if match is None or not re.fullmatch(_BUCKET, match.group(1)):
        raise ConfigError(f"{raw_uri!r} is not an S3 location; write it as s3://BUCKET/PREFIX/ "
                          "(a bucket name of 3-63 lowercase letters, digits, '.' and '-')")
    prefix = match.group(2)
    return match.group(1), prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _datastore(config: MedopsConfig) -> str | None:
    stores = {s.datastore_id for s in config.data.sources.values()
              if isinstance(s, HealthImagingSourceConfig)}
    if len(stores) > 1:
        raise ConfigError(f"data.sources names {len(stores)} HealthImaging datastores "
                          f"({', '.join(sorted(stores))}); fix: pick one with --datastore-id")
    return next(iter(stores), None)


def _check(options: AwsOptions, datastore: str | None, tracking: str | None) -> None:
    if datastore is not None and not re.fullmatch(_DATASTORE, datastore):
        raise ConfigError(f"HealthImaging datastore id {datastore!r}: a datastore id is 32 "
                          "lowercase letters and digits (see `aws medical-imaging "
                          "list-datastores`)")
    if not 1 <= options.min_instances <= options.max_instances:
        raise ConfigError(f"--min-instances {options.min_instances} and --max-instances "
                          f"{options.max_instances}: the endpoint needs 1 <= min <= max")
    for flag, value in (("--instance-type", options.serving_instance_type),
                        ("--training-instance-type", options.training_instance_type)):
        if not re.fullmatch(_INSTANCE, value):
            raise ConfigError(f"{flag} {value!r} is not a SageMaker instance type (e.g. "
                              "ml.m5.xlarge, ml.g4dn.xlarge)")
    if options.image_tag is not None and tracking is None:
        raise ConfigError("--image-tag deploys the endpoint, which loads its model from the "
                          "MLflow registry, but storage.tracking is not an http(s) MLflow "
                          "server; fix: --mlflow-uri https://mlflow.example.org")
    if options.github_repository is not None and not re.fullmatch(_GITHUB_REPO,
                                                                   options.github_repository):
        raise ConfigError(f"--github-repository {options.github_repository!r}: write it as "
                          "OWNER/NAME")
