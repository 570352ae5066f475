"""Checks of the ``model`` section that need no PyTorch: architecture names and weight pins."""

from __future__ import annotations

import difflib
import re

from medops.config.enums import Architecture

#: ``package.module:factory`` or ``path/in/project.py:factory`` (the factory may be dotted).
ENTRY_POINT = re.compile(
    r"^(?P<module>[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*|[^:]+\.py):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$"
)
TXV_PREFIX = "txv:"
TXV_DEFAULT_RESOLUTION = 224
_TXV_RES = re.compile(r"-res(\d+)-")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_builtin(architecture: str) -> bool:
    return architecture in {a.value for a in Architecture}


def is_txv(architecture: str) -> bool:
    return architecture.startswith(TXV_PREFIX)


def txv_name(architecture: str) -> str:
    """The TorchXRayVision weights name of ``txv:NAME``."""
    return architecture[len(TXV_PREFIX):].strip()


def txv_resolution(architecture: str) -> int:
    """The side in pixels a ``txv:NAME`` model was trained at: the ``resNNN`` of its name
    (``densenet121-res224-all``: 224, ``resnet50-res512-all``: 512); 224 for the short aliases
    (``all``, ``nih``...), which all name 224 px DenseNets."""
    m = _TXV_RES.search(txv_name(architecture))
    return int(m.group(1)) if m else TXV_DEFAULT_RESOLUTION


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def check_architecture(value: str) -> str:
    """A built-in name, ``txv:NAME`` or an entry point; else an error naming the options."""
    value = value.strip()
    if is_builtin(value):
        return value
    if is_txv(value):
        if not value[len(TXV_PREFIX):]:
            raise ValueError("'txv:' needs a TorchXRayVision weights name, e.g. "
                             "txv:densenet121-res224-all")
        return value
    if ENTRY_POINT.match(value):
        return value
    builtins = [a.value for a in Architecture]
    close = difflib.get_close_matches(value, builtins, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(
        f"{value!r} is not a known architecture; {hint}use one of {', '.join(builtins)}, "
        "txv:NAME (TorchXRayVision), or an entry point 'package.module:factory' or "
        "'path/in/project.py:factory'")


def check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if not _SHA256.match(v):
        raise ValueError(f"{value!r} is not a SHA-256 (64 hexadecimal digits)")
    return v
