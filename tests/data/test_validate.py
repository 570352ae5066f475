"""The validation report: counts per class, or per finding for a multi-label task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from medops.config.enums import Task
from medops.data.validate import summarize, validate_items
from medops.storage import Item, ItemStatus


def _item(n: int, label: str | None, status: ItemStatus = ItemStatus.OK) -> Item:
    return Item(uri=f"/x/{n}.png", content_hash=f"h{n}", source="s", label=label, status=status)


T = TypeVar("T")
R = TypeVar("R")


class _Inline:
    """Runs the decode check in this process (an executor is a thread or process pool)."""

    def map(self, fn: Callable[[T], R], items: Sequence[T], *,
            chunksize: int | None = None) -> list[R]:
        return [fn(i) for i in items]


def test_multiclass_report_is_unchanged() -> None:
    report = summarize([_item(0, "a"), _item(1, "a"), _item(2, "b")], 3, 2)
    assert report.class_counts == {"a": 2, "b": 1} and report.unusable() is None
    assert report.warnings == ["class 'b' has 1 item(s), fewer than data.min_items_per_class=2"]
    one = summarize([_item(0, "a")], 1, 1)
    assert one.unusable() == "need at least 2 classes of valid items, found {'a': 1}"


def test_multilabel_counts_findings_and_warns_about_rare_ones() -> None:
    items = [_item(0, "Cardiomegaly|Effusion"), _item(1, "Effusion"), _item(2, "No Finding"),
             _item(3, "Effusion|Mass"), _item(4, None, ItemStatus.QUARANTINED)]
    report = summarize(items, 5, 2, Task.MULTILABEL)
    assert report.class_counts == {"Cardiomegaly": 1, "Effusion": 3, "Mass": 1,
                                   "No Finding": 1}
    assert report.unusable() is None and report.to_dict()["task"] == "multilabel"
    assert report.warnings == [
        "finding 'Cardiomegaly' has 1 positive image(s), fewer than data.min_items_per_class=2",
        "finding 'Mass' has 1 positive image(s), fewer than data.min_items_per_class=2"]


def test_multilabel_needs_one_finding_with_positives_and_negatives() -> None:
    everywhere = summarize([_item(0, "Effusion"), _item(1, "Effusion")], 2, 1, Task.MULTILABEL)
    assert "need at least 1 finding with both positive and negative" in str(everywhere.unusable())
    assert "present in every valid image" in everywhere.warnings[0]
    nothing = summarize([_item(0, "No Finding"), _item(1, "No Finding")], 2, 1, Task.MULTILABEL)
    assert nothing.unusable() is not None
    fine = summarize([_item(0, "Effusion"), _item(1, "No Finding")], 2, 1, Task.MULTILABEL)
    assert fine.unusable() is None


def test_a_bad_finding_list_is_quarantined_for_multilabel() -> None:
    items = [_item(0, "No Finding|Effusion"), _item(1, None)]
    verdicts = {i.label: (status, reason) for i, status, reason in
                validate_items(items, _Inline(), {}, Task.MULTILABEL)}
    status, reason = verdicts["No Finding|Effusion"]
    assert status is ItemStatus.QUARANTINED and "bad finding list" in str(reason)
    assert verdicts[None] == (ItemStatus.QUARANTINED, "no label (check data.labels)")
