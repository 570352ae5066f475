"""Validation: every item is decoded once; bad ones are quarantined with the reason.

Checks: unreadable, truncated or non-image files, DICOM without pixel data, unsupported transfer
syntaxes (all by decoding the pixels the model will see), missing labels, duplicates by content
hash, and class counts. For a multi-label task the counts are per finding (positive images, and
``No Finding`` for images with none), and a label that is not a valid finding list is
quarantined.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from medops.config.enums import Task
from medops.data.images import read_pixels
from medops.data.labels import NO_FINDING, parse_findings
from medops.errors import DataError, LabelError
from medops.storage.records import Item, ItemStatus

T = TypeVar("T")
R = TypeVar("R")


class _Mapper(Protocol):
    def map(self, fn: Callable[[T], R], items: Sequence[T], *,
            chunksize: int | None = None) -> Any: ...


@dataclass
class ValidationReport:
    checked: int = 0
    ok: int = 0
    quarantined: list[dict[str, str]] = field(default_factory=list)  # {uri, reason}
    # {class: images}; multilabel: {finding: positive images, "No Finding": images without}
    class_counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    task: Task = Task.MULTICLASS

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "ok": self.ok, "quarantined": self.quarantined,
                "task": str(self.task), "class_counts": self.class_counts,
                "warnings": self.warnings}

    def unusable(self) -> str | None:
        """Why nothing can be trained on the valid items, or None."""
        if self.task is not Task.MULTILABEL:
            found = self.class_counts or "none"
            return f"need at least 2 classes of valid items, found {found}" \
                if len(self.class_counts) < 2 else None
        if not any(0 < n < self.ok for f, n in self.class_counts.items() if f != NO_FINDING):
            return (f"need at least 1 finding with both positive and negative valid images, "
                    f"found {self.class_counts or 'none'} among {self.ok} image(s)")
        return None


def decode_check(task: tuple[str, int | None]) -> str | None:
    """None when the item decodes, else the reason. Runs in worker processes."""
    uri, frame = task
    try:
        read_pixels(Path(uri), frame=frame)
    except DataError as exc:
        return str(exc)
    except Exception as exc:  # a decoder bug must quarantine one file, not stop the run
        return f"could not decode: {type(exc).__name__}: {exc}"
    return None


def validate_items(items: Sequence[Item], executor: _Mapper, known_hashes: dict[str, str],
                   task: Task = Task.MULTICLASS) -> list[tuple[Item, ItemStatus, str | None]]:
    """Decide each pending item's fate. ``known_hashes`` maps item keys already OK to their URI."""
    seen = dict(known_hashes)
    verdicts: list[tuple[Item, ItemStatus, str | None]] = []
    to_decode: list[Item] = []
    for item in items:
        bad_label = _label_problem(item.label, task)
        if bad_label is not None:
            verdicts.append((item, ItemStatus.QUARANTINED, bad_label))
        elif item.key in seen and seen[item.key] != item.uri:
            verdicts.append((item, ItemStatus.QUARANTINED,
                             f"duplicate of {seen[item.key]} (same content hash)"))
        else:
            seen[item.key] = item.uri
            to_decode.append(item)
    tasks = [(i.uri, i.frame) for i in to_decode]
    results = executor.map(decode_check, tasks, chunksize=16)
    for item, reason in zip(to_decode, results, strict=True):
        status = ItemStatus.OK if reason is None else ItemStatus.QUARANTINED
        verdicts.append((item, status, reason))
    return verdicts


def _label_problem(label: str | None, task: Task) -> str | None:
    if label is None:
        return "no label (check data.labels)"
    if task is Task.MULTILABEL:
        try:
            parse_findings(label)
        except LabelError as exc:
            return f"bad finding list: {exc}"
    return None


def summarize(all_items: Sequence[Item], newly_checked: int, min_items_per_class: int,
              task: Task = Task.MULTICLASS) -> ValidationReport:
    """The report over the whole catalog after validation."""
    task = Task(task)
    ok = [i for i in all_items if i.status is ItemStatus.OK]
    if task is Task.MULTILABEL:
        found: Counter[str] = Counter()
        for i in ok:
            if i.label:
                found.update(parse_findings(i.label) or (NO_FINDING,))
        counts = {f: found[f] for f in sorted(set(found) - {NO_FINDING})}
        counts |= {NO_FINDING: found[NO_FINDING]} if found[NO_FINDING] else {}
    else:
        counts = dict(sorted(Counter(i.label for i in ok if i.label).items()))
    report = ValidationReport(
        checked=newly_checked, ok=len(ok),
        quarantined=[{"uri": i.uri, "reason": i.reason or ""}
                     for i in all_items if i.status is ItemStatus.QUARANTINED],
        class_counts=counts, task=task,
    )
    what = "finding {!r} has {} positive image(s)" if task is Task.MULTILABEL \
        else "class {!r} has {} item(s)"
    for label, count in report.class_counts.items():
        if count < min_items_per_class and label != NO_FINDING:
            report.warnings.append(f"{what.format(label, count)}, fewer than "
                                   f"data.min_items_per_class={min_items_per_class}")
        if task is Task.MULTILABEL and label != NO_FINDING and count == len(ok):
            report.warnings.append(f"finding {label!r} is present in every valid image: "
                                   "without negatives it cannot be learnt or evaluated")
    return report
