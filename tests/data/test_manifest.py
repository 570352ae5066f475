"""The dataset version is the hash of what defines the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medops.config.enums import Task
from medops.data.manifest import build_manifest, load_manifest, save_manifest, sort_classes
from medops.errors import DataError


def _rows(uri_prefix: str = "/a") -> list[dict[str, object]]:
    return [{"key": f"k{i}", "uri": f"{uri_prefix}/{i}.png", "frame": None,
             "content_hash": f"k{i}", "label": str(i % 3), "group": f"item:k{i}",
             "split": ["train", "val", "test"][i % 3], "source": "s"} for i in range(12)]


def test_version_is_content_hash_independent_of_order_and_location(tmp_path: Path) -> None:
    a = build_manifest(_rows())
    b = build_manifest(list(reversed(_rows("/moved"))))
    assert a.version == b.version and a.version.startswith("ds-")
    changed = _rows()
    changed[0]["label"] = "2"
    assert build_manifest(changed).version != a.version


def test_roundtrip_parquet(tmp_path: Path) -> None:
    m = build_manifest(_rows())
    save_manifest(m, tmp_path / m.version)
    back = load_manifest(tmp_path / m.version)
    assert back.version == m.version and back.classes == ["0", "1", "2"]
    assert len(back.split("train")) == 4 and set(back.frame["label_index"]) == {0, 1, 2}
    assert m.counts()["test"] == {"2": 4}


def test_numeric_classes_sort_numerically_and_empty_is_an_error() -> None:
    assert sort_classes(["10", "2", "1"]) == ["1", "2", "10"]
    assert sort_classes(["normal", "effusion"]) == ["effusion", "normal"]
    with pytest.raises(DataError):
        build_manifest([])


def _ml_rows() -> list[dict[str, object]]:
    labels = ["Effusion|Cardiomegaly", "No Finding", "Effusion", "Cardiomegaly|Effusion",
              "Mass", "No Finding"]
    splits = ["train", "train", "val", "test", "train", "test"]
    return [{"key": f"k{i}", "uri": f"/a/{i}.dcm", "frame": None, "content_hash": f"k{i}",
             "label": label, "group": f"patient:{i // 2}", "split": split, "source": "s"}
            for i, (label, split) in enumerate(zip(labels, splits, strict=True))]


def test_multilabel_targets_counts_and_task_round_trip(tmp_path: Path) -> None:
    m = build_manifest(_ml_rows(), Task.MULTILABEL)
    assert m.task is Task.MULTILABEL and m.classes == ["Cardiomegaly", "Effusion", "Mass"]
    assert m.frame["label"].tolist()[0] == "Cardiomegaly|Effusion"  # one spelling per set
    assert set(m.frame["label_index"]) == {-1}
    y = m.targets("train")
    assert y.dtype == np.float32 and y.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert m.targets("test").tolist() == [[1, 1, 0], [0, 0, 0]]
    assert m.counts() == {"train": {"Cardiomegaly": 1, "Effusion": 1, "Mass": 1,
                                    "No Finding": 1},
                          "val": {"Effusion": 1},
                          "test": {"Cardiomegaly": 1, "Effusion": 1, "No Finding": 1}}
    assert m.missing_findings() == {"test": ["Mass"], "val": ["Cardiomegaly", "Mass"]}

    save_manifest(m, tmp_path / m.version)
    assert json.loads((tmp_path / m.version / "classes.json").read_text()) == {
        "task": "multilabel", "classes": ["Cardiomegaly", "Effusion", "Mass"]}
    back = load_manifest(tmp_path / m.version)
    assert back.task is Task.MULTILABEL and back.classes == m.classes
    np.testing.assert_array_equal(back.targets("train"), y)
    # The same rows as a multiclass dataset are another dataset version.
    assert build_manifest(_ml_rows()).version != m.version


def test_multiclass_targets_and_versions_are_unchanged(tmp_path: Path) -> None:
    m = build_manifest(_rows())
    # the id that this manifest had before manifests stored their task
    assert m.version == "ds-5b33ae4b15ed"
    assert m.targets("val").tolist() == [1, 1, 1, 1] and m.targets("val").dtype == np.int64
    assert m.missing_findings() == {}


def test_old_class_list_format_is_read_as_multiclass(tmp_path: Path) -> None:
    m = build_manifest(_rows())
    save_manifest(m, tmp_path / m.version)
    (tmp_path / m.version / "classes.json").write_text(json.dumps(["0", "1", "2"]))
    back = load_manifest(tmp_path / m.version)
    assert back.task is Task.MULTICLASS and back.classes == ["0", "1", "2"]
    assert back.targets("test").tolist() == [2, 2, 2, 2]


def test_multilabel_without_any_finding_is_an_error() -> None:
    rows = _ml_rows()
    for row in rows:
        row["label"] = "No Finding"
    with pytest.raises(DataError, match="no image has a finding"):
        build_manifest(rows, Task.MULTILABEL)
