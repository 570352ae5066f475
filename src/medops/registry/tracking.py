"""Experiment tracking through an explicit MlflowClient: no global MLflow state is touched."""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from medops.errors import RegistryError

_MAX_PARAM = 6000  # MLflow rejects longer param values


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds when no MLflow server answers at ``uri``: MLflow's own client retries a
    refused connection with backoff for about four minutes before it says anything."""
    parts = urlsplit(uri)
    where = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"  # never echo credentials
    try:
        with urllib.request.urlopen(f"{where}{parts.path.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # something answered (a proxy, an auth layer): MLflow's client says the rest
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(
            f"cannot reach the MLflow server at {where} (storage.tracking): {reason}; check the "
            "URL in medops.yaml and that the server is running") from exc


class Tracker:
    """One MLflow experiment per project. ``artifact_root``: where a new experiment keeps its
    artifacts, a local folder or a URI (``s3://...``); None lets the MLflow server choose (with
    ``--serve-artifacts``: ``mlflow-artifacts:/``, which every client reads through it).
    Credentials for a server come from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
    (or MLFLOW_TRACKING_TOKEN) or ``~/.mlflow/credentials``, which MLflow reads itself."""

    def __init__(self, tracking_uri: str, experiment: str,
                 artifact_root: Path | str | None) -> None:
        from mlflow.tracking import MlflowClient  # heavy: imported when tracking is used

        if tracking_uri.startswith(("http://", "https://")):
            check_reachable(tracking_uri)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._experiment_name = experiment
        self._artifact_root = artifact_root
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self._experiment_name)
            if exp is None:
                location = self._artifact_root
                if isinstance(location, Path):
                    location.mkdir(parents=True, exist_ok=True)
                self._experiment_id = self.client.create_experiment(
                    self._experiment_name, artifact_location=location.as_uri()
                    if isinstance(location, Path) else location)
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def start_run(self, name: str, tags: dict[str, str]) -> str:
        try:
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        except Exception as exc:
            raise RegistryError(f"MLflow at {self.tracking_uri} refused a new run: {exc}") from exc
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        batch = [Param(k, str(v)[:_MAX_PARAM]) for k, v in params.items() if k not in existing]
        for i in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and not math.isnan(float(v))]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def metric_history(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        """Every metric logged to ``run_id``: its (step, value) pairs in step order."""
        try:
            names = sorted(self.client.get_run(run_id).data.metrics)
            return {name: sorted((int(m.step), float(m.value))
                                 for m in self.client.get_metric_history(run_id, name))
                    for name in names}
        except Exception as exc:
            raise RegistryError(f"MLflow at {self.tracking_uri} could not read the metrics of "
                                f"run {run_id}: {exc}") from exc

    def artifact_uri(self, run_id: str) -> str:
        return str(self.client.get_run(run_id).info.artifact_uri)

    def end_run(self, run_id: str, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED"
                ) -> None:
        self.client.set_terminated(run_id, status)

    def reopen_run(self, run_id: str) -> None:
        """Mark an ended run running again (a medops run resumed after a failure or a stop)."""
        self.client.update_run(run_id, status="RUNNING")
