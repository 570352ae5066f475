"""DICOM decoding: header checks, stored values, and display values through
:mod:`medops.data.dicom_display` (modality -> VOI -> MONOCHROME1).

All decoding goes through pydicom 3's pixel machinery (:mod:`pydicom.pixels`), whose decoder
plugins wrap pylibjpeg (openjpeg, libjpeg, rle), pillow and gdcm, plus medops' own plugin for
lossless JPEG (libjpeg-turbo, :mod:`medops.data.dicom_codecs`). medops decides the plugin
order (its own, then pylibjpeg; gdcm only where nothing else decodes), parses the header once
and reads one frame from where the header check found the pixel data (not the whole pixel
data), and turns every failure into :class:`~medops.errors.UnreadableImageError` or
:class:`~medops.errors.UnsupportedImageError` with the file name and the reason.

Patient data never enters a message or a log line: only the file name, tags and UIDs of
transfer syntaxes.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, NoReturn

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from medops.config.enums import WindowMode
from medops.data.dicom_codecs import LABEL, own_decoder
from medops.data.dicom_display import display_values
from medops.errors import DataError, MedopsError, UnreadableImageError, UnsupportedImageError

log = logging.getLogger(__name__)

#: Largest Rows x Columns medops decodes; a header claiming more is refused before any
#: allocation (the DICOM counterpart of PIL's decompression-bomb guard).
MAX_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS, so both formats share one limit

# pydicom tries plugins in registration order, which puts gdcm first. medops prefers the
# pylibjpeg family (bit-exact with the reference data), then pillow, and uses gdcm only for
# syntaxes no other installed plugin decodes: on damaged JPEG data gdcm throws a C++ exception
# that aborts the whole process (reproduced with a corrupted SC_rgb_jpeg_dcmtk.dcm), so it
# must not be the fallback that corrupt files reach.
_PLUGIN_PREFERENCE = ("pylibjpeg", "pydicom", "pillow", "pyjpegls")
_LAST_RESORT = "gdcm"

_PIXEL_TAGS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}
_PIXEL_VRS = {b"OB", b"OW", b"OF", b"OD", b"UN"}
_ITEM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_INTERRUPTS = (KeyboardInterrupt, SystemExit, GeneratorExit)
_ALL_PLUGINS_FAILED = "Unable to decode as exceptions were raised by all available plugins:"

_HTJ2K = {UID(f"1.2.840.10008.1.2.4.{n}") for n in (201, 202, 203)}
_PIP_HINTS: list[tuple[set[UID], str]] = [
    (set(JPEG2000TransferSyntaxes) | _HTJ2K, "pip install pylibjpeg pylibjpeg-openjpeg"),
    (
        set(JPEGTransferSyntaxes) | set(JPEGLSTransferSyntaxes),
        "pip install pylibjpeg pylibjpeg-libjpeg",
    ),
]


@dataclass(frozen=True)
class PixelElement:
    """Where a file's pixel data element starts its value, and what pydicom's decoders need to
    read it from there: the header is parsed once, never again to decode."""

    keyword: str  # PixelData, FloatPixelData or DoubleFloatPixelData
    vr: str | None  # None for implicit VR syntaxes
    value_offset: int


@dataclass(frozen=True)
class DicomHeader:
    """Everything medops needs before touching pixel data.

    ``dataset`` holds the elements before the pixel data; when ``in_memory`` it is a complete
    dataset (deflated files, files without file meta) and pixels are decoded from it rather
    than re-read from the file. Otherwise ``pixels`` locates the pixel data in the file.
    """

    name: str
    dataset: Dataset
    transfer_syntax: UID
    n_frames: int
    in_memory: bool
    pixels: PixelElement | None = None


def read_header(f: BinaryIO, name: str) -> DicomHeader:
    """Parse and check the header of the DICOM file ``f`` (positioned at its start).

    Raises UnreadableImageError for a corrupt or truncated file and UnsupportedImageError
    for a real DICOM file whose pixels medops cannot decode.
    """
    try:
        return _read_header(f, name)
    except MedopsError:
        raise
    except Exception as exc:  # pydicom parses lazily: a damaged element fails on first use
        raise UnreadableImageError(f"{name}: corrupt DICOM header ({_why(exc)})") from exc


def _read_header(f: BinaryIO, name: str) -> DicomHeader:
    in_memory = False
    ds: Dataset
    try:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
    except InvalidDicomError:
        # No preamble/DICM: some archives write bare datasets. Only trust it if it parses to
        # something with an image pixel module.
        f.seek(0)
        ds = _read_forced(f, name)
        in_memory = True
    except Exception as exc:
        raise UnreadableImageError(f"{name}: cannot parse the DICOM header ({_why(exc)})") from exc

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or UID(ts) == DeflatedExplicitVRLittleEndian:
        # Deflated data is zlib-compressed after the file meta and a file without meta has
        # no syntax to stream with: read it all through pydicom, which handles both.
        if not in_memory:
            f.seek(0)
            ds = _read_full(f, name, force=ts is None)
            in_memory = True
        ts = _syntax_of(ds, name)
    ts = UID(ts)
    _check_decoder(ts, name)  # first: the checks below need a known syntax

    pixels = None
    if in_memory:
        if not any(kw in ds for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            _no_pixel_data(f, ds, name)
    else:
        pixels = _check_pixel_element(f, ts, name, ds)

    rows, cols = _int(ds, "Rows", name), _int(ds, "Columns", name)
    if rows <= 0 or cols <= 0:
        raise UnreadableImageError(f"{name}: invalid image size Rows={rows} Columns={cols}")
    if rows * cols > MAX_PIXELS:
        raise UnreadableImageError(
            f"{name}: {rows}x{cols} pixels exceeds the limit of {MAX_PIXELS} pixels per frame "
            "(decompression-bomb guard)"
        )
    n_frames = _int(ds, "NumberOfFrames", name, default=1) or 1
    return DicomHeader(
        name=name,
        dataset=ds,
        transfer_syntax=ts,
        n_frames=n_frames,
        in_memory=in_memory,
        pixels=pixels,
    )


def with_pixel_data(f: BinaryIO, header: DicomHeader) -> DicomHeader:
    """``header`` completed with the pixel data element (and anything after it) read from
    ``f``, where :func:`read_header` left it, for a caller that wants the whole dataset: pixels
    then decode from it. Decoding needs none of this (:func:`decode_stored` reads one frame
    from ``f`` without parsing the header again), and it costs a copy of all the pixel bytes."""
    if header.in_memory:
        return header
    ts = header.transfer_syntax
    try:
        rest = read_dataset(f, ts.is_implicit_VR, ts.is_little_endian)
    except Exception as exc:  # read_header checked the element's length: a damaged file
        raise UnreadableImageError(
            f"{header.name}: cannot read the pixel data ({_why(exc)})"
        ) from exc
    header.dataset.update(rest)
    return replace(header, in_memory=True)


def frame_index(header: DicomHeader, frame: int | None) -> int:
    """The 0-based frame to read: the middle one for ``None``; DataError when out of range."""
    if frame is None:
        return header.n_frames // 2
    if not 0 <= frame < header.n_frames:
        raise DataError(
            f"{header.name}: frame {frame} does not exist; the file has "
            f"{header.n_frames} frame(s), indices 0..{header.n_frames - 1}"
        )
    return frame


def decode_stored(f: BinaryIO, header: DicomHeader, index: int) -> np.ndarray:
    """The stored values of one frame: (rows, cols) or (rows, cols, samples), colour as RGB.

    No modality or VOI LUT is applied; YBR_FULL(_422) and YBR_ICT/RCT come back as RGB, as
    pydicom and the JPEG 2000 codecs convert them.
    """
    failures = []
    for decoder, plugin in _plugins(header.transfer_syntax):
        try:
            if header.in_memory or header.pixels is None:
                # What pydicom.pixels.pixel_array does for a dataset, with this decoder.
                opts = as_pixel_options(header.dataset)
                src: Dataset | BinaryIO = header.dataset
            else:
                opts = _file_options(f, header, header.pixels)
                src = f
            arr, _ = decoder.as_array(
                src, index=index, validate=True, decoding_plugin=plugin, **opts
            )
            return arr
        except _INTERRUPTS:
            raise
        except BaseException as exc:  # pylibjpeg-rle (Rust) panics with a BaseException
            failures.append(f"{plugin or 'pydicom'}: {_why(exc)}")
            log.debug("%s: plugin %s failed, trying the next", header.name, plugin or "pydicom")
    raise UnreadableImageError(
        f"{header.name}: cannot decode the pixel data ({header.transfer_syntax.name}): "
        + "; ".join(failures)
    )


def _plugins(ts: UID) -> list[tuple[Decoder, str]]:
    """The (decoder, plugin) pairs to try, in order: medops' own plugin where it has one
    (:mod:`medops.data.dicom_codecs`), then pydicom's by ``_PLUGIN_PREFERENCE``, gdcm only
    where nothing else decodes; native syntaxes have one unnamed plugin."""
    decoder = get_decoder(ts)
    available = set(decoder.available_plugins)
    plugins = [p for p in _PLUGIN_PREFERENCE if p in available]
    plugins += sorted(available - set(plugins) - {_LAST_RESORT})
    if not plugins and _LAST_RESORT in available:
        plugins = [_LAST_RESORT]
    pairs = [(decoder, plugin) for plugin in plugins or [""]]
    if own := own_decoder(ts):
        pairs.insert(0, (own, LABEL))
    return pairs


def _file_options(f: BinaryIO, header: DicomHeader, pixels: PixelElement) -> dict[str, Any]:
    """The decoding options for one frame read from ``f`` at the pixel data value, which is
    where ``f`` is left: what ``pydicom.pixels.pixel_array`` works out for a file, but from
    the header :func:`read_header` parsed (pixel_array parses it again, which for an
    uncompressed 512x512 frame took as long as the decode). Only that frame's bytes (native)
    or fragments (encapsulated) are then read."""
    opts: dict[str, Any] = as_pixel_options(
        header.dataset,
        transfer_syntax_uid=header.transfer_syntax,
        pixel_keyword=pixels.keyword,
    )
    if pixels.vr is not None:
        opts["pixel_vr"] = pixels.vr
    f.seek(pixels.value_offset)
    return opts


def to_display(
    stored: np.ndarray, header: DicomHeader, index: int, window: WindowMode
) -> np.ndarray:
    """Modality LUT, optional VOI LUT/window, MONOCHROME1 inversion; float32 out.

    Higher values always mean brighter. Colour images (RGB, palette) get no LUTs.
    """
    return to_display_with_range(stored, header, index, window)[0]


def to_display_with_range(
    stored: np.ndarray, header: DicomHeader, index: int, window: WindowMode
) -> tuple[np.ndarray, tuple[float, float]]:
    """:func:`to_display` and the range its values can take: what the bit depth, the modality
    LUT and the window allow (``(0, 2**BitsStored - 1)`` for plain unsigned stored values),
    not the range of this image's pixels."""
    try:
        values, lo, hi = display_values(stored, header.dataset, index, window, header.name)
    except Exception as exc:  # a malformed LUT element, say: the file is at fault
        raise UnreadableImageError(
            f"{header.name}: cannot apply the modality/palette LUT ({_why(exc)})"
        ) from exc
    return values, (lo, hi)


