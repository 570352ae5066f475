"""The synthetic demo dataset: real files written to a temp folder and read back with pydicom."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_encoder
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from medops.demo.synthetic import (
    LABELS,
    NEW_DETECTOR,
    NODULE,
    NORMAL,
    Acquisition,
    Breakage,
    SyntheticDataset,
    SyntheticImage,
    make_synthetic_dataset,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data")


def _digests(root: Path) -> dict[Path, str]:
    return {
        p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _monochrome2(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values as MONOCHROME2: how a correct reader undoes MONOCHROME1 for 12 bits."""
    arr = ds.pixel_array
    return (2**ds.BitsStored - 1) - arr if ds.PhotometricInterpretation == "MONOCHROME1" else arr


def test_layout_and_counts(dataset: SyntheticDataset) -> None:
    root = dataset.root
    assert sorted(p.name for p in root.iterdir()) == sorted(LABELS)
    assert dataset.n_patients == 24
    assert sum(dataset.class_counts.values()) == len(dataset.images) == 24 * 4
    for label in LABELS:
        good = [im.path for im in dataset.images if im.label == label]
        bad = [p for p in dataset.broken_files if p.parent.name == label]
        assert len(good) == dataset.class_counts[label]
        assert sorted(good + bad) == sorted((root / label).glob("*.dcm"))
        assert all(p.parent == root / label for p in good)
    # One label per patient, so patient-level splits are possible; roughly 60/40 by patient.
    labels_of: dict[str, set[str]] = {}
    for im in dataset.images:
        labels_of.setdefault(im.patient_id, set()).add(im.label)
    assert len(labels_of) == 24 and all(len(s) == 1 for s in labels_of.values())
    n_nodule = sum(s == {NODULE} for s in labels_of.values())
    assert 0.3 <= n_nodule / 24 <= 0.5
    assert all(im.n_nodules in (1, 2) for im in dataset.images if im.label == NODULE)
    assert all(im.n_nodules == 0 for im in dataset.images if im.label == NORMAL)


def test_headers(dataset: SyntheticDataset) -> None:
    sop_uids = set()
    for im in dataset.images:
        ds = pydicom.dcmread(im.path)
        assert ds.PatientID == im.patient_id and ds.PatientID.startswith("SYN-")
        assert "SYNTHETIC" in str(ds.PatientName)
        assert "SYNTHETIC" in ds.ImageComments and ds.BurnedInAnnotation == "NO"
        assert ds.InstitutionName == "medops synthetic data"
        assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition == "PA"
        assert ds.PatientSex in ("F", "M") and len(ds.PatientBirthDate) == 8
        expected_class = {
            "DX": DigitalXRayImageStorageForPresentation,
            "CR": ComputedRadiographyImageStorage,
        }[ds.Modality]
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == expected_class
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == im.transfer_syntax
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert UID(uid).is_valid
        sop_uids.add(ds.SOPInstanceUID)
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16,
            12,
            11,
            0,
        )
        assert ds.RescaleSlope == 1 and ds.RescaleIntercept in (0, -1024)
        assert len(ds.PixelSpacing) == 2 and ds.WindowWidth > 0
    assert len(sop_uids) == len(dataset.images)
    modalities = {pydicom.dcmread(im.path).Modality for im in dataset.images}
    intercepts = {pydicom.dcmread(im.path).RescaleIntercept for im in dataset.images}
    assert modalities == {"DX", "CR"} and intercepts == {0, -1024}


def test_deterministic_per_seed(dataset: SyntheticDataset, tmp_path: Path) -> None:
    again = make_synthetic_dataset(tmp_path / "again")
    assert _digests(again.root) == _digests(dataset.root)  # byte for byte, UIDs included
    other = make_synthetic_dataset(tmp_path / "other", seed=1)
    uids = {pydicom.dcmread(im.path).SOPInstanceUID for im in dataset.images}
    other_uids = {pydicom.dcmread(im.path).SOPInstanceUID for im in other.images}
    assert uids.isdisjoint(other_uids)
    assert [im.pixel_sha256 for im in other.images] != [im.pixel_sha256 for im in dataset.images]


