"""De-identification on real DICOM files against the PS3.15 Basic Profile table."""

from __future__ import annotations

import copy
import datetime as dt
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from medops.config.ingest import DeidConfig
from medops.data.deid import (
    Action,
    BurnedInAnnotationError,
    Deidentifier,
    basic_profile,
    write_dataset,
)
from medops.data.images import read_stored_values
from tests.samples import pydicom_file

SECRET = b"test-secret-0123456789abcdef"


def _read(name: str) -> Dataset:
    return pydicom.dcmread(pydicom_file(name))


def _deid(ds: Dataset, cfg: DeidConfig | None = None, secret: bytes = SECRET) -> Dataset:
    out = copy.deepcopy(ds)
    Deidentifier(cfg or DeidConfig(), secret).deidentify(out, "test")
    return out


def _roundtrip(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(write_dataset(ds, "test")))


def _shared_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "dicom" / "nema_wg04_uncompressed").glob("*.dcm"))[:6]


def test_profile_table_is_complete_and_resolved() -> None:
    profile = basic_profile()
    entries = profile.entries()
    assert len(entries) > 600  # Table E.1-1 lists some 650 attributes
    assert profile.action(0x00100010) is Action.EMPTY  # Patient's Name: Z
    assert profile.action(0x00100020) is Action.EMPTY  # Patient ID: Z/D
    assert profile.action(0x0020000D) is Action.UID  # Study Instance UID: U
    assert profile.action(0x00081040) is Action.REMOVE  # Institutional Department Name: X
    assert profile.action(0x60023000) is Action.REMOVE  # Overlay Data, repeating group 60xx
    assert profile.action(0x00280010) is None  # Rows: not listed, kept


def _value_for(vr: str, tag: int) -> object:
    """A plausible identifying value of ``vr`` for the synthetic everything-present dataset."""
    values: dict[str, object] = {
        "PN": "Doe^Jane", "LO": f"secret-{tag:08X}", "SH": f"s{tag:08X}", "LT": "John's notes",
        "ST": "Home address 12", "UT": "free text", "UC": "unlimited", "CS": "SECRET",
        "DA": "20210304", "TM": "101112", "DT": "20210304101112", "AS": "042Y",
        "UI": f"1.2.3.{tag}", "IS": "12", "DS": "1.5", "AE": "HOSPITAL_AE", "UR": "http://x/y",
        "US": 7, "SS": 7, "UL": 7, "SL": 7, "FL": 1.5, "FD": 1.5, "AT": 0x00100010,
        "OB": b"\x01\x02", "OW": b"\x01\x02", "UN": b"\x01\x02",
    }
    return values[vr]


def _everything_present() -> tuple[Dataset, list[int]]:
    """CT_small with one element for every plain tag of the table, each holding a value."""
    ds = _read("CT_small.dcm")
    added: list[int] = []
    for tag in basic_profile().exact:
        if tag >> 16 in (0x0000, 0x0002, 0xFFFA, 0xFFFC):
            continue  # command and file meta groups, and the signature/padding markers
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue  # retired from pydicom's dictionary
        if vr == "SQ":
            item = Dataset()
            item.PatientName = "Doe^Jane"
            item.ReferencedSOPInstanceUID = "1.2.3.4.5"
            ds.add_new(tag, vr, Sequence([item]))
        elif vr in ("OF", "OD", "OL", "OV", "UV", "SV"):
            continue
        else:
            ds.add_new(tag, vr, _value_for(vr, tag))
        added.append(tag)
    return ds, added


def test_every_listed_attribute_is_removed_emptied_or_replaced() -> None:
    ds, added = _everything_present()
    assert len(added) > 550
    out = _roundtrip(_deid(ds))
    profile = basic_profile()
    for tag in {int(e.tag) for e in ds if not e.tag.is_private}:
        action = profile.action(tag)
        if action is None:
            continue
        before = ds[tag]
        after = out.get(tag)
        where = f"{before.keyword or hex(tag)} ({action})"
        if action is Action.REMOVE:
            assert after is None, where
        elif action is Action.EMPTY:
            assert after is not None, where
            if tag in (0x00100010, 0x00100020):
                assert str(after.value).startswith("pt-"), where
            elif after.VR == "SQ":
                assert len(after.value) == 0, where
            else:
                assert after.value in (None, "", b""), where
        elif action is Action.DUMMY:
            assert after is None or after.value != before.value, where
        elif action is Action.UID:
            if before.VR == "SQ":
                assert after is not None and all(  # nested items are cleaned too
                    str(i.PatientName).startswith("pt-") for i in after.value), where
                assert all(i.ReferencedSOPInstanceUID.startswith("2.25.")
                           for i in after.value), where
            elif before.VR == "UI":
                assert after is not None and str(after.value).startswith("2.25."), where
                assert after.value != before.value, where
    # No identifying text survives anywhere in the written file.
    raw = write_dataset(_deid(ds), "test")
    for secret_text in (b"Doe^Jane", b"HOSPITAL_AE", b"John's notes", b"Home address",
                        b"CompressedSamples^CT1", b"secret-"):
        assert secret_text not in raw, secret_text


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_real_files_lose_their_phi_and_keep_their_pixels(name: str) -> None:
    ds = _read(name)
    patient_name = str(ds.PatientName)
    out_bytes = write_dataset(_deid(ds), "test")
    out = pydicom.dcmread(io.BytesIO(out_bytes))
    assert patient_name.encode() not in out_bytes
    assert str(ds.PatientID).encode() not in out_bytes or len(str(ds.PatientID)) < 4
    assert out.PatientIdentityRemoved == "YES"
    assert "PS3.15" in out.DeidentificationMethod
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.StudyDate == ""
    assert out.get("InstitutionName", "") == ""
    assert not [e for e in out if e.tag.is_private]
    assert out.PixelData == ds.PixelData
    assert np.array_equal(out.pixel_array, ds.pixel_array)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


