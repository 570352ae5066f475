"""The locations of ``storage`` and of network sources: which URI forms each one takes, checked
when the config loads.

SQLAlchemy and MLflow accept (or half-accept) many schemes and fail late, with their own
tracebacks, on the ones medops does not install drivers for. Checking the scheme up front turns
those into a config error that names the key and the forms that work.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_STATE_FORMS = "sqlite:///relative/or/absolute.db or postgresql+psycopg://user@host:5432/db"
_TRACKING_FORMS = f"{_STATE_FORMS}, or http(s)://host:port of an MLflow server"


def _scheme(uri: str) -> str:
    return urlsplit(uri).scheme.lower() if "://" in uri else ""


def _database(uri: str) -> bool:
    scheme = _scheme(uri)
    backend = scheme.split("+", 1)[0]
    rest = uri[len(scheme) + 3:]
    if backend == "sqlite":
        return rest.startswith("/") and len(rest) > 1  # sqlite:/// then a path
    return backend == "postgresql" and bool(rest)


def check_state_uri(uri: str) -> str:
    if not _database(uri):
        raise ValueError(f"not a database URL medops can use; write {_STATE_FORMS}")
    return uri


def check_http_url(url: str, example: str) -> str:
    """``url`` when it is http(s) with a host: requests would refuse anything else only at the
    first call, with a traceback that names no key."""
    try:
        parts = urlsplit(url)
        good = (parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
                and (parts.port is None or parts.port > 0))
    except ValueError:  # an unclosed [IPv6] host, a port that is not a number or is over 65535
        good = False
    if not good:
        raise ValueError(f"{url!r} is not an http(s) URL with a host (and a port number, if "
                         f"any); write e.g. {example}")
    return url


def check_tracking_uri(uri: str) -> str:
    if _scheme(uri) in ("http", "https"):
        return check_http_url(uri, "http://mlflow:5000")
    if not _database(uri):
        raise ValueError(f"not a tracking location medops can use; write {_TRACKING_FORMS}")
    return uri
