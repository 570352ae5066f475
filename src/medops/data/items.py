"""One image file -> its items: the shared step of every source, local or remote."""

from __future__ import annotations

from pathlib import Path

from medops.config.enums import FrameMode
from medops.data.hashing import file_sha256, pseudonym
from medops.data.images import ImageFormat, ImageInfo, probe, sniff_format
from medops.errors import DataError
from medops.storage.records import Item, ItemStatus


def items_for_file(path: Path, source_name: str, label: str | None = None,
                   frames: FrameMode = FrameMode.MIDDLE, patient: str | None = None,
                   content_hash: str | None = None) -> list[Item]:
    """The items of ``path``: one, or one per frame of a multi-frame DICOM with ``each``.

    An unusable file comes back as one quarantined item carrying the reason. ``patient``
    (already a pseudonym) overrides the file's PatientID; identifiers are stored hashed.
    """
    digest = content_hash or file_sha256(path)
    base = Item(uri=str(path), content_hash=digest, source=source_name, label=label)
    try:
        fmt = sniff_format(path)
        if fmt is None:
            raise DataError("not a DICOM, PNG or JPEG file")
        info = probe(path)
    except DataError as exc:
        base.status, base.reason = ItemStatus.QUARANTINED, str(exc)
        return [base]
    base.info = info_dict(info)
    base.patient_id = patient or (pseudonym(info.patient_id, "pt") if info.patient_id else None)
    # UIDs identify studies as surely as names do; only their equality is needed here.
    base.study_uid = pseudonym(info.study_uid, "st") if info.study_uid else None
    base.series_uid = pseudonym(info.series_uid, "se") if info.series_uid else None
    if fmt is ImageFormat.DICOM and info.n_frames > 1 and frames is FrameMode.EACH:
        return [Item(**{**base.__dict__, "frame": frame, "info": dict(base.info)})
                for frame in range(info.n_frames)]
    return [base]


def info_dict(info: ImageInfo) -> dict[str, object]:
    return {"format": str(info.format), "rows": info.rows, "cols": info.cols,
            "frames": info.n_frames, "samples": info.samples_per_pixel,
            "photometric": info.photometric, "transfer_syntax": info.transfer_syntax,
            "modality": info.modality}
