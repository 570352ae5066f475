"""Patient-level, stratified, seeded splits that never change once given.

A group (patient, study, or item) gets its split the first time it is seen, and keeps it: when
data grows, only new groups are placed. A published split (MedMNIST) is kept as it is.

Multiclass: new groups are placed one by one, in a seeded order, into the split whose share of
that group's class is furthest below its target, so every split stays stratified.

Multilabel (iterative stratification over groups, after Sechidis et al. 2011): the finding with
the fewest positives among the groups still to place goes first; its groups, in the seeded order,
go to a split that has no positive of it yet (so every finding reaches every split where there
are enough positive groups), else to the split furthest below its target for that finding. Images
without findings come last, placed to keep the split sizes. Rare findings thus spread first and
common ones fill in around them; :meth:`Manifest.missing_findings` names any finding that could
not reach every split.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from medops.config.enums import GroupBy, Task
from medops.config.schema import SplitConfig
from medops.data.labels import NO_FINDING, parse_findings
from medops.storage.records import Item, Split

_ORDER = (Split.TRAIN, Split.VAL, Split.TEST)
_ALL = "\0all"  # the pseudo-label counting every image, for split sizes


def group_key(item: Item, group_by: GroupBy) -> str:
    """The key that keeps related images together. Items without the id fall back to themselves."""
    if group_by is GroupBy.PATIENT and item.patient_id:
        return f"patient:{item.patient_id}"
    if group_by in (GroupBy.PATIENT, GroupBy.STUDY) and item.study_uid:
        return f"study:{item.study_uid}"
    return f"item:{item.key}"


def assign_splits(items: Sequence[Item], cfg: SplitConfig, known: dict[str, Split],
                  task: Task = Task.MULTICLASS) -> dict[str, Split]:
    """Splits for the groups of ``items`` not in ``known``; ``known`` ones are never moved."""
    targets = {Split.TRAIN: 1.0 - cfg.val - cfg.test, Split.VAL: cfg.val, Split.TEST: cfg.test}
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if item.split is None:
            groups[group_key(item, cfg.group_by)].append(item)

    def order(key: str) -> str:
        return hashlib.sha256(f"{cfg.seed}:{key}".encode()).hexdigest()

    todo = sorted((k for k in groups if k not in known), key=order)
    strata = _finding_strata if Task(task) is Task.MULTILABEL else _class_stratum
    # Current counts per split and stratum, including published splits and known groups.
    counts: dict[Split, Counter[str]] = {s: Counter() for s in _ORDER}
    totals: Counter[str] = Counter()
    for item in items:
        totals.update(strata(item))
        placed = item.split or known.get(group_key(item, cfg.group_by))
        if placed is not None:
            counts[placed].update(strata(item))
    place: Placer = _place_multilabel if Task(task) is Task.MULTILABEL else _place_multiclass
    return place(todo, groups, counts, totals, targets)


Placer = Callable[[list[str], dict[str, list[Item]], dict[Split, Counter[str]], Counter[str],
                   dict[Split, float]], dict[str, Split]]


def _class_stratum(item: Item) -> list[str]:
    return [item.label or ""]


def _finding_strata(item: Item) -> list[str]:
    return [*(parse_findings(item.label) or (NO_FINDING,)), _ALL]


def _place_multiclass(todo: list[str], groups: dict[str, list[Item]],
                      counts: dict[Split, Counter[str]], totals: Counter[str],
                      targets: dict[Split, float]) -> dict[str, Split]:
    new: dict[str, Split] = {}
    for key in todo:
        members = groups[key]
        label = Counter(i.label or "" for i in members).most_common(1)[0][0]
        deficit = {s: targets[s] * totals[label] - counts[s][label] for s in _ORDER
                   if targets[s] > 0}
        best = max(deficit, key=lambda s: (deficit[s], -_ORDER.index(s)))
        new[key] = best
        for item in members:
            counts[best][item.label or ""] += 1
    return new


def _place_multilabel(todo: list[str], groups: dict[str, list[Item]],
                      counts: dict[Split, Counter[str]], totals: Counter[str],
                      targets: dict[Split, float]) -> dict[str, Split]:
    splits = [s for s in _ORDER if targets[s] > 0]
    strata = {k: Counter(f for i in groups[k] for f in _finding_strata(i)) for k in todo}
    left = list(todo)
    new: dict[str, Split] = {}

    def need(s: Split, label: str) -> float:
        return targets[s] * totals[label] - counts[s][label]

    while left:
        remaining: Counter[str] = Counter()
        for key in left:
            remaining.update(f for f in strata[key] if f not in (_ALL, NO_FINDING))
        # the rarest finding still to place; images without any finding once none is left
        label = min(remaining, key=lambda f: (remaining[f], f)) if remaining else NO_FINDING
        batch = [k for k in left if label in strata[k]] or left
        for key in batch:
            uncovered = [s for s in splits if counts[s][label] == 0]
            best = max(uncovered or splits,
                       key=lambda s: (need(s, label), need(s, _ALL), -_ORDER.index(s)))
            new[key] = best
            counts[best].update(strata[key])
        placed = set(batch)
        left = [k for k in left if k not in placed]
    return new


def split_of(item: Item, cfg: SplitConfig, groups: dict[str, Split]) -> Split:
    if item.split is not None:
        return item.split
    return groups[group_key(item, cfg.group_by)]
