"""Inputs and services the batch-predict tests share: a folder of real images with broken
files among them, moto's S3 server on loopback, and readers of the output tables."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medops.registry import LoadedModel
from medops.serve.batch_files import Files
from medops.serve.batch_shards import read_table

#: Real chest X-rays: NIH ChestX-ray14 and TBX11K PNGs, JPEGs, DICOM (one MONOCHROME1).
XRAYS = (Path(__file__).parents[2] / "../shared/data/xray").resolve()
#: The broken files :func:`make_inputs` writes, by name.
BAD = {"broken_truncated.dcm", "broken_no_pixel_data.dcm", "broken_not_dicom.dcm", "notes.png",
       "cut.png", "empty.jpg"}
#: Credentials moto accepts; Spark workers get them through spark.executorEnv.* (a standalone
#: worker started earlier does not see this process's environment).
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
SPARK_AWS_CONF = {f"spark.executorEnv.{k}": v for k, v in AWS_ENV.items()}


def image_bytes(fmt: str, seed: int, mode: str = "L", size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size) if mode == "L" else (size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def make_inputs(folder: Path, raw: Path) -> Path:
    """Synthetic DICOM from a trained project's ``raw`` folder (several transfer syntaxes),
    the real X-rays, generated PNG/JPEG, and the :data:`BAD` files, in sub-folders; and a
    README that is not an image (not listed)."""
    dicoms = sorted(p for p in raw.rglob("*.dcm") if "broken" not in p.name)
    for i, src in enumerate(dicoms[:8]):
        dest = folder / f"site{i % 2}" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    real = folder / "xray"
    real.mkdir(parents=True)
    for src in sorted(XRAYS.rglob("*")):
        if src.suffix.lower() in (".png", ".jpg", ".dcm"):
            shutil.copy(src, real / src.name)
    (folder / "png").mkdir()
    (folder / "png" / "gray.png").write_bytes(image_bytes("PNG", 1))
    (folder / "png" / "color.jpg").write_bytes(image_bytes("JPEG", 2, "RGB"))
    bad = folder / "bad"
    bad.mkdir()
    for src in raw.rglob("broken_*.dcm"):  # truncated, no pixels, not DICOM
        shutil.copy(src, bad / src.name)
    (bad / "notes.png").write_text("this is a text file, not a PNG")
    (bad / "cut.png").write_bytes(image_bytes("PNG", 3)[:60])
    (bad / "empty.jpg").write_bytes(b"")
    (folder / "README.txt").write_text("not an image and not listed")
    assert {p.name for p in bad.iterdir()} == BAD
    return folder


def many_pngs(folder: Path, n: int) -> Path:
    """``n`` small distinct PNGs: a batch long enough to be interrupted."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img{i:04d}.png").write_bytes(image_bytes("PNG", 100 + i, size=48))
    return folder


def upload(s3: Any, folder: Path, bucket: str, prefix: str) -> dict[str, Path]:
    """Every file under ``folder`` to ``s3://bucket/prefix/...``; the local file of each URI."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        found[f"s3://{bucket}/{key}"] = path
    return found


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 in server mode on a free loopback port: real HTTP, as boto3 in a Spark
    worker or a child process speaks it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """Module-wide, so that a Spark session started in the module inherits them."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in AWS_ENV.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        yield


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def tables(out: str, files: Files) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The predictions and errors tables of a batch folder, sorted by uri."""
    base = out.rstrip("/")
    preds = read_table(f"{base}/predictions/", files)
    # a run killed before its first bad file has no errors table yet
    errors = read_table(f"{base}/errors/", files, columns=["uri", "error"])
    if "uri" not in preds.columns:
        preds = pd.DataFrame({"uri": pd.Series(dtype=str)})
    return (preds.sort_values("uri").reset_index(drop=True),
            errors.sort_values("uri").reset_index(drop=True))


def probs(rows: pd.DataFrame, model: LoadedModel) -> np.ndarray:
    return rows[[f"p_{c}" for c in model.classes]].to_numpy(dtype=float)


def direct(model: LoadedModel, blobs: list[bytes]) -> np.ndarray:
    """The model's own answer for these files, without batch-predict."""
    return model.predict_images(blobs)
