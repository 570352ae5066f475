"""Reading medical images: format sniffing, header probes and pixel decoding.

One entry point per question, for DICOM, PNG and JPEG alike:

- :func:`sniff_format` -- what is this file (magic bytes first, then the extension)?
- :func:`probe` -- its size, frames, colour and DICOM identifiers, without decoding pixels;
- :func:`read_pixels` -- one frame as float32, (H, W) or (H, W, 3), higher meaning brighter;
  :func:`read_pixels_with_range` adds the range the file's bit depth allows;
- :func:`read_stored_values` -- one DICOM frame exactly as stored (no LUTs), for checks.

Failures raise :class:`~medops.errors.UnreadableImageError` (corrupt, truncated, not an image)
or :class:`~medops.errors.UnsupportedImageError` (a real image medops cannot use), never a raw
pydicom or PIL exception. Messages name the file, never the patient. The DICOM specifics live
in :mod:`medops.data.dicom`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from medops.config.enums import StrEnum, WindowMode
from medops.data import dicom
from medops.errors import DataError, UnreadableImageError, UnsupportedImageError

#: Largest width x height decoded from any format (PIL's own default bomb limit).
MAX_PIXELS = dicom.MAX_PIXELS

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class ImageFormat(StrEnum):
    DICOM = "dicom"
    PNG = "png"
    JPEG = "jpeg"


_SUFFIXES = {
    ".dcm": ImageFormat.DICOM,
    ".dicom": ImageFormat.DICOM,
    ".png": ImageFormat.PNG,
    ".jpg": ImageFormat.JPEG,
    ".jpeg": ImageFormat.JPEG,
}
_PIL_NAMES = {ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`probe` learns from a header. DICOM identifiers are None for PNG/JPEG;
    for those ``photometric`` is MONOCHROME2 or RGB, as the pixels will be read."""

    format: ImageFormat
    rows: int
    cols: int
    n_frames: int
    samples_per_pixel: int
    photometric: str | None
    transfer_syntax: str | None
    modality: str | None
    patient_id: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    bits_stored: int | None
    burned_in_annotation: bool | None


