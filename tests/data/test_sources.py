"""Folder and .npz sources on real files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medops.config.enums import FrameMode, LabelsFrom
from medops.config.schema import LabelsConfig
from medops.data.sources import FolderSource, NpzSource
from medops.errors import ConfigError, DataError, LabelError
from medops.storage import ItemStatus, Split
from tests.samples import pydicom_file


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    (root / "ct").mkdir(parents=True)
    (root / "mr").mkdir()
    shutil.copy(pydicom_file("CT_small.dcm"), root / "ct" / "a.dcm")
    shutil.copy(pydicom_file("CT_small.dcm"), root / "ct" / "no_extension")  # found by its preamble
    shutil.copy(pydicom_file("MR_small.dcm"), root / "mr" / "b.dcm")
    data = pydicom_file("MR_small.dcm").read_bytes()
    (root / "mr" / "truncated.dcm").write_bytes(data[: len(data) // 3])
    (root / "mr" / "notes.dat").write_text("not an image")
    (root / "loose.dcm").write_bytes(pydicom_file("CT_small.dcm").read_bytes())  # no label folder
    (root / "labels.csv").write_text("ignored")
    (root / ".medops" / "cache").mkdir(parents=True)  # hidden folders are never entered
    shutil.copy(pydicom_file("MR_small.dcm"), root / ".medops" / "cache" / "c.dcm")
    shutil.copy(pydicom_file("MR_small.dcm"), root / "mr" / ".hidden.dcm")
    return root


def test_folder_lists_dicom_with_labels_patients_and_quarantine(folder: Path) -> None:
    items = {Path(i.uri).name: i for i in FolderSource(folder, LabelsConfig()).list_items()}
    assert set(items) == {"a.dcm", "no_extension", "b.dcm", "truncated.dcm", "notes.dat",
                          "loose.dcm"}
    assert items["a.dcm"].label == "ct" and items["b.dcm"].label == "mr"
    assert items["a.dcm"].content_hash == items["no_extension"].content_hash
    assert items["a.dcm"].status is ItemStatus.PENDING
    # The PatientID is pseudonymised before it is stored: equality survives, the PHI does not.
    assert items["a.dcm"].patient_id and items["a.dcm"].patient_id.startswith("pt-")
    assert items["a.dcm"].info["format"] == "dicom" and items["a.dcm"].study_uid
    assert items["notes.dat"].status is ItemStatus.QUARANTINED
    assert "not a DICOM" in (items["notes.dat"].reason or "")
    assert items["loose.dcm"].label is None
    hidden = [folder / ".medops" / "cache" / "c.dcm", folder / "mr" / ".hidden.dcm"]
    assert list(FolderSource(folder, LabelsConfig()).items_for_paths(hidden)) == []


def test_truncated_file_is_quarantined_at_listing_or_validation(folder: Path) -> None:
    from medops.data.validate import decode_check

    item = next(i for i in FolderSource(folder, LabelsConfig()).list_items()
                if i.uri.endswith("truncated.dcm"))
    reason = item.reason if item.status is ItemStatus.QUARANTINED else \
        decode_check((item.uri, item.frame))
    assert reason


def test_multiframe_each_frame_is_an_item(tmp_path: Path) -> None:
    root = tmp_path / "raw" / "us"
    root.mkdir(parents=True)
    shutil.copy(pydicom_file("SC_rgb_rle_2frame.dcm"), root / "mf.dcm")
    each = list(FolderSource(tmp_path / "raw", LabelsConfig(), FrameMode.EACH).list_items())
    middle = list(FolderSource(tmp_path / "raw", LabelsConfig(), FrameMode.MIDDLE).list_items())
    assert len(middle) == 1 and middle[0].frame is None
    assert [i.frame for i in each] == list(range(len(each))) and len(each) > 1
    assert len({i.key for i in each}) == len(each)


def test_csv_labels_and_patients(folder: Path) -> None:
    (folder / "labels.csv").write_text(
        "path,label,patient\nct/a.dcm,normal,P1\nmr/b.dcm,abnormal,P2\n")
    cfg = LabelsConfig(**{"from": LabelsFrom.CSV, "csv": "labels.csv",
                          "patient_column": "patient"})
    items = {Path(i.uri).name: i for i in FolderSource(folder, cfg).list_items()}
    assert items["a.dcm"].label == "normal" and items["b.dcm"].label == "abnormal"
    assert items["no_extension"].label is None
    assert items["a.dcm"].patient_id != items["b.dcm"].patient_id
    bad = LabelsConfig(**{"from": LabelsFrom.CSV, "csv": "labels.csv", "label_column": "dx"})
    with pytest.raises(LabelError, match="no column 'dx'"):
        FolderSource(folder, bad)
    missing = LabelsConfig(**{"from": LabelsFrom.CSV, "csv": "nope.csv"})
    with pytest.raises(ConfigError, match="does not exist"):
        FolderSource(folder, missing)


def test_npz_keeps_published_split(tmp_path: Path, shared_data: Path) -> None:
    source = NpzSource(shared_data / "medmnist" / "breastmnist_28.npz", tmp_path / "out")
    items = list(source.list_items())
    by_split = {s: [i for i in items if i.split is s] for s in Split}
    assert [len(by_split[s]) for s in Split] == [546, 78, 156]
    assert {i.label for i in items} == {"0", "1"}
    again = list(source.list_items())  # idempotent: same files, same hashes
    assert [i.content_hash for i in again] == [i.content_hash for i in items]


def test_npz_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.npz"
    np.savez(bad, images=np.zeros((2, 4, 4)))
    (tmp_path / "y.npz").write_text("garbage")
    np.save(tmp_path / "z.npy", np.zeros(3))
    (tmp_path / "z.npy").rename(tmp_path / "z.npz")
    with pytest.raises(DataError, match="MedMNIST format"):
        list(NpzSource(bad, tmp_path / "o").list_items())
    for name in ("y.npz", "z.npz"):  # text, and a .npy renamed: np.load takes both for others
        with pytest.raises(DataError, match=r"not a valid \.npz \(zip\) file") as err:
            list(NpzSource(tmp_path / name, tmp_path / "o").list_items())
        assert "pickle" not in str(err.value)  # never the advice to load it unsafely


def _medmnist(path: Path, **override: np.ndarray) -> Path:
    """A MedMNIST-format file of 4 gray 8x8 images per split, labelled 0/1, with ``override``."""
    arrays: dict[str, Any] = {}  # Any: savez's allow_pickle keyword is typed bool
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.arange(4 * 64, dtype=np.uint8).reshape(4, 8, 8)
        arrays[f"{split}_labels"] = np.array([[0], [1], [0], [1]], dtype=np.uint8)
    np.savez(path, **{**arrays, **override})
    return path


@pytest.mark.parametrize(("override", "message"), [
    ({"test_images": np.random.default_rng(0).random((4, 8, 8))},
     "test_images has dtype float64 and shape (4, 8, 8); expected uint8 images of shape "
     "N x H x W or N x H x W x 3"),
    ({"val_images": np.full((4, 8, 8), np.nan)}, "val_images has dtype float64"),
    ({"val_images": np.zeros(4, np.uint8)}, "val_images has dtype uint8 and shape (4,)"),
    ({"val_images": np.zeros((4, 2, 2, 8, 8), np.uint8)},
     "val_images has dtype uint8 and shape (4, 2, 2, 8, 8)"),
    ({"val_images": np.zeros((4, 8, 8, 1), np.uint8)},
     "val_images has dtype uint8 and shape (4, 8, 8, 1)"),
    ({"test_images": np.zeros((0, 8, 8), np.uint8), "test_labels": np.zeros((0, 1), np.uint8)},
     "test_images holds no image"),
    ({"test_labels": np.zeros((3, 1), np.uint8)}, "test_labels has 3 rows for 4 images"),
    ({"val_labels": np.array([["a"], ["b"], ["a"], ["b"]])},
     "val_labels has dtype <U1; labels must be integer"),
    ({"val_labels": np.array([0.0, 1.0, 0.7, 1.0])}, "val_labels has dtype float64; labels must"),
])
def test_npz_with_malformed_arrays_imports_nothing(tmp_path: Path, override: dict[str, np.ndarray],
                                                   message: str) -> None:
    out = tmp_path / "out"
    source = NpzSource(_medmnist(tmp_path / "x.npz", **override), out)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'x.npz'}: {message}")):
        list(source.list_items())
    assert not out.exists()  # the train split is fine, yet none of its images was written


def test_npz_takes_rgb_images_and_whole_number_float_labels(tmp_path: Path) -> None:
    rgb = np.zeros((4, 8, 8, 3), np.uint8)
    source = NpzSource(_medmnist(tmp_path / "x.npz", train_images=rgb,
                                 train_labels=np.array([0.0, 1.0, 0.0, 1.0])), tmp_path / "out")
    items = list(source.list_items())
    assert len(items) == 12 and {i.label for i in items} == {"0", "1"}
    assert [i.info["samples"] for i in items if i.split is Split.TRAIN] == [3] * 4
