"""Ingest in one run: decode speed per transfer syntax, then the receiver's instances/s.

Decode: for each transfer syntax, real images go through medops' full pixel path
(``medops.data.images.read_pixels``: header checks, decode, modality LUT, VOI LUT or window,
MONOCHROME1 inversion, float32) and through the same work done with pydicom alone, the
baseline: ``dcmread(f).pixel_array`` in pydicom's default plugin order, then
``apply_modality_lut``, ``apply_voi_lut``, MONOCHROME1 reflected, ``apply_color_lut`` for
palettes. The ratio is medops' speed over the baseline's in the same run (above 1: medops is
faster; the goal is >= 0.8 for every syntax). A third column, ``pixel_array`` with no LUTs,
shows what the LUTs cost pydicom.

Files: the NEMA WG04 uncompressed originals and their HTJ2K re-encodings in ../shared/data, the
SIIM chest radiograph (JPEG baseline) in ../shared/data/xray and pydicom's bundled test files
(only those shipped in the wheel: nothing is downloaded). The NEMA originals are also
re-encoded at start, into a temporary folder, as implicit VR, RLE (pydicom's encoder) and JPEG
lossless SV1 (imagecodecs' libjpeg-turbo; a dev dependency), each checked bit-exact against
its original before it is used. The multi-frame row reads the middle frame, of the bundled
multi-frame files and of an 8-frame cine built from the NEMA XA image (uncompressed and HTJ2K);
pydicom reads that frame with ``pixel_array(ds, index=...)``.

Timing: every file is decoded by the three loops in turn, ``--repeats`` times (the order
rotates each round), and each file counts its fastest time per loop: on a shared machine a
burst of other work then spoils one sample, not a whole pass. Images/s is the number of files
over the sum of their times; MB/s is of file bytes. Before timing, each file's values from
medops and from pydicom are compared; a file where they differ by more than 2 grey levels
(lossy JPEG decoders differ by 1-2) is named on stderr, and one either side refuses is left out.

Receive: a real ``medops receive`` process on loopback fed by 1 and 4 concurrent dcmtk
``storescu`` senders (TCP_NODELAY=1), as in bench/receiver_throughput.py whose helpers are
reused here; every instance timed was stored, fsynced and indexed before its Success.

    .venv/bin/python bench/ingest.py --repeats 5 --instances 100 --senders 1 4
    .venv/bin/python bench/ingest.py --repeats 7 --senders   # decode only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
)

from medops.data.images import read_pixels

BENCH = Path(__file__).resolve().parent
SHARED = BENCH.parent / "../shared/data"
NEMA = SHARED / "dicom/nema_wg04_uncompressed"


@dataclass(frozen=True)
class Group:
    """One row of the decode table: files of one transfer syntax (or the multi-frame ones)."""

    syntaxes: frozenset[str]  # accepted Transfer Syntax UIDs; empty: any
    shared: tuple[str, ...] = ()  # globs under ../shared/data
    bundled: tuple[str, ...] = ()  # pydicom's bundled test files
    made: str | None = None  # a kind of :func:`make_files`, re-encoded at start
    multiframe: bool = False


GROUPS: dict[str, Group] = {
    "explicit VR little endian": Group(
        frozenset({ExplicitVRLittleEndian}),
        shared=("dicom/nema_wg04_uncompressed/*.dcm",),
        bundled=("CT_small.dcm", "MR_small.dcm", "examples_rgb_color.dcm", "liver_1frame.dcm"),
    ),
    "explicit VR big endian": Group(
        frozenset({"1.2.840.10008.1.2.2"}),
        bundled=("MR_small_bigendian.dcm", "liver_expb_1frame.dcm", "ExplVR_BigEnd.dcm"),
    ),
    "implicit VR little endian": Group(
        frozenset({ImplicitVRLittleEndian}),
        bundled=("MR_small_implicit.dcm",),
        made="implicit",
    ),
    "RLE lossless": Group(
        frozenset({RLELossless}),
        bundled=("MR_small_RLE.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm"),
        made="rle",
    ),
    "JPEG baseline": Group(
        frozenset({"1.2.840.10008.1.2.4.50"}),
        shared=("xray/1.2.276*.dcm",),
        bundled=(
            "SC_rgb_jpeg_dcmtk.dcm",
            "SC_rgb_jpeg.dcm",
            "SC_rgb_jpeg_lossy_gdcm.dcm",
            "SC_jpeg_no_color_transform.dcm",
        ),
    ),
    "JPEG lossless": Group(
        frozenset({"1.2.840.10008.1.2.4.57", JPEGLosslessSV1}),
        bundled=("SC_rgb_jpeg_gdcm.dcm",),
        made="jpeg-lossless",
    ),
    "JPEG 2000": Group(
        frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}),
        bundled=(
            "JPEG2000.dcm",
            "693_J2KI.dcm",
            "MR_small_jp2klossless.dcm",
            "examples_jpeg2k.dcm",
            "GDCMJ2K_TextGBR.dcm",
        ),
    ),
    "HTJ2K": Group(
        frozenset({HTJ2KLossless, "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}),
        shared=("dicom/htj2k/*.dcm",),
    ),
    "multi-frame (middle frame)": Group(
        frozenset(),
        bundled=("examples_ybr_color.dcm", "rtdose.dcm", "SC_rgb_rle_16bit_2frame.dcm"),
        made="cine",
        multiframe=True,
    ),
}


def n_frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames") or 1)


def group_files(group: Group, made: dict[str, list[Path]]) -> list[Path]:
    """The group's files that exist here, of one of its syntaxes and its kind of frames."""
    found = [p for pattern in group.shared for p in sorted(SHARED.glob(pattern))]
    for name in group.bundled:
        bundled = get_testdata_file(name, download=False)
        if isinstance(bundled, str):
            found.append(Path(bundled))
    found += made.get(group.made or "", [])
    kept = []
    for path in found:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        syntax_ok = not group.syntaxes or ds.file_meta.TransferSyntaxUID in group.syntaxes
        if syntax_ok and (n_frames(ds) > 1) == group.multiframe:
            kept.append(path)
    return kept


