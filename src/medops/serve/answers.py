"""What a prediction answer is written as: JSON, or CSV (what SageMaker batch transform asks
for with ``Accept: text/csv``).

The request's ``Accept`` header decides, before any image is read:

- no header, ``*/*``, ``application/*`` or ``application/json``: JSON;
- ``text/csv`` or ``text/*``: CSV, a header row and one row per image;
- anything else: 406, naming what is offered.

Quality values are honoured (``q=0`` refuses a type); where two types are equally acceptable
the one the client named more specifically wins, then JSON.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from medops.config.enums import StrEnum
from medops.errors import NotAcceptableError


class AnswerType(StrEnum):
    """The media types a prediction answer can take, the server's preference first."""

    JSON = "application/json"
    CSV = "text/csv"


#: The key of a prediction holding one probability per class; each becomes a column p_<class>.
PROBABILITIES = "probabilities"


def negotiate(accept: str | None) -> AnswerType:
    """The answer type for an ``Accept`` header; :class:`NotAcceptableError` if none fits."""
    if accept is None or not accept.strip():
        return AnswerType.JSON
    ranges = [_media_range(part) for part in accept.split(",") if part.strip()]
    best: tuple[float, int, int] | None = None
    chosen: AnswerType | None = None
    for preference, offered in enumerate(AnswerType):
        matches = [(specificity, q) for media, q in ranges
                   if (specificity := _specificity(media, offered.value)) >= 0]
        if not matches:
            continue
        specificity, q = max(matches)  # the most specific range that matches decides its q
        rank = (q, specificity, -preference)
        if q > 0 and (best is None or rank > best):
            best, chosen = rank, offered
    if chosen is None:
        offered_types = " or ".join(t.value for t in AnswerType)
        raise NotAcceptableError(f"Accept: {accept.strip()!r} names no answer type this "
                                 f"endpoint offers; it answers {offered_types}")
    return chosen


def _media_range(part: str) -> tuple[str, float]:
    media, *params = (p.strip() for p in part.split(";"))
    q = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = min(max(float(value), 0.0), 1.0)
            except ValueError:
                q = 0.0  # a malformed weight accepts nothing
    return media.lower(), q


def _specificity(media: str, offered: str) -> int:
    """2 for the type itself, 1 for ``type/*``, 0 for ``*/*``, -1 when it does not match."""
    if media == offered:
        return 2
    if media == offered.split("/")[0] + "/*":
        return 1
    return 0 if media == "*/*" else -1


def prediction_rows(predictions: Sequence[Mapping[str, Any]]
                    ) -> tuple[list[str], list[list[Any]]]:
    """Prediction dicts as a table: the columns and one row per prediction.

    ``probabilities`` ({class: p}) becomes one column ``p_<class>`` per class, first; every
    other key becomes a column of its own, in the order the predictions hold them: a list is
    joined with ``|``, a mapping gives a column ``<key>_<name>`` per entry."""
    rows = [_flat(p) for p in predictions]
    columns = list(dict.fromkeys(c for row in rows for c in row))
    return columns, [[row.get(c, "") for c in columns] for row in rows]


def _flat(prediction: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {f"p_{c}": p for c, p in prediction.get(PROBABILITIES, {}).items()}
    for key, value in prediction.items():
        if key == PROBABILITIES:
            continue
        if isinstance(value, Mapping):
            out.update({f"{key}_{k}": _cell(v) for k, v in value.items()})
        else:
            out[key] = _cell(value)
    return out


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return "|".join(str(v) for v in value)
    return "" if value is None else value


def predictions_csv(predictions: Sequence[Mapping[str, Any]]) -> str:
    """The CSV answer: a header row, then one row per prediction (see :func:`prediction_rows`)."""
    columns, rows = prediction_rows(predictions)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()
