"""Series selection: which DICOM instances become items, by their tags (``data.select``).

A rejected instance is not an error: it is skipped and counted by reason ("modality MR not in
['CT']"), so `medops data import` can say why 40 of 50 instances were left out. Reasons name
tags and their values, never patient data: the tags tested here describe the acquisition.
PNG and JPEG files carry no tags: the rules do not apply to them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from medops.config.ingest import SelectConfig


@dataclass
class SelectionStats:
    """How many instances each rule turned away, by reason."""

    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def merge(self, other: SelectionStats) -> None:
        self.accepted += other.accepted
        self.rejected.update(other.rejected)


class Selection:
    """The compiled ``data.select`` rules."""

    def __init__(self, cfg: SelectConfig) -> None:
        self.cfg = cfg
        self._modality = {m.upper() for m in cfg.modality}
        self._body_part = {b.upper() for b in cfg.body_part}
        self._description = re.compile(cfg.series_description) if cfg.series_description else None
        self._image_type = [t.upper() for t in cfg.image_type]

    @property
    def accepts_all(self) -> bool:
        return self.cfg.is_empty

    def reject_reason(self, ds: Dataset) -> str | None:
        """Why ``ds`` is left out, or None when every rule accepts it."""
        if self._modality:
            modality = str(ds.get("Modality", "") or "").upper()
            if modality not in self._modality:
                return f"modality {modality or '(none)'} not in {sorted(self._modality)}"
        if self._body_part:
            part = str(ds.get("BodyPartExamined", "") or "").upper()
            if part not in self._body_part:
                return f"body part {part or '(none)'} not in {sorted(self._body_part)}"
        if self._description is not None:
            desc = str(ds.get("SeriesDescription", "") or "")
            if not self._description.search(desc):
                return f"series description does not match {self._description.pattern!r}"
        if self._image_type:
            values = {str(v).upper() for v in _values(ds.get("ImageType"))}
            missing = [t for t in self._image_type if t not in values]
            if missing:
                return f"image type lacks {missing}"
        rows, cols = _number(ds.get("Rows")), _number(ds.get("Columns"))
        if self.cfg.min_rows and (rows is None or rows < self.cfg.min_rows):
            return f"rows {_show(rows)} < {self.cfg.min_rows}"
        if self.cfg.min_columns and (cols is None or cols < self.cfg.min_columns):
            return f"columns {_show(cols)} < {self.cfg.min_columns}"
        for keyword, bounds in self.cfg.ranges.items():
            value = _number(ds.get(keyword))
            if value is None:
                return f"{keyword} missing (a range is set on it)"
            if bounds.min is not None and value < bounds.min:
                return f"{keyword} {_show(value)} < {_show(bounds.min)}"
            if bounds.max is not None and value > bounds.max:
                return f"{keyword} {_show(value)} > {_show(bounds.max)}"
        return None


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _number(value: Any) -> float | None:
    """The first number of a numeric element; None when absent or not a number."""
    vals = _values(value)
    if not vals:
        return None
    try:
        return float(vals[0])
    except (TypeError, ValueError):
        return None


def _show(value: float | None) -> str:
    if value is None:
        return "(none)"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
