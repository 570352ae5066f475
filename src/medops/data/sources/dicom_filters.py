"""QIDO-RS search keys: checked when a source is built, and matched locally where a server
cannot search (Orthanc's change feed hands out instances one by one).

Matching follows PS3.4 C.2.2.2 for the cases a search key in medops.yaml can express: a single
value (exact), wildcards ``*`` and ``?``, a list of values separated by a backslash (any of
them), and a range ``FROM-TO`` (either end open) for dates and times.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from medops.errors import ConfigError

#: Study-level keys that an instance answers through another attribute.
_INSTANCE_EQUIVALENT = {"ModalitiesInStudy": "Modality"}
_RANGE_VRS = {"DA", "TM", "DT"}


def check_keyword(keyword: str, where: str) -> None:
    """A ConfigError naming ``where`` (and the closest keywords) unless ``keyword`` is DICOM."""
    from pydicom.datadict import keyword_dict

    if keyword in keyword_dict:
        return
    close = difflib.get_close_matches(keyword, list(keyword_dict), n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"{where}: {keyword!r} is not a DICOM keyword{hint}")


def tag_hex(keyword: str) -> str:
    """``"Modality"`` -> ``"00080060"``, the key of DICOM JSON."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ConfigError(f"{keyword!r} is not a DICOM keyword")
    return f"{tag:08X}"


def json_value(entry: Mapping[str, Any], tag: str) -> str | None:
    """The first value of ``tag`` in a DICOM JSON object, as text (names: the alphabetic form)."""
    values = (entry.get(tag) or {}).get("Value") or []
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):
        value = value.get("Alphabetic")
    return None if value is None else str(value)


def first_value(tags: Mapping[str, Any], keyword: str | None) -> str | None:
    """The value of ``keyword`` in Orthanc's simplified tags (multiple values stay joined)."""
    if keyword is None:
        return None
    value = tags.get(keyword)
    return None if value is None or isinstance(value, (list, dict)) else str(value)


def matches(tags: Mapping[str, Any], filters: Mapping[str, str],
            value_of: Callable[[Mapping[str, Any], str], str | None]) -> bool:
    """True when the instance whose attributes are ``tags`` meets every search key."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    for keyword, wanted in filters.items():
        actual = value_of(tags, _INSTANCE_EQUIVALENT.get(keyword, keyword))
        if actual is None or actual == "":
            return False
        tag = tag_for_keyword(_INSTANCE_EQUIVALENT.get(keyword, keyword))
        vr = dictionary_VR(tag) if tag is not None else ""
        values = actual.split("\\")  # a multi-valued attribute matches if any value does
        if not any(_one(value, alt, vr) for value in values for alt in wanted.split("\\")):
            return False
    return True


def _one(value: str, wanted: str, vr: str) -> bool:
    if vr in _RANGE_VRS and "-" in wanted:
        low, _, high = wanted.partition("-")
        # DA, TM and DT compare as text once the shorter side is cut to the common length.
        return (not low or value[: len(low)] >= low) and (not high or value[: len(high)] <= high)
    if "*" in wanted or "?" in wanted:
        return fnmatchcase(value, wanted)
    return value == wanted
