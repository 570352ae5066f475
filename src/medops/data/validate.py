"""Validation: every item is decoded once; bad ones are quarantined with the reason.

Checks: unreadable, truncated or non-image files, DICOM without pixel data, unsupported transfer
syntaxes (all by decoding the pixels the model will see), missing labels, duplicates by content
hash, and class counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from medops.data.images import read_pixels
from medops.errors import DataError
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
    class_counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "ok": self.ok, "quarantined": self.quarantined,
                "class_counts": self.class_counts, "warnings": self.warnings}


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


def validate_items(items: Sequence[Item], executor: _Mapper,
                   known_hashes: dict[str, str]) -> list[tuple[Item, ItemStatus, str | None]]:
    """Decide each pending item's fate. ``known_hashes`` maps item keys already OK to their URI."""
    seen = dict(known_hashes)
    verdicts: list[tuple[Item, ItemStatus, str | None]] = []
    to_decode: list[Item] = []
    for item in items:
        if item.label is None:
            verdicts.append((item, ItemStatus.QUARANTINED, "no label (check data.labels)"))
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


def summarize(all_items: Sequence[Item], newly_checked: int,
              min_items_per_class: int) -> ValidationReport:
    """The report over the whole catalog after validation."""
    ok = [i for i in all_items if i.status is ItemStatus.OK]
    report = ValidationReport(
        checked=newly_checked, ok=len(ok),
        quarantined=[{"uri": i.uri, "reason": i.reason or ""}
                     for i in all_items if i.status is ItemStatus.QUARANTINED],
        class_counts=dict(sorted(Counter(i.label for i in ok if i.label).items())),
    )
    for label, count in report.class_counts.items():
        if count < min_items_per_class:
            report.warnings.append(
                f"class {label!r} has {count} item(s), fewer than "
                f"data.min_items_per_class={min_items_per_class}")
    return report
