"""DICOM display values: modality LUT -> VOI LUT or window -> MONOCHROME1 inversion, float32.

Every transform is pydicom's (:mod:`pydicom.pixels.processing`); medops adds the Enhanced
multi-frame functional groups (per-frame rescale and window), the value range of each stage and
the inversion, so that higher values always mean brighter.

Each grey stage maps one stored value to one output value, whatever the other pixels hold. So
where a window or a LUT applies to 8- or 16-bit stored values, the stages run once over every
integer between the frame's lowest and highest stored value (at most 65,536 of them) and the
frame is then looked up in that table: the same float32 values, bit for bit, as running the
stages over every pixel, but pydicom's windowing (boolean masks over float64 copies) costs
15-35 ms per megapixel on a 2-core machine and the look-up 4-7. A plain rescale, or none,
costs less than the look-up and runs directly, as do 32-bit and float pixel data.
"""

from __future__ import annotations

import copy
import logging
import struct

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing

from medops.config.enums import WindowMode

log = logging.getLogger(__name__)

# Where Enhanced multi-frame objects keep a frame's rescale and window, and those sequences'
# tags (0028,9145) and (0028,9132) as a little or a big endian file writes them.
_GROUP_LUT_SEQUENCES = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
_GROUP_LUT_TAGS = tuple(
    struct.pack(f"{order}HH", 0x0028, element) for order in "<>" for element in (0x9145, 0x9132)
)

# Elements the LUT pipeline reads; copied into a per-frame view so pydicom's functions (which
# write some of them back) never touch the parsed header.
_LUT_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsStored",
    "BitsAllocated",
    "PixelRepresentation",
    "SamplesPerPixel",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)


def display_values(
    stored: np.ndarray, ds: Dataset, index: int, window: WindowMode, name: str
) -> tuple[np.ndarray, float, float]:
    """Frame ``index``'s stored values (from the dataset ``ds``) through the modality LUT,
    with ``window=AUTO`` the VOI LUT or first window, and MONOCHROME1 reflected; float32 out,
    with the (low, high) range those values can take. Palette colour goes to RGB; other
    colour images get no LUTs. Raises what pydicom raises for a malformed modality or palette
    LUT; a malformed VOI LUT or window is skipped with a warning (``name`` says which file).
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        top = np.iinfo(rgb.dtype).max if np.issubdtype(rgb.dtype, np.integer) else 1.0
        return np.asarray(rgb, dtype=np.float32), 0.0, float(top)
    if stored.ndim == 3:
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        return stored.astype(np.float32), 0.0, float(2**bits - 1)

    view = _frame_view(ds, index)
    if not _worth_a_table(stored, view, window):
        return _grey_stages(stored, view, window, photometric, name)
    low, high = int(stored.min()), int(stored.max())
    domain = np.arange(low, high + 1, dtype=stored.dtype)  # as the stages would see each pixel
    table, lo, hi = _grey_stages(domain, view, window, photometric, name)
    return np.take(table, np.subtract(stored, low, dtype=np.intp)), lo, hi


def _grey_stages(
    stored: np.ndarray, view: Dataset, window: WindowMode, photometric: str, name: str
) -> tuple[np.ndarray, float, float]:
    """Modality LUT, VOI LUT or window (``AUTO``), float32, MONOCHROME1 reflected: each an
    element-wise function of the stored value, which the look-up table relies on."""
    lo, hi = _modality_range(view)
    values = apply_modality_lut(stored, view)
    if window is WindowMode.AUTO:
        values, lo, hi = _apply_window(values, view, lo, hi, name)
    values = np.asarray(values, dtype=np.float32)
    if photometric == "MONOCHROME1":
        # Reflect within the output range so values stay where the pipeline put them.
        values = np.float32(lo + hi) - values
    return values, lo, hi


def _worth_a_table(stored: np.ndarray, view: Dataset, window: WindowMode) -> bool:
    """Whether to run the stages over a table of stored values (see the module docstring):
    8/16-bit integers (wider or float data can span far more values than the frame holds),
    and a stage that costs more than the look-up (a LUT, a window)."""
    if stored.dtype.kind not in "ui" or stored.dtype.itemsize > 2 or stored.size == 0:
        return False
    if view.get("ModalityLUTSequence"):
        return True
    return window is WindowMode.AUTO and any(
        kw in view for kw in ("VOILUTSequence", "WindowCenter", "WindowWidth")
    )


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """The LUT-related elements for frame ``index``, with Enhanced multi-frame functional
    groups (shared, then per-frame) flattened over the top-level values as the standard says;
    ``ds`` itself when no functional group holds a rescale or window (most files: copying
    costs ~1 ms)."""
    groups = _lut_groups(ds, index)
    if not groups:
        return ds
    view = Dataset()
    for kw in _LUT_KEYWORDS:
        if kw in ds:
            view.add(copy.copy(ds[kw]))
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # OW LUT data needs the endianness
    for group in groups:
        for seq in _GROUP_LUT_SEQUENCES:
            if items := group.get(seq):
                for elem in items[0]:
                    view.add(copy.copy(elem))
    return view


def _lut_groups(ds: Dataset, index: int) -> list[Dataset]:
    """The shared functional group, then frame ``index``'s, where they hold a rescale or a
    window. A sequence pydicom has not parsed yet (defined length: raw bytes) is parsed only
    if those bytes hold one of the two sequences' tags: parsing is the costly part, ~1 ms for
    a small segmentation and more for the per-frame groups of a long series."""
    found = []
    for keyword, item in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", index),
    ):
        elem = ds.get_item(keyword)
        if elem is None:
            continue
        raw = elem.value if isinstance(elem, RawDataElement) else None
        if isinstance(raw, bytes) and not any(tag in raw for tag in _GROUP_LUT_TAGS):
            continue
        items = ds.get(keyword)
        if items and item < len(items) and any(seq in items[item] for seq in _GROUP_LUT_SEQUENCES):
            found.append(items[item])
    return found


def _modality_range(view: Dataset) -> tuple[float, float]:
    """The output range of the modality stage, as pydicom's windowing computes it."""
    if seq := view.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(seq[0].LUTDescriptor[2]) - 1)
    bits = int(view.get("BitsStored") or view.get("BitsAllocated") or 16)
    if int(view.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in view and "RescaleIntercept" in view:
        slope, intercept = float(view.RescaleSlope), float(view.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return lo, hi


def _apply_window(
    values: np.ndarray, view: Dataset, lo: float, hi: float, name: str
) -> tuple[np.ndarray, float, float]:
    """VOI LUT when present, else the first WindowCenter/Width; a broken one is skipped."""
    seq = view.get("VOILUTSequence")
    try:
        if seq and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]:
            if not np.issubdtype(values.dtype, np.integer):
                # Rescaled values are floats; a VOI LUT is indexed by integers.
                values = np.rint(values).astype(np.int64)
            depth = int(seq[0].LUTDescriptor[2])
            return apply_voi(values, view, 0), 0.0, float(2**depth - 1)
        if "WindowCenter" in view and "WindowWidth" in view:
            return apply_windowing(values, view, 0), lo, hi
    except Exception as exc:
        # A malformed window must not make the image unusable: fall back to full range.
        log.warning("%s: ignoring the VOI LUT/window (%s: %s)", name, type(exc).__name__, exc)
    return values, lo, hi
