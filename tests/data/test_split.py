"""Patient-level, stratified, seeded, stable splits."""

from __future__ import annotations

from collections import Counter

from medops.config.enums import GroupBy
from medops.config.schema import SplitConfig
from medops.data.split import assign_splits, group_key, split_of
from medops.storage import Item, Split


def _items(n_patients: int, per_patient: int = 3, offset: int = 0) -> list[Item]:
    items = []
    for p in range(offset, offset + n_patients):
        label = "pos" if p % 3 == 0 else "neg"
        for i in range(per_patient):
            items.append(Item(uri=f"/p{p}/{i}", content_hash=f"h{p}-{i}", source="s",
                              label=label, patient_id=f"pt-{p}"))
    return items


def _assign(items: list[Item], cfg: SplitConfig,
            known: dict[str, Split] | None = None) -> dict[str, Split]:
    known = dict(known or {})
    return {**known, **assign_splits(items, cfg, known)}


def test_no_patient_in_two_splits_and_fractions_roughly_kept() -> None:
    cfg = SplitConfig(val=0.1, test=0.2, seed=0)
    items = _items(200)
    groups = _assign(items, cfg)
    per_patient: dict[str, set[Split]] = {}
    for item in items:
        per_patient.setdefault(item.patient_id or "", set()).add(split_of(item, cfg, groups))
    assert all(len(s) == 1 for s in per_patient.values())
    sizes = Counter(groups.values())
    assert abs(sizes[Split.TEST] / 200 - 0.2) < 0.03 and abs(sizes[Split.VAL] / 200 - 0.1) < 0.03


def test_stratified_by_class() -> None:
    cfg = SplitConfig(val=0.1, test=0.2, seed=1)
    items = _items(300)
    groups = _assign(items, cfg)
    for split in Split:
        labels = Counter(i.label for i in items if split_of(i, cfg, groups) is split)
        assert abs(labels["pos"] / sum(labels.values()) - 1 / 3) < 0.05, (split, labels)


def test_seeded_and_deterministic() -> None:
    items = _items(50)
    assert _assign(items, SplitConfig(seed=3)) == _assign(items, SplitConfig(seed=3))
    assert _assign(items, SplitConfig(seed=3)) != _assign(items, SplitConfig(seed=4))


def test_stable_when_data_grows() -> None:
    cfg = SplitConfig(seed=0)
    first = _items(60)
    before = _assign(first, cfg)
    grown = first + _items(40, offset=60) + _items(5, offset=0)[:2]  # new patients + old ones
    after = _assign(grown, cfg, known=before)
    assert all(after[k] == v for k, v in before.items())
    assert len(after) == 100


def test_published_split_is_kept_and_items_without_patient_fall_back() -> None:
    cfg = SplitConfig()
    published = Item(uri="/a", content_hash="ha", source="s", label="x", split=Split.VAL)
    loose = Item(uri="/b", content_hash="hb", source="s", label="x")
    groups = _assign([published, loose], cfg)
    assert split_of(published, cfg, groups) is Split.VAL
    assert group_key(loose, GroupBy.PATIENT) == "item:hb"
    assert "item:ha" not in groups
