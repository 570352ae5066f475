"""docs/python-api.md: its example runs as written, and the calls it lists exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import medops
from medops.api import Session
from medops.project import Project
from medops.registry import CHAMPION

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "python-api.md"
SHARED = REPO.parent / "shared"  # the example reads ../shared/data from the repository root
BREASTMNIST = SHARED / "data" / "medmnist" / "breastmnist_28.npz"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_calls_the_guide_names_exist() -> None:
    text = DOC.read_text()
    for name in set(re.findall(r"\bmedops\.(\w+)\(", text)):
        assert name in medops.__all__, f"the guide calls medops.{name}, which is not exported"
    for name in set(re.findall(r"\bsession\.(\w+)\(", text)):
        assert callable(getattr(Session, name, None)), f"Session has no method {name}"
    assert len(python_blocks(text)) == 1


@pytest.mark.slow
def test_the_example_runs_as_a_notebook_runs_it(tmp_path: Path) -> None:
    if not BREASTMNIST.is_file():
        pytest.skip(f"the example's data {BREASTMNIST} is not on this machine")
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)  # ../shared as seen from the repository root
    [code] = python_blocks(DOC.read_text())
    # A fresh interpreter whose main module is no file, as in a notebook (a script needs
    # `if __name__ == "__main__":`, as the guide says, since worker processes import it).
    done = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    assert "test AUC" in done.stdout

    # What the example left is what `medops runs ls` and `medops models ls` read.
    project = Project.load(work / "breast-demo")
    try:
        runs = project.state.list_runs()
        assert [r.trigger for r in runs] == ["python", "python"]
        assert runs[0].config["train"]["epochs"] == 1  # the override, recorded with the run
        champion = project.registry.by_alias(CHAMPION)
        assert champion is not None and champion.version == "1"
        assert champion.tags["approved_by"] == "Dr. Lee"
    finally:
        project.close()
    assert (work / "scan.png").is_file()
