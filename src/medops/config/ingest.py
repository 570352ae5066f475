"""What ingestion keeps and how it cleans it: ``data.select`` and ``data.deid`` in medops.yaml.

    data:
      select:
        modality: [CT, MR]                  # any of these
        body_part: [CHEST]                  # BodyPartExamined, any of these (case-insensitive)
        series_description: "(?i)axial"     # a regex searched in SeriesDescription
        image_type: [ORIGINAL, PRIMARY]     # every value listed must be in ImageType
        min_rows: 64
        min_columns: 64
        ranges: {SliceThickness: {max: 5}, KVP: {min: 80, max: 140}}
      deid:
        enabled: true
        secret_env: MEDOPS_DEID_SECRET      # else a secret generated once in secret_file
        date_shift: false                   # shift dates by a per-patient number of days
        keep_private: ["GEMS_PARM_01", "(0019,100A)"]
        allow_burned_in: false

Rules are checked when the file is loaded: a regex that does not compile, or a DICOM keyword
that does not exist (with the nearest one suggested), is a configuration error.
"""

from __future__ import annotations

import difflib
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: DICOM value representations holding numbers, the only ones a range can test.
NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_PRIVATE_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericRange(_Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> NumericRange:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both (e.g. {max: 5})")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class SelectConfig(_Strict):
    """Which DICOM instances become items; every rule set must pass. Empty: everything."""

    modality: list[str] = Field(default_factory=list)
    body_part: list[str] = Field(default_factory=list)
    series_description: str | None = None
    image_type: list[str] = Field(default_factory=list)
    min_rows: int = Field(0, ge=0)
    min_columns: int = Field(0, ge=0)
    ranges: dict[str, NumericRange] = Field(default_factory=dict)  # DICOM keyword -> bounds

    @field_validator("series_description")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"{v!r} is not a valid regular expression ({exc})") from None
        return v

    @field_validator("ranges")
    @classmethod
    def _keywords(cls, v: dict[str, NumericRange]) -> dict[str, NumericRange]:
        for keyword in v:
            check_numeric_keyword(keyword)
        return v

    @property
    def is_empty(self) -> bool:
        return self == SelectConfig()


def check_numeric_keyword(keyword: str) -> None:
    """ValueError unless ``keyword`` is a DICOM keyword with a numeric VR."""
    from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        close = difflib.get_close_matches(keyword, list(keyword_dict), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{keyword!r} is not a DICOM keyword{hint}")
    vr = dictionary_VR(tag)
    if vr not in NUMERIC_VRS:
        raise ValueError(f"{keyword} has VR {vr}, not a number: a range cannot test it")


class DeidConfig(_Strict):
    """De-identification per DICOM PS3.15 Annex E (Basic Application Level Confidentiality
    Profile), applied to every DICOM file that arrives from a network source."""

    enabled: bool = True
    secret_env: str = "MEDOPS_DEID_SECRET"  # the environment variable holding the secret
    secret_file: str = ".medops/deid-secret"  # generated once when the variable is unset
    date_shift: bool = False  # Retain Longitudinal Temporal Information, Modified Dates
    max_shift_days: int = Field(365, ge=1, le=3650)
    keep_private: list[str] = Field(default_factory=list)  # "(gggg,eeee)" tags or creators
    allow_burned_in: bool = False  # else BurnedInAnnotation=YES images are quarantined

    @field_validator("keep_private")
    @classmethod
    def _private(cls, v: list[str]) -> list[str]:
        for entry in v:
            m = _PRIVATE_TAG.match(entry.strip())
            if m and int(m.group(1), 16) % 2 == 0:
                raise ValueError(f"{entry!r} is a standard tag (even group); keep_private lists "
                                 "private tags (odd group) or private creator names")
            if not entry.strip():
                raise ValueError("an empty entry; list tags like '(0019,100A)' or creators")
        return v

    def private_tags(self) -> frozenset[int]:
        return frozenset(int(m.group(1) + m.group(2), 16) for e in self.keep_private
                         if (m := _PRIVATE_TAG.match(e.strip())))

    def private_creators(self) -> frozenset[str]:
        return frozenset(e.strip() for e in self.keep_private if not _PRIVATE_TAG.match(e.strip()))
