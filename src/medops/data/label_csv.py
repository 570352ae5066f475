"""Labels from a CSV: one class column, one column of ``|``-separated findings (NIH
ChestX-ray14's ``Finding Labels``), or one 0/1 column per finding.

Every label comes back as the text an item stores: the class, or the canonical finding string
of :mod:`medops.data.labels`. In a finding column 1 is present and 0 absent; a blank cell counts
as absent, and a row whose finding cells are all blank has no label (it is quarantined as
unlabelled rather than taken for ``No Finding``).
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Sequence
from pathlib import Path

from medops.config.enums import Task
from medops.config.schema import LabelsConfig
from medops.data.hashing import pseudonym
from medops.data.labels import NO_FINDING, format_findings, parse_findings
from medops.errors import LabelError

#: What a finding cell may hold (pandas writes 1.0/0.0 once a column has a blank).
_PRESENT, _ABSENT = {"1", "1.0"}, {"0", "0.0", ""}

LabelRows = dict[str, tuple[str | None, str | None]]  # file id -> (label, patient pseudonym)


def read_label_csv(path: Path, cfg: LabelsConfig, task: Task = Task.MULTICLASS) -> LabelRows:
    """{file id relative to the source folder: (label or None, patient pseudonym or None)}."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [c.strip() for c in next(reader, [])]
        rows = [r for r in reader if any(cell.strip() for cell in r)]
    multilabel = Task(task) is Task.MULTILABEL
    findings = _finding_columns(path, cfg, header, rows)
    needed = {"data.labels.id_column": cfg.id_column,
              "data.labels.patient_column": cfg.patient_column,
              **({} if findings is not None else {"data.labels.label_column": cfg.label_column})}
    for key, col in needed.items():
        if col and col not in header:
            raise LabelError(f"{path}: no column {col!r} ({key}); the columns are "
                             f"{header}{_nearest(col, header)}")
    out: LabelRows = {}
    for n, row in enumerate(rows, 2):  # line numbers as an editor shows them, header = 1
        cells = dict(zip(header, (c.strip() for c in row), strict=False))
        key = cells.get(cfg.id_column, "").lstrip("./")
        where = f"{path}, line {n} ({cfg.id_column} {key!r})"
        if findings is not None:
            label = _from_columns(cells, findings, where)
        else:
            label = cells.get(cfg.label_column) or None
            if multilabel and label is not None:
                try:
                    label = format_findings(parse_findings(label))
                except LabelError as exc:
                    raise LabelError(f"{where}: {exc}; write the findings joined by '|', or "
                                     f"{NO_FINDING!r} alone") from exc
        patient = cells.get(cfg.patient_column) if cfg.patient_column else None
        out[key] = (label, pseudonym(patient, "pt") if patient else None)
    return out


def _from_columns(cells: dict[str, str], findings: Sequence[str], where: str) -> str | None:
    present: list[str] = []
    blank = 0
    for col in findings:
        value = cells.get(col, "")
        if value in _PRESENT:
            present.append(col)
        elif value not in _ABSENT:
            raise LabelError(f"{where}: finding column {col!r} holds {value!r}; a finding "
                             "column holds 1 (present), 0 (absent) or nothing (fix: map other "
                             "values, such as -1 for uncertain, to 0 or 1 first)")
        blank += value == ""
    return None if blank == len(findings) else format_findings(present)


def _finding_columns(path: Path, cfg: LabelsConfig, header: list[str],
                     rows: list[list[str]]) -> list[str] | None:
    """The finding columns to read, checked against the header; None when there are none."""
    wanted = cfg.finding_columns
    if wanted is None:
        return None
    if wanted != "auto":
        missing = [c for c in wanted if c not in header]
        if missing:
            hints = "".join(_nearest(c, header) for c in missing)
            names = ", ".join(repr(c) for c in missing)
            raise LabelError(f"{path}: no column {names} "
                             f"(data.labels.finding_columns); the columns are {header}{hints}")
        return list(wanted)
    skip = {cfg.id_column, cfg.patient_column}
    found, rejected = [], []
    for i, col in enumerate(header):
        if col in skip:
            continue
        values = {r[i].strip() if i < len(r) else "" for r in rows}
        odd = sorted(values - _PRESENT - _ABSENT)
        if odd or values <= {""}:
            rejected.append(f"{col!r} ({'holds ' + repr(odd[0]) if odd else 'all blank'})")
        elif "|" in col or col == NO_FINDING:
            rejected.append(f"{col!r} (not a finding name)")
        else:
            found.append(col)
    if not found:
        raise LabelError(f"{path}: data.labels.finding_columns is 'auto' but no column holds only "
                         f"0, 1 or blank: {', '.join(rejected) or 'no columns'}; list the "
                         "finding columns instead")
    return found


def _nearest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
