"""A folder of DICOM, PNG and JPEG files, labelled by sub-folder name or by a CSV.

Folder names give one class per image, so a ``task: multilabel`` project takes its findings from
a CSV (:mod:`medops.data.label_csv`); folder-name labels there are a ConfigError with that fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from medops.config.enums import FrameMode, LabelsFrom, Task
from medops.config.schema import LabelsConfig
from medops.data.items import items_for_file
from medops.data.label_csv import LabelRows, read_label_csv
from medops.errors import ConfigError
from medops.storage.records import Item

_IGNORED = {".csv", ".txt", ".md", ".json", ".yaml", ".yml", ".ds_store"}


class FolderSource:
    """Every file under ``root``; DICOM is recognised by extension or by its preamble."""

    def __init__(self, root: Path, labels: LabelsConfig, frames: FrameMode = FrameMode.MIDDLE,
                 name: str | None = None, csv_root: Path | None = None,
                 task: Task = Task.MULTICLASS) -> None:
        if not root.is_dir():
            raise ConfigError(f"data.source.path: {root} is not a folder")
        if Task(task) is Task.MULTILABEL and labels.from_ is LabelsFrom.FOLDER_NAMES:
            raise ConfigError(
                f"task is multilabel but data.labels.from is 'folder-names' ({root}): a folder "
                "name gives one class per image, not a set of findings; fix: data.labels: "
                "{from: csv, csv: FILE, id_column: ..., label_column: 'Finding Labels'} "
                "('|'-separated findings, 'No Finding' for none) or finding_columns: [A, B] "
                "(one 0/1 column per finding)")
        self.task = Task(task)
        self.root = root
        self.name = name or f"folder:{root}"
        self.frames = frames
        self.labels = labels
        self._csv = self._read_csv(csv_root or root) if labels.from_ is LabelsFrom.CSV else None

    def list_items(self) -> Iterator[Item]:
        for path in visible_files(self.root):
            if path.suffix.lower() not in _IGNORED:
                yield from self._items_for(path)

    def items_for_paths(self, paths: Iterable[Path]) -> Iterator[Item]:
        """The items of just these files (a folder watch imports what landed, not it all)."""
        for path in sorted(set(paths)):
            if (path.is_file() and path.is_relative_to(self.root)
                    and not any(p.startswith(".") for p in path.relative_to(self.root).parts)
                    and path.suffix.lower() not in _IGNORED):
                yield from self._items_for(path)

    def _items_for(self, path: Path) -> Iterator[Item]:
        label, patient = self._label_and_patient(path.relative_to(self.root).as_posix())
        yield from items_for_file(path, self.name, label, self.frames, patient)

    def _label_and_patient(self, rel: str) -> tuple[str | None, str | None]:
        if self._csv is not None:
            # A bare file name in the CSV (NIH's Image Index, whose images ship in
            # images_001/images/ ... images_012/images/) matches the file in any sub-folder.
            row = self._csv.get(rel) or self._csv.get(rel.rsplit("/", 1)[-1])
            return row if row is not None else (None, None)
        parts = rel.split("/")
        return (parts[0] if len(parts) > 1 else None), None

    def _read_csv(self, csv_root: Path) -> LabelRows:
        path = Path(self.labels.csv or "")
        path = path if path.is_absolute() else csv_root / path
        if not path.is_file():
            raise ConfigError(f"data.labels.csv: {path} does not exist")
        return read_label_csv(path, self.labels, self.task)


def visible_files(root: Path) -> list[Path]:
    """Files under ``root`` whose names and folders do not start with '.', sorted. Hidden
    folders are pruned, not filtered: a project's .medops (databases, caches, received DICOM)
    or a .git can hold far more files than the images."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [p for p in (Path(folder, n) for n in names if not n.startswith("."))
                  if p.is_file()]
    return sorted(found)
