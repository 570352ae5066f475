"""Batch inference with the registered model: folders, manifests, S3 (moto), resume, bad files."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medops.errors import ConfigError, NotFoundError
from medops.registry import LoadedModel
from medops.serve.batch import (
    Files,
    ModelRef,
    OutputFormat,
    Predictor,
    batch_predict,
    list_inputs,
    output_format,
)

from ..conftest import TrainedProject

pytestmark = pytest.mark.slow


def _image(fmt: str, seed: int, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((40, 40) if mode == "L" else (40, 40, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def inputs(trained_project: TrainedProject, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real DICOM (several transfer syntaxes), PNG and JPEG, and bad files, in sub-folders."""
    folder = tmp_path_factory.mktemp("batch") / "incoming"
    dicoms = sorted(p for p in trained_project.raw.rglob("*.dcm") if "broken" not in p.name)
    for i, src in enumerate(dicoms[:8]):
        dest = folder / f"site{i % 2}" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    (folder / "png").mkdir()
    (folder / "png" / "gray.png").write_bytes(_image("PNG", 1))
    (folder / "png" / "color.jpg").write_bytes(_image("JPEG", 2, "RGB"))
    bad = folder / "bad"
    bad.mkdir()
    for src in trained_project.raw.rglob("broken_*.dcm"):  # truncated, no pixels, not DICOM
        shutil.copy(src, bad / src.name)
    (bad / "notes.png").write_text("this is a text file, not a PNG")
    (bad / "cut.png").write_bytes(_image("PNG", 3)[:60])
    (folder / "README.txt").write_text("not an image and not listed")
    return folder


BAD = {"broken_truncated.dcm", "broken_no_pixel_data.dcm", "broken_not_dicom.dcm", "notes.png",
       "cut.png"}


@pytest.fixture(scope="module")
def predictor(trained_project: TrainedProject) -> Predictor:
    ref = ModelRef.parse(f"{trained_project.project.config.model_name}/1", "unused")
    return Predictor.from_registry(trained_project.project.registry, ref, batch_size=4)


def _direct(model: LoadedModel, uris: list[str]) -> np.ndarray:
    return model.predict_images([Path(u).read_bytes() for u in uris])


def _probs(rows: pd.DataFrame, model: LoadedModel) -> np.ndarray:
    return rows[[f"p_{c}" for c in model.classes]].to_numpy(dtype=float)


def test_model_refs() -> None:
    assert ModelRef.parse(None, "m") == ModelRef("m", alias="champion")
    assert ModelRef.parse("x@candidate", "m") == ModelRef("x", alias="candidate")
    assert ModelRef.parse("x/3", "m") == ModelRef("x", version="3")
    assert str(ModelRef.parse("x", "m")) == "x@champion"
    with pytest.raises(ConfigError, match="NAME@ALIAS"):
        ModelRef.parse("x@", "m")


def test_missing_alias_is_not_found(trained_project: TrainedProject) -> None:
    with pytest.raises(NotFoundError, match="models approve"):
        Predictor.from_registry(trained_project.project.registry,
                                ModelRef("trained-classifier", alias="no-such-alias"))


def test_folder_to_parquet_equals_the_model_and_resumes(predictor: Predictor, inputs: Path,
                                                        tmp_path: Path) -> None:
    out = str(tmp_path / "preds.parquet")
    uris = list_inputs(str(inputs), Files())
    assert len(uris) == 15 and not any(u.endswith("README.txt") for u in uris)
    summary = batch_predict(predictor, str(inputs), out, chunk_size=6)
    assert (summary.total, summary.predicted, summary.failed, summary.skipped) == (15, 10, 5, 0)
    assert {Path(e["uri"]).name for e in summary.errors} == BAD
    assert all(e["error"] and "bytes>" not in e["error"] for e in summary.errors)

    rows = pd.read_parquet(out)
    assert list(rows.columns) == ["uri", *(f"p_{c}" for c in predictor.model.classes),
                                  "label", "model", "version", "error"]
    assert sorted(rows["uri"]) == sorted(uris)
    good = rows[rows["error"].isna()].sort_values("uri")
    expected = _direct(predictor.model, list(good["uri"]))
    np.testing.assert_allclose(_probs(good, predictor.model), expected, atol=1e-5)
    labels = [predictor.model.classes[i] for i in expected.argmax(axis=1)]
    assert list(good["label"]) == labels
    assert set(good["model"]) == {"trained-classifier"} and set(good["version"]) == {"1"}
    bad = rows[rows["error"].notna()]
    assert bad["label"].isna().all() and np.isnan(_probs(bad, predictor.model)).all()
    assert not Path(out + ".parts").exists()

    # A re-run skips what is done and tries the failed files again.
    again = batch_predict(predictor, str(inputs), out)
    assert (again.skipped, again.predicted, again.failed) == (10, 0, 5)
    assert len(pd.read_parquet(out)) == 15


