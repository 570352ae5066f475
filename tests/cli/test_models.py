"""`medops models ...` and `medops predict | batch-predict` as a user types them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medops.cli.main import app

from ..conftest import TrainedProject

pytestmark = pytest.mark.slow

runner = CliRunner()


def medops(*args: str) -> tuple[int, str]:
    """Exit code and what the user sees (rich's line wraps undone); with --json, stdout alone."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout if "--json" in args else " ".join(result.output.split())


def test_sign_off_commands(trained_project: TrainedProject) -> None:
    trained_project.new_model("cli-model", 2)
    root = str(trained_project.project.root)
    sign = ("--by", "Dr. Lee", "--note", "reviewed")

    code, out = medops("models", "approve", "cli-model", "1", *sign, "-C", root, "--json")
    assert code == 0, out
    first = json.loads(out)
    assert (first["version"], first["actor"], first["note"], first["live_until"]) == \
        ("1", "Dr. Lee", "reviewed", None)
    code, out = medops("models", "approve", "cli-model", "2", *sign, "-C", root)
    assert code == 0 and "cli-model v2 approved" in out

    code, out = medops("models", "ls", "cli-model", "-C", root, "--json")
    listing = {v["version"]: v for v in json.loads(out)}
    assert code == 0 and listing["2"]["live"] and not listing["1"]["live"]
    assert listing["2"]["approval"] == "approved" and "test_auc" in listing["2"]["metrics"]
    assert "champion" in listing["2"]["aliases"] and "champion" not in listing["1"]["aliases"]
    code, out = medops("models", "ls", "cli-model", "-C", root)
    assert code == 0 and "live" in out and "approved" in out

    code, out = medops("models", "reject", "cli-model", "2", *sign, "-C", root)
    assert code == 7 and "roll back first" in out
    code, out = medops("models", "rollback", "cli-model", "--by", "Dr. Lee", "--note", "drift",
                       "-C", root, "--json")
    assert code == 0 and json.loads(out)["version"] == "1"
    code, out = medops("models", "reject", "cli-model", "2", *sign, "-C", root, "--json")
    assert code == 0 and json.loads(out)["tags"]["approval"] == "rejected"

    code, out = medops("models", "history", "cli-model", "-C", root, "--json")
    history = json.loads(out)
    assert code == 0 and [(h["version"], h["action"]) for h in history] == \
        [("1", "approve"), ("2", "approve"), ("1", "rollback")]
    t2 = datetime.fromisoformat(history[1]["live_from"])
    code, out = medops("models", "history", "cli-model", "--at",
                       (t2 + timedelta(microseconds=1)).isoformat(), "-C", root, "--json")
    assert code == 0 and json.loads(out)["version"] == "2"
    before = datetime.fromisoformat(history[0]["live_from"]) - timedelta(seconds=1)
    code, out = medops("models", "history", "cli-model", "--at", before.isoformat(), "-C", root,
                       "--json")
    assert code == 0 and json.loads(out) is None
    code, out = medops("models", "history", "cli-model", "-C", root)
    assert code == 0 and "rollback" in out and "Dr. Lee" in out

    # Errors: unknown version, bad time, missing --by.
    code, out = medops("models", "approve", "cli-model", "42", *sign, "-C", root)
    assert code == 4 and "no version '42'" in out
    code, out = medops("models", "history", "cli-model", "--at", "yesterday", "-C", root)
    assert code == 2 and "ISO 8601" in out
    code, _ = medops("models", "approve", "cli-model", "1", "--note", "x", "-C", root)
    assert code == 2
    for command in (("ls", "cli-modle"), ("history", "cli-modle"),
                    ("approve", "cli-modle", "1", *sign)):
        code, out = medops("models", *command, "-C", root)
        assert code == 4 and "no registered model named 'cli-modle'" in out and "cli-model" in out


def test_predict_and_batch_predict(trained_project: TrainedProject, tmp_path: Path) -> None:
    project = trained_project.project
    root = str(project.root)
    model = f"{project.config.model_name}/1"
    dicoms = sorted(str(p) for p in trained_project.raw.rglob("*.dcm") if "broken" not in p.name)
    text = tmp_path / "notes.dcm"
    text.write_text("not an image")

    code, out = medops("predict", *dicoms[:3], "--model", model, "-C", root, "--json")
    assert code == 0, out
    rows = json.loads(out)
    loaded = project.registry.load("1")
    direct = loaded.predict_images([Path(u).read_bytes() for u in dicoms[:3]])
    got = np.array([[r[f"p_{c}"] for c in loaded.classes] for r in rows])
    np.testing.assert_allclose(got, direct, atol=1e-5)
    assert [r["version"] for r in rows] == ["1"] * 3

    code, out = medops("predict", dicoms[0], str(text), "--model", model, "-C", root, "--json")
    rows = json.loads(out)
    assert code == 5 and rows[0]["error"] is None and "not a DICOM" in rows[1]["error"]
    code, out = medops("predict", dicoms[0], "--model", "nope@champion", "-C", root)
    assert code == 4 and "no registered model named 'nope'" in out

    folder = tmp_path / "in"
    folder.mkdir()
    for src in dicoms[:4]:
        (folder / Path(src).name).write_bytes(Path(src).read_bytes())
    (folder / "notes.dcm").write_text("not an image")
    out_file = str(tmp_path / "preds.csv")
    code, out = medops("batch-predict", str(folder), "--out", out_file, "--model", model,
                       "-C", root, "--json")
    summary = json.loads(out)
    assert code == 0 and (summary["predicted"], summary["failed"]) == (4, 1)
    code, out = medops("batch-predict", str(folder), "--out", out_file, "--model", model,
                       "-C", root)
    assert code == 0 and "4 already done" in out and "notes.dcm" in out
    code, out = medops("batch-predict", str(folder), "--out", out_file, "--format", "xls",
                       "--model", model, "-C", root)
    assert code == 2 and "parquet, csv" in out


def test_batch_predict_on_the_project_folder_and_bad_outs(trained_project: TrainedProject,
                                                          tmp_path: Path) -> None:
    project = trained_project.project
    root = str(project.root)
    model = f"{project.config.model_name}/1"
    out_file = str(tmp_path / "preds.parquet")
    code, out = medops("batch-predict", root, "--out", out_file, "--model", model, "-C", root,
                       "--json")
    summary = json.loads(out)
    assert code == 0 and summary["total"] > 0
    assert not any("/.medops/" in e["uri"] for e in summary["errors"])  # databases, models
    broken = {e["uri"].rsplit("/", 1)[-1] for e in summary["errors"]}
    assert broken == {p.name for p in trained_project.raw.rglob("broken_*")}

    code, out = medops("batch-predict", root, "--out", str(tmp_path / "preds.xlsx"),
                       "--model", model, "-C", root)
    assert code == 2 and "--out" in out and ".parquet or .csv" in out
    assert not (tmp_path / "preds.xlsx").exists()
    (tmp_path / "file").write_text("a file, not a folder")
    code, out = medops("batch-predict", root, "--out", str(tmp_path / "file" / "p.parquet"),
                       "--model", model, "-C", root)
    assert code == 2 and "--out" in out and "cannot write in" in out
