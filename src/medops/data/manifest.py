"""The dataset version: an immutable Parquet manifest whose id is the hash of its content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medops.errors import DataError

COLUMNS = ["key", "uri", "frame", "content_hash", "label", "label_index", "group", "split",
           "source"]


@dataclass(frozen=True)
class Manifest:
    version: str
    frame: pd.DataFrame
    classes: list[str]

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name].reset_index(drop=True)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: count}}."""
        table = self.frame.groupby(["split", "label"]).size()
        out: dict[str, dict[str, int]] = {}
        for (split, label), n in table.items():
            out.setdefault(str(split), {})[str(label)] = int(n)
        return out


def sort_classes(labels: Sequence[str]) -> list[str]:
    """Numeric labels sort numerically ("2" before "10"), others alphabetically."""
    unique = set(labels)
    if all(lbl.lstrip("-").isdigit() for lbl in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def build_manifest(rows: Sequence[Mapping[str, object]]) -> Manifest:
    if not rows:
        raise DataError("no usable items: nothing to build a dataset from")
    frame = pd.DataFrame(rows)
    classes = sort_classes([str(v) for v in frame["label"]])
    frame["label_index"] = frame["label"].map({c: i for i, c in enumerate(classes)})
    frame["frame"] = frame["frame"].astype("Int64")
    frame = frame[COLUMNS].sort_values("key", kind="stable").reset_index(drop=True)
    # The version hashes what defines the dataset (content, label, split), not the file bytes of
    # the Parquet, which vary with the writer's version; moving files keeps the version.
    canon = frame[["key", "label", "split"]].to_csv(index=False)
    digest = hashlib.sha256((json.dumps(classes) + canon).encode()).hexdigest()
    return Manifest(version=f"ds-{digest[:12]}", frame=frame, classes=classes)


def save_manifest(manifest: Manifest, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        manifest.frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        (folder / "classes.json").write_text(json.dumps(manifest.classes))
    return path


def load_manifest(folder: Path) -> Manifest:
    path = folder / "manifest.parquet"
    if not path.is_file():
        raise DataError(f"no dataset manifest at {path}")
    classes = json.loads((folder / "classes.json").read_text())
    return Manifest(version=folder.name, frame=pd.read_parquet(path), classes=classes)
