"""The AWS side of a medops project, as one CDK stack (written by `medops export aws`).

What it holds, and why (README.md has the walk-through):

* three S3 buckets (raw images, artifacts, prediction capture), each with its own KMS key,
  versioning, TLS only, public access blocked and Intelligent-Tiering;
* the queue the medops agent reads (with its dead-letter queue) and the EventBridge rules that
  fill it: HealthImaging imports and new image sets, new objects under the raw prefix, pushes to
  the project's image repositories;
* the two ECR repositories CI pushes the training and serving images to;
* with an image tag: the SageMaker endpoint (1..N instances, target tracking on invocations
  per instance, data capture, alarms on latency and server errors) and a SageMaker pipeline
  whose training step runs the training image on managed spot, which the HealthImaging import
  rule also starts;
* least-privilege roles for the agent, the endpoint, training, the pipeline and (optionally)
  GitHub Actions.

Every IAM statement names its resources; the only ``*`` resource is ecr:GetAuthorizationToken,
which has no resource-level permissions.

This package depends on aws-cdk-lib alone, not on medops: a platform team can deploy it from a
machine that has no medops installed.
"""

from .params import CONTEXT_PREFIX, ParameterError, StackParams
from .stack import MedopsStack

__all__ = ["CONTEXT_PREFIX", "MedopsStack", "ParameterError", "StackParams"]
