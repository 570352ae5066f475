"""The dataset version: an immutable Parquet manifest whose id is the hash of its content.

A manifest knows its task. ``classes`` are the model's outputs: the classes (multiclass) or the
findings (multilabel, where each row's ``label`` is the canonical finding string and
``label_index`` is -1). :meth:`Manifest.targets` gives the training targets of a split.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medops.config.enums import Task
from medops.data.labels import NO_FINDING, LabelTask, format_findings, label_task, parse_findings
from medops.errors import DataError

COLUMNS = ["key", "uri", "frame", "content_hash", "label", "label_index", "group", "split",
           "source"]
CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class Manifest:
    version: str
    frame: pd.DataFrame
    classes: list[str]
    task: Task = Task.MULTICLASS

    @property
    def labels(self) -> LabelTask:
        return label_task(self.task)

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name].reset_index(drop=True)

    def targets(self, name: str) -> np.ndarray:
        """The training targets of split ``name`` in row order of :meth:`split`: class indices
        (N,) int64, or a multi-hot matrix (N, len(classes)) float32."""
        return self.labels.targets([str(v) for v in self.split(name)["label"]], self.classes)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: count}}; for multilabel {split: {finding: positives}} with the
        images without any finding under ``No Finding``."""
        out: dict[str, dict[str, int]] = {}
        if self.labels.multilabel:
            for split, labels in self.frame.groupby("split")["label"]:
                seen: Counter[str] = Counter()
                for label in labels:
                    findings = parse_findings(str(label))
                    seen.update(findings or (NO_FINDING,))
                out[str(split)] = {k: seen[k] for k in [*self.classes, NO_FINDING] if seen[k]}
            return out
        table = self.frame.groupby(["split", "label"]).size()
        for (split, label), n in table.items():
            out.setdefault(str(split), {})[str(label)] = int(n)
        return out

    def missing_findings(self) -> dict[str, list[str]]:
        """{split: findings with no positive there} (multilabel; empty for multiclass)."""
        if not self.labels.multilabel:
            return {}
        counts = self.counts()
        return {s: [f for f in self.classes if not counts.get(s, {}).get(f)]
                for s in sorted(set(self.frame["split"]))
                if any(not counts.get(s, {}).get(f) for f in self.classes)}


def sort_classes(labels: Sequence[str]) -> list[str]:
    """Numeric labels sort numerically ("2" before "10"), others alphabetically."""
    unique = set(labels)
    if all(lbl.lstrip("-").isdigit() for lbl in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def build_manifest(rows: Sequence[Mapping[str, object]],
                   task: Task = Task.MULTICLASS) -> Manifest:
    if not rows:
        raise DataError("no usable items: nothing to build a dataset from")
    frame = pd.DataFrame(rows)
    labels = label_task(task)
    if labels.multilabel:  # one spelling per set of findings, whatever the source wrote
        frame["label"] = [format_findings(parse_findings(str(v))) for v in frame["label"]]
    classes = labels.classes([str(v) for v in frame["label"]])
    if labels.multilabel:
        if not classes:
            raise DataError(f"task is multilabel but no image has a finding (all are "
                            f"{NO_FINDING!r}); check data.labels")
        frame["label_index"] = -1
    else:
        frame["label_index"] = frame["label"].map({c: i for i, c in enumerate(classes)})
    frame["frame"] = frame["frame"].astype("Int64")
    frame = frame[COLUMNS].sort_values("key", kind="stable").reset_index(drop=True)
    # The version hashes what defines the dataset (content, label, split), not the file bytes of
    # the Parquet, which vary with the writer's version; moving files keeps the version.
    # A multiclass manifest hashes as it always did, so existing versions keep their ids.
    canon = frame[["key", "label", "split"]].to_csv(index=False)
    head = json.dumps({"task": str(task), "classes": classes}) if labels.multilabel \
        else json.dumps(classes)
    digest = hashlib.sha256((head + canon).encode()).hexdigest()
    return Manifest(version=f"ds-{digest[:12]}", frame=frame, classes=classes, task=Task(task))


def save_manifest(manifest: Manifest, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        manifest.frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        (folder / CLASSES_FILE).write_text(
            json.dumps({"task": str(manifest.task), "classes": manifest.classes}))
    return path


def load_manifest(folder: Path) -> Manifest:
    path = folder / "manifest.parquet"
    if not path.is_file():
        raise DataError(f"no dataset manifest at {path}")
    meta = json.loads((folder / CLASSES_FILE).read_text())
    if isinstance(meta, list):  # written before manifests stored their task: multiclass
        meta = {"task": str(Task.MULTICLASS), "classes": meta}
    return Manifest(version=folder.name, frame=pd.read_parquet(path),
                    classes=[str(c) for c in meta["classes"]], task=Task(meta["task"]))
