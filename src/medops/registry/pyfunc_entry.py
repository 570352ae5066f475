"""The MLflow "model from code" entry point of every model medops registers."""

from mlflow.models import set_model

from medops.registry.packaging import MedopsImageClassifier

set_model(MedopsImageClassifier())
