"""Deployable files written from medops.yaml: the AWS stack as a CDK app (:mod:`.aws`) and the
CI/CD workflow of a project's repository (:mod:`.ci`).

Exporting writes files and nothing else: this package imports the configuration only, never
PyTorch or MLflow, and what it writes runs without medops (the CDK app needs aws-cdk-lib).
"""

from medops.export.aws import AwsExport, AwsOptions, export_aws, stack_context, stack_name
from medops.export.ci import CiFiles, CiProvider, write_ci

__all__ = [
    "AwsExport",
    "AwsOptions",
    "CiFiles",
    "CiProvider",
    "export_aws",
    "stack_context",
    "stack_name",
    "write_ci",
]
