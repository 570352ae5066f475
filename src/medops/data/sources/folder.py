"""A folder of DICOM, PNG and JPEG files, labelled by sub-folder name or by a CSV."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from medops.config.enums import FrameMode, LabelsFrom
from medops.config.schema import LabelsConfig
from medops.data.hashing import pseudonym
from medops.data.items import items_for_file
from medops.errors import ConfigError, LabelError
from medops.storage.records import Item

_IGNORED = {".csv", ".txt", ".md", ".json", ".yaml", ".yml", ".ds_store"}


class FolderSource:
    """Every file under ``root``; DICOM is recognised by extension or by its preamble."""

    def __init__(self, root: Path, labels: LabelsConfig, frames: FrameMode = FrameMode.MIDDLE,
                 name: str | None = None, csv_root: Path | None = None) -> None:
        if not root.is_dir():
            raise ConfigError(f"data.source.path: {root} is not a folder")
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
            row = self._csv.get(rel)
            if row is None:
                return None, None
            return row
        parts = rel.split("/")
        return (parts[0] if len(parts) > 1 else None), None

    def _read_csv(self, csv_root: Path) -> dict[str, tuple[str | None, str | None]]:
        cfg = self.labels
        path = Path(cfg.csv or "")
        path = path if path.is_absolute() else csv_root / path
        if not path.is_file():
            raise ConfigError(f"data.labels.csv: {path} does not exist")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for col in (cfg.id_column, cfg.label_column, cfg.patient_column):
                if col and col not in columns:
                    raise LabelError(f"{path}: no column {col!r}; the columns are {columns}")
            out: dict[str, tuple[str | None, str | None]] = {}
            for row in reader:
                patient = row.get(cfg.patient_column) if cfg.patient_column else None
                out[row[cfg.id_column].strip().lstrip("./")] = (
                    row[cfg.label_column].strip() or None,
                    pseudonym(patient, "pt") if patient else None,
                )
        return out



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