def test_corrupt_examples_do_not_change_good_files(
    dataset: SyntheticDataset, tmp_path: Path
) -> None:
    clean = make_synthetic_dataset(tmp_path / "clean", corrupt_examples=False)
    assert clean.broken_files == {}
    broken = {p.relative_to(dataset.root) for p in dataset.broken_files}
    full = {k: v for k, v in _digests(dataset.root).items() if k not in broken}
    assert _digests(clean.root) == full


def test_every_transfer_syntax_round_trips(dataset: SyntheticDataset) -> None:
    expected = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless}
    if get_encoder(JPEGLSLossless).is_available:
        expected.add(JPEGLSLossless)
    assert set(dataset.transfer_syntaxes) == expected
    seen = set()
    for im in dataset.images:
        ds = pydicom.dcmread(im.path)
        assert ds.file_meta.TransferSyntaxUID.is_compressed == im.transfer_syntax.is_compressed
        values = _monochrome2(ds)
        assert values.dtype == np.uint16 and values.shape == (64, 64)
        assert values.max() <= 4095
        assert hashlib.sha256(values.astype("<u2").tobytes()).hexdigest() == im.pixel_sha256
        seen.add(im.transfer_syntax)
    assert seen == expected
    # Every class sees every syntax, so a codec problem cannot pose as a class signal.
    for label in LABELS:
        assert {im.transfer_syntax for im in dataset.images if im.label == label} == expected


def test_monochrome1_is_stored_inverted(dataset: SyntheticDataset) -> None:
    by_photometric: dict[str, list[np.ndarray]] = {"MONOCHROME1": [], "MONOCHROME2": []}
    for im in dataset.images:
        ds = pydicom.dcmread(im.path)
        assert ds.PhotometricInterpretation == im.photometric
        by_photometric[im.photometric].append(ds.pixel_array.astype(float))
    assert 0 < len(by_photometric["MONOCHROME1"]) < len(dataset.images) / 4

    def air_minus_spine(a: np.ndarray) -> float:
        # Outside the body (top corners) is air; the middle column is mediastinum and spine.
        return float(np.r_[a[:8, :4].ravel(), a[:8, -4:].ravel()].mean() - a[:, 30:34].mean())

    for raw in by_photometric["MONOCHROME2"]:
        assert air_minus_spine(raw) < -500  # air dark in MONOCHROME2
    for raw in by_photometric["MONOCHROME1"]:
        assert air_minus_spine(raw) > 500  # air bright as stored in MONOCHROME1
        assert air_minus_spine(4095 - raw) < -500  # and dark once inverted


def test_broken_files_are_broken_as_recorded(dataset: SyntheticDataset) -> None:
    assert set(dataset.broken_files.values()) == set(Breakage)
    good_size = dataset.images[0].path.stat().st_size
    for path, how in dataset.broken_files.items():
        assert path.parent.name in LABELS and path.suffix == ".dcm"
        if how is Breakage.NOT_DICOM:
            with pytest.raises(InvalidDicomError):
                pydicom.dcmread(path)
            assert path.read_text(encoding="utf-8").startswith("This is not a DICOM file")
        elif how is Breakage.NO_PIXEL_DATA:
            ds = pydicom.dcmread(path)
            assert "PixelData" not in ds and ds.Rows == 64 and ds.PatientID.startswith("SYN-")
        else:
            assert how is Breakage.TRUNCATED
            assert path.stat().st_size < good_size
            ds = pydicom.dcmread(path)  # the header is intact; the pixels are not
            with pytest.raises(ValueError, match="less than expected"):
                _ = ds.pixel_array
    broken_uids = {
        pydicom.dcmread(p).SOPInstanceUID
        for p, how in dataset.broken_files.items()
        if how is not Breakage.NOT_DICOM
    }
    good_uids = {pydicom.dcmread(im.path).SOPInstanceUID for im in dataset.images}
    assert broken_uids.isdisjoint(good_uids)  # broken, not duplicates of good files