# -- files re-encoded from the NEMA originals -----------------------------------------------------


def make_files(folder: Path) -> dict[str, list[Path]]:
    """kind -> files: the NEMA originals as implicit VR, RLE and JPEG lossless, and the cine.
    A re-encoding that fails, or does not decode back to the original, is reported and left
    out (as is a kind whose encoder is missing)."""
    made: dict[str, list[Path]] = {}
    originals = sorted(NEMA.glob("*.dcm"))
    for kind, encode in (
        ("implicit", _as_implicit),
        ("rle", _as_rle),
        ("jpeg-lossless", _as_jpeg_lossless),
    ):
        for src in originals:
            ds = pydicom.dcmread(src)
            expected = ds.pixel_array
            out = folder / f"{src.stem}_{kind}.dcm"
            try:
                encode(ds)
                ds.save_as(out, enforce_file_format=True)
                if not np.array_equal(pydicom.dcmread(out).pixel_array, expected):
                    raise ValueError("does not decode back to the original")
            except Exception as exc:
                print(
                    f"  no {kind} copy of {src.name}: {type(exc).__name__}: {exc}", file=sys.stderr
                )
                continue
            made.setdefault(kind, []).append(out)
    made["cine"] = _cine(folder)
    return made


def _as_implicit(ds: Dataset) -> None:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian


def _as_rle(ds: Dataset) -> None:
    ds.compress(RLELossless)


def _as_jpeg_lossless(ds: Dataset) -> None:
    import imagecodecs  # a dev dependency: pydicom has no lossless JPEG encoder

    arr = ds.pixel_array
    if arr.dtype.kind == "i":  # JPEG holds the two's-complement bit pattern
        arr = arr.view(arr.dtype.str.replace("i", "u"))
    bits = int(ds.BitsStored) if arr.itemsize == 2 else 8
    frame = imagecodecs.jpeg8_encode(arr, lossless=True, predictor=1, bitspersample=bits)
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1


