"""Ingest in one run: decode throughput per transfer syntax, then the receiver's instances/s.

Decode: for each group (uncompressed, JPEG baseline, JPEG 2000, HTJ2K) the same single-frame
files, cycled up to ``--images`` per pass, go through medops' full pixel path
(``medops.data.images.read_pixels``: header checks, decode, modality LUT, VOI/window,
MONOCHROME1 inversion, float32) and through a plain ``pydicom.dcmread(f).pixel_array`` loop
(decode only, pydicom's default plugin order). Images/s and MB/s of file bytes read; the best
of ``--repeats`` passes (the least disturbed by other work on the machine), the two loops
interleaved. Files: ../shared/data/dicom (NEMA WG04 uncompressed and HTJ2K), the SIIM chest
radiograph in ../shared/data/xray and pydicom's bundled test files (only those shipped in the
wheel: nothing is downloaded). Multi-frame files are left out: medops decodes one frame where
``pixel_array`` decodes all of them.

Receive: a real ``medops receive`` process on loopback fed by 1 and 4 concurrent dcmtk
``storescu`` senders (TCP_NODELAY=1), as in bench/receiver_throughput.py whose helpers are
reused here; every instance timed was stored, fsynced and indexed before its Success.

    .venv/bin/python bench/ingest.py --images 32 --repeats 2 --instances 100 --senders 1 4
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file

from medops.data.images import read_pixels

BENCH = Path(__file__).resolve().parent
SHARED = BENCH.parent / "../shared/data"

# group -> (accepted transfer syntax UIDs, shared-data globs, bundled pydicom file names)
GROUPS: dict[str, tuple[set[str], tuple[str, ...], tuple[str, ...]]] = {
    "uncompressed": (
        {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"},
        ("dicom/nema_wg04_uncompressed/*.dcm",),
        ("CT_small.dcm", "MR_small.dcm", "examples_rgb_color.dcm", "liver_1frame.dcm"),
    ),
    "JPEG baseline": (
        {"1.2.840.10008.1.2.4.50"},
        ("xray/1.2.276*.dcm",),
        (
            "SC_rgb_jpeg_dcmtk.dcm",
            "SC_rgb_jpeg.dcm",
            "SC_rgb_jpeg_lossy_gdcm.dcm",
            "SC_jpeg_no_color_transform.dcm",
        ),
    ),
    "JPEG 2000": (
        {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"},
        (),
        (
            "JPEG2000.dcm",
            "693_J2KI.dcm",
            "MR_small_jp2klossless.dcm",
            "examples_jpeg2k.dcm",
            "GDCMJ2K_TextGBR.dcm",
        ),
    ),
    "HTJ2K": (
        {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"},
        ("dicom/htj2k/*.dcm",),
        (),
    ),
}


def group_files(syntaxes: set[str], globs: tuple[str, ...], names: tuple[str, ...]) -> list[Path]:
    """The group's files that exist here, single-frame, of one of its transfer syntaxes."""
    found = [p for pattern in globs for p in sorted(SHARED.glob(pattern))]
    for name in names:
        bundled = get_testdata_file(name, download=False)
        if isinstance(bundled, str):
            found.append(Path(bundled))
    kept = []
    for path in found:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.file_meta.TransferSyntaxUID in syntaxes and int(ds.get("NumberOfFrames", 1)) == 1:
            kept.append(path)
    return kept


def medops_decode(path: Path) -> Any:
    return read_pixels(path)


def pydicom_decode(path: Path) -> Any:
    return pydicom.dcmread(path).pixel_array


def timed_pass(files: list[Path], decode: Callable[[Path], Any]) -> float:
    start = time.perf_counter()
    for path in files:
        decode(path)
    return time.perf_counter() - start


def decode_rows(n_images: int, repeats: int) -> list[str]:
    rows = []
    for group, (syntaxes, globs, names) in GROUPS.items():
        sources = group_files(syntaxes, globs, names)
        if not sources:
            rows.append(f"| {group} | 0 | - | - | - | - |")
            print(rows[-1], flush=True)
            continue
        for path in list(sources):  # imports, decoder plugins, page cache
            try:
                medops_decode(path)
                pydicom_decode(path)
            except Exception as exc:  # a file one side refuses is not a throughput figure
                print(f"  left out {path.name}: {type(exc).__name__}", file=sys.stderr)
                sources.remove(path)
        files = [sources[i % len(sources)] for i in range(max(n_images, len(sources)))]
        mb = sum(p.stat().st_size for p in files) / 1e6
        best = {"medops": float("inf"), "pydicom": float("inf")}
        for _ in range(repeats):
            best["medops"] = min(best["medops"], timed_pass(files, medops_decode))
            best["pydicom"] = min(best["pydicom"], timed_pass(files, pydicom_decode))
        n, m, p = len(files), best["medops"], best["pydicom"]
        rows.append(
            f"| {group} | {len(sources)} | {n} ({mb:.1f} MB) | {n / m:.0f} / {mb / m:.1f} | "
            f"{n / p:.0f} / {mb / p:.1f} | {p / m:.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def receiver_rows(instances: int, senders: list[int]) -> list[str]:
    sys.path.insert(0, str(BENCH))
    import receiver_throughput as rt  # a sibling script, not a package

    rows = []
    with tempfile.TemporaryDirectory(prefix="medops-ingest-") as tmp, \
            rt.running_receiver(Path(tmp)) as port:
        for i, n_senders in enumerate(senders):
            files = rt._instances(Path(tmp) / f"in{i}", instances)
            secs = rt._send(port, files, n_senders, nodelay=True)
            rows.append(f"| {n_senders} | {instances} | {secs:.1f} | {instances / secs:.0f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="decoded images per pass")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--instances", type=int, default=100, help="C-STOREs per variant")
    parser.add_argument("--senders", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom's notes on odd test files are not the point here

    start = time.perf_counter()
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, pydicom "
        f"{pydicom.__version__}"
    )
    print(
        "\n| syntax | files | images per pass | medops images/s / MB/s | "
        "pydicom images/s / MB/s | medops/pydicom |"
    )
    print("|---|---|---|---|---|---|", flush=True)
    decode = decode_rows(args.images, args.repeats)
    print("\n| storescu senders (TCP_NODELAY=1) | instances | seconds | instances/s |")
    print("|---|---|---|---|", flush=True)
    receive = receiver_rows(args.instances, args.senders)
    print(
        f"\n{len(decode)} syntax groups, {len(receive)} receiver variants in "
        f"{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
