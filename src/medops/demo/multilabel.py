"""A small synthetic multi-label chest radiograph set: findings that co-occur, as on real films.

Each image is drawn by :mod:`medops.demo.synthetic`'s renderer (a patient's anatomy is shared by
their images) and gets each finding independently with its own prevalence, so images carry none,
one or several findings. Every finding is a visible pattern at its own place:

- ``Effusion``: fluid filling the lower part of the lung on the image's left (a blunted angle);
- ``Cardiomegaly``: a heart about 1.4x as wide as normal;
- ``Nodule``: a bright round blob high in the lung on the image's right;
- ``Consolidation``: a soft, dense patch high in the lung on the image's left.

Labels come as CSV files, not folders: ``labels.csv`` in NIH ChestX-ray14's format
(``Image Index``, ``Finding Labels`` joined by ``|``, ``No Finding`` for none, ``Patient ID`` and
NIH's other columns) and ``findings.csv`` with one 0/1 column per finding. Same seed, same bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medops.demo.synthetic import (
    _add_pixels,
    _Anatomy,
    _da,
    _header,
    _render,
    _syntax_cycle,
    _write,
)

__all__ = [
    "FINDINGS",
    "NIH_COLUMNS",
    "PREVALENCE",
    "MultilabelDataset",
    "MultilabelImage",
    "write_multilabel_dataset",
]

FINDINGS = ("Effusion", "Cardiomegaly", "Nodule", "Consolidation")
PREVALENCE: dict[str, float] = {"Effusion": 0.35, "Cardiomegaly": 0.3, "Nodule": 0.3,
                                "Consolidation": 0.3}
NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
               "Patient Gender", "View Position"]
_NO_FINDING = "No Finding"


@dataclass(frozen=True)
class MultilabelImage:
    path: Path
    patient_id: str  # the CSV's Patient ID (NIH style: a number)
    findings: tuple[str, ...]  # sorted; () for none
    transfer_syntax: UID


@dataclass(frozen=True)
class MultilabelDataset:
    """What :func:`write_multilabel_dataset` wrote: images in ``images_dir`` and two CSVs."""

    root: Path
    images_dir: Path
    nih_csv: Path  # Image Index, Finding Labels, Patient ID, ...
    columns_csv: Path  # path, patient, one 0/1 column per finding
    findings: tuple[str, ...]  # the findings drawn, in the order given
    images: list[MultilabelImage] = field(default_factory=list)

    def labels_config(self, fmt: str = "nih") -> dict[str, Any]:
        """``data.labels`` for a project whose ``data.source.path`` is ``images_dir``."""
        if fmt == "nih":
            return {"from": "csv", "csv": str(self.nih_csv), "id_column": "Image Index",
                    "label_column": "Finding Labels", "patient_column": "Patient ID"}
        if fmt == "columns":
            return {"from": "csv", "csv": str(self.columns_csv), "id_column": "path",
                    "patient_column": "patient", "finding_columns": list(self.findings)}
        raise ValueError(f"fmt must be 'nih' or 'columns', got {fmt!r}")

    def positives(self) -> dict[str, int]:
        return {f: sum(f in im.findings for im in self.images) for f in self.findings}


def _soft(r2: np.ndarray, edge: float = 0.06) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp((np.sqrt(r2) - 1.0) / edge)))


def _patterns(a: _Anatomy, present: Sequence[str], nodule_jitter: np.ndarray) -> Any:
    """The renderer's ``lesions`` hook drawing ``present`` findings on anatomy ``a``."""

    def draw(x: np.ndarray, y: np.ndarray, lungs: np.ndarray, heart: np.ndarray) -> np.ndarray:
        add = np.zeros_like(x)
        left = lungs * (x < 0)
        if "Effusion" in present:
            level = a.lung_y + 0.1 * a.lung_b
            add += 0.34 * left / (1.0 + np.exp(-(y - level) / 0.04))
        if "Cardiomegaly" in present:
            cy = a.lung_y + 0.45 * a.lung_b
            big = _soft(((x - 0.12) / 0.42) ** 2 + ((y - cy) / 0.30) ** 2)
            add += 0.2 * big * (1.0 - heart)
        if "Nodule" in present:
            nx, ny = a.lung_x + nodule_jitter[0], a.lung_y - 0.5 * a.lung_b + nodule_jitter[1]
            add += 0.45 * _soft(((x - nx) ** 2 + (y - ny) ** 2) / 0.11**2, 0.2)
        if "Consolidation" in present:
            cx, cy = -a.lung_x, a.lung_y - 0.35 * a.lung_b
            add += 0.36 * left * np.exp(-(((x - cx) / 0.2) ** 2 + ((y - cy) / 0.18) ** 2))
        return add

    return draw


