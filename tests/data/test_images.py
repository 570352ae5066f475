"""Image reading against real files: pydicom's test set, the NEMA WG04 HTJ2K/uncompressed pairs,
the SIIM MONOCHROME1 pair, and PNG/JPEG written on the spot."""

from __future__ import annotations

import contextlib
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_voi, apply_windowing, pixel_array
from pydicom.sequence import Sequence

from medops.config.enums import WindowMode
from medops.data.images import (
    ImageFormat,
    probe,
    read_pixels,
    read_stored_values,
    sniff_format,
)
from medops.errors import DataError, UnreadableImageError, UnsupportedImageError
from tests.samples import pydicom_file

# The ``shared_data`` fixture (tests/conftest.py) skips when this folder is missing; the
# constant only lists the HTJ2K pairs at collection time.
SHARED = (Path(__file__).parents[2] / "../shared/data").resolve()
XRAY_MONO2 = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def _htj2k_pairs() -> list[str]:
    return sorted(
        p.name.removesuffix("_JPH.dcm")
        for p in (SHARED / "dicom/htj2k").glob("*.dcm")
        if (SHARED / f"dicom/nema_wg04_uncompressed/{p.name[:-8]}_UNC.dcm").exists()
    )


# -- sniffing and probing -------------------------------------------------------------------------


def test_sniff_by_content_and_extension(tmp_path: Path) -> None:
    ct = pydicom_file("CT_small.dcm").read_bytes()
    (tmp_path / "no_extension").write_bytes(ct)
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (tmp_path / "photo").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    (tmp_path / "broken.png").write_bytes(b"not really")
    (tmp_path / "notes.txt").write_text("hello")
    assert sniff_format(tmp_path / "no_extension") is ImageFormat.DICOM
    assert sniff_format(tmp_path / "image.bin") is ImageFormat.PNG
    assert sniff_format(tmp_path / "photo") is ImageFormat.JPEG
    assert sniff_format(tmp_path / "broken.png") is ImageFormat.PNG  # by extension
    assert sniff_format(tmp_path / "notes.txt") is None
    assert sniff_format(pydicom_file("MR_small_RLE.dcm")) is ImageFormat.DICOM


def test_probe_dicom_header() -> None:
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    info = probe(path)
    assert (info.format, info.rows, info.cols, info.n_frames) == (ImageFormat.DICOM, 128, 128, 1)
    assert info.samples_per_pixel == 1 and info.photometric == "MONOCHROME2"
    assert info.transfer_syntax == "1.2.840.10008.1.2.1"
    assert info.modality == "CT" and info.bits_stored == 16
    assert info.patient_id == ds.PatientID and info.study_uid == ds.StudyInstanceUID
    assert info.series_uid == ds.SeriesInstanceUID and info.sop_uid == ds.SOPInstanceUID
    assert info.burned_in_annotation is None


def test_probe_multiframe_and_colour() -> None:
    info = probe(pydicom_file("examples_ybr_color.dcm"))
    assert (info.n_frames, info.samples_per_pixel, info.photometric) == (30, 3, "YBR_FULL_422")
    assert info.transfer_syntax == "1.2.840.10008.1.2.4.50"


# -- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
@pytest.mark.parametrize("window", list(WindowMode))
def test_lossless_variants_match_uncompressed(variant: str, window: WindowMode) -> None:
    expected = read_pixels(pydicom_file("MR_small.dcm"), window=window)
    actual = read_pixels(pydicom_file(variant), window=window)
    assert actual.dtype == np.float32 and actual.shape == (64, 64)
    np.testing.assert_array_equal(actual, expected)


def test_ct_rescale_follows_the_formula() -> None:
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds  # so AUTO is the modality values too
    stored = ds.pixel_array.astype(np.float64)
    expected = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for window in WindowMode:
        np.testing.assert_array_equal(read_pixels(path, window=window), expected.astype(np.float32))
    assert read_pixels(path).min() < -800  # Hounsfield units: air is negative


def test_window_auto_applies_the_files_window() -> None:
    path = pydicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    expected = apply_windowing(ds.pixel_array, ds)
    np.testing.assert_allclose(read_pixels(path), expected.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(
        read_pixels(path, window=WindowMode.NONE), ds.pixel_array.astype(np.float32)
    )


def test_voi_lut_sequence_is_preferred_to_the_window(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])
    item.add_new("LUTData", "US", [min(i * 16, 65535) for i in range(4096)])
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(tmp_path / "voi.dcm")
    expected = apply_voi(ds.pixel_array, ds).astype(np.float32)
    np.testing.assert_array_equal(read_pixels(tmp_path / "voi.dcm"), expected)


