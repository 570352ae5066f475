"""A folder of DICOM, PNG and JPEG files, labelled by sub-folder name or by a CSV."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from medops.config.enums import FrameMode, LabelsFrom
from medops.config.schema import LabelsConfig
from medops.data.hashing import file_sha256, pseudonym
from medops.data.images import ImageFormat, ImageInfo, probe, sniff_format
from medops.errors import ConfigError, DataError, LabelError
from medops.storage.records import Item, ItemStatus

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
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            if path.name.startswith(".") or path.suffix.lower() in _IGNORED:
                continue
            yield from self._items_for(path)

    def _items_for(self, path: Path) -> Iterator[Item]:
        rel = path.relative_to(self.root).as_posix()
        digest = file_sha256(path)
        base = Item(uri=str(path), content_hash=digest, source=self.name)
        try:
            base.label, patient = self._label_and_patient(rel)
            fmt = sniff_format(path)
            if fmt is None:
                raise DataError("not a DICOM, PNG or JPEG file")
            info = probe(path)
        except DataError as exc:
            base.status, base.reason = ItemStatus.QUARANTINED, str(exc)
            yield base
            return
        base.info = _info_dict(info)
        base.patient_id = patient or (pseudonym(info.patient_id, "pt") if info.patient_id else None)
        # UIDs identify studies as surely as names do; only their equality is needed here.
        base.study_uid = pseudonym(info.study_uid, "st") if info.study_uid else None
        base.series_uid = pseudonym(info.series_uid, "se") if info.series_uid else None
        if fmt is ImageFormat.DICOM and info.n_frames > 1 and self.frames is FrameMode.EACH:
            for frame in range(info.n_frames):
                yield Item(**{**base.__dict__, "frame": frame, "info": dict(base.info)})
        else:
            yield base

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


def _info_dict(info: ImageInfo) -> dict[str, object]:
    return {"format": str(info.format), "rows": info.rows, "cols": info.cols,
            "frames": info.n_frames, "samples": info.samples_per_pixel,
            "photometric": info.photometric, "transfer_syntax": info.transfer_syntax,
            "modality": info.modality}
