"""The C-STORE receiver's sustained instances/s from dcmtk's storescu on loopback.

A real `medops receive` process runs on a temporary project (SQLite state, storage on the local
disk). For each variant, N fresh instances (pydicom's CT_small.dcm, 39 KB, with new SOP Instance
UIDs) are sent by one or more concurrent storescu processes; the clock runs from the first
storescu start to the last one's exit, so every instance timed was written, fsynced, renamed and
indexed before its Success. Series ingestion (de-identification) is switched off for the timing
by a long quiet time; it is not part of the receive path.

    python bench/receiver_throughput.py --instances 300 --senders 1 4

dcmtk >= 3.6.2 leaves Nagle's algorithm on unless TCP_NODELAY=1 is set in the sender's
environment (dcmtk FAQ #48); both settings are measured for one sender.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

MEDOPS = Path(sys.executable).with_name("medops")


def _instances(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.SeriesInstanceUID = generate_uid()
    out = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(folder / f"{i:05d}.dcm")
        ds.save_as(out[-1], enforce_file_format=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _send(port: int, files: list[Path], senders: int, nodelay: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    chunks = [files[i::senders] for i in range(senders)]
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", "MEDOPS", "127.0.0.1",
                               str(port), *map(str, chunk)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for chunk in chunks]
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode != 0 for p in procs):
        raise SystemExit("storescu failed:\n" + "\n".join(o[-1500:] for o in outputs))
    return time.perf_counter() - start


@contextmanager
def running_receiver(root: Path) -> Iterator[int]:
    """`medops receive` for a project in ``root`` on a free loopback port (yielded), accepting
    the AE title BENCH; killed at the end (what it received is not needed: no flush)."""
    port = _free_port()
    (root / "medops.yaml").write_text(
        "project: bench\ndata:\n  sources:\n    rx: {kind: dicom-scp, host: 127.0.0.1, "
        f"port: {port}, allowed_calling_aets: [BENCH], quiet_seconds: 3600, "
        "min_free_mb: 0}\n")
    log = (root / "receive.log").open("wb")
    rx = subprocess.Popen([str(MEDOPS), "receive", "-C", str(root)], stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            if rx.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("medops receive did not start")
            time.sleep(0.05)
        yield port
    except SystemExit:
        print((root / "receive.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        rx.kill()
        rx.wait(timeout=60)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--senders", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_receiver(Path(tmp)) as port:
        variants = [(1, False)] + [(n, True) for n in args.senders]
        print(f"| senders | TCP_NODELAY | instances | seconds | instances/s |  "
              f"(load avg {os.getloadavg()[0]:.2f})")
        print("|---|---|---|---|---|")
        for i, (senders, nodelay) in enumerate(variants):
            files = _instances(Path(tmp) / f"in{i}", args.instances)
            secs = _send(port, files, senders, nodelay)
            print(f"| {senders} | {'1' if nodelay else 'unset'} | {args.instances} | "
                  f"{secs:.1f} | {args.instances / secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
