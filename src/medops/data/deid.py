"""De-identification per DICOM PS3.15 Annex E, the Basic Application Level Confidentiality
Profile, with two of its options: Retain Longitudinal Temporal Information with Modified Dates
(``data.deid.date_shift``) and Retain Safe Private (``data.deid.keep_private``).

The profile's table (E.1-1) is data, in ``deid_profile.tsv`` beside this module: one action per
attribute. What medops does with each action:

- X remove; Z empty (Patient ID and Patient's Name get a pseudonym instead, a dummy value Z
  allows, so that items still group by patient); D a dummy value of the element's VR;
- U a UID remapped as ``2.25.<int>`` from an HMAC of the original under the project secret: the
  same UID maps to the same new UID in every run, different UIDs to different ones;
- the IOD-dependent actions are resolved to the one that keeps the most conformance without
  keeping the value: X/Z, Z/D and X/Z/D -> Z; X/D -> X; X/Z/U* (reference sequences) -> keep the
  sequence and clean its items, whose UIDs are remapped;
- D on a sequence or a binary value removes it: a dummy would be no less empty.

Attributes the table does not list are kept (the profile's rule), and sequences are cleaned
item by item. Private elements go unless ``keep_private`` names their tag or creator. Pixel
data is never touched; an image whose BurnedInAnnotation is YES is refused (the caller
quarantines it) unless ``allow_burned_in``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from medops.config.enums import StrEnum
from medops.config.ingest import DeidConfig
from medops.errors import DataError

PROFILE_FILE = "deid_profile.tsv"
METHOD = "medops: PS3.15 E.1 Basic Application Confidentiality Profile"  # LO: <= 64
_DCM = "DCM"


class Action(StrEnum):
    DUMMY = "D"
    EMPTY = "Z"
    REMOVE = "X"
    KEEP = "K"
    UID = "U"


#: How the profile's IOD-dependent actions are resolved (see the module docstring).
_RESOLVE = {
    "D": Action.DUMMY, "Z": Action.EMPTY, "X": Action.REMOVE, "K": Action.KEEP, "U": Action.UID,
    "X/Z": Action.EMPTY, "Z/D": Action.EMPTY, "X/Z/D": Action.EMPTY, "X/D": Action.REMOVE,
    "X/Z/U*": Action.UID,
}
_PSEUDONYMISED = {0x00100010, 0x00100020}  # Patient's Name, Patient ID
_BIRTH_DATE = 0x00100030  # too identifying to keep even shifted: emptied as the profile says
_FILE_META_AE = (0x00020016, 0x00020017, 0x00020018)  # source/sending/receiving AE titles
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ"}
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000D",
          "SH": "ANON", "AE": "ANON", "CS": "ANON", "IS": "0", "DS": "0"}
_NUMERIC = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}


class BurnedInAnnotationError(DataError):
    """The image says its pixels carry burned-in text (BurnedInAnnotation YES)."""


@dataclass(frozen=True)
class ProfileEntry:
    tag: str  # as the standard writes it: (gggg,eeee), 'x' for any hex digit
    action: Action
    rule: str  # the action the standard lists, before resolution
    name: str


@dataclass(frozen=True)
class Profile:
    exact: dict[int, ProfileEntry]
    masked: tuple[tuple[int, int, ProfileEntry], ...]  # (mask, value, entry)

    def action(self, tag: int) -> Action | None:
        entry = self.exact.get(tag)
        if entry is None:
            entry = next((e for mask, value, e in self.masked if tag & mask == value), None)
        return entry.action if entry else None

    def entries(self) -> list[ProfileEntry]:
        return [*self.exact.values(), *(e for _, _, e in self.masked)]


@cache
def basic_profile() -> Profile:
    """Table E.1-1, parsed once from the data file."""
    text = resources.files("medops.data").joinpath(PROFILE_FILE).read_text(encoding="utf-8")
    exact: dict[int, ProfileEntry] = {}
    masked: list[tuple[int, int, ProfileEntry]] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        tag, rule, name = line.split("\t")
        entry = ProfileEntry(tag=tag, action=_RESOLVE[rule], rule=rule, name=name)
        hexdigits = tag.strip("()").replace(",", "")
        if "x" in hexdigits.lower():
            mask = int("".join("0" if c in "xX" else "F" for c in hexdigits), 16)
            value = int("".join("0" if c in "xX" else c for c in hexdigits), 16)
            masked.append((mask, value, entry))
        else:
            exact[int(hexdigits, 16)] = entry
    return Profile(exact=exact, masked=tuple(masked))


class Deidentifier:
    """Applies the profile with one project secret; deterministic: same input, same output."""

    def __init__(self, cfg: DeidConfig, secret: bytes) -> None:
        if len(secret) < 16:
            raise DataError("the de-identification secret must be at least 16 bytes long")
        self.cfg = cfg
        self._secret = secret
        self._profile = basic_profile()
        self._keep_tags = cfg.private_tags()
        self._keep_creators = cfg.private_creators()

    # -- pseudonyms -----------------------------------------------------------------------
    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The remapped UID: ``2.25.`` and a 128-bit integer, at most 44 characters."""
        number = int.from_bytes(self._mac("uid", original.strip())[:16], "big")
        return f"2.25.{number or 1}"

    def patient_pseudonym(self, patient_id: str) -> str:
        return "pt-" + self._mac("patient", patient_id.strip()).hex()[:16]

    def shift_days(self, patient_id: str) -> int:
        """Days to move this patient's dates back: 1..max_shift_days, the same every run."""
        number = int.from_bytes(self._mac("date", patient_id.strip())[:8], "big")
        return 1 + number % self.cfg.max_shift_days

    # -- datasets and files ---------------------------------------------------------------
    def deidentify_bytes(self, data: bytes, name: str) -> bytes:
        """A DICOM file's bytes, de-identified. ``name`` (pseudonymous) goes in messages."""
        ds = read_dataset(data, name)
        self.deidentify(ds, name)
        return write_dataset(ds, name)

    def deidentify(self, ds: Dataset, name: str) -> None:
        """De-identify ``ds`` in place. BurnedInAnnotationError unless allowed."""
        burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        if burned == "YES" and not self.cfg.allow_burned_in:
            raise BurnedInAnnotationError(
                f"{name}: BurnedInAnnotation is YES (text in the pixels may identify the "
                "patient); set data.deid.allow_burned_in: true to accept such images")
        patient = str(ds.get("PatientID", "") or "")
        shift = self.shift_days(patient) if self.cfg.date_shift else 0
        pseudonym = self.patient_pseudonym(patient)
        self._clean(ds, shift, pseudonym)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            for tag in _FILE_META_AE:
                if tag in meta:
                    del meta[tag]
            if "SOPInstanceUID" in ds:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        self._mark(ds)

    def _clean(self, ds: Dataset, shift: int, pseudonym: str) -> None:
        for elem in list(ds):  # a copy: elements are deleted as we go
            tag = int(elem.tag)
            if elem.tag.is_private:
                self._private(ds, elem, shift, pseudonym)
                continue
            action = self._profile.action(tag)
            if action is None or action is Action.KEEP:
                if elem.VR == "SQ":
                    self._clean_items(elem, shift, pseudonym)
                continue
            if shift and elem.VR in ("DA", "DT", "TM") and tag != _BIRTH_DATE:
                if elem.VR != "TM":  # times stay: only the dates move
                    elem.value = _shift_value(elem, shift)
                continue
            self._apply(ds, elem, action, shift, pseudonym)

    def _apply(self, ds: Dataset, elem: DataElement, action: Action, shift: int,
               pseudonym: str) -> None:
        tag = int(elem.tag)
        if tag in _PSEUDONYMISED:
            elem.value = pseudonym
        elif action is Action.REMOVE or (action is Action.DUMMY and elem.VR in _BINARY_VRS):
            del ds[elem.tag]
        elif action is Action.UID:
            if elem.VR == "SQ":
                self._clean_items(elem, shift, pseudonym)
            elif elem.VR == "UI":
                elem.value = self._map_uids(elem.value)
            else:
                del ds[elem.tag]
        elif action is Action.EMPTY:
            elem.value = Sequence() if elem.VR == "SQ" else None
        elif elem.VR == "UI":  # a dummy UID that still tells distinct values apart
            elem.value = self._map_uids(elem.value)
        else:
            elem.value = _dummy(elem.VR)

    def _clean_items(self, elem: DataElement, shift: int, pseudonym: str) -> None:
        for item in elem.value or []:
            self._clean(item, shift, pseudonym)

    def _map_uids(self, value: Any) -> Any:
        if value is None or value == "":
            return value
        if isinstance(value, (list, tuple, MultiValue)):
            return [self.uid(str(v)) for v in value]
        return self.uid(str(value))

    def _private(self, ds: Dataset, elem: DataElement, shift: int, pseudonym: str) -> None:
        tag = elem.tag
        if 0x0010 <= tag.element <= 0x00FF:  # a private creator: kept with a kept block
            creator = str(elem.value or "").strip()
            block = (tag.group << 16) | (tag.element << 8)
            keep = creator in self._keep_creators or any(
                block <= t < block + 0x100 for t in self._keep_tags)
        else:
            creator_tag = BaseTag((tag.group << 16) | (tag.element >> 8))
            creator = str(ds[creator_tag].value).strip() if creator_tag in ds else ""
            keep = int(tag) in self._keep_tags or (bool(creator)
                                                   and creator in self._keep_creators)
        if not keep:
            del ds[tag]
        elif elem.VR == "SQ":
            self._clean_items(elem, shift, pseudonym)

    def _mark(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        options = ["Basic Application Confidentiality Profile"]
        codes = [("113100", "Basic Application Confidentiality Profile")]
        if self.cfg.date_shift:
            options.append("Retain Longitudinal Temporal Information Modified Dates Option")
            codes.append(("113107", options[-1]))
        if self.cfg.keep_private:
            options.append("Retain Safe Private Option")
            codes.append(("113111", options[-1]))
        ds.DeidentificationMethod = METHOD
        seq = Sequence()
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, _DCM, meaning
            seq.append(item)
        ds.DeidentificationMethodCodeSequence = seq
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if self.cfg.date_shift else "REMOVED")


