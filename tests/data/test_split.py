"""Patient-level, stratified, seeded, stable splits."""

from __future__ import annotations

from collections import Counter

import numpy as np

from medops.config.enums import GroupBy, Task
from medops.config.schema import SplitConfig
from medops.data.labels import format_findings, parse_findings
from medops.data.manifest import build_manifest
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


# -- multilabel ------------------------------------------------------------------------------
FINDINGS = ["Effusion", "Infiltration", "Mass", "Nodule", "Hernia"]


def _ml_items(n_patients: int, rare: dict[str, int] | None = None, seed: int = 0,
              offset: int = 0) -> list[Item]:
    """Patients with 1-3 images; common findings drawn per image with falling prevalence, and
    each finding of ``rare`` on exactly that many patients (all their images)."""
    rng = np.random.default_rng(seed)
    rare = rare or {}
    rare_patients = {f: set(rng.choice(n_patients, n, replace=False).tolist())
                     for f, n in rare.items()}
    items = []
    for p in range(n_patients):
        for i in range(int(rng.integers(1, 4))):
            found = [f for f, prev in zip(FINDINGS, (0.3, 0.2, 0.1, 0.05, 0.02), strict=True)
                     if f not in rare and rng.random() < prev]
            found += [f for f in rare if p in rare_patients[f]]
            items.append(Item(uri=f"/p{p + offset}/{i}", content_hash=f"h{p + offset}-{i}",
                              source="s", label=format_findings(found),
                              patient_id=f"pt-{p + offset}"))
    return items


def _ml_assign(items: list[Item], cfg: SplitConfig,
               known: dict[str, Split] | None = None) -> dict[str, Split]:
    known = dict(known or {})
    return {**known, **assign_splits(items, cfg, known, Task.MULTILABEL)}


def _positives(items: list[Item], cfg: SplitConfig,
               groups: dict[str, Split]) -> dict[Split, Counter[str]]:
    out: dict[Split, Counter[str]] = {s: Counter() for s in Split}
    for item in items:
        out[split_of(item, cfg, groups)].update([*parse_findings(item.label), "all"])
    return out


def test_multilabel_keeps_patients_whole_and_stratifies_every_finding() -> None:
    cfg = SplitConfig(val=0.1, test=0.2, seed=0)
    items = _ml_items(600)
    groups = _ml_assign(items, cfg)
    per_patient: dict[str, set[Split]] = {}
    for item in items:
        per_patient.setdefault(item.patient_id or "", set()).add(split_of(item, cfg, groups))
    assert all(len(s) == 1 for s in per_patient.values())
    pos = _positives(items, cfg, groups)
    total = sum(pos[s]["all"] for s in Split)
    for split, share in ((Split.TRAIN, 0.7), (Split.VAL, 0.1), (Split.TEST, 0.2)):
        assert abs(pos[split]["all"] / total - share) < 0.03, pos
        for finding in FINDINGS:
            n = sum(pos[s][finding] for s in Split)
            # each finding's positives are shared out like the images
            assert abs(pos[split][finding] - share * n) <= max(2.0, 0.1 * n), (finding, pos)


def test_rare_findings_reach_every_split_the_data_allows() -> None:
    cfg = SplitConfig(val=0.1, test=0.2, seed=2)
    items = _ml_items(60, rare={"Hernia": 3, "Mass": 2})
    groups = _ml_assign(items, cfg)
    pos = _positives(items, cfg, groups)
    # 3 patients with Hernia: one in each split, though 10% of 3 rounds to none in val
    assert all(pos[s]["Hernia"] > 0 for s in Split), pos
    # 2 patients with Mass: train and test get one each; val cannot
    assert pos[Split.TRAIN]["Mass"] and pos[Split.TEST]["Mass"] and not pos[Split.VAL]["Mass"]
    # ... and the dataset says so
    manifest = build_manifest([
        {"key": i.key, "uri": i.uri, "frame": None, "content_hash": i.content_hash,
         "label": i.label, "group": group_key(i, cfg.group_by),
         "split": split_of(i, cfg, groups).value, "source": "s"} for i in items],
        Task.MULTILABEL)
    assert manifest.missing_findings() == {"val": ["Mass"]}


def test_multilabel_is_seeded_and_known_groups_never_move() -> None:
    items = _ml_items(80, rare={"Hernia": 4})
    assert _ml_assign(items, SplitConfig(seed=3)) == _ml_assign(items, SplitConfig(seed=3))
    assert _ml_assign(items, SplitConfig(seed=3)) != _ml_assign(items, SplitConfig(seed=4))
    cfg = SplitConfig(seed=0)
    before = _ml_assign(items, cfg)
    grown = items + _ml_items(40, rare={"Mass": 3}, seed=1, offset=80)
    after = _ml_assign(grown, cfg, known=before)
    assert all(after[k] == v for k, v in before.items()) and len(after) == 120
    pos = _positives(grown, cfg, after)
    assert all(pos[s]["Mass"] > 0 for s in Split)  # the new rare finding is spread too