def test_an_interrupted_run_continues_where_it_stopped(predictor: Predictor, inputs: Path,
                                                       tmp_path: Path) -> None:
    out = str(tmp_path / "preds.csv")

    def stop_after_first_chunk(done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch_predict(predictor, str(inputs), out, chunk_size=5,
                      on_progress=stop_after_first_chunk)
    assert not Path(out).exists()
    (part,) = Path(out + ".parts").iterdir()
    first = pd.read_parquet(part)
    done_before = int(first["error"].isna().sum())
    assert len(first) == 5

    summary = batch_predict(predictor, str(inputs), out, OutputFormat.CSV)
    assert summary.skipped == done_before
    assert summary.predicted + summary.failed == 15 - done_before
    rows = pd.read_csv(out)
    assert len(rows) == 15 and rows["uri"].is_unique
    good = rows[rows["error"].isna()].sort_values("uri")
    np.testing.assert_allclose(_probs(good, predictor.model),
                               _direct(predictor.model, list(good["uri"])), atol=1e-5)


def test_manifest_source_and_another_version_is_refused(predictor: Predictor, inputs: Path,
                                                        tmp_path: Path) -> None:
    uris = list_inputs(str(inputs), Files())[:4]
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame({"uri": uris + uris[:1], "label": ["x"] * 5}).to_parquet(manifest)
    out = str(tmp_path / "preds.parquet")
    summary = batch_predict(predictor, str(manifest), out)
    assert summary.total == 4 and summary.predicted + summary.failed == 4

    other = Predictor(predictor.model, predictor.name, "2")
    with pytest.raises(ConfigError, match="another --out"):
        batch_predict(other, str(manifest), out)
    no_uri = tmp_path / "bad_manifest.parquet"
    pd.DataFrame({"path": uris}).to_parquet(no_uri)
    with pytest.raises(ConfigError, match="no column 'uri'"):
        list_inputs(str(no_uri), Files())
    with pytest.raises(ConfigError, match="neither a folder"):
        list_inputs(str(tmp_path / "missing"), Files())


def test_hidden_files_and_folders_are_not_inputs(tmp_path: Path) -> None:
    # As when batch-predict is run on a project folder: .medops holds databases and models.
    for rel in ("scan.png", "site/scan.png", ".medops/medops.db", ".medops/cache/x.png",
                "site/.thumbs/scan.png", ".hidden.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(_image("PNG", 1))
    found = list_inputs(str(tmp_path), Files())
    assert found == [str(tmp_path / "scan.png"), str(tmp_path / "site" / "scan.png")]


def test_out_must_be_parquet_or_csv_in_a_writable_folder(tmp_path: Path) -> None:
    assert output_format(str(tmp_path / "new" / "preds.CSV")) is OutputFormat.CSV
    assert output_format("s3://bucket/preds.parquet") is OutputFormat.PARQUET
    with pytest.raises(ConfigError, match=r"--out .*out\.xlsx: .*\.parquet or \.csv"):
        output_format(str(tmp_path / "out.xlsx"))
    with pytest.raises(ConfigError, match="--format is csv"):
        output_format(str(tmp_path / "preds.parquet"), OutputFormat.CSV)
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(ConfigError, match=r"--out .*preds\.parquet: cannot write in"):
        output_format(str(tmp_path / "file" / "preds.parquet"))
    if Path("/proc/self").is_dir():  # Linux: a folder that exists and takes no new files
        with pytest.raises(ConfigError, match="cannot write in /proc"):
            output_format("/proc/x.parquet")


# -- S3, against moto's server on loopback ---------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)


def test_s3_prefix_in_and_out(predictor: Predictor, inputs: Path, s3_endpoint: str,
                              aws_env: None) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="scans")
    local = {p.relative_to(inputs).as_posix(): p for p in inputs.rglob("*") if p.is_file()}
    for key, path in local.items():
        s3.put_object(Bucket="scans", Key=f"in/{key}", Body=path.read_bytes())
    s3.put_object(Bucket="scans", Key="in/.cache/x.png", Body=_image("PNG", 4))  # not an input

    files = Files(s3_endpoint)
    out = "s3://scans/out/preds.parquet"
    summary = batch_predict(predictor, "s3://scans/in/", out, files=files)
    assert (summary.total, summary.predicted, summary.failed) == (15, 10, 5)
    body = s3.get_object(Bucket="scans", Key="out/preds.parquet")["Body"].read()
    rows = pd.read_parquet(io.BytesIO(body))
    assert all(u.startswith("s3://scans/in/") for u in rows["uri"])
    good = rows[rows["error"].isna()].sort_values("uri")
    direct = _direct(predictor.model, [str(local[u[len("s3://scans/in/"):]])
                                       for u in good["uri"]])
    np.testing.assert_allclose(_probs(good, predictor.model), direct, atol=1e-5)
    listed = s3.list_objects_v2(Bucket="scans", Prefix="out/")["Contents"]
    assert [o["Key"] for o in listed] == ["out/preds.parquet"]  # the chunks were cleaned up

    again = batch_predict(predictor, "s3://scans/in/", out, files=files)
    assert (again.skipped, again.predicted) == (10, 0)