def sniff_format(path: Path) -> ImageFormat | None:
    """The format of ``path`` from its first bytes, else its extension; None if neither
    says DICOM, PNG or JPEG. Files without an extension are found by the DICM preamble."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise UnreadableImageError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    return _sniff(head, path.suffix)


def probe(path: Path) -> ImageInfo:
    """Read the header of ``path`` (no pixel decoding) and check that it can be decoded."""
    with _opened(Path(path)) as (f, name, fmt):
        if fmt is ImageFormat.DICOM:
            header = dicom.read_header(f, name)
            try:
                return _dicom_info(header)
            except Exception as exc:  # an identifier element damaged beyond parsing
                raise UnreadableImageError(f"{name}: corrupt DICOM header ({_why(exc)})") from exc
        with _open_pil(f, name, fmt) as img:
            gray = img.mode in _GRAY_MODES
            return ImageInfo(
                format=fmt,
                rows=img.height,
                cols=img.width,
                n_frames=1,
                samples_per_pixel=1 if gray else 3,
                photometric="MONOCHROME2" if gray else "RGB",
                transfer_syntax=None,
                modality=None,
                patient_id=None,
                study_uid=None,
                series_uid=None,
                sop_uid=None,
                bits_stored=_BITS.get(img.mode, 8),
                burned_in_annotation=None,
            )


def read_pixels(
    source: Path | bytes, frame: int | None = None, window: WindowMode = WindowMode.AUTO
) -> np.ndarray:
    """One frame of ``source`` (a path or the file's bytes) as float32, higher = brighter.

    Shape (H, W) for grayscale, (H, W, 3) RGB for colour. For DICOM, ``frame=None`` is the
    middle frame; the modality LUT (or rescale) is applied, then with ``window=AUTO`` the
    file's VOI LUT or first window, and MONOCHROME1 is inverted. PNG/JPEG ignore ``window``.
    """
    return read_pixels_with_range(source, frame, window)[0]


def read_pixels_with_range(
    source: Path | bytes, frame: int | None = None, window: WindowMode = WindowMode.AUTO
) -> tuple[np.ndarray, tuple[float, float]]:
    """:func:`read_pixels` and the range (low, high) its values can take: what the format's bit
    depth (and for DICOM the modality LUT and window) allows, not this image's own extremes.
    8-bit PNG/JPEG: (0, 255); 16-bit PNG: (0, 65535); unsigned DICOM without rescale:
    (0, 2**BitsStored - 1)."""
    with _opened(source) as (f, name, fmt):
        if fmt is ImageFormat.DICOM:
            header = dicom.read_header(f, name)
            index = dicom.frame_index(header, frame)
            stored = dicom.decode_stored(f, header, index)
            return dicom.to_display_with_range(stored, header, index, window)
        if frame not in (None, 0):
            raise DataError(f"{name}: frame {frame} does not exist; {fmt} files have one frame")
        with _open_pil(f, name, fmt) as img:
            pixels = _pil_pixels(img, name)
            return pixels, _pil_range(img.mode, pixels)


def read_stored_values(source: Path | bytes, frame: int | None = None) -> np.ndarray:
    """One DICOM frame as stored (colour as RGB), without any LUT: for bit-exact checks."""
    with _opened(source) as (f, name, fmt):
        if fmt is not ImageFormat.DICOM:
            raise UnsupportedImageError(f"{name}: stored values exist only for DICOM, not {fmt}")
        header = dicom.read_header(f, name)
        return dicom.decode_stored(f, header, dicom.frame_index(header, frame))


# -- helpers ------------------------------------------------------------------------------------


def _sniff(head: bytes, suffix: str) -> ImageFormat | None:
    if head[128:132] == b"DICM":
        return ImageFormat.DICOM
    if head.startswith(_PNG_MAGIC):
        return ImageFormat.PNG
    if head.startswith(_JPEG_MAGIC):
        return ImageFormat.JPEG
    return _SUFFIXES.get(suffix.lower())


@contextmanager
def _opened(source: Path | bytes) -> Iterator[tuple[BinaryIO, str, ImageFormat]]:
    """``source`` as an open binary file, a name for messages and its sniffed format."""
    f: BinaryIO
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        f, name, suffix = io.BytesIO(data), f"<{len(data)} bytes>", ""
    else:
        path = Path(source)
        name, suffix = str(path), path.suffix
        try:
            f = path.open("rb")
        except OSError as exc:
            raise UnreadableImageError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    with f:
        fmt = _sniff(f.read(132), suffix)
        f.seek(0)
        if fmt is None:
            raise UnreadableImageError(f"{name}: not a DICOM, PNG or JPEG image")
        yield f, name, fmt


def _open_pil(f: BinaryIO, name: str, fmt: ImageFormat) -> Image.Image:
    try:
        img = Image.open(f, formats=[_PIL_NAMES[fmt]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImageError(f"{name}: {exc}") from exc
    except Exception as exc:
        raise UnreadableImageError(f"{name}: not a valid {fmt} image ({_why(exc)})") from exc
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise UnreadableImageError(
            f"{name}: {img.height}x{img.width} pixels exceeds the limit of {MAX_PIXELS} "
            "(decompression-bomb guard)"
        )
    return img


def _pil_pixels(img: Image.Image, name: str) -> np.ndarray:
    try:
        if img.mode in ("LA", "1"):
            img = img.convert("L")
        elif img.mode not in _GRAY_MODES and img.mode != "RGB":
            img = img.convert("RGB")  # palette, alpha, CMYK, YCbCr...: drop to RGB
        return np.asarray(img, dtype=np.float32)
    except Exception as exc:  # truncated or corrupt data surfaces only when decoding
        raise UnreadableImageError(f"{name}: cannot decode the image ({_why(exc)})") from exc


def _pil_range(mode: str, pixels: np.ndarray) -> tuple[float, float]:
    """The value range of a decoded PNG/JPEG: 16-bit modes to 65535, float images (no nominal
    range) their own extremes, everything else (8 bits per sample) to 255."""
    if mode.startswith("I;16") or mode == "I":  # a 16-bit grey PNG opens as I;16 or I
        return 0.0, 65535.0
    if mode == "F":
        return float(pixels.min()), float(pixels.max())
    return 0.0, 255.0


def _why(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _dicom_info(header: dicom.DicomHeader) -> ImageInfo:
    ds = header.dataset

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value).strip() or None if value is not None else None

    burned = (text("BurnedInAnnotation") or "").upper()
    bits = ds.get("BitsStored")
    return ImageInfo(
        format=ImageFormat.DICOM,
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        n_frames=header.n_frames,
        samples_per_pixel=int(ds.get("SamplesPerPixel") or 1),
        photometric=text("PhotometricInterpretation"),
        transfer_syntax=str(header.transfer_syntax),
        modality=text("Modality"),
        patient_id=text("PatientID"),
        study_uid=text("StudyInstanceUID"),
        series_uid=text("SeriesInstanceUID"),
        sop_uid=text("SOPInstanceUID"),
        bits_stored=int(bits) if bits is not None else None,
        burned_in_annotation={"YES": True, "NO": False}.get(burned),
    )
