"""The locations of ``storage`` and of network sources: which URI forms each one takes, checked
when the config loads.

SQLAlchemy and MLflow accept (or half-accept) many schemes and fail late, with their own
tracebacks, on the ones medops does not install drivers for. Checking the scheme up front turns
those into a config error that names the key and the forms that work.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from medops.config.redact import redacted

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


def _password_fix(uri: str) -> str | None:
    """What to use instead of a password written into ``uri``; None when it holds none.

    medops.yaml is committed, copied into run records and shown by the dashboard: a secret in it
    leaks. Each client reads its credentials from the environment or its own file instead."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return None  # not a URL at all: the form check says so
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query)
    if scheme.startswith("postgresql"):
        if password is not None or "password" in query:
            return ("PGPASSWORD in the environment, or a ~/.pgpass line "
                    "(host:port:database:user:password, mode 0600), which psycopg reads")
    elif scheme in ("http", "https"):
        if password is not None or parts.username is not None:
            return ("MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment, "
                    "or MLflow's ~/.mlflow/credentials file")
    elif scheme == "s3":
        if parts.username is not None or password is not None:
            return ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or "
                    "AWS_PROFILE with ~/.aws/credentials")
    elif password is not None:
        return "the service's own environment variable or credentials file"
    return None


def check_no_password(uri: str) -> str:
    """``uri`` unless it carries a credential, which is refused with where to put it instead."""
    fix = _password_fix(uri)
    if fix is not None:
        raise ValueError(f"a credential is written into the URI (got {redacted(uri)!r}); "
                         f"remove it and use {fix}")
    return uri


def check_state_uri(uri: str) -> str:
    check_no_password(uri)
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
    check_no_password(uri)
    if _scheme(uri) in ("http", "https"):
        return check_http_url(uri, "http://mlflow:5000")
    if not _database(uri):
        raise ValueError(f"not a tracking location medops can use; write {_TRACKING_FORMS}")
    return uri


def check_artifacts_uri(uri: str) -> str:
    """A path, file:// or an object store root with a bucket (``s3://bucket/prefix``); which
    schemes have a backend is the artifact store registry's to say, when the root is opened."""
    check_no_password(uri)
    if _scheme(uri) == "s3" and not urlsplit(uri).netloc:
        raise ValueError(f"{uri!r} names no bucket; write s3://BUCKET/PREFIX, e.g. "
                         "s3://medops-artifacts/chest-xray")
    return uri
