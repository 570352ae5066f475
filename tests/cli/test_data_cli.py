"""`medops data import` by URI or --source, and `medops data ls` with cursors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from medops.cli.main import app
from medops.data.ingest import ingest_files
from medops.project import Project
from tests.samples import pydicom_file

runner = CliRunner()


def medops(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_bad_sources_are_refused_with_the_fix(tmp_path: Path) -> None:
    medops("init", str(tmp_path))
    code, out = medops("data", "import", "--source", "pacs", "-C", str(tmp_path))
    assert code == 2 and "no data.sources.pacs" in out
    code, out = medops("data", "import", "ftp://host/images", "-C", str(tmp_path))
    assert code == 2 and "s3://" in out and "--source NAME" in out
    code, out = medops("data", "import", "-C", str(tmp_path))
    assert code == 2 and "nothing to import" in out


def test_local_files_that_cannot_be_imported_say_why(tmp_path: Path) -> None:
    root = tmp_path / "p"
    medops("init", str(root))
    code, out = medops("data", "import", str(tmp_path / "missing.npz"), "-C", str(root))
    assert code == 2 and f"{tmp_path / 'missing.npz'} does not exist" in " ".join(out.split())
    code, out = medops("data", "import", "", "-C", str(root))  # not the current folder
    assert code == 2 and "SOURCE is empty" in out
    (tmp_path / "notnpz.npz").write_text("a text file")
    code, out = medops("data", "import", str(tmp_path / "notnpz.npz"), "-C", str(root))
    assert code == 5 and "not a valid .npz (zip) file" in " ".join(out.split())

    arrays: dict[str, Any] = {  # Any: savez's allow_pickle keyword is typed bool
        f"{split}_{kind}": np.zeros((4, 8, 8) if kind == "images" else (4, 1), np.uint8)
        for split in ("train", "val", "test") for kind in ("images", "labels")}
    floats = tmp_path / "float.npz"
    np.savez(floats, **{**arrays, "test_images": np.random.default_rng(0).random((4, 8, 8))})
    expected = "test_images has dtype float64 and shape (4, 8, 8); expected uint8 images"
    code, out = medops("data", "import", str(floats), "-C", str(root))
    assert code == 5 and expected in " ".join(out.split()) and "Traceback" not in out
    assert not list(root.rglob("*.png"))  # train and val were fine; nothing was imported
    code, out = medops("demo", "--data", str(floats), "--dir", str(tmp_path / "demo"),
                       "--no-loop")
    assert code == 5 and expected in " ".join(out.split())


def test_receiver_sources_are_not_polled(tmp_path: Path) -> None:
    medops("init", str(tmp_path))
    cfg = yaml.safe_load((tmp_path / "medops.yaml").read_text())
    cfg["data"]["sources"] = {"scanner": {"kind": "dicom-scp", "ae_title": "MEDOPS"}}
    (tmp_path / "medops.yaml").write_text(yaml.safe_dump(cfg))
    code, out = medops("data", "import", "--source", "scanner", "-C", str(tmp_path))
    assert code == 2 and "not polled" in out


def test_ls_shows_counts_cursors_and_quarantine(tmp_path: Path) -> None:
    medops("init", str(tmp_path))
    project = Project.load(tmp_path)
    files = [("ct.dcm", pydicom_file("CT_small.dcm").read_bytes()),
             ("junk.dcm", b"not dicom at all")]
    ingest_files(files, "scp", project.state, project.landing_dir, project.ingest_settings)
    project.state.set_cursor("pacs", "seq-42")
    project.close()
    code, out = medops("data", "ls", "-C", str(tmp_path), "--json")
    assert code == 0, out
    listing = json.loads(out)
    assert listing["sources"]["scp"] == {"pending": 1, "quarantined": 1}
    assert listing["cursors"]["pacs"]["cursor"] == "seq-42"
    (q,) = listing["quarantined"]
    assert q["source"] == "scp" and q["uri"].startswith("quarantine:scp/")
    assert "cannot parse" in q["reason"] or "not a DICOM" in q["reason"]
    code, out = medops("data", "ls", "-C", str(tmp_path))
    assert code == 0 and "seq-42" in out and "quarantined" in out


def test_secret_is_made_once_and_env_wins(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    medops("init", str(tmp_path))
    monkeypatch.delenv("MEDOPS_DEID_SECRET", raising=False)
    first = Project.load(tmp_path).ingest_settings.deid
    second = Project.load(tmp_path).ingest_settings.deid
    assert first is not None and second is not None
    secret_file = tmp_path / ".medops" / "deid-secret"
    assert secret_file.stat().st_mode & 0o077 == 0  # owner only
    assert first.uid("1.2.3") == second.uid("1.2.3")
    monkeypatch.setenv("MEDOPS_DEID_SECRET", "x" * 32)
    from_env = Project.load(tmp_path).ingest_settings.deid
    assert from_env is not None and from_env.uid("1.2.3") != first.uid("1.2.3")
    monkeypatch.setenv("MEDOPS_DEID_SECRET", "short")
    code, out = medops("data", "import", "s3://bucket/prefix/", "-C", str(tmp_path))
    assert code == 2 and "at least 16" in out and "short" not in out  # never the value
