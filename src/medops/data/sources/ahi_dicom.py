"""Rebuild DICOM Part-10 instances from AWS HealthImaging image-set metadata and frames.

HealthImaging stores an image set as one JSON document (GetImageSetMetadata) and one blob per
frame (GetImageFrame). The JSON holds the DICOM attributes by keyword, split over four levels::

    {"Patient": {"DICOM": {...}},
     "Study": {"DICOM": {...},
               "Series": {SeriesUID: {"DICOM": {...},
                                      "Instances": {SOPUID: {"DICOM": {...},
                                                             "DICOMVRs": {...},
                                                             "StoredTransferSyntaxUID": ...,
                                                             "ImageFrames": [{"ID": ...}]}}}}}}

Values are JSON-ish: strings, numbers, lists for multi-valued attributes, lists of objects for
sequences, base64 for binary VRs, null for empty. Each frame blob is encoded with the
instance's ``StoredTransferSyntaxUID`` (HTJ2K lossless, 1.2.840.10008.1.2.4.202, when absent:
HealthImaging transcodes most syntaxes and keeps a few, e.g. JPEG baseline, in their original
encoding). Frames are decoded here, by that syntax, and the instance is written uncompressed
(Explicit VR Little Endian), so the rest of medops reads it like any DICOM file and a frame that
does not decode is refused at ingestion.
"""

from __future__ import annotations

import base64
import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom import config as pydicom_config
from pydicom import dcmwrite
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from medops.data.dicom import DicomHeader, decode_stored
from medops.errors import UnreadableImageError, UnsupportedImageError

#: What HealthImaging stores when an instance names no syntax (its documented default).
DEFAULT_STORED_SYNTAX = UID("1.2.840.10008.1.2.4.202")

_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW", "US or SS or OW"}
_NUMBER_VRS = {"US", "UL", "SS", "SL", "FL", "FD", "SV", "UV", "US or SS"}
_PIXEL_KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                   "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                   "PlanarConfiguration")
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_NATIVE = {UID("1.2.840.10008.1.2"), UID("1.2.840.10008.1.2.1")}


@dataclass(frozen=True)
class FrameRef:
    frame_id: str
    syntax: UID


@dataclass
class InstanceRef:
    """One instance of an image set: its merged attributes and the frames to fetch."""

    sop_instance_uid: str
    dataset: Dataset
    frames: list[FrameRef] = field(default_factory=list)


def parse_metadata_blob(blob: bytes, image_set_id: str) -> dict[str, Any]:
    """The metadata document from GetImageSetMetadata's blob (gzip-compressed or plain)."""
    import json

    try:
        raw = zlib.decompress(blob, 16 + zlib.MAX_WBITS) if blob[:2] == b"\x1f\x8b" else blob
        doc = json.loads(raw)
    except (zlib.error, ValueError) as exc:
        raise UnreadableImageError(
            f"image set {image_set_id}: the metadata is not gzip JSON ({type(exc).__name__}); "
            "the service answered something else than GetImageSetMetadata"
        ) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("Study"), dict):
        raise UnreadableImageError(f"image set {image_set_id}: the metadata has no Study level")
    return doc


def instances(doc: dict[str, Any], image_set_id: str) -> Iterator[InstanceRef]:
    """Every instance of the metadata document, attributes of all four levels merged."""
    patient = _attrs(doc.get("Patient", {}))
    study = doc["Study"]
    study_attrs = _attrs(study)
    for series in (study.get("Series") or {}).values():
        series_attrs = _attrs(series)
        for sop_uid, inst in (series.get("Instances") or {}).items():
            merged = {**patient, **study_attrs, **series_attrs, **_attrs(inst)}
            vrs = inst.get("DICOMVRs") or {}
            ds = _dataset(merged, vrs, image_set_id)
            default = inst.get("StoredTransferSyntaxUID") or DEFAULT_STORED_SYNTAX
            frames = [FrameRef(str(f["ID"]), UID(f.get("StoredTransferSyntaxUID") or default))
                      for f in inst.get("ImageFrames") or []]
            yield InstanceRef(str(sop_uid), ds, frames)


def build_instance(ref: InstanceRef, frames: list[bytes], image_set_id: str) -> bytes:
    """The Part-10 file of ``ref``: its attributes, the frames decoded, written uncompressed."""
    ds = ref.dataset
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword not in ds:
            raise UnsupportedImageError(
                f"image set {image_set_id}: an instance has no {keyword}; cannot write DICOM")
    if frames:
        decoded = [_decode(ds, ref.frames[i], blob, image_set_id) for i, blob in enumerate(frames)]
        _set_pixels(ds, decoded, ref.frames[0].syntax)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    out = io.BytesIO()
    with pydicom_config.disable_value_validation():
        correct_ambiguous_vr(ds, is_little_endian=True)
        _fit_16bit(ds)
        dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _decode(ds: Dataset, frame: FrameRef, blob: bytes, image_set_id: str) -> np.ndarray | bytes:
    """One frame's stored values (native syntaxes: the bytes as they are)."""
    what = f"image set {image_set_id} frame {frame.frame_id}"
    if frame.syntax in _NATIVE:
        expected = _frame_bytes(ds)
        if len(blob) < expected:
            raise UnreadableImageError(f"{what}: {len(blob)} bytes, expected {expected}")
        return blob[:expected]
    one = Dataset()
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            one[keyword] = ds[keyword]
    one.NumberOfFrames = 1
    one.file_meta = FileMetaDataset()
    one.file_meta.TransferSyntaxUID = frame.syntax
    one.PixelData = encapsulate([blob])
    one["PixelData"].VR = "OB"
    header = DicomHeader(what, one, frame.syntax, 1, in_memory=True)
    try:
        return decode_stored(io.BytesIO(), header, 0)
    except UnreadableImageError:
        raise
    except Exception as exc:  # a decoder missing or a header it refuses: still this frame's fault
        raise UnreadableImageError(f"{what}: cannot decode ({type(exc).__name__}: {exc})") from exc


