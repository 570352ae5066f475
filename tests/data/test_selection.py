"""Selection rules (data.select) on real DICOM headers, and their validation on load."""

from __future__ import annotations

from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from medops.config import parse_config
from medops.config.ingest import SelectConfig
from medops.data.selection import Selection
from medops.errors import ConfigError
from tests.samples import pydicom_file


@pytest.fixture(scope="module")
def ct() -> Dataset:
    return pydicom.dcmread(pydicom_file("CT_small.dcm"), stop_before_pixels=True)


@pytest.fixture(scope="module")
def mr() -> Dataset:
    return pydicom.dcmread(pydicom_file("MR_small.dcm"), stop_before_pixels=True)


def _select(**rules: Any) -> Selection:
    return Selection(parse_config({"project": "p", "data": {"select": rules}}).data.select)


def test_empty_rules_accept_everything(ct: Dataset, mr: Dataset) -> None:
    sel = _select()
    assert sel.accepts_all
    assert sel.reject_reason(ct) is None and sel.reject_reason(mr) is None


def test_modality(ct: Dataset, mr: Dataset) -> None:
    sel = _select(modality=["ct", "CR"])
    assert sel.reject_reason(ct) is None
    assert sel.reject_reason(mr) == "modality MR not in ['CR', 'CT']"


def test_body_part_and_series_description(ct: Dataset) -> None:
    ds = Dataset()
    ds.update(ct)
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDescription = "AXIAL 5mm"
    assert _select(body_part=["chest"]).reject_reason(ds) is None
    assert _select(body_part=["HEAD"]).reject_reason(ds) == "body part CHEST not in ['HEAD']"
    assert _select(series_description="(?i)axial").reject_reason(ds) is None
    assert "does not match" in (_select(series_description="^COR").reject_reason(ds) or "")
    del ds.BodyPartExamined
    assert "(none)" in (_select(body_part=["CHEST"]).reject_reason(ds) or "")


def test_image_type_size_and_numeric_ranges(ct: Dataset, mr: Dataset) -> None:
    assert list(ct.ImageType)[:2] == ["ORIGINAL", "PRIMARY"]
    assert _select(image_type=["original", "PRIMARY"]).reject_reason(ct) is None
    assert _select(image_type=["DERIVED"]).reject_reason(ct) == "image type lacks ['DERIVED']"
    assert _select(min_rows=ct.Rows + 1).reject_reason(ct) == f"rows {ct.Rows} < {ct.Rows + 1}"
    assert _select(min_columns=ct.Columns).reject_reason(ct) is None
    thickness = float(ct.SliceThickness)
    assert _select(ranges={"SliceThickness": {"max": thickness}}).reject_reason(ct) is None
    reason = _select(ranges={"SliceThickness": {"max": thickness - 1}}).reject_reason(ct)
    assert reason is not None and reason.startswith("SliceThickness")
    assert _select(ranges={"KVP": {"min": 80, "max": 140}}).reject_reason(ct) is None
    assert "KVP" not in mr
    assert _select(ranges={"KVP": {"min": 80}}).reject_reason(mr) == \
        "KVP missing (a range is set on it)"


@pytest.mark.parametrize(("rules", "message"), [
    ({"series_description": "([unclosed"}, "data.select.series_description"),
    ({"ranges": {"SliceThicknes": {"max": 5}}}, "did you mean 'SliceThickness'"),
    ({"ranges": {"PatientName": {"max": 5}}}, "not a number"),
    ({"ranges": {"SliceThickness": {}}}, "needs min, max or both"),
    ({"ranges": {"SliceThickness": {"min": 5, "max": 1}}}, "above max"),
    ({"modalty": ["CT"]}, "did you mean 'modality'"),
])
def test_bad_rules_fail_on_load(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"data\.select") as err:
        parse_config({"project": "p", "data": {"select": rules}})
    assert message in str(err.value)


def test_is_empty() -> None:
    assert SelectConfig().is_empty and not SelectConfig(modality=["CT"]).is_empty