# -- header helpers ---------------------------------------------------------------------------


def _read_forced(f: BinaryIO, name: str) -> Dataset:
    try:
        ds = pydicom.dcmread(f, force=True)
    except Exception as exc:
        raise UnreadableImageError(f"{name}: not a DICOM file ({_why(exc)})") from exc
    if "Rows" not in ds or "Columns" not in ds:
        if "SOPClassUID" in ds:  # a real dataset, just not an image (an RT plan, an SR...)
            raise UnsupportedImageError(
                f"{name}: DICOM file without pixel data "
                f"(SOP class {_sop_class(ds)}); it is not an image"
            )
        raise UnreadableImageError(
            f"{name}: not a DICOM image (no DICM prefix and no image pixel module)"
        )
    return ds


def _read_full(f: BinaryIO, name: str, *, force: bool) -> Dataset:
    try:
        return pydicom.dcmread(f, force=force)
    except Exception as exc:
        raise UnreadableImageError(f"{name}: cannot read the DICOM file ({_why(exc)})") from exc


def _syntax_of(ds: Dataset, name: str) -> UID:
    """The transfer syntax of a dataset read without (usable) file meta, and record it there,
    where pydicom's decoders look for it."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None:
        implicit, little = ds.original_encoding
        if implicit is None or little is None:
            raise UnreadableImageError(f"{name}: cannot tell the DICOM encoding")
        ts = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = ts
    return UID(ts)


def _check_pixel_element(f: BinaryIO, ts: UID, name: str, ds: Dataset) -> PixelElement:
    """``f`` is where dcmread stopped: at the pixel data element, or at EOF if there is none.
    Check the element is there and that the file holds all of its value; ``f`` is left where
    it was."""
    start = f.tell()
    size = f.seek(0, 2)
    f.seek(start)
    if size - start < 8:
        _no_pixel_data(f, ds, name)
    try:
        endian = "<" if ts.is_little_endian else ">"
        group, elem = struct.unpack(f"{endian}HH", f.read(4))
        vr: str | None = None
        word = f.read(4)
        if not ts.is_implicit_VR and word[:2] in _PIXEL_VRS:
            vr = word[:2].decode("ascii")  # then 2 reserved bytes and a 4-byte length
            word = f.read(4)
        # else implicit VR, or an explicit-VR syntax written in implicit VR, which pydicom
        # reads too (SC_rgb_jpeg.dcm): the word is the length.
        (length,) = struct.unpack(f"{endian}L", word)
    except struct.error as exc:
        raise UnreadableImageError(f"{name}: truncated at the pixel data element") from exc
    keyword = _PIXEL_TAGS.get(group << 16 | elem)
    if keyword is None:
        raise UnsupportedImageError(f"{name}: DICOM file without pixel data")
    value_start = f.tell()
    if length == _UNDEFINED:
        _check_fragments(f, endian, size, name)
    elif value_start + length > size:
        raise UnreadableImageError(
            f"{name}: truncated: the pixel data needs {length} bytes but the file holds "
            f"{size - value_start}"
        )
    f.seek(start)
    return PixelElement(keyword=keyword, vr=vr, value_offset=value_start)


def _no_pixel_data(f: BinaryIO, ds: Dataset, name: str) -> NoReturn:
    """Raise for a dataset without pixel data, telling a cut-off file from a non-image."""
    size = f.seek(0, 2)
    # pydicom stops quietly at EOF, even inside an element: a last element whose declared
    # length runs past the end of the file means the file was cut.
    last = ds.get_item(list(ds.keys())[-1]) if len(ds) else None
    if (
        isinstance(last, RawDataElement)
        and last.length != _UNDEFINED
        and last.value_tell + last.length > size
    ):
        raise UnreadableImageError(f"{name}: truncated: the file ends inside the header")
    sop_class = _sop_class(ds)
    if "Image" in sop_class and "Rows" not in ds:
        # An image object lacking both its pixel module and its pixels was cut off at an
        # element boundary (or damaged), not a legitimate non-image.
        raise UnreadableImageError(
            f"{name}: truncated or damaged: a {sop_class} without Rows, Columns or pixel data"
        )
    raise UnsupportedImageError(
        f"{name}: DICOM file without pixel data (SOP class {sop_class}); it is not an image"
    )


def _check_fragments(f: BinaryIO, endian: str, size: int, name: str) -> None:
    """Walk the encapsulated items (headers only) up to the sequence delimiter."""
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise UnreadableImageError(
                f"{name}: truncated: the encapsulated pixel data ends before its delimiter"
            )
        group, elem, length = struct.unpack(f"{endian}HHL", head)
        tag = group << 16 | elem
        if tag == _SEQ_DELIM:
            return
        if tag != _ITEM or length == _UNDEFINED:
            raise UnreadableImageError(
                f"{name}: corrupt encapsulated pixel data (unexpected tag {tag:08X} "
                f"at offset {f.tell() - 8})"
            )
        if f.tell() + length > size:
            raise UnreadableImageError(
                f"{name}: truncated: a pixel data fragment needs {length} bytes but the file "
                f"holds {size - f.tell()}"
            )
        f.seek(length, 1)


def _check_decoder(ts: UID, name: str) -> None:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise UnsupportedImageError(
            f"{name}: transfer syntax {ts} ({_label(ts)}) has no pixel data decoder in "
            f"pydicom {pydicom.__version__}; convert the file to an uncompressed syntax "
            "first (for example `gdcmconv --raw in.dcm out.dcm`)"
        ) from None
    if not decoder.is_available and own_decoder(ts) is None:
        hint = next((h for uids, h in _PIP_HINTS if ts in uids), "pip install python-gdcm")
        missing = "; ".join(decoder.missing_dependencies)
        raise UnsupportedImageError(
            f"{name}: no installed plugin decodes transfer syntax {ts} ({ts.name}) "
            f"[{missing}]; fix: {hint}"
        )


def _label(ts: UID) -> str:
    return ts.name if ts.name != str(ts) else "unknown or private"


def _int(ds: Dataset, keyword: str, name: str, default: int | None = None) -> int:
    value: Any = ds.get(keyword, default)
    if value is None:
        raise UnreadableImageError(f"{name}: the image pixel module lacks {keyword}")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise UnreadableImageError(f"{name}: invalid {keyword} value") from exc


def _sop_class(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return f"{uid} ({UID(uid).name})" if uid else "unknown"


def _why(exc: BaseException) -> str:
    """An exception as a short reason; pydicom messages name tags and syntaxes, not values."""
    text = " ".join(str(exc).split())
    text = text.removeprefix(_ALL_PLUGINS_FAILED).strip()
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
