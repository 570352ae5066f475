"""Display values (modality LUT -> VOI LUT or window -> MONOCHROME1) against pydicom's own
functions run over every pixel of real images: 512x512 to 1760x1760, signed and unsigned, with
rescale, window, Modality and VOI LUT sequences, MONOCHROME1; and the per-frame values of
Enhanced multi-frame functional groups, however their sequences are encoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from medops.config.enums import WindowMode
from medops.data import dicom
from medops.data.images import read_pixels, read_pixels_with_range, read_stored_values


def _pydicom_display(stored: np.ndarray, ds: Dataset, window: WindowMode) -> np.ndarray:
    """pydicom's stages over every pixel, as float32, before any MONOCHROME1 reflection."""
    values = apply_modality_lut(stored, ds)
    if window is WindowMode.AUTO:
        seq = ds.get("VOILUTSequence")
        if seq:
            values = apply_voi(np.rint(values).astype(np.int64), ds)
        elif "WindowCenter" in ds:
            values = apply_windowing(values, ds)
    return np.asarray(values, dtype=np.float32)


def _nema(shared: Path) -> list[Path]:
    folder = shared / "dicom/nema_wg04_uncompressed"
    grey = [p for p in sorted(folder.glob("*.dcm")) if not p.name.startswith(("US", "VL"))]
    return [*grey, shared / "dicom/htj2k/RG3_JPH.dcm"]  # the MONOCHROME1 one, 1760x1760


@pytest.mark.parametrize("window", list(WindowMode))
def test_display_values_equal_pydicom_over_every_pixel(
    shared_data: Path, window: WindowMode
) -> None:
    """Windowed frames are looked up in a table of stored values; the values must be those of
    pydicom's functions over the whole image, bit for bit."""
    checked = set()
    for path in _nema(shared_data):
        ds = pydicom.dcmread(path)
        stored = read_stored_values(path)
        expected = _pydicom_display(stored, ds, window)
        actual, (lo, hi) = read_pixels_with_range(path, window=window)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            expected = np.float32(lo + hi) - expected
            checked.add("MONOCHROME1")
        np.testing.assert_array_equal(actual, expected, err_msg=path.name)
        checked.update(kw for kw in ("RescaleSlope", "WindowCenter") if kw in ds)
        checked.add(stored.dtype.name)
    assert checked >= {"MONOCHROME1", "RescaleSlope", "WindowCenter", "int16", "uint16"}


def test_modality_and_voi_lut_sequences_over_a_whole_image(
    shared_data: Path, tmp_path: Path
) -> None:
    """A Modality LUT starting below zero on signed CT values, and a VOI LUT on a 12-bit MR."""
    ct = pydicom.dcmread(shared_data / "dicom/nema_wg04_uncompressed/CT1_UNC.dcm")
    del ct.RescaleSlope, ct.RescaleIntercept
    item = Dataset()
    item.add_new("LUTDescriptor", "SS", [4096, -1024, 16])  # signed data: first value SS
    item.add_new("LUTData", "US", [(i * 13) % 65536 for i in range(4096)])
    ct.ModalityLUTSequence = Sequence([item])
    mr = pydicom.dcmread(shared_data / "dicom/nema_wg04_uncompressed/MR4_UNC.dcm")
    for kw in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if kw in mr:
            delattr(mr, kw)
    voi = Dataset()
    voi.add_new("LUTDescriptor", "US", [2048, 100, 16])
    voi.add_new("LUTData", "US", [min(i * 40, 65535) for i in range(2048)])
    mr.VOILUTSequence = Sequence([voi])
    for name, ds in (("mlut.dcm", ct), ("vlut.dcm", mr)):
        ds.save_as(tmp_path / name)
        stored = ds.pixel_array
        for window in WindowMode:
            np.testing.assert_array_equal(
                read_pixels(tmp_path / name, window=window),
                _pydicom_display(stored, ds, window),
                err_msg=f"{name} {window}",
            )


def _enhanced(path: Path, frames: np.ndarray, *, defined_length: bool) -> Path:
    """A 3-frame Enhanced-style file: rescale in the shared functional group, a different
    window in each frame's group; sequences of defined or undefined length."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2.1")  # Enhanced CT
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for i in range(len(frames)):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = 40 + 300 * i, 400 + 500 * i
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    if defined_length:  # as some modalities write them: pydicom then keeps them as raw bytes
        for kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            ds[kw].is_undefined_length = False
            for group in ds[kw].value:
                group.is_undefined_length_sequence_item = False
                for elem in group:
                    elem.is_undefined_length = False
                    for item in elem.value:
                        item.is_undefined_length_sequence_item = False
    ds.PixelData = frames.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("encoding", ["undefined length", "defined length", "parsed"])
def test_per_frame_functional_groups_rescale_and_window(
    shared_data: Path, tmp_path: Path, encoding: str
) -> None:
    """pydicom leaves the groups as raw bytes until asked (both lengths), which medops searches
    before parsing; a header whose groups were already parsed ("parsed") is read as such."""
    xa = read_stored_values(shared_data / "dicom/nema_wg04_uncompressed/XA1_UNC.dcm")
    frames = np.stack([np.roll(xa[:256, :256], 40 * i, axis=1) for i in range(3)]) * 4
    path = _enhanced(tmp_path / "enhanced.dcm", frames, defined_length=encoding == "defined length")
    raw = pydicom.dcmread(path, stop_before_pixels=True)
    assert isinstance(raw.get_item("PerFrameFunctionalGroupsSequence").value, bytes)
    for i, frame in enumerate(frames):
        flat = Dataset()  # what the frame's groups say, at the top level where pydicom looks
        flat.PhotometricInterpretation, flat.PixelRepresentation, flat.BitsStored = (
            "MONOCHROME2",
            0,
            12,
        )
        flat.RescaleSlope, flat.RescaleIntercept = 1, -1024
        flat.WindowCenter, flat.WindowWidth = 40 + 300 * i, 400 + 500 * i
        for window in WindowMode:
            np.testing.assert_array_equal(
                _display(path, i, window, parsed=encoding == "parsed"),
                _pydicom_display(frame, flat, window),
                err_msg=f"frame {i} {window}",
            )


def _display(path: Path, index: int, window: WindowMode, *, parsed: bool) -> np.ndarray:
    if not parsed:
        return read_pixels(path, frame=index, window=window)
    with path.open("rb") as f:
        header = dicom.read_header(f, path.name)
        assert len(header.dataset.PerFrameFunctionalGroupsSequence) == 3  # parses it
        stored = dicom.decode_stored(f, header, index)
    return dicom.to_display(stored, header, index, window)