def _blob_score(a: np.ndarray) -> float:
    """Largest excess of a 3x3 mean over its surrounding 11x11 ring: high for small bright
    round spots, low for ribs (bands) and the heart (large)."""
    box = {k: sliding_window_view(a, (k, k)).mean(axis=(-1, -2)) for k in (3, 7, 11)}
    ring = (box[11] * 121 - box[7][2:-2, 2:-2] * 49) / 72
    return float((box[3][4:-4, 4:-4] - ring).max())


def test_classes_are_separable_by_a_blob_statistic(dataset: SyntheticDataset) -> None:
    scores = {
        label: np.array(
            [
                _blob_score(_monochrome2(pydicom.dcmread(im.path)).astype(float))
                for im in dataset.images
                if im.label == label
            ]
        )
        for label in LABELS
    }
    assert scores[NODULE].mean() > scores[NORMAL].mean() + 200
    # Mann-Whitney AUC: a nodule image out-scores a normal one almost always.
    auc = (scores[NODULE][:, None] > scores[NORMAL][None, :]).mean()
    assert auc > 0.95


def test_small_and_odd_sizes(tmp_path: Path) -> None:
    one = make_synthetic_dataset(tmp_path / "one", n_patients=1, images_per_patient=1, size=32)
    assert one.class_counts == {NORMAL: 1, NODULE: 0} and len(one.broken_files) == 3
    assert pydicom.dcmread(one.images[0].path).pixel_array.shape == (32, 32)
    two = make_synthetic_dataset(tmp_path / "two", n_patients=2, images_per_patient=1)
    assert two.class_counts == {NORMAL: 1, NODULE: 1}
    with pytest.raises(ValueError, match="n_patients"):
        make_synthetic_dataset(tmp_path / "none", n_patients=0)


def _noise(values: np.ndarray, gain: float) -> float:
    """Pixel-to-pixel noise in units of the image's [0, 1] range (anatomy is smooth at this
    scale, so neighbouring differences are mostly noise)."""
    return float(np.median(np.abs(np.diff(values.astype(float), axis=1)))) / gain


def test_a_new_detector_brings_new_patients_and_other_pixels(
    dataset: SyntheticDataset, tmp_path: Path
) -> None:
    new = make_synthetic_dataset(
        tmp_path / "new", n_patients=6, seed=1, first_patient=101, acquisition=NEW_DETECTOR,
        corrupt_examples=False,
    )
    assert {im.patient_id for im in new.images} == {f"SYN-{n:04d}" for n in range(101, 107)}
    assert {im.path.name for im in new.images}.isdisjoint(im.path.name for im in dataset.images)
    uids = {pydicom.dcmread(im.path).SOPInstanceUID for im in dataset.images}
    assert uids.isdisjoint(pydicom.dcmread(im.path).SOPInstanceUID for im in new.images)

    def pixels(images: list[SyntheticImage]) -> list[np.ndarray]:
        return [_monochrome2(pydicom.dcmread(im.path)) for im in images]

    old_px, new_px = pixels(dataset.images[:24]), pixels(new.images)
    lo, hi = NEW_DETECTOR.offset, NEW_DETECTOR.offset + NEW_DETECTOR.gain
    assert all(lo <= a.min() and a.max() <= hi for a in new_px)  # its narrower range
    assert max(a.max() for a in old_px) > hi and min(a.min() for a in old_px) < lo
    old_noise = np.median([_noise(a, Acquisition().gain) for a in old_px])
    new_noise = np.median([_noise(a, NEW_DETECTOR.gain) for a in new_px])
    assert new_noise > 2 * old_noise  # 3x the quantum noise, relative to the range
    with pytest.raises(ValueError, match="offset \\+ gain <= 4095"):
        Acquisition(offset=1000, gain=3500)
    with pytest.raises(ValueError, match="first_patient"):
        make_synthetic_dataset(tmp_path / "bad", first_patient=0)


def test_default_dataset_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    make_synthetic_dataset(tmp_path / "timed")
    assert time.perf_counter() - start < 5.0
