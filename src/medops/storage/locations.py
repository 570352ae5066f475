"""Locations are URIs. Local paths (and file://) resolve against the project folder.

Remote schemes (s3://, ...) arrive with the sources and artifact backends that need them; until a
scheme is registered here, naming it is a clear configuration error rather than a silent fallback.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from medops.errors import ConfigError

LOCAL_SCHEMES = ("", "file")


def local_path(root: Path, location: str, *, key: str) -> Path:
    """``location`` (a path or file:// URI) as an absolute local path under ``root``."""
    parsed = urlparse(location)
    if len(parsed.scheme) == 1:  # a Windows drive letter, not a scheme
        return Path(location)
    if parsed.scheme not in LOCAL_SCHEMES:
        raise ConfigError(
            f"{key}: scheme {parsed.scheme!r} in {location!r} is not supported for this location; "
            f"known schemes: file:// or a plain path"
        )
    path = Path(parsed.path if parsed.scheme == "file" else location).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def sqlalchemy_url(root: Path, url: str) -> str:
    """Make a relative ``sqlite:///relative.db`` URL absolute against ``root``."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str((root / url[len(prefix):]).resolve())
    return url
