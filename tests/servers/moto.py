"""moto's server mode on a free loopback port: the AWS wire protocol boto3 speaks (S3, SQS,
Secrets Manager, ...), for the cloud services that cannot run here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """A running moto server; yields its endpoint URL (``http://127.0.0.1:PORT``)."""
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def s3_bucket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
              prefix: str = "bucket") -> Iterator[tuple[str, Any]]:
    """A new bucket on a moto server that this process reaches through boto3's own variables
    only (AWS_ENDPOINT_URL and test keys; no profile, no credentials file); yields its name and
    a boto3 S3 client."""
    import boto3

    with moto_endpoint() as endpoint:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
            monkeypatch.setenv(key, value)
        for key in ("MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(key, raising=False)
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=name)
        yield name, client
