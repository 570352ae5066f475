"""Credentials kept out of what medops records: run snapshots of the config and messages.

A run stores the configuration it started with (the state database, which the team server
shows). The storage URIs in it never hold a password (:mod:`medops.config.uris` refuses one),
but notification URLs must: apprise's ``slack://TOKEN/...`` or ``mailto://user:pass@...``
*are* the credential. The snapshot keeps only their scheme; a resumed run takes ``notify``
from the current medops.yaml, as it does where things are stored.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from medops.config.schema import MedopsConfig

MASK = "***"
_SECRET = re.compile(r"pass|secret|token|key|signature|credential", re.IGNORECASE)


def redacted(uri: str) -> str:
    """``uri`` with its password, and query values that name secrets, masked:
    ``postgresql://ana:***@db/medops?password=***``."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return MASK
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{netloc.rsplit('@', 1)[-1]}"
    query = urlencode([(k, MASK if _SECRET.search(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def notification_target(url: str) -> str:
    """Only the kind of an apprise URL (``slack://***``): the rest is the secret."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    return f"{scheme}://{MASK}" if scheme else MASK


def config_snapshot(config: MedopsConfig) -> dict[str, Any]:
    """``config`` as a run records it: JSON values, notification URLs masked."""
    data = config.model_dump(mode="json")
    notify = data.get("notify")
    if isinstance(notify, dict) and notify.get("urls"):
        notify["urls"] = [notification_target(u) for u in notify["urls"]]
    return data
