"""Remote sources by kind: each backend is imported only when a project uses it."""

from __future__ import annotations

import importlib
from typing import Any

from medops.data.sources.remote import RemoteSource
from medops.errors import ConfigError

#: kind -> "module:Class"; each class takes (name, config) and satisfies RemoteSource.
_BACKENDS = {
    "s3": "medops.data.sources.s3:S3Source",
    "dicomweb": "medops.data.sources.dicomweb:DicomwebSource",
    "healthimaging": "medops.data.sources.healthimaging:HealthImagingSource",
    "sqs": "medops.data.sources.sqs:SqsEventFeed",
    "xnat": "medops.data.sources.xnat:XnatSource",
}


def make_remote_source(name: str, cfg: Any) -> RemoteSource:
    """The source for ``data.sources.<name>`` (its config model picks the backend)."""
    target = _BACKENDS.get(cfg.kind)
    if target is None:
        raise ConfigError(f"data.sources.{name}: kind {cfg.kind!r} is not polled; "
                          f"pollable kinds are {sorted(_BACKENDS)}")
    module, cls = target.split(":")
    source: RemoteSource = getattr(importlib.import_module(module), cls)(name, cfg)
    return source


def remote_config_for_uri(uri: str) -> tuple[str, Any]:
    """(source name, config) for a source given by URI on the command line.

    The name (where its cursor and landing folder are kept) is the URI without credentials,
    so importing the same URI again continues where the last import stopped.
    """
    from urllib.parse import urlsplit, urlunsplit

    from medops.config.sources import DicomwebSourceConfig, S3SourceConfig

    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    name = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    if parts.scheme == "s3" and host:
        return name, S3SourceConfig(kind="s3", uri=uri)
    if parts.scheme in ("http", "https") and host:
        return name, DicomwebSourceConfig(kind="dicomweb", url=uri)
    if parts.scheme == "healthimaging" and host:
        from medops.data.sources.healthimaging import config_for_uri

        return f"healthimaging://{host}", config_for_uri(uri)
    raise ConfigError(f"cannot import {uri!r}: source URIs are s3://BUCKET/PREFIX, an "
                      "http(s):// DICOMweb root or healthimaging://DATASTORE/IMAGESET; other "
                      "sources go in data.sources and are imported with --source NAME")

