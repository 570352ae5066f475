"""Request bodies to model inputs: size and type checks, bomb guards, decode and preprocess.

Accepted bodies: one image as ``application/dicom``, ``image/png`` or ``image/jpeg`` (and
``application/octet-stream``, sniffed), or ``multipart/form-data`` with one file per image.
Nothing from the request but pixels is kept: file names and DICOM headers are dropped here.
"""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from starlette.requests import Request

from medops.config.enums import StrEnum, WindowMode
from medops.data import dicom
from medops.data.images import read_pixels_with_range
from medops.errors import (
    DataError,
    MedopsError,
    PayloadTooLargeError,
    RequestError,
    UnreadableImageError,
    UnsupportedMediaError,
)
from medops.monitor import intensity_stats
from medops.preprocess import PreprocessProfile, apply_profile


class MediaType(StrEnum):
    DICOM = "application/dicom"
    PNG = "image/png"
    JPEG = "image/jpeg"
    OCTET = "application/octet-stream"
    MULTIPART = "multipart/form-data"


_SINGLE = {MediaType.DICOM, MediaType.PNG, MediaType.JPEG, MediaType.OCTET}
ACCEPTED = ", ".join(m.value for m in MediaType)
MAX_FILES = 256


@dataclass(frozen=True)
class PreparedImage:
    """A model input and what capture records about it (no identifiers)."""

    x: np.ndarray  # (C, H, W) float32, exactly as the profile makes it
    input_format: str
    height: int
    width: int
    stats: dict[str, float]


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLargeError(_too_large(int(declared), limit_bytes))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLargeError(_too_large(size, limit_bytes, at_least=True))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    more = "at least " if at_least else ""
    return (f"request body of {more}{size / 2**20:.1f} MiB exceeds the limit of "
            f"{limit / 2**20:.1f} MiB (serve.max_body_mb); send fewer or smaller images")


def media_type(request: Request) -> MediaType:
    raw = request.headers.get("content-type", "")
    base = raw.split(";", 1)[0].strip().lower()
    try:
        return MediaType(base)
    except ValueError:
        shown = repr(base) if base else "no Content-Type"
        raise UnsupportedMediaError(
            f"unsupported content type {shown}; send one image as application/dicom, "
            f"image/png or image/jpeg, or several as multipart/form-data") from None


async def split_images(request: Request, limit_bytes: int) -> list[bytes]:
    """The image files of a request, in order; RequestError for an empty or odd body."""
    kind = media_type(request)
    body = await read_body(request, limit_bytes)
    if not body:
        raise RequestError(f"empty request body; send the image file bytes as {kind}")
    if kind in _SINGLE:
        return [body]
    blobs = await _multipart(request, body)
    if not blobs:
        raise RequestError("multipart request without any file part; add one part per image")
    return blobs


async def _multipart(request: Request, body: bytes) -> list[bytes]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartParser

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    # The body was read (and size-checked) already: parse that copy, not the spent stream.
    parser = MultiPartParser(request.headers, chunks(), max_files=MAX_FILES,
                             max_fields=MAX_FILES)
    try:
        form = await parser.parse()
    except Exception as exc:  # python-multipart raises several types for broken bodies
        raise RequestError(f"malformed multipart/form-data body ({exc})") from exc
    blobs: list[bytes] = []
    try:
        for _, value in form.multi_items():
            if not isinstance(value, UploadFile):
                continue  # plain form fields are ignored
            ctype = (value.content_type or MediaType.OCTET.value).split(";", 1)[0].strip()
            if ctype.lower() not in {m.value for m in _SINGLE}:
                raise UnsupportedMediaError(
                    f"part {len(blobs) + 1} has unsupported content type {ctype!r}; parts must "
                    "be application/dicom, image/png, image/jpeg or application/octet-stream")
            data = await value.read()
            if not data:
                raise RequestError(f"part {len(blobs) + 1} is empty; every part must hold "
                                   "an image file")
            blobs.append(data)
    finally:
        await form.close()
    return blobs


def read_checked(
    data: bytes, window: WindowMode, max_pixels: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """:func:`~medops.data.images.read_pixels_with_range` of a body, after refusing an image
    whose header declares more than ``max_pixels`` (rows x columns x frames): the
    decompression-bomb guard, checked before anything is decoded. DICOM runs its own steps on
    the header parsed for the check, so the header is parsed once."""
    name = f"<{len(data)} bytes>"
    if data[128:132] == b"DICM":
        f = io.BytesIO(data)
        header = dicom.read_header(f, name)
        rows, cols = int(header.dataset.Rows), int(header.dataset.Columns)
        _check_total(rows * cols * header.n_frames, f"{rows}x{cols}x{header.n_frames} frames",
                     max_pixels)
        header = dicom.with_pixel_data(f, header)
        index = dicom.frame_index(header, None)
        stored = dicom.decode_stored(f, header, index)
        return dicom.to_display_with_range(stored, header, index, window)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as img:
            _check_total(img.width * img.height, f"{img.height}x{img.width}", max_pixels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(f"image refused: {exc}") from exc
    except MedopsError:
        raise
    except Exception:
        pass  # not PNG/JPEG: read_pixels gives the precise error
    return read_pixels_with_range(data, frame=None, window=window)


def _check_total(total: int, what: str, max_pixels: int) -> None:
    if total > max_pixels:
        raise PayloadTooLargeError(
            f"image of {what} = {total} pixels exceeds the limit of {max_pixels} "
            "(serve.max_image_pixels, a decompression-bomb guard)")


def prepare(data: bytes, profile: PreprocessProfile, max_pixels: int) -> PreparedImage:
    """Decode and preprocess one image with ``profile``; runs in a worker thread.

    The same two steps as :func:`medops.preprocess.preprocess_bytes` (read_pixels, then
    apply_profile), split so that raw intensity statistics come for free."""
    try:
        raw, value_range = read_checked(data, profile.window, max_pixels)
        x = apply_profile(raw, profile, value_range)
    except MedopsError:
        raise
    except Exception as exc:  # a decoder failing in a way the data layer did not foresee
        raise UnreadableImageError(f"cannot decode the image ({type(exc).__name__})") from exc
    if not np.isfinite(x).all():
        raise DataError("the image has non-finite values after preprocessing")
    fmt = "dicom" if data[128:132] == b"DICM" else ("png" if data[:4] == b"\x89PNG" else "jpeg")
    stats = {**intensity_stats(x, "pre"), **intensity_stats(raw, "raw")}
    return PreparedImage(x=x, input_format=fmt, height=int(raw.shape[0]),
                         width=int(raw.shape[1]), stats=stats)
