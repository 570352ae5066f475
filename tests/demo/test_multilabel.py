"""The synthetic multi-label set: real DICOM and CSV files, read back with pydicom and csv."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medops.config.enums import Task
from medops.config.schema import LabelsConfig
from medops.data.label_csv import read_label_csv
from medops.data.labels import format_findings
from medops.demo.multilabel import FINDINGS, NIH_COLUMNS, MultilabelDataset
from medops.demo.synthetic import write_multilabel_dataset

SIZE = 64
# Where each finding is drawn, as (rows, columns) of a 64 px image.
REGIONS = {"Effusion": (slice(36, 50), slice(10, 26)),
           "Cardiomegaly": (slice(34, 46), slice(24, 46)),
           "Nodule": (slice(14, 26), slice(42, 56)),
           "Consolidation": (slice(14, 28), slice(8, 22))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> MultilabelDataset:
    return write_multilabel_dataset(tmp_path_factory.mktemp("ml") / "set", n_patients=20,
                                    images_per_patient=3, size=SIZE, findings=FINDINGS)


def _image(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    values = ds.pixel_array.astype(float)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = (2**ds.BitsStored - 1) - values
    return (values - values.mean()) / values.std()


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = score[positive], score[~positive]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_files_patients_and_cooccurring_findings(dataset: MultilabelDataset) -> None:
    assert len(dataset.images) == 60 and dataset.findings == FINDINGS
    assert sorted(p.name for p in dataset.images_dir.iterdir()) == sorted(
        im.path.name for im in dataset.images)
    patients: dict[str, int] = {}
    for im in dataset.images:
        ds = pydicom.dcmread(im.path)
        assert ds.PatientID == f"SYN-{int(im.patient_id):04d}" and "SYNTHETIC" in ds.ImageComments
        assert ds.Rows == ds.Columns == SIZE
        assert ds.file_meta.TransferSyntaxUID == im.transfer_syntax
        patients[im.patient_id] = patients.get(im.patient_id, 0) + 1
    assert set(patients.values()) == {3}
    sizes = [len(im.findings) for im in dataset.images]
    assert 0 in sizes and max(sizes) >= 2  # images with none, and findings together
    assert all(0 < n < 60 for n in dataset.positives().values())
    assert len({im.transfer_syntax for im in dataset.images}) >= 4


def test_csvs_list_the_drawn_findings(dataset: MultilabelDataset) -> None:
    with dataset.nih_csv.open(newline="") as f:
        nih = list(csv.DictReader(f))
    assert list(nih[0]) == NIH_COLUMNS
    truth = {im.path.name: im for im in dataset.images}
    assert {r["Image Index"] for r in nih} == set(truth)
    for row in nih:
        im = truth[row["Image Index"]]
        listed = [] if row["Finding Labels"] == "No Finding" else row["Finding Labels"].split("|")
        assert sorted(listed) == list(im.findings)
        assert row["Patient ID"] == im.patient_id
    assert any("|" in r["Finding Labels"] for r in nih)
    # Both CSVs read through medops give the same labels.
    nih_labels = read_label_csv(dataset.nih_csv, LabelsConfig(**dataset.labels_config("nih")),
                                Task.MULTILABEL)
    col_labels = read_label_csv(dataset.columns_csv,
                                LabelsConfig(**dataset.labels_config("columns")), Task.MULTILABEL)
    assert nih_labels == col_labels
    assert {k: v[0] for k, v in nih_labels.items()} == {
        name: format_findings(im.findings) for name, im in truth.items()}


def test_each_finding_is_drawn_where_it_belongs(dataset: MultilabelDataset) -> None:
    images = np.stack([_image(im.path) for im in dataset.images])
    for finding, (rows, cols) in REGIONS.items():
        positive = np.array([finding in im.findings for im in dataset.images])
        score = images[:, rows, cols].mean(axis=(1, 2))
        assert _auc(score, positive) > 0.9, finding


def test_deterministic_and_checked_arguments(dataset: MultilabelDataset, tmp_path: Path) -> None:
    def digests(ds: MultilabelDataset) -> list[str]:
        files = [im.path for im in ds.images] + [ds.nih_csv, ds.columns_csv]
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]

    again = write_multilabel_dataset(tmp_path / "again", n_patients=20, images_per_patient=3,
                                     size=SIZE, findings=FINDINGS)
    assert digests(again) == digests(dataset)
    with pytest.raises(ValueError, match="findings must be distinct names"):
        write_multilabel_dataset(tmp_path / "bad", findings=["Effusion", "Pneumonia"])
    with pytest.raises(ValueError, match="n_patients >= 1"):
        write_multilabel_dataset(tmp_path / "bad", n_patients=0)
