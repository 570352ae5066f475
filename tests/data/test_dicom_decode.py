"""The DICOM pixel path: one frame read from where the header check found the pixel data,
against pydicom's own ``pixel_array`` on the same files, for every frame and both byte orders,
the streamed and in-memory routes against each other, and lossless JPEG through medops' own
libjpeg-turbo plugin against pylibjpeg and the original values."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import as_pixel_options, pixel_array
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)

from medops.config.enums import WindowMode
from medops.data import dicom
from medops.data.dicom_codecs import LABEL, decode_frame, own_decoder
from medops.data.images import read_pixels, read_stored_values
from medops.errors import DataError, UnreadableImageError
from tests.samples import pydicom_file


class _CountingReader(io.BytesIO):
    """A file in memory that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk

    def readinto(self, buffer: object) -> int:
        n = super().readinto(buffer)  # type: ignore[arg-type]
        self.bytes_read += n
        return n


def _native(
    path: Path, frames: np.ndarray, syntax: pydicom.uid.UID, vr: str, photometric: str
) -> Path:
    """A native multi-frame secondary capture holding ``frames`` (n, rows, cols[, samples])."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7.2")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    n, rows, cols = frames.shape[:3]
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, rows, cols
    ds.SamplesPerPixel = 1 if frames.ndim == 3 else frames.shape[3]
    if ds.SamplesPerPixel > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = frames.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    data = frames.astype(frames.dtype.newbyteorder(">" if syntax == ExplicitVRBigEndian else "<"))
    raw = data.tobytes()
    if syntax == ExplicitVRBigEndian and vr == "OW" and bits == 8:
        # 8-bit data in OW, big endian: the byte pairs are swapped (PS3.5 A.2), padding too.
        raw = np.frombuffer(raw + b"\0" * (len(raw) % 2), ">u2").astype("<u2").tobytes()
    ds.add_new("PixelData", vr, raw)
    ds.save_as(path, enforce_file_format=True)
    return path


def _native_files(tmp: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    odd = rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)  # 9-byte frames: odd offsets
    grey16 = rng.integers(0, 4096, (4, 16, 12), dtype=np.uint16)
    rgb = rng.integers(0, 256, (3, 7, 5, 3), dtype=np.uint8)
    return [
        pydicom_file("rtdose.dcm"),  # implicit VR, 32-bit, 15 frames
        pydicom_file("rtdose_expb.dcm"),  # explicit VR big endian, 32-bit
        _native(tmp / "odd_ow_be.dcm", odd, ExplicitVRBigEndian, "OW", "MONOCHROME2"),
        _native(tmp / "odd_ob_le.dcm", odd, ExplicitVRLittleEndian, "OB", "MONOCHROME2"),
        _native(tmp / "grey16_be.dcm", grey16, ExplicitVRBigEndian, "OW", "MONOCHROME2"),
        _native(tmp / "rgb_le.dcm", rgb, ExplicitVRLittleEndian, "OB", "RGB"),
    ]


def test_every_frame_of_native_multiframe_matches_pydicom(tmp_path: Path) -> None:
    for path in _native_files(tmp_path):
        frames = pixel_array(path)
        for index in range(len(frames)):
            ours = read_stored_values(path, frame=index)
            assert ours.dtype == frames.dtype, path.name
            np.testing.assert_array_equal(ours, frames[index], err_msg=f"{path.name}[{index}]")
            np.testing.assert_array_equal(
                read_stored_values(path.read_bytes(), frame=index), frames[index]
            )


@pytest.mark.parametrize(
    "name", ["examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm", "emri_small_jpeg_2k_lossless.dcm"]
)
def test_every_frame_of_encapsulated_multiframe_matches_pydicom(name: str) -> None:
    path = pydicom_file(name)
    frames = pixel_array(path, decoding_plugin="pylibjpeg")
    for index in range(len(frames)):
        np.testing.assert_array_equal(read_stored_values(path, frame=index), frames[index])


def test_one_frame_reads_one_frame_of_bytes(tmp_path: Path) -> None:
    """A 40-frame 256x256 uint16 series is 5.2 MB: reading frame 7 must not read the rest."""
    frames = np.random.default_rng(5).integers(0, 4096, (40, 256, 256), dtype=np.uint16)
    path = _native(tmp_path / "series.dcm", frames, ExplicitVRLittleEndian, "OW", "MONOCHROME2")
    f = _CountingReader(path.read_bytes())
    header = dicom.read_header(f, "series.dcm")
    np.testing.assert_array_equal(dicom.decode_stored(f, header, 7), frames[7])
    frame_bytes = frames[7].nbytes
    assert frame_bytes <= f.bytes_read < frame_bytes + 64 * 1024, f.bytes_read


@pytest.mark.parametrize("window", list(WindowMode))
def test_streamed_and_in_memory_routes_agree(tmp_path: Path, window: WindowMode) -> None:
    """Files decode streamed from the pixel data element; ``with_pixel_data`` (the whole
    dataset in memory) must give the same values and range."""
    names = [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "JPEG2000.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "examples_palette.dcm",
        "rtdose.dcm",
    ]
    paths = [pydicom_file(n) for n in names] + _native_files(tmp_path)[2:]
    for path in paths:
        results = []
        for in_memory in (False, True):
            f = io.BytesIO(path.read_bytes())
            header = dicom.read_header(f, path.name)
            if in_memory:
                header = dicom.with_pixel_data(f, header)
            assert header.in_memory is in_memory
            index = dicom.frame_index(header, None)
            stored = dicom.decode_stored(f, header, index)
            results.append(dicom.to_display_with_range(stored, header, index, window))
        (streamed, streamed_range), (whole, whole_range) = results
        np.testing.assert_array_equal(streamed, whole, err_msg=path.name)
        assert streamed_range == whole_range, path.name


def test_explicit_syntax_written_in_implicit_vr_decodes() -> None:
    """SC_rgb_jpeg.dcm declares Explicit VR but writes its elements in implicit VR; pydicom's
    dcmread reads it, and so must the pixel element check. (pydicom's ``pixel_array(path)``
    does not: it reads the pixel element as explicit VR and fails, so the reference is the
    dataset route.)"""
    path = pydicom_file("SC_rgb_jpeg.dcm")
    with pytest.warns(UserWarning, match="Expected explicit VR, but found implicit VR"):
        expected = pixel_array(pydicom.dcmread(path), decoding_plugin="pylibjpeg")
        actual = read_pixels(path)
    assert actual.shape == expected.shape == (256, 256, 3)
    np.testing.assert_array_equal(actual, expected)


# -- lossless JPEG: medops' libjpeg-turbo plugin against pylibjpeg and the originals ----------


@pytest.fixture(scope="module")
def imagecodecs() -> object:
    """imagecodecs (a dev dependency) encodes the lossless JPEG the tests decode."""
    return pytest.importorskip("imagecodecs", reason="imagecodecs encodes lossless JPEG")


def _lossless_jpeg(codecs: object, path: Path, ds: Dataset, stored: np.ndarray, bits: int) -> Path:
    """``ds`` with ``stored`` as one lossless JPEG (SV1) frame of ``bits`` precision."""
    samples = stored.view(stored.dtype.str.replace("i", "u"))  # the two's-complement pattern
    if bits < samples.itemsize * 8:
        samples = samples & (2**bits - 1)
    frame = codecs.jpeg8_encode(  # type: ignore[attr-defined]
        samples, lossless=True, predictor=1, bitspersample=bits
    )
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.save_as(path, enforce_file_format=True)
    return path


def _lossless_cases(codecs: object, shared: Path, tmp: Path) -> list[tuple[Path, np.ndarray, bool]]:
    """(file, the values it must decode to, whether pydicom's pylibjpeg plugin reads it): real
    NEMA images (signed 16-bit CT, 12-bit MR, RGB), the CT cut to signed 12 bits (sign
    extension), 8-bit samples in 16-bit words, and pydicom's gdcm-encoded RGB file."""
    nema = shared / "dicom/nema_wg04_uncompressed"
    cases = []
    for name in ("CT1_UNC.dcm", "MR2_UNC.dcm", "VL1_UNC.dcm"):
        ds = pydicom.dcmread(nema / name)
        stored = ds.pixel_array
        bits = int(ds.BitsStored) if stored.itemsize == 2 else 8
        cases.append((_lossless_jpeg(codecs, tmp / name, ds, stored, bits), stored, True))
    ds = pydicom.dcmread(nema / "CT1_UNC.dcm")
    signed12 = np.clip(ds.pixel_array, -2048, 2047)
    ds.BitsStored, ds.HighBit = 12, 11
    cases.append((_lossless_jpeg(codecs, tmp / "ct12.dcm", ds, signed12, 12), signed12, True))
    ds = pydicom.dcmread(nema / "MR4_UNC.dcm")
    bytes8 = (ds.pixel_array >> 4).astype(np.uint16)  # 8 bits stored, 16 allocated
    ds.BitsStored, ds.HighBit = 8, 7
    # pylibjpeg returns the 8-bit samples without saying so, and pydicom, expecting 16-bit
    # words, fails: only medops' plugin reads this one.
    path = _lossless_jpeg(codecs, tmp / "mr8.dcm", ds, bytes8.astype(np.uint8), 8)
    cases.append((path, bytes8, False))
    gdcm_rgb = pydicom_file("SC_rgb_jpeg_gdcm.dcm")
    cases.append((gdcm_rgb, pixel_array(gdcm_rgb, decoding_plugin="pylibjpeg"), True))
    return cases


def test_lossless_jpeg_decodes_bit_exact(
    imagecodecs: object, shared_data: Path, tmp_path: Path
) -> None:
    own = own_decoder(JPEGLosslessSV1)
    assert own is not None, "imagecodecs is installed: medops' own decoder must be there"
    for path, expected, pylibjpeg_reads in _lossless_cases(imagecodecs, shared_data, tmp_path):
        ds = pydicom.dcmread(path)
        ours, _ = own.as_array(ds, decoding_plugin=LABEL, **as_pixel_options(ds))
        results = [ours, read_stored_values(path), read_stored_values(path.read_bytes())]
        if pylibjpeg_reads:
            results.append(pixel_array(ds, decoding_plugin="pylibjpeg"))
        for actual in results:
            assert actual.dtype == expected.dtype, path.name
            np.testing.assert_array_equal(actual, expected, err_msg=path.name)


def test_lossless_jpeg_plugin_leaves_ybr_to_the_others(imagecodecs: object) -> None:
    """libjpeg-turbo converts no colour in lossless mode: a frame declared YBR is refused, so
    the next plugin (pylibjpeg) gives its answer."""
    runner = DecodeRunner(JPEGLosslessSV1)
    options: dict[str, Any] = dict(
        rows=4,
        columns=4,
        samples_per_pixel=3,
        photometric_interpretation="YBR_FULL",
        planar_configuration=0,
        bits_allocated=8,
        bits_stored=8,
        pixel_representation=0,
        number_of_frames=1,
    )
    runner.set_options(**options)
    frame = imagecodecs.jpeg8_encode(  # type: ignore[attr-defined]
        np.zeros((4, 4, 3), np.uint8), lossless=True, predictor=1, bitspersample=8
    )
    with pytest.raises(NotImplementedError, match="not YBR_FULL"):
        decode_frame(frame, runner)


def test_lossless_jpeg_no_plugin_reads_names_every_reason(
    imagecodecs: object, shared_data: Path, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(shared_data / "dicom/nema_wg04_uncompressed/MR4_UNC.dcm")
    path = _lossless_jpeg(imagecodecs, tmp_path / "rows.dcm", ds, ds.pixel_array, 12)
    ds = pydicom.dcmread(path)
    ds.Rows = 500  # the codestream holds 512 rows
    ds.save_as(path)
    with pytest.raises(UnreadableImageError) as caught:
        read_pixels(path)
    message = str(caught.value)
    assert "rows.dcm: cannot decode the pixel data" in message
    assert f"{LABEL}: " in message
    assert "the JPEG codestream holds a (512, 512) image where the dataset says (500, 512)" in (
        message
    )
    assert "pylibjpeg:" in message


def test_damaged_lossless_jpeg_raises_only_medops_errors(
    imagecodecs: object, shared_data: Path, tmp_path: Path
) -> None:
    """Damage in the codestream header and in the entropy-coded data of a 16-bit CT: each
    read is a DataError or a clean read, never a crash (gdcm aborts the interpreter on some of
    these, which is why it is not in the path)."""
    ds = pydicom.dcmread(shared_data / "dicom/nema_wg04_uncompressed/CT1_UNC.dcm")
    data = _lossless_jpeg(imagecodecs, tmp_path / "ct.dcm", ds, ds.pixel_array, 16).read_bytes()
    start = data.index(b"\xff\xd8\xff")  # the codestream
    rng = np.random.default_rng(11)
    outcomes = set()
    for trial in range(30):
        damaged = bytearray(data)
        at = start + int(rng.integers(0, 300 if trial % 2 else len(data) - start))
        if trial % 3 == 0:
            damaged[at] ^= 0xFF
        elif trial % 3 == 1:
            damaged = damaged[:at]
        else:
            damaged[at : at + 64] = rng.bytes(len(damaged[at : at + 64]))
        try:
            read_pixels(bytes(damaged))
            outcomes.add("read")
        except DataError:
            outcomes.add("refused")
    assert outcomes == {"read", "refused"}