def _cine(folder: Path) -> list[Path]:
    """The NEMA XA image as an 8-frame cine (the frame shifted 32 rows more each time),
    uncompressed and HTJ2K lossless."""
    src = NEMA / "XA1_UNC.dcm"
    if not src.exists():
        return []
    ds = pydicom.dcmread(src)
    frames = np.stack([np.roll(ds.pixel_array, 32 * i, axis=0) for i in range(8)])
    ds.NumberOfFrames = len(frames)
    out = []
    for syntax in (ExplicitVRLittleEndian, HTJ2KLossless):
        try:
            if syntax == ExplicitVRLittleEndian:
                ds.PixelData = frames.tobytes()
                ds["PixelData"].VR = "OW"
            else:
                import imagecodecs  # the only HTJ2K encoder here

                ds.PixelData = encapsulate([bytes(imagecodecs.htj2k_encode(f)) for f in frames])
                ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = UID(syntax)
            path = folder / f"XA1_cine_{UID(syntax).keyword}.dcm"
            ds.save_as(path, enforce_file_format=True)
            back = pixel_array(path, index=len(frames) // 2)
            if not np.array_equal(back, frames[len(frames) // 2]):
                raise ValueError("does not decode back to the original")
        except Exception as exc:
            print(f"  no {UID(syntax).name} cine: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        out.append(path)
    return out


# -- the three loops ----------------------------------------------------------------------------


def medops_decode(path: Path) -> np.ndarray:
    return read_pixels(path)  # the middle frame of a multi-frame file


def _pydicom_frame(ds: Dataset) -> np.ndarray:
    """pydicom's pixels of a single-frame file, or the middle frame of a multi-frame one."""
    frames = n_frames(ds)
    return ds.pixel_array if frames == 1 else pixel_array(ds, index=frames // 2)


def pydicom_decode(path: Path) -> np.ndarray:
    """The same display values from pydicom alone, the reference medops is held to: pixel_array
    (pydicom's own plugin order), then for grey images the modality LUT, the VOI LUT or window
    (``apply_voi_lut``, as pydicom chooses) and MONOCHROME1 reflected within the range pydicom's
    windowing maps to; palettes to RGB, other colour images as decoded."""
    ds = pydicom.dcmread(path)
    arr = _pydicom_frame(ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        return apply_color_lut(arr, ds)
    if arr.ndim == 3:
        return arr
    arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    if photometric == "MONOCHROME1":
        bits = int(ds.BitsStored)
        lo, hi = (
            (0, 2**bits - 1)
            if ds.PixelRepresentation == 0
            else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        )
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            lo, hi = lo * slope + intercept, hi * slope + intercept
        arr = (lo + hi) - arr
    return arr


def pydicom_pixel_array(path: Path) -> np.ndarray:
    """Decode alone, no LUTs: what the LUTs cost on top, for the reader."""
    return _pydicom_frame(pydicom.dcmread(path))


DECODERS: dict[str, Callable[[Path], np.ndarray]] = {
    "medops": medops_decode,
    "pydicom": pydicom_decode,
    "pixel_array": pydicom_pixel_array,
}


def usable(sources: list[Path]) -> list[Path]:
    """The files both sides decode (also warming imports, plugins and the page cache). Where
    the two disagree by more than 2 grey levels (lossy JPEG decoders differ by 1-2) the
    comparison is not like for like: that is reported, and the run goes on."""
    kept = []
    for path in sources:
        try:
            ours, theirs = medops_decode(path), pydicom_decode(path)
        except Exception as exc:  # a file one side refuses is not a throughput figure
            print(f"  left out {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if ours.shape != theirs.shape:
            print(f"  {path.name}: medops {ours.shape} vs pydicom {theirs.shape}", file=sys.stderr)
        elif (worst := float(np.abs(ours - theirs).max())) > 2:
            share = float((np.abs(ours - theirs) > 2).mean())
            print(
                f"  {path.name}: medops and pydicom differ by up to {worst:g} "
                f"({share:.3%} of values differ by more than 2)",
                file=sys.stderr,
            )
        kept.append(path)
    return kept


def fastest_times(files: list[Path], repeats: int) -> dict[str, float]:
    """Per loop, the sum over files of each file's fastest of ``repeats`` decodes; the loops
    take turns on each file, in an order that rotates every round."""
    labels = list(DECODERS)
    best = {label: [float("inf")] * len(files) for label in labels}
    for round_ in range(repeats):
        order = labels[round_ % len(labels) :] + labels[: round_ % len(labels)]
        for i, path in enumerate(files):
            for label in order:
                start = time.perf_counter()
                DECODERS[label](path)
                best[label][i] = min(best[label][i], time.perf_counter() - start)
    return {label: sum(times) for label, times in best.items()}


def decode_rows(repeats: int) -> tuple[list[str], list[str]]:
    """The table's rows, and the groups below the 0.8 goal."""
    rows, below = [], []
    with tempfile.TemporaryDirectory(prefix="medops-decode-") as tmp:
        made = make_files(Path(tmp))
        for name, group in GROUPS.items():
            files = usable(group_files(group, made))
            if not files:
                rows.append(f"| {name} | 0 | - | - | - | - |")
                print(rows[-1], flush=True)
                continue
            mb = sum(p.stat().st_size for p in files) / 1e6
            secs = fastest_times(files, repeats)
            n, m, p, bare = len(files), secs["medops"], secs["pydicom"], secs["pixel_array"]
            if p / m < 0.8:
                below.append(name)
            rows.append(
                f"| {name} | {n} ({mb:.1f} MB) | {n / m:.0f} / {mb / m:.1f} | "
                f"{n / p:.0f} / {mb / p:.1f} | {p / m:.2f} | {n / bare:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows, below


def receiver_rows(instances: int, senders: list[int]) -> list[str]:
    sys.path.insert(0, str(BENCH))
    import receiver_throughput as rt  # a sibling script, not a package

    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="medops-ingest-") as tmp,
        rt.running_receiver(Path(tmp)) as port,
    ):
        for i, n_senders in enumerate(senders):
            files = rt._instances(Path(tmp) / f"in{i}", instances)
            secs = rt._send(port, files, n_senders, nodelay=True)
            rows.append(f"| {n_senders} | {instances} | {secs:.1f} | {instances / secs:.0f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="decodes of each file per loop; its fastest counts"
    )
    parser.add_argument("--instances", type=int, default=100, help="C-STOREs per variant")
    parser.add_argument(
        "--senders",
        type=int,
        nargs="*",
        default=[1, 4],
        help="concurrent storescu senders per variant; none (a bare --senders) skips the "
        "receiver part, which needs dcmtk's storescu",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom's notes on odd test files are not the point here

    start = time.perf_counter()
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, pydicom "
        f"{pydicom.__version__}, numpy {np.__version__}"
    )
    print(
        "\n| syntax | files | medops images/s / MB/s | pydicom + LUTs images/s / MB/s | "
        "medops speed / pydicom's | pixel_array alone images/s |"
    )
    print("|---|---|---|---|---|---|", flush=True)
    decode, below = decode_rows(args.repeats)
    print(
        "goal (medops >= 0.8x pydicom + LUTs): "
        + (f"not met for {', '.join(below)}" if below else "met for every syntax")
    )
    receive: list[str] = []
    if args.senders:
        print("\n| storescu senders (TCP_NODELAY=1) | instances | seconds | instances/s |")
        print("|---|---|---|---|", flush=True)
        receive = receiver_rows(args.instances, args.senders)
    print(
        f"\n{len(decode)} syntax groups, {len(receive)} receiver variants in "
        f"{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