def test_shared_files_keep_pixels_bit_for_bit(shared_data: Path, tmp_path: Path) -> None:
    files = [*_shared_files(shared_data),
             *sorted((shared_data / "dicom" / "htj2k").glob("*.dcm"))[:2]]
    assert files
    for path in files:
        ds = pydicom.dcmread(path)
        out_path = tmp_path / path.name
        out_path.write_bytes(write_dataset(_deid(ds), path.name))
        out = pydicom.dcmread(out_path)
        assert out.PixelData == ds.PixelData, path.name
        assert np.array_equal(read_stored_values(out_path), read_stored_values(path)), path.name
        if ds.get("PatientName"):
            assert str(ds.PatientName).encode() not in out_path.read_bytes(), path.name


def test_uids_are_consistent_distinct_and_valid() -> None:
    ct, mr = _read("CT_small.dcm"), _read("MR_small.dcm")
    a, b = _deid(ct), _deid(ct)  # two runs
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.SOPInstanceUID == b.SOPInstanceUID
    other = _deid(mr)
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    assert {a.get(k) for k in keys}.isdisjoint({other.get(k) for k in keys})
    for out in (a, other):
        for k in (*keys, "FrameOfReferenceUID"):
            if k in out:
                uid = str(out[k].value)
                assert UID(uid).is_valid and len(uid) <= 64 and uid.startswith("2.25."), uid
    assert out.SOPClassUID == mr.SOPClassUID  # the kind of object is not identifying
    assert _deid(ct, secret=b"another-secret-0123456789").StudyInstanceUID != a.StudyInstanceUID


def test_references_follow_the_remapped_uids() -> None:
    ct, mr = _read("CT_small.dcm"), _read("MR_small.dcm")
    item = Dataset()
    item.ReferencedSOPClassUID = mr.SOPClassUID
    item.ReferencedSOPInstanceUID = mr.SOPInstanceUID
    ct.ReferencedImageSequence = Sequence([item])
    out_ct, out_mr = _deid(ct), _deid(mr)
    ref = out_ct.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == out_mr.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == mr.SOPClassUID


def _date(value: str) -> dt.date:
    return dt.datetime.strptime(value, "%Y%m%d").date()


def test_date_shift_is_consistent_per_patient() -> None:
    cfg = DeidConfig(date_shift=True, max_shift_days=100)
    ct = _read("CT_small.dcm")
    ct.AcquisitionDate = "20040120"
    ct.StudyDate = "20040119"
    ct.PatientBirthDate = "19700101"
    second = copy.deepcopy(ct)  # another image of the same patient
    second.SOPInstanceUID = "1.2.3.999"
    second.StudyDate = "20050101"
    deid = Deidentifier(cfg, SECRET)
    days = deid.shift_days(str(ct.PatientID))
    assert 1 <= days <= 100
    a, b = _deid(ct, cfg), _deid(second, cfg)
    assert _date(ct.StudyDate) - _date(a.StudyDate) == dt.timedelta(days=days)
    assert _date(second.StudyDate) - _date(b.StudyDate) == dt.timedelta(days=days)
    # intervals are kept: acquisition one day after the study
    assert _date(a.AcquisitionDate) - _date(a.StudyDate) == dt.timedelta(days=1)
    assert a.StudyTime == ct.StudyTime  # times stay, only dates move
    assert _roundtrip(a).PatientBirthDate == ""  # emptied all the same
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [c.CodeValue for c in a.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]
    shifts = {deid.shift_days(f"patient-{i}") for i in range(20)}
    assert len(shifts) > 10  # patients get different shifts
    assert _deid(ct, cfg).StudyDate == a.StudyDate  # and the same one every run


def test_private_tags_go_unless_allow_listed() -> None:
    ct = _read("CT_small.dcm")
    private = [e for e in ct if e.tag.is_private]
    assert private, "CT_small.dcm carries GE private groups"
    assert not [e for e in _deid(ct) if e.tag.is_private]

    creator = next(e for e in private if 0x10 <= e.tag.element <= 0xFF)
    name = str(creator.value).strip()
    block = [e.tag for e in private
             if e.tag.group == creator.tag.group and e.tag.element >> 8 == creator.tag.element]
    kept = {e.tag for e in _deid(ct, DeidConfig(keep_private=[name])) if e.tag.is_private}
    assert creator.tag in kept and set(block) <= kept
    assert kept < {e.tag for e in private}  # other creators' blocks still go

    one = next(t for t in block if t.element > 0xFF)
    spec = f"({one.group:04X},{one.element:04X})"
    kept = {e.tag for e in _deid(ct, DeidConfig(keep_private=[spec])) if e.tag.is_private}
    assert kept == {one, creator.tag}


def test_keep_private_refuses_standard_tags() -> None:
    with pytest.raises(ValueError, match="standard tag"):
        DeidConfig(keep_private=["(0010,0010)"])


def test_burned_in_annotation_is_refused_unless_allowed() -> None:
    ds = _read("MR_small.dcm")
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError, match="allow_burned_in") as err:
        _deid(ds)
    assert str(ds.PatientName) not in str(err.value)
    out = _deid(ds, DeidConfig(allow_burned_in=True))
    assert out.PatientIdentityRemoved == "YES"


def test_short_secret_is_refused() -> None:
    from medops.errors import DataError

    with pytest.raises(DataError, match="16 bytes"):
        Deidentifier(DeidConfig(), b"short")
