"""`medops data import --set KEY=VALUE` overrides medops.yaml for that import, as `medops run`
does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from medops.cli.main import app
from medops.project import Project
from tests.samples import pydicom_file

runner = CliRunner()


def _import(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["data", "import", *args])
    return result.exit_code, result.stdout if "--json" in args else result.output


def _scans(root: Path) -> Path:
    """A folder holding one two-frame DICOM file, labelled by its sub-folder."""
    folder = root / "scans"
    (folder / "normal").mkdir(parents=True)
    shutil.copy(pydicom_file("SC_rgb_rle_2frame.dcm"), folder / "normal" / "two-frames.dcm")
    return folder


def test_set_overrides_the_configuration_of_an_import(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        Project.init(root)
    scans = _scans(tmp_path)

    code, out = _import(str(scans), "-C", str(one), "--json")
    assert code == 0, out
    assert json.loads(out)["items"] == 1  # data.frames: middle, the default
    code, out = _import(str(scans), "-C", str(two), "--json", "--set", "data.frames=each")
    assert code == 0, out
    assert json.loads(out)["items"] == 2  # one item per frame
    project = Project.load(two)
    try:
        assert sorted(i.frame or 0 for i in project.state.items()) == [0, 1]
    finally:
        project.close()
    assert "frames: middle" in (two / "medops.yaml").read_text()  # the file is unchanged


def test_a_bad_set_is_refused_naming_it(tmp_path: Path) -> None:
    Project.init(tmp_path / "p")
    scans = _scans(tmp_path)
    code, out = _import(str(scans), "-C", str(tmp_path / "p"), "--set", "data.frames=all")
    assert code == 2 and "--set data.frames=all" in " ".join(out.split()), out
    code, out = _import(str(scans), "-C", str(tmp_path / "p"), "--set", "data.frames")
    assert code == 2 and "KEY=VALUE" in out, out
