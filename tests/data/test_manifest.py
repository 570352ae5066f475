"""The dataset version is the hash of what defines the dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

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