def _set_pixels(ds: Dataset, decoded: list[np.ndarray | bytes], syntax: UID) -> None:
    bits = int(ds.get("BitsAllocated", 8))
    chunks: list[bytes] = []
    for frame in decoded:
        if isinstance(frame, bytes):
            chunks.append(frame)
            continue
        signed = frame.dtype.kind == "i"
        dtype = np.dtype(f"<{'i' if signed else 'u'}{max(bits // 8, 1)}")
        chunks.append(np.ascontiguousarray(frame, dtype=dtype).tobytes())
        if frame.ndim == 3:  # the decoders hand colour back as interleaved RGB
            ds.PhotometricInterpretation = "RGB"
            ds.PlanarConfiguration = 0
    data = b"".join(chunks)
    if len(data) % 2:
        data += b"\0"
    if len(decoded) > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = len(decoded)
    ds.PixelData = data
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    if syntax not in _NATIVE and syntax != DEFAULT_STORED_SYNTAX:
        # Kept in its original (possibly lossy) encoding: say which one it came from.
        ds.DerivationDescription = f"decoded by medops from {syntax}"


def _fit_16bit(ds: Dataset) -> None:
    """Reinterpret 16-bit values whose sign disagrees with the resolved VR (a padding value
    written as US 63536 in a signed image is -2000): same bits, representable value."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _fit_16bit(item)
        elif elem.VR in ("US", "SS") and elem.value is not None:
            multi = elem.VM > 1
            values = list(elem.value) if multi else [elem.value]
            fixed = [(v - 65536 if elem.VR == "SS" and v > 32767 else
                      v + 65536 if elem.VR == "US" and v < 0 else v) for v in values]
            if fixed != values:
                elem.value = fixed if multi else fixed[0]


def _frame_bytes(ds: Dataset) -> int:
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.get("BitsAllocated", 8))
    return (pixels * bits + 7) // 8


def _attrs(level: dict[str, Any]) -> dict[str, Any]:
    attrs = level.get("DICOM") or {}
    return dict(attrs) if isinstance(attrs, dict) else {}


def _dataset(attrs: dict[str, Any], vrs: dict[str, str], image_set_id: str) -> Dataset:
    ds = Dataset()
    with pydicom_config.disable_value_validation():
        for key, value in attrs.items():
            element = _element(key, value, vrs, image_set_id)
            if element is not None:
                ds.add(element)
    return ds


def _element(key: str, value: Any, vrs: dict[str, str], image_set_id: str) -> DataElement | None:
    tag = tag_for_keyword(key)
    if tag is None:
        try:
            tag = Tag(int(key.strip("()").replace(",", ""), 16))
        except ValueError:
            return None  # not an attribute (HealthImaging bookkeeping): nothing to write
    tag = Tag(tag)
    if tag.group == 0x0002 or int(tag) in _PIXEL_TAGS:
        return None  # file meta is rewritten; pixel data comes from the frames
    vr = vrs.get(key)
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    # An ambiguous VR ("US or SS") stays so until the whole instance is known: build_instance
    # resolves it from PixelRepresentation / BitsAllocated.
    return DataElement(tag, vr, _value(vr, value, vrs, image_set_id))


def _value(vr: str, value: Any, vrs: dict[str, str], image_set_id: str) -> Any:
    if value is None:
        return None
    if vr == "SQ":
        items = value if isinstance(value, list) else [value]
        return Sequence([_dataset(i, vrs, image_set_id) for i in items if isinstance(i, dict)])
    if vr in _BINARY_VRS and isinstance(value, str):
        return base64.b64decode(value)
    convert: Callable[[Any], Any] = _scalar(vr)
    if isinstance(value, list):
        return [convert(v) for v in value]
    return convert(value)


def _scalar(vr: str) -> Callable[[Any], Any]:
    if vr in ("DS", "IS"):
        return lambda v: v.strip() if isinstance(v, str) else v
    if vr == "PN":
        return lambda v: v.get("Alphabetic", "") if isinstance(v, dict) else v
    if vr == "AT":
        return lambda v: Tag(int(v, 16)) if isinstance(v, str) else v
    if vr in _NUMBER_VRS:
        return lambda v: float(v) if vr in ("FL", "FD") else int(v)
    return lambda v: v