def write_multilabel_dataset(
    folder: Path,
    *,
    n_patients: int = 30,
    images_per_patient: int = 3,
    size: int = 32,
    findings: Sequence[str] = FINDINGS[:3],
    prevalence: Mapping[str, float] | None = None,
    seed: int = 0,
) -> MultilabelDataset:
    """Write ``folder/images/SYN-<patient>_<n>.dcm``, ``folder/labels.csv`` (NIH format) and
    ``folder/findings.csv`` (0/1 columns). Each finding has at least one positive and one
    negative image when there are two images or more."""
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown or not 1 <= len(findings) <= len(FINDINGS) or len(set(findings)) < len(findings):
        raise ValueError(f"findings must be distinct names from {list(FINDINGS)}, got "
                         f"{list(findings)}")
    if n_patients < 1 or images_per_patient < 1 or size < 16:
        raise ValueError(f"need n_patients >= 1, images_per_patient >= 1 and size >= 16, got "
                         f"{n_patients}, {images_per_patient}, {size}")
    chance = np.array([(prevalence or PREVALENCE).get(f, PREVALENCE[f]) for f in findings])
    rng = np.random.default_rng(seed)
    n_images = n_patients * images_per_patient
    drawn = rng.random((n_images, len(findings))) < chance
    if n_images >= 2:  # every finding seen and unseen, so it can be learnt and evaluated
        for k in range(len(findings)):
            if not drawn[:, k].any():
                drawn[int(rng.integers(n_images)), k] = True
            if drawn[:, k].all():
                drawn[int(rng.integers(n_images)), k] = False
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    cycle, spacing = _syntax_cycle(), round(400.0 / size, 4)
    images: list[MultilabelImage] = []
    nih_rows: list[list[str]] = []
    for p in range(n_patients):
        pid = f"SYN-{p + 1:04d}"
        patient = Dataset()
        patient.PatientName, patient.PatientID = f"SYNTHETIC^PATIENT{p + 1:04d}", pid
        patient.PatientBirthDate = _da(
            dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 60 * 365))))
        patient.PatientSex = str(rng.choice(["F", "M"]))
        anatomy, cr = _Anatomy.draw(rng), p % 3 == 2
        for i in range(images_per_patient):
            k = p * images_per_patient + i
            present = [f for f, hit in zip(findings, drawn[k], strict=True) if hit]
            ds = _header(rng, seed, p, i, patient, cr)
            ds.SeriesDescription = "synthetic multi-label chest"
            lesions = _patterns(anatomy, present, rng.uniform(-0.06, 0.06, 2))
            image = _render(rng, size, anatomy, [], lesions=lesions)
            values = np.rint(200.0 + 3400.0 * image).astype(np.uint16)
            _add_pixels(ds, values, k % 10 == 7, -1024 if p % 2 else 0, spacing)
            path, syntax = images_dir / f"{pid}_{i + 1:02d}.dcm", cycle[k % len(cycle)]
            _write(ds, syntax, path)
            images.append(MultilabelImage(path, str(p + 1), tuple(sorted(present)), syntax))
            # NIH writes findings in no fixed order: keep the drawing order, not sorted.
            nih_rows.append([path.name, "|".join(present) or _NO_FINDING, str(i), str(p + 1),
                             str(ds.PatientAge).lstrip("0").rstrip("Y"), patient.PatientSex,
                             "PA"])
    nih_csv, columns_csv = folder / "labels.csv", folder / "findings.csv"
    with nih_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(NIH_COLUMNS)
        writer.writerows(nih_rows)
    with columns_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "patient", *findings])
        for im in images:
            writer.writerow([im.path.name, im.patient_id,
                             *(int(x in im.findings) for x in findings)])
    return MultilabelDataset(folder, images_dir, nih_csv, columns_csv, tuple(findings), images)