def read_dataset(data: bytes, name: str) -> Dataset:
    """A whole DICOM file parsed eagerly (pydicom parses lazily: a damaged element would
    otherwise fail half-way through de-identification)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        for _ in ds.iterall():
            pass
    except Exception as exc:
        raise DataError(f"{name}: cannot parse the DICOM file ({type(exc).__name__})") from None
    if "SOPClassUID" not in ds and "PixelData" not in ds:
        raise DataError(f"{name}: not a DICOM image (no SOP Class UID, no pixel data)")
    return ds


def write_dataset(ds: Dataset, name: str) -> bytes:
    """``ds`` as a file, in the encoding it was read with (the pixel data byte for byte)."""
    out = io.BytesIO()
    try:
        ds.save_as(out, enforce_file_format=False)
    except Exception as exc:
        raise DataError(f"{name}: cannot write the DICOM file ({type(exc).__name__})") from None
    return out.getvalue()


def _dummy(vr: str) -> object:
    if vr in _NUMERIC:
        return 0
    return _DUMMY.get(vr, _DUMMY_TEXT)


def _shift_value(elem: DataElement, days: int) -> object:
    values = elem.value if elem.VM > 1 else [elem.value]
    shifted = [_shift_one(str(v) if v is not None else "", elem.VR, days) for v in values]
    return shifted if elem.VM > 1 else shifted[0]


def _shift_one(value: str, vr: str, days: int) -> str | None:
    """``value`` (DA YYYYMMDD or DT YYYYMMDD...) moved ``days`` back; None if not a date."""
    value = value.strip()
    if len(value) < 8:
        return None
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return None
    moved = (day - dt.timedelta(days=days)).strftime("%Y%m%d")
    return moved if vr == "DA" else moved + value[8:]