def test_enhanced_functional_groups_rescale(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del ds.RescaleSlope, ds.RescaleIntercept
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 2, -100, "US"
    group = Dataset()
    group.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([group])
    ds.save_as(tmp_path / "enhanced.dcm")
    expected = ds.pixel_array.astype(np.float32) * 2 - 100
    np.testing.assert_array_equal(read_pixels(tmp_path / "enhanced.dcm"), expected)


def test_multiframe_reads_only_the_requested_frame() -> None:
    path = pydicom_file("examples_ybr_color.dcm")  # 30 frames, JPEG baseline, YBR_FULL_422
    frames = pixel_array(path, decoding_plugin="pylibjpeg")
    np.testing.assert_array_equal(read_pixels(path), frames[15])  # None: the middle frame
    np.testing.assert_array_equal(read_pixels(path, frame=3), frames[3])
    native = pydicom_file("SC_rgb_rle_2frame.dcm")
    np.testing.assert_array_equal(read_pixels(native, frame=0), pixel_array(native)[0])
    for bad in (30, -1):
        with pytest.raises(DataError, match=r"frame .* does not exist; the file has 30"):
            read_pixels(path, frame=bad)


def test_colour_is_rgb() -> None:
    reference = read_pixels(pydicom_file("SC_rgb_rle.dcm"))
    assert reference.shape == (100, 100, 3)
    np.testing.assert_array_equal(reference[0, 0], [255, 0, 0])
    # lossless JPEG (RGB) is exact; baseline JPEG stored as YBR_FULL must come back as RGB
    np.testing.assert_array_equal(read_pixels(pydicom_file("SC_rgb_jpeg_gdcm.dcm")), reference)
    ybr = read_pixels(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert np.abs(ybr - reference).mean() < 2
    palette = read_pixels(pydicom_file("examples_palette.dcm"))
    assert palette.shape == (350, 800, 3) and palette.dtype == np.float32


def test_monochrome1_is_inverted(shared_data: Path) -> None:
    mono1 = read_pixels(shared_data / "xray/Fake_MONOHR1.dcm")
    mono2 = read_pixels(shared_data / "xray" / XRAY_MONO2)
    assert mono1.shape == (1024, 1024) and mono1.std() > 10
    np.testing.assert_array_equal(mono1, 255 - mono2)  # reflected within the 8-bit range


@pytest.mark.parametrize("name", _htj2k_pairs())
def test_htj2k_decodes_bit_exact(shared_data: Path, name: str) -> None:
    jph = read_stored_values(shared_data / f"dicom/htj2k/{name}_JPH.dcm")
    unc = read_stored_values(shared_data / f"dicom/nema_wg04_uncompressed/{name}_UNC.dcm")
    assert jph.dtype == unc.dtype
    np.testing.assert_array_equal(jph, unc)


def test_htj2k_without_reference_decodes(shared_data: Path) -> None:
    for path in sorted((shared_data / "dicom/htj2k").glob("*.dcm")):
        info = probe(path)
        assert read_pixels(path).shape[:2] == (info.rows, info.cols)


def test_bytes_and_path_agree(shared_data: Path) -> None:
    """Bytes decode from the parsed dataset, paths stream from the file: the same pixels."""
    dicoms = ["MR_small_jp2klossless.dcm", "CT_small.dcm", "MR_small_RLE.dcm",
              "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "examples_palette.dcm",
              "rtdose.dcm", "examples_ybr_color.dcm", "MR_small_bigendian.dcm",
              "MR_small_implicit.dcm"]
    paths = [pydicom_file(n) for n in dicoms] + [shared_data / "xray/Fake_MONOHR1.dcm",
                                                 shared_data / "xray/00000001_000.png"]
    for path in paths:
        for frame in (None, 0):
            np.testing.assert_array_equal(read_pixels(path.read_bytes(), frame),
                                          read_pixels(path, frame), err_msg=str(path))
    for name in ("CT_small.dcm", "JPEG2000.dcm"):  # cut short: the same error as a file
        data = pydicom_file(name).read_bytes()
        with pytest.raises(UnreadableImageError, match="truncated"):
            read_pixels(data[: len(data) // 2])


# -- failures -------------------------------------------------------------------------------------


def _both_raise(path: Path, error: type[Exception], match: str) -> None:
    for fn in (probe, read_pixels):
        with pytest.raises(error, match=match) as caught:
            fn(path)
        assert str(path) in str(caught.value)
        assert type(caught.value) is error


def test_truncated_dicom(tmp_path: Path) -> None:
    data = pydicom_file("CT_small.dcm").read_bytes()
    (tmp_path / "half.dcm").write_bytes(data[: len(data) // 2])
    _both_raise(tmp_path / "half.dcm", UnreadableImageError, "truncated")
    data = pydicom_file("JPEG2000.dcm").read_bytes()  # encapsulated: a fragment is cut short
    (tmp_path / "half_j2k.dcm").write_bytes(data[: len(data) // 2])
    _both_raise(tmp_path / "half_j2k.dcm", UnreadableImageError, "truncated")


def test_not_images(tmp_path: Path) -> None:
    (tmp_path / "random.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    _both_raise(tmp_path / "random.dcm", UnreadableImageError, "not a DICOM")
    (tmp_path / "notes.txt").write_text("no pixels here\n" * 20)
    _both_raise(tmp_path / "notes.txt", UnreadableImageError, "not a DICOM, PNG or JPEG")
    with pytest.raises(UnreadableImageError, match="cannot open"):
        read_pixels(tmp_path / "missing.dcm")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    _both_raise(tmp_path / "nopixels.dcm", UnsupportedImageError, "without pixel data")


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.92"])
def test_transfer_syntax_without_decoder(tmp_path: Path, uid: str) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.PixelData = encapsulate([ds.PixelData])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(uid)
    ds.save_as(tmp_path / "video.dcm")
    name = pydicom.uid.UID(uid).name
    _both_raise(tmp_path / "video.dcm", UnsupportedImageError, re.escape(f"{uid} ({name})"))


def test_messages_carry_no_patient_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID = "Doe^Jane", "PAT-123456"
    ds.save_as(tmp_path / "phi.dcm")
    data = (tmp_path / "phi.dcm").read_bytes()
    (tmp_path / "phi.dcm").write_bytes(data[:-1000])
    with pytest.raises(UnreadableImageError) as caught:
        read_pixels(tmp_path / "phi.dcm")
    assert "Doe" not in str(caught.value) and "PAT-123456" not in str(caught.value)


# -- PNG and JPEG ---------------------------------------------------------------------------------


def test_png_and_jpeg(tmp_path: Path, shared_data: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    deep = rng.integers(0, 65536, (20, 10), dtype=np.uint16)
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, 32 * 48 * 3).reshape(32, 48, 3).astype(np.uint8)  # JPEG-friendly
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(ramp).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(gray).save(tmp_path / "gray.jpeg")

    np.testing.assert_array_equal(read_pixels(tmp_path / "gray.png"), gray)
    np.testing.assert_array_equal(read_pixels(tmp_path / "deep.png"), deep)
    np.testing.assert_array_equal(read_pixels(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(read_pixels(tmp_path / "rgba.png"), rgb)
    assert np.abs(read_pixels(tmp_path / "rgb.jpg") - ramp).mean() < 8
    assert read_pixels(tmp_path / "gray.jpeg").shape == (40, 30)

    info = probe(tmp_path / "deep.png")
    assert (info.format, info.rows, info.cols, info.samples_per_pixel) == ("png", 20, 10, 1)
    assert info.bits_stored == 16 and info.patient_id is None
    assert probe(tmp_path / "rgb.jpg").samples_per_pixel == 3
    for png in sorted((shared_data / "xray").glob("*.png")):
        assert read_pixels(png).shape == (512, 512)
    for jpg in sorted((shared_data / "xray").glob("*.jpg")):
        assert read_pixels(jpg).ndim == 3


def test_broken_png_and_jpeg(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((64, 64), np.uint8) + 7).save(tmp_path / "a.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "a.jpg"
    )
    for name in ("a.png", "a.jpg"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(UnreadableImageError, match=f"cut_{name}"):
            read_pixels(tmp_path / f"cut_{name}")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    _both_raise(tmp_path / "fake.png", UnreadableImageError, "not a valid png")


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    """A 40000 x 40000 PNG header with almost no data must fail before any allocation."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "bomb.png").write_bytes(png)
    for fn in (probe, read_pixels):
        with pytest.raises(UnreadableImageError, match="bomb"):
            fn(tmp_path / "bomb.png")


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_jpeg_gdcm.dcm",  # lossless JPEG: medops' libjpeg-turbo plugin, then pylibjpeg
        "MR_small_jpeg_ls_lossless.dcm",
        "examples_palette.dcm",
    ],
)
def test_damaged_files_raise_only_medops_errors(tmp_path: Path, name: str) -> None:
    """Flipped bytes, cuts and overwritten runs anywhere in the file: the decoders (C, Rust)
    and pydicom fail in many ways, and each must surface as a DataError or a clean read.
    (Seed 7 once aborted the interpreter inside gdcm; see _LAST_RESORT in medops.data.dicom.)"""
    rng = np.random.default_rng(7)
    data = pydicom_file(name).read_bytes()
    for trial in range(24):
        damaged = bytearray(data)
        at = int(rng.integers(0, len(data)))
        if trial % 3 == 0:
            damaged[at] ^= 0xFF
        elif trial % 3 == 1:
            damaged = damaged[:at]
        else:
            damaged[at : at + 64] = rng.bytes(64)
        path = tmp_path / f"{trial}.dcm"
        path.write_bytes(bytes(damaged))
        for fn in (probe, read_pixels):
            with contextlib.suppress(DataError):
                fn(path)
