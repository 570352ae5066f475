"""Deployable files written from medops.yaml: the AWS stack as a CDK app (:mod:`.aws`), the
pipeline and batch inference as Airflow DAGs (:mod:`.airflow`) and the CI/CD workflow of a
project's repository (:mod:`.ci`).

Exporting writes files and nothing else: this package imports the configuration only, never
PyTorch or MLflow, and what it writes runs without medops (the CDK app needs aws-cdk-lib).
"""

from medops.export.airflow import AirflowExport, AirflowOptions, Operator, export_airflow
from medops.export.aws import AwsExport, AwsOptions, export_aws, stack_context, stack_name
from medops.export.ci import CiFiles, CiProvider, write_ci

__all__ = [
    "AirflowExport",
    "AirflowOptions",
    "AwsExport",
    "AwsOptions",
    "CiFiles",
    "CiProvider",
    "Operator",
    "export_airflow",
    "export_aws",
    "stack_context",
    "stack_name",
    "write_ci",
]
