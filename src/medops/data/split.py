"""Patient-level, stratified, seeded splits that never change once given.

A group (patient, study, or item) gets its split the first time it is seen, and keeps it: when
data grows, only new groups are placed. New groups are placed one by one, in a seeded order, into
the split whose share of that group's class is furthest below its target, so every split stays
stratified. A published split (MedMNIST) is kept as it is.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence

from medops.config.enums import GroupBy
from medops.config.schema import SplitConfig
from medops.storage.records import Item, Split

_ORDER = (Split.TRAIN, Split.VAL, Split.TEST)


def group_key(item: Item, group_by: GroupBy) -> str:
    """The key that keeps related images together. Items without the id fall back to themselves."""
    if group_by is GroupBy.PATIENT and item.patient_id:
        return f"patient:{item.patient_id}"
    if group_by in (GroupBy.PATIENT, GroupBy.STUDY) and item.study_uid:
        return f"study:{item.study_uid}"
    return f"item:{item.key}"


def assign_splits(items: Sequence[Item], cfg: SplitConfig,
                  known: dict[str, Split]) -> dict[str, Split]:
    """Splits for the groups of ``items`` not in ``known``; ``known`` ones are never moved."""
    targets = {Split.TRAIN: 1.0 - cfg.val - cfg.test, Split.VAL: cfg.val, Split.TEST: cfg.test}
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if item.split is None:
            groups[group_key(item, cfg.group_by)].append(item)

    # Current counts per split and class, including published splits and known groups.
    counts: dict[Split, Counter[str]] = {s: Counter() for s in _ORDER}
    totals: Counter[str] = Counter()
    for item in items:
        totals[item.label or ""] += 1
        placed = item.split or known.get(group_key(item, cfg.group_by))
        if placed is not None:
            counts[placed][item.label or ""] += 1

    def order(key: str) -> str:
        return hashlib.sha256(f"{cfg.seed}:{key}".encode()).hexdigest()

    new: dict[str, Split] = {}
    for key in sorted((k for k in groups if k not in known), key=order):
        members = groups[key]
        label = Counter(i.label or "" for i in members).most_common(1)[0][0]
        deficit = {s: targets[s] * totals[label] - counts[s][label] for s in _ORDER
                   if targets[s] > 0}
        best = max(deficit, key=lambda s: (deficit[s], -_ORDER.index(s)))
        new[key] = best
        for item in members:
            counts[best][item.label or ""] += 1
    return new


def split_of(item: Item, cfg: SplitConfig, groups: dict[str, Split]) -> Split:
    if item.split is not None:
        return item.split
    return groups[group_key(item, cfg.group_by)]
